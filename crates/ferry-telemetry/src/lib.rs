//! What every role exposes for operators: Prometheus metrics (`/metrics`, OpenMetrics text)
//! and health (`/livez`: the process answers; `/readyz`: it can do its job, else 503 with
//! the reason), on a small HTTP server of their own, apart from the data path.
//!
//! Metric families are named `ferry_<role>_*` with their unit in the name; a role registers
//! its counters and histograms in a [`Registry`] and, for values it already keeps (its books,
//! its atomics), a collector that reads them at scrape time ([`encode_counter`],
//! [`encode_gauge`]).

pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

/// Why a role is not ready (`None`: it is).
pub type Readiness = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What one listener serves: metrics, health, or both.
#[derive(Clone, Default)]
pub struct Endpoints {
    pub metrics: Option<Arc<Registry>>,
    pub ready: Option<Readiness>,
}

/// `off`, or an address to bind (port 0 picks one).
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    match s {
        "off" | "" => Ok(None),
        a => a.parse().map(Some).map_err(|_| format!("`{a}` is not IP:PORT or `off`")),
    }
}

/// Binds `addr` and serves `endpoints` until `cancel`; returns the bound address.
pub async fn serve(addr: SocketAddr, endpoints: Endpoints, cancel: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut app = axum::Router::new();
    if endpoints.metrics.is_some() {
        app = app.route("/metrics", get(metrics));
    }
    if endpoints.ready.is_some() {
        app = app.route("/livez", get(|| async { "ok\n" })).route("/readyz", get(ready));
    }
    let app = app.with_state(endpoints);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics/health server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(e): State<Endpoints>) -> Response {
    let Some(registry) = e.metrics else { return StatusCode::NOT_FOUND.into_response() };
    let mut body = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        tracing::warn!(error = %err, "cannot encode metrics");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn ready(State(e): State<Endpoints>) -> Response {
    match e.ready.as_ref().and_then(|r| r()) {
        None => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

/// Writes one counter family read at scrape time: `name` (without `_total`), one sample per
/// label set.
pub fn encode_counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[(L, u64)],
) -> std::fmt::Result {
    let c = ConstCounter::new(0u64);
    let mut family = enc.encode_descriptor(name, help, unit, c.metric_type())?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family read at scrape time.
pub fn encode_gauge<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[(L, i64)],
) -> std::fmt::Result {
    let g = ConstGauge::new(0i64);
    let mut family = enc.encode_descriptor(name, help, unit, g.metric_type())?;
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// The label set of a metric without labels.
pub const NO_LABELS: [(&str, &str); 0] = [];
