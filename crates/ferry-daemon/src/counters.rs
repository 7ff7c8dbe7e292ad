//! Counters by source, since the daemon started. Each maps 1:1 to a Prometheus counter
//! (`ferry_daemon_<name>_total`) once the exporter exists; the local API reads them today.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
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
