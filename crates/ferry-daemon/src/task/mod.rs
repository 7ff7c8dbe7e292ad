//! One task's download on this daemon, from registration to "held and served".
//!
//! [`drive`] owns the task: it registers with the task's scheduler, acts on what it is told
//! (parents, digests, wait, go to origin), starts the workers that bring pieces
//! ([`from_parent`], [`from_origin`]), and reports finished pieces in batches. Once every
//! piece is held and reported it *parks*: tells the scheduler to keep this peer as a parent
//! without a stream, and ends (the daemon starts a new driver if the task must register
//! again). If the scheduler goes away mid-download it registers again (possibly with
//! another) and reports what it holds.
//!
//! A task's lifecycle is one [`Phase`]; every change of phase, and what it sets off, is in
//! [`TaskRun::enter`]. What the driver and the workers both touch lives in [`shared`]; what
//! the task needs from the daemon, and its seams to scheduler, parents and origin, in
//! [`env`]. The unit tests (`tests.rs`) drive it through those seams without a socket.

pub mod env;
mod from_origin;
mod from_parent;
mod phase;
pub mod shared;
#[cfg(test)]
mod tests;

pub use phase::{Phase, Step};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::scheduler::{
    peer_command, peer_message, FailReason, Failed, Finished, FinishedPiece, Header, NeedParents, Parent, ParentFailed,
    Park, PeerMessage, PiecesFinished, Register, TaskInfo,
};
use ferry_storage::PieceStore;
use ferry_types::{HostId, PieceDigest};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::registry::{Content, TaskHandle};
use crate::DaemonError;
use env::{Commands, TaskEnv};
use shared::{ContentMeta, Event, Shared, Source};

/// Runs a task until the daemon stops; publishes the outcome on the handle's progress.
pub async fn drive(env: Arc<TaskEnv>, handle: Arc<TaskHandle>, from_origin: bool, piece_size: u32) {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(env.clone(), handle.clone(), events_tx));
    let mut run = TaskRun {
        shared: shared.clone(),
        phase: Phase::Resolving,
        events: events_rx,
        workers: JoinSet::new(),
        parents: HashMap::new(),
        next_worker: 0,
        blocked: HashSet::new(),
        origin_running: false,
        from_origin,
        piece_size,
        pending: vec![],
        reported: HashSet::new(),
        last_progress: Instant::now(),
        unwanted_since: None,
    };
    let span = tracing::info_span!("task", task = ?handle.id);
    let result = tracing::Instrument::instrument(run.run(), span.clone()).await;
    let _entered = span.enter();
    run.end(result);
}

/// Settles a failed task on this host before anyone else hears of it: the outcome is
/// published, the task leaves the registry (it is served no more) and its pieces leave the
/// disk, so a later request starts afresh and a failure never keeps storage full. Only a
/// daemon shutting down keeps what it holds, to resume after a restart.
fn fail_locally(shared: &Shared, e: Arc<DaemonError>) {
    let handle = &shared.handle;
    let mut first = false;
    handle.progress.send_modify(|p| {
        if p.outcome.is_none() {
            p.outcome = Some(Err(e.clone()));
            first = true;
        }
    });
    if !first || matches!(*e, DaemonError::ShuttingDown) {
        return;
    }
    if matches!(*e, DaemonError::Restart) {
        tracing::info!("the task was reset by another request's failure; dropping what is held");
    } else {
        tracing::warn!(error = %e, "task failed");
        if let Some(n) = shared.env.counters.failures.get(e.code() as usize) {
            crate::counters::Counters::add(n, 1);
        }
    }
    shared.env.registry.remove(handle);
    if let Err(err) = shared.env.store.remove_task(handle.id) {
        tracing::warn!(error = %err, "could not remove the failed task's content");
    }
}

/// A parent's worker, as the task driver knows it.
struct ParentLink {
    worker: u64,
    stop: CancellationToken,
}

struct TaskRun {
    shared: Arc<Shared>,
    phase: Phase,
    events: mpsc::UnboundedReceiver<Box<Event>>,
    workers: JoinSet<()>,
    /// The parents being pulled from, each with its worker's number (a later worker for
    /// the same parent is told apart from one still winding down) and its stop signal.
    parents: HashMap<HostId, ParentLink>,
    next_worker: u64,
    blocked: HashSet<HostId>,
    origin_running: bool,
    from_origin: bool,
    piece_size: u32,
    pending: Vec<FinishedPiece>,
    /// Pieces the scheduler of the current session has heard of (in `Register`, or as
    /// stored): a task parks only when it has heard of all, so no origin digest a child
    /// needs is left behind in the driver.
    reported: HashSet<u32>,
    last_progress: Instant,
    /// Since when an origin read for others has had no one to serve while no scheduler
    /// answered (see [`TaskRun::unwanted`]).
    unwanted_since: Option<Instant>,
}

/// How a scheduler session ended when it did not fail.
enum SessionEnd {
    Reconnect,
    /// Finished and parked with the scheduler: the driver's work is done.
    Parked,
    /// The cache collector removed the task: stop serving it, quietly.
    Evicted,
}

impl TaskRun {
    async fn run(&mut self) -> Result<(), Arc<DaemonError>> {
        let env = self.shared.env.clone();
        let id = self.shared.handle.id;
        if let Some(meta) =
            env.store.task_record(id).map_err(|e| Arc::new(e.into()))?.as_ref().and_then(ContentMeta::from_record)
        {
            self.shared.init_content(meta).map_err(Arc::new)?;
        }
        self.settle(&|_| {});
        if self.from_origin && self.phase.fetching() {
            self.start_origin();
        }
        let mut failures = 0u32;
        let mut backoff = crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_millis(700), None);
        loop {
            let (out, out_rx) = mpsc::unbounded_channel();
            let _ = out.send(Box::new(self.register_message()));
            let (addr, inbound) = tokio::select! {
                _ = env.cancel.cancelled() => return Err(Arc::new(DaemonError::ShuttingDown)),
                r = env.scheduler.open(id, out_rx) => r,
            };
            match inbound {
                Ok(mut inbound) => {
                    failures = 0;
                    backoff.reset();
                    tracing::debug!(scheduler = %addr, "registered");
                    self.shared.set_scheduler_up(true);
                    self.unwanted_since = None;
                    let end = self.session(&addr, &out, &mut inbound).await;
                    self.shared.set_scheduler_up(false);
                    match end {
                        Ok(SessionEnd::Reconnect) => {
                            tracing::warn!(scheduler = %addr, "scheduler stream lost; registering again")
                        }
                        Ok(SessionEnd::Evicted) => return Ok(()),
                        Ok(SessionEnd::Parked) => {
                            close_session(out, inbound).await;
                            return Ok(());
                        }
                        Err(e) => return Err(self.report_failure(e, out, inbound).await),
                    }
                }
                Err(status) => {
                    failures += 1;
                    tracing::debug!(scheduler = %addr, %status, "register failed");
                    // Parents already known keep feeding this peer without a scheduler;
                    // only a peer with no source at all gives up.
                    let stranded = self.parents.is_empty() && !self.origin_running;
                    if failures >= 20 && stranded && self.phase.fetching() {
                        return Err(Arc::new(DaemonError::NoScheduler(format!("{addr}: {}", status.message()))));
                    }
                }
            }
            let pause = backoff.next_pause().unwrap_or(Duration::from_millis(700));
            self.between_sessions(pause).await?;
            if self.shared.handle.evict.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Waits `pause` before registering again, storing what known parents and the origin
    /// read deliver meanwhile. Reports to the scheduler are dropped: registering again
    /// tells it every held piece and digest anyway.
    async fn between_sessions(&mut self, pause: Duration) -> Result<(), Arc<DaemonError>> {
        let env = self.shared.env.clone();
        let handle = self.shared.handle.clone();
        let pause = tokio::time::sleep(pause);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = env.cancel.cancelled() => return Err(Arc::new(DaemonError::ShuttingDown)),
                _ = handle.cancel.cancelled(), if self.phase.fetching() => return Err(Arc::new(DaemonError::Cancelled)),
                _ = handle.evict.cancelled() => return Ok(()),
                _ = &mut pause => {
                    if self.unwanted() {
                        tracing::info!("no scheduler, and nobody waits for this origin read: stopping it");
                        return Err(Arc::new(DaemonError::Cancelled));
                    }
                    return Ok(());
                }
                // A completion seen here is reported when a session is up again: `session`
                // sends `Finished` first thing for a complete task.
                Some(ev) = self.events.recv() => self.on_event(*ev, &|_| {}).map_err(Arc::new)?,
            }
        }
    }

    /// Whether an origin read this seed runs for others has had nobody to serve for
    /// `--unwanted-read-timeout`: no child connected and no local request. With a scheduler
    /// up, its `CancelFetch` says so; without one, this is how the read ends.
    fn unwanted(&mut self) -> bool {
        let handle = &self.shared.handle;
        let children = handle.content.get().map_or(0, |c| c.avail.children());
        if !self.origin_running || !self.phase.fetching() || children > 0 || handle.progress.receiver_count() > 0 {
            self.unwanted_since = None;
            return false;
        }
        self.unwanted_since.get_or_insert_with(Instant::now).elapsed() >= self.shared.env.opts.unwanted_read_timeout
    }

    /// Settles the failure here first (see [`fail_locally`]), then tells the scheduler, and
    /// lets that last report reach it before the stream is torn down: close our side and
    /// wait (bounded) for it to close its own.
    async fn report_failure(
        &mut self,
        e: DaemonError,
        out: mpsc::UnboundedSender<Box<PeerMessage>>,
        inbound: Commands,
    ) -> Arc<DaemonError> {
        let e = Arc::new(e);
        fail_locally(&self.shared, e.clone());
        if !matches!(*e, DaemonError::ShuttingDown | DaemonError::Restart) {
            self.flush(&|m| {
                let _ = out.send(Box::new(PeerMessage { message: Some(m) }));
            });
            let failed = peer_message::Message::Failed(Failed { failure: Some(e.failure()) });
            let _ = out.send(Box::new(PeerMessage { message: Some(failed) }));
        }
        close_session(out, inbound).await;
        e
    }

    fn register_message(&mut self) -> PeerMessage {
        let held: Vec<u32> = match self.shared.handle.content.get() {
            Some(c) => (0..c.avail.piece_count()).filter(|i| c.avail.has(*i)).collect(),
            None => vec![],
        };
        self.reported = held.iter().copied().collect();
        let digests = self.shared.digests.lock().expect("not poisoned");
        let held_digests = held.iter().map(|i| digests.get(i).map(|d| d.0.to_vec()).unwrap_or_default()).collect();
        drop(digests);
        let request = &self.shared.handle.request;
        PeerMessage {
            message: Some(peer_message::Message::Register(Register {
                task_id: self.shared.handle.id.0.to_vec(),
                host: Some((self.shared.env.host_info)()),
                url: request.url().to_string(),
                headers: request.headers().iter().map(|(n, v)| Header { name: n.clone(), value: v.clone() }).collect(),
                digest: request.digest().map(|d| d.to_string()).unwrap_or_default(),
                held,
                held_digests,
                info: self.shared.handle.content.get().map(content_info),
                from_origin: self.from_origin,
                piece_size: self.piece_size,
                pinned_until: self.shared.env.store.pinned(self.shared.handle.id).ok().flatten().map_or(0, |p| p.until),
                reading_origin: self.origin_running,
            })),
        }
    }

    /// Takes the steps the shared state shows: the layout is known, every piece is held.
    fn settle(&mut self, send: &impl Fn(peer_message::Message)) {
        if self.shared.layout().is_some() {
            self.enter(Step::Layout, send);
        }
        if self.shared.complete() {
            self.enter(Step::Complete, send);
        }
    }

    /// Moves the task on by `step` (see [`Phase::after`]) and does what the new phase sets
    /// off. Every change of phase goes through here.
    fn enter(&mut self, step: Step, send: &impl Fn(peer_message::Message)) {
        let Some(next) = self.phase.after(step) else { return };
        tracing::debug!(from = ?self.phase, to = ?next, "task phase");
        self.phase = next;
        match next {
            Phase::Resolving | Phase::Fetching | Phase::Ended => {}
            Phase::Parked => tracing::debug!("parked with the scheduler"),
            Phase::Seeding => {
                // Between sessions `send` goes nowhere: a new session starts with
                // `Finished` for a seeding task (see `session`).
                self.flush(send);
                send(peer_message::Message::Finished(Finished {}));
                self.shared.handle.progress.send_modify(|p| {
                    if p.outcome.is_none() {
                        p.outcome = Some(Ok(()));
                    }
                });
                tracing::info!("task complete");
            }
        }
    }

    fn all_reported(&self) -> bool {
        self.shared.layout().is_some_and(|l| self.reported.len() as u32 >= l.piece_count())
    }

    /// Parks a seeding task with the scheduler of this session, if it still owns the task
    /// (else the session's end registers it with the new owner): the scheduler keeps this
    /// peer as a parent without a stream, and the driver ends. See `Park` in the proto.
    fn park(&mut self, addr: &str, send: &impl Fn(peer_message::Message)) -> bool {
        let at = self.shared.env.scheduler.owner(self.shared.handle.id);
        if at.scheduler != addr {
            return false;
        }
        send(peer_message::Message::Park(Park {}));
        self.enter(Step::Park, send);
        let handle = &self.shared.handle;
        handle.set_parked(Some(at));
        if let Some(c) = handle.content.get().filter(|c| c.avail.children() == 0) {
            // Nobody reads it now; the next child or request opens it again.
            c.file.close_if_idle();
        }
        true
    }

    /// The run is over: a failure is settled here (see [`fail_locally`]); an eviction or
    /// shutdown only ends the phase.
    fn end(&mut self, result: Result<(), Arc<DaemonError>>) {
        self.enter(Step::End, &|_| {});
        if let Err(e) = result {
            fail_locally(&self.shared, e);
        }
    }

    fn start_origin(&mut self) {
        if self.origin_running {
            return;
        }
        self.origin_running = true;
        crate::counters::Counters::add(&self.shared.env.counters.back_to_source, 1);
        let shared = self.shared.clone();
        let piece_size = self.piece_size;
        let work = async move {
            let r = from_origin::fetch(&shared, piece_size).await;
            shared.emit(Event::OriginDone(r));
        };
        self.workers.spawn(tracing::Instrument::instrument(work, tracing::info_span!("origin_read")));
    }

    fn add_parent(&mut self, p: Parent) {
        let Ok(host) = HostId::new(p.host_id.clone()) else {
            return;
        };
        if host == self.shared.env.opts.host_id || self.parents.contains_key(&host) || self.blocked.contains(&host) {
            return;
        }
        let Ok(ip) = p.ip.parse::<std::net::IpAddr>() else {
            return;
        };
        let worker = self.next_worker;
        self.next_worker += 1;
        let stop = CancellationToken::new();
        self.parents.insert(host.clone(), ParentLink { worker, stop: stop.clone() });
        let shared = self.shared.clone();
        let addr = std::net::SocketAddr::new(ip, p.piece_port as u16);
        let span = tracing::info_span!("from_parent", parent = %host, seed = p.seed);
        let work = async move {
            let reason = from_parent::parent_worker(&shared, &host, addr, p.seed, &stop).await;
            shared.emit(Event::ParentGone { parent: host, worker, reason });
        };
        self.workers.spawn(tracing::Instrument::instrument(work, span));
    }

    async fn session(
        &mut self,
        addr: &str,
        out: &mpsc::UnboundedSender<Box<PeerMessage>>,
        inbound: &mut Commands,
    ) -> Result<SessionEnd, DaemonError> {
        let send = |m: peer_message::Message| {
            let _ = out.send(Box::new(PeerMessage { message: Some(m) }));
        };
        if let Some(c) = self.shared.handle.content.get() {
            send(peer_message::Message::TaskInfo(content_info(c)));
        }
        if self.phase == Phase::Seeding {
            send(peer_message::Message::Finished(Finished {}));
        }
        let env = self.shared.env.clone();
        let handle = self.shared.handle.clone();
        let mut flush = tokio::time::interval(Duration::from_millis(20));
        let mut watchdog = tokio::time::interval(Duration::from_millis(500));
        let mut last_ask = Instant::now();
        self.last_progress = Instant::now();
        loop {
            if self.phase == Phase::Seeding && self.all_reported() && self.park(addr, &send) {
                return Ok(SessionEnd::Parked);
            }
            tokio::select! {
                _ = env.cancel.cancelled() => return Err(DaemonError::ShuttingDown),
                _ = handle.cancel.cancelled(), if self.phase.fetching() => return Err(DaemonError::Cancelled),
                _ = handle.evict.cancelled() => return Ok(SessionEnd::Evicted),
                cmd = inbound.next() => match cmd {
                    Some(Ok(c)) => {
                        if let Some(c) = c.command {
                            self.on_command(c, &send)?;
                        }
                    }
                    None | Some(Err(_)) => return Ok(SessionEnd::Reconnect),
                },
                Some(ev) = self.events.recv() => self.on_event(*ev, &send)?,
                _ = handle.fetch_origin.notified() => {
                    if self.phase.fetching() {
                        tracing::info!("a scheduler asks this seed to read the origin");
                        self.start_origin();
                    }
                }
                _ = flush.tick() => self.flush(&send),
                _ = watchdog.tick() => {
                    if !self.phase.fetching() {
                        continue;
                    }
                    let idle = self.last_progress.elapsed();
                    if !self.origin_running && idle >= env.opts.back_to_source_after {
                        tracing::info!(?idle, "no progress; asking to read the origin");
                        send(peer_message::Message::NeedParents(NeedParents { want_origin: true }));
                        self.last_progress = Instant::now();
                    } else if !self.origin_running && self.parents.len() < env.opts.want_parents
                        && last_ask.elapsed() >= env.opts.parent_refresh {
                        // Short of parents: better ones may have joined since we were scheduled.
                        send(peer_message::Message::NeedParents(NeedParents { want_origin: false }));
                        last_ask = Instant::now();
                    }
                }
            }
        }
    }

    fn on_command(
        &mut self,
        c: peer_command::Command,
        send: &impl Fn(peer_message::Message),
    ) -> Result<(), DaemonError> {
        match c {
            peer_command::Command::TaskInfo(info) => {
                self.shared.init_content(ContentMeta::from_info(&info)?)?;
                self.settle(send);
            }
            peer_command::Command::Digests(d) => {
                let pairs = d.index.iter().zip(&d.digest).filter_map(|(i, b)| Some((*i, PieceDigest::from_slice(b)?)));
                self.shared.add_digests(pairs)?;
            }
            peer_command::Command::Parents(ps) => {
                for p in ps.parents {
                    self.add_parent(p);
                }
            }
            peer_command::Command::DropParents(d) => {
                // The scheduler reshaped the mesh: the worker finishes what has arrived,
                // hands back what was asked, and ends without a report (no one failed).
                for id in d.host_id {
                    if let Some(link) = HostId::new(id).ok().and_then(|h| self.parents.remove(&h)) {
                        link.stop.cancel();
                    }
                }
            }
            peer_command::Command::Wait(_) => {
                tracing::debug!("waiting for a seed to fetch from origin")
            }
            peer_command::Command::BackToSource(_) => {
                tracing::info!("scheduler sends this peer to origin");
                self.start_origin();
            }
            peer_command::Command::TaskFailed(f) => {
                if self.phase.fetching() && !self.origin_running {
                    return Err(match f.yours {
                        true => DaemonError::OriginRemote(f.failure.unwrap_or_default()),
                        // Another request's read failed: what this peer holds may come from
                        // it, and its own request deserves its own read.
                        false => DaemonError::Restart,
                    });
                }
            }
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event, send: &impl Fn(peer_message::Message)) -> Result<(), DaemonError> {
        match ev {
            Event::Stored { index, len, source, digest } => {
                self.last_progress = Instant::now();
                self.reported.insert(index);
                let (parent, cost) = match source {
                    Source::Origin => (String::new(), 0),
                    Source::Parent { host, cost } => (host.to_string(), cost.as_micros().min(u32::MAX as u128) as u32),
                };
                self.pending.push(FinishedPiece {
                    index,
                    digest: digest.map(|d| d.0.to_vec()).unwrap_or_default(),
                    parent,
                    cost_micros: cost,
                    length: len,
                });
                if digest.is_some() {
                    // Read from origin: children cannot verify it before the scheduler has
                    // relayed its digest, so do not wait for the next batch.
                    self.flush(send);
                }
                self.settle(send);
            }
            Event::ParentGone { parent, worker, reason } => {
                if self.parents.get(&parent).is_none_or(|l| l.worker != worker) {
                    tracing::debug!(%parent, "dropped parent's worker ended");
                    return Ok(());
                }
                self.parents.remove(&parent);
                if self.phase.fetching() {
                    tracing::info!(%parent, ?reason, "parent dropped");
                    if reason != FailReason::Unspecified {
                        self.blocked.insert(parent.clone());
                    }
                    send(peer_message::Message::ParentFailed(ParentFailed {
                        parent: parent.to_string(),
                        reason: reason as i32,
                    }));
                }
            }
            Event::Layout(meta) => {
                send(peer_message::Message::TaskInfo(meta.info()));
                self.settle(send);
            }
            Event::Fatal(e) => return Err(e),
            Event::OriginDone(r) => {
                self.origin_running = false;
                r?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, send: &impl Fn(peer_message::Message)) {
        if !self.pending.is_empty() {
            let pieces = std::mem::take(&mut self.pending);
            send(peer_message::Message::Pieces(PiecesFinished { pieces }));
        }
    }
}

/// Ends a session so that what was sent last reaches the scheduler: close our side, then
/// wait (bounded) for it to close its own. Dropping both at once could reset the stream
/// before the scheduler has read our last messages.
async fn close_session(out: mpsc::UnboundedSender<Box<PeerMessage>>, mut inbound: Commands) {
    drop(out);
    let drain = async { while let Some(Ok(_)) = inbound.next().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// What the scheduler hears of content this daemon holds.
fn content_info(c: &Content) -> TaskInfo {
    ContentMeta { layout: *c.file.layout(), validators: c.validators.clone(), private: c.private }.info()
}
