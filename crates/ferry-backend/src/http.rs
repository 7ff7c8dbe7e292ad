//! HTTP(S) origins via reqwest (rustls with ring; the system trust store, the bundled roots
//! and any operator-given CA certificates).
//!
//! Every response is checked before a byte of it is used: the body must be in identity
//! encoding (Ferry asks for it), a ranged answer must start and end exactly where asked, and
//! the object's validators (length, `ETag`, `Last-Modified`) come back with the body so the
//! caller can pin the task's content to them.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ferry_types::{OriginRequest, Validators};
use reqwest::header::{ACCEPT_ENCODING, RANGE};

use crate::{BackendError, SourceBody};

/// What an operator sets for HTTP(S) origins.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub connect_timeout: Duration,
    /// A response that sends nothing for this long fails (retryably): an origin that
    /// stalls must not hold a task, and its waiting clients, for ever.
    pub read_timeout: Duration,
    /// PEM files of extra CA certificates to trust (a private CA), on top of the system's.
    pub ca_certs: Vec<PathBuf>,
    /// Origin hosts whose TLS certificate is not verified (`--insecure-origin`): the
    /// operator's explicit opt-out, logged at start and on every read.
    pub insecure_hosts: Vec<String>,
    /// Settings for object-store origins (they share the CA certificates above).
    pub object_store: crate::object::ObjectStoreConfig,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            ca_certs: vec![],
            insecure_hosts: vec![],
            object_store: Default::default(),
        }
    }
}

#[derive(Clone)]
pub struct HttpBackend {
    client: reqwest::Client,
    /// For `insecure_hosts` only: the same client without certificate checks.
    unverified: Option<(reqwest::Client, Vec<String>)>,
}

impl HttpBackend {
    pub fn new(opts: &HttpOptions) -> Result<Self, BackendError> {
        let build_err = |e: reqwest::Error| BackendError::CaCert { path: String::new(), reason: e.to_string() };
        let unverified = match opts.insecure_hosts.is_empty() {
            true => None,
            false => {
                let hosts = &opts.insecure_hosts;
                tracing::warn!(?hosts, "TLS certificates of these origins are NOT verified (--insecure-origin)");
                let c = builder(opts)?.danger_accept_invalid_certs(true).build().map_err(build_err)?;
                Some((c, hosts.clone()))
            }
        };
        let client = builder(opts)?.build().map_err(build_err)?;
        Ok(Self { client, unverified })
    }

    /// The client for `url`: the unverifying one for an `--insecure-origin` host.
    fn client_for(&self, url: &url::Url) -> &reqwest::Client {
        let host = url.host_str().unwrap_or_default();
        let authority = ferry_types::host_port(url).unwrap_or_default();
        match &self.unverified {
            Some((c, hosts)) if hosts.iter().any(|h| h == host || *h == authority) => {
                tracing::warn!(%host, "reading an origin whose TLS certificate is not verified (--insecure-origin)");
                c
            }
            _ => &self.client,
        }
    }

    /// The client itself (its TLS roots and `User-Agent`), for callers that forward requests
    /// as they are (the registry mirror's pass-through).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    async fn send(&self, req: &OriginRequest, range: Option<String>) -> Result<reqwest::Response, BackendError> {
        let mut rb = self.client_for(req.url()).get(req.url().clone()).header(ACCEPT_ENCODING, "identity");
        for (k, v) in req.headers() {
            rb = rb.header(k, v);
        }
        if let Some(r) = range {
            rb = rb.header(RANGE, r);
        }
        rb.send().await.map_err(|e| connect_error(req, e))
    }

    pub(crate) async fn open(&self, req: &OriginRequest, offset: u64) -> Result<SourceBody, BackendError> {
        let url = req.redacted_url();
        let resp = self.send(req, (offset > 0).then(|| format!("bytes={offset}-"))).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(BackendError::Status { status: status.as_u16(), url });
        }
        let validators = crate::response::read_head(status.as_u16(), resp.headers(), offset, &url)?;
        Ok(SourceBody::new(validators, HttpBody { resp, url }.into_stream()))
    }

    /// Asks the origin whether this request may read the object, at the cost of one byte:
    /// `GET` with `Range: bytes=0-0` (a signed URL is often signed for GET only). Returns the
    /// object's validators.
    pub(crate) async fn check(&self, req: &OriginRequest) -> Result<Validators, BackendError> {
        let url = req.redacted_url();
        let resp = self.send(req, Some("bytes=0-0".into())).await?;
        crate::response::probe_head(resp.status().as_u16(), resp.headers(), &url)
    }
}

/// A client builder with the options' timeouts, `User-Agent` and extra CA certificates.
fn builder(opts: &HttpOptions) -> Result<reqwest::ClientBuilder, BackendError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
    for path in &opts.ca_certs {
        let ca_err = |reason: String| BackendError::CaCert { path: path.display().to_string(), reason };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in the file".into()));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    Ok(builder)
}

fn connect_error(req: &OriginRequest, e: reqwest::Error) -> BackendError {
    let reason = error_chain(&e.without_url());
    let lower = reason.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("tls handshake") {
        let host = req.url().host_str().unwrap_or_default().to_owned();
        return BackendError::Tls { host, reason };
    }
    BackendError::Connect { url: req.redacted_url(), reason }
}

struct HttpBody {
    resp: reqwest::Response,
    url: String,
}

impl HttpBody {
    async fn chunk(&mut self) -> Result<Option<Bytes>, BackendError> {
        self.resp
            .chunk()
            .await
            .map_err(|e| BackendError::Read { url: self.url.clone(), reason: error_chain(&e.without_url()) })
    }

    fn into_stream(self) -> futures::stream::BoxStream<'static, Result<Bytes, BackendError>> {
        let chunks =
            futures::stream::try_unfold(self, |mut body| async move { Ok(body.chunk().await?.map(|c| (c, body))) });
        Box::pin(chunks)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
