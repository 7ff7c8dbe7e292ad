//! The gRPC face of the scheduler.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_policy::{decide, rank_parents, ChildView, Decision, DecisionInput, PeerState, RankOptions, SeedCandidate};
use ferry_proto::scheduler::scheduler_server::Scheduler;
use ferry_proto::scheduler::{
    host_command, peer_command, peer_message, BackToSource, FailReason, FetchFromOrigin, HostCommand, HostMessage,
    Parent, Parents, PeerCommand, PeerMessage, PieceDigests, Register, StatsRequest, StatsResponse, TaskFailed,
    TaskInfo, WaitForSeed,
};
use ferry_types::{HostId, TaskId};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::state::{locality, HostEntry, PeerEntry, State, TaskEntry};

#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    pub rank: RankOptions,
    /// How many ordinary peers of one task may read the origin.
    pub back_to_source_limit: u32,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self { rank: RankOptions::default(), back_to_source_limit: 1 }
    }
}

#[derive(Clone)]
pub struct SchedulerService {
    state: Arc<Mutex<State>>,
    opts: Arc<SchedulerOptions>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl SchedulerService {
    pub fn new(opts: SchedulerOptions) -> Self {
        Self { state: Arc::default(), opts: Arc::new(opts) }
    }

    pub fn state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }
}

fn host_id(s: &str) -> Result<HostId, Status> {
    HostId::new(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn send(tx: &crate::state::PeerTx, c: peer_command::Command) {
    let _ = tx.send(Ok(PeerCommand { command: Some(c) }));
}

/// Parents a peer gets over the child limits when no parent is within them.
const STARVING_PARENTS: usize = 4;

/// Decides what one peer of a task is told now, and tells it.
fn schedule(st: &mut State, task_id: &TaskId, peer: &HostId, want_origin: bool, opts: &SchedulerOptions) {
    let seeds: Vec<SeedCandidate> = st
        .hosts
        .iter()
        .filter(|(_, h)| h.host.seed)
        .map(|(id, h)| SeedCandidate {
            host: id.clone(),
            uploads_active: h.host.uploads_active,
            upload_slots: h.host.upload_slots,
        })
        .collect();
    let State { hosts, tasks, seed_fetches, back_to_source_grants, .. } = st;
    let Some(task) = tasks.get_mut(task_id) else {
        return;
    };
    let Some(p) = task.peers.get(peer) else {
        return;
    };
    let candidates = task.candidates(hosts);
    let loc = locality(&p.host);
    let view = ChildView { host: peer, locality: &loc, blocklist: &p.blocklist, piece_count: task.piece_count() };
    let mut ranked: Vec<HostId> =
        rank_parents(&view, &candidates, &task.dag, &opts.rank).into_iter().map(|c| c.host.clone()).collect();
    if ranked.is_empty() {
        // Every peer that could feed this one is at its child limit (a late arrival in a
        // mesh that has filled up). Measured at 32 hosts: six late peers waited 6 s with 0
        // bytes while the rest downloaded. Better a few parents over their limit than none.
        let relaxed = RankOptions {
            max_parents: STARVING_PARENTS,
            seed_max_children: u32::MAX,
            peer_max_children: u32::MAX,
            ..opts.rank.clone()
        };
        ranked = rank_parents(&view, &candidates, &task.dag, &relaxed).into_iter().map(|c| c.host.clone()).collect();
    }
    let input = DecisionInput {
        has_parents: !ranked.is_empty(),
        want_origin,
        seed_requested: task.seed_requested.is_some(),
        seeds: &seeds,
        task: task_id,
    };
    let decision = decide(&input, &mut task.budget);
    tracing::debug!(task = ?task_id, %peer, ?decision, parents = ranked.len(), "scheduled");
    let tx = task.peers[peer].tx.clone();
    let waiting = match decision {
        Decision::Parents => {
            let mut parents = vec![];
            for id in &ranked {
                if opts.rank.avoid_cycles {
                    task.dag.add_edge(peer, id);
                } else {
                    task.dag.add_edge_unchecked(peer, id);
                }
                parents.extend(parent_message(hosts, task, id));
            }
            send(&tx, peer_command::Command::Parents(Parents { parents }));
            offer_back(task, hosts, peer, &ranked, &opts.rank);
            false
        }
        Decision::BackToSource => {
            *back_to_source_grants += 1;
            send(&tx, peer_command::Command::BackToSource(BackToSource {}));
            false
        }
        Decision::WaitForSeed => {
            send(&tx, peer_command::Command::Wait(WaitForSeed {}));
            true
        }
        Decision::AskSeed(seed) => {
            task.seed_requested = Some(seed.clone());
            *seed_fetches += 1;
            let fetch = FetchFromOrigin {
                task_id: task_id.0.to_vec(),
                url: task.url.clone(),
                headers: task.headers.clone(),
                piece_size: task.piece_size_hint,
            };
            if let Some(h) = hosts.get(&seed) {
                tracing::info!(task = ?task_id, %seed, "asking seed to fetch from origin");
                let _ = h.tx.send(Ok(HostCommand { command: Some(host_command::Command::Fetch(fetch)) }));
            }
            send(&tx, peer_command::Command::Wait(WaitForSeed {}));
            true
        }
    };
    if let Some(p) = task.peers.get_mut(peer) {
        p.waiting = waiting;
    }
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

/// What a re-registering peer knows that this scheduler may not (it took the task over from
/// a scheduler that died): the layout and the digests of the pieces the peer holds.
fn learn_from_register(task: &mut TaskEntry, reg: &Register, peer: &HostId) {
    if let (None, Some(info)) = (task.info, &reg.info) {
        task.info = Some((info.content_length, info.piece_size));
        task.broadcast(peer_command::Command::TaskInfo(*info), Some(peer));
    }
    let mut learned = PieceDigests::default();
    for (i, d) in reg.held.iter().zip(&reg.held_digests) {
        if d.len() == 32 && !task.digests.contains_key(i) {
            task.digests.insert(*i, d.clone());
            learned.index.push(*i);
            learned.digest.push(d.clone());
        }
    }
    if !learned.index.is_empty() {
        task.broadcast(peer_command::Command::Digests(learned), Some(peer));
    }
}

/// Gives every waiting peer of the task another chance (something changed).
fn schedule_waiting(st: &mut State, task_id: &TaskId, opts: &SchedulerOptions) {
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

impl SchedulerService {
    fn register(&self, reg: Register, tx: crate::state::PeerTx) -> Result<(TaskId, HostId, u64), Status> {
        let task_id =
            TaskId::from_slice(&reg.task_id).ok_or_else(|| Status::invalid_argument("task_id must be 32 bytes"))?;
        let host = reg.host.clone().ok_or_else(|| Status::invalid_argument("register without host"))?;
        let peer = host_id(&host.id)?;
        let now = Instant::now();
        let mut st = self.lock();
        let session = st.session();
        let task = st
            .tasks
            .entry(task_id)
            .or_insert_with(|| TaskEntry::new(reg.url.clone(), self.opts.back_to_source_limit, now));
        task.last_active = now;
        if task.headers.is_empty() {
            task.headers = reg.headers.clone();
        }
        if task.piece_size_hint == 0 {
            task.piece_size_hint = reg.piece_size;
        }
        task.dag.remove_node(&peer);
        learn_from_register(task, &reg, &peer);
        if let Some((len, ps)) = task.info {
            send(&tx, peer_command::Command::TaskInfo(TaskInfo { content_length: len, piece_size: ps }));
            let (index, digest) = task.digests.iter().map(|(i, d)| (*i, d.clone())).unzip();
            send(&tx, peer_command::Command::Digests(PieceDigests { index, digest }));
        }
        let held = reg.held.len() as u32;
        let complete = task.piece_count().is_some_and(|n| n > 0 && held >= n);
        task.peers.insert(
            peer.clone(),
            PeerEntry {
                host,
                tx,
                state: if complete { PeerState::Succeeded } else { PeerState::Running },
                pieces_held: held,
                from_origin: reg.from_origin,
                blocklist: vec![],
                throughput: None,
                waiting: false,
                session,
            },
        );
        if !reg.from_origin && !complete {
            schedule(&mut st, &task_id, &peer, false, &self.opts);
        }
        schedule_waiting(&mut st, &task_id, &self.opts);
        Ok((task_id, peer, session))
    }

    fn on_message(&self, task_id: &TaskId, peer: &HostId, msg: peer_message::Message) {
        let mut st = self.lock();
        let Some(task) = st.tasks.get_mut(task_id) else {
            return;
        };
        task.last_active = Instant::now();
        match msg {
            peer_message::Message::Register(_) => {}
            peer_message::Message::TaskInfo(info) => {
                if task.info.is_none() {
                    task.info = Some((info.content_length, info.piece_size));
                    task.broadcast(peer_command::Command::TaskInfo(info), Some(peer));
                }
            }
            peer_message::Message::Pieces(batch) => {
                let mut new_digests = PieceDigests::default();
                let mut parent_rates: Vec<(HostId, u64)> = vec![];
                for p in &batch.pieces {
                    if p.digest.len() == 32 && !task.digests.contains_key(&p.index) {
                        task.digests.insert(p.index, p.digest.clone());
                        new_digests.index.push(p.index);
                        new_digests.digest.push(p.digest.clone());
                    }
                    if let (Ok(parent), true) = (HostId::new(p.parent.clone()), p.cost_micros > 0) {
                        parent_rates.push((parent, p.length as u64 * 1_000_000 / p.cost_micros as u64));
                    }
                }
                let count = task.piece_count();
                let mut first_pieces = false;
                if let Some(me) = task.peers.get_mut(peer) {
                    first_pieces = me.pieces_held == 0;
                    me.pieces_held += batch.pieces.len() as u32;
                    if count.is_some_and(|n| me.pieces_held >= n) {
                        me.state = PeerState::Succeeded;
                    }
                }
                for (parent, rate) in parent_rates {
                    if let Some(pe) = task.peers.get_mut(&parent) {
                        // EWMA, so one slow piece does not sink a parent.
                        pe.throughput = Some(pe.throughput.map_or(rate, |t| (t * 3 + rate) / 4));
                    }
                }
                if !new_digests.index.is_empty() {
                    task.broadcast(peer_command::Command::Digests(new_digests), Some(peer));
                }
                if first_pieces {
                    schedule_waiting(&mut st, task_id, &self.opts);
                }
            }
            peer_message::Message::ParentFailed(f) => {
                let Ok(parent) = HostId::new(f.parent) else {
                    return;
                };
                let reason = FailReason::try_from(f.reason).unwrap_or(FailReason::Unspecified);
                tracing::info!(task = ?task_id, %peer, %parent, ?reason, "parent failed");
                task.dag.remove_edge(peer, &parent);
                if let Some(me) = task.peers.get_mut(peer) {
                    me.blocklist.push(parent.clone());
                }
                if reason == FailReason::BadPiece {
                    if let Some(bad) = task.peers.get_mut(&parent) {
                        bad.state = PeerState::Failed;
                    }
                }
                schedule(&mut st, task_id, peer, false, &self.opts);
            }
            peer_message::Message::NeedParents(n) => schedule(&mut st, task_id, peer, n.want_origin, &self.opts),
            peer_message::Message::Finished(_) => {
                task.dag.clear_parents(peer);
                let count = task.piece_count().unwrap_or(0);
                if let Some(me) = task.peers.get_mut(peer) {
                    me.state = PeerState::Succeeded;
                    me.pieces_held = me.pieces_held.max(count);
                }
            }
            peer_message::Message::Failed(f) => {
                let from_origin = task.peers.get(peer).is_some_and(|p| p.from_origin);
                if let Some(me) = task.peers.get_mut(peer) {
                    me.state = PeerState::Failed;
                }
                if from_origin {
                    // The origin itself refused: everyone waiting on this fetch fails with the
                    // same reason; the next request for the task starts afresh.
                    tracing::warn!(task = ?task_id, %peer, reason = %f.reason, "origin fetch failed");
                    task.seed_requested = None;
                    task.info = None;
                    task.digests.clear();
                    let status = f
                        .reason
                        .split_whitespace()
                        .find_map(|w| w.parse::<u32>().ok().filter(|s| (400..600).contains(s)));
                    task.broadcast(
                        peer_command::Command::TaskFailed(TaskFailed {
                            reason: f.reason,
                            http_status: status.unwrap_or(0),
                        }),
                        Some(peer),
                    );
                }
            }
        }
    }

    fn unregister(&self, task_id: &TaskId, peer: &HostId, session: u64) {
        let mut st = self.lock();
        let Some(task) = st.tasks.get_mut(task_id) else {
            return;
        };
        if task.peers.get(peer).is_some_and(|p| p.session == session) {
            task.peers.remove(peer);
            task.dag.remove_node(peer);
            if task.seed_requested.as_ref() == Some(peer) {
                task.seed_requested = None;
            }
            task.last_active = Instant::now();
        }
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type HostSessionStream = BoxStream<HostCommand>;
    type AnnouncePeerStream = BoxStream<PeerCommand>;

    async fn host_session(
        &self,
        req: Request<Streaming<HostMessage>>,
    ) -> Result<Response<Self::HostSessionStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .and_then(|m| m.host)
            .ok_or_else(|| Status::invalid_argument("empty host session"))?;
        let id = host_id(&first.id)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let session = {
            let mut st = self.lock();
            let session = st.session();
            tracing::info!(host = %id, ip = %first.ip, seed = first.seed, "host joined");
            st.hosts.insert(id.clone(), HostEntry { host: first, tx, last_seen: Instant::now(), session });
            session
        };
        let this = self.clone();
        let span = tracing::info_span!("host_session", host = %id);
        tokio::spawn(
            async move {
                while let Ok(Some(msg)) = inbound.message().await {
                    let mut st = this.lock();
                    if let (Some(h), Some(entry)) = (msg.host, st.hosts.get_mut(&id)) {
                        entry.host = h;
                        entry.last_seen = Instant::now();
                    }
                }
                let mut st = this.lock();
                if st.hosts.get(&id).is_some_and(|h| h.session == session) {
                    st.hosts.remove(&id);
                    tracing::info!("host left");
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn announce_peer(
        &self,
        req: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<Self::AnnouncePeerStream>, Status> {
        let mut inbound = req.into_inner();
        let reg = match inbound.message().await?.and_then(|m| m.message) {
            Some(peer_message::Message::Register(r)) => r,
            _ => return Err(Status::invalid_argument("the first peer message must be Register")),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (task_id, peer, session) = self.register(reg, tx)?;
        let this = self.clone();
        let span = tracing::info_span!("announce_peer", task = ?task_id, %peer);
        tokio::spawn(
            async move {
                loop {
                    match inbound.next().await {
                        Some(Ok(PeerMessage { message: Some(m) })) => this.on_message(&task_id, &peer, m),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "peer stream broke");
                            break;
                        }
                        None => break,
                    }
                }
                this.unregister(&task_id, &peer, session);
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let st = self.lock();
        Ok(Response::new(StatsResponse {
            tasks: st.tasks.len() as u64,
            peers: st.tasks.values().map(|t| t.peers.len() as u64).sum(),
            hosts: st.hosts.len() as u64,
            seed_fetches: st.seed_fetches,
            back_to_source_grants: st.back_to_source_grants,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::scheduler::Host;
    use tokio::sync::mpsc::UnboundedReceiver;

    type Rx = UnboundedReceiver<Result<PeerCommand, Status>>;

    fn join(svc: &SchedulerService, id: &str, from_origin: bool) -> Rx {
        let host = Host { id: id.into(), ip: "127.0.0.1".into(), piece_port: 1, upload_slots: 8, ..Default::default() };
        let reg = Register {
            task_id: vec![7; 32],
            host: Some(host),
            url: "http://origin/f".into(),
            from_origin,
            ..Default::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        svc.register(reg, tx).unwrap();
        rx
    }

    /// Parent ids in every `Parents` command received so far; `None` if the peer was only
    /// told to wait.
    fn parents(rx: &mut Rx) -> Option<Vec<String>> {
        let mut out: Option<Vec<String>> = None;
        while let Ok(Ok(c)) = rx.try_recv() {
            if let Some(peer_command::Command::Parents(p)) = c.command {
                out.get_or_insert_default().extend(p.parents.into_iter().map(|p| p.host_id));
            }
        }
        out.map(|mut v| {
            v.sort();
            v
        })
    }

    #[test]
    fn a_new_peer_is_offered_back_to_its_parents() {
        let svc = SchedulerService::new(SchedulerOptions::default());
        let _seed = join(&svc, "seed", true);
        let mut a = join(&svc, "a", false);
        assert_eq!(parents(&mut a).unwrap(), ["seed"]);
        let mut b = join(&svc, "b", false);
        assert_eq!(parents(&mut b).unwrap(), ["a", "seed"]);
        assert_eq!(parents(&mut a).unwrap(), ["b"], "a learns of b, which came later");
    }

    #[test]
    fn dag_mode_offers_nothing_back() {
        let rank = RankOptions { avoid_cycles: true, ..Default::default() };
        let svc = SchedulerService::new(SchedulerOptions { rank, ..Default::default() });
        let _seed = join(&svc, "seed", true);
        let mut a = join(&svc, "a", false);
        parents(&mut a);
        let _b = join(&svc, "b", false);
        assert_eq!(parents(&mut a), None);
    }

    #[test]
    fn a_late_peer_gets_parents_over_the_child_limits_rather_than_none() {
        let rank = RankOptions { seed_max_children: 1, peer_max_children: 1, ..Default::default() };
        let svc = SchedulerService::new(SchedulerOptions { rank, ..Default::default() });
        let _seed = join(&svc, "seed", true);
        let _a = join(&svc, "a", false);
        let _b = join(&svc, "b", false);
        // seed feeds a, a feeds b, b feeds a: every child slot is taken.
        let mut c = join(&svc, "c", false);
        let got = parents(&mut c).expect("parents, not a wait");
        assert!(!got.is_empty() && got.len() <= STARVING_PARENTS, "{got:?}");
    }
}
