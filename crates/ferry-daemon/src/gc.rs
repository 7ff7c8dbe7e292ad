//! The cache collector: keeps what this daemon stores within bounds.
//!
//! A task leaves storage when it was not asked for within `--cache-ttl`, or, least recently
//! used first, while the cache is over `--cache-quota` or the data directory's filesystem is
//! fuller than `--disk-high-watermark` (then down to `--disk-low-watermark`). A task in use
//! is never taken: one still downloading, one a local request waits on or is landing, one a
//! child is pulling from. What storage forgets, the registry forgets too, and the scheduler
//! stops offering this host as its parent (a live task's session ends; a parked task is
//! named in the next keepalive's `dropped`). A pinned task (`ferry cache import --ttl`, and
//! its replicas) stays until its pin ends, then is an ordinary cached task. Content files of idle finished tasks are closed
//! ([`CacheGc::close_idle_files`]). Failed
//! tasks are removed where they fail (`task::fail_locally`), not here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_storage::{PieceStore, Store, StoredTask};
use ferry_types::TaskId;
use tokio_util::sync::CancellationToken;

use crate::registry::{Registry, TaskHandle};

#[derive(Clone, Debug)]
pub struct GcPolicy {
    /// Bytes the cache may hold; `None`: bounded by the watermarks alone.
    pub quota: Option<u64>,
    pub ttl: Duration,
    /// Fractions of the filesystem: above `high` used, collect down to `low`.
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub interval: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            quota: None,
            ttl: Duration::from_secs(24 * 3600),
            high_watermark: 0.9,
            low_watermark: 0.8,
            interval: Duration::from_secs(30),
        }
    }
}

/// What one pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub tasks: usize,
    pub bytes: u64,
}

pub struct CacheGc {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub policy: GcPolicy,
    /// Bytes the cache holds as of the last full pass, plus every task admitted since: lets
    /// [`CacheGc::admit`] skip listing every stored task when there is plainly room (with
    /// 10,000 tasks cached, a full pass per new task made adding them quadratic).
    held: std::sync::atomic::AtomicU64,
    /// No full pass has run yet: `held` means nothing.
    unknown: std::sync::atomic::AtomicBool,
    /// Tasks and bytes removed since the daemon started (`ferry_daemon_gc_removed_*`).
    pub removed_tasks: std::sync::atomic::AtomicU64,
    pub removed_bytes: std::sync::atomic::AtomicU64,
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl CacheGc {
    pub fn new(store: Arc<Store>, registry: Arc<Registry>, policy: GcPolicy) -> Self {
        Self {
            store,
            registry,
            policy,
            held: Default::default(),
            unknown: std::sync::atomic::AtomicBool::new(true),
            removed_tasks: Default::default(),
            removed_bytes: Default::default(),
        }
    }

    /// Makes room for a new task of `incoming` bytes: a full pass only when the quota or the
    /// high watermark could be crossed (expired tasks wait for the periodic pass).
    pub fn admit(&self, incoming: u64, now: u64) -> Collected {
        use std::sync::atomic::Ordering::Relaxed;
        let quota_ok =
            !self.unknown.load(Relaxed) && self.policy.quota.is_none_or(|q| self.held.load(Relaxed) + incoming <= q);
        let disk_ok = self
            .store
            .disk_space()
            .map_or(true, |d| (d.used() + incoming) as f64 <= self.policy.high_watermark * d.capacity() as f64);
        if quota_ok && disk_ok {
            self.held.fetch_add(incoming, Relaxed);
            return Collected::default();
        }
        self.collect(incoming, now)
    }

    /// One pass: expired tasks, then the quota and the watermarks with `incoming` more bytes
    /// about to be written (a task about to start), least recently used first.
    pub fn collect(&self, incoming: u64, now: u64) -> Collected {
        let stored = match self.store.tasks() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cache collector cannot list tasks");
                return Collected::default();
            }
        };
        let live: HashMap<TaskId, Arc<TaskHandle>> = self.registry.all().into_iter().map(|h| (h.id, h)).collect();
        let in_use = |t: &StoredTask| live.get(&t.task).is_some_and(|h| busy(h));
        let pinned = |t: &StoredTask| t.pinned_until > now;
        let mut candidates: Vec<&StoredTask> = stored.iter().filter(|t| !in_use(t) && !pinned(t)).collect();
        candidates.sort_by_key(|t| t.last_used);
        let mut done = Collected::default();
        let ttl = self.policy.ttl.as_secs();
        let (expired, mut rest): (Vec<&StoredTask>, Vec<&StoredTask>) =
            candidates.into_iter().partition(|t| t.last_used.saturating_add(ttl) <= now);
        for t in expired {
            self.evict(t, &live, &mut done, "expired");
        }
        // Bytes the cache will hold: what is on disk, and in full for tasks still arriving.
        let size = |t: &StoredTask| if in_use(t) { t.disk_bytes.max(t.content_length) } else { t.disk_bytes };
        let mut held: u64 = stored.iter().map(size).sum::<u64>() - done.bytes;
        if let Some(quota) = self.policy.quota {
            while held + incoming > quota && !rest.is_empty() {
                let t = rest.remove(0);
                held -= t.disk_bytes;
                self.evict(t, &live, &mut done, "over quota");
            }
        }
        self.held.store(held + incoming, std::sync::atomic::Ordering::Relaxed);
        self.unknown.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Ok(space) = self.store.disk_space() {
            let total = space.capacity() as f64;
            let used = |freed: u64| space.used().saturating_sub(freed) + incoming;
            if used(done.bytes) as f64 > self.policy.high_watermark * total {
                while used(done.bytes) as f64 > self.policy.low_watermark * total && !rest.is_empty() {
                    let t = rest.remove(0);
                    self.evict(t, &live, &mut done, "disk above the high watermark");
                }
            }
        }
        done
    }

    fn evict(&self, t: &StoredTask, live: &HashMap<TaskId, Arc<TaskHandle>>, done: &mut Collected, why: &str) {
        if let Some(h) = live.get(&t.task) {
            self.registry.remove(h);
            h.evict.cancel();
        }
        match self.store.remove_task(t.task) {
            Ok(()) => {
                tracing::info!(task = ?t.task, bytes = t.disk_bytes, reason = why, "removed from the cache");
                self.removed_tasks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.removed_bytes.fetch_add(t.disk_bytes, std::sync::atomic::Ordering::Relaxed);
                done.tasks += 1;
                done.bytes += t.disk_bytes;
            }
            Err(e) => tracing::warn!(task = ?t.task, error = %e, "could not remove a task from the cache"),
        }
    }

    /// Removes one task now (`ferry cache rm`, a scheduler's drop order), in use or not:
    /// a child pulling from it sees its requests refused and moves on. Whether it was held.
    pub fn remove(&self, task: TaskId) -> bool {
        let live: HashMap<TaskId, Arc<TaskHandle>> =
            self.registry.all().into_iter().filter(|h| h.id == task).map(|h| (h.id, h)).collect();
        let record = self.store.task_record(task).unwrap_or_else(|e| {
            tracing::warn!(task = ?task, error = %e, "cannot read the task's record");
            None
        });
        if live.is_empty() && record.is_none() {
            return false;
        }
        let bytes = record.map_or(0, |r| r.content_length);
        let t = StoredTask { task, content_length: bytes, last_used: 0, disk_bytes: bytes, pinned_until: 0 };
        self.evict(&t, &live, &mut Collected::default(), "removed on request");
        true
    }

    /// Runs a pass every `policy.interval` until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.policy.interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let this = self.clone();
                    let c = tokio::task::spawn_blocking(move || this.collect(0, now_unix())).await.unwrap_or_default();
                    let closed = self.close_idle_files();
                    if closed > 0 {
                        tracing::debug!(files = closed, "closed content files of idle finished tasks");
                    }
                    if c.tasks > 0 {
                        tracing::info!(tasks = c.tasks, bytes = c.bytes, "cache collector pass");
                    }
                }
            }
        }
    }
}

impl CacheGc {
    /// Closes the content file of every finished task nobody is using: a descriptor per
    /// cached task would cap the cache at the open-file limit. The next use opens it again.
    pub fn close_idle_files(&self) -> usize {
        let idle = self.registry.all().into_iter().filter(|h| h.succeeded() && !busy(h));
        idle.filter(|h| h.content.get().is_some_and(|c| c.file.close_if_idle())).count()
    }
}

/// A task someone depends on right now.
fn busy(h: &TaskHandle) -> bool {
    let p = h.progress.borrow();
    let downloading = p.outcome.is_none();
    drop(p);
    let children = h.content.get().map_or(0, |c| c.avail.children());
    downloading || h.progress.receiver_count() > 0 || children > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_storage::TaskRecord;
    use ferry_types::{PieceDigest, PieceLayout};

    fn task(n: u8) -> TaskId {
        TaskId([n; 32])
    }

    /// A store with three complete 1 MiB tasks used at t = 100, 200 and 300.
    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        for n in 1..=3u8 {
            let rec =
                TaskRecord { url: "u".into(), content_length: 1 << 20, piece_size: 1 << 20, ..Default::default() };
            let (file, _) = store.open_task(task(n), &rec).unwrap();
            let idx = PieceLayout::new(1 << 20, 1 << 20).unwrap().index(0).unwrap();
            file.write_piece(idx, &vec![n; 1 << 20]).unwrap();
            store.record_piece(task(n), idx, PieceDigest::of(&[n])).unwrap();
            store.touch(task(n), 100 * n as u64).unwrap();
        }
        (dir, store)
    }

    fn gc(store: &Arc<Store>, policy: GcPolicy) -> CacheGc {
        // Watermarks at 100 %: only the quota and the TTL decide here.
        let policy = GcPolicy { high_watermark: 1.0, low_watermark: 1.0, ..policy };
        CacheGc::new(store.clone(), Arc::default(), policy)
    }

    fn left(store: &Store) -> Vec<TaskId> {
        let mut t: Vec<TaskId> = store.tasks().unwrap().into_iter().map(|t| t.task).collect();
        t.sort_by_key(|t| t.0);
        t
    }

    #[test]
    fn expired_tasks_go() {
        let (_d, store) = store();
        let c = gc(&store, GcPolicy { ttl: Duration::from_secs(150), ..Default::default() }).collect(0, 360);
        assert_eq!(c.tasks, 2);
        assert_eq!(left(&store), vec![task(3)]);
    }

    #[test]
    fn a_pinned_task_stays_until_its_pin_ends() {
        let (_d, store) = store();
        store.pin(task(1), &ferry_storage::Pin { until: 1_000, digest: "sha256:00".into() }).unwrap();
        let g = gc(&store, GcPolicy { ttl: Duration::from_secs(150), quota: Some(1 << 20), ..Default::default() });
        g.collect(0, 500);
        assert_eq!(left(&store), vec![task(1)], "expired and over the quota, but pinned");
        g.collect(0, 1_000);
        assert!(left(&store).is_empty(), "the pin ended: an ordinary, long expired task");
    }

    #[test]
    fn the_quota_takes_the_least_recently_used_first() {
        let (_d, store) = store();
        let g = gc(&store, GcPolicy { quota: Some(3 << 20), ..Default::default() });
        assert_eq!(g.collect(0, 400), Collected::default(), "within the quota");
        // Room for a 2 MiB task: the two oldest go.
        let c = g.collect(2 << 20, 400);
        assert_eq!((c.tasks, c.bytes), (2, 2 << 20));
        assert_eq!(left(&store), vec![task(3)]);
    }

    #[test]
    fn admitting_checks_the_quota_without_a_full_pass_until_it_could_be_crossed() {
        let (_d, store) = store();
        let g = gc(&store, GcPolicy { quota: Some(4 << 20), ..Default::default() });
        // The first admission lists the store: 3 MiB held + 1 MiB fits.
        assert_eq!(g.admit(1 << 20, 400), Collected::default());
        assert_eq!(left(&store).len(), 3);
        // The admitted task lands on disk as task 4.
        let rec = TaskRecord { url: "u".into(), content_length: 1 << 20, piece_size: 1 << 20, ..Default::default() };
        let (file, _) = store.open_task(task(4), &rec).unwrap();
        let idx = PieceLayout::new(1 << 20, 1 << 20).unwrap().index(0).unwrap();
        file.write_piece(idx, &vec![4; 1 << 20]).unwrap();
        store.touch(task(4), 400).unwrap();
        // The estimate is at the quota: the next one takes a full pass, and the oldest goes.
        let c = g.admit(1 << 20, 500);
        assert_eq!(c.tasks, 1);
        assert_eq!(left(&store), vec![task(2), task(3), task(4)]);
    }
}
