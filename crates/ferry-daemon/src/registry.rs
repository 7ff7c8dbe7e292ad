//! Every task this daemon knows, by id: the download in progress or done, its content for
//! the piece server, and the progress local callers watch. Several local requests for one
//! task share one entry and so one download.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ferry_storage::TaskFile;
use ferry_transport::{Availability, TaskLookup};
use ferry_types::{FileDigest, TaskId};
use tokio::sync::watch;

use crate::counters::TaskCounters;
use crate::DaemonError;

/// What to download.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    pub digest: Option<FileDigest>,
}

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
}

pub struct TaskHandle {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub content: OnceLock<Content>,
    pub progress: watch::Sender<Progress>,
    pub counters: TaskCounters,
    /// A scheduler asked this (seed) daemon to read the origin for a task it already runs.
    pub fetch_origin: tokio::sync::Notify,
}

impl TaskHandle {
    pub fn new(id: TaskId, spec: TaskSpec) -> Self {
        Self {
            id,
            spec,
            content: OnceLock::new(),
            progress: watch::Sender::new(Progress::default()),
            counters: TaskCounters::default(),
            fetch_origin: tokio::sync::Notify::new(),
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.progress.borrow().outcome, Some(Err(_)))
    }
}

#[derive(Default)]
pub struct Registry {
    tasks: Mutex<HashMap<TaskId, Arc<TaskHandle>>>,
}

impl Registry {
    /// The live entry for the task, or a new one (returned with `true`) when there is none or
    /// the last attempt failed.
    pub fn get_or_insert(&self, id: TaskId, spec: TaskSpec) -> (Arc<TaskHandle>, bool) {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        if let Some(h) = tasks.get(&id) {
            if !h.failed() {
                return (h.clone(), false);
            }
        }
        let h = Arc::new(TaskHandle::new(id, spec));
        tasks.insert(id, h.clone());
        (h, true)
    }

    pub fn all(&self) -> Vec<Arc<TaskHandle>> {
        self.tasks.lock().expect("not poisoned").values().cloned().collect()
    }
}

impl TaskLookup for Registry {
    fn lookup(&self, task: &TaskId) -> Option<(Arc<TaskFile>, Arc<Availability>)> {
        let h = self.tasks.lock().expect("not poisoned").get(task)?.clone();
        let c = h.content.get()?;
        Some((c.file.clone(), c.avail.clone()))
    }
}
