//! The cache stays within its bounds: a quota keeps the most recent tasks, and a task in use
//! is never collected. Real daemons, the test origin on loopback.

mod common;

use std::path::Path;

use common::{download, stats, Setup, Spec};
use ferry_demo::origin::OriginOptions;

const MIB: u64 = 1 << 20;

/// Bytes the daemon's content files take on disk.
fn cache_bytes(data_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(data_dir.join("content"))
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_keeps_the_most_recent_tasks_and_stays_under() {
    let names: Vec<String> = (0..10).map(|i| format!("f{i}.bin")).collect();
    let files: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 64 << 20)).collect();
    let spec = Spec { peers: 1, files: &files, peer_args: &["--cache-quota", "256MiB"], ..Default::default() };
    let s = Setup::start(spec).await;
    let peer = &s.peers[0];
    let mut most = 0;
    for n in &names {
        let out = s.out(n);
        download(peer, &s.origin.url(n), &out).await.unwrap();
        assert!(s.verify(n, &out), "{n}");
        std::fs::remove_file(&out).unwrap();
        let held = cache_bytes(&peer.data_dir);
        most = most.max(held);
        assert!(held <= 256 * MIB, "after {n} the cache holds {} MiB", held / MIB);
    }
    // The last ones are still here; the first is gone.
    let before = stats(peer).await.unwrap();
    download(peer, &s.origin.url("f9.bin"), &s.out("again-9")).await.unwrap();
    let after = stats(peer).await.unwrap();
    assert_eq!(after.bytes_from_cache - before.bytes_from_cache, 64 * MIB, "the most recent task was collected");
    download(peer, &s.origin.url("f0.bin"), &s.out("again-0")).await.unwrap();
    let last = stats(peer).await.unwrap();
    assert_eq!(last.bytes_from_cache, after.bytes_from_cache, "the oldest task is still cached");
    assert!(s.verify("f0.bin", &s.out("again-0")));
    eprintln!("largest cache seen: {} MiB", most / MIB);
    // The scheduler no longer counts this host as a parent of the tasks it collected (they
    // were parked there: the host's keepalive names them as dropped). The seed holds all 10.
    let held = stats(peer).await.unwrap().tasks.len() as u64;
    assert!(held < 10, "the peer holds {held} tasks");
    let sched = s.cluster.schedulers[0].clone();
    ferry_testkit::wait_until("the scheduler to forget collected tasks", std::time::Duration::from_secs(10), || {
        let sched = sched.clone();
        async move { (common::scheduler_stats(&sched).await.peers == 10 + held).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_being_downloaded_is_never_collected() {
    // 16 MiB at 8 MiB/s through a cache of 8 MiB collected ten times a second: the task is
    // over the quota for its whole life, and in use.
    let origin = OriginOptions { throttle: Some(8 << 20), ..Default::default() };
    let peer_args = &["--cache-quota", "8MiB", "--gc-interval", "100ms"];
    let s =
        Setup::start(Spec { peers: 1, files: &[("big.bin", 16 << 20)], origin, peer_args, ..Default::default() }).await;
    let out = s.out("big");
    download(&s.peers[0], &s.origin.url("big.bin"), &out).await.unwrap();
    assert!(s.verify("big.bin", &out));
    // Collected once done and no longer asked for (so the collector did run over the
    // quota), never before it completed.
    ferry_testkit::wait_until("the finished task to be collected", std::time::Duration::from_secs(10), || async {
        s.cluster.log_of("peer-0").contains("removed from the cache").then_some(())
    })
    .await;
    let log = s.cluster.log_of("peer-0");
    let complete = log.find("task complete").expect("the task completed");
    assert!(log.find("removed from the cache").is_some_and(|at| at > complete), "collected while in use:\n{log}");
}

/// The daemon's background loops answer for themselves in `Stats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_workers_report_their_status() {
    let s = Setup::start(Spec { peers: 1, ..Default::default() }).await;
    let workers = stats(&s.peers[0]).await.unwrap().workers;
    let names: Vec<&str> = workers.iter().map(|w| w.name.as_str()).collect();
    for want in ["cache-collector", "piece-server", "scheduler-orders"] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("host-session ")), "{names:?}");
    assert!(workers.iter().all(|w| w.status == "running"), "{workers:?}");
}
