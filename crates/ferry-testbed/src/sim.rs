//! `ferry-testbed sim`: the fleet simulator (`ferry-sim`) with the testbed's units, JSON
//! and plot.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_sim::{Arrival, Scenario, SimResult};
use ferry_types::ByteSize;

use crate::net::Rate;
use crate::report::{plot_cdf, Series};

#[derive(Parser)]
pub struct SimArgs {
    #[arg(long, default_value_t = 16)]
    hosts: usize,
    #[arg(long, default_value = "128MiB")]
    size: ByteSize,
    /// Piece size (a power of two); default: Ferry's layout for the size.
    #[arg(long)]
    piece_size: Option<ByteSize>,
    /// Upload and download cap of every host.
    #[arg(long, default_value = "50mbit")]
    link: Rate,
    #[arg(long, default_value = "50mbit")]
    origin_link: Rate,
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Give each seed a host of its own (same caps) instead of the first hosts.
    #[arg(long)]
    seed_link: bool,
    /// `together`, or `staggered` (spread over one bound-time), or `staggered:SECONDS`.
    #[arg(long, default_value = "together")]
    arrival: String,
    /// `FRACTION:RATE`: that share of the hosts has slower links, e.g. `0.05:10mbit`.
    #[arg(long)]
    slow: Option<String>,
    /// Share of the hosts that leave mid-run.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// One-way latency between hosts, milliseconds.
    #[arg(long, default_value_t = 0.1)]
    latency_ms: f64,
    /// How often transfers' rates are shared out again, milliseconds.
    #[arg(long, default_value_t = 5.0)]
    epoch_ms: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests by index in flight per parent (`ferry daemon --pieces-in-flight`).
    #[arg(long, default_value_t = ferry_sim::DaemonKnobs::default().pieces_in_flight)]
    pieces_in_flight: usize,
    /// `PARENTS:CHILDREN`: the scheduler's parents per peer and children per parent
    /// (default 16:16).
    #[arg(long)]
    mesh: Option<String>,
    /// The scheduler does not splice new peers into mutual edges (`ferry scheduler
    /// --no-splice`), for comparison.
    #[arg(long)]
    no_splice: bool,
    /// Print this host's events (e.g. `h00003`, `seed-0`) to stderr.
    #[arg(long)]
    trace: Option<String>,
    /// Write `sim.json` and `sim.png` here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn scenario(a: &SimArgs) -> Result<Scenario> {
    let mut sc = Scenario {
        hosts: a.hosts,
        size: a.size.0,
        piece_size: a.piece_size.map(|p| p.0 as u32),
        link_bps: a.link.0 as f64,
        origin_bps: a.origin_link.0 as f64,
        seeds: a.seeds,
        seed_on_host: !a.seed_link,
        churn: a.churn,
        latency_s: a.latency_ms / 1e3,
        epoch_s: a.epoch_ms / 1e3,
        seed: a.seed,
        trace: a.trace.clone(),
        daemon: ferry_sim::DaemonKnobs { pieces_in_flight: a.pieces_in_flight, ..Default::default() },
        splice: !a.no_splice,
        ..Default::default()
    };
    if let Some(m) = &a.mesh {
        let (p, c) = m.split_once(':').context("--mesh takes PARENTS:CHILDREN, e.g. 8:8")?;
        sc.mesh = Some((p.parse().context("--mesh: parents")?, c.parse().context("--mesh: children")?));
    }
    if let Some(slow) = &a.slow {
        let (f, r) = slow.split_once(':').context("--slow takes FRACTION:RATE, e.g. 0.05:10mbit")?;
        sc.slow_fraction = f.parse().context("--slow: the fraction is a number between 0 and 1")?;
        sc.slow_bps = r.parse::<Rate>().map_err(anyhow::Error::msg)?.0 as f64;
    }
    sc.arrival = match a.arrival.split_once(':') {
        None if a.arrival == "together" => Arrival::Together,
        None if a.arrival == "staggered" => {
            let ups = vec![sc.link_bps; sc.hosts];
            Arrival::Staggered(ferry_sim::bound(sc.size, sc.origin_bps, sc.hosts, &ups, sc.link_bps))
        }
        Some(("staggered", s)) => Arrival::Staggered(s.parse().context("--arrival staggered:SECONDS")?),
        _ => bail!("--arrival is `together`, `staggered` or `staggered:SECONDS`, not `{}`", a.arrival),
    };
    if !(0.0..1.0).contains(&sc.churn) || !(0.0..1.0).contains(&sc.slow_fraction) {
        bail!("--churn and the --slow fraction are shares of the hosts, in [0, 1)");
    }
    if sc.hosts == 0 || (sc.seeds == 0 && sc.hosts < 2) {
        bail!("--hosts must be at least 1 (2 without a seed)");
    }
    Ok(sc)
}

pub fn run(a: SimArgs) -> Result<()> {
    let sc = scenario(&a)?;
    let cpu = std::time::Instant::now();
    let r = ferry_sim::run(&sc);
    let wall_s = cpu.elapsed().as_secs_f64();
    let out = serde_json::json!({ "scenario": sc, "result": r, "wall_seconds": wall_s });
    let json = serde_json::to_string_pretty(&out)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("sim.json"), &json)?;
        let title = format!("simulated: {} hosts, {} MiB", sc.hosts, sc.size >> 20);
        plot_cdf(&title, &[series(&r)], r.bound_s, &dir.join("sim.png"))?;
    }
    println!("{}", summary(&sc, &r, wall_s));
    Ok(())
}

fn series(r: &SimResult) -> Series {
    let counted: Vec<_> = r.hosts.iter().filter(|h| !h.left && (!h.seed || h.done_s.is_some())).collect();
    Series {
        label: "ferry (simulated)".into(),
        done_s: counted.iter().filter_map(|h| h.done_s).collect(),
        hosts: counted.len(),
    }
}

fn summary(sc: &Scenario, r: &SimResult, wall_s: f64) -> String {
    format!(
        "{} hosts, {} MiB ({} pieces of {} KiB), links {} Mbit/s, origin {} Mbit/s: makespan {:.2} s, \
         bound {:.2} s, efficiency {:.3}, origin copies {:.3}, finished {}/{}, duplicates {}, \
         scheduler errors {}, {} events in {:.1} s",
        sc.hosts,
        sc.size >> 20,
        r.pieces,
        r.piece_size >> 10,
        sc.link_bps / 1e6,
        sc.origin_bps / 1e6,
        r.makespan_s,
        r.bound_s,
        r.efficiency,
        r.origin_copies,
        r.finished,
        r.stayed,
        r.duplicate_pieces,
        r.scheduler_errors,
        r.events,
        wall_s
    )
}
