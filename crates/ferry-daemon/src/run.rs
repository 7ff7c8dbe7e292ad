//! Wiring: storage, piece server, scheduler sessions and the local API, until cancelled.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_backend::{Backends, HttpOptions};
use ferry_proto::daemon::daemon_server::DaemonServer;
use ferry_proto::scheduler::Host;
use ferry_proto::scheduler::{host_command, FetchFromOrigin};
use ferry_storage::Store;
use ferry_transport::{serve, ServerOptions, ServerStats};
use ferry_types::{FileDigest, OriginRequest, TaskId, TaskIdInput};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::ctx::Ctx;
use crate::registry::Registry;
use crate::schedulers::Schedulers;
use crate::task::env::{Origins, TaskEnv, TcpParents};
use crate::{DaemonError, DaemonOptions};

/// Where a started daemon listens.
#[derive(Clone, Debug)]
pub struct Ready {
    pub pieces: SocketAddr,
    pub mirror: Option<SocketAddr>,
    /// The CA certificate the mirror's proxy clients must trust, if it serves as a proxy.
    pub proxy_ca: Option<std::path::PathBuf>,
    /// Prometheus metrics (`/metrics`) and health (`/livez`, `/readyz`).
    pub metrics: Option<SocketAddr>,
    pub health: Option<SocketAddr>,
}

/// Runs the daemon until `cancel` fires. `ready` receives the piece server's address once
/// everything listens.
pub async fn run(
    opts: DaemonOptions,
    cancel: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> Result<(), DaemonError> {
    raise_fd_limit();
    let mut opts = opts;
    // The daemon's own upload rate; with a manager, a limiter the cluster's settings may set.
    let own_upload_rate = opts.upload_limit.as_ref().map(|l| l.bytes_per_second());
    if !opts.managers.is_empty() && opts.upload_limit.is_none() {
        opts.upload_limit = Some(Arc::new(ferry_transport::RateLimit::unlimited()));
    }
    let store = open_store(&opts)?;
    let (listener, bound) = bind_pieces(&opts).await?;
    let uds = bind_socket(&opts.socket).await?;
    let Some(membership) = crate::membership::join(&opts, &cancel).await? else { return Ok(()) };
    let schedulers = Schedulers::new(&opts.schedulers, !opts.managers.is_empty(), membership.client.clone());
    let schedulers = Arc::new(schedulers.map_err(DaemonError::NoScheduler)?);
    let server_stats = Arc::new(ServerStats::default());
    let registry = Arc::new(Registry::default());

    let workers = Arc::new(crate::workers::Workers::default());
    let gc = Arc::new(crate::gc::CacheGc::new(store.clone(), registry.clone(), opts.gc.clone()));
    workers.spawn("cache-collector", cancel.clone(), gc.clone().run(cancel.clone()));
    let route_to = if opts.schedulers.is_empty() { opts.managers.clone() } else { opts.schedulers.clone() };
    let advertise = crate::advertise::choose(opts.advertise_ip, opts.listen_ip, &route_to).await;
    let host_info = host_info(&opts, advertise, bound, server_stats.clone());
    let manager = ask_manager(&opts, &schedulers, advertise, bound, own_upload_rate).await?;
    let backend = Backends::new(&HttpOptions {
        ca_certs: opts.ca_certs.clone(),
        insecure_hosts: opts.insecure_origins.clone(),
        object_store: opts.object_store.clone(),
        ..Default::default()
    })?;
    let env = Arc::new(TaskEnv {
        opts: opts.clone(),
        store,
        counters: Counters::default(),
        registry: registry.clone(),
        gc: gc.clone(),
        host_info: host_info.clone(),
        cancel: cancel.clone(),
        scheduler: schedulers.clone(),
        parents: Arc::new(TcpParents { tls: membership.client.clone() }),
        origin: Arc::new(Origins(backend.clone())),
    });
    let ctx = Arc::new(Ctx::new(env, server_stats.clone(), workers.clone(), backend, schedulers.clone()));
    if let Some(renewal) = membership.renewal {
        workers.spawn("certificate-renewal", cancel.clone(), renewal.run(cancel.clone()));
    }

    let server = piece_server(&opts, listener, registry.clone(), membership.server.clone(), server_stats, &cancel);
    workers.spawn("piece-server", cancel.clone(), server);
    let (orders_tx, orders_rx) = tokio::sync::mpsc::unbounded_channel();
    schedulers.spawn_sessions(host_info, orders_tx, registry.clone(), workers.clone(), cancel.clone());
    if let Some((link, request)) = manager {
        let upload = (opts.upload_limit.clone(), own_upload_rate);
        let follow = link.follow(schedulers.clone(), upload, request, opts.manager_refresh, cancel.clone());
        workers.spawn("manager-follower", cancel.clone(), follow);
    }
    warn_if_silent(&schedulers).await;
    spawn_order_workers(&ctx, &schedulers, orders_rx, &cancel);
    crate::cache::announce_pinned(&ctx);
    let (mirror, proxy_ca) = start_mirror(&ctx, &opts, &cancel).await?;
    let (metrics, health) = start_telemetry(&ctx, &opts, &cancel).await?;
    tracing::info!(host = %opts.host_id, piece = %bound, %advertise, socket = %opts.socket.display(), seed = opts.seed, mirror = ?mirror, proxy = proxy_ca.is_some(), "daemon ready");
    if let Some(r) = ready {
        let _ = r.send(Ready { pieces: bound, mirror, proxy_ca, metrics, health });
    }
    serve_local_api(ctx, &opts.socket, uds, &cancel).await
}

/// The piece server on `listener`: over mutual TLS with `tls` (membership), else plain TCP.
fn piece_server(
    opts: &DaemonOptions,
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stats: Arc<ServerStats>,
    cancel: &CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let server_opts = ServerOptions {
        #[cfg(feature = "fault-injection")]
        corrupt_uploads: opts.corrupt_uploads,
        upload_limit: opts.upload_limit.clone(),
        tls,
        ..ServerOptions::default()
    };
    serve(listener, registry, server_opts, stats, cancel.clone())
}

/// Serves the local API on its socket until `cancel`, then removes the socket.
async fn serve_local_api(
    ctx: Arc<Ctx>,
    socket: &std::path::Path,
    uds: UnixListener,
    cancel: &CancellationToken,
) -> Result<(), DaemonError> {
    let api = DaemonServer::new(crate::api::Api { ctx });
    let result = tonic::transport::Server::builder()
        .add_service(api)
        .serve_with_incoming_shutdown(UnixListenerStream::new(uds), cancel.cancelled())
        .await;
    let _ = std::fs::remove_file(socket);
    result.map_err(|e| DaemonError::Bind {
        what: "local API",
        addr: socket.display().to_string(),
        source: std::io::Error::other(e),
    })
}

/// Serves metrics and health where configured; returns where they listen.
async fn start_telemetry(
    ctx: &Arc<Ctx>,
    opts: &DaemonOptions,
    cancel: &CancellationToken,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), DaemonError> {
    let bind =
        |what: &'static str, addr: SocketAddr| move |source| DaemonError::Bind { what, addr: addr.to_string(), source };
    let mut out = (None, None);
    if let Some(addr) = opts.metrics_listen {
        let endpoints =
            ferry_telemetry::Endpoints { metrics: Some(Arc::new(crate::metrics::registry(ctx))), ..Default::default() };
        out.0 = Some(ferry_telemetry::serve(addr, endpoints, cancel.clone()).await.map_err(bind("metrics", addr))?);
    }
    if let Some(addr) = opts.health_listen {
        let endpoints =
            ferry_telemetry::Endpoints { ready: Some(crate::metrics::readiness(ctx)), ..Default::default() };
        out.1 = Some(ferry_telemetry::serve(addr, endpoints, cancel.clone()).await.map_err(bind("health", addr))?);
    }
    Ok(out)
}

/// Binds and serves the registry mirror (and proxy), if configured; returns where it
/// listens and the proxy's CA certificate.
async fn start_mirror(
    ctx: &Arc<Ctx>,
    opts: &DaemonOptions,
    cancel: &CancellationToken,
) -> Result<(Option<SocketAddr>, Option<std::path::PathBuf>), DaemonError> {
    let Some(m) = &opts.mirror else { return Ok((None, None)) };
    let (listener, addr) = crate::mirror::bind(m.listen).await?;
    let (ca, serve) = crate::mirror::start(listener, ctx.clone(), m.clone(), cancel.clone())?;
    ctx.workers.spawn("registry-mirror", cancel.clone(), serve);
    Ok((Some(addr), ca))
}

/// The store, cleared of the temporary outputs a previous run left behind.
fn open_store(opts: &DaemonOptions) -> Result<Arc<Store>, DaemonError> {
    let store = Arc::new(Store::open(&opts.data_dir)?);
    match store.remove_stale_outputs() {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed temporary outputs a previous run left behind"),
        Err(e) => tracing::warn!(error = %e, "could not clear temporary outputs of a previous run"),
    }
    Ok(store)
}

/// With `--manager`: asks it once for this host's schedulers (bounded, so a manager that is
/// down does not stop the daemon) and returns the link to keep asking over.
async fn ask_manager(
    opts: &DaemonOptions,
    schedulers: &Schedulers,
    advertise: std::net::IpAddr,
    bound: SocketAddr,
    own_upload_rate: Option<u64>,
) -> Result<Option<(crate::manager::ManagerLink, ListRequest)>, DaemonError> {
    if opts.managers.is_empty() {
        return Ok(None);
    }
    let mut link = crate::manager::ManagerLink::new(&opts.managers)?;
    let o = opts.clone();
    let request: ListRequest = Arc::new(move || ferry_proto::manager::ListSchedulersRequest {
        host_id: o.host_id.to_string(),
        hostname: o.hostname.clone(),
        ip: advertise.to_string(),
        zone: o.zone.clone(),
        idc: o.idc.clone(),
        location: o.location.clone(),
        seed: o.seed,
        piece_port: u32::from(bound.port()),
    });
    match tokio::time::timeout(Duration::from_secs(5), link.ask(request())).await {
        Ok(Ok(resp)) => {
            link.apply(schedulers, &resp);
            link.apply_upload_rate(opts.upload_limit.as_deref(), own_upload_rate, &resp);
        }
        Ok(Err(s)) => {
            tracing::warn!(error = %s.message(), "no manager named this host's schedulers; asking again later")
        }
        Err(_) => tracing::warn!("no manager answers; asking again later"),
    }
    Ok(Some((link, request)))
}

type ListRequest = Arc<dyn Fn() -> ferry_proto::manager::ListSchedulersRequest + Send + Sync>;

/// Waits (bounded) for a first answer from every scheduler and says which are silent.
async fn warn_if_silent(schedulers: &Schedulers) {
    let silent = schedulers.settle(Duration::from_secs(5)).await;
    if schedulers.count() == 0 {
        tracing::warn!("no scheduler yet: downloads wait until the manager names one");
    } else if silent.len() == schedulers.count() {
        tracing::warn!(
            schedulers = %silent.join(","),
            "no scheduler answers: downloads will wait for one and fail with 'no scheduler' if none comes; \
             check --scheduler and that a `ferry scheduler` runs there"
        );
    } else if !silent.is_empty() {
        tracing::warn!(schedulers = %silent.join(","), "some schedulers do not answer; using the others");
    }
}

/// The workers that act on what schedulers say and do: a seed's orders (fetch this task
/// from origin, stop fetching it), and parked tasks following the schedulers (one whose
/// owner changed, or whose owner restarted, registers again).
fn spawn_order_workers(
    ctx: &Arc<Ctx>,
    schedulers: &Arc<Schedulers>,
    mut orders: tokio::sync::mpsc::UnboundedReceiver<crate::schedulers::Order>,
    cancel: &CancellationToken,
) {
    let (c, s) = (ctx.clone(), schedulers.clone());
    ctx.workers.spawn("reannounce-parked", cancel.clone(), async move {
        let mut topology = s.topology();
        while topology.changed().await.is_ok() {
            reannounce_parked(&c, &s);
        }
    });
    let c = ctx.clone();
    ctx.workers.spawn("scheduler-orders", cancel.clone(), async move {
        while let Some((from, order)) = orders.recv().await {
            on_order(&c, from, order);
        }
    });
}

/// Lifts the soft limit on open files to the hard one: every connection and every cached
/// task holds a descriptor, and the usual soft default of 1,024 would cap a daemon at about
/// a thousand tasks or peers.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a properly initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(from = soft, to = lim.rlim_max, "raised the open-file limit");
            }
        }
    }
}

async fn bind_pieces(opts: &DaemonOptions) -> Result<(tokio::net::TcpListener, SocketAddr), DaemonError> {
    let addr = SocketAddr::new(opts.listen_ip, opts.piece_port);
    let bind_err = |source| DaemonError::Bind { what: "piece server", addr: addr.to_string(), source };
    let listener = ferry_transport::server::bind(addr).await.map_err(|e| bind_err(std::io::Error::other(e)))?;
    let bound = listener.local_addr().map_err(bind_err)?;
    Ok((listener, bound))
}

/// What this host tells schedulers about itself with every keepalive.
fn host_info(
    opts: &DaemonOptions,
    advertise: std::net::IpAddr,
    bound: SocketAddr,
    stats: Arc<ServerStats>,
) -> Arc<dyn Fn() -> Host + Send + Sync> {
    let opts = opts.clone();
    Arc::new(move || Host {
        id: opts.host_id.to_string(),
        ip: advertise.to_string(),
        piece_port: bound.port() as u32,
        zone: opts.zone.clone(),
        rack: opts.rack.clone(),
        upload_slots: opts.upload_slots,
        uploads_active: stats.connections_active.load(Ordering::Relaxed) as u32,
        seed: opts.seed,
        hostname: opts.hostname.clone(),
    })
}

/// Registers again every parked task whose owner is no longer the scheduler (or the
/// session) it parked with.
fn reannounce_parked(ctx: &Arc<Ctx>, schedulers: &Schedulers) {
    let mut moved = 0;
    for handle in ctx.env.registry.all() {
        let Some(at) = handle.parked_at() else { continue };
        if schedulers.owner(&handle.id) != at {
            handle.set_parked(None);
            tokio::spawn(crate::task::drive(ctx.env.clone(), handle, false, 0));
            moved += 1;
        }
    }
    if moved > 0 {
        tracing::info!(tasks = moved, "schedulers changed: registering parked tasks again");
    }
}

/// A scheduler's order to this host (fetch, cancel and replicate go to seeds).
fn on_order(ctx: &Arc<Ctx>, from: String, order: host_command::Command) {
    match order {
        host_command::Command::Preheat(p) => crate::preheat::on_order(ctx, from, p),
        host_command::Command::Fetch(f) => fetch_order(ctx, f),
        host_command::Command::Cancel(c) => {
            let Some(id) = TaskId::from_slice(&c.task_id) else { return };
            if let Some(h) = ctx.env.registry.all().into_iter().find(|h| h.id == id) {
                h.cancel.cancel();
            }
        }
        host_command::Command::Replicate(r) => crate::cache::replicate_order(ctx, r),
        host_command::Command::Drop(d) => {
            let Some(id) = TaskId::from_slice(&d.task_id) else { return };
            let gc = ctx.env.gc.clone();
            tokio::task::spawn_blocking(move || {
                if gc.remove(id) {
                    tracing::info!(task = ?id, "dropped on the scheduler's order");
                }
            });
        }
    }
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

/// A scheduler asks this seed to read a task from origin with one peer's request. The order
/// is checked like any wire input: a request the local API would refuse, or a digest that
/// does not name the task, is dropped.
fn fetch_order(ctx: &Arc<Ctx>, f: FetchFromOrigin) {
    let Some(id) = TaskId::from_slice(&f.task_id) else { return };
    let parsed = (|| {
        let url = url::Url::parse(&f.url).ok()?;
        let digest = match f.digest.as_str() {
            "" => None,
            d => Some(d.parse::<FileDigest>().ok()?),
        };
        let headers = f.headers.into_iter().map(|h| (h.name, h.value)).collect();
        OriginRequest::new(url, headers, digest, vec![]).ok()
    })();
    let Some(request) = parsed else {
        tracing::warn!(task = ?id, "dropping a malformed fetch order");
        return;
    };
    if let Some(d) = request.digest() {
        if TaskId::derive(&TaskIdInput { digest: Some(d), ..Default::default() }) != id {
            tracing::warn!(task = ?id, "dropping a fetch order whose digest does not name its task");
            return;
        }
    }
    let piece_size = ctx.env.opts.piece_size.unwrap_or(f.piece_size);
    tracing::info!(task = ?id, url = %request.redacted_url(), "fetching from origin for the scheduler");
    let handle = ctx.start_task(id, request, true, piece_size);
    // Already running as an ordinary download here (a local `get` on the seed host came
    // first): that download must now read the origin itself.
    handle.fetch_origin.notify_one();
}
