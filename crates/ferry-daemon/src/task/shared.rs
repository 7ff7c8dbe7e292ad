//! What a task's driver and its piece workers share: the piece picker, the digest list,
//! the scheduler's liveness, and the path by which a verified piece lands in storage
//! ([`Shared::store_piece`] for pieces from parents, [`Shared::accept`] for every piece).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_policy::PiecePicker;
use ferry_proto::scheduler::{FailReason, TaskInfo};
use ferry_storage::{PieceStore, TaskRecord};
use ferry_transport::Availability;
use ferry_types::{HostId, PieceDigest, PieceLayout, Validators};
use tokio::sync::{mpsc, watch};

use super::env::TaskEnv;
use crate::counters::Counters;
use crate::registry::{Content, TaskHandle};
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
        /// The worker's number (see `TaskRun::parents`).
        worker: u64,
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

    pub(crate) fn from_record(r: &TaskRecord) -> Option<Self> {
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
    pub env: Arc<TaskEnv>,
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
    /// Boxed: the channel allocates 32 slots at a time and lives as long as the task.
    events: mpsc::UnboundedSender<Box<Event>>,
}

impl Shared {
    pub fn new(env: Arc<TaskEnv>, handle: Arc<TaskHandle>, events: mpsc::UnboundedSender<Box<Event>>) -> Self {
        Self {
            env,
            handle,
            picker: Mutex::new(None),
            digests: Mutex::new(HashMap::new()),
            scheduler_up: Default::default(),
            peer_holders: Mutex::new(vec![]),
            changed: watch::Sender::new(0),
            events,
        }
    }

    /// Tells the driver; dropped when it has ended.
    pub fn emit(&self, ev: Event) {
        let _ = self.events.send(Box::new(ev));
    }

    pub fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn layout(&self) -> Option<PieceLayout> {
        self.handle.content.get().map(|c| *c.file.layout())
    }

    /// Opens storage for the content (once) and seeds the picker with pieces already held.
    pub fn init_content(&self, meta: ContentMeta) -> Result<(), DaemonError> {
        if self.picker.lock().expect("not poisoned").is_some() {
            let existing = self.layout().expect("a picker has a layout");
            if existing != meta.layout {
                tracing::warn!(?existing, layout = ?meta.layout, "peers disagree on the task layout; keeping ours");
            }
            return Ok(());
        }
        if let Some(c) = self.handle.content.get() {
            self.adopt(c);
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
        if self.env.store.task_record(self.handle.id)?.is_none() {
            // A new task: make room for it first, so a bounded cache stays bounded.
            self.env.gc.admit(layout.content_length(), crate::gc::now_unix());
        }
        let (file, held) = self.env.store.open_task(self.handle.id, &record)?;
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
        let avail = Arc::new(Availability::new(layout.piece_count(), self.env.opts.seed));
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
            Counters::add(&self.env.counters.pieces_resumed, held.len() as u64);
            Counters::add(&self.env.counters.bytes_from_cache, resumed_bytes);
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

    /// A new driver for content already open here (a parked task registering again): the
    /// picker and digests start from what the content holds.
    fn adopt(&self, c: &Content) {
        let n = c.avail.piece_count();
        let mut picker = PiecePicker::new(n);
        let mut digests = self.digests.lock().expect("not poisoned");
        for i in (0..n).filter(|i| c.avail.has(*i)) {
            if let Some(d) = c.avail.digest(i) {
                digests.insert(i, PieceDigest(d));
            }
            picker.mark_done(i);
            picker.set_verifiable(i);
        }
        drop(digests);
        *self.picker.lock().expect("not poisoned") = Some(picker);
        *self.peer_holders.lock().expect("not poisoned") = vec![0; n as usize];
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

    /// What a seed parent may be asked for by index now (see [`ferry_policy::seed_only_mask`]),
    /// and the earliest moment another piece comes due.
    pub fn seed_mask(&self, has: &[bool], since: &mut [Option<Instant>]) -> (Vec<bool>, Option<Instant>) {
        let h = self.peer_holders.lock().expect("not poisoned");
        let opts = &self.env.opts;
        ferry_policy::seed_only_mask(has, &h, since, Instant::now(), opts.seed_grace, opts.host_id.as_str())
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
        // Every byte a parent sent, kept or not (a duplicate, a bad piece): what the wire carried.
        Counters::add(&self.env.counters.bytes_received_from_peers, bytes.len() as u64);
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
        let Some(known) = self.digest_of(index, claimed, self.env.opts.piece_timeout).await else {
            return Ok(Stored::Skipped);
        };
        let (file, store, task) = (content.file.clone(), self.env.store.clone(), self.handle.id);
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
            Counters::add(&self.env.counters.pieces_rejected, 1);
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
        let c = &self.env.counters;
        match &source {
            Source::Origin => {
                Counters::add(&c.bytes_from_origin, len as u64);
                Counters::add(&c.pieces_from_origin, 1);
                Counters::add(&self.handle.counters.from_origin, len as u64);
            }
            Source::Parent { cost, .. } => {
                c.piece_seconds.observe(cost.as_secs_f64());
                Counters::add(&c.bytes_from_peers, len as u64);
                Counters::add(&c.pieces_from_peers, 1);
                Counters::add(&self.handle.counters.from_peers, len as u64);
            }
        }
        self.handle.progress.send_modify(|p| p.completed_bytes += len as u64);
        let origin_digest = matches!(source, Source::Origin).then_some(digest);
        self.emit(Event::Stored { index, len, source, digest: origin_digest });
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
