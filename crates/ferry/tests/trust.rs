//! No request decides a task for anyone else: content-changing headers are refused, a wrong
//! token or URL fails only its own request, private files go only to requests that prove
//! their access, outputs are not the cache, and origin responses that cannot be trusted fail
//! clearly. Real `ferry` processes, the test origin on loopback.

mod common;

use std::process::Output;

use common::{Setup, Spec};
use ferry::exit;
use ferry_demo::origin::OriginOptions;

const TOKEN: &str = "right-t0ken-5ecret";
const WRONG: &str = "wrong-t0ken-5ecret";

async fn get(s: &Setup, peer: usize, url: &str, out: &std::path::Path, extra: &[&str]) -> Output {
    let extra: Vec<&str> = extra.iter().copied().chain(["--quiet"]).collect();
    common::ferry_get(&s.peers[peer].socket, url, out, &extra).await
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

fn all_logs(s: &Setup) -> String {
    let mut names: Vec<String> = s.peers.iter().map(|p| p.name.clone()).collect();
    names.push("seed".into());
    names.push("scheduler-0".into());
    names.iter().map(|n| s.cluster.log_of(n)).collect::<Vec<_>>().join("\n")
}

fn spec() -> Spec<'static> {
    let origin = OriginOptions { token: Some(TOKEN.into()), ..Default::default() };
    Spec { peers: 4, files: &[("f.bin", 2 << 20), ("g.bin", 1 << 20)], origin, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_header_is_refused_and_the_task_stays_whole() {
    let s = Setup::start(spec()).await;
    let url = s.origin.url("f.bin");
    let out = s.out("ranged");
    let o = get(&s, 0, &url, &out, &["-H", "Range: bytes=0-99"]).await;
    assert_eq!(o.status.code(), Some(exit::USAGE as i32), "{}", stderr(&o));
    assert!(stderr(&o).contains("Range"), "{}", stderr(&o));
    assert!(!out.exists());
    let o = get(&s, 1, &url, &out, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.verify("f.bin", &out), "a later full request gets the full file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_alone_and_leaks_nowhere() {
    let s = Setup::start(spec()).await;
    let url = s.origin.url_as("private", "f.bin");
    let bad = format!("Authorization: Bearer {WRONG}");
    let good = format!("Authorization: Bearer {TOKEN}");
    let signed = format!("{url}?X-Amz-Signature=s1gnature5ecret&v=1");
    let o = get(&s, 0, &signed, &s.out("wrong"), &["-H", &bad]).await;
    assert_eq!(o.status.code(), Some(exit::ORIGIN as i32), "{}", stderr(&o));
    assert!(stderr(&o).contains("403"), "the origin's own answer: {}", stderr(&o));
    assert!(!s.out("wrong").exists());
    let o = get(&s, 1, &url, &s.out("right"), &["-H", &good]).await;
    assert!(o.status.success(), "the right token after a wrong one: {}", stderr(&o));
    assert!(s.verify("f.bin", &s.out("right")));
    for text in [stderr(&o), all_logs(&s)] {
        for secret in [WRONG, TOKEN, "s1gnature5ecret"] {
            assert!(!text.contains(secret), "`{secret}` appears in:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_file_goes_only_to_requests_that_prove_access() {
    let s = Setup::start(spec()).await;
    let url = s.origin.url_as("private", "f.bin");
    let good = format!("Authorization: Bearer {TOKEN}");
    let o = get(&s, 0, &url, &s.out("p0"), &["-H", &good]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let size = s.files["f.bin"].len() as u64;
    // Peers hold it now; asking without a token, or with a wrong one, gets the origin's no.
    for (peer, extra, code) in
        [(1, vec![], "401"), (2, vec!["-H".to_owned(), format!("Authorization: Bearer {WRONG}")], "403")]
    {
        let out = s.out(&format!("denied-{peer}"));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = get(&s, peer, &url, &out, &extra).await;
        assert_eq!(o.status.code(), Some(exit::ORIGIN as i32), "peer {peer}: {}", stderr(&o));
        assert!(stderr(&o).contains(code), "peer {peer}: {}", stderr(&o));
        assert!(!out.exists(), "peer {peer} got a file");
    }
    // And a peer that already holds it (peer 0) refuses a tokenless request too.
    let o = get(&s, 0, &url, &s.out("p0-again"), &[]).await;
    assert_eq!(o.status.code(), Some(exit::ORIGIN as i32), "{}", stderr(&o));
    let o = get(&s, 3, &url, &s.out("p3"), &["-H", &good, "--json"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.verify("f.bin", &s.out("p3")));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["bytes_from_origin"], 0, "a valid token gets the file from peers: {j}");
    // Access checks cost one byte each; the body went out once.
    let served = s.origin.bytes_served();
    assert!(served >= size && served <= size + 16, "origin served {served} bytes for a {size}-byte file");
}

/// Requests that ask the origin anyway (credentialed ones) join the task of the content the
/// origin serves now: a replaced object is a new task, never the old bytes or a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_private_object_is_a_new_task() {
    let s = Setup::start(spec()).await;
    let url = s.origin.url_as("private", "f.bin");
    let good = format!("Authorization: Bearer {TOKEN}");
    let o = get(&s, 0, &url, &s.out("v1"), &["-H", &good]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.verify("f.bin", &s.out("v1")));
    let v2: bytes::Bytes = s.files["f.bin"].iter().map(|b| b.wrapping_add(1)).collect::<Vec<u8>>().into();
    s.origin.replace("f.bin", v2.clone());
    for peer in [1, 2] {
        let out = s.out(&format!("v2-{peer}"));
        let o = get(&s, peer, &url, &out, &["-H", &good]).await;
        assert!(o.status.success(), "peer {peer}: {}", stderr(&o));
        assert!(std::fs::read(&out).unwrap() == v2, "peer {peer} got the old version");
    }
    // The host that holds the old version too, once its access check is not cached.
    let out = s.out("v2-0");
    let o = get(&s, 0, &url, &out, &["-H", &good, "-H", "X-Request: again"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == v2, "the host that held v1 served it again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_url_cannot_poison_a_digest() {
    use sha2::Digest;
    let s = Setup::start(spec()).await;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&s.files["f.bin"])));
    let wrong = s.origin.url("g.bin");
    let o = get(&s, 0, &wrong, &s.out("w"), &["--digest", &digest]).await;
    assert_eq!(o.status.code(), Some(exit::INTEGRITY as i32), "{}", stderr(&o));
    assert!(!s.out("w").exists());
    for peer in [0, 1] {
        let out = s.out(&format!("right-{peer}"));
        let o = get(&s, peer, &s.origin.url("f.bin"), &out, &["--digest", &digest]).await;
        assert!(o.status.success(), "peer {peer}, right URL after a wrong one: {}", stderr(&o));
        assert!(s.verify("f.bin", &out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_overwritten_in_place_does_not_change_the_cache() {
    use std::io::{Seek, Write};
    let s = Setup::start(spec()).await;
    let url = s.origin.url("f.bin");
    let out = s.out("edited");
    assert!(get(&s, 0, &url, &out, &[]).await.status.success());
    let mut f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&vec![0u8; 1 << 20]).unwrap();
    drop(f);
    let again = s.out("again");
    let o = get(&s, 0, &url, &again, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.verify("f.bin", &again), "the next get returned the edited bytes");
    // With --link the output shares the cache file, read-only.
    let linked = s.out("linked");
    assert!(get(&s, 0, &url, &linked, &["--link"]).await.status.success());
    assert!(s.verify("f.bin", &linked));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&linked).unwrap().permissions().mode() & 0o222, 0, "a linked output is read-only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrustworthy_origin_responses_fail_clearly() {
    let s = Setup::start(Spec { peer_args: &["--origin-retries", "2"], ..spec() }).await;
    let cases = [
        ("gzip", exit::ORIGIN, "encoded"),
        ("shifted", exit::ORIGIN, "asked for bytes"),
        ("changing", exit::ORIGIN_CHANGED, "changed"),
    ];
    for (i, (route, code, needle)) in cases.into_iter().enumerate() {
        let out = s.out(route);
        let o = get(&s, i, &s.origin.url_as(route, "f.bin"), &out, &[]).await;
        assert_eq!(o.status.code(), Some(code as i32), "{route}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{route}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{route}: {}", stderr(&o));
        assert!(!out.exists(), "{route} left a file");
    }
}

/// An HTTPS origin with a self-signed certificate for 127.0.0.1 (openssl + Python's
/// http.server), killed when dropped.
struct TlsOrigin {
    child: tokio::process::Child,
    url: String,
    /// The CA that signed the origin's certificate.
    ca: std::path::PathBuf,
}

const TLS_SERVER: &str = r#"
import http.server, ssl, sys, functools
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

impl TlsOrigin {
    async fn start(dir: &std::path::Path, body: &[u8]) -> Self {
        use tokio::io::AsyncBufReadExt;
        // A private CA, and a leaf certificate for 127.0.0.1 that it signs.
        let (ca, ca_key, cert, key) =
            (dir.join("ca.pem"), dir.join("ca.key"), dir.join("cert.pem"), dir.join("key.pem"));
        let (csr, ext) = (dir.join("leaf.csr"), dir.join("leaf.ext"));
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
        let p = |s: &std::path::Path| s.to_str().unwrap().to_owned();
        let steps: Vec<Vec<String>> = vec![
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Ferry test CA", "-keyout"]
                .iter()
                .map(|s| s.to_string())
                .chain([p(&ca_key), "-out".into(), p(&ca)])
                .collect(),
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout"]
                .iter()
                .map(|s| s.to_string())
                .chain([p(&key), "-out".into(), p(&csr)])
                .collect(),
            ["x509", "-req", "-days", "1", "-CAcreateserial", "-in"]
                .iter()
                .map(|s| s.to_string())
                .chain([
                    p(&csr),
                    "-CA".into(),
                    p(&ca),
                    "-CAkey".into(),
                    p(&ca_key),
                    "-out".into(),
                    p(&cert),
                    "-extfile".into(),
                    p(&ext),
                ])
                .collect(),
        ];
        for args in steps {
            let st =
                std::process::Command::new("openssl").args(&args).stderr(std::process::Stdio::null()).status().unwrap();
            assert!(st.success(), "openssl {args:?} failed");
        }
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("f.bin"), body).unwrap();
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", TLS_SERVER])
            .arg(&cert)
            .arg(&key)
            .arg(&www)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        Self { child, url: format!("https://127.0.0.1:{}/f.bin", port.trim()), ca }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_refused_plainly_and_trusted_with_ca_cert() {
    let mut s = Setup::start(Spec { peers: 1, seed: false, ..spec() }).await;
    let tls = TlsOrigin::start(s.cluster.dir(), &s.files["g.bin"]).await;
    let out = s.out("tls");
    let started = std::time::Instant::now();
    let o = get(&s, 0, &tls.url, &out, &[]).await;
    assert_eq!(o.status.code(), Some(exit::ORIGIN as i32), "{}", stderr(&o));
    let msg = stderr(&o);
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("127.0.0.1") && msg.contains("certificate") && msg.contains("--ca-cert"), "{msg}");
    // Not retried: the retry pauses alone would take over 6 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "a certificate error was retried");
    assert!(!out.exists());
    let trusting = s.cluster.start_daemon("trusting", false, &["--ca-cert", tls.ca.to_str().unwrap()]).await.unwrap();
    s.wait_hosts(2).await;
    common::download(&trusting, &tls.url, &out).await.unwrap();
    assert!(s.verify("g.bin", &out));
    // The explicit opt-out for one host: read without verification, and said so in the log.
    let blind = s.cluster.start_daemon("blind", false, &["--insecure-origin", "127.0.0.1"]).await.unwrap();
    s.wait_hosts(3).await;
    let other = format!("{}?blind", tls.url);
    let out2 = s.out("blind");
    common::download(&blind, &other, &out2).await.unwrap();
    assert!(s.verify("g.bin", &out2));
    let log = std::fs::read_to_string(s.cluster.dir().join("blind.log")).unwrap();
    assert!(log.contains("NOT verified") && log.contains("not verified"), "{log}");
    drop(tls.child);
}
