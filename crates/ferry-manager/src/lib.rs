//! The manager: the cluster's control plane. It keeps, in SQL (an embedded SQLite file by
//! default, PostgreSQL for several replicas), the scheduler clusters and the scopes of the
//! hosts they serve, the schedulers and seeds that keep alive with it, users and tokens, and
//! jobs (preheat, list a task's holders, delete a task) that it runs across clusters.
//!
//! Ferry runs without it (schedulers given by flags); with it, daemons ask which schedulers
//! serve them and follow changes, and registries such as Harbor start preheats through its
//! REST API (`/oapi/v1/jobs`).

pub mod api;
pub mod auth;
pub mod clusters;
pub mod db;
mod error;
pub mod grpc;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod runner;
pub mod search;
pub mod work;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use error::ManagerError;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// `sqlite://PATH` or `postgres://...`.
    pub database: String,
    pub rest_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// The root user's password at first start; `None`: generate one and print it once.
    pub root_password: Option<String>,
    /// How often schedulers and seeds keep alive; silent for three times that, inactive.
    pub keepalive_interval: Duration,
    /// Jobs this manager runs at once.
    pub job_workers: usize,
    /// How long a job's lease lasts without renewal (a dead manager's jobs wait this long).
    pub job_lease: Duration,
    /// Extra CA certificates for reaching registries.
    pub ca_certs: Vec<std::path::PathBuf>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            database: String::new(),
            rest_listen: ([0, 0, 0, 0], 8080).into(),
            grpc_listen: ([0, 0, 0, 0], 65003).into(),
            metrics_listen: None,
            root_password: None,
            keepalive_interval: Duration::from_secs(5),
            job_workers: 8,
            job_lease: Duration::from_secs(30),
            ca_certs: vec![],
        }
    }
}

/// A started manager: where it listens, and the handle that ends with it.
pub struct RunningManager {
    pub rest_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// The root password this start generated (first start, none given).
    pub generated_root_password: Option<String>,
    pub done: tokio::task::JoinHandle<()>,
}

/// Opens the database, binds the listeners and starts serving; stops on `cancel`.
pub async fn start(opts: ManagerOptions, cancel: CancellationToken) -> Result<RunningManager, ManagerError> {
    let db = db::Db::open(&opts.database).await?;
    let generated_root_password = auth::ensure_root(&db, opts.root_password.as_deref()).await?;
    clusters::ensure_default(&db).await?;
    let metrics = Arc::new(metrics::Metrics::default());
    let interval_seconds = u32::try_from(opts.keepalive_interval.as_secs().max(1)).unwrap_or(u32::MAX);
    let silent_ms = i64::from(interval_seconds) * 3000;
    let http = ferry_backend::Backends::new(&ferry_backend::HttpOptions {
        ca_certs: opts.ca_certs.clone(),
        ..Default::default()
    })
    .map_err(|e| ManagerError::BadRequest(e.to_string()))?
    .client()
    .clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let app = api::App { db: db.clone(), wake: wake.clone(), http, silent_ms, metrics: metrics.clone() };

    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ManagerError::Bind { addr: addr.to_string(), source })
    };
    let rest = bind(opts.rest_listen).await?;
    let grpc = bind(opts.grpc_listen).await?;
    let rest_addr = rest.local_addr().map_err(|e| ManagerError::Internal(e.to_string()))?;
    let grpc_addr = grpc.local_addr().map_err(|e| ManagerError::Internal(e.to_string()))?;
    // Nagle off: small replies go out as written (see the scheduler's listener).
    let grpc = tonic::transport::server::TcpIncoming::from_listener(grpc, true, None)
        .map_err(|e| ManagerError::Internal(e.to_string()))?;
    let metrics_addr = match opts.metrics_listen {
        Some(addr) => {
            let mut registry = ferry_telemetry::Registry::default();
            metrics.register(&mut registry);
            let endpoints = ferry_telemetry::Endpoints { metrics: Some(Arc::new(registry)), ready: None };
            let bound = ferry_telemetry::serve(addr, endpoints, cancel.clone())
                .await
                .map_err(|source| ManagerError::Bind { addr: addr.to_string(), source })?;
            Some(bound)
        }
        None => None,
    };

    let owner = format!("{}-{}-{}", hostname(), std::process::id(), db::now_ms());
    let runner = runner::Runner {
        db: db.clone(),
        owner,
        lease: opts.job_lease,
        workers: opts.job_workers,
        wake,
        silent_ms,
        metrics: metrics.clone(),
    };
    let service = grpc::Service { db, interval_seconds, silent_ms, metrics };
    let rest_app = api::router(app);
    let done = tokio::spawn(async move {
        let runner = tokio::spawn(runner.run(cancel.clone()));
        let rest = axum::serve(rest, rest_app).with_graceful_shutdown(cancel.clone().cancelled_owned());
        let grpc = tonic::transport::Server::builder()
            .add_service(ferry_proto::manager::manager_server::ManagerServer::new(service))
            .serve_with_incoming_shutdown(grpc, cancel.clone().cancelled_owned());
        let (r, g) = tokio::join!(rest, grpc);
        if let Err(e) = r {
            tracing::warn!(error = %e, "REST server stopped");
        }
        if let Err(e) = g {
            tracing::warn!(error = %e, "gRPC server stopped");
        }
        runner.abort();
    });
    tracing::info!(%rest_addr, %grpc_addr, database = %db::redact(&opts.database), "manager started");
    Ok(RunningManager { rest_addr, grpc_addr, metrics_addr, generated_root_password, done })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "manager".into())
}
