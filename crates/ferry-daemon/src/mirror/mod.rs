//! The registry mirror: a pull-through mirror speaking the OCI distribution API on
//! `127.0.0.1:4001` (by default), so a container runtime pulls through its local daemon.
//!
//! - Blobs, and manifests named by digest, go through P2P ([`content`]): the digest is the
//!   task id, so one layer is one task whatever registry, repository or tag it came through,
//!   and the bytes are verified against that digest end to end.
//! - Everything else (`/v2/`, manifests by tag, uploads, tag lists) is passed to the
//!   upstream registry as it is ([`passthrough`]), the client's `Authorization` included, and
//!   its answer (a `401` with its challenge too) comes back unchanged: runtimes run the token
//!   flow they already know.
//! - A blob first read with credentials is private: a client gets its bytes only after the
//!   upstream confirmed, with this client's own credentials, that it may read it.
//!
//! Errors are the spec's JSON body with an `X-Ferry-Error-Type` header saying which layer
//! failed: `upstream`, `mirror` or `p2p`.
//!
//! The same port is the HTTP(S) proxy ([`proxy`]) when hosts are configured for it: a
//! `CONNECT` or an absolute URL is a proxy request, a path alone a mirror request.

pub(crate) mod content;
pub mod oci;
mod passthrough;
pub mod preheat;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ctx::Ctx;
use crate::DaemonError;
use oci::Route;

#[derive(Clone, Debug)]
pub struct MirrorOptions {
    pub listen: SocketAddr,
    /// The registry requests go to unless they name one (`X-Ferry-Registry`, `ns=`).
    pub upstream: url::Url,
    /// Registry hosts (`host[:port]`) reached over plain HTTP when named by host alone.
    pub insecure: Vec<String>,
    /// How long the registry may take to start answering a passed-through request, and a
    /// download by digest may go without progress, before the client gets a 504.
    pub timeout: std::time::Duration,
    /// Proxy mode on the same port; `None`: proxy requests are refused.
    pub proxy: Option<proxy::ProxyOptions>,
    /// Credentials the mirror itself shows a registry when a client brings none (the
    /// node is trusted with them: every local client may then pull what they may).
    pub credentials: Option<ferry_backend::registry_auth::RegistryCredentials>,
    /// Registry hosts (`host[:port]`) whose content anyone may read: a cached blob of
    /// theirs is served without asking the registry about the client first.
    pub public: Vec<String>,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4001)),
            upstream: url::Url::parse("https://registry-1.docker.io").expect("a valid URL"),
            insecure: vec![],
            timeout: std::time::Duration::from_secs(30),
            proxy: None,
            credentials: None,
            public: vec![],
        }
    }
}

pub struct Mirror {
    ctx: Arc<Ctx>,
    opts: MirrorOptions,
    client: reqwest::Client,
    auth: Option<ferry_backend::registry_auth::RegistryAuth>,
}

/// Which layer failed, for `X-Ferry-Error-Type`.
#[derive(Clone, Copy, Debug)]
pub enum ErrorType {
    Upstream,
    Mirror,
    P2p,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::Upstream => "upstream",
            ErrorType::Mirror => "mirror",
            ErrorType::P2p => "p2p",
        }
    }
}

/// An error answer in the spec's shape.
pub fn error(status: StatusCode, code: &str, message: &str, kind: ErrorType) -> Response {
    let mut r = (status, oci::error_body(code, message)).into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-ferry-error-type", HeaderValue::from_static(kind.as_str()));
    r
}

pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), DaemonError> {
    let bind_err = |source| DaemonError::Bind { what: "registry mirror", addr: addr.to_string(), source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    Ok((listener, bound))
}

/// Sets up the mirror (and the proxy's CA, if it has hosts) and returns the loop serving
/// `listener` until `cancel` fires, with the CA certificate proxy clients must trust.
pub fn start(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    opts: MirrorOptions,
    cancel: CancellationToken,
) -> Result<(Option<std::path::PathBuf>, impl std::future::Future<Output = ()>), DaemonError> {
    let client = ctx.backend.client().clone();
    let auth =
        opts.credentials.clone().map(|c| ferry_backend::registry_auth::RegistryAuth::new(client.clone(), c, false));
    let mirror = Arc::new(Mirror { ctx, opts, client, auth });
    let proxy = match &mirror.opts.proxy {
        Some(p) => Some(Arc::new(proxy::Proxy::new(mirror.clone(), p.clone())?)),
        None => None,
    };
    let ca = proxy.as_ref().map(|p| p.ca_cert().to_owned());
    Ok((ca, accept_loop(listener, mirror, proxy, cancel)))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    mirror: Arc<Mirror>,
    proxy: Option<Arc<proxy::Proxy>>,
    cancel: CancellationToken,
) {
    loop {
        let tcp = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "registry mirror: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // No Nagle: a small blob's head and body are separate writes, and waiting for the
        // client's delayed ACK cost 40 ms a request (measured: p50 44 ms -> see the README).
        let _ = tcp.set_nodelay(true);
        let (m, p, cancel) = (mirror.clone(), proxy.clone(), cancel.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (m, p) = (m.clone(), p.clone());
                async move {
                    let r = match p {
                        Some(p) if req.uri().authority().is_some() => p.outer(req).await,
                        _ => handle(m, req.map(Body::new)).await,
                    };
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades();
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = conn => if let Err(e) = r { tracing::debug!(error = %e, "mirror connection ended") },
            }
        });
    }
}

async fn handle(m: Arc<Mirror>, req: Request) -> Response {
    let span = tracing::info_span!("mirror", method = %req.method(), path = %req.uri().path());
    async move {
        let (r, p2p) = route_request(&m, req).await;
        m.count(&r, p2p);
        tracing::debug!(status = %r.status(), "answered");
        r
    }
    .instrument(span)
    .await
}

/// The answer, and whether the request was one for P2P (content by digest).
async fn route_request(m: &Arc<Mirror>, mut req: Request) -> (Response, bool) {
    let Some(route) = oci::route(req.uri().path()) else {
        let r = error(StatusCode::NOT_FOUND, "UNSUPPORTED", "not an OCI distribution path", ErrorType::Mirror);
        return (r, false);
    };
    let header = ["x-ferry-registry", "x-dragonfly-registry"]
        .iter()
        .find_map(|h| req.headers().get(*h).and_then(|v| v.to_str().ok()));
    let upstream = match oci::upstream(header, req.uri().query(), &m.opts.upstream, &m.opts.insecure) {
        Ok(u) => u,
        Err(e) => return (error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &e, ErrorType::Mirror), false),
    };
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if read {
        if let Err(e) = m.add_credentials(&upstream, route.as_ref().ok(), &mut req).await {
            return (error(StatusCode::BAD_GATEWAY, "UNAUTHORIZED", &e, ErrorType::Upstream), false);
        }
    }
    match route {
        Err(invalid) => {
            let status = if read { StatusCode::BAD_REQUEST } else { StatusCode::NOT_FOUND };
            (error(status, invalid.code(), &invalid.message(), ErrorType::Mirror), false)
        }
        Ok(Route::Blob { name, digest }) if read => {
            (content::serve(m, &upstream, content::Kind::Blob, &name, &digest, req).await, true)
        }
        Ok(Route::Manifest { name, reference: oci::Reference::Digest(digest) }) if read => {
            (content::serve(m, &upstream, content::Kind::Manifest, &name, &digest, req).await, true)
        }
        Ok(_) => (passthrough::forward(m, &upstream, req).await, false),
    }
}

impl Mirror {
    /// Shows the registry the configured credentials for a read that brings none.
    async fn add_credentials(
        &self,
        upstream: &url::Url,
        route: Option<&Route>,
        req: &mut Request,
    ) -> Result<(), String> {
        let Some(auth) = &self.auth else { return Ok(()) };
        if req.headers().contains_key(axum::http::header::AUTHORIZATION) {
            return Ok(());
        }
        let name = match route {
            Some(Route::Blob { name, .. } | Route::Manifest { name, .. }) => Some(name.as_str()),
            _ => None,
        };
        let scope = name.map(|n| format!("repository:{n}:pull"));
        if let Some(h) = auth.authorization(upstream, scope.as_deref()).await? {
            let v = HeaderValue::from_str(&h).map_err(|_| "the registry's token is not a header value".to_owned())?;
            req.headers_mut().insert(axum::http::header::AUTHORIZATION, v);
        }
        Ok(())
    }

    /// Whether the registry is configured as public.
    fn public(&self, upstream: &url::Url) -> bool {
        let Some(host) = ferry_types::host_port(upstream) else { return false };
        self.opts
            .public
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&host) || (p == "docker.io" && host == "registry-1.docker.io"))
    }

    /// Counts a request by outcome: P2P, passed through (the registry's own answers, a
    /// refusal from P2P's access check included), or failed here.
    fn count(&self, r: &Response, p2p: bool) {
        let c = &self.ctx.env.counters;
        let ours = r.headers().get("x-ferry-error-type").and_then(|v| v.to_str().ok());
        let counter = match ours {
            // An error made here, or the registry unreachable from here.
            Some("mirror" | "p2p") => &c.mirror_failed,
            Some(_) if r.status().is_server_error() => &c.mirror_failed,
            None if p2p && r.status().is_success() => &c.mirror_p2p,
            // The registry's own answer (its 401 challenge too).
            _ => &c.mirror_passed_through,
        };
        crate::counters::Counters::add(counter, 1);
    }
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}
