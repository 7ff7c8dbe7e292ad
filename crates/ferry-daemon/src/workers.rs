//! The daemon's background loops as named workers: each has a name, stops with the daemon's
//! cancel token, and has a status the local API reports (`Stats.workers`), so "is the cache
//! collector still running?" has an answer without reading logs.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerStatus {
    Running,
    /// Returned on its own (its input closed).
    Finished,
    /// Stopped because the daemon is stopping.
    Cancelled,
    /// Panicked; the message, if it had one.
    Failed(String),
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Running => f.write_str("running"),
            Self::Finished => f.write_str("finished"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

#[derive(Default)]
pub struct Workers {
    entries: Mutex<Vec<(String, Arc<Mutex<WorkerStatus>>)>>,
}

impl Workers {
    /// Runs `work` as a worker named `name` until it returns or `cancel` fires.
    pub fn spawn<F>(&self, name: impl Into<String>, cancel: CancellationToken, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let status = Arc::new(Mutex::new(WorkerStatus::Running));
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).push((name.clone(), status.clone()));
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => WorkerStatus::Cancelled,
                _ = work => WorkerStatus::Finished,
            }
        });
        tokio::spawn(async move {
            let end = match task.await {
                Ok(s) => s,
                Err(e) => {
                    let msg = e.try_into_panic().ok().and_then(|p| {
                        p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned())
                    });
                    WorkerStatus::Failed(msg.unwrap_or_else(|| "panicked".into()))
                }
            };
            if let WorkerStatus::Failed(m) = &end {
                tracing::error!(worker = %name, error = %m, "worker failed");
            }
            *status.lock().unwrap_or_else(|e| e.into_inner()) = end;
        });
    }

    /// Every worker with its status, in the order they started.
    pub fn list(&self) -> Vec<(String, WorkerStatus)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|(n, s)| (n.clone(), s.lock().unwrap_or_else(|e| e.into_inner()).clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn status_of(w: &Workers, name: &str, want: &WorkerStatus) {
        for _ in 0..200 {
            if w.list().iter().any(|(n, s)| n == name && s == want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{name} never became {want}: {:?}", w.list());
    }

    #[tokio::test]
    async fn reports_running_finished_cancelled_and_failed() {
        let w = Workers::default();
        let cancel = CancellationToken::new();
        w.spawn("forever", cancel.clone(), std::future::pending());
        w.spawn("done", cancel.clone(), async {});
        w.spawn("boom", cancel.clone(), async { panic!("out of cheese") });
        status_of(&w, "done", &WorkerStatus::Finished).await;
        status_of(&w, "boom", &WorkerStatus::Failed("out of cheese".into())).await;
        assert_eq!(w.list()[0], ("forever".into(), WorkerStatus::Running));
        cancel.cancel();
        status_of(&w, "forever", &WorkerStatus::Cancelled).await;
    }
}
