//! The local API, served on the daemon's Unix socket.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::daemon::daemon_server::Daemon;
use ferry_proto::daemon::{DownloadProgress, DownloadRequest, StatsRequest, StatsResponse, TaskStats};
use ferry_types::{FileDigest, TaskId, TaskIdInput};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::counters::Counters;
use crate::output;
use crate::registry::{Progress, TaskSpec};
use crate::run::Ctx;
use crate::DaemonError;

pub struct Api {
    pub ctx: Arc<Ctx>,
}

fn bad(msg: String) -> Status {
    DaemonError::BadRequest(msg).to_status()
}

/// Validates a request into what the task needs, and its id.
fn parse(req: &DownloadRequest) -> Result<(TaskId, TaskSpec, PathBuf), Status> {
    let url = url::Url::parse(&req.url).map_err(|e| bad(format!("malformed URL `{}`: {e}", req.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "unsupported URL scheme `{}`: Ferry can fetch http:// and https:// URLs",
            url.scheme()
        )));
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
    Ok((id, TaskSpec { url, headers, digest }, output))
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<DownloadProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Daemon for Api {
    type DownloadStream = ProgressStream;

    async fn download(&self, req: Request<DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let req = req.into_inner();
        let (id, spec, output) = parse(&req)?;
        let span = tracing::info_span!("download", task = ?id, url = %spec.url);
        let handle = self.ctx.start_task(id, spec, false, self.ctx.opts.piece_size.unwrap_or(0));
        let (tx, rx) = mpsc::channel(16);
        let timeout = (req.timeout_millis > 0).then(|| Duration::from_millis(req.timeout_millis));
        tokio::spawn(
            async move {
                let mut watch = handle.progress.subscribe();
                let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
                let to_msg = |p: &Progress, done: bool| DownloadProgress {
                    task_id: id.to_string(),
                    content_length: p.content_length,
                    completed_bytes: p.completed_bytes,
                    done,
                    bytes_from_peers: Counters::get(&handle.counters.from_peers),
                    bytes_from_origin: Counters::get(&handle.counters.from_origin),
                    bytes_from_cache: Counters::get(&handle.counters.from_cache),
                };
                let outcome = loop {
                    let p = watch.borrow_and_update().clone();
                    if let Some(o) = p.outcome.clone() {
                        break o.map(|_| p);
                    }
                    if tx.send(Ok(to_msg(&p, false))).await.is_err() {
                        return;
                    }
                    let wait = async {
                        match deadline {
                            Some(d) => tokio::time::timeout_at(d, watch.changed()).await.ok(),
                            None => Some(watch.changed().await),
                        }
                    };
                    match wait.await {
                        Some(Ok(())) => {}
                        Some(Err(_)) => break Err(Arc::new(DaemonError::ShuttingDown)),
                        None => break Err(Arc::new(DaemonError::Timeout(timeout.unwrap_or_default()))),
                    }
                };
                let result = match outcome {
                    Ok(p) => {
                        let content = handle.content.get().map(|c| c.file.path().to_owned());
                        let digest = handle.spec.digest.clone();
                        let landed = tokio::task::spawn_blocking(move || {
                            let content = content.expect("a finished task has content");
                            if let Some(d) = &digest {
                                output::verify_digest(&content, d)?;
                            }
                            output::land(&content, &output)
                        })
                        .await
                        .expect("landing does not panic");
                        landed.map(|_| to_msg(&p, true)).map_err(|e| e.to_status())
                    }
                    Err(e) => Err(e.to_status()),
                };
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
        let c = &self.ctx.counters;
        let tasks = self
            .ctx
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
        Ok(Response::new(StatsResponse {
            host_id: self.ctx.opts.host_id.to_string(),
            bytes_from_origin: Counters::get(&c.bytes_from_origin),
            bytes_from_peers: Counters::get(&c.bytes_from_peers),
            bytes_from_cache: Counters::get(&c.bytes_from_cache),
            bytes_uploaded: self.ctx.server_stats.bytes_uploaded.load(std::sync::atomic::Ordering::Relaxed),
            pieces_from_origin: Counters::get(&c.pieces_from_origin),
            pieces_from_peers: Counters::get(&c.pieces_from_peers),
            pieces_resumed: Counters::get(&c.pieces_resumed),
            pieces_rejected: Counters::get(&c.pieces_rejected),
            tasks,
        }))
    }
}
