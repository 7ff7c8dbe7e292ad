//! Every task this daemon knows, by id: the download in progress or done, its content for
//! the piece server, and the progress local callers watch. Several local requests for one
//! task share one entry and so one download.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ferry_storage::TaskFile;
use ferry_transport::{Availability, TaskLookup};
use ferry_types::{OriginRequest, TaskId, Validators};
use tokio::sync::watch;

use crate::counters::TaskCounters;
use crate::DaemonError;

#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub content_length: u64,
    pub completed_bytes: u64,
    /// Set once: the download finished (all pieces verified and stored) or failed.
    pub outcome: Option<Result<(), Arc<DaemonError>>>,
}

pub struct Content {
    pub file: Arc<TaskFile>,
    pub avail: Arc<Availability>,
    /// What the origin said of the content when the task was first read: requests that
    /// check their access must see the same.
    pub validators: Validators,
    /// First read with credentials: a request is handed bytes only after proving access.
    pub private: bool,
}

pub struct TaskHandle {
    pub id: TaskId,
    /// The request this daemon reads the origin with, if it comes to that: the first local
    /// request's, or a scheduler's order.
    pub request: OriginRequest,
    pub content: OnceLock<Content>,
    pub progress: watch::Sender<Progress>,
    pub counters: TaskCounters,
    /// A scheduler asked this (seed) daemon to read the origin for a task it already runs.
    pub fetch_origin: tokio::sync::Notify,
    /// Fired when nobody waits for the task any more (a scheduler's `CancelFetch`).
    pub cancel: tokio_util::sync::CancellationToken,
    /// Fired when the cache collector removed the task: its run ends and stops serving.
    pub evict: tokio_util::sync::CancellationToken,
    /// Outputs of local requests written as pieces arrive (see [`crate::output::OutputSink`]).
    pub sinks: Mutex<Vec<std::sync::Weak<crate::output::OutputSink>>>,
    /// Finished, its driver ended, and kept as a parent by this scheduler without a stream
    /// (`Park`): where, and in which of its host sessions.
    pub parked: Mutex<Option<ParkedAt>>,
}

/// The scheduler a finished task is parked with: its address and the generation of this
/// daemon's host session with it (a new session means a scheduler that may not know).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedAt {
    pub scheduler: String,
    pub generation: u64,
}

impl TaskHandle {
    pub fn new(id: TaskId, request: OriginRequest) -> Self {
        Self {
            id,
            request,
            content: OnceLock::new(),
            progress: watch::Sender::new(Progress::default()),
            counters: TaskCounters::default(),
            fetch_origin: tokio::sync::Notify::new(),
            cancel: tokio_util::sync::CancellationToken::new(),
            evict: tokio_util::sync::CancellationToken::new(),
            sinks: Mutex::new(vec![]),
            parked: Mutex::new(None),
        }
    }

    /// The outputs being written alongside, dropping those whose request ended.
    pub fn live_sinks(&self) -> Vec<Arc<crate::output::OutputSink>> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.retain(|w| w.strong_count() > 0);
        sinks.iter().filter_map(|w| w.upgrade()).collect()
    }

    pub fn parked_at(&self) -> Option<ParkedAt> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_parked(&self, at: Option<ParkedAt>) {
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    pub fn succeeded(&self) -> bool {
        matches!(self.progress.borrow().outcome, Some(Ok(())))
    }

    pub fn failed(&self) -> bool {
        matches!(self.progress.borrow().outcome, Some(Err(_)))
    }
}

#[derive(Default)]
pub struct Registry {
    tasks: Mutex<HashMap<TaskId, Arc<TaskHandle>>>,
    /// Parked tasks forgotten here, by the scheduler they were parked with: the next
    /// keepalive to it says so (`HostMessage.dropped`).
    dropped: Mutex<Vec<(String, TaskId)>>,
}

impl Registry {
    /// The live entry for the task, or a new one (returned with `true`) when there is none or
    /// the last attempt failed.
    pub fn get_or_insert(&self, id: TaskId, request: OriginRequest) -> (Arc<TaskHandle>, bool) {
        let mut tasks = self.lock();
        if let Some(h) = tasks.get(&id) {
            if !h.failed() {
                return (h.clone(), false);
            }
        }
        let h = Arc::new(TaskHandle::new(id, request));
        tasks.insert(id, h.clone());
        (h, true)
    }

    /// Forgets `handle` (a failed or collected task), unless a newer attempt already took
    /// its place.
    pub fn remove(&self, handle: &Arc<TaskHandle>) {
        let mut tasks = self.lock();
        if tasks.get(&handle.id).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            tasks.remove(&handle.id);
            if let Some(at) = handle.parked.lock().unwrap_or_else(|e| e.into_inner()).take() {
                self.dropped.lock().unwrap_or_else(|e| e.into_inner()).push((at.scheduler, handle.id));
            }
        }
    }

    /// The parked tasks forgotten here that `scheduler` must hear of, at most `max`.
    pub fn take_dropped(&self, scheduler: &str, max: usize) -> Vec<TaskId> {
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = vec![];
        dropped.retain(|(s, t)| {
            let take = s == scheduler && taken.len() < max;
            if take {
                taken.push(*t);
            }
            !take
        });
        taken
    }

    /// Forgets what `scheduler` was to hear: a new session with it starts from nothing parked.
    pub fn clear_dropped(&self, scheduler: &str) {
        self.dropped.lock().unwrap_or_else(|e| e.into_inner()).retain(|(s, _)| s != scheduler);
    }

    pub fn all(&self) -> Vec<Arc<TaskHandle>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<TaskHandle>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TaskLookup for Registry {
    /// A failed task is never served: what it holds may be the bytes it failed on.
    fn lookup(&self, task: &TaskId) -> Option<(Arc<TaskFile>, Arc<Availability>)> {
        let h = self.lock().get(task)?.clone();
        if h.failed() {
            return None;
        }
        let c = h.content.get()?;
        Some((c.file.clone(), c.avail.clone()))
    }
}
