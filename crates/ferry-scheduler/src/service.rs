//! The gRPC face of the scheduler.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_policy::{PeerState, RankOptions};
use ferry_proto::scheduler::scheduler_server::Scheduler;
use ferry_proto::scheduler::{
    host_command, peer_command, peer_message, CancelFetch, DropTaskRequest, DropTaskResponse, FailReason, Failure,
    FailureCode, Host, HostCommand, HostMessage, PeerCommand, PeerMessage, PieceDigests, PreheatDoneResponse,
    PreheatReport, PreheatRequest, PreheatResponse, Register, ReplicateRequest, ReplicateResponse, StatsRequest,
    StatsResponse, TaskFailed, TaskHoldersRequest, TaskHoldersResponse,
};
use ferry_types::{HostId, TaskId};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::schedule::{schedule, schedule_waiting, send, wake_origin_waiters};
use crate::state::{HostEntry, PeerEntry, State, TaskEntry};
use crate::validate;

#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    pub rank: RankOptions,
    /// How many ordinary peers of one task may read the origin.
    pub back_to_source_limit: u32,
    /// Origin reads at once per origin host over all tasks (seeds and peers sent back to
    /// source); `None`: no cap.
    pub origin_concurrency: Option<u32>,
    /// A peer short of parents within the child limits splices into mutual edges (see
    /// `schedule::plan_splices`); off: it takes only peers with a free child slot.
    pub splice: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self { rank: RankOptions::default(), back_to_source_limit: 1, origin_concurrency: None, splice: true }
    }
}

#[derive(Clone)]
pub struct SchedulerService {
    state: Arc<Mutex<State>>,
    /// Replaced whole when the manager sends the cluster's settings.
    opts: Arc<std::sync::RwLock<Arc<SchedulerOptions>>>,
    preheats: Arc<crate::preheat::Preheats>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl SchedulerService {
    pub fn new(opts: SchedulerOptions) -> Self {
        let state = State { started: Some(Instant::now()), ..Default::default() };
        Self {
            state: Arc::new(Mutex::new(state)),
            opts: Arc::new(std::sync::RwLock::new(Arc::new(opts))),
            preheats: Default::default(),
        }
    }

    /// The settings in force now.
    pub fn opts(&self) -> Arc<SchedulerOptions> {
        self.opts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts new settings in force (the manager changed the cluster's); decisions from now on
    /// use them.
    pub fn set_opts(&self, opts: SchedulerOptions) {
        *self.opts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(opts);
    }

    /// Runs twice a second: peers waiting for a capped origin (or for this scheduler to
    /// settle after its start) get another chance even when nothing else happens.
    pub async fn wake_periodically(self, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => wake_origin_waiters(&mut self.lock(), &self.opts()),
            }
        }
    }

    /// Samples candidates from a seeded generator instead of entropy: with the same inputs in
    /// the same order, the same decisions (the fleet simulator's runs repeat bit for bit).
    pub fn seed_rng(&self, seed: u64) {
        self.lock().rng = crate::state::SchedRng(rand::SeedableRng::seed_from_u64(seed));
    }

    pub fn state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::state::lock(&self.state)
    }
}

/// What a re-registering peer knows that this scheduler may not (it took the task over from
/// a scheduler that died): the layout and the digests of the pieces the peer holds.
fn learn_from_register(task: &mut TaskEntry, reg: &validate::ValidRegister) {
    if let (None, Some(meta)) = (&task.meta, &reg.meta) {
        task.meta = Some(meta.clone());
        task.broadcast(peer_command::Command::TaskInfo(meta.info.clone()), Some(&reg.peer));
    }
    let mut learned = PieceDigests::default();
    for (i, d) in &reg.held {
        if let (Some(d), false) = (d, task.digests.contains_key(&i.get())) {
            task.digests.insert(i.get(), *d);
            learned.index.push(i.get());
            learned.digest.push(d.0.to_vec());
        }
    }
    if !learned.index.is_empty() {
        task.broadcast(peer_command::Command::Digests(learned), Some(&reg.peer));
    }
}

/// The service without its sockets: the gRPC handlers below call these, and so can anything
/// that drives a scheduler in-process (the fleet simulator). Commands go down the channels
/// handed in.
impl SchedulerService {
    /// A host session opens; its commands go down `tx`. Returns the host and its session.
    pub fn join_host(&self, host: Option<&Host>, tx: crate::state::HostTx) -> Result<(HostId, u64), Status> {
        let (id, first) = validate::host(host)?;
        let mut st = self.lock();
        let session = st.session();
        tracing::info!(host = %id, ip = %first.ip, seed = first.seed, "host joined");
        st.hosts.insert(id.clone(), HostEntry::new(first, tx, session));
        Ok((id, session))
    }

    /// A peer's stream opens with `reg`; its commands go down `tx`.
    pub fn register(&self, reg: &Register, tx: crate::state::PeerTx) -> Result<(TaskId, HostId, u64), Status> {
        let now = Instant::now();
        let mut st = self.lock();
        let v = validate::register(reg, |t| st.tasks.get(t).and_then(|t| t.layout()))?;
        let (task_id, peer) = (v.task, v.peer.clone());
        let session = st.session();
        st.metrics.registrations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task = st.tasks.entry(task_id).or_insert_with(|| TaskEntry::new(self.opts().back_to_source_limit, now));
        task.last_active = now;
        if task.piece_size_hint == 0 {
            task.piece_size_hint = v.piece_size_hint;
        }
        // A peer registering again (new session) gives back what its old entry held.
        task.release_grant(&peer);
        task.dag.remove_node(&peer);
        learn_from_register(task, &v);
        if let Some(meta) = &task.meta {
            send(&tx, peer_command::Command::TaskInfo(meta.info.clone()));
            let (index, digest) = task.digests.iter().map(|(i, d)| (*i, d.0.to_vec())).unzip();
            send(&tx, peer_command::Command::Digests(PieceDigests { index, digest }));
        }
        let held = v.held.len() as u32;
        let complete = task.piece_count().is_some_and(|n| n > 0 && held >= n);
        // Reading the origin since before this registration (a scheduler restart): it holds
        // a grant whether or not the budget has one left, and counts against the cap.
        let granted = v.reading_origin && !v.from_origin && !complete;
        if granted {
            task.budget.try_grant();
        }
        task.insert_peer(
            peer.clone(),
            PeerEntry {
                host: v.host,
                tx,
                request: v.request,
                state: if complete { PeerState::Succeeded } else { PeerState::Running },
                pieces_held: held,
                from_origin: v.from_origin,
                granted,
                blocklist: vec![],
                throughput: None,
                waiting: false,
                session,
                parked: false,
                pinned_until: v.pinned_until,
            },
        );
        // A peer reading the origin needs no decision; one that is complete neither.
        if !v.from_origin && !complete && !granted {
            schedule(&mut st, &task_id, &peer, false, &self.opts());
        }
        schedule_waiting(&mut st, &task_id, &self.opts());
        Ok((task_id, peer, session))
    }

    /// Applies one message of a peer's stream; an error ends that stream (and only it).
    pub fn on_message(&self, task_id: &TaskId, peer: &HostId, msg: peer_message::Message) -> Result<(), Status> {
        if let peer_message::Message::Park(_) = msg {
            return self.park(task_id, peer);
        }
        let mut st = self.lock();
        let Some(task) = st.tasks.get_mut(task_id) else {
            return Ok(());
        };
        task.last_active = Instant::now();
        match msg {
            peer_message::Message::Register(_) => return Err(Status::invalid_argument("Register sent twice")),
            peer_message::Message::TaskInfo(info) => {
                let meta = validate::task_info(&info)?;
                if task.meta.is_none() {
                    task.meta = Some(meta);
                    task.broadcast(peer_command::Command::TaskInfo(info), Some(peer));
                }
            }
            peer_message::Message::Pieces(batch) => {
                let pieces = validate::pieces(task.layout(), &batch.pieces)?;
                on_pieces(&mut st, task_id, peer, &pieces, &self.opts());
            }
            peer_message::Message::ParentFailed(f) => {
                let parent = HostId::new(f.parent).map_err(|e| Status::invalid_argument(e.to_string()))?;
                let reason = FailReason::try_from(f.reason).unwrap_or(FailReason::Unspecified);
                tracing::info!(task = ?task_id, %peer, %parent, ?reason, "parent failed");
                task.dag.remove_edge(peer, &parent);
                if let Some(me) = task.peers.get_mut(peer) {
                    if !me.blocklist.contains(&parent) {
                        me.blocklist.push(parent.clone());
                    }
                }
                if reason == FailReason::BadPiece {
                    if let Some(bad) = task.peers.get_mut(&parent) {
                        bad.state = PeerState::Failed;
                    }
                }
                schedule(&mut st, task_id, peer, false, &self.opts());
            }
            peer_message::Message::NeedParents(n) => schedule(&mut st, task_id, peer, n.want_origin, &self.opts()),
            peer_message::Message::Finished(_) => {
                task.dag.clear_parents(peer);
                task.release_grant(peer);
                let count = task.piece_count().unwrap_or(0);
                if let Some(me) = task.peers.get_mut(peer) {
                    me.state = PeerState::Succeeded;
                    me.pieces_held = me.pieces_held.max(count);
                    me.waiting = false;
                }
                wake_origin_waiters(&mut st, &self.opts());
            }
            peer_message::Message::Failed(f) => {
                on_failed(&mut st, task_id, peer, f.failure.unwrap_or_default(), &self.opts());
                wake_origin_waiters(&mut st, &self.opts());
            }
            peer_message::Message::Park(_) => unreachable!("handled above"),
        }
        Ok(())
    }

    /// A finished peer closes its stream and stays a parent (see `Park` in the proto).
    fn park(&self, task_id: &TaskId, peer: &HostId) -> Result<(), Status> {
        let mut st = self.lock();
        let State { tasks, hosts, .. } = &mut *st;
        let Some(me) = tasks.get_mut(task_id).and_then(|t| t.peers.get_mut(peer)) else { return Ok(()) };
        if me.state != PeerState::Succeeded {
            return Err(Status::invalid_argument("Park from a peer that has not finished the task"));
        }
        let Some(host) = hosts.get_mut(peer) else {
            // No host session: nothing would tell us when it leaves. Its stream's end
            // removes it as usual.
            return Ok(());
        };
        me.parked = true;
        // Commands go nowhere now, and the stream's response side ends as soon as the peer
        // closes its own (the stream task holds the only other sender).
        me.tx = mpsc::unbounded_channel().0;
        host.parked.insert(*task_id);
        Ok(())
    }

    /// The peer's stream ended. A parked peer stays, as long as its host session does.
    pub fn unregister(&self, task_id: &TaskId, peer: &HostId, session: u64) {
        let mut st = self.lock();
        let stays = |p: &PeerEntry| p.session != session || p.parked;
        if st.tasks.get(task_id).and_then(|t| t.peers.get(peer)).is_none_or(stays) {
            return;
        }
        remove_peer(&mut st, task_id, peer, &self.opts());
    }

    /// A host's parked tasks leave: it dropped them (`dropped`), or its session ended (all).
    fn unpark(&self, host: &HostId, tasks: impl IntoIterator<Item = TaskId>) {
        let mut st = self.lock();
        for task_id in tasks {
            if let Some(h) = st.hosts.get_mut(host) {
                h.parked.remove(&task_id);
            }
            if st.tasks.get(&task_id).and_then(|t| t.peers.get(host)).is_some_and(|p| p.parked) {
                remove_peer(&mut st, &task_id, host, &self.opts());
            }
        }
    }
}

/// Takes a peer out of its task: its grant, its edges, a seed fetch it ran.
fn remove_peer(st: &mut State, task_id: &TaskId, peer: &HostId, opts: &SchedulerOptions) {
    let State { tasks, hosts, .. } = &mut *st;
    let Some(task) = tasks.get_mut(task_id) else { return };
    task.release_grant(peer);
    task.remove_peer(peer);
    task.dag.remove_node(peer);
    if task.fetch.as_ref().is_some_and(|f| &f.seed == peer) {
        task.fetch = None;
    }
    task.last_active = Instant::now();
    cancel_fetch_if_unwanted(task, hosts, task_id);
    schedule_waiting(st, task_id, opts);
    wake_origin_waiters(st, opts);
}

/// Records reported pieces: origin digests (relayed to everyone), holdings, parents' speed.
fn on_pieces(
    st: &mut State,
    task_id: &TaskId,
    peer: &HostId,
    pieces: &[validate::ValidPiece],
    opts: &SchedulerOptions,
) {
    let Some(task) = st.tasks.get_mut(task_id) else { return };
    let mut new_digests = PieceDigests::default();
    for p in pieces {
        if let Some(d) = p.digest {
            if let std::collections::hash_map::Entry::Vacant(e) = task.digests.entry(p.index.get()) {
                e.insert(d);
                new_digests.index.push(p.index.get());
                new_digests.digest.push(d.0.to_vec());
            }
        }
    }
    let count = task.piece_count().unwrap_or(0);
    let mut first_pieces = false;
    if let Some(me) = task.peers.get_mut(peer) {
        first_pieces = me.pieces_held == 0;
        me.pieces_held = (me.pieces_held + pieces.len() as u32).min(count);
        if me.pieces_held >= count {
            me.state = PeerState::Succeeded;
            me.waiting = false;
        }
    }
    for p in pieces {
        let (Some(parent), true) = (&p.parent, p.cost_micros > 0) else { continue };
        let rate = p.length as u64 * 1_000_000 / p.cost_micros as u64;
        if let Some(pe) = task.peers.get_mut(parent) {
            // EWMA, so one slow piece does not sink a parent.
            pe.throughput = Some(pe.throughput.map_or(rate, |t| (t * 3 + rate) / 4));
        }
    }
    if !new_digests.index.is_empty() {
        task.broadcast(peer_command::Command::Digests(new_digests), Some(peer));
    }
    if first_pieces {
        schedule_waiting(st, task_id, opts);
    }
}

/// A peer's download failed. When that peer was reading the origin (a seed on the task's
/// behalf, or a peer sent back to source), what it established is forgotten and every other
/// peer hears the failure: those whose own request is the one that failed fail with it; the
/// others start over with their own request, so one caller's bad token, wrong URL or expired
/// signature never fails anyone else. A seed's full disk is nobody's request: all fail.
fn on_failed(st: &mut State, task_id: &TaskId, peer: &HostId, failure: Failure, opts: &SchedulerOptions) {
    let Some(task) = st.tasks.get_mut(task_id) else { return };
    let Some(me) = task.peers.get_mut(peer) else { return };
    me.state = PeerState::Failed;
    let read_origin = me.from_origin || me.granted;
    let failed_key = me.request.key();
    task.release_grant(peer);
    if !read_origin {
        return;
    }
    let code = FailureCode::try_from(failure.code).unwrap_or(FailureCode::Unspecified);
    tracing::warn!(task = ?task_id, %peer, ?code, status = failure.http_status, message = %failure.message, "origin read failed");
    task.reset_content();
    let everyone = code == FailureCode::StorageFull;
    for (id, p) in &task.peers {
        if id == peer {
            continue;
        }
        let yours = everyone || p.request.key() == failed_key;
        send(&p.tx, peer_command::Command::TaskFailed(TaskFailed { failure: Some(failure.clone()), yours }));
    }
    schedule_waiting(st, task_id, opts);
}

/// Nobody but seeds is left on a task whose origin read is under way: the seed is told to
/// stop reading for nobody.
fn cancel_fetch_if_unwanted(task: &mut TaskEntry, hosts: &HashMap<HostId, HostEntry>, task_id: &TaskId) {
    let wanted = task.peers.values().any(|p| !p.from_origin && p.state == PeerState::Running);
    if wanted {
        return;
    }
    for (id, p) in &task.peers {
        if p.from_origin && p.state == PeerState::Running {
            if let Some(h) = hosts.get(id) {
                tracing::info!(task = ?task_id, seed = %id, "nobody waits any more; cancelling the seed's origin read");
                let cancel = HostCommand {
                    command: Some(host_command::Command::Cancel(CancelFetch { task_id: task_id.0.to_vec() })),
                };
                let _ = h.tx.send(Ok(cancel));
            }
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
        let member = ferry_membership::grpc::member_of(&req).cloned();
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.and_then(|m| m.host);
        validate::claim(member.as_ref(), first.as_ref())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (id, session) = self.join_host(first.as_ref(), tx)?;
        let this = self.clone();
        let span = tracing::info_span!("host_session", host = %id);
        tokio::spawn(
            async move {
                while let Ok(Some(msg)) = inbound.message().await {
                    let (host, dropped) = match validate::host(msg.host.as_ref()) {
                        Ok((sent, h)) if sent == id => match validate::task_ids(&msg.dropped) {
                            Ok(dropped) => (h, dropped),
                            Err(e) => {
                                tracing::info!(error = %e.message(), "host sent malformed dropped tasks; closing its session");
                                break;
                            }
                        },
                        _ => {
                            tracing::info!("host sent a malformed keepalive; closing its session");
                            break;
                        }
                    };
                    if let Some(entry) = this.lock().hosts.get_mut(&id) {
                        entry.host = host;
                        entry.last_seen = Instant::now();
                    }
                    this.unpark(&id, dropped);
                }
                let left = {
                    let mut st = this.lock();
                    match st.hosts.get(&id).is_some_and(|h| h.session == session) {
                        true => st.hosts.remove(&id).map(|h| h.parked),
                        false => None,
                    }
                };
                if let Some(parked) = left {
                    tracing::info!(parked = parked.len(), "host left");
                    this.unpark(&id, parked);
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
        // A child of the peer's download when its daemon exports traces.
        let span = tracing::info_span!("announce_peer", task = tracing::field::Empty, peer = tracing::field::Empty);
        ferry_telemetry::trace::follow_grpc(&span, req.metadata());
        let member = ferry_membership::grpc::member_of(&req).cloned();
        let mut inbound = req.into_inner();
        let reg = match inbound.message().await?.and_then(|m| m.message) {
            Some(peer_message::Message::Register(r)) => r,
            _ => return Err(Status::invalid_argument("the first peer message must be Register")),
        };
        validate::claim(member.as_ref(), reg.host.as_ref())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (task_id, peer, session) = span.in_scope(|| self.register(&reg, tx.clone()))?;
        span.record("task", tracing::field::debug(&task_id));
        span.record("peer", tracing::field::display(&peer));
        let this = self.clone();
        tokio::spawn(
            async move {
                loop {
                    match inbound.next().await {
                        Some(Ok(PeerMessage { message: Some(m) })) => {
                            if let Err(status) = this.on_message(&task_id, &peer, m) {
                                tracing::info!(error = %status.message(), "peer sent a malformed message; closing its stream");
                                let _ = tx.send(Box::new(Err(status)));
                                break;
                            }
                        }
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
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx).map(|b| *b))))
    }

    async fn replicate(&self, req: Request<ReplicateRequest>) -> Result<Response<ReplicateResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("replicate", host = %req.host_id, replicas = req.replicas);
        let holders = crate::holders::replicate(&self.state, &req).instrument(span).await?;
        Ok(Response::new(ReplicateResponse { holders }))
    }

    async fn task_holders(&self, req: Request<TaskHoldersRequest>) -> Result<Response<TaskHoldersResponse>, Status> {
        let task = crate::holders::task_id(&req.into_inner().task_id)?;
        Ok(Response::new(crate::holders::holders(&self.state, &task)))
    }

    async fn drop_task(&self, req: Request<DropTaskRequest>) -> Result<Response<DropTaskResponse>, Status> {
        let task = crate::holders::task_id(&req.into_inner().task_id)?;
        Ok(Response::new(crate::holders::drop_task(&self.state, &task)))
    }

    async fn preheat(&self, req: Request<PreheatRequest>) -> Result<Response<PreheatResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("preheat", scope = req.scope, count = req.count);
        crate::preheat::preheat(&self.state, &self.preheats, req).instrument(span).await.map(Response::new)
    }

    async fn preheat_done(&self, req: Request<PreheatReport>) -> Result<Response<PreheatDoneResponse>, Status> {
        self.preheats.report(req.into_inner())?;
        Ok(Response::new(PreheatDoneResponse {}))
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
mod tests;
