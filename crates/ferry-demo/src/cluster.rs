//! A Ferry cluster on loopback made of real processes of this binary: schedulers, a seed and
//! daemons, each with its own storage directory under one temporary directory. Used by
//! `ferry demo` and by the multi-process tests.
//!
//! Every process is started with `kill_on_drop`, and dropping the cluster kills whatever still
//! runs and removes the directory, so a failing test or a Ctrl-C leaves nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    procs: HashMap<String, Proc>,
    /// The network namespace a process runs in (`ip netns exec`), if not the caller's;
    /// kept across a kill so a restart lands in the same one.
    netns: HashMap<String, String>,
    pub schedulers: Vec<String>,
    /// With membership on: the cluster CA's directory (schedulers get `--cluster-ca`, daemons
    /// its join token) and the CA, for clients of the cluster's own.
    membership: Option<(PathBuf, std::sync::Arc<ferry_membership::ClusterCa>)>,
}

pub struct Proc {
    child: Child,
    args: Vec<String>,
    pub addr: String,
    /// A daemon's registry mirror, `IP:PORT`.
    pub mirror: Option<String>,
    /// Where metrics and health are served, `IP:PORT`.
    pub metrics: Option<String>,
    pub health: Option<String>,
    /// The whole line the process printed when it was ready.
    pub ready: serde_json::Value,
    pub log: PathBuf,
}

/// What a test or the demo needs to talk to one daemon.
#[derive(Clone, Debug)]
pub struct DaemonInfo {
    pub name: String,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub piece_addr: String,
    /// The daemon's OCI registry mirror, `IP:PORT`.
    pub mirror_addr: String,
    /// Its Prometheus metrics and its health endpoints, `IP:PORT`.
    pub metrics_addr: String,
    pub health_addr: String,
}

impl Cluster {
    pub fn new(bin: PathBuf) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-cluster-").tempdir()?;
        Ok(Self { bin, dir, procs: HashMap::new(), netns: HashMap::new(), schedulers: vec![], membership: None })
    }

    /// Turns cluster membership on for every role started from now on: a CA and join token
    /// in `membership/` under the cluster's directory, as `ferry membership init` makes them.
    pub fn enable_membership(&mut self) -> Result<PathBuf, ferry_membership::MembershipError> {
        let dir = self.dir.path().join("membership");
        let (ca, _) = ferry_membership::ClusterCa::create(&dir)?;
        self.membership = Some((dir.clone(), std::sync::Arc::new(ca)));
        Ok(dir)
    }

    /// The cluster CA, when membership is on.
    pub fn ca(&self) -> Option<&std::sync::Arc<ferry_membership::ClusterCa>> {
        self.membership.as_ref().map(|(_, ca)| ca)
    }

    /// A channel to a scheduler as a member would open it (a certificate of its own, named
    /// `as_host`, when membership is on).
    pub fn scheduler_channel(&self, addr: &str, as_host: &str) -> std::io::Result<tonic::transport::Channel> {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map_err(std::io::Error::other)?;
        let tls = match self.ca() {
            Some(ca) => {
                let host = ferry_types::HostId::new(as_host).map_err(std::io::Error::other)?;
                let member = ferry_membership::Member::new(host, ferry_membership::Role::Peer);
                Some(ca.credentials_for(member).and_then(|c| c.client_config()).map_err(std::io::Error::other)?)
            }
            None => None,
        };
        Ok(ferry_membership::grpc::channel(ep, tls, Some(ferry_membership::Role::Scheduler)))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self, name: &str, args: Vec<String>) -> std::io::Result<&Proc> {
        let log = self.dir.path().join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = match self.netns.get(name) {
            // `ip netns exec` execs the program, so the child's pid is the daemon's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(log_file)).kill_on_drop(true);
        if std::env::var_os("FERRY_LOG").is_none() {
            cmd.env("FERRY_LOG", "info");
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = match ready {
            Ok(Ok(Some(l))) => l,
            _ => {
                let _ = child.start_kill();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(std::io::Error::other(format!("{name} did not start; its log:\n{tail}")));
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
        let addr = v["addr"].as_str().unwrap_or_default().to_owned();
        let field = |k: &str| v[k].as_str().map(str::to_owned);
        let (mirror, metrics, health) = (field("mirror"), field("metrics"), field("health"));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.procs.insert(name.to_owned(), Proc { child, args, addr, mirror, metrics, health, ready: v, log });
        Ok(&self.procs[name])
    }

    /// Starts any role with `args` (a manager, a scheduler of a manager's cluster, ...);
    /// returns the line it printed when ready.
    pub async fn start_process(&mut self, name: &str, args: Vec<String>) -> std::io::Result<serde_json::Value> {
        Ok(self.spawn(name, args).await?.ready.clone())
    }

    pub async fn start_scheduler(&mut self, name: &str) -> std::io::Result<String> {
        self.start_scheduler_on(name, "127.0.0.1:0").await
    }

    /// Starts a scheduler listening on `listen` (`IP:PORT`, port 0 picks one).
    pub async fn start_scheduler_on(&mut self, name: &str, listen: &str) -> std::io::Result<String> {
        self.start_scheduler_with(name, listen, &[]).await
    }

    /// A scheduler on `listen` with flags of its own. Its `--listen` is its bound address
    /// from then on, so a restart comes back where daemons look for it.
    pub async fn start_scheduler_with(&mut self, name: &str, listen: &str, extra: &[&str]) -> std::io::Result<String> {
        let mut args = ["scheduler", "--listen", listen, "--metrics-listen", "127.0.0.1:0"].map(String::from).to_vec();
        if let Some((dir, _)) = &self.membership {
            args.extend(["--cluster-ca".to_owned(), dir.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let addr = self.spawn(name, args).await?.addr.clone();
        if let Some(p) = self.procs.get_mut(name) {
            p.args[2] = addr.clone();
        }
        self.schedulers.push(addr.clone());
        Ok(addr)
    }

    /// Where a process serves metrics (and, for a scheduler, health), `IP:PORT`.
    pub fn metrics_of(&self, name: &str) -> Option<String> {
        self.procs.get(name).and_then(|p| p.metrics.clone())
    }

    pub fn daemon_info(&self, name: &str) -> DaemonInfo {
        let data_dir = self.dir.path().join(name);
        DaemonInfo {
            name: name.to_owned(),
            socket: data_dir.join("ferry.sock"),
            piece_addr: self.procs.get(name).map(|p| p.addr.clone()).unwrap_or_default(),
            mirror_addr: self.procs.get(name).and_then(|p| p.mirror.clone()).unwrap_or_default(),
            metrics_addr: self.procs.get(name).and_then(|p| p.metrics.clone()).unwrap_or_default(),
            health_addr: self.procs.get(name).and_then(|p| p.health.clone()).unwrap_or_default(),
            data_dir,
        }
    }

    /// Starts a daemon named `name` (its host id too) against all schedulers started so far.
    pub async fn start_daemon(&mut self, name: &str, seed: bool, extra: &[&str]) -> std::io::Result<DaemonInfo> {
        let mut args = self.daemon_args(name, seed);
        args.extend(["--listen-ip", "127.0.0.1", "--advertise-ip", "127.0.0.1"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(name, args).await?;
        Ok(self.daemon_info(name))
    }

    /// Starts a daemon with the default listen and advertise addresses (it finds its own
    /// from the route to the scheduler), inside network namespace `netns` if given.
    pub async fn start_daemon_in(
        &mut self,
        netns: Option<&str>,
        name: &str,
        seed: bool,
        extra: &[&str],
    ) -> std::io::Result<DaemonInfo> {
        let mut args = self.daemon_args(name, seed);
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(ns) = netns {
            self.netns.insert(name.to_owned(), ns.to_owned());
        }
        self.spawn(name, args).await?;
        Ok(self.daemon_info(name))
    }

    fn daemon_args(&self, name: &str, seed: bool) -> Vec<String> {
        let info = self.daemon_info(name);
        let mut args: Vec<String> = vec![
            "daemon".into(),
            "--host-id".into(),
            name.into(),
            "--data-dir".into(),
            info.data_dir.display().to_string(),
            "--socket".into(),
            info.socket.display().to_string(),
            "--piece-port".into(),
            "0".into(),
            // Many daemons share this host: each mirror, metrics and health server on a
            // port of its own.
            "--mirror-listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--health-listen".into(),
            "127.0.0.1:0".into(),
            // The data directories share the machine's disk, which build artifacts fill: at
            // the default 90 % every daemon would empty its cache mid-test. Tests of the
            // collector set a quota instead.
            "--disk-high-watermark".into(),
            "99".into(),
            "--disk-low-watermark".into(),
            "98".into(),
        ];
        if !self.schedulers.is_empty() {
            args.extend(["--scheduler".into(), self.schedulers.join(",")]);
        }
        if seed {
            args.push("--seed".into());
        }
        if let Some((dir, _)) = &self.membership {
            args.extend(["--join-token-file".into(), dir.join(ferry_membership::ca::JOIN_TOKEN).display().to_string()]);
        }
        args
    }

    /// Kills a process with SIGKILL and reaps it.
    pub async fn kill(&mut self, name: &str) {
        if let Some(mut p) = self.procs.remove(name) {
            let _ = p.child.kill().await;
        }
    }

    /// Starts a killed process again with the same arguments (same storage, same id).
    pub async fn restart(&mut self, name: &str, args: Vec<String>) -> std::io::Result<()> {
        self.kill(name).await;
        self.spawn(name, args).await.map(|_| ())
    }

    /// The OS process id of a running process.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name)?.child.id()
    }

    pub fn args_of(&self, name: &str) -> Option<Vec<String>> {
        self.procs.get(name).map(|p| p.args.clone())
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Asks every process to stop (SIGTERM), then kills what is left after a grace period.
    pub async fn shutdown(&mut self) {
        for p in self.procs.values() {
            if let Some(pid) = p.child.id() {
                // SAFETY: plain kill(2) on a child we own.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        for (_, mut p) in self.procs.drain() {
            if tokio::time::timeout(Duration::from_secs(3), p.child.wait()).await.is_err() {
                let _ = p.child.kill().await;
            }
        }
    }
}
