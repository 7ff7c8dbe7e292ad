//! One benchmark run: the network, the file, and what every system reports.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::net::{Network, Rate, ORIGIN_IP};
use crate::proc::{spawn_in, Proc};

pub struct Run {
    pub net: Network,
    /// Node names of the H hosts that want the file.
    pub hosts: Vec<String>,
    pub size: u64,
    pub data: PathBuf,
    pub expected: blake3::Hash,
    pub work: PathBuf,
    /// Every process's stderr, kept with the results.
    pub logs: PathBuf,
    pub ferry_bin: PathBuf,
    pub self_bin: PathBuf,
    pub link: Rate,
    pub origin_link: Rate,
    pub seed_link: bool,
    pub piece_size: Option<String>,
    /// How often Ferry daemons' progress is sampled into `HostResult::timeline`.
    pub timeline_every: Option<Duration>,
    pub kill_fraction: f64,
    pub staggered: bool,
    pub bound_s: f64,
    /// With `staggered`, hosts start evenly over this many seconds (the simultaneous bound).
    pub arrival_spread_s: f64,
    /// The image workload (a registry and skopeo) instead of one file over HTTP.
    pub image: Option<crate::image::ImageWorkload>,
    /// The model workload (a hub repository) instead of one file over HTTP.
    pub model: Option<crate::model::ModelWorkload>,
    /// `ferry get --link`: outputs are hard links to the daemon's cache.
    pub link_outputs: bool,
    /// `--upload-rate` of Ferry's seed (bytes per second, e.g. `5MB`).
    pub seed_upload_rate: Option<String>,
}

/// What hosts fetch from: the HTTP file origin or the registry.
pub enum Origin {
    Http(OriginProc),
    Registry(crate::image::RegistryProc),
}

impl Origin {
    /// Stops it and returns the body bytes it served.
    pub fn stop(self) -> u64 {
        match self {
            Origin::Http(o) => o.stop(),
            Origin::Registry(r) => r.stop(),
        }
    }
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct HostResult {
    pub host: String,
    pub completed: bool,
    pub verified: bool,
    pub killed: bool,
    pub start_s: f64,
    pub seconds: Option<f64>,
    pub bytes_from_origin: u64,
    pub bytes_from_peers: u64,
    /// Bytes this host served to other peers (Ferry only).
    pub bytes_uploaded: u64,
    pub cpu_seconds: f64,
    /// Ferry only: `(seconds since start, bytes held, bytes uploaded)` every 100 ms, read
    /// from the daemon's local API, to see where a swarm lags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<(f64, u64, u64)>,
}

#[derive(Serialize, Clone, Debug)]
pub struct SystemResult {
    pub system: String,
    pub makespan_s: f64,
    pub efficiency: f64,
    pub origin_bytes: u64,
    pub origin_bytes_over_size: f64,
    pub origin_bytes_counted_by: String,
    pub all_survivors_verified: bool,
    pub cpu_busy_fraction: f64,
    pub cpu_seconds_total: f64,
    pub hosts: Vec<HostResult>,
    /// Hosts that serve but are not among the H (Ferry's seed with `--seed-link`): their
    /// CPU counts in `cpu_seconds_total`, their times do not count in the makespan.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub helpers: Vec<HostResult>,
}

impl Run {
    pub fn url(&self) -> String {
        format!("http://{ORIGIN_IP}:8080/files/data.bin")
    }

    pub fn start_origin(&self) -> Result<Origin> {
        Ok(match &self.image {
            Some(image) => {
                let ns = &self.net.node("origin").ns;
                Origin::Registry(crate::image::RegistryProc::start(ns, image, self.log("registry"))?)
            }
            None => match &self.model {
                Some(m) => Origin::Http(OriginProc::start_as(self, "hub", m.nominal, crate::model::HUB_PORT)?),
                None => Origin::Http(OriginProc::start(self)?),
            },
        })
    }

    /// Whether a host's output is what it should be (the file, or the image's layout).
    pub fn verify_output(&self, out: &std::path::Path) -> bool {
        match (&self.image, &self.model) {
            (Some(image), _) => crate::image::verify(image, out),
            (_, Some(model)) => crate::model::verify(model, out),
            _ => self.verify(out),
        }
    }

    pub fn origin_counted_by(&self) -> &'static str {
        if self.image.is_some() {
            "registry (access log body bytes)"
        } else if self.model.is_some() {
            "hub and its CDN (HTTP body bytes)"
        } else {
            "origin (HTTP body bytes)"
        }
    }

    pub fn remove_output(&self, out: &std::path::Path) {
        let dir = self.image.is_some() || self.model.is_some();
        let _ = if dir { std::fs::remove_dir_all(out) } else { std::fs::remove_file(out) };
    }

    pub fn verify(&self, path: &std::path::Path) -> bool {
        let Ok(mut f) = std::fs::File::open(path) else { return false };
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finalize() == self.expected
    }

    /// Start offset of host `i` (all at once, or spread over one bound-time when staggered).
    pub fn arrival(&self, i: usize) -> Duration {
        if self.staggered && self.hosts.len() > 1 {
            Duration::from_secs_f64(self.arrival_spread_s * i as f64 / (self.hosts.len() - 1) as f64)
        } else {
            Duration::ZERO
        }
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    pub fn finish(
        &self,
        system: &str,
        mut hosts: Vec<HostResult>,
        origin_bytes: u64,
        counted_by: &str,
        cpu_busy: f64,
    ) -> SystemResult {
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let survivors: Vec<&HostResult> = hosts.iter().filter(|h| !h.killed).collect();
        let makespan = survivors.iter().filter_map(|h| h.seconds.map(|s| s + h.start_s)).fold(0.0, f64::max);
        let all_ok = survivors.iter().all(|h| h.completed && h.verified);
        SystemResult {
            system: system.into(),
            makespan_s: makespan,
            efficiency: if all_ok && makespan > 0.0 { self.bound_s / makespan } else { 0.0 },
            origin_bytes,
            origin_bytes_over_size: origin_bytes as f64 / self.size.max(1) as f64,
            origin_bytes_counted_by: counted_by.into(),
            all_survivors_verified: all_ok,
            cpu_busy_fraction: cpu_busy,
            cpu_seconds_total: hosts.iter().map(|h| h.cpu_seconds).sum(),
            hosts,
            helpers: vec![],
        }
    }
}

/// Reads the JSON ready line a role prints on stdout.
pub fn ready_line(p: &mut Proc, what: &str) -> Result<serde_json::Value> {
    let out = p.child.stdout.take().context("stdout piped")?;
    let mut r = BufReader::new(out);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.trim().is_empty() {
        bail!("{what} exited before it was ready");
    }
    // Keep the pipe drained.
    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
    Ok(serde_json::from_str(line.trim())?)
}

/// The HTTP origin, as a process in the origin namespace (it counts body bytes itself).
pub struct OriginProc(Proc, Option<std::process::ChildStdout>);

impl OriginProc {
    pub fn start(r: &Run) -> Result<Self> {
        Self::start_as(r, "origin", r.size, 8080)
    }

    /// `ferry-testbed <what> --size S --listen ORIGIN:port` (the file origin, or the hub).
    pub fn start_as(r: &Run, what: &str, size: u64, port: u16) -> Result<Self> {
        let ns = &r.net.node("origin").ns;
        let args = vec![
            r.self_bin.display().to_string(),
            what.into(),
            "--size".into(),
            size.to_string(),
            "--listen".into(),
            format!("{ORIGIN_IP}:{port}"),
        ];
        let mut p = spawn_in(ns, &args, Stdio::piped(), &r.log("origin"))?;
        let mut out = BufReader::new(p.child.stdout.take().context("stdout piped")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim().is_empty() {
            bail!("origin did not start; see {}", r.log("origin").display());
        }
        Ok(Self(p, Some(out.into_inner())))
    }

    /// Stops the origin and returns the body bytes it served.
    pub fn stop(mut self) -> u64 {
        self.0.signal(libc::SIGTERM);
        let mut s = String::new();
        if let Some(mut o) = self.1.take() {
            let _ = o.read_to_string(&mut s);
        }
        crate::proc::reap(self.0.pid());
        s.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["bytes_served"].as_u64())
            .unwrap_or(0)
    }
}

pub fn since(t0: Instant, t: Instant) -> f64 {
    t.duration_since(t0).as_secs_f64()
}
