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

/// The only scheduler dies while three peers are mid-way and the seed is still reading the
/// origin: the peers finish from the parents they know (pieces checked against the digests
/// their parents recorded), the origin is still read once, and once the scheduler is back a
/// new peer joins and gets the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_finish_from_known_parents_while_the_only_scheduler_is_down() {
    let size = 16 << 20;
    // 4 MiB/s: the seed needs about 4 s, so the scheduler dies mid-read.
    let origin = ferry_demo::origin::OriginOptions { throttle: Some(4 << 20), ..Default::default() };
    let mut s = Setup::start(Spec { files: &[("f.bin", size)], peers: 4, origin, ..Default::default() }).await;
    let (mid, late) = s.peers.split_at(3);
    let (mid, late) = (mid.to_vec(), late[0].clone());
    let url = s.origin.url("f.bin");
    let jobs: Vec<_> = mid
        .iter()
        .map(|p| {
            let (p, url, out) = (p.clone(), url.clone(), s.out(&p.name));
            tokio::spawn(async move { download(&p, &url, &out).await.map(|_| out) })
        })
        .collect();
    for p in &mid {
        ferry_testkit::wait_until("every peer to hold some pieces", std::time::Duration::from_secs(20), || async {
            (common::stats(p).await?.bytes_from_peers > 0).then_some(())
        })
        .await;
    }
    let sched = s.cluster.schedulers[0].clone();
    s.cluster.kill("scheduler-0").await;
    assert!(s.origin.bytes_served() < size as u64, "the scheduler must die while the seed still reads");
    for (p, job) in mid.iter().zip(jobs) {
        let done = tokio::time::timeout(std::time::Duration::from_secs(60), job).await;
        let out = done.expect("stalled without a scheduler").unwrap().unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert!(s.verify("f.bin", &out), "{} holds wrong bytes", p.name);
    }
    let served = s.origin.bytes_served();
    assert!(served as f64 <= 1.05 * size as f64, "origin read again without a scheduler: {served}");

    // Back on the same address: everyone registers again, and a new peer is served.
    s.cluster.restart("scheduler-0", vec!["scheduler".into(), "--listen".into(), sched.clone()]).await.unwrap();
    s.wait_hosts(5).await;
    let out = s.out("late");
    download(&late, &url, &out).await.unwrap();
    assert!(s.verify("f.bin", &out));
    assert_eq!(common::stats(&late).await.unwrap().bytes_from_origin, 0, "the new peer went to origin");
}

/// The scheduler and the only peer die while the seed reads for that peer: with nobody to
/// tell it, the seed stops the read itself once no child and no local request is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_without_scheduler_stops_reading_for_nobody() {
    let size = 32 << 20;
    let origin = ferry_demo::origin::OriginOptions { throttle: Some(4 << 20), ..Default::default() };
    let spec = Spec {
        files: &[("f.bin", size)],
        peers: 1,
        origin,
        seed_args: &["--unwanted-read-timeout", "1s"],
        ..Default::default()
    };
    let mut s = Setup::start(spec).await;
    let (peer, url, out) = (s.peers[0].clone(), s.origin.url("f.bin"), s.out("f"));
    let job = tokio::spawn(async move { download(&peer, &url, &out).await });
    ferry_testkit::wait_until("the seed to start reading", std::time::Duration::from_secs(20), || async {
        (s.origin.bytes_served() > 0).then_some(())
    })
    .await;
    s.cluster.kill("scheduler-0").await;
    s.cluster.kill("peer-0").await;
    job.abort();
    ferry_testkit::wait_until("the seed to stop its read", std::time::Duration::from_secs(20), || async {
        s.cluster.log_of("seed").contains("nobody waits for this origin read").then_some(())
    })
    .await;
    let served = s.origin.bytes_served();
    assert!(served < size as u64 / 2, "the seed read {served} of {size} bytes for nobody");
}

/// Finished tasks park with their scheduler (no stream each). When that scheduler restarts
/// it knows nothing; the daemons see a new host session and register their parked tasks
/// again, so a new peer is served by them and the origin is not read a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_tasks_register_again_when_their_scheduler_restarts() {
    let size = 4 << 20;
    let mut s = Setup::start(Spec { files: &[("f.bin", size)], peers: 3, ..Default::default() }).await;
    let (first, late) = s.peers.split_at(2);
    let (first, late) = (first.to_vec(), late[0].clone());
    s.download_verified(&first, "f.bin").await;
    let sched = s.cluster.schedulers[0].clone();
    s.cluster.kill("scheduler-0").await;
    s.cluster.restart("scheduler-0", vec!["scheduler".into(), "--listen".into(), sched.clone()]).await.unwrap();
    // The seed and both peers hold the task: all three register it with the new scheduler.
    ferry_testkit::wait_until("parked tasks to register again", std::time::Duration::from_secs(20), || {
        let sched = sched.clone();
        async move { (scheduler_stats(&sched).await.peers >= 3).then_some(()) }
    })
    .await;
    let out = s.out("late");
    download(&late, &s.origin.url("f.bin"), &out).await.unwrap();
    assert!(s.verify("f.bin", &out));
    assert_eq!(common::stats(&late).await.unwrap().bytes_from_origin, 0, "the new peer went to origin");
    let served = s.origin.bytes_served();
    assert!(served as f64 <= 1.05 * size as f64, "origin read again after the restart: {served}");
}
