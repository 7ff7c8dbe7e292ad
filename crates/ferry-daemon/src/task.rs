//! One task's download on this daemon, from registration to "held and served".
//!
//! [`drive`] owns the task: it registers with the task's scheduler, acts on what it is told
//! (parents, digests, wait, go to origin), starts the workers that bring pieces
//! ([`crate::fetch_peers`], [`crate::fetch_origin`]), reports finished pieces in batches, and
//! after completion keeps the registration open so the task can be served. If the
//! scheduler goes away it registers again (possibly with another) and reports what it holds.
//!
//! [`Shared`] is what the workers and the driver both touch: the piece picker, the digest
//! list and the path by which a verified piece lands in storage ([`Shared::store_piece`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_policy::PiecePicker;
use ferry_proto::scheduler::{
    peer_command, peer_message, FailReason, Failed, Finished, FinishedPiece, Header, NeedParents, Parent, ParentFailed,
    PeerMessage, PiecesFinished, Register, TaskInfo,
};
use ferry_storage::{PieceStore, TaskRecord};
use ferry_transport::Availability;
use ferry_types::{HostId, PieceDigest, PieceLayout, Validators};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::counters::Counters;
use crate::registry::{Content, TaskHandle};
use crate::run::Ctx;
use crate::DaemonError;

/// Where a stored piece came from.
#[derive(Clone, Debug)]
pub enum Source {
    Origin,
    Parent { host: HostId, cost: Duration },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    New,
    /// Already held (a duplicate from end-game), or not verifiable yet.
    Skipped,
    /// Wrong length or wrong digest: the sender is at fault.
    Mismatch,
}

pub enum Event {
    Stored {
        index: u32,
        len: u32,
        source: Source,
        digest: Option<PieceDigest>,
    },
    ParentGone {
        parent: HostId,
        reason: FailReason,
    },
    /// The origin told us the content length and validators: the scheduler must hear them.
    Layout(ContentMeta),
    OriginDone(Result<(), DaemonError>),
    /// Local storage failed (e.g. disk full): no parent can fix that, the task fails.
    Fatal(DaemonError),
}

/// What a task's content is, before any byte of it: its layout, the origin's validators, and
/// whether it was read with credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentMeta {
    pub layout: PieceLayout,
    pub validators: Validators,
    pub private: bool,
}

impl ContentMeta {
    pub fn from_info(info: &TaskInfo) -> Result<Self, DaemonError> {
        let layout = PieceLayout::new(info.content_length, info.piece_size)
            .map_err(|e| DaemonError::BadRequest(format!("scheduler sent a bad layout: {e}")))?;
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let validators = Validators {
            length: info.content_length,
            etag: text(&info.etag),
            last_modified: text(&info.last_modified),
        };
        Ok(Self { layout, validators, private: info.private })
    }

    fn from_record(r: &TaskRecord) -> Option<Self> {
        let layout = PieceLayout::new(r.content_length, r.piece_size).ok()?;
        let validators =
            Validators { length: r.content_length, etag: r.etag.clone(), last_modified: r.last_modified.clone() };
        Some(Self { layout, validators, private: r.private })
    }

    pub fn info(&self) -> TaskInfo {
        TaskInfo {
            content_length: self.layout.content_length(),
            piece_size: self.layout.piece_size(),
            etag: self.validators.etag.clone().unwrap_or_default(),
            last_modified: self.validators.last_modified.clone().unwrap_or_default(),
            private: self.private,
        }
    }
}

pub struct Shared {
    pub ctx: Arc<Ctx>,
    pub handle: Arc<TaskHandle>,
    pub picker: Mutex<Option<PiecePicker>>,
    pub digests: Mutex<HashMap<u32, PieceDigest>>,
    /// A scheduler session for this task is up: digests come from it. While none is, a
    /// piece from a parent is checked against the digest that parent recorded.
    scheduler_up: std::sync::atomic::AtomicBool,
    /// Per piece, how many connected non-seed parents hold it. A seed is asked only for
    /// pieces no other parent can give, so its upload goes to pieces the swarm lacks.
    pub peer_holders: Mutex<Vec<u16>>,
    /// Bumped when something a waiting worker could act on changed.
    pub changed: watch::Sender<u64>,
    pub events: mpsc::UnboundedSender<Event>,
}

impl Shared {
    pub fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn layout(&self) -> Option<PieceLayout> {
        self.handle.content.get().map(|c| *c.file.layout())
    }

    /// Opens storage for the content (once) and seeds the picker with pieces already held.
    pub fn init_content(&self, meta: ContentMeta) -> Result<(), DaemonError> {
        if let Some(existing) = self.layout() {
            if existing != meta.layout {
                tracing::warn!(?existing, layout = ?meta.layout, "peers disagree on the task layout; keeping ours");
            }
            return Ok(());
        }
        let layout = meta.layout;
        let record = TaskRecord {
            url: self.handle.request.redacted_url(),
            content_length: layout.content_length(),
            piece_size: layout.piece_size(),
            etag: meta.validators.etag.clone(),
            last_modified: meta.validators.last_modified.clone(),
            private: meta.private,
        };
        if self.ctx.store.task_record(self.handle.id)?.is_none() {
            // A new task: make room for it first, so a bounded cache stays bounded.
            self.ctx.gc.collect(layout.content_length(), crate::gc::now_unix());
        }
        let (file, held) = self.ctx.store.open_task(self.handle.id, &record)?;
        self.install(file, held, meta);
        Ok(())
    }

    fn install(
        &self,
        file: Arc<ferry_storage::TaskFile>,
        held: Vec<(ferry_types::PieceIndex, PieceDigest)>,
        meta: ContentMeta,
    ) {
        let layout = *file.layout();
        // A seed dispenses: it shows children a piece only once it handed it to one of them.
        let avail = Arc::new(Availability::new(layout.piece_count(), self.ctx.opts.seed));
        let mut picker = PiecePicker::new(layout.piece_count());
        let mut digests = self.digests.lock().expect("not poisoned");
        let mut resumed_bytes = 0;
        for (idx, d) in &held {
            digests.insert(idx.get(), *d);
            picker.mark_done(idx.get());
            avail.insert(idx.get(), d.0);
            resumed_bytes += layout.len(*idx) as u64;
        }
        for i in digests.keys() {
            picker.set_verifiable(*i);
        }
        picker.set_unverified_ok(!self.scheduler_up.load(std::sync::atomic::Ordering::Relaxed));
        drop(digests);
        if !held.is_empty() {
            Counters::add(&self.ctx.counters.pieces_resumed, held.len() as u64);
            Counters::add(&self.ctx.counters.bytes_from_cache, resumed_bytes);
            Counters::add(&self.handle.counters.from_cache, resumed_bytes);
            tracing::info!(pieces = held.len(), "resumed pieces already on disk");
        }
        *self.picker.lock().expect("not poisoned") = Some(picker);
        *self.peer_holders.lock().expect("not poisoned") = vec![0; layout.piece_count() as usize];
        let _ = self.handle.content.set(Content { file, avail, validators: meta.validators, private: meta.private });
        self.handle.progress.send_modify(|p| {
            p.content_length = layout.content_length();
            p.completed_bytes = resumed_bytes;
        });
        self.bump();
    }

    /// Records the scheduler's digests. Errs when one contradicts the digest a piece held
    /// here was checked against (taken from a parent while no scheduler answered): what this
    /// host holds cannot be trusted, and the task must start afresh.
    pub fn add_digests(&self, pairs: impl Iterator<Item = (u32, PieceDigest)>) -> Result<(), DaemonError> {
        let mut digests = self.digests.lock().expect("not poisoned");
        let mut picker = self.picker.lock().expect("not poisoned");
        let mut conflict = None;
        for (i, d) in pairs {
            let known = *digests.entry(i).or_insert(d);
            if known != d {
                conflict = Some((i, known, d));
            }
            if let Some(p) = picker.as_mut() {
                p.set_verifiable(i);
            }
        }
        drop((digests, picker));
        self.bump();
        match conflict {
            Some((i, held, sched)) => Err(DaemonError::DigestMismatch {
                expected: format!("piece {i}: {sched}"),
                actual: format!("{held}, taken from a parent while no scheduler answered"),
            }),
            None => Ok(()),
        }
    }

    /// A scheduler session came up or went away; see [`Shared::store_piece`].
    pub fn set_scheduler_up(&self, up: bool) {
        self.scheduler_up.store(up, std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = self.picker.lock().expect("not poisoned").as_mut() {
            p.set_unverified_ok(!up);
        }
        self.bump();
    }

    /// A non-seed parent gained (`+1`) or lost (`-1`) these pieces.
    pub fn count_holders(&self, pieces: impl Iterator<Item = u32>, delta: i32) {
        let mut h = self.peer_holders.lock().expect("not poisoned");
        for i in pieces {
            if let Some(c) = h.get_mut(i as usize) {
                *c = (*c as i32 + delta).max(0) as u16;
            }
        }
        drop(h);
        if delta < 0 {
            // A seed worker may now ask for what that parent no longer offers.
            self.bump();
        }
    }

    /// What a seed parent may be asked for by index: pieces it shows that no other parent
    /// has shown for the piece's grace time (`since` remembers, per piece, when that began).
    /// Returns the mask and the earliest moment another piece comes due.
    pub fn seed_mask(&self, has: &[bool], since: &mut [Option<Instant>]) -> (Vec<bool>, Option<Instant>) {
        let h = self.peer_holders.lock().expect("not poisoned");
        let now = Instant::now();
        let grace = self.ctx.opts.seed_grace;
        let mut next: Option<Instant> = None;
        let mask = has
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let Some(slot) = since.get_mut(i) else { return false };
                if !*b || h.get(i).is_some_and(|c| *c > 0) {
                    *slot = None;
                    return false;
                }
                let due = *slot.get_or_insert(now) + grace + grace.mul_f64(self.jitter(i as u32));
                if due <= now {
                    return true;
                }
                next = Some(next.map_or(due, |n| n.min(due)));
                false
            })
            .collect();
        (mask, next)
    }

    /// A per (host, piece) factor in [0, 2): children of one seed do not all give up on the
    /// same piece at the same moment; the first to ask passes it on to the rest.
    fn jitter(&self, index: u32) -> f64 {
        let mut x: u64 = 0xcbf29ce484222325;
        for b in self.ctx.opts.host_id.as_str().bytes().chain(index.to_be_bytes()) {
            x = (x ^ b as u64).wrapping_mul(0x100000001b3);
        }
        (x % 1024) as f64 / 512.0
    }

    /// The digest a piece from a parent must match: the scheduler's, waiting up to `timeout`
    /// for it (a piece a seed hands out can arrive before its digest does). While no
    /// scheduler answers, the digest the parent recorded when it verified the piece: that
    /// catches bytes corrupted on the way or on the parent's disk, and takes the parent's
    /// word as a restarted scheduler does when peers register with what they hold. A
    /// whole-file digest, when the request has one, still checks the end result.
    async fn digest_of(&self, index: u32, claimed: Option<PieceDigest>, timeout: Duration) -> Option<PieceDigest> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(d) = self.digests.lock().expect("not poisoned").get(&index) {
                return Some(*d);
            }
            if !self.scheduler_up.load(std::sync::atomic::Ordering::Relaxed) && claimed.is_some() {
                return claimed;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    pub fn is_done(&self, index: u32) -> bool {
        self.picker.lock().expect("not poisoned").as_ref().is_some_and(|p| p.is_done(index))
    }

    pub fn release(&self, index: u32) {
        if let Some(p) = self.picker.lock().expect("not poisoned").as_mut() {
            p.release(index);
        }
        self.bump();
    }

    /// Verifies, writes and records one piece from a parent. Its digest must match the
    /// known one (the scheduler's; see [`Shared::digest_of`] for when a parent's word
    /// stands in). Only a verified piece is written, to the content file and to the outputs
    /// being written alongside, slice by slice so each slice is read from memory once for
    /// both; it counts once it is recorded.
    pub async fn store_piece(
        &self,
        index: u32,
        bytes: Vec<u8>,
        parent: HostId,
        cost: Duration,
        claimed: Option<PieceDigest>,
    ) -> Result<Stored, DaemonError> {
        let Some(content) = self.handle.content.get() else {
            return Ok(Stored::Skipped);
        };
        let layout = *content.file.layout();
        let Ok(idx) = layout.index(index) else {
            return Ok(Stored::Mismatch);
        };
        if bytes.len() != layout.len(idx) as usize {
            return Ok(Stored::Mismatch);
        }
        if self.is_done(index) {
            return Ok(Stored::Skipped);
        }
        let Some(known) = self.digest_of(index, claimed, self.ctx.opts.piece_timeout).await else {
            return Ok(Stored::Skipped);
        };
        let (file, store, task) = (content.file.clone(), self.ctx.store.clone(), self.handle.id);
        let sinks = self.handle.live_sinks();
        let written = tokio::task::spawn_blocking(move || -> Result<_, DaemonError> {
            let digest = verify_and_write(&file, idx, &bytes, known, &sinks)?;
            if digest != known {
                return Ok((digest, vec![]));
            }
            store.record_piece(task, idx, digest)?;
            Ok((digest, sinks))
        });
        let (digest, sinks) = written.await.expect("storage does not panic")?;
        if digest != known {
            Counters::add(&self.ctx.counters.pieces_rejected, 1);
            return Ok(Stored::Mismatch);
        }
        if !self.accept(index, digest, Source::Parent { host: parent, cost }) {
            return Ok(Stored::Skipped);
        }
        for s in sinks {
            s.mark(idx);
        }
        Ok(Stored::New)
    }

    /// A piece verified, written and recorded: it is done, counted, shown to children and
    /// reported. False when it already was done (a duplicate).
    pub fn accept(&self, index: u32, digest: PieceDigest, source: Source) -> bool {
        let Some(content) = self.handle.content.get() else { return false };
        let Ok(idx) = content.file.layout().index(index) else { return false };
        let newly = self.picker.lock().expect("not poisoned").as_mut().is_some_and(|p| p.mark_done(index));
        if !newly {
            return false;
        }
        self.digests.lock().expect("not poisoned").entry(index).or_insert(digest);
        content.avail.insert(index, digest.0);
        let len = content.file.layout().len(idx);
        let c = &self.ctx.counters;
        match &source {
            Source::Origin => {
                Counters::add(&c.bytes_from_origin, len as u64);
                Counters::add(&c.pieces_from_origin, 1);
                Counters::add(&self.handle.counters.from_origin, len as u64);
            }
            Source::Parent { .. } => {
                Counters::add(&c.bytes_from_peers, len as u64);
                Counters::add(&c.pieces_from_peers, 1);
                Counters::add(&self.handle.counters.from_peers, len as u64);
            }
        }
        self.handle.progress.send_modify(|p| p.completed_bytes += len as u64);
        let origin_digest = matches!(source, Source::Origin).then_some(digest);
        let _ = self.events.send(Event::Stored { index, len, source, digest: origin_digest });
        true
    }

    /// The digest the scheduler (or an earlier read) gave a piece, if any.
    pub fn known_digest(&self, index: u32) -> Option<PieceDigest> {
        self.digests.lock().expect("not poisoned").get(&index).copied()
    }

    pub fn complete(&self) -> bool {
        self.picker.lock().expect("not poisoned").as_ref().is_some_and(|p| p.is_complete())
    }
}

/// Slices small enough to stay in the CPU's cache between the cache write and the output
/// writes.
const SLICE: usize = 256 * 1024;

/// Verifies `bytes` against `known` and only then writes them at the piece's offset, to the
/// content file and to each output, slice by slice (each slice read from memory once for
/// both writes). Nothing unverified is written: two copies of a piece may be stored at once
/// (end game), and a bad one must never land over a good one already recorded. Output
/// writes are best effort: an output that misses a piece is filled from the cache when it
/// lands. Returns the digest the bytes have.
fn verify_and_write(
    file: &ferry_storage::TaskFile,
    idx: ferry_types::PieceIndex,
    bytes: &[u8],
    known: PieceDigest,
    sinks: &[Arc<crate::output::OutputSink>],
) -> Result<PieceDigest, DaemonError> {
    let digest = PieceDigest::of(bytes);
    if digest != known {
        return Ok(digest);
    }
    let base = file.layout().offset(idx);
    for (i, slice) in bytes.chunks(SLICE).enumerate() {
        let at = base + (i * SLICE) as u64;
        file.write_slice(idx, at, slice)?;
        for s in sinks {
            let _ = s.write_at(at, slice);
        }
    }
    Ok(digest)
}

/// Runs a task until the daemon stops; publishes the outcome on the handle's progress.
pub async fn drive(ctx: Arc<Ctx>, handle: Arc<TaskHandle>, from_origin: bool, piece_size: u32) {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        handle: handle.clone(),
        picker: Mutex::new(None),
        digests: Mutex::new(HashMap::new()),
        scheduler_up: Default::default(),
        peer_holders: Mutex::new(vec![]),
        changed: watch::Sender::new(0),
        events: events_tx,
    });
    let mut run = TaskRun {
        shared: shared.clone(),
        events: events_rx,
        workers: JoinSet::new(),
        parents: HashSet::new(),
        blocked: HashSet::new(),
        origin_running: false,
        from_origin,
        piece_size,
        finished_sent: false,
        pending: vec![],
        last_progress: Instant::now(),
        unwanted_since: None,
    };
    let span = tracing::info_span!("task", task = ?handle.id);
    let result = tracing::Instrument::instrument(run.run(), span).await;
    if let Err(e) = result {
        fail_locally(&shared, e);
    }
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
    }
    shared.ctx.registry.remove(handle);
    if let Err(err) = shared.ctx.store.remove_task(handle.id) {
        tracing::warn!(error = %err, "could not remove the failed task's content");
    }
}

struct TaskRun {
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    workers: JoinSet<()>,
    parents: HashSet<HostId>,
    blocked: HashSet<HostId>,
    origin_running: bool,
    from_origin: bool,
    piece_size: u32,
    finished_sent: bool,
    pending: Vec<FinishedPiece>,
    last_progress: Instant,
    /// Since when an origin read for others has had no one to serve while no scheduler
    /// answered (see [`TaskRun::unwanted`]).
    unwanted_since: Option<Instant>,
}

/// How a scheduler session ended when it did not fail. After completion the registration
/// stays open so the task is served; only the daemon's cancellation ends it.
enum SessionEnd {
    Reconnect,
    /// The cache collector removed the task: stop serving it, quietly.
    Evicted,
}

impl TaskRun {
    async fn run(&mut self) -> Result<(), Arc<DaemonError>> {
        let ctx = self.shared.ctx.clone();
        let id = self.shared.handle.id;
        if let Some(meta) =
            ctx.store.task_record(id).map_err(|e| Arc::new(e.into()))?.as_ref().and_then(ContentMeta::from_record)
        {
            self.shared.init_content(meta).map_err(Arc::new)?;
        }
        self.check_complete();
        if self.from_origin && !self.shared.complete() {
            self.start_origin();
        }
        let mut failures = 0u32;
        let mut backoff = crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_millis(700), None);
        loop {
            let (addr, mut client) = ctx.schedulers.pick(&id);
            let (out, out_rx) = mpsc::unbounded_channel();
            let _ = out.send(self.register_message());
            let inbound = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(Arc::new(DaemonError::ShuttingDown)),
                r = client.announce_peer(UnboundedReceiverStream::new(out_rx)) => r,
            };
            match inbound {
                Ok(resp) => {
                    failures = 0;
                    backoff.reset();
                    tracing::debug!(scheduler = %addr, "registered");
                    let mut inbound = resp.into_inner();
                    self.shared.set_scheduler_up(true);
                    self.unwanted_since = None;
                    let end = self.session(&out, &mut inbound).await;
                    self.shared.set_scheduler_up(false);
                    match end {
                        Ok(SessionEnd::Reconnect) => {
                            tracing::warn!(scheduler = %addr, "scheduler stream lost; registering again")
                        }
                        Ok(SessionEnd::Evicted) => return Ok(()),
                        Err(e) => return Err(self.report_failure(e, out, inbound).await),
                    }
                }
                Err(status) => {
                    failures += 1;
                    tracing::debug!(scheduler = %addr, %status, "register failed");
                    // Parents already known keep feeding this peer without a scheduler;
                    // only a peer with no source at all gives up.
                    let stranded = self.parents.is_empty() && !self.origin_running;
                    if failures >= 20 && stranded && !self.shared.complete() {
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
        let ctx = self.shared.ctx.clone();
        let handle = self.shared.handle.clone();
        let pause = tokio::time::sleep(pause);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(Arc::new(DaemonError::ShuttingDown)),
                _ = handle.cancel.cancelled(), if !self.shared.complete() => return Err(Arc::new(DaemonError::Cancelled)),
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
                Some(ev) = self.events.recv() => self.on_event(ev, &|_| {}).map_err(Arc::new)?,
            }
        }
    }

    /// Whether an origin read this seed runs for others has had nobody to serve for
    /// `--unwanted-read-timeout`: no child connected and no local request. With a scheduler
    /// up, its `CancelFetch` says so; without one, this is how the read ends.
    fn unwanted(&mut self) -> bool {
        let handle = &self.shared.handle;
        let children = handle.content.get().map_or(0, |c| c.avail.children());
        if !self.origin_running || self.shared.complete() || children > 0 || handle.progress.receiver_count() > 0 {
            self.unwanted_since = None;
            return false;
        }
        self.unwanted_since.get_or_insert_with(Instant::now).elapsed() >= self.shared.ctx.opts.unwanted_read_timeout
    }

    /// Settles the failure here first (see [`fail_locally`]), then tells the scheduler, and
    /// lets that last report reach it before the stream is torn down: close our side and
    /// wait (bounded) for it to close its own.
    async fn report_failure(
        &mut self,
        e: DaemonError,
        out: mpsc::UnboundedSender<PeerMessage>,
        mut inbound: tonic::Streaming<ferry_proto::scheduler::PeerCommand>,
    ) -> Arc<DaemonError> {
        let e = Arc::new(e);
        fail_locally(&self.shared, e.clone());
        if !matches!(*e, DaemonError::ShuttingDown | DaemonError::Restart) {
            self.flush(&|m| {
                let _ = out.send(PeerMessage { message: Some(m) });
            });
            let failed = peer_message::Message::Failed(Failed { failure: Some(e.failure()) });
            let _ = out.send(PeerMessage { message: Some(failed) });
        }
        drop(out);
        let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        e
    }

    fn register_message(&self) -> PeerMessage {
        let held: Vec<u32> = match self.shared.handle.content.get() {
            Some(c) => (0..c.avail.piece_count()).filter(|i| c.avail.has(*i)).collect(),
            None => vec![],
        };
        let digests = self.shared.digests.lock().expect("not poisoned");
        let held_digests = held.iter().map(|i| digests.get(i).map(|d| d.0.to_vec()).unwrap_or_default()).collect();
        drop(digests);
        let request = &self.shared.handle.request;
        PeerMessage {
            message: Some(peer_message::Message::Register(Register {
                task_id: self.shared.handle.id.0.to_vec(),
                host: Some((self.shared.ctx.host_info)()),
                url: request.url().to_string(),
                headers: request.headers().iter().map(|(n, v)| Header { name: n.clone(), value: v.clone() }).collect(),
                digest: request.digest().map(|d| d.to_string()).unwrap_or_default(),
                held,
                held_digests,
                info: self.shared.handle.content.get().map(content_info),
                from_origin: self.from_origin,
                piece_size: self.piece_size,
            })),
        }
    }

    fn check_complete(&mut self) {
        if self.shared.complete() {
            self.shared.handle.progress.send_modify(|p| {
                if p.outcome.is_none() {
                    p.outcome = Some(Ok(()));
                }
            });
        }
    }

    fn start_origin(&mut self) {
        if self.origin_running {
            return;
        }
        self.origin_running = true;
        let shared = self.shared.clone();
        let piece_size = self.piece_size;
        self.workers.spawn(async move {
            let r = crate::fetch_origin::fetch(&shared, piece_size).await;
            let _ = shared.events.send(Event::OriginDone(r));
        });
    }

    fn add_parent(&mut self, p: Parent) {
        let Ok(host) = HostId::new(p.host_id.clone()) else {
            return;
        };
        if host == self.shared.ctx.opts.host_id || self.parents.contains(&host) || self.blocked.contains(&host) {
            return;
        }
        let Ok(ip) = p.ip.parse::<std::net::IpAddr>() else {
            return;
        };
        self.parents.insert(host.clone());
        let shared = self.shared.clone();
        let addr = std::net::SocketAddr::new(ip, p.piece_port as u16);
        self.workers.spawn(async move {
            let reason = crate::fetch_peers::parent_worker(&shared, &host, addr, p.seed).await;
            let _ = shared.events.send(Event::ParentGone { parent: host, reason });
        });
    }

    async fn session(
        &mut self,
        out: &mpsc::UnboundedSender<PeerMessage>,
        inbound: &mut tonic::Streaming<ferry_proto::scheduler::PeerCommand>,
    ) -> Result<SessionEnd, DaemonError> {
        let send = |m: peer_message::Message| {
            let _ = out.send(PeerMessage { message: Some(m) });
        };
        if let Some(c) = self.shared.handle.content.get() {
            send(peer_message::Message::TaskInfo(content_info(c)));
        }
        if self.shared.complete() {
            send(peer_message::Message::Finished(Finished {}));
        }
        let ctx = self.shared.ctx.clone();
        let handle = self.shared.handle.clone();
        let mut flush = tokio::time::interval(Duration::from_millis(20));
        let mut watchdog = tokio::time::interval(Duration::from_millis(500));
        let mut last_ask = Instant::now();
        self.last_progress = Instant::now();
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(DaemonError::ShuttingDown),
                _ = handle.cancel.cancelled(), if !self.shared.complete() => return Err(DaemonError::Cancelled),
                _ = handle.evict.cancelled() => return Ok(SessionEnd::Evicted),
                cmd = inbound.message() => match cmd {
                    Ok(Some(c)) => {
                        if let Some(c) = c.command {
                            self.on_command(c, &send)?;
                        }
                    }
                    Ok(None) | Err(_) => return Ok(SessionEnd::Reconnect),
                },
                Some(ev) = self.events.recv() => self.on_event(ev, &send)?,
                _ = handle.fetch_origin.notified() => {
                    if !self.shared.complete() {
                        tracing::info!("a scheduler asks this seed to read the origin");
                        self.start_origin();
                    }
                }
                _ = flush.tick() => self.flush(&send),
                _ = watchdog.tick() => {
                    if self.shared.complete() {
                        continue;
                    }
                    let idle = self.last_progress.elapsed();
                    if !self.origin_running && idle >= ctx.opts.back_to_source_after {
                        tracing::info!(?idle, "no progress; asking to read the origin");
                        send(peer_message::Message::NeedParents(NeedParents { want_origin: true }));
                        self.last_progress = Instant::now();
                    } else if !self.origin_running && self.parents.len() < ctx.opts.want_parents
                        && last_ask.elapsed() >= ctx.opts.parent_refresh {
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
                self.check_complete();
                if self.shared.complete() && !self.finished_sent {
                    self.flush(send);
                    send(peer_message::Message::Finished(Finished {}));
                    self.finished_sent = true;
                }
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
            peer_command::Command::Wait(_) => {
                tracing::debug!("waiting for a seed to fetch from origin")
            }
            peer_command::Command::BackToSource(_) => {
                tracing::info!("scheduler sends this peer to origin");
                self.start_origin();
            }
            peer_command::Command::TaskFailed(f) => {
                if !self.shared.complete() && !self.origin_running {
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
                if self.shared.complete() && !self.finished_sent {
                    self.flush(send);
                    send(peer_message::Message::Finished(Finished {}));
                    self.finished_sent = true;
                    self.check_complete();
                    tracing::info!("task complete");
                }
            }
            Event::ParentGone { parent, reason } => {
                self.parents.remove(&parent);
                if !self.shared.complete() {
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
                self.check_complete();
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

/// What the scheduler hears of content this daemon holds.
fn content_info(c: &Content) -> TaskInfo {
    ContentMeta { layout: *c.file.layout(), validators: c.validators.clone(), private: c.private }.info()
}
