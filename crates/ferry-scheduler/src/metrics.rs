//! The scheduler's Prometheus metrics (`ferry_scheduler_*`): how long a decision takes, what
//! was decided and how many parents it gave, and the size of its books.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_telemetry::{encode_counter, encode_gauge, Registry, Unit, NO_LABELS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};

use crate::state::{lock, State};

/// Recorded under the scheduler's lock, where decisions are made.
#[derive(Debug)]
pub struct SchedulerMetrics {
    /// One `schedule` call: ranking, deciding and telling the peer.
    pub decision_seconds: Histogram,
    /// Parents given by one `Parents` decision.
    pub parents: Histogram,
    /// Decisions by kind: parents, back to source, wait, ask a seed.
    pub decisions: [AtomicU64; 4],
    pub registrations: AtomicU64,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self {
            // 2 us to 65 ms.
            decision_seconds: Histogram::new(exponential_buckets(0.000002, 2.0, 16)),
            parents: Histogram::new(linear_buckets(0.0, 1.0, 17)),
            decisions: Default::default(),
            registrations: Default::default(),
        }
    }
}

pub const DECISION_PARENTS: usize = 0;
pub const DECISION_BACK_TO_SOURCE: usize = 1;
pub const DECISION_WAIT: usize = 2;
pub const DECISION_ASK_SEED: usize = 3;

/// The registry `/metrics` serves.
pub fn registry(state: Arc<Mutex<State>>) -> Registry {
    let metrics = lock(&state).metrics.clone();
    let mut r = Registry::with_prefix("ferry_scheduler");
    r.register_with_unit(
        "decision",
        "Time to decide what one peer is told (rank, decide, send)",
        Unit::Seconds,
        metrics.decision_seconds.clone(),
    );
    r.register("parents", "Parents given by one decision", metrics.parents.clone());
    r.register_collector(Box::new(Books(state)));
    r
}

/// Counters and gauges read from the books at scrape time.
struct Books(Arc<Mutex<State>>);

impl std::fmt::Debug for Books {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Books")
    }
}

impl Collector for Books {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let (hosts, seeds, tasks, peers, seed_fetches, grants, m) = {
            let st = lock(&self.0);
            let seeds = st.hosts.values().filter(|h| h.host.seed).count();
            let peers: usize = st.tasks.values().map(|t| t.peers.len()).sum();
            let m = st.metrics.clone();
            (st.hosts.len(), seeds, st.tasks.len(), peers, st.seed_fetches, st.back_to_source_grants, m)
        };
        let get = |i: usize| m.decisions[i].load(Ordering::Relaxed);
        let decisions = [
            ([("decision", "parents")], get(DECISION_PARENTS)),
            ([("decision", "back_to_source")], get(DECISION_BACK_TO_SOURCE)),
            ([("decision", "wait")], get(DECISION_WAIT)),
            ([("decision", "ask_seed")], get(DECISION_ASK_SEED)),
        ];
        encode_counter(&mut enc, "decisions", "Decisions made, by kind", None, &decisions)?;
        let regs = [(NO_LABELS, m.registrations.load(Ordering::Relaxed))];
        encode_counter(&mut enc, "registrations", "Peer registrations", None, &regs)?;
        encode_counter(&mut enc, "seed_fetches", "Seeds asked to read an origin", None, &[(NO_LABELS, seed_fetches)])?;
        let help = "Ordinary peers allowed to read an origin";
        encode_counter(&mut enc, "back_to_source_grants", help, None, &[(NO_LABELS, grants)])?;
        let hosts = [([("role", "seed")], seeds as i64), ([("role", "peer")], (hosts - seeds) as i64)];
        encode_gauge(&mut enc, "hosts", "Hosts with a session, by role", None, &hosts)?;
        encode_gauge(&mut enc, "tasks", "Tasks in the books", None, &[(NO_LABELS, tasks as i64)])?;
        encode_gauge(&mut enc, "peers", "Peers in the books (live and parked)", None, &[(NO_LABELS, peers as i64)])
    }
}
