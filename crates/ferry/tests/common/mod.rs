//! A loopback cluster for the integration tests: origin in process, everything else as
//! real `ferry` processes. Dropping a `Setup` kills the processes and removes the temp dir.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ferry_demo::cluster::{Cluster, DaemonInfo};
use ferry_demo::data;
use ferry_demo::origin::{Origin, OriginOptions};
use ferry_proto::daemon::{DownloadRequest, StatsRequest, StatsResponse};
use ferry_proto::scheduler::scheduler_client::SchedulerClient;
use ferry_testkit::wait_until;

pub const PIECE: &str = "256KiB";
pub const PIECE_BYTES: u64 = 256 * 1024;

pub struct Setup {
    pub cluster: Cluster,
    pub origin: Origin,
    pub files: HashMap<String, Bytes>,
    pub seed: DaemonInfo,
    pub peers: Vec<DaemonInfo>,
}

/// The `ferry` binary under test: this build's, or `FERRY_BIN` (e.g. a release build, to
/// measure what users run).
pub fn bin() -> PathBuf {
    std::env::var_os("FERRY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ferry")))
}

pub struct Spec<'a> {
    pub peers: usize,
    pub files: &'a [(&'a str, usize)],
    pub origin: OriginOptions,
    pub schedulers: usize,
    pub peer_args: &'a [&'a str],
    pub seed_args: &'a [&'a str],
    /// Start a seed peer (`Setup::seed` is then the seed; without one it is unused).
    pub seed: bool,
    pub scheduler_args: &'a [&'a str],
    /// Cluster membership on: a CA, every role with its certificate (mutual TLS).
    pub membership: bool,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Self {
            peers: 8,
            files: &[("f.bin", 4 << 20)],
            origin: OriginOptions::default(),
            schedulers: 1,
            peer_args: &[],
            seed_args: &[],
            seed: true,
            scheduler_args: &[],
            membership: false,
        }
    }
}

impl Setup {
    pub async fn start(spec: Spec<'_>) -> Self {
        let files: HashMap<String, Bytes> = spec
            .files
            .iter()
            .enumerate()
            .map(|(i, (n, len))| (n.to_string(), data::generate(i as u64 + 1, *len)))
            .collect();
        let origin = Origin::start(files.clone(), spec.origin).await.unwrap();
        let mut cluster = Cluster::new(bin()).unwrap();
        if spec.membership {
            cluster.enable_membership().unwrap();
        }
        for i in 0..spec.schedulers {
            cluster.start_scheduler_with(&format!("scheduler-{i}"), "127.0.0.1:0", spec.scheduler_args).await.unwrap();
        }
        let seed = match spec.seed {
            true => {
                let args: Vec<&str> =
                    ["--piece-size", PIECE].into_iter().chain(spec.seed_args.iter().copied()).collect();
                cluster.start_daemon("seed", true, &args).await.unwrap()
            }
            false => cluster.daemon_info("seed"),
        };
        let mut peers = vec![];
        for i in 0..spec.peers {
            let mut args = vec!["--piece-size", PIECE];
            args.extend(spec.peer_args);
            peers.push(cluster.start_daemon(&format!("peer-{i}"), false, &args).await.unwrap());
        }
        let s = Self { cluster, origin, files, seed, peers };
        s.wait_hosts(spec.peers + spec.seed as usize).await;
        s
    }

    /// Waits until every scheduler counts `n` hosts.
    pub async fn wait_hosts(&self, n: usize) {
        for addr in &self.cluster.schedulers {
            let c = SchedulerClient::new(self.cluster.scheduler_channel(addr, "test-client").unwrap());
            wait_until("hosts to join the scheduler", Duration::from_secs(20), || {
                let mut c = c.clone();
                async move {
                    let s = c.stats(ferry_proto::scheduler::StatsRequest {}).await.ok()?.into_inner();
                    (s.hosts as usize >= n).then_some(())
                }
            })
            .await;
        }
    }

    pub fn out(&self, name: &str) -> PathBuf {
        let dir = self.cluster.dir().join("out");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Downloads `file` on every given peer at once and checks each copy.
    pub async fn download_verified(&self, peers: &[DaemonInfo], file: &str) {
        let url = self.origin.url(file);
        let jobs = peers.iter().map(|p| {
            let (out, url) = (self.out(&format!("{}-{file}", p.name)), url.clone());
            async move { download(p, &url, &out).await.map(|_| out) }
        });
        for (p, r) in peers.iter().zip(futures::future::join_all(jobs).await) {
            let out = r.unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert!(self.verify(file, &out), "{} holds wrong bytes", p.name);
        }
    }

    pub fn verify(&self, file: &str, path: &Path) -> bool {
        std::fs::read(path).map(|b| b == self.files[file]).unwrap_or(false)
    }
}

/// `ferry get URL -O OUT EXTRA... --socket SOCKET` as a user runs it.
pub async fn ferry_get(socket: &Path, url: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin())
        .arg("get")
        .arg(url)
        .arg("-O")
        .arg(out)
        .args(extra)
        .arg("--socket")
        .arg(socket)
        .output()
        .await
        .unwrap()
}

/// One download through a daemon's local API; the error is the daemon's status.
pub async fn download(d: &DaemonInfo, url: &str, out: &Path) -> Result<(), tonic::Status> {
    let mut c = ferry_daemon::local::connect(&d.socket).await.map_err(tonic::Status::unavailable)?;
    let req = DownloadRequest { url: url.to_owned(), output: out.display().to_string(), ..Default::default() };
    let mut s = c.download(req).await?.into_inner();
    while let Some(m) = s.message().await? {
        if m.done {
            return Ok(());
        }
    }
    Err(tonic::Status::unknown("stream ended without result"))
}

pub async fn stats(d: &DaemonInfo) -> Option<StatsResponse> {
    let mut c = ferry_daemon::local::connect(&d.socket).await.ok()?;
    Some(c.stats(StatsRequest {}).await.ok()?.into_inner())
}

pub async fn scheduler_stats(addr: &str) -> ferry_proto::scheduler::StatsResponse {
    let mut c = SchedulerClient::connect(format!("http://{addr}")).await.unwrap();
    c.stats(ferry_proto::scheduler::StatsRequest {}).await.unwrap().into_inner()
}

/// A 1 MiB tmpfs mounted at a directory, unmounted when dropped (even when the test fails).
pub struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a 1 MiB tmpfs at `dir` (created if needed). `None` when this is not root, which
/// only a run outside CI may skip: CI runs as root, so there it fails the test.
pub fn small_tmpfs(dir: &Path) -> Option<Mount> {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        assert!(std::env::var("CI").is_err(), "CI runs as root: mounting a tmpfs must work");
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return None;
    }
    Some(Mount(dir.to_owned()))
}
