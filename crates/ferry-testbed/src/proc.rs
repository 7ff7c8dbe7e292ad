//! Processes inside a node's namespace, reaped with `wait4` so their CPU time is known.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

pub struct Proc {
    pub child: Child,
}

/// Result of a reaped process.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub success: bool,
    pub at: Instant,
    pub cpu_seconds: f64,
}

pub fn spawn_in(ns: &str, args: &[String], stdout: Stdio, log: &std::path::Path) -> Result<Proc> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {args:?} in {ns}"))?;
    Ok(Proc { child })
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }
}

/// Waits for the process and returns its status and CPU time (user + system). Blocking.
pub fn reap(pid: i32) -> Exit {
    let mut status = 0;
    // SAFETY: rusage is plain data, zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    Exit {
        success: r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        at: Instant::now(),
        cpu_seconds: cpu,
    }
}

/// Reaps in a blocking thread.
pub async fn wait(pid: i32) -> Exit {
    tokio::task::spawn_blocking(move || reap(pid)).await.expect("reaper does not panic")
}

/// Fraction of the machine's CPU time spent busy between two `/proc/stat` readings.
pub fn cpu_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        s.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (v.iter().sum(), idle)
}

pub fn busy_fraction(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.0.saturating_sub(before.0).max(1);
    let idle = after.1.saturating_sub(before.1);
    1.0 - idle as f64 / total as f64
}
