//! Results: JSON with every raw number, a markdown table, and a completion-time CDF plot.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde::Serialize;

use crate::scenario::SystemResult;

#[derive(Serialize)]
pub struct Report {
    pub hosts: usize,
    pub size_bytes: u64,
    pub link_bps: u64,
    pub origin_link_bps: u64,
    pub seed_link: bool,
    pub arrival: String,
    pub kill_fraction: f64,
    /// Ferry's outputs were hard links to its cache (`--link-outputs`).
    pub link_outputs: bool,
    /// Ferry's seed's upload cap (`--seed-upload-rate`).
    pub seed_upload_rate: Option<String>,
    pub calibration: Calibration,
    /// The kernel's default TCP congestion control, which every namespace inherits: it shapes
    /// how uploads and downloads share a capped link.
    pub tcp_congestion_control: String,
    pub bound_s: f64,
    pub bound_note: String,
    pub systems: Vec<SystemResult>,
}

#[derive(Serialize, Clone)]
pub struct Calibration {
    pub bytes: u64,
    pub seconds: f64,
    pub nominal_bps: u64,
    pub measured_bps: f64,
    pub ratio: f64,
}

/// Kumar & Ross (2006): T_min = max(S/u_origin, S/d_min, N·S/(u_origin + Σu_i)).
/// Lower bound with staggered arrivals: the simultaneous bound still holds, and the host that
/// arrives last (at `last_arrival_s`) cannot finish before it has downloaded S at `d_min_bps`.
pub fn staggered_bound(together_s: f64, last_arrival_s: f64, size: u64, d_min_bps: f64) -> f64 {
    together_s.max(last_arrival_s + size as f64 * 8.0 / d_min_bps)
}

pub fn bound(size: u64, origin_up_bps: f64, receivers: usize, host_up_bps: &[f64], d_min_bps: f64) -> f64 {
    let s = size as f64 * 8.0;
    let total_up = origin_up_bps + host_up_bps.iter().sum::<f64>();
    (s / origin_up_bps).max(s / d_min_bps).max(receivers as f64 * s / total_up)
}

pub fn markdown(r: &Report) -> String {
    let mut m = format!(
        "{} hosts, {:.0} MiB, links {} Mbit/s, origin {} Mbit/s, arrival {}, kill fraction {}; \
         bound T_min = {:.2} s ({}); calibration: one TCP flow reached {:.0}% of its cap; TCP congestion control {}.\n\n",
        r.hosts,
        r.size_bytes as f64 / (1 << 20) as f64,
        r.link_bps / 1_000_000,
        r.origin_link_bps / 1_000_000,
        r.arrival,
        r.kill_fraction,
        r.bound_s,
        r.bound_note,
        r.calibration.ratio * 100.0,
        r.tcp_congestion_control
    );
    m.push_str(
        "| system | makespan s | first s | median s | efficiency | origin bytes / S | CPU busy | CPU s | verified |\n",
    );
    m.push_str("|---|---|---|---|---|---|---|---|---|\n");
    m.push_str(&format!("| bound | {:.2} | | | 1.00 | 1.00 | | | |\n", r.bound_s));
    for s in &r.systems {
        let mut t: Vec<f64> = s.hosts.iter().filter_map(|h| h.seconds.map(|x| x + h.start_s)).collect();
        t.sort_by(f64::total_cmp);
        let first = t.first().copied().unwrap_or(0.0);
        let median = t.get(t.len() / 2).copied().unwrap_or(0.0);
        m.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.1} | {} |\n",
            s.system,
            s.makespan_s,
            first,
            median,
            s.efficiency,
            s.origin_bytes_over_size,
            s.cpu_busy_fraction * 100.0,
            s.cpu_seconds_total,
            if s.all_survivors_verified { "yes" } else { "NO" }
        ));
    }
    m
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Completion-time CDF of every system, with the bound as a vertical line.
pub fn plot(r: &Report, path: &Path) -> Result<()> {
    let series: Vec<Series> = r
        .systems
        .iter()
        .map(|s| Series {
            label: s.system.clone(),
            done_s: s.hosts.iter().filter_map(|h| h.seconds.map(|x| x + h.start_s)).collect(),
            hosts: s.hosts.len(),
        })
        .collect();
    let title = format!("{} hosts, {} MiB: completion-time CDF", r.hosts, r.size_bytes >> 20);
    plot_cdf(&title, &series, r.bound_s, path)
}

/// One line of a CDF plot: when each of `hosts` finished (the unfinished never reach 1).
pub struct Series {
    pub label: String,
    pub done_s: Vec<f64>,
    pub hosts: usize,
}

pub fn plot_cdf(title: &str, series: &[Series], bound_s: f64, path: &Path) -> Result<()> {
    let font = std::fs::read(FONT).map_err(|e| anyhow::anyhow!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("cannot load {FONT}"))?;
    let last = series.iter().flat_map(|s| s.done_s.iter().copied()).fold(bound_s, f64::max);
    let xmax = last * 1.1;
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..xmax.max(0.1), 0.0..1.05)?;
    chart.configure_mesh().x_desc("seconds since start").y_desc("fraction of hosts done").draw()?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN];
    for (i, s) in series.iter().enumerate() {
        let mut t = s.done_s.clone();
        t.sort_by(f64::total_cmp);
        let n = s.hosts.max(1) as f64;
        let mut pts = vec![(0.0, 0.0)];
        for (k, x) in t.iter().enumerate() {
            pts.push((*x, k as f64 / n));
            pts.push((*x, (k + 1) as f64 / n));
        }
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .draw_series(LineSeries::new(vec![(bound_s, 0.0), (bound_s, 1.0)], BLACK.stroke_width(1)))?
        .label("bound (Kumar & Ross)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staggered_bound_adds_the_last_hosts_download() {
        let s = 128u64 << 20;
        let t = bound(s, 200e6, 16, &[200e6; 16], 200e6);
        let st = staggered_bound(t, t, s, 200e6);
        assert!((st - 2.0 * s as f64 * 8.0 / 200e6).abs() < 1e-9, "{st}");
        assert_eq!(staggered_bound(10.0, 0.0, s, 200e6), 10.0);
    }

    #[test]
    fn bound_matches_hand_computation() {
        // 16 hosts, 128 MiB, 50 Mbit/s everywhere (BENCHMARKS.md: 21.5 s): the origin's
        // upload term (S/u) beats the swarm term (16 S / 17 u).
        let up = vec![50e6; 16];
        let t = bound(128 << 20, 50e6, 16, &up, 50e6);
        let s = (128u64 << 20) as f64 * 8.0;
        assert!((t - s / 50e6).abs() < 1e-9);
        assert!((t - 21.47).abs() < 0.01);
        // Slow hosts: the swarm term dominates.
        let t = bound(128 << 20, 50e6, 16, &[10e6; 16], 50e6);
        assert!((t - 16.0 * s / (50e6 + 160e6)).abs() < 1e-9);
        // One host: the origin's upload is the limit.
        assert!((bound(1 << 20, 10e6, 1, &[100e6], 100e6) - (1u64 << 20) as f64 * 8.0 / 10e6).abs() < 1e-9);
    }
}
