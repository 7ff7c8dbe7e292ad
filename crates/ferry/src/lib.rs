//! The `ferry` binary as a library: flag parsing and one module per subcommand. The demo's
//! origin and process cluster live in `ferry-demo`, shared with the tests and the testbed.

// `tonic::Status` is the error type at this crate's gRPC edge; boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod commands;
pub mod config;

use cli::{Cli, Command};

/// A failure at the edge: one line for the user and the process exit code.
#[derive(Debug)]
pub struct Exit {
    pub message: String,
    pub code: u8,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self { message: message.into(), code }
    }
}

/// Exit codes, stable for scripts.
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_DAEMON: u8 = 3;
    pub const ORIGIN: u8 = 4;
    pub const INTEGRITY: u8 = 5;
    pub const DISK_FULL: u8 = 6;
    pub const TIMEOUT: u8 = 7;
    pub const NO_SCHEDULER: u8 = 8;
    pub const ORIGIN_CHANGED: u8 = 9;
    /// The daemon went away in the middle of a download (crashed, killed, restarted).
    pub const DAEMON_LOST: u8 = 10;
    /// The manager refused the credentials (none, wrong, revoked, expired, or a missing scope).
    pub const UNAUTHORIZED: u8 = 11;
    /// The manager knows no such cluster, job, token or image.
    pub const NOT_FOUND: u8 = 12;
}

pub fn init_tracing(cli: &Cli) {
    let default = match &cli.command {
        Command::Get(_)
        | Command::Demo(_)
        | Command::Init(_)
        | Command::Preheat(_)
        | Command::Cache(_)
        | Command::Task(_)
        | Command::Cluster(_)
        | Command::Token(_)
        | Command::Membership(_) => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: a log file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let otel = otlp(cli).and_then(|(endpoint, service, instance)| {
        match ferry_telemetry::trace::layer(&endpoint, service, &instance) {
            Ok(layer) => Some(layer),
            Err(e) => {
                eprintln!("ferry: traces are off: {e}");
                None
            }
        }
    });
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).init();
}

/// A long-running role's trace export: the collector, the service name, this instance.
fn otlp(cli: &Cli) -> Option<(String, &'static str, String)> {
    let hostname =
        || std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    match &cli.command {
        Command::Daemon(a) => {
            let instance = a.host_id.clone().or_else(|| a.hostname.clone()).unwrap_or_else(hostname);
            Some((a.otlp_endpoint.clone()?, "ferry-daemon", instance))
        }
        Command::Scheduler(a) => {
            Some((a.otlp_endpoint.clone()?, "ferry-scheduler", format!("{}:{}", hostname(), a.listen.port())))
        }
        Command::Manager(a) => Some((a.otlp_endpoint.clone()?, "ferry-manager", hostname())),
        _ => None,
    }
}

pub async fn run(cli: Cli) -> Result<(), Exit> {
    match cli.command {
        Command::Scheduler(a) => commands::scheduler::run(a).await,
        Command::Daemon(a) => commands::daemon::run(*a).await,
        Command::Manager(a) => commands::manager::run(a).await,
        Command::Get(a) => commands::get::run(*a).await,
        Command::Demo(a) => commands::demo::run(a).await,
        Command::Init(c) => commands::init::run(c).await,
        Command::Preheat(c) => commands::preheat::run(c).await,
        Command::Cache(c) => commands::cache::run(c).await,
        Command::Task(c) => commands::manage::task(c).await,
        Command::Cluster(c) => commands::manage::cluster(c).await,
        Command::Token(c) => commands::manage::token(c).await,
        Command::Membership(c) => commands::membership::run(c),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Prints the line a parent process waits for before using a freshly started role.
/// The daemon's ready line also says where its registry mirror listens.
pub fn announce_daemon_ready(ready: &ferry_daemon::Ready) {
    use std::io::Write;
    let mirror = ready.mirror.map(|m| m.to_string());
    let proxy_ca = ready.proxy_ca.as_ref().map(|p| p.display().to_string());
    let (metrics, health) = (ready.metrics.map(|m| m.to_string()), ready.health.map(|h| h.to_string()));
    let line = serde_json::json!({
        "ready": "daemon", "addr": ready.pieces.to_string(), "mirror": mirror, "proxy_ca": proxy_ca,
        "metrics": metrics, "health": health,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn announce_scheduler_ready(addr: &str, metrics: Option<&str>) {
    use std::io::Write;
    let line = serde_json::json!({ "ready": "scheduler", "addr": addr, "metrics": metrics });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn announce_ready(role: &str, addr: &str) {
    use std::io::Write;
    let line = serde_json::json!({ "ready": role, "addr": addr });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
