//! Many peers, one file: the origin is read once and peers feed each other, also when a
//! parent dies or lies.

mod common;

use std::time::Duration;

use common::{download, stats, Setup, Spec};
use ferry_demo::origin::OriginOptions;
use ferry_testkit::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_at_once_reads_origin_once() {
    let size = 8 << 20;
    let s = Setup::start(Spec { files: &[("f.bin", size)], ..Default::default() }).await;
    let url = s.origin.url("f.bin");
    let outs: Vec<_> = s.peers.iter().map(|p| s.out(&p.name)).collect();
    // Two local requests on peer-0 for the same task share one download.
    let extra = s.out("peer-0-again");
    let seed_out = s.out("seed");
    let mut jobs: Vec<_> = s.peers.iter().zip(&outs).map(|(p, o)| download(p, &url, o)).collect();
    jobs.push(download(&s.peers[0], &url, &extra));
    // The seed host downloads too: its local request and the scheduler's fetch order meet in
    // one task, which must then read the origin.
    jobs.push(download(&s.seed, &url, &seed_out));
    for r in futures::future::join_all(jobs).await {
        r.unwrap();
    }
    for o in outs.iter().chain([&extra, &seed_out]) {
        assert!(s.verify("f.bin", o), "{} differs from the origin's bytes", o.display());
    }
    let served = s.origin.bytes_served();
    assert!(served as f64 <= 1.05 * size as f64, "origin served {served} bytes for a {size}-byte file");
    for p in &s.peers {
        let st = stats(p).await.unwrap();
        assert!(st.bytes_from_peers >= size as u64 / 2, "{} got only {} bytes from peers", p.name, st.bytes_from_peers);
        assert_eq!(st.bytes_from_peers + st.bytes_from_origin, size as u64, "{} fetched pieces twice", p.name);
    }
    // The seed hands each piece to one child and the children trade it: it must not upload a
    // copy per child (with 8 children that would be 8 copies).
    let seed_up = stats(&s.seed).await.unwrap().bytes_uploaded;
    assert!(seed_up as f64 <= 1.5 * size as f64, "seed uploaded {seed_up} bytes for a {size}-byte file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_killed_mid_transfer() {
    let size = 8 << 20;
    // A slow origin keeps the swarm mid-transfer long enough to kill a parent in it.
    let origin = OriginOptions { throttle: Some(4 << 20), ..Default::default() };
    let mut s = Setup::start(Spec { files: &[("f.bin", size)], origin, ..Default::default() }).await;
    let url = s.origin.url("f.bin");
    let jobs: Vec<_> = s
        .peers
        .iter()
        .map(|p| {
            let (p, url, o) = (p.clone(), url.clone(), s.out(&p.name));
            tokio::spawn(async move { download(&p, &url, &o).await.map(|_| o) })
        })
        .collect();
    // Kill whichever peer is first seen feeding others before it has everything.
    let peers = s.peers.clone();
    let victim = wait_until("a peer to upload while incomplete", Duration::from_secs(30), || {
        let peers = peers.clone();
        async move {
            for (i, p) in peers.iter().enumerate() {
                let Some(st) = stats(p).await else { continue };
                let Some(t) = st.tasks.first() else { continue };
                if st.bytes_uploaded > 0 && !t.complete {
                    return Some(i);
                }
            }
            None
        }
    })
    .await;
    s.cluster.kill(&s.peers[victim].name).await;
    for (i, job) in jobs.into_iter().enumerate() {
        let r = job.await.unwrap();
        if i == victim {
            assert!(r.is_err(), "the killed daemon's own download cannot succeed");
        } else {
            assert!(s.verify("f.bin", &r.unwrap()), "{} holds wrong bytes", s.peers[i].name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_parent_is_caught_and_excluded() {
    let size = 4 << 20;
    let mut s = Setup::start(Spec { files: &[("f.bin", size)], peers: 8, ..Default::default() }).await;
    let url = s.origin.url("f.bin");
    // A liar joins, gets the whole file honestly, then serves flipped bytes.
    let liar = s.cluster.start_daemon("liar", false, &["--corrupt-uploads"]).await.unwrap();
    s.wait_hosts(10).await;
    download(&liar, &url, &s.out("liar")).await.unwrap();
    let outs: Vec<_> = s.peers.iter().map(|p| s.out(&p.name)).collect();
    let jobs: Vec<_> = s.peers.iter().zip(&outs).map(|(p, o)| download(p, &url, o)).collect();
    for r in futures::future::join_all(jobs).await {
        r.unwrap();
    }
    let mut rejected = 0;
    for (p, o) in s.peers.iter().zip(&outs) {
        assert!(s.verify("f.bin", o), "{} holds wrong bytes", p.name);
        rejected += stats(p).await.unwrap().pieces_rejected;
    }
    assert!(rejected >= 1, "no peer ever received a piece from the liar; the test proved nothing");
    // Once caught, the liar is excluded: a later peer never even gets it as a parent.
    let late = s.cluster.start_daemon("late", false, &[]).await.unwrap();
    s.wait_hosts(11).await;
    download(&late, &url, &s.out("late")).await.unwrap();
    assert!(s.verify("f.bin", &s.out("late")));
    assert_eq!(stats(&late).await.unwrap().pieces_rejected, 0, "the excluded liar was offered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interesting_sizes_arrive_whole() {
    // Piece size is 256 KiB in these clusters.
    let p = 256 * 1024;
    let sizes = [("zero", 0), ("one", 1), ("piece-1", p - 1), ("piece", p), ("piece+1", p + 1), ("many", 9 * p + 7)];
    let s = Setup::start(Spec { files: &sizes, peers: 2, ..Default::default() }).await;
    for (name, _) in sizes {
        let url = s.origin.url(name);
        let outs: Vec<_> = s.peers.iter().map(|p| s.out(&format!("{}-{name}", p.name))).collect();
        let jobs = s.peers.iter().zip(&outs).map(|(p, o)| download(p, &url, o));
        for r in futures::future::join_all(jobs).await {
            r.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for o in &outs {
            assert!(s.verify(name, o), "{name}: {} differs", o.display());
        }
    }
}
