//! `ferry demo`: a whole cluster on loopback, one file downloaded by every peer at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_proto::daemon::{DownloadRequest, StatsRequest};
use serde::Serialize;

use crate::cli::DemoArgs;
use crate::{exit, Exit};
use ferry_demo::cluster::{Cluster, DaemonInfo};
use ferry_demo::data;
use ferry_demo::origin::{Origin, OriginOptions};

#[derive(Serialize, Debug)]
pub struct PeerReport {
    pub name: String,
    pub bytes_from_peers: u64,
    pub bytes_from_origin: u64,
    pub bytes_uploaded: u64,
    pub seconds: f64,
    pub verified: bool,
}

#[derive(Serialize, Debug)]
pub struct DemoReport {
    pub peers: usize,
    pub file_bytes: u64,
    pub piece_size: Option<u64>,
    pub origin_bytes_served: u64,
    pub all_verified: bool,
    pub seconds: f64,
    pub seed: PeerReport,
    pub per_peer: Vec<PeerReport>,
}

fn fail(e: impl std::fmt::Display) -> Exit {
    Exit::new(exit::FAILURE, format!("demo: {e}"))
}

pub async fn run(a: DemoArgs) -> Result<(), Exit> {
    if a.peers == 0 {
        return Err(Exit::new(exit::USAGE, "--peers must be at least 1"));
    }
    let bin = std::env::current_exe().map_err(fail)?;
    let mut cluster = Cluster::new(bin).map_err(fail)?;
    let result = tokio::select! {
        r = run_in(&mut cluster, &a) => r,
        _ = crate::shutdown_signal() => Err(Exit::new(130, "interrupted; stopped the cluster and removed its files")),
    };
    cluster.shutdown().await;
    let report = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
    } else {
        print_table(&report);
    }
    if report.all_verified {
        Ok(())
    } else {
        Err(Exit::new(exit::INTEGRITY, "demo: some peer's file did not verify"))
    }
}

async fn run_in(cluster: &mut Cluster, a: &DemoArgs) -> Result<DemoReport, Exit> {
    let size = usize::try_from(a.size.0).map_err(|_| Exit::new(exit::USAGE, "--size too large"))?;
    let content = data::generate(42, size);
    let expected = blake3::hash(&content);
    let origin = Origin::start(HashMap::from([("demo.bin".to_owned(), content)]), OriginOptions::default())
        .await
        .map_err(fail)?;
    // As it would be deployed: every role proves it belongs to the cluster (mutual TLS).
    cluster.enable_membership().map_err(fail)?;
    cluster.start_scheduler("scheduler").await.map_err(fail)?;
    let piece = a.piece_size.map(|p| p.to_string());
    let seed_extra: Vec<&str> = piece.as_deref().map(|p| vec!["--piece-size", p]).unwrap_or_default();
    let seed = cluster.start_daemon("seed", true, &seed_extra).await.map_err(fail)?;
    let mut peers = vec![];
    for i in 0..a.peers {
        peers.push(cluster.start_daemon(&format!("peer-{i}"), false, &[]).await.map_err(fail)?);
    }
    wait_for_hosts(cluster, a.peers + 1).await?;

    let url = origin.url("demo.bin");
    let out_dir = cluster.dir().join("out");
    std::fs::create_dir_all(&out_dir).map_err(fail)?;
    let started = Instant::now();
    let downloads = peers.iter().map(|p| {
        let (url, out) = (url.clone(), out_dir.join(&p.name));
        async move {
            let t = Instant::now();
            download(p, &url, &out, a.link).await.map(|_| (t.elapsed().as_secs_f64(), out))
        }
    });
    let results = futures::future::join_all(downloads).await;
    let seconds = started.elapsed().as_secs_f64();

    let mut per_peer = vec![];
    for (p, r) in peers.iter().zip(results) {
        let (secs, out) = r.map_err(|e| fail(format!("{}: {}", p.name, e.message)))?;
        let verified = std::fs::read(&out).map(|b| blake3::hash(&b) == expected).unwrap_or(false);
        per_peer.push(report(p, secs, verified).await?);
    }
    let seed_report = report(&seed, seconds, true).await?;
    Ok(DemoReport {
        peers: a.peers,
        file_bytes: size as u64,
        piece_size: a.piece_size.map(|p| p.0),
        origin_bytes_served: origin.bytes_served(),
        all_verified: per_peer.iter().all(|p| p.verified),
        seconds,
        seed: seed_report,
        per_peer,
    })
}

async fn wait_for_hosts(cluster: &Cluster, n: usize) -> Result<(), Exit> {
    let channel = cluster.scheduler_channel(&cluster.schedulers[0], "demo").map_err(fail)?;
    let mut client = ferry_proto::scheduler::scheduler_client::SchedulerClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = client.stats(ferry_proto::scheduler::StatsRequest {}).await.map_err(fail)?.into_inner();
        if stats.hosts as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(format!("only {} of {n} hosts joined the scheduler", stats.hosts)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn download(p: &DaemonInfo, url: &str, out: &std::path::Path, link: bool) -> Result<(), Exit> {
    let mut c = ferry_daemon::local::connect(&p.socket).await.map_err(|m| Exit::new(exit::NO_DAEMON, m))?;
    let req = DownloadRequest { url: url.to_owned(), output: out.display().to_string(), link, ..Default::default() };
    let mut s = c.download(req).await.map_err(|s| crate::commands::get::exit_for(&s))?.into_inner();
    loop {
        match s.message().await {
            Ok(Some(m)) if m.done => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => return Err(Exit::new(exit::FAILURE, "download ended without a result")),
            Err(st) => return Err(crate::commands::get::exit_for(&st)),
        }
    }
}

async fn report(p: &DaemonInfo, seconds: f64, verified: bool) -> Result<PeerReport, Exit> {
    let mut c = ferry_daemon::local::connect(&p.socket).await.map_err(|m| Exit::new(exit::NO_DAEMON, m))?;
    let s = c.stats(StatsRequest {}).await.map_err(|s| fail(s.message()))?.into_inner();
    Ok(PeerReport {
        name: p.name.clone(),
        bytes_from_peers: s.bytes_from_peers,
        bytes_from_origin: s.bytes_from_origin,
        bytes_uploaded: s.bytes_uploaded,
        seconds,
        verified,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn print_table(r: &DemoReport) {
    println!(
        "Ferry demo: {} peers + 1 seed, {:.1} MiB file, {:.2} s, origin served {:.1} MiB ({:.2} copies)",
        r.peers,
        mib(r.file_bytes),
        r.seconds,
        mib(r.origin_bytes_served),
        r.origin_bytes_served as f64 / r.file_bytes.max(1) as f64
    );
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>8} {:>9}",
        "peer", "from peers", "from origin", "uploaded", "seconds", "verified"
    );
    for p in std::iter::once(&r.seed).chain(&r.per_peer) {
        println!(
            "{:<10} {:>8.1} MiB {:>8.1} MiB {:>8.1} MiB {:>8.2} {:>9}",
            p.name,
            mib(p.bytes_from_peers),
            mib(p.bytes_from_origin),
            mib(p.bytes_uploaded),
            p.seconds,
            if p.verified { "yes" } else { "NO" }
        );
    }
}
