//! Wiring: storage, piece server, scheduler sessions and the local API, until cancelled.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_backend::HttpBackend;
use ferry_proto::daemon::daemon_server::DaemonServer;
use ferry_proto::scheduler::Host;
use ferry_storage::Store;
use ferry_transport::{serve, ServerOptions, ServerStats};
use ferry_types::TaskId;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::registry::{Registry, TaskHandle, TaskSpec};
use crate::schedulers::Schedulers;
use crate::{DaemonError, DaemonOptions};

/// What every part of a running daemon shares.
pub struct Ctx {
    pub opts: DaemonOptions,
    pub store: Arc<Store>,
    pub counters: Counters,
    pub server_stats: Arc<ServerStats>,
    pub registry: Arc<Registry>,
    pub schedulers: Arc<Schedulers>,
    pub backend: HttpBackend,
    pub host_info: Arc<dyn Fn() -> Host + Send + Sync>,
    pub cancel: CancellationToken,
}

impl Ctx {
    /// The task's shared download, started if it is not running.
    pub fn start_task(
        self: &Arc<Self>,
        id: TaskId,
        spec: TaskSpec,
        from_origin: bool,
        piece_size: u32,
    ) -> Arc<TaskHandle> {
        let (handle, new) = self.registry.get_or_insert(id, spec);
        if new {
            tokio::spawn(crate::task::drive(self.clone(), handle.clone(), from_origin, piece_size));
        } else if matches!(handle.progress.borrow().outcome, Some(Ok(()))) {
            let len = handle.progress.borrow().content_length;
            Counters::add(&self.counters.bytes_from_cache, len);
            Counters::add(&handle.counters.from_cache, len);
        }
        handle
    }
}

/// Runs the daemon until `cancel` fires. `ready` receives the piece server's address once
/// everything listens.
pub async fn run(
    opts: DaemonOptions,
    cancel: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), DaemonError> {
    let store = Arc::new(Store::open(&opts.data_dir)?);
    let piece_addr = SocketAddr::new(opts.listen_ip, opts.piece_port);
    let listener = ferry_transport::server::bind(piece_addr).await.map_err(|e| DaemonError::Bind {
        what: "piece server",
        addr: piece_addr.to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let bound = listener.local_addr().map_err(|source| DaemonError::Bind {
        what: "piece server",
        addr: piece_addr.to_string(),
        source,
    })?;
    let uds = bind_socket(&opts.socket).await?;
    let schedulers = Arc::new(Schedulers::new(&opts.schedulers).map_err(DaemonError::NoScheduler)?);
    let server_stats = Arc::new(ServerStats::default());
    let registry = Arc::new(Registry::default());

    let host_info: Arc<dyn Fn() -> Host + Send + Sync> = {
        let (opts, stats) = (opts.clone(), server_stats.clone());
        Arc::new(move || Host {
            id: opts.host_id.to_string(),
            ip: opts.advertise_ip.to_string(),
            piece_port: bound.port() as u32,
            zone: opts.zone.clone(),
            rack: opts.rack.clone(),
            upload_slots: opts.upload_slots,
            uploads_active: stats.connections_active.load(Ordering::Relaxed) as u32,
            seed: opts.seed,
        })
    };
    let ctx = Arc::new(Ctx {
        opts: opts.clone(),
        store,
        counters: Counters::default(),
        server_stats: server_stats.clone(),
        registry: registry.clone(),
        schedulers: schedulers.clone(),
        backend: HttpBackend::new(Duration::from_secs(10)),
        host_info: host_info.clone(),
        cancel: cancel.clone(),
    });

    tokio::spawn(serve(
        listener,
        registry,
        ServerOptions { corrupt_uploads: opts.corrupt_uploads, ..ServerOptions::default() },
        server_stats,
        cancel.clone(),
    ));
    let (fetch_tx, mut fetch_rx) = tokio::sync::mpsc::unbounded_channel();
    schedulers.spawn_sessions(host_info, fetch_tx, cancel.clone());
    schedulers.settle(Duration::from_secs(5)).await;
    {
        // A seed's orders from schedulers: fetch this task from origin.
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(f) = fetch_rx.recv().await {
                let (Some(id), Ok(url)) = (TaskId::from_slice(&f.task_id), url::Url::parse(&f.url)) else {
                    continue;
                };
                let headers = f.headers.into_iter().map(|h| (h.name, h.value)).collect();
                let piece_size = ctx.opts.piece_size.unwrap_or(f.piece_size);
                tracing::info!(task = ?id, %url, "fetching from origin for the scheduler");
                let handle = ctx.start_task(id, TaskSpec { url, headers, digest: None }, true, piece_size);
                // Already running as an ordinary download here (a local `get` on the seed host
                // came first): that download must now read the origin itself.
                handle.fetch_origin.notify_one();
            }
        });
    }
    tracing::info!(host = %opts.host_id, piece = %bound, socket = %opts.socket.display(), seed = opts.seed, "daemon ready");
    if let Some(r) = ready {
        let _ = r.send(bound);
    }
    let api = DaemonServer::new(crate::api::Api { ctx: ctx.clone() });
    let result = tonic::transport::Server::builder()
        .add_service(api)
        .serve_with_incoming_shutdown(UnixListenerStream::new(uds), cancel.cancelled())
        .await;
    let _ = std::fs::remove_file(&opts.socket);
    result.map_err(|e| DaemonError::Bind {
        what: "local API",
        addr: opts.socket.display().to_string(),
        source: std::io::Error::other(e),
    })
}

/// Binds the local API socket, refusing when another daemon answers on it and clearing a
/// stale socket file left by a crashed one.
async fn bind_socket(path: &std::path::Path) -> Result<UnixListener, DaemonError> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::AlreadyRunning(path.display().to_string()));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    UnixListener::bind(path).map_err(|source| DaemonError::Bind {
        what: "local API socket",
        addr: path.display().to_string(),
        source,
    })
}
