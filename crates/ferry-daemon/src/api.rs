//! The local API, served on the daemon's Unix socket.
//!
//! A download is one caller's request. Before it is handed any byte, from peers or from the
//! local cache, it must be entitled to them: a request that carries credentials proves them
//! against the origin before it joins the task, and a request for a private task (one first
//! read with credentials) proves its access before its output is written. A failure that
//! came from another request's way to the origin (its token, its URL) is not this request's:
//! it starts over with its own.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::daemon::daemon_server::Daemon;
use ferry_proto::daemon::{
    CacheImportRequest, CacheImportResponse, CacheRemoveRequest, CacheRemoveResponse, CacheStatRequest,
    CacheStatResponse, DownloadProgress, DownloadRequest, PreheatImageRequest, PreheatImageResponse, PreheatedBlob,
    StatsRequest, StatsResponse, TaskStats,
};
use ferry_storage::PieceStore;
use ferry_types::{FileDigest, OriginRequest, PieceDigest, TaskId, TaskIdInput, Validators};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::counters::Counters;
use crate::ctx::Ctx;
use crate::output;
use crate::registry::{Progress, TaskHandle};
use crate::DaemonError;

pub struct Api {
    pub ctx: Arc<Ctx>,
}

fn bad(msg: String) -> Status {
    DaemonError::BadRequest(msg).to_status()
}

/// Validates a request into what the task needs, and its id.
fn parse(req: &DownloadRequest) -> Result<(TaskId, OriginRequest, PathBuf), Status> {
    let url = url::Url::parse(&req.url).map_err(|e| bad(format!("malformed URL `{}`: {e}", req.url)))?;
    if url.scheme() == ferry_types::CACHE_SCHEME {
        let named = ferry_types::cache_digest(&url).ok_or_else(|| bad(format!("`{}` names no digest", req.url)))?;
        if req.digest != named.to_string() {
            return Err(bad(format!("`{}` must be asked for with its digest {named}", req.url)));
        }
    } else if !matches!(url.scheme(), "http" | "https") && !ferry_backend::object::is_object_scheme(url.scheme()) {
        return Err(bad(ferry_backend::BackendError::UnsupportedScheme(url.scheme().to_owned()).to_string()));
    }
    if ferry_backend::object::is_object_scheme(url.scheme()) {
        ferry_backend::object::ObjectUrl::parse(&url).map_err(|e| bad(e.to_string()))?;
    }
    let digest: Option<FileDigest> = match req.digest.as_str() {
        "" => None,
        d => Some(d.parse().map_err(|e: ferry_types::ParseError| bad(e.to_string()))?),
    };
    let output = PathBuf::from(&req.output);
    output::check_output(&output).map_err(|e| e.to_status())?;
    let id = TaskId::derive(&TaskIdInput {
        url: Some(&url),
        digest: digest.as_ref(),
        tag: &req.tag,
        application: &req.application,
        filtered_query_params: &req.filtered_query_params,
    });
    let headers = req.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    let request =
        OriginRequest::new(url, headers, digest, req.filtered_query_params.clone()).map_err(|e| bad(e.to_string()))?;
    Ok((id, request, output))
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<DownloadProgress, Status>> + Send>>;

/// One local download from request to landed output.
struct Download {
    ctx: Arc<Ctx>,
    id: TaskId,
    request: OriginRequest,
    output: PathBuf,
    link: bool,
    deadline: Option<tokio::time::Instant>,
    timeout: Duration,
    tx: mpsc::Sender<Result<DownloadProgress, Status>>,
    /// What the origin told this request when it proved its access.
    authorized: Option<Validators>,
    /// The output, written while pieces arrive (not with `--link`).
    sink: Option<Arc<output::OutputSink>>,
}

fn progress_message(id: TaskId, handle: &TaskHandle, p: &Progress, done: bool) -> DownloadProgress {
    DownloadProgress {
        task_id: id.to_string(),
        content_length: p.content_length,
        completed_bytes: p.completed_bytes,
        done,
        bytes_from_peers: Counters::get(&handle.counters.from_peers),
        bytes_from_origin: Counters::get(&handle.counters.from_origin),
        bytes_from_cache: Counters::get(&handle.counters.from_cache),
    }
}

impl Download {
    async fn run(mut self) -> Result<DownloadProgress, DaemonError> {
        if self.request.credentialed() || self.ctx.env.opts.always_authorize {
            let v = self.ctx.authorize(&self.request).await?;
            // Asked anyway: join the task of the content the origin serves now.
            if self.request.digest().is_none() {
                self.id = self.id.at_version(&v);
            }
            self.authorized = Some(v);
        }
        let mut restarts = 0;
        loop {
            let piece_size = self.ctx.env.opts.piece_size.unwrap_or(0);
            let handle = self.ctx.start_task(self.id, self.request.clone(), false, piece_size);
            self.sink = None;
            let result = match self.wait(&handle).await {
                Ok(p) => self.land(&handle).await.map(|_| progress_message(self.id, &handle, &p, true)),
                Err(e) => Err(e),
            };
            let retry = match &result {
                Err(e) if restarts < crate::ctx::MAX_RESTARTS => crate::ctx::not_its_own(e, &handle, &self.request),
                _ => false,
            };
            if !retry {
                return result.map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|e| clone_error(&e)));
            }
            restarts += 1;
            tracing::info!("the task failed under another request; starting over with this one");
        }
    }

    /// Streams progress until the task has an outcome or this request's deadline passes.
    async fn wait(&mut self, handle: &Arc<TaskHandle>) -> Result<Progress, Arc<DaemonError>> {
        let mut watch = handle.progress.subscribe();
        loop {
            let p = watch.borrow_and_update().clone();
            if let Some(o) = p.outcome.clone() {
                return o.map(|_| p);
            }
            self.open_sink(handle);
            if self.tx.send(Ok(progress_message(self.id, handle, &p, false))).await.is_err() {
                return Err(Arc::new(DaemonError::Cancelled));
            }
            let changed = match self.deadline {
                Some(d) => tokio::time::timeout_at(d, watch.changed()).await.ok(),
                None => Some(watch.changed().await),
            };
            match changed {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err(Arc::new(DaemonError::ShuttingDown)),
                None => return Err(Arc::new(DaemonError::Timeout(self.timeout))),
            }
        }
    }

    /// Starts writing the output alongside the download once the layout is known, unless
    /// the output is a link, or the task is private and this request has not yet shown it
    /// may read it (its bytes must not reach the caller's directory before that).
    fn open_sink(&mut self, handle: &Arc<TaskHandle>) {
        let Some(content) = handle.content.get() else { return };
        let allowed = !content.private || self.authorized.as_ref().is_some_and(|v| v.same_content(&content.validators));
        if self.link || self.sink.is_some() || !allowed {
            return;
        }
        match output::OutputSink::create(&self.output, *content.file.layout(), Some(self.ctx.env.store.clone())) {
            Ok(sink) => {
                let sink = Arc::new(sink);
                handle.sinks.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&sink));
                self.sink = Some(sink);
            }
            // Landing will try again, and report it.
            Err(e) => tracing::debug!(error = %e, "cannot write the output alongside; copying at the end"),
        }
    }

    /// The gate and the output: a private task's bytes go only to a request that proved its
    /// access and sees the same content; a cache hit is checked against its piece digests.
    async fn land(&mut self, handle: &Arc<TaskHandle>) -> Result<(), Arc<DaemonError>> {
        let content = handle.content.get().ok_or_else(|| Arc::new(DaemonError::Restart))?;
        if content.private && self.authorized.is_none() {
            self.authorized = Some(self.ctx.authorize(&self.request).await.map_err(Arc::new)?);
        }
        if let Some(v) = &self.authorized {
            if !v.same_content(&content.validators) {
                return Err(Arc::new(DaemonError::OriginChanged(format!(
                    "this host holds {:?}, the origin now answers {:?}",
                    content.validators, v
                ))));
            }
        }
        let (ctx, id, handle2) = (self.ctx.clone(), self.id, handle.clone());
        let (output, link, digest) = (self.output.clone(), self.link, self.request.digest().cloned());
        let sink = self.sink.take();
        tokio::task::spawn_blocking(move || {
            let content = handle2.content.get().expect("checked above");
            // Bytes that came from this host's disk rather than from a verified transfer
            // just now (a repeated request, or a resume after a restart).
            if Counters::get(&handle2.counters.from_cache) > 0 {
                verify_cached(&ctx, id, &handle2, content)?;
            }
            let path = content.file.path();
            if let Some(d) = &digest {
                if let Err(e) = output::verify_digest(path, d) {
                    // Bytes that are not the digest's must not stay under its name.
                    forget(&ctx, &handle2);
                    return Err(e);
                }
            }
            match sink {
                Some(sink) => sink.land(path, &output),
                None => output::land(path, &output, link),
            }
        })
        .await
        .expect("landing does not panic")
        .map_err(Arc::new)
    }
}

/// A task completed before this request: its bytes are read back and checked against the
/// recorded piece digests before they are handed out (a cache file changed on disk, by
/// hand or by a failing disk, is refetched, never returned).
fn verify_cached(
    ctx: &Ctx,
    id: TaskId,
    handle: &Arc<TaskHandle>,
    content: &crate::registry::Content,
) -> Result<(), DaemonError> {
    let layout = *content.file.layout();
    let held = ctx.env.store.held(id, &layout)?;
    let ok = held.len() as u32 == layout.piece_count()
        && held.iter().all(|(i, d)| content.file.read_piece(*i).is_ok_and(|b| PieceDigest::of(&b) == *d));
    if ok {
        return Ok(());
    }
    tracing::warn!(task = ?id, "cached content does not match its piece digests; fetching it again");
    forget(ctx, handle);
    Err(DaemonError::Restart)
}

/// Drops a task from this host entirely.
fn forget(ctx: &Ctx, handle: &Arc<TaskHandle>) {
    handle.progress.send_modify(|p| p.outcome = Some(Err(Arc::new(DaemonError::Restart))));
    ctx.env.registry.remove(handle);
    if let Err(e) = ctx.env.store.remove_task(handle.id) {
        tracing::warn!(error = %e, "could not remove a task's content");
    }
}

/// A failure shared by several requests, as each one's own error.
fn clone_error(e: &DaemonError) -> DaemonError {
    match e {
        DaemonError::OriginRemote(f) => DaemonError::OriginRemote(f.clone()),
        DaemonError::Restart => DaemonError::Restart,
        DaemonError::Timeout(t) => DaemonError::Timeout(*t),
        DaemonError::ShuttingDown => DaemonError::ShuttingDown,
        DaemonError::Cancelled => DaemonError::Cancelled,
        other => DaemonError::OriginRemote(other.failure()),
    }
}

#[tonic::async_trait]
impl Daemon for Api {
    type DownloadStream = ProgressStream;

    async fn download(&self, req: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let req = req.into_inner();
        let (id, request, output) = parse(&req)?;
        let span = tracing::info_span!("download", task = ?id, url = %request.redacted_url());
        let (tx, rx) = mpsc::channel(16);
        let timeout = Duration::from_millis(req.timeout_millis);
        let download = Download {
            ctx: self.ctx.clone(),
            id,
            request,
            output,
            link: req.link,
            deadline: (req.timeout_millis > 0).then(|| tokio::time::Instant::now() + timeout),
            timeout,
            tx: tx.clone(),
            authorized: None,
            sink: None,
        };
        tokio::spawn(
            async move {
                let result = download.run().await.map_err(|e| e.to_status());
                if let Err(s) = &result {
                    tracing::warn!(status = %s.message(), "download failed");
                }
                let _ = tx.send(result).await;
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let c = &self.ctx.env.counters;
        let tasks = self
            .ctx
            .env
            .registry
            .all()
            .into_iter()
            .filter_map(|h| {
                let content = h.content.get()?;
                let layout = content.file.layout();
                Some(TaskStats {
                    task_id: h.id.to_string(),
                    content_length: layout.content_length(),
                    pieces_total: layout.piece_count(),
                    pieces_held: content.avail.held_count(),
                    complete: content.avail.is_complete(),
                })
            })
            .collect();
        let workers = self
            .ctx
            .workers
            .list()
            .into_iter()
            .map(|(name, status)| ferry_proto::daemon::WorkerInfo { name, status: status.to_string() })
            .collect();
        Ok(Response::new(StatsResponse {
            host_id: self.ctx.env.opts.host_id.to_string(),
            bytes_from_origin: Counters::get(&c.bytes_from_origin),
            bytes_from_peers: Counters::get(&c.bytes_from_peers),
            bytes_from_cache: Counters::get(&c.bytes_from_cache),
            bytes_uploaded: self.ctx.server_stats.bytes_uploaded.load(std::sync::atomic::Ordering::Relaxed),
            pieces_from_origin: Counters::get(&c.pieces_from_origin),
            pieces_from_peers: Counters::get(&c.pieces_from_peers),
            pieces_resumed: Counters::get(&c.pieces_resumed),
            pieces_rejected: Counters::get(&c.pieces_rejected),
            mirror_p2p: Counters::get(&c.mirror_p2p),
            mirror_passed_through: Counters::get(&c.mirror_passed_through),
            mirror_failed: Counters::get(&c.mirror_failed),
            tasks,
            workers,
        }))
    }

    async fn preheat_image(&self, req: Request<PreheatImageRequest>) -> Result<Response<PreheatImageResponse>, Status> {
        let req = req.into_inner();
        let image = crate::mirror::preheat::parse_reference(&req.reference, req.insecure).map_err(bad)?;
        let platform = if req.platform.is_empty() { "linux/amd64" } else { req.platform.as_str() };
        let headers: Vec<(String, String)> = req.headers.into_iter().map(|h| (h.name, h.value)).collect();
        let span = tracing::info_span!("preheat", reference = %req.reference, %platform);
        let blobs = crate::mirror::preheat::preheat_image(&self.ctx, &image, platform, &headers)
            .instrument(span)
            .await
            .map_err(|e| e.to_status())?;
        let blobs = blobs.into_iter().map(|(d, size)| PreheatedBlob { digest: d.to_string(), size }).collect();
        Ok(Response::new(PreheatImageResponse { blobs }))
    }

    async fn cache_import(&self, req: Request<CacheImportRequest>) -> Result<Response<CacheImportResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("cache_import", path = %req.path, replicas = req.replicas);
        let r = crate::cache::import(&self.ctx, req).instrument(span).await.map_err(|e| e.to_status())?;
        Ok(Response::new(r))
    }

    async fn cache_stat(&self, req: Request<CacheStatRequest>) -> Result<Response<CacheStatResponse>, Status> {
        let digest = crate::cache::parse_digest(&req.into_inner().digest).map_err(|e| e.to_status())?;
        let r = crate::cache::stat(&self.ctx, &digest).await.map_err(|e| e.to_status())?;
        Ok(Response::new(r))
    }

    async fn cache_remove(&self, req: Request<CacheRemoveRequest>) -> Result<Response<CacheRemoveResponse>, Status> {
        let digest = crate::cache::parse_digest(&req.into_inner().digest).map_err(|e| e.to_status())?;
        let span = tracing::info_span!("cache_remove", %digest);
        let hosts = crate::cache::remove(&self.ctx, &digest).instrument(span).await.map_err(|e| e.to_status())?;
        Ok(Response::new(CacheRemoveResponse { hosts }))
    }
}
