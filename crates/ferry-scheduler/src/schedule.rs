//! What one peer of a task is told: parents ranked by the policy, a wait while a seed reads
//! the origin, or leave to read it itself; and the mesh's offer of a new peer back to its
//! parents. Runs under the scheduler's lock, on its books ([`crate::state`]).

use std::collections::HashMap;

use ferry_policy::{decide, rank_parents, ChildView, Decision, DecisionInput, PeerState, RankOptions, SeedCandidate};
use ferry_proto::scheduler::{
    host_command, peer_command, BackToSource, DropParents, FetchFromOrigin, Header, HostCommand, Parent, Parents,
    PeerCommand, WaitForSeed,
};
use ferry_types::{HostId, TaskId};

use crate::service::SchedulerOptions;
use crate::state::{locality, HostEntry, SeedFetch, State, TaskEntry};

pub(crate) fn send(tx: &crate::state::PeerTx, c: peer_command::Command) {
    let _ = tx.send(Box::new(Ok(PeerCommand { command: Some(c) })));
}

/// Parents a peer gets over the child limits when no parent is within them.
pub(crate) const STARVING_PARENTS: usize = 4;

/// Decides what one peer of a task is told now, and tells it.
pub(crate) fn schedule(st: &mut State, task_id: &TaskId, peer: &HostId, want_origin: bool, opts: &SchedulerOptions) {
    let started = std::time::Instant::now();
    let metrics = st.metrics.clone();
    if let Some(kind) = decide_and_tell(st, task_id, peer, want_origin, opts) {
        metrics.decisions[kind].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics.decision_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// [`schedule`]'s work; the kind of decision made (`None`: the peer is gone).
fn decide_and_tell(
    st: &mut State,
    task_id: &TaskId,
    peer: &HostId,
    want_origin: bool,
    opts: &SchedulerOptions,
) -> Option<usize> {
    use crate::metrics::{DECISION_ASK_SEED, DECISION_BACK_TO_SOURCE, DECISION_PARENTS, DECISION_WAIT};
    let origin_full = origin_full(st, task_id, peer, opts);
    let State { hosts, tasks, seed_fetches, back_to_source_grants, metrics, rng, .. } = st;
    let task = tasks.get_mut(task_id)?;
    // Gone, or done: a finished peer is told nothing more (a grant now would never be
    // given back).
    if task.peers.get(peer).is_none_or(|p| p.state == PeerState::Succeeded) {
        return None;
    }
    let (ranked, splices) = choose_parents(task, hosts, peer, want_origin || !opts.splice, &opts.rank, &mut rng.0);
    // Seeds matter only to a peer with no parent and no seed asked yet: the other decisions
    // skip the walk over every host.
    let seeds = if ranked.is_empty() && task.fetch.is_none() { seed_candidates(hosts) } else { vec![] };
    let input = DecisionInput {
        has_parents: !ranked.is_empty() || !splices.is_empty(),
        want_origin,
        seed_requested: task.fetch.is_some(),
        seeds: &seeds,
        task: task_id,
        origin_full,
    };
    let decision = decide(&input, &mut task.budget);
    tracing::debug!(task = ?task_id, %peer, ?decision, parents = ranked.len(), "scheduled");
    let tx = task.peers[peer].tx.clone();
    let (waiting, kind) = match decision {
        Decision::Parents => {
            let given = give_parents(task, hosts, peer, &ranked, &splices, &opts.rank);
            metrics.parents.observe(given as f64);
            (false, DECISION_PARENTS)
        }
        Decision::BackToSource => {
            *back_to_source_grants += 1;
            if let Some(p) = task.peers.get_mut(peer) {
                p.granted = true;
            }
            send(&tx, peer_command::Command::BackToSource(BackToSource {}));
            (false, DECISION_BACK_TO_SOURCE)
        }
        Decision::WaitForSeed => {
            send(&tx, peer_command::Command::Wait(WaitForSeed {}));
            (true, DECISION_WAIT)
        }
        Decision::AskSeed(seed) => {
            *seed_fetches += 1;
            ask_seed(task, hosts, task_id, peer, seed);
            send(&tx, peer_command::Command::Wait(WaitForSeed {}));
            (true, DECISION_ASK_SEED)
        }
    };
    if let Some(p) = task.peers.get_mut(peer) {
        p.waiting = waiting;
    }
    Some(kind)
}

/// The parents for `peer`: those ranked within the child limits, and unless `no_splice` the
/// mutual edges it will splice into (see [`plan_splices`]); when neither gives any, a few
/// over the limits.
fn choose_parents(
    task: &TaskEntry,
    hosts: &HashMap<HostId, HostEntry>,
    peer: &HostId,
    no_splice: bool,
    opts: &RankOptions,
    rng: &mut impl rand::Rng,
) -> (Vec<HostId>, Vec<(HostId, HostId)>) {
    let ranked = ranked_parents(task, hosts, peer, opts, rng);
    let splices = match no_splice || opts.avoid_cycles {
        true => vec![],
        false => plan_splices(task, peer, &ranked, opts, rng),
    };
    if ranked.is_empty() && splices.is_empty() {
        return (starving_parents(task, hosts, peer, opts, rng), splices);
    }
    (ranked, splices)
}

/// Records and sends `peer`'s new parents (`ranked`, then the ends of each splice), and
/// offers `peer` back to the ranked ones. Returns how many it was given.
fn give_parents(
    task: &mut TaskEntry,
    hosts: &HashMap<HostId, HostEntry>,
    peer: &HostId,
    ranked: &[HostId],
    splices: &[(HostId, HostId)],
    opts: &RankOptions,
) -> usize {
    let mut parents = vec![];
    for id in ranked {
        if opts.avoid_cycles {
            task.dag.add_edge(peer, id);
        } else {
            task.dag.add_edge_unchecked(peer, id);
        }
        parents.extend(parent_message(hosts, task, id));
    }
    for id in splice(task, hosts, peer, splices) {
        parents.extend(parent_message(hosts, task, &id));
    }
    let given = parents.len();
    send(&task.peers[peer].tx, peer_command::Command::Parents(Parents { parents }));
    offer_back(task, hosts, peer, ranked, opts);
    given
}

/// Every live seed, as the policy sees it.
fn seed_candidates(hosts: &HashMap<HostId, HostEntry>) -> Vec<SeedCandidate> {
    hosts
        .iter()
        .filter(|(_, h)| h.host.seed)
        .map(|(id, h)| SeedCandidate {
            host: id.clone(),
            uploads_active: h.host.uploads_active,
            upload_slots: h.host.upload_slots,
        })
        .collect()
}

/// Whether `peer`'s origin may take no more reads now: it is at the cap, or this scheduler
/// started too recently to know who reads it.
fn origin_full(st: &State, task_id: &TaskId, peer: &HostId, opts: &SchedulerOptions) -> bool {
    let (Some(cap), Some(p)) = (opts.origin_concurrency, st.tasks.get(task_id).and_then(|t| t.peers.get(peer))) else {
        return false;
    };
    let settling = st.started.is_some_and(|s| s.elapsed() < crate::state::ORIGIN_SETTLE);
    settling || st.origin_reads(&crate::state::origin_of(&p.request)) >= cap as usize
}

fn parent_message(hosts: &HashMap<HostId, HostEntry>, task: &TaskEntry, id: &HostId) -> Option<Parent> {
    let h = hosts.get(id).map(|h| &h.host).or_else(|| task.peers.get(id).map(|p| &p.host))?;
    Some(Parent { host_id: id.to_string(), ip: h.ip.clone(), piece_port: h.piece_port, seed: h.seed })
}

/// A mesh is symmetric: a peer just given `parents` is offered in turn to those of them that
/// are still downloading, so peers that registered early learn of the ones that came later
/// and every pair can trade both ways. Not in DAG mode, where that edge would close a cycle.
fn offer_back(
    task: &mut TaskEntry,
    hosts: &HashMap<HostId, HostEntry>,
    child: &HostId,
    parents: &[HostId],
    opts: &RankOptions,
) {
    if opts.avoid_cycles {
        return;
    }
    let Some(offer) = parent_message(hosts, task, child) else { return };
    for p in parents {
        let Some(pe) = task.peers.get(p) else { continue };
        let wants = pe.state == PeerState::Running
            && !pe.from_origin
            && !pe.blocklist.contains(child)
            && task.dag.parents_of(p).count() < opts.max_parents
            && !task.dag.parents_of(p).any(|x| x == child)
            && task.dag.children_of(child) < opts.peer_max_children;
        if wants {
            task.dag.add_edge_unchecked(p, child);
            send(&pe.tx, peer_command::Command::Parents(Parents { parents: vec![offer.clone()] }));
        }
    }
}

/// An origin read ended somewhere: with a cap on reads per origin, peers of other tasks may
/// be waiting for it; every waiting peer gets another chance.
pub(crate) fn wake_origin_waiters(st: &mut State, opts: &SchedulerOptions) {
    if opts.origin_concurrency.is_none() {
        return;
    }
    let mut tasks: Vec<TaskId> =
        st.tasks.iter().filter(|(_, t)| t.peers.values().any(|p| p.waiting)).map(|(id, _)| *id).collect();
    tasks.sort();
    for t in tasks {
        schedule_waiting(st, &t, opts);
    }
}

/// Gives every waiting peer of the task another chance (something changed).
pub(crate) fn schedule_waiting(st: &mut State, task_id: &TaskId, opts: &SchedulerOptions) {
    let waiting: Vec<HostId> = match st.tasks.get(task_id) {
        Some(t) => {
            let mut w: Vec<_> = t.peers.iter().filter(|(_, p)| p.waiting).map(|(id, _)| id.clone()).collect();
            w.sort();
            w
        }
        None => return,
    };
    for peer in waiting {
        schedule(st, task_id, &peer, false, opts);
    }
}

/// The parents the policy ranks for `peer` within the child limits.
fn ranked_parents(
    task: &TaskEntry,
    hosts: &HashMap<HostId, HostEntry>,
    peer: &HostId,
    opts: &RankOptions,
    rng: &mut impl rand::Rng,
) -> Vec<HostId> {
    let p = &task.peers[peer];
    let candidates = task.candidates(hosts, rng);
    let loc = locality(&p.host);
    let view = ChildView { host: peer, locality: &loc, blocklist: &p.blocklist, piece_count: task.piece_count() };
    rank_parents(&view, &candidates, &task.dag, opts).into_iter().map(|c| c.host.clone()).collect()
}

/// Every peer that could feed this one is at its child limit and no edge could be spliced
/// (a late arrival in a mesh that has filled up). Measured at 32 hosts: six late peers
/// waited 6 s with 0 bytes while the rest downloaded. Better a few parents over their limit
/// than none.
fn starving_parents(
    task: &TaskEntry,
    hosts: &HashMap<HostId, HostEntry>,
    peer: &HostId,
    opts: &RankOptions,
    rng: &mut impl rand::Rng,
) -> Vec<HostId> {
    let over = RankOptions {
        max_parents: STARVING_PARENTS,
        seed_max_children: u32::MAX,
        peer_max_children: u32::MAX,
        ..opts.clone()
    };
    ranked_parents(task, hosts, peer, &over, rng)
}

/// Edges `peer` may take over when the parents within the child limits (`taken`) leave it
/// short: pairs of peers that trade both ways, drawn at random, each pair one edge
/// `a <-> b` that becomes `a <-> peer <-> b`. Everyone keeps its degree and the mesh stays
/// a random graph, a few hops across at any size. Taking only peers with a free child slot
/// (those that came just before) grows it into generations, each further from the seed:
/// in the simulator at 1,000 hosts the last to register ended 0.35 s after the first.
fn plan_splices(
    task: &TaskEntry,
    peer: &HostId,
    taken: &[HostId],
    opts: &RankOptions,
    rng: &mut impl rand::Rng,
) -> Vec<(HostId, HostId)> {
    let Some(p) = task.peers.get(peer) else { return vec![] };
    if p.from_origin || p.host.seed {
        return vec![];
    }
    // Each splice gives `peer` two parents and two children.
    let parents = opts.max_parents.saturating_sub(task.dag.parents_of(peer).count() + taken.len());
    let children = (opts.peer_max_children as usize).saturating_sub(task.dag.children_of(peer) as usize);
    let want = parents.min(children) / 2;
    let mut out: Vec<(HostId, HostId)> = vec![];
    let usable = |id: &HostId, out: &[(HostId, HostId)]| {
        id != peer
            && !taken.contains(id)
            && !p.blocklist.contains(id)
            && !out.iter().any(|(a, b)| a == id || b == id)
            && !task.dag.parents_of(peer).any(|x| x == id)
            && task.peers.get(id).is_some_and(|e| e.state == PeerState::Running && !e.host.seed)
    };
    for _ in 0..want * 8 {
        if out.len() == want {
            break;
        }
        let Some(a) = task.random_other(rng) else { break };
        if !usable(a, &out) {
            continue;
        }
        let bs: Vec<&HostId> = task.dag.parents_of(a).filter(|b| usable(b, &out) && task.dag.trade(a, b)).collect();
        if !bs.is_empty() {
            let b = bs[rng.gen_range(0..bs.len())];
            out.push((a.clone(), b.clone()));
        }
    }
    out
}

/// Puts `peer` in the place of each planned edge: the two ends drop each other and take
/// `peer`, both ways. Returns `peer`'s new parents.
fn splice(
    task: &mut TaskEntry,
    hosts: &HashMap<HostId, HostEntry>,
    peer: &HostId,
    splices: &[(HostId, HostId)],
) -> Vec<HostId> {
    let Some(offer) = parent_message(hosts, task, peer) else { return vec![] };
    let mut added = vec![];
    for (a, b) in splices {
        for (end, other) in [(a, b), (b, a)] {
            task.dag.remove_edge(end, other);
            task.dag.add_edge_unchecked(end, peer);
            task.dag.add_edge_unchecked(peer, end);
            let tx = &task.peers[end].tx;
            send(tx, peer_command::Command::DropParents(DropParents { host_id: vec![other.to_string()] }));
            send(tx, peer_command::Command::Parents(Parents { parents: vec![offer.clone()] }));
            added.push(end.clone());
        }
    }
    added
}

/// Asks `seed` to read the task from the origin with `peer`'s own request: the peer
/// registered with it (and proved it against the origin first if it carries credentials).
fn ask_seed(task: &mut TaskEntry, hosts: &HashMap<HostId, HostEntry>, task_id: &TaskId, peer: &HostId, seed: HostId) {
    let request = &task.peers[peer].request;
    task.fetch =
        Some(SeedFetch { seed: seed.clone(), request: request.key(), origin: crate::state::origin_of(request) });
    let fetch = FetchFromOrigin {
        task_id: task_id.0.to_vec(),
        url: request.url().to_string(),
        headers: request.headers().iter().map(|(n, v)| Header { name: n.clone(), value: v.clone() }).collect(),
        piece_size: task.piece_size_hint,
        digest: request.digest().map(|d| d.to_string()).unwrap_or_default(),
    };
    if let Some(h) = hosts.get(&seed) {
        tracing::info!(task = ?task_id, %seed, "asking seed to fetch from origin");
        let _ = h.tx.send(Ok(HostCommand { command: Some(host_command::Command::Fetch(fetch)) }));
    }
}
