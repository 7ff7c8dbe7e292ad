//! Hosts in different networks: a peer in its own network namespace, reached over a veth
//! pair in 198.19.77.0/24 (the benchmarking range), finds the seed with default flags. Needs
//! root; outside CI a non-root run skips.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::{bin, download, stats};
use ferry_demo::cluster::Cluster;
use ferry_demo::data;
use ferry_demo::origin::{Origin, OriginOptions};
use ferry_testkit::wait_until;

const HOST_SIDE: &str = "198.19.77.1";
const NS_SIDE: &str = "198.19.77.2";

/// A namespace joined to this one by a veth pair; removed on drop, also when a test fails.
struct Netns {
    name: String,
    veth: String,
}

impl Netns {
    /// `None` when this is not root, which only a run outside CI may skip.
    fn create() -> Option<Self> {
        let id = std::process::id();
        let ns = Self { name: format!("ferry-t{id}"), veth: format!("fvt{}", id % 100_000) };
        let _ = Command::new("ip").args(["link", "del", &ns.veth]).output();
        let ok = |args: &[&str]| Command::new("ip").args(args).output().is_ok_and(|o| o.status.success());
        if !ok(&["netns", "add", &ns.name]) {
            assert!(std::env::var("CI").is_err(), "CI runs as root: creating a network namespace must work");
            eprintln!("skipping: cannot create a network namespace here (needs root)");
            return None;
        }
        let peer = format!("{}p", ns.veth);
        let steps: [&[&str]; 7] = [
            &["link", "add", &ns.veth, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &ns.name],
            &["addr", "add", &format!("{HOST_SIDE}/24"), "dev", &ns.veth],
            &["link", "set", &ns.veth, "up"],
            &["-n", &ns.name, "addr", "add", &format!("{NS_SIDE}/24"), "dev", &peer],
            &["-n", &ns.name, "link", "set", &peer, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            assert!(ok(step), "ip {}", step.join(" "));
        }
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_in_another_network_gets_the_file_from_the_seed_with_default_flags() {
    let Some(ns) = Netns::create() else { return };
    let size = 8 << 20;
    let files = HashMap::from([("f.bin".to_owned(), data::generate(7, size))]);
    let origin = Origin::start_on(format!("{HOST_SIDE}:0").parse().unwrap(), files.clone(), OriginOptions::default())
        .await
        .unwrap();
    let mut cluster = Cluster::new(bin()).unwrap();
    cluster.start_scheduler_on("scheduler-0", &format!("{HOST_SIDE}:0")).await.unwrap();
    let seed = cluster.start_daemon_in(None, "seed", true, &["--piece-size", "1MiB"]).await.unwrap();
    // Slow to give up on the seed, so a seed it cannot reach shows as a long wait and a second
    // origin copy rather than passing by luck.
    let peer =
        cluster.start_daemon_in(Some(&ns.name), "peer", false, &["--back-to-source-after", "60s"]).await.unwrap();
    cluster.start_daemon_in(Some(&ns.name), "loud", false, &["--advertise-ip", "127.0.0.1"]).await.unwrap();
    let sched = cluster.schedulers[0].clone();
    let c =
        ferry_proto::scheduler::scheduler_client::SchedulerClient::connect(format!("http://{sched}")).await.unwrap();
    wait_until("three hosts to join", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move { (c.stats(ferry_proto::scheduler::StatsRequest {}).await.ok()?.into_inner().hosts >= 3).then_some(()) }
    })
    .await;

    let url = origin.url("f.bin");
    let out = cluster.dir().join("seed-copy");
    download(&seed, &url, &out).await.unwrap();
    let out = cluster.dir().join("peer-copy");
    let started = std::time::Instant::now();
    download(&peer, &url, &out).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), files["f.bin"]);
    let from_peers = stats(&peer).await.unwrap().bytes_from_peers;
    assert_eq!(from_peers, size as u64, "every byte from the seed, in {:?}", started.elapsed());
    assert_eq!(origin.bytes_served(), size as u64, "the origin is read once");

    let seed_log = cluster.log_of("seed");
    assert!(seed_log.contains(&format!("advertise={HOST_SIDE}")), "{seed_log}");
    let loud_log = cluster.log_of("loud");
    assert!(loud_log.contains("advertising a loopback address"), "{loud_log}");
    cluster.shutdown().await;
}
