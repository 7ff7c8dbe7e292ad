//! The scheduler's books.
//!
//! Everything here was validated on the way in (see [`crate::validate`]): layouts are
//! `PieceLayout`s, digests are 32 bytes, each peer's request is a checked `OriginRequest`.
//! The books sit behind one mutex whose guard is taken with [`lock`], which recovers a
//! poisoned lock rather than panicking on every later call.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use ferry_policy::{BackToSourceBudget, Candidate, Dag, Locality, PeerState};
use ferry_proto::scheduler::{peer_command, Host, HostCommand, PeerCommand};
use ferry_types::{HostId, OriginRequest, PieceDigest, RequestKey, TaskId};

use crate::validate::TaskMeta;

/// Takes the state's lock. A panic while it was held (a bug) must not turn every later
/// request into a panic too: the books are plain data and stay usable.
pub fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

/// Boxed: a channel allocates its slots in blocks of 32, and a peer's stream lives as long as
/// the peer holds the task, so 32 unboxed commands (176 bytes each) per finished peer would
/// be most of what a finished peer costs.
pub type PeerTx = UnboundedSender<Box<Result<PeerCommand, Status>>>;
pub type HostTx = UnboundedSender<Result<HostCommand, Status>>;

pub struct HostEntry {
    pub host: Host,
    pub tx: HostTx,
    pub last_seen: Instant,
    /// Distinguishes a host's new session from its old one when both overlap briefly.
    pub session: u64,
    /// Tasks this host parked here (finished, stream closed, still a parent): they leave
    /// with the host session.
    pub parked: std::collections::HashSet<TaskId>,
}

impl HostEntry {
    pub fn new(host: Host, tx: HostTx, session: u64) -> Self {
        Self { host, tx, last_seen: Instant::now(), session, parked: Default::default() }
    }
}

pub struct PeerEntry {
    pub host: Host,
    pub tx: PeerTx,
    /// This peer's own way to the origin; a seed fetch on its behalf uses exactly this.
    pub request: OriginRequest,
    pub state: PeerState,
    pub pieces_held: u32,
    pub from_origin: bool,
    /// Holds one of the task's back-to-source grants, returned when it finishes, fails or leaves.
    pub granted: bool,
    pub blocklist: Vec<HostId>,
    pub throughput: Option<u64>,
    /// Told to wait; scheduled again when something changes.
    pub waiting: bool,
    pub session: u64,
    /// Finished, and its stream closed by `Park`: a parent until its host says it dropped
    /// the task or its host session ends.
    pub parked: bool,
    /// Unix seconds (the host's clock) until which the host keeps the task; 0: not pinned.
    pub pinned_until: u64,
}

/// A seed asked to read the origin for a task, and whose request it reads with.
#[derive(Clone, Debug)]
pub struct SeedFetch {
    pub seed: HostId,
    pub request: RequestKey,
    /// The origin's `host[:port]` it reads.
    pub origin: String,
}

pub struct TaskEntry {
    pub piece_size_hint: u32,
    pub meta: Option<TaskMeta>,
    pub digests: HashMap<u32, PieceDigest>,
    /// Change through [`TaskEntry::insert_peer`] and [`TaskEntry::remove_peer`], which keep
    /// `seeds` and `others` in step.
    pub peers: HashMap<HostId, PeerEntry>,
    /// The task's seed peers and the rest, in the order they came: what decisions sample
    /// from, by index, so that a seeded scheduler decides the same way every time.
    seeds: Vec<HostId>,
    others: Vec<HostId>,
    pub dag: Dag,
    pub budget: BackToSourceBudget,
    pub fetch: Option<SeedFetch>,
    pub last_active: Instant,
}

impl TaskEntry {
    pub fn new(back_to_source_limit: u32, now: Instant) -> Self {
        Self {
            piece_size_hint: 0,
            meta: None,
            digests: HashMap::new(),
            peers: HashMap::new(),
            seeds: vec![],
            others: vec![],
            dag: Dag::default(),
            budget: BackToSourceBudget::new(back_to_source_limit),
            fetch: None,
            last_active: now,
        }
    }

    pub fn layout(&self) -> Option<ferry_types::PieceLayout> {
        self.meta.as_ref().map(|m| m.layout)
    }

    pub fn piece_count(&self) -> Option<u32> {
        self.layout().map(|l| l.piece_count())
    }

    /// Forgets what the last origin read established: it failed, so its layout, validators
    /// and digests describe nothing anyone may build on.
    pub fn reset_content(&mut self) {
        self.meta = None;
        self.digests.clear();
        self.fetch = None;
    }

    /// Gives a peer's back-to-source grant back, if it holds one.
    pub fn release_grant(&mut self, peer: &HostId) {
        if let Some(p) = self.peers.get_mut(peer) {
            if std::mem::take(&mut p.granted) {
                self.budget.release();
            }
        }
    }

    /// Adds (or replaces) a peer.
    pub fn insert_peer(&mut self, id: HostId, entry: PeerEntry) {
        self.remove_peer(&id);
        match entry.host.seed {
            true => self.seeds.push(id.clone()),
            false => self.others.push(id.clone()),
        }
        self.peers.insert(id, entry);
    }

    pub fn remove_peer(&mut self, id: &HostId) -> Option<PeerEntry> {
        let entry = self.peers.remove(id)?;
        let list = if entry.host.seed { &mut self.seeds } else { &mut self.others };
        if let Some(pos) = list.iter().position(|x| x == id) {
            list.remove(pos);
        }
        Some(entry)
    }

    /// The task's peers as the policy sees them: every one in a task of up to
    /// [`CANDIDATE_SAMPLE`] peers; in a larger one every seed plus that many others drawn at
    /// random, so a decision costs the same at 10,000 peers as at 64 (measured with
    /// `ferry-testbed load`), and successive decisions spread children over the holders.
    pub fn candidates(&self, hosts: &HashMap<HostId, HostEntry>, rng: &mut impl rand::Rng) -> Vec<Candidate> {
        let picked: Vec<&HostId> = if self.others.len() <= CANDIDATE_SAMPLE {
            self.seeds.iter().chain(&self.others).collect()
        } else {
            let sample = rand::seq::index::sample(rng, self.others.len(), CANDIDATE_SAMPLE);
            self.seeds.iter().chain(sample.into_iter().map(|i| &self.others[i])).collect()
        };
        picked
            .into_iter()
            .filter_map(|id| {
                let p = self.peers.get(id)?;
                let host = hosts.get(id).map(|h| &h.host).unwrap_or(&p.host);
                Some(Candidate {
                    host: id.clone(),
                    state: p.state,
                    pieces_held: p.pieces_held,
                    is_seed: host.seed,
                    upload_slots: host.upload_slots,
                    uploads_active: host.uploads_active,
                    throughput: p.throughput,
                    children: self.dag.children_of(id),
                    feeds: p.pieces_held > 0 || p.from_origin || self.dag.parents_of(id).next().is_some(),
                    locality: locality(host),
                })
            })
            .collect()
    }

    /// A peer (seeds aside) drawn at random, in the order they came.
    pub fn random_other(&self, rng: &mut impl rand::Rng) -> Option<&HostId> {
        (!self.others.is_empty()).then(|| &self.others[rng.gen_range(0..self.others.len())])
    }

    pub fn broadcast(&self, cmd: peer_command::Command, except: Option<&HostId>) {
        for (id, p) in &self.peers {
            if Some(id) != except {
                let _ = p.tx.send(Box::new(Ok(PeerCommand { command: Some(cmd.clone()) })));
            }
        }
    }
}

/// Peers a decision looks at, at most (seeds aside); see [`TaskEntry::candidates`].
pub const CANDIDATE_SAMPLE: usize = 64;

pub fn locality(h: &Host) -> Locality {
    Locality { zone: h.zone.clone(), rack: h.rack.clone() }
}

/// The scheduler's one source of randomness (candidate sampling): from entropy, or from a
/// seed when a run must repeat bit for bit (the fleet simulator).
pub struct SchedRng(pub rand::rngs::StdRng);

impl Default for SchedRng {
    fn default() -> Self {
        Self(rand::SeedableRng::from_entropy())
    }
}

#[derive(Default)]
pub struct State {
    pub hosts: HashMap<HostId, HostEntry>,
    pub tasks: HashMap<TaskId, TaskEntry>,
    pub next_session: u64,
    pub seed_fetches: u64,
    pub back_to_source_grants: u64,
    pub metrics: std::sync::Arc<crate::metrics::SchedulerMetrics>,
    /// When this scheduler started: until peers had time to register again, it cannot know
    /// which of them read an origin (see [`ORIGIN_SETTLE`]).
    pub started: Option<Instant>,
    pub rng: SchedRng,
}

/// How long after a start a capped origin gets no new reads: peers that were reading it
/// when the last scheduler died register again (and say so) within this.
pub const ORIGIN_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// The origin `host[:port]` a request reads (empty when the URL has none).
pub fn origin_of(request: &OriginRequest) -> String {
    ferry_types::host_port(request.url()).unwrap_or_default()
}

impl State {
    /// Origin reads under way against `origin` over every task here: seeds reading for a
    /// task (asked, or registered as reading) and peers allowed back to source.
    pub fn origin_reads(&self, origin: &str) -> usize {
        let mut n = 0;
        for t in self.tasks.values() {
            for p in t.peers.values() {
                let reading = (p.from_origin && p.state == PeerState::Running) || p.granted;
                if reading && origin_of(&p.request) == origin {
                    n += 1;
                }
            }
            // Asked, and not registered yet.
            if t.fetch.as_ref().is_some_and(|f| !t.peers.contains_key(&f.seed) && f.origin == origin) {
                n += 1;
            }
        }
        n
    }

    pub fn session(&mut self) -> u64 {
        self.next_session += 1;
        self.next_session
    }
}

/// A peer that finished `request` and parked (test books).
#[cfg(test)]
pub(crate) fn parked_peer(host: Host, request: OriginRequest) -> PeerEntry {
    PeerEntry {
        host,
        tx: tokio::sync::mpsc::unbounded_channel().0,
        request,
        state: PeerState::Succeeded,
        pieces_held: 1,
        from_origin: false,
        granted: false,
        blocklist: vec![],
        throughput: None,
        waiting: false,
        session: 0,
        parked: true,
        pinned_until: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: bool) -> PeerEntry {
        let url = url::Url::parse("http://origin.test/f").unwrap();
        parked_peer(Host { seed, ..Default::default() }, OriginRequest::new(url, vec![], None, vec![]).unwrap())
    }

    #[test]
    fn a_large_task_offers_every_seed_and_a_sample_of_the_rest() {
        let mut t = TaskEntry::new(1, Instant::now());
        for i in 0..CANDIDATE_SAMPLE {
            t.insert_peer(HostId::new(format!("p{i}")).unwrap(), peer(false));
        }
        let rng = &mut rand::rngs::mock::StepRng::new(0, 1);
        assert_eq!(t.candidates(&HashMap::new(), rng).len(), CANDIDATE_SAMPLE, "a small task: everyone");
        for i in CANDIDATE_SAMPLE..1000 {
            t.insert_peer(HostId::new(format!("p{i}")).unwrap(), peer(false));
        }
        t.insert_peer(HostId::new("seed").unwrap(), peer(true));
        let c = t.candidates(&HashMap::new(), rng);
        assert_eq!(c.len(), CANDIDATE_SAMPLE + 1);
        assert!(c.iter().any(|c| c.host.as_str() == "seed" && c.is_seed));
    }
}
