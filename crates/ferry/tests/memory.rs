//! A daemon that holds many finished tasks stays small: each finished task costs its
//! registry entry, its content's availability and one open descriptor, not a download's
//! worth of state. The test fetches `FERRY_MEMORY_TASKS` (default 2,000) distinct small
//! tasks through one daemon and checks the resident-memory growth per task, on the daemon
//! and on the scheduler; the README quotes a 10,000-task run of the same test.

mod common;

use common::{download, Setup, Spec};
use futures::StreamExt;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_finished_tasks_keep_the_daemon_and_scheduler_small() {
    let tasks: usize = std::env::var("FERRY_MEMORY_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let s = Setup::start(Spec { peers: 1, seed: false, files: &[("small.bin", 1000)], ..Default::default() }).await;
    let peer = &s.peers[0];
    let daemon = s.cluster.pid(&peer.name).unwrap();
    let scheduler = s.cluster.pid("scheduler-0").unwrap();
    let url = s.origin.url("small.bin");
    // A first task warms allocators and connection pools, so the baseline is steady state.
    download(peer, &format!("{url}?warm"), &s.out("warm")).await.unwrap();
    let (d0, s0, f0) = (rss_kib(daemon), rss_kib(scheduler), open_fds(daemon));
    let started = std::time::Instant::now();
    let jobs = futures::stream::iter(0..tasks).map(|i| {
        let (url, out) = (format!("{url}?n={i}"), s.out(&format!("o{}", i % 64)));
        async move { download(peer, &url, &out).await.unwrap_or_else(|e| panic!("task {i}: {e}")) }
    });
    jobs.buffer_unordered(16).collect::<Vec<()>>().await;
    let took = started.elapsed();
    let stats = common::stats(peer).await.unwrap();
    assert_eq!(stats.tasks.len(), tasks + 1, "every task is held");
    let (d1, s1, f1) = (rss_kib(daemon), rss_kib(scheduler), open_fds(daemon));
    let per_task = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / tasks as f64;
    eprintln!(
        "{tasks} finished tasks in {took:.1?}: daemon {d0} -> {d1} KiB ({:.1} KiB/task), \
         scheduler {s0} -> {s1} KiB ({:.1} KiB/task), daemon fds {f0} -> {f1}",
        per_task(d0, d1),
        per_task(s0, s1),
    );
    assert!(per_task(d0, d1) < 8.0, "daemon grows {:.1} KiB per finished task", per_task(d0, d1));
    assert!(per_task(s0, s1) < 6.0, "scheduler grows {:.1} KiB per finished task", per_task(s0, s1));
    assert!(f1 <= f0 + 64, "finished tasks keep no descriptor each: {f0} -> {f1}");
}
