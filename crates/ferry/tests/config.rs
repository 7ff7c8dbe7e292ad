//! Roles started from a config file alone; what a bad file gets; `--print-config` and
//! secrets from files. Real processes on loopback.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::bin;
use ferry_demo::origin::{Origin, OriginOptions};
use tokio::io::AsyncBufReadExt;

/// A role started with `ferry <role> --config FILE` and nothing else; its ready line.
struct Role {
    child: tokio::process::Child,
    ready: serde_json::Value,
}

async fn start(role: &str, config: &Path) -> Role {
    let mut child = tokio::process::Command::new(bin())
        .args([role, "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("ready within 30 s")
        .unwrap()
        .unwrap_or_else(|| panic!("{role} exited before it was ready"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Role { child, ready: serde_json::from_str(&line).unwrap() }
}

async fn ferry(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut c = tokio::process::Command::new(bin());
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_daemon_run_from_config_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sched_conf = dir.path().join("scheduler.toml");
    std::fs::write(&sched_conf, "listen = \"127.0.0.1:0\"\nmetrics-listen = \"127.0.0.1:0\"\nmax-parents = 8\n")
        .unwrap();
    let mut sched = start("scheduler", &sched_conf).await;
    let sched_addr = sched.ready["addr"].as_str().unwrap().to_owned();
    let data = dir.path().join("data");
    let socket = dir.path().join("d.sock");
    let daemon_conf = dir.path().join("daemon.toml");
    std::fs::write(
        &daemon_conf,
        format!(
            "scheduler = [\"{sched_addr}\"]\nseed = true\ndata-dir = \"{}\"\nsocket = \"{}\"\n\
             listen-ip = \"127.0.0.1\"\nadvertise-ip = \"127.0.0.1\"\npiece-port = 0\n\
             mirror-listen = \"127.0.0.1:0\"\nmetrics-listen = \"127.0.0.1:0\"\nhealth-listen = \"127.0.0.1:0\"\n\
             cache-ttl = \"2h\"\n",
            data.display(),
            socket.display()
        ),
    )
    .unwrap();
    let mut daemon = start("daemon", &daemon_conf).await;
    let health = daemon.ready["health"].as_str().unwrap().to_owned();
    ferry_testkit::wait_until("the daemon to be ready", std::time::Duration::from_secs(20), || {
        let url = format!("http://{health}/readyz");
        async move { reqwest::get(url).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    let file = ferry_demo::data::generate(5, 3 << 20);
    let origin = Origin::start([("f.bin".to_owned(), file.clone())].into_iter().collect(), OriginOptions::default())
        .await
        .unwrap();
    let out = dir.path().join("f.out");
    let o = common::ferry_get(&socket, &origin.url("f.bin"), &out, &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == file);
    let _ = daemon.child.kill().await;
    let _ = sched.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_gets_one_line_and_print_config_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("daemon.toml");
    let run = |extra: &'static [&'static str]| {
        let conf = conf.display().to_string();
        async move {
            let mut args = vec!["daemon", "--config", &conf];
            args.extend(extra);
            ferry(&args, &[]).await
        }
    };
    for (text, says) in [
        ("scheduler = [\"a:1\"]\ncache-tll = \"1h\"\n", "unknown key `cache-tll`"),
        ("scheduler = [\"a:1\"]\ncache-ttl = \"soon\"\n", "key `cache-ttl`"),
        ("scheduler = [\"a:1\"]\nseed = \"yes\"\n", "key `seed`: expected true or false"),
        ("scheduler = \n", "config file"),
    ] {
        std::fs::write(&conf, text).unwrap();
        let o = run(&[]).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{text}: {err}");
    }
    let o = ferry(&["daemon", "--config", "/nonexistent/daemon.toml"], &[]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));

    // Secrets from a file named in the config, and from `<VAR>_FILE`: used, never printed.
    let secret = dir.path().join("aws-secret");
    std::fs::write(&secret, "s3cr3t-from-file\n").unwrap();
    let token = dir.path().join("aws-token");
    std::fs::write(&token, "t0ken-from-env-file\n").unwrap();
    std::fs::write(
        &conf,
        format!("scheduler = [\"a:1\"]\ns3-secret-access-key-file = \"{}\"\ns3-region = \"eu-1\"\n", secret.display()),
    )
    .unwrap();
    let o = ferry(
        &["daemon", "--config", &conf.display().to_string(), "--print-config", "--zone", "z9"],
        &[("AWS_SESSION_TOKEN_FILE", token.to_str().unwrap())],
    )
    .await;
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!printed.contains("s3cr3t") && !printed.contains("t0ken"), "{printed}");
    for line in [
        "s3-secret-access-key = \"<redacted>\"  # config file",
        "s3-session-token = \"<redacted>\"",
        "s3-region = \"eu-1\"  # config file",
        "zone = \"z9\"  # command line",
        "cache-ttl = \"24h\"  # default",
    ] {
        assert!(printed.contains(line), "missing `{line}` in:\n{printed}");
    }
}
