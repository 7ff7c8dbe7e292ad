//! Rate limits: a daemon's upload cap holds, and a cap on concurrent origin reads holds for
//! every task of one origin, across a scheduler restart. Real processes on loopback; the
//! origin counts the response bodies it sends at once.

mod common;

use std::time::{Duration, Instant};

use common::{download, stats, Setup, Spec};
use ferry_demo::origin::OriginOptions;
use ferry_testkit::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cap_of_20_mb_per_second_holds() {
    const SIZE: usize = 120_000_000;
    let spec =
        Spec { peers: 1, files: &[("f.bin", SIZE)], seed_args: &["--upload-rate", "20MB"], ..Default::default() };
    let s = Setup::start(spec).await;
    let (peer, seed) = (s.peers[0].clone(), s.seed.clone());
    let (url, out) = (s.origin.url("f.bin"), s.out("f"));
    let fetch = tokio::spawn(async move { download(&peer, &url, &out).await });
    // The rate between two points well inside the transfer (start-up and the burst left out).
    let uploaded = |at: u64| {
        let seed = seed.clone();
        async move {
            let up = stats(&seed).await?.bytes_uploaded;
            (up >= at).then(|| (Instant::now(), up))
        }
    };
    let (t1, b1) = wait_until("20 MB uploaded", Duration::from_secs(30), || uploaded(20_000_000)).await;
    let (t2, b2) = wait_until("100 MB uploaded", Duration::from_secs(30), || uploaded(100_000_000)).await;
    let rate = (b2 - b1) as f64 / t2.duration_since(t1).as_secs_f64();
    eprintln!("seed uploaded at {:.2} MB/s", rate / 1e6);
    assert!((18e6..=22e6).contains(&rate), "upload rate {:.2} MB/s, cap 20 MB/s", rate / 1e6);
    fetch.await.unwrap().unwrap();
    assert!(s.verify("f.bin", &s.out("f")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origin_read_at_a_time_across_a_scheduler_restart() {
    // Eight files of one origin, 2 s each to read: eight peers, no seed, each wants its own.
    let names: Vec<String> = (0..8).map(|i| format!("f{i}.bin")).collect();
    let files: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 4 << 20)).collect();
    let origin = OriginOptions { throttle: Some(2 << 20), ..Default::default() };
    let scheduler_args = &["--origin-concurrency", "1"];
    let spec = Spec { peers: 8, files: &files, origin, seed: false, scheduler_args, ..Default::default() };
    let mut s = Setup::start(spec).await;
    let jobs: Vec<_> = s
        .peers
        .iter()
        .zip(&names)
        .map(|(p, n)| {
            let (p, url, out) = (p.clone(), s.origin.url(n), s.out(n));
            tokio::spawn(async move { download(&p, &url, &out).await })
        })
        .collect();
    // Restart the scheduler once two files are in.
    wait_until("two files read", Duration::from_secs(60), || async {
        (s.origin.bytes_served() >= 8 << 20).then_some(())
    })
    .await;
    let args = s.cluster.args_of("scheduler-0").unwrap();
    s.cluster.kill("scheduler-0").await;
    s.cluster.restart("scheduler-0", args).await.unwrap();
    for j in jobs {
        j.await.unwrap().unwrap();
    }
    for n in &names {
        assert!(s.verify(n, &s.out(n)), "{n}");
    }
    assert_eq!(s.origin.max_concurrent(), 1, "the origin was read more than once at a time");
    assert_eq!(s.origin.bytes_served(), 8 * (4 << 20), "each file read once");
}
