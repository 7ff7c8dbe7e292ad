//! The disk store.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use ferry_types::{PieceDigest, PieceIndex, PieceLayout, TaskId};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// task id -> JSON [`TaskRecord`].
const TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tasks");
/// task id ++ piece index (BE) -> BLAKE3 digest of the verified piece.
const PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pieces");
/// task id -> when a request last asked for it (seconds since the Unix epoch).
const USED: TableDefinition<&[u8], u64> = TableDefinition::new("used");
/// task id -> JSON [`Pin`]: kept until then whatever the cache collector would do
/// (`ferry cache import --ttl`).
const PINS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pins");
/// Temporary output files being written (path -> nothing): removed at the next start if the
/// daemon died before landing them.
const OUTPUTS: TableDefinition<&str, ()> = TableDefinition::new("outputs");

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskRecord {
    /// Redacted: for an operator reading the database, never a way to the origin.
    pub url: String,
    pub content_length: u64,
    pub piece_size: u32,
    /// The origin's validators when the task was first read: they pin its content.
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
    /// First read with credentials: each request must prove its own access.
    #[serde(default)]
    pub private: bool,
}

/// A task this host keeps until `until` (Unix seconds): an imported file or a replica of one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    pub until: u64,
    /// The task's whole-file digest (`sha256:<hex>`), which names it: what the daemon
    /// registers the task with again after a restart.
    pub digest: String,
}

/// Pieces already verified on disk, with their digests.
pub type HeldPieces = Vec<(PieceIndex, PieceDigest)>;

/// One task as storage knows it, for the collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTask {
    pub task: TaskId,
    pub content_length: u64,
    /// When a request last asked for it (Unix seconds; 0 when never recorded).
    pub last_used: u64,
    /// What its content file takes on disk (allocated blocks; a partial file takes less).
    pub disk_bytes: u64,
    /// Kept until then (Unix seconds) whatever the collector would do; 0: not pinned.
    pub pinned_until: u64,
}

/// The filesystem under the data directory.
#[derive(Clone, Copy, Debug)]
pub struct DiskSpace {
    pub total: u64,
    /// Free blocks, those reserved for root included.
    pub free: u64,
    /// What an unprivileged writer may still take.
    pub available: u64,
}

impl DiskSpace {
    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }

    /// What the disk can hold as `df` counts it: used plus available. Blocks reserved for
    /// root are not capacity: on a filesystem with a large reserve, `total` would make a
    /// full disk look 10 % emptier than it is (or a half-empty one look full).
    pub fn capacity(&self) -> u64 {
        self.used() + self.available
    }
}

/// The piece-store seam: what the daemon needs from wherever pieces live.
pub trait PieceStore: Send + Sync + 'static {
    /// Opens (creating if needed) the task's content and returns the pieces already held.
    fn open_task(&self, task: TaskId, record: &TaskRecord) -> Result<(Arc<TaskFile>, HeldPieces), StorageError>;
    fn record_piece(&self, task: TaskId, index: PieceIndex, digest: PieceDigest) -> Result<(), StorageError>;
    fn task_record(&self, task: TaskId) -> Result<Option<TaskRecord>, StorageError>;
    /// The pieces recorded as verified, with their digests.
    fn held(&self, task: TaskId, layout: &PieceLayout) -> Result<HeldPieces, StorageError>;
    /// Forgets the task: its record, its pieces and its content file.
    fn remove_task(&self, task: TaskId) -> Result<(), StorageError>;
}

pub struct Store {
    root: PathBuf,
    /// `None` only between a failed reopen and the next attempt.
    db: RwLock<Option<Database>>,
    /// An I/O error (a full disk) hit the database: redb refuses every later transaction
    /// until it is opened again, which the next use does.
    poisoned: AtomicBool,
}

/// The open database, for one operation.
struct Db<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked when taken")
    }
}

/// A task's content file; piece reads and writes are positional, so many may run at once.
///
/// The descriptor is opened on first use and closed by [`TaskFile::close_if_idle`] (the
/// daemon does so for finished tasks nobody is reading), so a daemon holding 10,000 finished
/// tasks does not hold 10,000 descriptors.
pub struct TaskFile {
    task: TaskId,
    path: PathBuf,
    file: std::sync::Mutex<Option<Arc<File>>>,
    layout: PieceLayout,
}

fn open_database(root: &Path) -> Result<Database, StorageError> {
    let path = root.join("meta.redb");
    let db = Database::create(&path)
        .map_err(|e| StorageError::OpenDatabase { path: path.display().to_string(), source: Box::new(e) })?;
    let tx = db.begin_write()?;
    tx.open_table(TASKS)?;
    tx.open_table(PIECES)?;
    tx.open_table(USED)?;
    tx.open_table(PINS)?;
    tx.open_table(OUTPUTS)?;
    tx.commit()?;
    Ok(db)
}

fn piece_key(task: TaskId, index: PieceIndex) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(&task.0);
    k[32..].copy_from_slice(&index.get().to_be_bytes());
    k
}

impl Store {
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        let content = root.join("content");
        std::fs::create_dir_all(&content)
            .map_err(|source| StorageError::CreateDir { path: content.display().to_string(), source })?;
        let db = open_database(root)?;
        Ok(Self { root: root.to_owned(), db: RwLock::new(Some(db)), poisoned: AtomicBool::new(false) })
    }

    fn db(&self) -> Result<Db<'_>, StorageError> {
        if self.poisoned.swap(false, Ordering::Relaxed) {
            let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
            // The old handle holds the file lock: drop it before opening again.
            *slot = None;
            match open_database(&self.root) {
                Ok(db) => {
                    tracing::info!("metadata database reopened after an I/O error");
                    *slot = Some(db);
                }
                Err(e) => {
                    self.poisoned.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            self.poisoned.store(true, Ordering::Relaxed);
            return Err(StorageError::Database("the metadata database is not open".into()));
        }
        Ok(Db(guard))
    }

    fn write_tx(&self) -> Result<redb::WriteTransaction, StorageError> {
        self.note(self.db()?.begin_write().map_err(StorageError::from))
    }

    fn read_tx(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.note(self.db()?.begin_read().map_err(StorageError::from))
    }

    fn commit(&self, tx: redb::WriteTransaction) -> Result<(), StorageError> {
        self.note(tx.commit().map_err(StorageError::from))
    }

    /// Passes `r` on, remembering when it was an I/O error of the database.
    fn note<T>(&self, r: Result<T, StorageError>) -> Result<T, StorageError> {
        if matches!(r, Err(StorageError::DatabaseIo { .. })) {
            self.poisoned.store(true, Ordering::Relaxed);
        }
        r
    }

    /// Records that a request asked for the task now (what least-recently-used means).
    pub fn touch(&self, task: TaskId, now_unix: u64) -> Result<(), StorageError> {
        let mut tx = self.write_tx()?;
        tx.set_durability(Durability::Eventual);
        tx.open_table(USED)?.insert(&task.0[..], now_unix)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Notes that a temporary output file is being written at `path`.
    pub fn output_started(&self, path: &Path) -> Result<(), StorageError> {
        let mut tx = self.write_tx()?;
        tx.set_durability(Durability::Eventual);
        tx.open_table(OUTPUTS)?.insert(path.to_string_lossy().as_ref(), ())?;
        self.commit(tx)?;
        Ok(())
    }

    /// The temporary output at `path` was landed or removed.
    pub fn output_ended(&self, path: &Path) -> Result<(), StorageError> {
        let mut tx = self.write_tx()?;
        tx.set_durability(Durability::Eventual);
        tx.open_table(OUTPUTS)?.remove(path.to_string_lossy().as_ref())?;
        self.commit(tx)?;
        Ok(())
    }

    /// Removes the temporary outputs a previous run left behind (it died before landing
    /// them) and forgets them; returns how many there were.
    pub fn remove_stale_outputs(&self) -> Result<usize, StorageError> {
        let tx = self.write_tx()?;
        let mut n = 0;
        {
            let mut table = tx.open_table(OUTPUTS)?;
            let paths: Vec<String> = table.iter()?.filter_map(|e| e.ok().map(|(k, _)| k.value().to_owned())).collect();
            for p in &paths {
                let _ = std::fs::remove_file(p);
                table.remove(p.as_str())?;
                n += 1;
            }
        }
        self.commit(tx)?;
        Ok(n)
    }

    /// Every task with a record, its last use and its size on disk.
    pub fn tasks(&self) -> Result<Vec<StoredTask>, StorageError> {
        use std::os::unix::fs::MetadataExt;
        let tx = self.read_tx()?;
        let (tasks, used) = (tx.open_table(TASKS)?, tx.open_table(USED)?);
        let pins: std::collections::HashMap<TaskId, u64> =
            self.pins()?.into_iter().map(|(t, p)| (t, p.until)).collect();
        let mut out = vec![];
        for entry in tasks.iter()? {
            let (k, v) = entry?;
            let Some(task) = TaskId::from_slice(k.value()) else { continue };
            let content_length = serde_json::from_slice::<TaskRecord>(v.value()).map_or(0, |r| r.content_length);
            let last_used = used.get(k.value())?.map_or(0, |u| u.value());
            let disk_bytes = std::fs::metadata(self.content_path(task)).map_or(0, |m| m.blocks() * 512);
            let pinned_until = pins.get(&task).copied().unwrap_or(0);
            out.push(StoredTask { task, content_length, last_used, disk_bytes, pinned_until });
        }
        Ok(out)
    }

    /// Keeps `task` until `pin.until` whatever the collector would do (a later pin replaces
    /// an earlier one).
    pub fn pin(&self, task: TaskId, pin: &Pin) -> Result<(), StorageError> {
        let tx = self.write_tx()?;
        {
            let json = serde_json::to_vec(pin).expect("a pin serializes");
            tx.open_table(PINS)?.insert(&task.0[..], &json[..])?;
        }
        self.commit(tx)
    }

    pub fn pinned(&self, task: TaskId) -> Result<Option<Pin>, StorageError> {
        let tx = self.read_tx()?;
        let table = tx.open_table(PINS)?;
        let Some(v) = table.get(&task.0[..])? else { return Ok(None) };
        Ok(serde_json::from_slice(v.value()).ok())
    }

    /// Every pinned task (expired pins included: the collector ends them).
    pub fn pins(&self) -> Result<Vec<(TaskId, Pin)>, StorageError> {
        let tx = self.read_tx()?;
        let table = tx.open_table(PINS)?;
        let mut out = vec![];
        for entry in table.iter()? {
            let (k, v) = entry?;
            if let (Some(task), Ok(pin)) = (TaskId::from_slice(k.value()), serde_json::from_slice(v.value())) {
                out.push((task, pin));
            }
        }
        Ok(out)
    }

    /// Size and free space of the filesystem holding the data directory.
    pub fn disk_space(&self) -> std::io::Result<DiskSpace> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let frsize = st.f_frsize as u64;
        let (total, free, available) =
            (st.f_blocks as u64 * frsize, st.f_bfree as u64 * frsize, st.f_bavail as u64 * frsize);
        Ok(DiskSpace { total, free, available })
    }

    fn content_path(&self, task: TaskId) -> PathBuf {
        self.root.join("content").join(task.to_string())
    }

    fn held_pieces(&self, task: TaskId, layout: &PieceLayout) -> Result<HeldPieces, StorageError> {
        let tx = self.read_tx()?;
        let table = tx.open_table(PIECES)?;
        let mut lo = [0u8; 36];
        lo[..32].copy_from_slice(&task.0);
        let mut hi = lo;
        hi[32..].copy_from_slice(&[0xff; 4]);
        let mut out = vec![];
        for entry in table.range(&lo[..]..=&hi[..])? {
            let (k, v) = entry?;
            let index = u32::from_be_bytes(k.value()[32..36].try_into().expect("key is 36 bytes"));
            let (Ok(index), Some(digest)) = (layout.index(index), PieceDigest::from_slice(v.value())) else {
                continue;
            };
            out.push((index, digest));
        }
        Ok(out)
    }
}

impl PieceStore for Store {
    fn open_task(&self, task: TaskId, record: &TaskRecord) -> Result<(Arc<TaskFile>, HeldPieces), StorageError> {
        let layout = PieceLayout::new(record.content_length, record.piece_size)
            .map_err(|e| StorageError::DecodeRecord { task, reason: e.to_string() })?;
        let held = match self.task_record(task)? {
            Some(old) if old.content_length == record.content_length && old.piece_size == record.piece_size => {
                self.held_pieces(task, &layout)?
            }
            Some(old) => {
                return Err(StorageError::LayoutMismatch {
                    task,
                    stored: old.content_length,
                    stored_piece: old.piece_size,
                    asked: record.content_length,
                    asked_piece: record.piece_size,
                })
            }
            None => {
                let tx = self.write_tx()?;
                {
                    let json = serde_json::to_vec(record).expect("record serializes");
                    tx.open_table(TASKS)?.insert(&task.0[..], &json[..])?;
                }
                self.commit(tx)?;
                vec![]
            }
        };
        let path = self.content_path(task);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|f| f.set_len(record.content_length).map(|_| f))
            .map_err(|source| StorageError::OpenContent { task, source })?;
        tracing::debug!(?task, held = held.len(), "opened task content");
        let file = std::sync::Mutex::new(Some(Arc::new(file)));
        Ok((Arc::new(TaskFile { task, path, file, layout }), held))
    }

    fn record_piece(&self, task: TaskId, index: PieceIndex, digest: PieceDigest) -> Result<(), StorageError> {
        let mut tx = self.write_tx()?;
        // Eventual: written to the file without fsync; survives a killed process, which is
        // the failure resume must handle. A lost record after power loss costs one refetch.
        tx.set_durability(Durability::Eventual);
        tx.open_table(PIECES)?.insert(&piece_key(task, index)[..], &digest.0[..])?;
        self.commit(tx)?;
        Ok(())
    }

    fn held(&self, task: TaskId, layout: &PieceLayout) -> Result<HeldPieces, StorageError> {
        self.held_pieces(task, layout)
    }

    fn remove_task(&self, task: TaskId) -> Result<(), StorageError> {
        self.remove_records(task)?;
        match std::fs::remove_file(self.content_path(task)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::RemoveContent { task, source: e }),
            _ => Ok(()),
        }
    }

    fn task_record(&self, task: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        let tx = self.read_tx()?;
        let table = tx.open_table(TASKS)?;
        let Some(v) = table.get(&task.0[..])? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StorageError::DecodeRecord { task, reason: e.to_string() })
    }
}

impl Store {
    fn remove_records(&self, task: TaskId) -> Result<(), StorageError> {
        let tx = self.write_tx()?;
        {
            tx.open_table(TASKS)?.remove(&task.0[..])?;
            tx.open_table(USED)?.remove(&task.0[..])?;
            tx.open_table(PINS)?.remove(&task.0[..])?;
            let mut pieces = tx.open_table(PIECES)?;
            let mut lo = [0u8; 36];
            lo[..32].copy_from_slice(&task.0);
            let mut hi = lo;
            hi[32..].copy_from_slice(&[0xff; 4]);
            pieces.retain_in(&lo[..]..=&hi[..], |_, _| false)?;
        }
        self.commit(tx)?;
        Ok(())
    }
}

impl TaskFile {
    pub fn layout(&self) -> &PieceLayout {
        &self.layout
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, opened again if it was closed while idle.
    pub fn file(&self) -> Result<Arc<File>, StorageError> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map(Arc::new)
            .map_err(|source| StorageError::OpenContent { task: self.task, source })?;
        *slot = Some(f.clone());
        Ok(f)
    }

    /// Closes the descriptor if no read or write holds it now; the next use opens it again.
    /// True when it was closed.
    pub fn close_if_idle(&self) -> bool {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|f| Arc::strong_count(f) == 1) {
            *slot = None;
            return true;
        }
        false
    }

    pub fn write_piece(&self, index: PieceIndex, bytes: &[u8]) -> Result<(), StorageError> {
        debug_assert_eq!(bytes.len(), self.layout.len(index) as usize);
        self.file()?.write_all_at(bytes, self.layout.offset(index)).map_err(|source| StorageError::WritePiece {
            task: self.task,
            index: index.get(),
            source,
        })
    }

    /// Writes part of piece `index`, `at` an absolute offset inside it (a piece written in
    /// slices as it is hashed).
    pub fn write_slice(&self, index: PieceIndex, at: u64, bytes: &[u8]) -> Result<(), StorageError> {
        debug_assert!(at >= self.layout.offset(index));
        debug_assert!(at + bytes.len() as u64 <= self.layout.offset(index) + self.layout.len(index) as u64);
        self.file()?.write_all_at(bytes, at).map_err(|source| StorageError::WritePiece {
            task: self.task,
            index: index.get(),
            source,
        })
    }

    pub fn read_piece(&self, index: PieceIndex) -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0u8; self.layout.len(index) as usize];
        self.file()?.read_exact_at(&mut buf, self.layout.offset(index)).map_err(|source| StorageError::ReadPiece {
            task: self.task,
            index: index.get(),
            source,
        })?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: u64) -> TaskRecord {
        TaskRecord { url: "http://o/f".into(), content_length: len, piece_size: 16 * 1024, ..Default::default() }
    }

    #[test]
    fn a_removed_task_is_gone_and_can_start_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (TaskId([1; 32]), TaskId([2; 32]));
        let (fa, _) = store.open_task(a, &record(40_000)).unwrap();
        let (fb, _) = store.open_task(b, &record(40_000)).unwrap();
        for (t, f) in [(a, &fa), (b, &fb)] {
            store.record_piece(t, f.layout().index(1).unwrap(), PieceDigest::of(b"x")).unwrap();
        }
        let path = fa.path().to_owned();
        store.remove_task(a).unwrap();
        assert!(!path.exists());
        assert_eq!(store.task_record(a).unwrap(), None);
        assert_eq!(store.open_task(a, &record(30_000)).unwrap().1.len(), 0, "a new layout, no old pieces");
        assert_eq!(store.open_task(b, &record(40_000)).unwrap().1.len(), 1, "the other task is untouched");
    }

    #[test]
    fn a_pin_is_listed_with_its_task_and_leaves_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (TaskId([1; 32]), TaskId([2; 32]));
        store.open_task(a, &record(20_000)).unwrap();
        store.open_task(b, &record(20_000)).unwrap();
        let pin = Pin { until: 1_000, digest: "sha256:00".into() };
        store.pin(a, &pin).unwrap();
        let pinned = |store: &Store, t| store.tasks().unwrap().iter().find(|s| s.task == t).map(|s| s.pinned_until);
        assert_eq!(pinned(&store, a), Some(1_000));
        assert_eq!(pinned(&store, b), Some(0));
        assert_eq!(store.pinned(a).unwrap(), Some(pin));
        store.remove_task(a).unwrap();
        assert_eq!(store.pinned(a).unwrap(), None);
        assert!(store.pins().unwrap().is_empty());
    }

    #[test]
    fn recorded_pieces_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let task = TaskId([3; 32]);
        let rec = record(40_000);
        {
            let store = Store::open(dir.path()).unwrap();
            let (file, held) = store.open_task(task, &rec).unwrap();
            assert!(held.is_empty());
            let idx = file.layout().index(2).unwrap();
            let bytes = vec![9u8; file.layout().len(idx) as usize];
            file.write_piece(idx, &bytes).unwrap();
            store.record_piece(task, idx, PieceDigest::of(&bytes)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (file, held) = store.open_task(task, &rec).unwrap();
        assert_eq!(held.len(), 1);
        let (idx, digest) = held[0];
        assert_eq!(idx.get(), 2);
        let bytes = file.read_piece(idx).unwrap();
        assert_eq!(bytes.len(), 40_000 - 32 * 1024);
        assert_eq!(PieceDigest::of(&bytes), digest);
    }

    #[test]
    fn pieces_of_other_tasks_are_not_mixed_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (TaskId([1; 32]), TaskId([2; 32]));
        let (fa, _) = store.open_task(a, &record(20_000)).unwrap();
        store.open_task(b, &record(20_000)).unwrap();
        store.record_piece(a, fa.layout().index(0).unwrap(), PieceDigest::of(b"x")).unwrap();
        assert_eq!(store.open_task(b, &record(20_000)).unwrap().1.len(), 0);
    }

    #[test]
    fn layout_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let task = TaskId([1; 32]);
        store.open_task(task, &record(20_000)).unwrap();
        assert!(matches!(store.open_task(task, &record(30_000)), Err(StorageError::LayoutMismatch { .. })));
    }
}
