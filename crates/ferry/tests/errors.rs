//! What a user sees when something is wrong: one line, a distinct exit code, no file left.

mod common;

use std::process::Output;

use common::{bin, Setup, Spec};
use ferry::exit;
use ferry_demo::origin::OriginOptions;

async fn get(s: &Setup, args: &[&str]) -> Output {
    tokio::process::Command::new(bin())
        .arg("get")
        .args(args)
        .arg("--socket")
        .arg(&s.peers[0].socket)
        .output()
        .await
        .unwrap()
}

fn one_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "expected one line on stderr, got:\n{err}");
    err
}

fn setup_spec() -> Spec<'static> {
    Spec { peers: 8, files: &[("f.bin", 1 << 20)], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_404_and_500_are_clear_and_leave_no_file() {
    let s = Setup::start(Spec { peer_args: &["--origin-retries", "2"], ..setup_spec() }).await;
    for (code, needle) in [(404, "404"), (500, "500")] {
        let out = s.out(&format!("status-{code}"));
        let url = s.origin.status_url(code);
        let o = get(&s, &[&url, "-O", out.to_str().unwrap()]).await;
        assert_eq!(o.status.code(), Some(exit::ORIGIN as i32), "origin {code}");
        assert!(one_line(&o).contains(needle), "message for {code} does not name it");
        assert!(!out.exists(), "origin {code} left a file at the output path");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_origin_is_retried() {
    let origin = OriginOptions { fail_first: 2, ..Default::default() };
    let s = Setup::start(Spec { origin, ..setup_spec() }).await;
    let out = s.out("flaky");
    let o = get(&s, &[&s.origin.url("f.bin"), "-O", out.to_str().unwrap(), "--quiet"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(s.verify("f.bin", &out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_digest_mismatch() {
    let s = Setup::start(setup_spec()).await;
    let url = s.origin.url("f.bin");
    let dir = s.out("x").parent().unwrap().to_owned();
    let out = dir.join("file");
    let cases: Vec<(Vec<String>, u8, &str)> = vec![
        (vec!["ftp://h/x".into(), "-O".into(), out.display().to_string()], exit::USAGE, "scheme"),
        (vec!["http://[bad".into(), "-O".into(), out.display().to_string()], exit::USAGE, "malformed URL"),
        (vec![url.clone(), "-O".into(), dir.join("missing/f").display().to_string()], exit::USAGE, "does not exist"),
        (vec![url.clone(), "-O".into(), dir.display().to_string()], exit::USAGE, "is a directory"),
        (
            vec![url.clone(), "-O".into(), out.display().to_string(), "--digest".into(), "sha256:zz".into()],
            exit::USAGE,
            "digest",
        ),
    ];
    for (args, code, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = get(&s, &a).await;
        assert_eq!(o.status.code(), Some(code as i32), "{args:?}");
        assert!(one_line(&o).contains(needle), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let wrong = format!("sha256:{}", "00".repeat(32));
    let o = get(&s, &[&url, "-O", out.to_str().unwrap(), "--digest", &wrong]).await;
    assert_eq!(o.status.code(), Some(exit::INTEGRITY as i32));
    assert!(one_line(&o).contains("digest mismatch"));
    assert!(!out.exists(), "a digest mismatch left a file at the output path");

    use sha2::Digest;
    let right = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&s.files["f.bin"])));
    let o = get(&s, &[&url, "-O", out.to_str().unwrap(), "--digest", &right, "--json"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["bytes"], 1 << 20);
    assert!(s.verify("f.bin", &out));
}

#[tokio::test]
async fn no_daemon_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let o = tokio::process::Command::new(bin())
        .args(["get", "http://127.0.0.1:1/x", "-O"])
        .arg(dir.path().join("f"))
        .arg("--socket")
        .arg(dir.path().join("nope.sock"))
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(exit::NO_DAEMON as i32));
    assert!(one_line(&o).contains("ferry daemon"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_is_reported_and_leaves_no_file() {
    let mut s = Setup::start(Spec { files: &[("f.bin", 4 << 20), ("s.bin", 100 << 10)], ..setup_spec() }).await;
    let data = s.cluster.dir().join("small");
    let Some(_unmount) = common::small_tmpfs(&data) else { return };
    let small = s.cluster.start_daemon("small", false, &[]).await.unwrap();
    s.wait_hosts(10).await;
    let out = s.out("full");
    let o = common::ferry_get(&small.socket, &s.origin.url("f.bin"), &out, &[]).await;
    assert_eq!(o.status.code(), Some(exit::DISK_FULL as i32), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(one_line(&o).contains("No space left"));
    assert!(!out.exists());
    let dir = out.parent().unwrap();
    let temps: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".ferry-"))
        .collect();
    assert!(temps.is_empty(), "a failed download left {temps:?}");
    // The failed task's partial file is gone: a small download on the same host works.
    let out = s.out("small-after");
    let o = common::ferry_get(&small.socket, &s.origin.url("s.bin"), &out, &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(s.verify("s.bin", &out));
    s.cluster.kill("small").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_download_is_named_with_its_own_exit_code() {
    let origin = OriginOptions { throttle: Some(2 << 20), ..Default::default() };
    let mut s = Setup::start(Spec { peers: 1, files: &[("f.bin", 16 << 20)], origin, ..Default::default() }).await;
    let out = s.out("lost");
    let child = tokio::process::Command::new(bin())
        .args(["get", &s.origin.url("f.bin"), "-O", out.to_str().unwrap(), "--quiet", "--socket"])
        .arg(&s.peers[0].socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ferry_testkit::wait_until("the download to start", std::time::Duration::from_secs(20), || async {
        (common::stats(&s.peers[0]).await?.bytes_from_peers > 0).then_some(())
    })
    .await;
    let args = s.cluster.args_of("peer-0").unwrap();
    s.cluster.kill("peer-0").await;
    let o = child.wait_with_output().await.unwrap();
    assert_eq!(o.status.code(), Some(exit::DAEMON_LOST as i32), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(one_line(&o).contains("lost the connection to the daemon"));
    assert!(!out.exists());
    // The output it was writing alongside is left; the daemon removes it when it starts again.
    let temps = || -> Vec<_> {
        let dir = out.parent().unwrap();
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".ferry-"))
            .collect()
    };
    assert_eq!(temps().len(), 1, "the killed daemon's temporary output");
    s.cluster.restart("peer-0", args).await.unwrap();
    assert!(temps().is_empty(), "{:?} survived the restart", temps());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_says_at_start_when_no_scheduler_answers() {
    let mut cluster = ferry_demo::cluster::Cluster::new(bin()).unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    cluster.schedulers.push("127.0.0.1:1".into());
    cluster.start_daemon("lonely", false, &[]).await.unwrap();
    let log = cluster.log_of("lonely");
    assert!(log.contains("no scheduler answers"), "{log}");
    assert!(log.contains("127.0.0.1:1"), "{log}");
    cluster.shutdown().await;
}

/// `ferry --version` names the commit it was built from (the suite runs in a git checkout).
#[test]
fn the_version_names_the_commit() {
    let o = std::process::Command::new(common::bin()).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&o.stdout);
    let commit = v.trim().strip_suffix(')').and_then(|s| s.rsplit_once('(')).map(|(_, c)| c.to_owned());
    assert!(commit.is_some_and(|c| c.len() == 12 && c.chars().all(|c| c.is_ascii_hexdigit())), "{v}");
}
