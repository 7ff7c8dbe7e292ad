//! The running daemon as the local API sees it: the tasks' environment plus what only the
//! API needs (piece-server statistics, the background workers, the authorization cache).

use std::sync::Arc;
use std::time::Duration;

use ferry_backend::Backends;
use ferry_transport::ServerStats;
use ferry_types::{OriginRequest, RequestKey, TaskId, Validators};

use crate::counters::Counters;
use crate::registry::TaskHandle;
use crate::task::env::TaskEnv;
use crate::DaemonError;

/// What every part of a running daemon shares.
pub struct Ctx {
    pub env: Arc<TaskEnv>,
    pub server_stats: Arc<ServerStats>,
    /// The background loops, with their status (`Stats.workers`).
    pub workers: Arc<crate::workers::Workers>,
    pub backend: Backends,
    /// The schedulers, for the calls that are not a task's session (`ferry cache`).
    pub schedulers: Arc<crate::schedulers::Schedulers>,
    /// Requests that proved their access to the origin lately, with what the origin said.
    authorized: std::sync::Mutex<std::collections::HashMap<RequestKey, (std::time::Instant, Validators)>>,
}

/// How often one request starts over after failures that were not its own.
pub const MAX_RESTARTS: usize = 3;

/// Whether `request`, which joined `handle`'s task, should start over after `e`: the task was
/// reset by another request's failure, or failed with another request's own error (its
/// credentials, say), which says nothing of this one.
pub fn not_its_own(e: &DaemonError, handle: &TaskHandle, request: &OriginRequest) -> bool {
    matches!(e, DaemonError::Restart) || (e.is_request_specific() && handle.request.key() != request.key())
}

/// How long a request's proven access is trusted before the origin is asked again.
const AUTHORIZED_TTL: Duration = Duration::from_secs(30);
/// Entries kept at most in the authorization cache.
const AUTHORIZED_MAX: usize = 4096;

impl Ctx {
    pub fn new(
        env: Arc<TaskEnv>,
        server_stats: Arc<ServerStats>,
        workers: Arc<crate::workers::Workers>,
        backend: Backends,
        schedulers: Arc<crate::schedulers::Schedulers>,
    ) -> Self {
        Self { env, server_stats, workers, backend, schedulers, authorized: Default::default() }
    }

    /// The task's shared download, started if it is not running.
    pub fn start_task(
        self: &Arc<Self>,
        id: TaskId,
        request: OriginRequest,
        from_origin: bool,
        piece_size: u32,
    ) -> Arc<TaskHandle> {
        let env = &self.env;
        let (handle, new) = env.registry.get_or_insert(id, request);
        if let Err(e) = env.store.touch(id, crate::gc::now_unix()) {
            tracing::debug!(error = %e, "could not record the task's use");
        }
        if new {
            // The task is part of the trace of the request that started it.
            let drive = crate::task::drive(env.clone(), handle.clone(), from_origin, piece_size);
            tokio::spawn(tracing::Instrument::in_current_span(drive));
        } else if matches!(handle.progress.borrow().outcome, Some(Ok(()))) {
            let len = handle.progress.borrow().content_length;
            Counters::add(&env.counters.bytes_from_cache, len);
            Counters::add(&handle.counters.from_cache, len);
        }
        handle
    }

    /// Asks the origin whether `request` may read its object (one small request, cached
    /// per request for [`AUTHORIZED_TTL`]) and returns the object's validators. The error
    /// is the origin's answer to this request alone.
    pub async fn authorize(&self, request: &OriginRequest) -> Result<Validators, DaemonError> {
        let key = request.key();
        let now = std::time::Instant::now();
        if let Some((at, v)) = self.authorized_cache().get(&key) {
            if now.duration_since(*at) < AUTHORIZED_TTL {
                return Ok(v.clone());
            }
        }
        let v = self.backend.check(request).await?;
        tracing::debug!(url = %request.redacted_url(), "request proved its access to the origin");
        let mut cache = self.authorized_cache();
        if cache.len() >= AUTHORIZED_MAX {
            cache.retain(|_, (at, _)| now.duration_since(*at) < AUTHORIZED_TTL);
        }
        if cache.len() < AUTHORIZED_MAX {
            cache.insert(key, (now, v.clone()));
        }
        Ok(v)
    }

    fn authorized_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<RequestKey, (std::time::Instant, Validators)>> {
        self.authorized.lock().unwrap_or_else(|e| e.into_inner())
    }
}
