//! HTTP(S) proxy mode, for clients that know proxies but not registry mirrors, on the
//! mirror's port.
//!
//! Never an open proxy: only the configured hosts are served, everything else gets `403`.
//! `CONNECT` to a configured host is intercepted: the client's TLS ends here, with a
//! certificate for that host signed by the proxy's CA ([`ca`]), which the client must trust.
//! Inside (and for plain `http://` requests), a `GET`/`HEAD` whose URL matches a rule goes
//! through P2P (by default registry blob paths; content by digest is a digest task, anything
//! else a URL task), and every other request is forwarded to the host untouched.

pub mod ca;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::{content, error, oci, passthrough, ErrorType, Mirror};
use crate::DaemonError;

/// URLs that go through P2P unless rules are given: registry blobs by digest.
pub const DEFAULT_RULE: &str = r"^https?://[^/]+/v2/.+/blobs/sha256:[0-9a-f]{64}$";

#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The hosts served, `host` (any port) or `host:port`; every other is refused.
    pub hosts: Vec<String>,
    /// A `GET`/`HEAD` whose full URL matches one of these goes through P2P.
    pub rules: Vec<regex::Regex>,
    /// The operator's CA (certificate, key, PEM); `None`: Ferry's own, in the data dir.
    pub ca: Option<(PathBuf, PathBuf)>,
}

impl ProxyOptions {
    pub fn new(hosts: Vec<String>) -> Self {
        Self { hosts, rules: vec![regex::Regex::new(DEFAULT_RULE).expect("a valid rule")], ca: None }
    }

    /// Whether `authority` (`host:port`, as in `CONNECT` or an absolute URL) is served.
    pub fn allows(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let host = host_of(&authority);
        self.hosts.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            h == authority || h == host
        })
    }
}

/// `host` of `host:port` (`[v6]` of `[v6]:port`).
fn host_of(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    }
}

pub(super) struct Proxy {
    mirror: Arc<Mirror>,
    opts: ProxyOptions,
    ca: ca::Ca,
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    error(status, "DENIED", msg, ErrorType::Mirror)
}

impl Proxy {
    /// Loads (or makes) the CA.
    pub(super) fn new(mirror: Arc<Mirror>, opts: ProxyOptions) -> Result<Self, DaemonError> {
        let files = opts.ca.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let ca = ca::Ca::load(files, &mirror.ctx.env.opts.data_dir)?;
        Ok(Self { mirror, opts, ca })
    }

    pub(super) fn ca_cert(&self) -> &std::path::Path {
        &self.ca.cert_path
    }

    /// A request as a proxy gets it: `CONNECT host:port`, or an absolute `http://` URL.
    pub(super) async fn outer(self: Arc<Self>, req: Request<Incoming>) -> Response {
        let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned()) else {
            return refuse(StatusCode::BAD_REQUEST, "this is a proxy: send CONNECT or an absolute http:// URL");
        };
        if !self.opts.allows(&authority) {
            tracing::info!(%authority, method = %req.method(), "proxy refused a host it does not serve");
            let msg = format!("ferry proxy: {authority} is not a configured host (--proxy-host)");
            return refuse(StatusCode::FORBIDDEN, &msg);
        }
        if req.method() == Method::CONNECT {
            let p = self.clone();
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => p.intercept(TokioIo::new(upgraded), authority).await,
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            });
            return super::empty(StatusCode::OK);
        }
        if req.uri().scheme_str() != Some("http") {
            return refuse(StatusCode::BAD_REQUEST, "only http:// URLs are proxied as such; use CONNECT for https");
        }
        let base = match url::Url::parse(&format!("http://{authority}/")) {
            Ok(u) => u,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("bad host `{authority}`: {e}")),
        };
        self.inner(base, req.map(Body::new)).await
    }

    /// Ends the client's TLS here and serves the HTTP inside it.
    async fn intercept(self: Arc<Self>, io: TokioIo<hyper::upgrade::Upgraded>, authority: String) {
        let host = host_of(&authority).to_owned();
        let config = match self.ca.server_config(&host) {
            Ok(c) => c,
            Err(e) => return tracing::warn!(%host, error = %e, "no certificate for the host"),
        };
        let tls = match tokio_rustls::TlsAcceptor::from(config).accept(io).await {
            Ok(t) => t,
            Err(e) => {
                return tracing::info!(%host, error = %e, "TLS with the client failed (does it trust the proxy's CA?)")
            }
        };
        let insecure = self
            .mirror
            .opts
            .insecure
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&authority) || h.eq_ignore_ascii_case(&host));
        let scheme = if insecure { "http" } else { "https" };
        let Ok(base) = url::Url::parse(&format!("{scheme}://{authority}/")) else { return };
        let p = self.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let (p, base) = (p.clone(), base.clone());
            async move { Ok::<_, Infallible>(p.inner(base, req.map(Body::new)).await) }
        });
        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await {
            tracing::debug!(error = %e, "intercepted connection ended");
        }
    }

    /// A request for `base`'s host: through P2P if a rule says so, else forwarded.
    async fn inner(self: Arc<Self>, base: url::Url, req: Request<Body>) -> Response {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let url = match base.join(&path) {
            Ok(u) => u,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("bad path `{path}`: {e}")),
        };
        let span = tracing::info_span!("proxy", method = %req.method(), url = %redacted(&url));
        async move {
            let read = matches!(*req.method(), Method::GET | Method::HEAD);
            let p2p = read && self.opts.rules.iter().any(|r| r.is_match(url.as_str()));
            let r = if p2p {
                self.p2p(&base, url, req).await
            } else {
                passthrough::forward_to(&self.mirror, url, req).await
            };
            self.mirror.count(&r, p2p);
            tracing::debug!(status = %r.status(), p2p, "answered");
            r
        }
        .instrument(span)
        .await
    }

    async fn p2p(&self, base: &url::Url, url: url::Url, req: Request<Body>) -> Response {
        let m = &self.mirror;
        match oci::route(url.path()) {
            Some(Ok(oci::Route::Blob { name, digest })) => {
                content::serve(m, base, content::Kind::Blob, &name, &digest, req).await
            }
            Some(Ok(oci::Route::Manifest { name, reference: oci::Reference::Digest(digest) })) => {
                content::serve(m, base, content::Kind::Manifest, &name, &digest, req).await
            }
            _ => content::serve_url(m, url, req).await,
        }
    }
}

/// The URL without its query (which may hold a signature).
fn redacted(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_hosts_are_served() {
        let o = ProxyOptions::new(vec!["registry.example".into(), "127.0.0.1:5000".into()]);
        assert!(o.allows("registry.example:443"));
        assert!(o.allows("REGISTRY.example:8443"));
        assert!(o.allows("127.0.0.1:5000"));
        assert!(!o.allows("127.0.0.1:5001"));
        assert!(!o.allows("registry.example.evil:443"));
        assert!(!o.allows("evil.example:443"));
        assert_eq!(host_of("[::1]:443"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
    }

    #[test]
    fn the_default_rule_takes_blobs_by_digest_only() {
        let r = regex::Regex::new(DEFAULT_RULE).unwrap();
        let d = "a".repeat(64);
        assert!(r.is_match(&format!("https://r.example/v2/library/app/blobs/sha256:{d}")));
        assert!(!r.is_match(&format!("https://r.example/v2/library/app/blobs/sha256:{d}?x=1")));
        assert!(!r.is_match("https://r.example/v2/library/app/manifests/latest"));
        assert!(!r.is_match("https://r.example/v2/library/app/blobs/uploads/"));
    }
}
