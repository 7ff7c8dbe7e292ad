//! What operators see: `/metrics` of scheduler and daemons (checked against the bytes that
//! really moved, and parsed by the Prometheus project's own OpenMetrics parser), and
//! readiness following the daemon's scheduler session. Real processes on loopback.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Setup, Spec};
use ferry_demo::cluster::Cluster;

/// One sample: metric name (as exposed, with `_total`, `_bucket`, ...), labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Scrapes `addr/metrics` and parses it with `prometheus_client`'s OpenMetrics parser (which
/// refuses what does not follow the format).
async fn scrape(addr: &str) -> Vec<Sample> {
    let resp = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = resp.text().await.unwrap();
    let script = "import sys, json\n\
                  from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
                  out = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
                  print(json.dumps(out))";
    let python = std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = tokio::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test installs prometheus-client)");
    use tokio::io::AsyncWriteExt;
    child.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "the parser refused:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

fn within_1pct(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= want * 0.01, "{what}: metrics say {got}, really {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_bytes_that_moved() {
    const SIZE: usize = 48 << 20;
    let s = Setup::start(Spec { peers: 4, files: &[("f.bin", SIZE)], ..Default::default() }).await;
    s.download_verified(&s.peers, "f.bin").await;
    let mut daemons = vec![s.seed.clone()];
    daemons.extend(s.peers.iter().cloned());
    let (mut origin, mut from_peers, mut received, mut uploaded) = (0.0, 0.0, 0.0, 0.0);
    for d in &daemons {
        let m = scrape(&d.metrics_addr).await;
        let (o, p) = (
            value(&m, "ferry_daemon_downloaded_bytes_total", &[("source", "origin")]),
            value(&m, "ferry_daemon_downloaded_bytes_total", &[("source", "peer")]),
        );
        if d.name != "seed" {
            assert_eq!(o + p, SIZE as f64, "{}: every byte came from the origin or a peer", d.name);
            assert_eq!(value(&m, "ferry_daemon_tasks", &[("state", "complete")]), 1.0, "{}", d.name);
        }
        origin += o;
        from_peers += p;
        received += value(&m, "ferry_daemon_peer_received_bytes_total", &[]);
        uploaded += value(&m, "ferry_daemon_uploaded_bytes_total", &[]);
        assert!(value(&m, "ferry_daemon_piece_download_seconds_count", &[]) > 0.0 || p == 0.0, "{}", d.name);
        assert_eq!(value(&m, "ferry_daemon_scheduler_sessions", &[]), 1.0);
    }
    within_1pct(origin, s.origin.bytes_served() as f64, "bytes from the origin");
    // What parents sent is what children received; what children kept is the file (the rest
    // were end-game duplicates).
    within_1pct(received, uploaded, "bytes between peers");
    assert!(from_peers > 0.0 && from_peers <= received);

    let sched = scrape(&s.cluster.metrics_of("scheduler-0").unwrap()).await;
    dashboard_names_exist(&[&scrape(&s.peers[0].metrics_addr).await, &sched]);
    assert_eq!(value(&sched, "ferry_scheduler_hosts", &[("role", "seed")]), 1.0);
    assert_eq!(value(&sched, "ferry_scheduler_hosts", &[("role", "peer")]), 4.0);
    assert!(value(&sched, "ferry_scheduler_registrations_total", &[]) >= 5.0);
    assert_eq!(value(&sched, "ferry_scheduler_seed_fetches_total", &[]), 1.0);
    let decisions = value(&sched, "ferry_scheduler_decisions_total", &[]);
    assert_eq!(value(&sched, "ferry_scheduler_decision_seconds_count", &[]), decisions);
    assert!(decisions >= 4.0);
}

/// Every series the Grafana dashboard queries is one the roles export.
fn dashboard_names_exist(scrapes: &[&Vec<Sample>]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/ferry.json");
    let text = std::fs::read_to_string(path).unwrap();
    let exported: std::collections::HashSet<&str> =
        scrapes.iter().flat_map(|s| s.iter().map(|(n, _, _)| n.as_str())).collect();
    let mut queried: Vec<&str> = text
        .match_indices("ferry_")
        .map(|(at, _)| {
            let rest = &text[at..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        })
        .filter(|n| n.starts_with("ferry_daemon_") || n.starts_with("ferry_scheduler_"))
        .collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        assert!(exported.contains(name), "the dashboard queries {name}, which no role exports");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_scheduler_session() {
    let mut cluster = Cluster::new(common::bin()).unwrap();
    // The scheduler's address before it runs.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    cluster.schedulers = vec![addr.clone()];
    let d = cluster.start_daemon("d", false, &[]).await.unwrap();
    let get = |path: &'static str| {
        let url = format!("http://{}{path}", d.health_addr);
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(get("/livez").await, 200);
    let r = reqwest::get(format!("http://{}/readyz", d.health_addr)).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no scheduler"));
    cluster.start_scheduler_on("scheduler", &addr).await.unwrap();
    ferry_testkit::wait_until("the daemon to be ready", Duration::from_secs(20), || async {
        (get("/readyz").await == 200).then_some(())
    })
    .await;
    cluster.kill("scheduler").await;
    ferry_testkit::wait_until("the daemon to be unready again", Duration::from_secs(20), || async {
        (get("/readyz").await == 503).then_some(())
    })
    .await;
    cluster.shutdown().await;
}
