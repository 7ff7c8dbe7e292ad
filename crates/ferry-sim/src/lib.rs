//! A deterministic, discrete-event simulator of a Ferry fleet.
//!
//! It answers what the testbed cannot reach: how Ferry's mesh, its dispensing seeds and its
//! scheduler behave at 1,000 hosts and more. What decides who feeds whom and which piece
//! moves is Ferry's own code, called through its sans-IO seams, never a re-implementation:
//!
//! - the scheduler is a real [`ferry_scheduler::SchedulerService`], driven in-process
//!   through `join_host`, `register`, `on_message` and `unregister` with the real protobuf
//!   messages, its candidate sampling seeded;
//! - each simulated daemon picks pieces with [`ferry_policy::PiecePicker`], holds and
//!   dispenses them with [`ferry_transport::Availability`] (a seed hands each new piece to
//!   one child), and asks a seed by index with [`ferry_policy::seed_only_mask`];
//! - the daemon's loop around them (requests in flight per parent, `RequestAny`s held at a
//!   seed, reports every 20 ms, the 500 ms watchdog asking for parents) mirrors
//!   `ferry-daemon`'s `task` module with the same defaults ([`DaemonKnobs`]).
//!
//! What is modelled, not run: the network. Hosts have uplink and downlink caps; transfers
//! share them max-min fairly ([`net::max_min`], recomputed every `epoch`; a transfer that
//! starts between two epochs takes what its links have left); a piece takes size / rate plus
//! the one-way latency of both ends. CPU (hashing, disk) costs nothing here.
//!
//! Determinism: every random choice draws from generators seeded from [`Scenario::seed`],
//! events at the same instant run in the order they were scheduled, and nothing iterates a
//! randomly-ordered map where order matters; the same scenario gives the same result bit for
//! bit (a test checks).

mod daemon;
pub mod net;
mod sched;
mod sim;

use serde::Serialize;

pub use sim::run;

/// How peers arrive.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub enum Arrival {
    Together,
    /// Uniformly at random over this many seconds.
    Staggered(f64),
}

/// The daemon settings the simulated daemons run with (`ferry-daemon`'s defaults).
#[derive(Clone, Debug, Serialize)]
pub struct DaemonKnobs {
    pub pieces_in_flight: usize,
    pub want_parents: usize,
    pub parent_refresh_s: f64,
    pub seed_grace_s: f64,
    pub back_to_source_after_s: f64,
    pub upload_slots: u32,
}

impl Default for DaemonKnobs {
    fn default() -> Self {
        Self {
            pieces_in_flight: ferry_policy::PIECES_IN_FLIGHT,
            want_parents: 4,
            parent_refresh_s: 1.0,
            seed_grace_s: 1.0,
            back_to_source_after_s: 20.0,
            upload_slots: 32,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Receiving hosts (a seed on a host counts as one of them).
    pub hosts: usize,
    pub size: u64,
    /// `None`: Ferry's default layout for the size.
    pub piece_size: Option<u32>,
    /// Every host's uplink and downlink, bits per second.
    pub link_bps: f64,
    pub origin_bps: f64,
    /// Seeds; 0: peers read the origin themselves within the back-to-source budget.
    pub seeds: usize,
    /// Seeds run on the first hosts and share their links (as on the testbed); else each
    /// seed has a host of its own with the same caps.
    pub seed_on_host: bool,
    pub arrival: Arrival,
    /// This fraction of the ordinary hosts has `slow_bps` links instead.
    pub slow_fraction: f64,
    pub slow_bps: f64,
    /// This fraction of the ordinary hosts leaves at a random moment between a quarter and
    /// three quarters of the bound.
    pub churn: f64,
    /// The share of a link's rate that carries payload: a capped link counts Ethernet
    /// frames, and a full 1500-byte frame carries 1448 bytes of TCP payload (IPv4, TCP with
    /// timestamps) in 1514 on the wire: 0.956. The testbed's calibration flow measures
    /// 94–96 % of the cap.
    pub goodput: f64,
    /// One-way latency from a host to any other host, seconds (to the scheduler too).
    pub latency_s: f64,
    pub epoch_s: f64,
    pub seed: u64,
    /// Simulated seconds after which a run stops, finished or not.
    pub max_time_s: f64,
    pub daemon: DaemonKnobs,
    /// The scheduler's parents per peer and children per parent; `None`: its defaults (16,
    /// 16).
    pub mesh: Option<(usize, u32)>,
    /// The scheduler splices new peers into mutual edges (`ferry scheduler --no-splice`).
    pub splice: bool,
    /// Print this host's events to stderr.
    pub trace: Option<String>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            hosts: 16,
            size: 128 << 20,
            piece_size: None,
            link_bps: 50e6,
            origin_bps: 50e6,
            seeds: 1,
            seed_on_host: true,
            arrival: Arrival::Together,
            slow_fraction: 0.0,
            slow_bps: 0.0,
            churn: 0.0,
            goodput: 1448.0 / 1514.0,
            latency_s: 0.000_1,
            epoch_s: 0.005,
            seed: 1,
            max_time_s: 3600.0,
            daemon: DaemonKnobs::default(),
            mesh: None,
            splice: true,
            trace: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HostOutcome {
    pub name: String,
    pub seed: bool,
    pub slow: bool,
    pub arrive_s: f64,
    /// When it held the whole file; `None`: left, or the run stopped first.
    pub done_s: Option<f64>,
    pub left: bool,
    pub origin_bytes: u64,
    pub uploaded_bytes: u64,
    /// Peer connections it opened to parents, and that children opened to it (the mesh the
    /// scheduler gave it, over the whole run).
    pub parents: usize,
    pub children: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SimResult {
    pub piece_size: u32,
    pub pieces: u32,
    /// Kumar–Ross lower bound for the scenario, at the links' nominal rates as the testbed
    /// computes it (with staggered arrivals, the later of it and
    /// the last arrival plus S / d_min).
    pub bound_s: f64,
    /// Last completion among the hosts that stayed, from the start.
    pub makespan_s: f64,
    pub efficiency: f64,
    pub origin_bytes: u64,
    pub origin_copies: f64,
    /// Pieces a host received that it already held (end-game duplicates).
    pub duplicate_pieces: u64,
    pub piece_transfers: u64,
    pub decisions_parents: u64,
    pub scheduler_errors: u64,
    pub finished: usize,
    pub stayed: usize,
    pub events: u64,
    /// The links' load every 100 ms of simulated time.
    pub timeline: Vec<Sample>,
    pub hosts: Vec<HostOutcome>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sample {
    pub t: f64,
    /// Share of every host's uplink in use (seeds included).
    pub upload_busy: f64,
    /// Share of the downlinks of hosts still downloading in use.
    pub download_busy: f64,
    /// Transfers under way.
    pub flows: usize,
}

/// Kumar & Ross (2006): T_min = max(S/u_origin, S/d_min, N·S/(u_origin + Σu_i)), sizes in
/// bits.
pub fn bound(size: u64, origin_bps: f64, receivers: usize, ups_bps: &[f64], d_min_bps: f64) -> f64 {
    let s = size as f64 * 8.0;
    let total = origin_bps + ups_bps.iter().sum::<f64>();
    (s / origin_bps).max(s / d_min_bps).max(receivers as f64 * s / total)
}
