//! Counters by source, since the daemon started: the local API's `Stats` and the Prometheus
//! metrics ([`crate::metrics`]) read the same atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Failure codes counted (the proto enum's numbers, 0 to this).
pub const FAILURE_CODES: usize = 12;

#[derive(Debug)]
pub struct Counters {
    pub bytes_from_origin: AtomicU64,
    pub bytes_from_peers: AtomicU64,
    pub bytes_from_cache: AtomicU64,
    pub pieces_from_origin: AtomicU64,
    pub pieces_from_peers: AtomicU64,
    pub pieces_resumed: AtomicU64,
    pub pieces_rejected: AtomicU64,
    /// Registry-mirror requests answered from P2P, passed to the registry, or failed.
    pub mirror_p2p: AtomicU64,
    pub mirror_passed_through: AtomicU64,
    pub mirror_failed: AtomicU64,
    /// Piece bytes parents sent, kept or not (duplicates of end-game, pieces that failed
    /// verification): what crossed the network, where `bytes_from_peers` is what was kept.
    pub bytes_received_from_peers: AtomicU64,
    /// Origin reads this host started (as a seed, or a peer sent back to source).
    pub back_to_source: AtomicU64,
    /// Tasks that failed here, by failure code.
    pub failures: [AtomicU64; FAILURE_CODES],
    /// Time to fetch one piece from a parent (request to verified).
    pub piece_seconds: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            bytes_from_origin: Default::default(),
            bytes_from_peers: Default::default(),
            bytes_from_cache: Default::default(),
            pieces_from_origin: Default::default(),
            pieces_from_peers: Default::default(),
            pieces_resumed: Default::default(),
            pieces_rejected: Default::default(),
            mirror_p2p: Default::default(),
            mirror_passed_through: Default::default(),
            mirror_failed: Default::default(),
            bytes_received_from_peers: Default::default(),
            back_to_source: Default::default(),
            failures: Default::default(),
            // 1 ms to 16 s.
            piece_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The same split for one task, for the progress a caller sees.
#[derive(Debug, Default)]
pub struct TaskCounters {
    pub from_origin: AtomicU64,
    pub from_peers: AtomicU64,
    pub from_cache: AtomicU64,
}
