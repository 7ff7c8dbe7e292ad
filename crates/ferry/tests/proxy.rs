//! Proxy mode: a client that knows proxies, not mirrors (`curl --proxy`), fetches registry
//! blobs over HTTPS through a daemon's proxy, which intercepts TLS for configured hosts only,
//! with a CA it generated. Against a real registry (`docker-registry`) serving HTTPS.

mod common;

use std::path::Path;

use common::{Setup, Spec};
use ferry_demo::data;
use ferry_demo::oci::{Blob, Image, Layout};
use ferry_demo::registry::Registry;

/// `curl` through `proxy` (trusting `ca`), writing the body to `out`; returns whether it
/// succeeded and what `-w` printed, or its error output.
async fn curl(proxy: &str, ca: &Path, url: &str, out: &Path, extra: &[&str]) -> (bool, String) {
    let r = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30", "--proxy"])
        .arg(format!("http://{proxy}"))
        .arg("--cacert")
        .arg(ca)
        .arg("-o")
        .arg(out)
        .args(extra)
        .arg(url)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .await
        .expect("run curl (apt-get install curl)");
    let said = if r.status.success() { &r.stdout } else { &r.stderr };
    (r.status.success(), String::from_utf8_lossy(said).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy_gets_blobs_over_https_via_p2p_and_other_hosts_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let (registry, registry_cert) = Registry::start_tls(work.path()).await.unwrap();
    let layer = Blob::new(data::generate(11, 3 << 20));
    let layout = Layout::new(&[Image { architecture: "amd64".into(), layers: vec![layer.clone()] }]);
    layout.write(&work.path().join("src"), "v1").unwrap();
    let src = format!("oci:{}:v1", work.path().join("src").display());
    let dst = format!("docker://{}/test/app:v1", registry.addr);
    let push = tokio::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false", &src, &dst])
        .output()
        .await
        .expect("run skopeo (apt-get install skopeo)");
    assert!(push.status.success(), "push: {}", String::from_utf8_lossy(&push.stderr));

    let cert = registry_cert.display().to_string();
    let peer_args = ["--ca-cert", &cert, "--proxy-host", &registry.addr];
    let s = Setup::start(Spec {
        peers: 2,
        files: &[("unused", 1)],
        peer_args: &peer_args,
        seed_args: &["--ca-cert", &cert],
        ..Default::default()
    })
    .await;

    // What the rules do not take (a manifest by tag) is forwarded untouched. The registry
    // compressed the layer on push: the manifest names its digest.
    let p = &s.peers[0];
    let ca = p.data_dir.join("proxy-ca.crt");
    let manifest_url = format!("https://{}/v2/test/app/manifests/v1", registry.addr);
    let out = work.path().join("manifest");
    let accept = ["-H", "Accept: application/vnd.oci.image.manifest.v1+json"];
    let (ok, said) = curl(&p.mirror_addr, &ca, &manifest_url, &out, &accept).await;
    assert!(ok, "the manifest by tag came through: {said}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(common::stats(p).await.unwrap().mirror_passed_through, 1);

    // Both peers fetch the layer over HTTPS through their proxies: the bytes match its
    // digest, the registry served it once (to the seed), each proxy counts a P2P answer.
    let blob_url = format!("https://{}/v2/test/app/blobs/{digest}", registry.addr);
    for p in &s.peers {
        let ca = p.data_dir.join("proxy-ca.crt");
        let out = work.path().join(format!("{}.blob", p.name));
        let (ok, said) = curl(&p.mirror_addr, &ca, &blob_url, &out, &[]).await;
        assert!(ok, "{} fetched the blob: {said}", p.name);
        assert_eq!(Blob::new(std::fs::read(&out).unwrap()).digest, digest, "{}: the layer's bytes", p.name);
        let st = common::stats(p).await.unwrap();
        assert_eq!((st.mirror_p2p, st.mirror_failed), (1, 0), "{}", p.name);
    }
    assert_eq!(registry.full_gets(&digest), 1, "the registry served the layer once");

    // Never an open proxy: a host not configured is refused, over CONNECT and plain HTTP.
    let sink = work.path().join("sink");
    let (ok, said) = curl(&p.mirror_addr, &ca, "https://127.0.0.2:9/", &sink, &[]).await;
    assert!(!ok && said.contains("403"), "CONNECT to another host: {said}");
    let (ok, said) = curl(&p.mirror_addr, &ca, "http://127.0.0.3:9/x", &sink, &[]).await;
    assert!(!ok && said.contains("403"), "plain HTTP to another host: {said}");
    // Nor a client that does not trust the CA gets anything.
    let (ok, _) = curl(&p.mirror_addr, &registry_cert, &blob_url, &sink, &[]).await;
    assert!(!ok, "a client that does not trust the proxy's CA is not served");
}

/// A proxy without the mirror's port, a bad rule or a CA that is not one: one line naming
/// what is wrong, and the daemon does not start.
#[tokio::test]
async fn bad_proxy_flags_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let junk = junk.display().to_string();
    let usage = ferry::exit::USAGE as i32;
    let cases: [(&[&str], i32, &str); 3] = [
        (&["--proxy-host", "r.example", "--mirror-listen", "off"], usage, "--mirror-listen"),
        (&["--proxy-host", "r.example", "--proxy-rule", "(("], usage, "--proxy-rule"),
        (
            &["--proxy-host", "r.example", "--proxy-ca-cert", &junk, "--proxy-ca-key", &junk],
            ferry::exit::FAILURE as i32,
            "junk.pem",
        ),
    ];
    for (i, (args, code, says)) in cases.iter().enumerate() {
        let data = dir.path().join(format!("d{i}"));
        let o = tokio::process::Command::new(common::bin())
            .args(["daemon", "--scheduler", "127.0.0.1:9", "--piece-port", "0"])
            .arg("--data-dir")
            .arg(&data)
            .args(if args.contains(&"off") { &[][..] } else { &["--mirror-listen", "127.0.0.1:0"][..] })
            .args(*args)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
