//! Several schedulers: tasks spread over them by rendezvous hash, downloads work.

mod common;

use common::{download, scheduler_stats, Setup, Spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_land_on_both_schedulers() {
    let names: Vec<String> = (0..12).map(|i| format!("f{i}.bin")).collect();
    let files: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 300 * 1024)).collect();
    let s = Setup::start(Spec { files: &files, schedulers: 2, ..Default::default() }).await;
    let mut jobs = vec![];
    for p in &s.peers {
        for n in &names {
            let out = s.out(&format!("{}-{n}", p.name));
            let url = s.origin.url(n);
            jobs.push(async move { download(p, &url, &out).await.map(|_| out) });
        }
    }
    let outs = futures::future::join_all(jobs).await;
    for (i, r) in outs.into_iter().enumerate() {
        let out = r.unwrap();
        assert!(s.verify(&names[i % names.len()], &out));
    }
    let a = scheduler_stats(&s.cluster.schedulers[0]).await.tasks;
    let b = scheduler_stats(&s.cluster.schedulers[1]).await.tasks;
    assert_eq!(a + b, names.len() as u64, "every task has exactly one scheduler");
    assert!(a > 0 && b > 0, "tasks did not spread: {a} and {b}");
    let served = s.origin.bytes_served();
    assert!(served as f64 <= 1.05 * (12 * 300 * 1024) as f64, "origin served {served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_survives_its_scheduler() {
    let size = 2 << 20;
    let mut s = Setup::start(Spec { files: &[("f.bin", size)], schedulers: 2, ..Default::default() }).await;
    let (first, rest) = s.peers.split_at(4);
    let rest: Vec<_> = rest.to_vec();
    s.download_verified(first, "f.bin").await;
    // Kill the scheduler that owns the task; daemons move to the other one and re-register
    // what they hold (layout and digests included).
    let mut owner = None;
    for (i, addr) in s.cluster.schedulers.iter().enumerate() {
        if scheduler_stats(addr).await.tasks == 1 {
            owner = Some(i);
        }
    }
    let owner = owner.expect("one scheduler owns the task");
    s.cluster.kill(&format!("scheduler-{owner}")).await;
    let survivor = s.cluster.schedulers[1 - owner].clone();
    ferry_testkit::wait_until("peers to re-register with the survivor", std::time::Duration::from_secs(20), || {
        let survivor = survivor.clone();
        async move { (scheduler_stats(&survivor).await.peers >= 5).then_some(()) }
    })
    .await;
    s.download_verified(&rest, "f.bin").await;
    let served = s.origin.bytes_served();
    assert!(served as f64 <= 1.05 * size as f64, "origin read again after failover: {served}");
    for p in &rest {
        assert_eq!(common::stats(p).await.unwrap().bytes_from_origin, 0, "{} went to origin", p.name);
    }
}
