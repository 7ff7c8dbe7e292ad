//! Files put into the cluster from one host (`ferry cache import|export|stat|rm`): replicated
//! to seeds, fetched anywhere after the importer is gone, no origin anywhere. Real processes
//! on loopback.

mod common;

use std::path::Path;
use std::process::Output;

use common::{bin, stats};
use ferry_demo::cluster::{Cluster, DaemonInfo};
use ferry_demo::data;
use sha2::Digest as _;

async fn cache(d: &DaemonInfo, args: &[&str]) -> Output {
    tokio::process::Command::new(bin()).arg("cache").args(args).arg("--socket").arg(&d.socket).output().await.unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn start(cluster: &mut Cluster, seeds: usize, peers: &[&str]) -> (Vec<DaemonInfo>, Vec<DaemonInfo>) {
    cluster.start_scheduler("scheduler").await.unwrap();
    let mut s = vec![];
    for i in 0..seeds {
        s.push(cluster.start_daemon(&format!("seed-{i}"), true, &["--piece-size", "256KiB"]).await.unwrap());
    }
    let mut p = vec![];
    for name in peers {
        p.push(cluster.start_daemon(name, false, &["--piece-size", "256KiB"]).await.unwrap());
    }
    (s, p)
}

fn write_file(dir: &Path, name: &str, len: usize, seed: u64) -> (std::path::PathBuf, Vec<u8>, String) {
    let bytes = data::generate(seed, len).to_vec();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    (path, bytes, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_file_outlives_its_importer_and_reaches_every_host_from_peers() {
    let mut cluster = Cluster::new(bin()).unwrap();
    let (seeds, peers) = start(&mut cluster, 2, &["importer", "a", "b", "c"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (file, bytes, digest) = write_file(dir.path(), "checkpoint.bin", 24 << 20, 7);
    let file_arg = file.display().to_string();

    let out = cache(&peers[0], &["import", &file_arg, "--replicas", "2", "--ttl", "2h", "--json"]).await;
    assert!(out.status.success(), "import: {}", stderr(&out));
    let j = json(&out);
    assert_eq!(j["digest"], digest);
    let mut replicas: Vec<String> =
        j["replicas"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    replicas.sort();
    assert_eq!(replicas, ["seed-0", "seed-1"]);

    // Both seeds hold it whole and keep it for the TTL; so does the importer.
    let out = cache(&peers[1], &["stat", &digest, "--json"]).await;
    assert!(out.status.success(), "stat: {}", stderr(&out));
    let holders = json(&out)["holders"].as_array().unwrap().clone();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for name in ["importer", "seed-0", "seed-1"] {
        let h = holders.iter().find(|h| h["host_id"] == name).unwrap_or_else(|| panic!("{name} in {holders:?}"));
        assert_eq!(h["complete"], true, "{h}");
        let until = h["pinned_until"].as_u64().unwrap();
        assert!(until > now + 3600 && until <= now + 7300, "{name} pinned until {until}, now {now}");
    }

    cluster.kill("importer").await;
    for p in &peers[1..] {
        let out_path = dir.path().join(format!("export-{}", p.name));
        let out = cache(p, &["export", &digest, "-O", &out_path.display().to_string(), "--json"]).await;
        assert!(out.status.success(), "export on {}: {}", p.name, stderr(&out));
        assert_eq!(json(&out)["bytes_from_peers"], bytes.len() as u64);
        assert!(std::fs::read(&out_path).unwrap() == bytes, "{}: bytes differ", p.name);
    }
    // No origin anywhere: not a byte was read from one.
    for d in seeds.iter().chain(&peers[1..]) {
        assert_eq!(stats(d).await.unwrap().bytes_from_origin, 0, "{}", d.name);
    }

    // Dropped everywhere: a later export finds no holder and says so.
    let out = cache(&peers[1], &["rm", &digest, "--json"]).await;
    assert!(out.status.success(), "rm: {}", stderr(&out));
    let mut told: Vec<String> =
        json(&out)["hosts"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    told.sort();
    assert_eq!(told, ["a", "b", "c", "seed-0", "seed-1"]);
    let (a, d2) = (peers[1].clone(), digest.clone());
    ferry_testkit::wait_until("every holder to drop the file", std::time::Duration::from_secs(10), || {
        let (a, d2) = (a.clone(), d2.clone());
        async move { (cache(&a, &["stat", &d2]).await.status.code() == Some(4)).then_some(()) }
    })
    .await;
    let again = dir.path().join("again");
    let out = cache(&peers[2], &["export", &digest, "-O", &again.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("held by no host"), "{}", stderr(&out));
    assert!(!again.exists(), "nothing written for a failed export");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_replica_is_registered_again_when_its_seed_restarts() {
    let mut cluster = Cluster::new(bin()).unwrap();
    let (_seeds, peers) = start(&mut cluster, 1, &["importer", "a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (file, bytes, digest) = write_file(dir.path(), "shard.bin", 3 << 20, 9);
    let out = cache(&peers[0], &["import", &file.display().to_string(), "--replicas", "1"]).await;
    assert!(out.status.success(), "import: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest, "plain output is the digest alone");
    cluster.kill("importer").await;
    let args = cluster.args_of("seed-0").unwrap();
    cluster.kill("seed-0").await;
    cluster.restart("seed-0", args).await.unwrap();
    // Nobody asked the restarted seed for it: it registered the pinned task by itself.
    let out_path = dir.path().join("out");
    let out = cache(&peers[1], &["export", &digest, "-O", &out_path.display().to_string(), "--timeout", "60s"]).await;
    assert!(out.status.success(), "export: {}", stderr(&out));
    assert!(std::fs::read(&out_path).unwrap() == bytes);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cache_requests_get_one_clear_line_and_their_exit_code() {
    let mut cluster = Cluster::new(bin()).unwrap();
    let (_seeds, peers) = start(&mut cluster, 1, &["a"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (file, _, _) = write_file(dir.path(), "f.bin", 100_000, 3);
    let file = file.display().to_string();
    let missing = dir.path().join("missing").display().to_string();
    let out_path = dir.path().join("out").display().to_string();
    let unknown = format!("sha256:{}", "ab".repeat(32));
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["import", &missing], 2, "cannot read"),
        (vec!["import", dir.path().to_str().unwrap()], 2, "not a regular file"),
        (vec!["import", &file, "--replicas", "3"], 2, "seed(s) besides this host"),
        (vec!["export", "sha256:xyz", "-O", &out_path], 2, "digest"),
        (vec!["export", &unknown, "-O", &out_path], 4, "held by no host"),
        (vec!["stat", &unknown], 4, "held by no host"),
        (vec!["rm", "md5:00"], 2, "digest"),
    ];
    for (args, code, says) in cases {
        let out = cache(&peers[0], &args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line, got {err}");
    }
    assert!(!Path::new(&out_path).exists());
    cluster.shutdown().await;
}
