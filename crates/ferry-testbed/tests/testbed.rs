//! Keeps the testbed from rotting: a 4-host, 16 MiB run of `ferry` and the bound on a real
//! emulated network. Root only (CI is root); skips with the reason where namespaces cannot be made.

use std::process::Command;

#[test]
fn four_hosts_ferry_and_bound() {
    let probe = format!("ftbtest{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &probe]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        eprintln!("skipping: cannot create network namespaces here (needs root and iproute2)");
        return;
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();

    let dir = OutDir::new();
    let out = dir.0.clone();
    let ferry = std::path::Path::new(env!("CARGO_BIN_EXE_ferry-testbed")).with_file_name("ferry");
    assert!(ferry.exists(), "build the ferry binary first (cargo build --workspace)");
    let o = Command::new(env!("CARGO_BIN_EXE_ferry-testbed"))
        .args(["run", "--hosts", "4", "--size", "16MiB", "--link", "200mbit", "--origin-link", "200mbit"])
        .args(["--systems", "ferry", "--json", "--out"])
        .arg(&out)
        .arg("--ferry-bin")
        .arg(&ferry)
        .output()
        .unwrap();
    assert!(o.status.success(), "testbed failed: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bound = v["bound_s"].as_f64().unwrap();
    // 16 MiB at 200 Mbit/s from one origin: S/u = 0.67 s.
    assert!((bound - 0.671).abs() < 0.01, "bound {bound}");
    let ferry = &v["systems"][0];
    assert_eq!(ferry["system"], "ferry");
    assert_eq!(ferry["all_survivors_verified"], true);
    assert_eq!(ferry["hosts"].as_array().unwrap().len(), 4);
    assert!(ferry["origin_bytes_over_size"].as_f64().unwrap() <= 1.05);
    assert!(ferry["makespan_s"].as_f64().unwrap() >= bound * 0.95, "faster than physics: the caps are not applied");
    for f in ["results.json", "results.md", "cdf.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // Nothing left behind.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains("ftb"), "namespaces left behind");
}

/// The results directory, removed even when an assertion fails.
struct OutDir(std::path::PathBuf);

impl OutDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("ferry-testbed-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The scheduler load generator at a small size: every peer that registered without the task
/// got a decision, the scheduler holds every peer, and departing hosts leave its books.
#[test]
fn load_generator_gets_every_peer_a_decision() {
    let ferry = std::path::Path::new(env!("CARGO_BIN_EXE_ferry-testbed")).with_file_name("ferry");
    assert!(ferry.exists(), "build the ferry binary first (cargo build --workspace)");
    let o = Command::new(env!("CARGO_BIN_EXE_ferry-testbed"))
        .args(["load", "--hosts", "100", "--peers", "1000", "--tasks", "10", "--ferry-bin"])
        .arg(&ferry)
        .output()
        .unwrap();
    assert!(o.status.success(), "load failed: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(n("undecided"), 0, "{v}");
    let decided = n("parents") + n("wait_for_seed") + n("back_to_source");
    assert!(decided >= 990, "990 peers registered without the task: {v}");
    assert_eq!(n("failed"), 0);
    assert_eq!((n("scheduler_hosts"), n("scheduler_peers")), (100, 1000), "{v}");
    assert_eq!(n("hosts_after_departures"), 90, "{v}");
    assert!(n("latency_us_p50") > 0 && n("latency_us_p99") >= n("latency_us_p50"));
    assert!(n("round_trip_us_p50") > 0, "the no-op round trip was timed: {v}");
    let inside = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(inside("scheduler_decision_us_p50") > 0.0, "the scheduler's histogram was read: {v}");
    assert!(inside("scheduler_decision_us_p99") >= inside("scheduler_decision_us_p50"));
    assert!(v["rss_per_peer_bytes"].as_f64().unwrap() > 0.0);
}
