//! `ferry-testbed`: Ferry against direct download, BitTorrent and the theoretical limit, on an
//! emulated network of namespaces with rate caps. See `cargo run -p ferry-testbed -- run --help`.

mod image;
mod load;
mod model;
mod net;
mod proc;
mod report;
mod scenario;
mod sim;
mod systems;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ferry_types::ByteSize;

use net::{Network, Node, Rate, ORIGIN_IP, SCHED_IP, SEED_IP};
use report::{Calibration, Report};
use scenario::Run;

#[derive(Parser)]
#[command(name = "ferry-testbed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the network, run the systems, write results, tear everything down.
    Run(Box<RunArgs>),
    /// Drive one real scheduler over gRPC on loopback as many hosts and peers; report
    /// decision latency, CPU per decision and memory per peer.
    Load(load::LoadArgs),
    /// Simulate a fleet (discrete events, deterministic) with Ferry's own scheduler, piece
    /// picker and dispensing over modelled links; no namespaces, any size.
    Sim(Box<sim::SimArgs>),
    /// (internal) The HTTP origin, run inside the origin's namespace.
    #[command(hide = true)]
    Origin {
        #[arg(long)]
        size: u64,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// (internal) The model hub, run inside the origin's namespace.
    #[command(hide = true)]
    Hub {
        #[arg(long)]
        size: u64,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Parser)]
struct RunArgs {
    #[arg(long, default_value_t = 16)]
    hosts: usize,
    #[arg(long, default_value = "128MiB")]
    size: ByteSize,
    /// Upload and download cap of every host.
    #[arg(long, default_value = "200mbit")]
    link: Rate,
    /// Upload and download cap of the origin.
    #[arg(long, default_value = "200mbit")]
    origin_link: Rate,
    #[arg(long, value_delimiter = ',', default_value = "ferry,direct,bittorrent")]
    systems: Vec<String>,
    #[arg(long, default_value = "testbed-results")]
    out: PathBuf,
    /// Kill this share of hosts (Ferry daemons) mid-run; the rest must complete.
    #[arg(long, default_value_t = 0.0)]
    kill_fraction: f64,
    /// `together` or `staggered` (spread over one bound-time).
    #[arg(long, default_value = "together")]
    arrival: String,
    /// Give Ferry's seed a host of its own (with the same caps) instead of host 0.
    #[arg(long)]
    seed_link: bool,
    /// Piece size passed to Ferry's seed.
    #[arg(long)]
    piece_size: Option<String>,
    /// Sample every Ferry daemon's progress this often (milliseconds; 0: off). The samples
    /// cost some CPU on a machine that may already be the limit.
    #[arg(long, default_value_t = 100)]
    timeline_ms: u64,
    /// `file` (one file over HTTP, `ferry get` / curl), `image` (an eight-layer OCI image
    /// of about --size in `docker-registry` on the origin's host, pulled with skopeo through
    /// each host's Ferry mirror / straight from the registry) or `model` (a hub repository
    /// of eight weight files, about --size in all: `ferry get -r hf://` / curl per file).
    /// image and model run systems ferry and direct.
    #[arg(long, default_value = "file")]
    workload: String,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The `ferry` binary (default: next to this one).
    #[arg(long)]
    ferry_bin: Option<PathBuf>,
    /// Where the run's files live (daemon caches, outputs, the origin's data): memory by
    /// default; a directory on disk for workloads larger than memory (16 hosts x 2 GiB).
    #[arg(long, default_value = "/dev/shm")]
    work_dir: PathBuf,
    /// Ferry lands outputs as hard links to its cache (`ferry get --link`): one copy of the
    /// data per host instead of two (file and model workloads).
    #[arg(long)]
    link_outputs: bool,
    /// Cap Ferry's seed's upload (`ferry daemon --upload-rate`, bytes per second, e.g. 5.9MB)
    /// below its link: its own origin read's ACKs then do not queue behind its uploads.
    #[arg(long)]
    seed_upload_rate: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let r = match cli.cmd {
        Cmd::Run(a) => rt.block_on(run(*a)),
        Cmd::Origin { size, listen } => rt.block_on(origin(size, listen)),
        Cmd::Hub { size, listen } => rt.block_on(model::serve(size, listen)),
        Cmd::Load(a) => rt.block_on(load_cmd(a)),
        Cmd::Sim(a) => sim::run(*a),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-testbed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn load_cmd(a: load::LoadArgs) -> Result<()> {
    let ferry_bin = match &a.ferry_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("ferry"),
    };
    if !ferry_bin.exists() {
        bail!("no ferry binary at {}; build it (cargo build --release) or pass --ferry-bin", ferry_bin.display());
    }
    let out = a.out.clone();
    let report = load::run(a, ferry_bin).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = out {
        std::fs::write(&path, &json).with_context(|| format!("write {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

async fn origin(size: u64, listen: std::net::SocketAddr) -> Result<()> {
    let data = ferry_demo::data::generate(42, size as usize);
    let o = ferry_demo::origin::Origin::start_on(
        listen,
        HashMap::from([("data.bin".to_owned(), data)]),
        Default::default(),
    )
    .await?;
    announce(&serde_json::json!({ "ready": "origin", "addr": o.addr.to_string() }))?;
    stopped().await;
    announce(&serde_json::json!({ "bytes_served": o.bytes_served() }))
}

/// One JSON line on stdout, flushed (how helper processes talk to the run).
fn announce(v: &serde_json::Value) -> Result<()> {
    println!("{v}");
    std::io::stdout().flush()?;
    Ok(())
}

/// Returns on SIGINT or SIGTERM (how the testbed stops its own helper processes).
pub(crate) async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
}

fn host_ip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// Refuses arguments the run cannot honour, before anything is built.
fn check(a: &RunArgs) -> Result<()> {
    if a.hosts == 0 || a.hosts > 1000 {
        bail!("--hosts must be between 1 and 1000");
    }
    if !(0.0..1.0).contains(&a.kill_fraction) {
        bail!("--kill-fraction must be in [0, 1)");
    }
    if a.arrival != "together" && a.arrival != "staggered" {
        bail!("--arrival must be `together` or `staggered`");
    }
    if !["file", "image", "model"].contains(&a.workload.as_str()) {
        bail!("--workload must be `file`, `image` or `model`");
    }
    if a.workload != "file" && a.systems.iter().any(|s| s == "bittorrent") {
        bail!("the {} workload runs systems ferry and direct; drop bittorrent from --systems", a.workload);
    }
    Ok(())
}

/// The network's nodes: the origin, the scheduler, the seed's own host (with
/// `--seed-link`) and the H hosts, each with its caps.
fn nodes(a: &RunArgs, hosts: &[String]) -> Vec<Node> {
    let ns = Network::ns_name;
    let mut nodes = vec![
        Node { name: "origin".into(), ns: ns("origin"), ip: ORIGIN_IP, cap: Some(a.origin_link) },
        Node { name: "sched".into(), ns: ns("sched"), ip: SCHED_IP, cap: None },
    ];
    if a.seed_link {
        nodes.push(Node { name: "seed".into(), ns: ns("seed"), ip: SEED_IP, cap: Some(a.link) });
    }
    for (i, h) in hosts.iter().enumerate() {
        nodes.push(Node { name: h.clone(), ns: ns(h), ip: host_ip(i), cap: Some(a.link) });
    }
    nodes
}

/// The Kumar–Ross bound for `size` bytes to every host arriving together, the bound this
/// run is judged against (later for staggered arrivals), and what the bound assumes.
fn bounds(a: &RunArgs, size: u64) -> (f64, f64, String) {
    let up = a.link.0 as f64;
    let receivers = a.hosts + usize::from(a.seed_link);
    let ups = vec![up; receivers];
    let together_s = report::bound(size, a.origin_link.0 as f64, receivers, &ups, up);
    let mut note = if a.seed_link {
        "the seed's host counted as one more receiver with the same caps".to_owned()
    } else {
        "the seed runs on host 0, one of the H hosts".to_owned()
    };
    if a.arrival != "staggered" {
        return (together_s, together_s, note);
    }
    // Arrivals spread over the simultaneous bound T; the last host, arriving at T, still
    // needs S / d_min. Starting later never makes the simultaneous bound smaller.
    note.push_str(&format!("; staggered: hosts arrive over {together_s:.2} s, the last then needs S/d_min"));
    (together_s, report::staggered_bound(together_s, together_s, size, up), note)
}

async fn run(a: RunArgs) -> Result<()> {
    check(&a)?;
    net::can_create_namespaces().map_err(|e| anyhow::anyhow!("cannot build the emulated network: {e}"))?;
    let self_bin = std::env::current_exe()?;
    let ferry_bin = a.ferry_bin.clone().unwrap_or_else(|| self_bin.with_file_name("ferry"));
    if !ferry_bin.exists() {
        bail!("no ferry binary at {}; build it (cargo build --release) or pass --ferry-bin", ferry_bin.display());
    }
    let hosts: Vec<String> = (0..a.hosts).map(|i| format!("h{i}")).collect();
    let nodes = nodes(&a, &hosts);
    let work = a.work_dir.join(format!("ftb{}", std::process::id()));
    let _cleanup = RemoveDir(work.clone());
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(a.out.join("logs"))?;
    let net = Network::create(nodes)?;
    // Ctrl-C: drop everything (the Network's Drop tears the namespaces down).
    let stop = tokio::spawn(async {
        stopped().await;
    });

    let image = match a.workload.as_str() {
        "image" => Some(image::prepare(&work, a.size.0).await.context("pushing the image")?),
        _ => None,
    };
    let model = (a.workload == "model").then(|| model::ModelWorkload::new(a.size.0));
    // What one host fetches: the file, every blob of the image, or every file of the model.
    let size = image.as_ref().map(|i| i.bytes).or(model.as_ref().map(|m| m.bytes)).unwrap_or(a.size.0);
    let data = work.join("data.bin");
    let bytes = ferry_demo::data::generate(42, size as usize);
    std::fs::write(&data, &bytes)?;
    let expected = blake3::hash(&bytes);
    drop(bytes);

    let staggered = a.arrival == "staggered";
    let (together_s, bound_s, bound_note) = bounds(&a, size);
    let r = Run {
        net,
        hosts,
        size,
        data,
        expected,
        work: work.clone(),
        logs: a.out.join("logs"),
        ferry_bin,
        self_bin,
        link: a.link,
        origin_link: a.origin_link,
        seed_link: a.seed_link,
        piece_size: a.piece_size.clone(),
        timeline_every: (a.timeline_ms > 0).then(|| std::time::Duration::from_millis(a.timeline_ms)),
        kill_fraction: a.kill_fraction,
        staggered,
        arrival_spread_s: together_s,
        bound_s,
        image,
        model,
        link_outputs: a.link_outputs,
        seed_upload_rate: a.seed_upload_rate.clone(),
    };
    let calibration = calibrate(&r).await?;
    let results = run_systems(&a.systems, &r, &stop).await?;
    let report = report(&a, size, calibration, (bound_s, bound_note), results);
    write_results(&a, &report)
}

/// The run's settings and what each system did.
fn report(
    a: &RunArgs,
    size: u64,
    calibration: report::Calibration,
    (bound_s, bound_note): (f64, String),
    systems: Vec<scenario::SystemResult>,
) -> Report {
    Report {
        hosts: a.hosts,
        size_bytes: size,
        link_bps: a.link.0,
        origin_link_bps: a.origin_link.0,
        seed_link: a.seed_link,
        arrival: a.arrival.clone(),
        kill_fraction: a.kill_fraction,
        link_outputs: a.link_outputs,
        seed_upload_rate: a.seed_upload_rate.clone(),
        calibration,
        tcp_congestion_control: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        bound_s,
        bound_note,
        systems,
    }
}

/// Runs each system in turn over the same network; stops at Ctrl-C.
async fn run_systems(
    systems: &[String],
    r: &Run,
    stop: &tokio::task::JoinHandle<()>,
) -> Result<Vec<scenario::SystemResult>> {
    let mut results = vec![];
    for s in systems {
        if stop.is_finished() {
            bail!("interrupted");
        }
        let t = Instant::now();
        let res = match s.as_str() {
            "ferry" => systems::ferry::run(r).await,
            "direct" => systems::direct::run(r).await,
            "bittorrent" => systems::bittorrent::run(r).await,
            other => bail!("unknown system `{other}` (ferry, direct, bittorrent)"),
        }
        .with_context(|| format!("system {s}"))?;
        eprintln!(
            "{s}: makespan {:.2} s, efficiency {:.2} ({:.0} s wall)",
            res.makespan_s,
            res.efficiency,
            t.elapsed().as_secs_f64()
        );
        results.push(res);
    }
    Ok(results)
}

/// results.json, results.md and cdf.png in `--out`; the summary on stdout.
fn write_results(a: &RunArgs, report: &Report) -> Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(a.out.join("results.json"), &json)?;
    let md = report::markdown(report);
    std::fs::write(a.out.join("results.md"), &md)?;
    report::plot(report, &a.out.join("cdf.png"))?;
    if a.json {
        println!("{json}");
    } else {
        println!("{md}");
    }
    eprintln!("results in {}", a.out.display());
    Ok(())
}

/// One TCP flow from the origin to host 0 through both caps; the ratio to the nominal rate.
async fn calibrate(r: &Run) -> Result<Calibration> {
    let origin = scenario::OriginProc::start(r)?;
    let out = r.work.join("calibration.out");
    let args = vec!["curl".into(), "-sS".into(), "-o".into(), out.display().to_string(), r.url()];
    let t = Instant::now();
    let p = proc::spawn_in(&r.net.node("h0").ns, &args, std::process::Stdio::null(), &r.log("calibration"))?;
    let e = proc::wait(p.pid()).await;
    let secs = t.elapsed().as_secs_f64();
    origin.stop();
    let _ = std::fs::remove_file(&out);
    if !e.success {
        bail!("calibration download failed; see {}", r.log("calibration").display());
    }
    let nominal = r.link.0.min(r.origin_link.0);
    let measured = r.size as f64 * 8.0 / secs;
    Ok(Calibration {
        bytes: r.size,
        seconds: secs,
        nominal_bps: nominal,
        measured_bps: measured,
        ratio: measured / nominal as f64,
    })
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
