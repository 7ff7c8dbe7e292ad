//! The collector: drops hosts that stopped sending keepalives and tasks nobody holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::state::State;

pub struct GcWorker {
    pub state: Arc<Mutex<State>>,
    pub host_ttl: Duration,
    pub task_ttl: Duration,
}

impl GcWorker {
    /// One pass; returns (hosts, tasks) collected.
    pub fn work(&self, now: Instant) -> (usize, usize) {
        let mut st = crate::state::lock(&self.state);
        let hosts_before = st.hosts.len();
        st.hosts.retain(|_, h| now.duration_since(h.last_seen) < self.host_ttl);
        let tasks_before = st.tasks.len();
        st.tasks.retain(|_, t| !t.peers.is_empty() || now.duration_since(t.last_active) < self.task_ttl);
        (hosts_before - st.hosts.len(), tasks_before - st.tasks.len())
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let (h, t) = self.work(Instant::now());
                    if h + t > 0 {
                        tracing::info!(hosts = h, tasks = t, "collected silent hosts and idle tasks");
                    }
                }
            }
        }
    }
}
