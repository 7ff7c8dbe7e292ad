//! Back-to-source: reading a task's bytes from where they originally live.
//!
//! A [`Backend`] is picked by URL scheme. Each opens the object at a byte offset and yields
//! its body as chunks; the caller cuts pieces, hashes them and resumes at its own offset
//! after a retryable failure (see [`BackendError::is_retryable`]).

mod http;
pub mod hub;
pub mod object;
pub mod registry_auth;
pub mod response;

pub use http::{HttpBackend, HttpOptions};

use bytes::Bytes;
use ferry_types::{OriginRequest, Validators};
use futures::stream::{BoxStream, StreamExt};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("unsupported URL scheme `{0}`: Ferry fetches http://, https://, s3://, gs:// and azblob:// URLs")]
    UnsupportedScheme(String),
    #[error("{0}")]
    BadUrl(String),
    /// A file imported into the cluster (`ferry:<digest>`) that no host holds any more.
    #[error("{0} is held by no host in the cluster (it was never imported, was removed, or every holder is gone); put it there with `ferry cache import`")]
    NotInCluster(String),
    #[error("origin answered {status} for {url}")]
    Status { status: u16, url: String },
    #[error("connect to origin for {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("read from origin for {url}: {reason}")]
    Read { url: String, reason: String },
    #[error("origin sent no Content-Length for {url}; Ferry needs the size up front")]
    NoContentLength { url: String },
    #[error("origin ignored the range request for {url} (expected 206 from offset {offset})")]
    RangeIgnored { url: String, offset: u64 },
    #[error("origin {url} {reason}")]
    BadResponse { url: String, reason: String },
    #[error("TLS with origin host {host} failed: {reason}; if the origin uses a private CA, give its certificate with --ca-cert")]
    Tls { host: String, reason: String },
    #[error("CA certificate {path}: {reason}")]
    CaCert { path: String, reason: String },
}

impl BackendError {
    /// Worth another try after a pause: 5xx, 429, resets and timeouts. 4xx, certificate
    /// errors and unusable responses are final: the next try would see the same.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Self::Connect { .. } | Self::Read { .. } => true,
            _ => false,
        }
    }

    /// The origin's HTTP status, when that is what failed.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::NotInCluster(_) => Some(404),
            _ => None,
        }
    }
}

/// Reads a JSON answer of at most `limit` bytes: a listing, a manifest or a token from a
/// remote service never takes unbounded memory, however large the service says it is.
pub async fn json_limited<T: serde::de::DeserializeOwned>(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<T, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("the answer is larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("not the JSON expected: {e}"))
}

/// An open object body and the object's validators (its whole length among them).
///
/// The body is any stream of chunks, so every backend (and a test's scripted origin) hands
/// the daemon the same type.
pub struct SourceBody {
    pub validators: Validators,
    chunks: BoxStream<'static, Result<Bytes, BackendError>>,
}

impl SourceBody {
    pub fn new(validators: Validators, chunks: BoxStream<'static, Result<Bytes, BackendError>>) -> Self {
        Self { validators, chunks }
    }

    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BackendError> {
        self.chunks.next().await.transpose()
    }

    /// Puts what a reader looked ahead at back in front of the body, to be read again in
    /// order: chunks, then the error that ended the look, if one did; `ended` when the
    /// look reached the body's end, which is then where the body ends again.
    pub fn put_back(&mut self, read: Vec<Result<Bytes, BackendError>>, ended: bool) {
        let rest = std::mem::replace(&mut self.chunks, futures::stream::empty().boxed());
        let rest = if ended { futures::stream::empty().boxed() } else { rest };
        self.chunks = futures::stream::iter(read).chain(rest).boxed();
    }
}

/// Every back-to-source implementation a daemon has, picked by URL scheme.
#[derive(Clone)]
pub struct Backends {
    http: HttpBackend,
    objects: object::ObjectStores,
}

impl Backends {
    pub fn new(opts: &HttpOptions) -> Result<Self, BackendError> {
        Ok(Self {
            http: HttpBackend::new(opts)?,
            objects: object::ObjectStores::new(&opts.ca_certs, opts.object_store.clone())?,
        })
    }

    /// The HTTP client (its TLS roots and `User-Agent`), for callers that speak HTTP
    /// themselves (the registry mirror).
    pub fn client(&self) -> &reqwest::Client {
        self.http.client()
    }

    pub fn objects(&self) -> &object::ObjectStores {
        &self.objects
    }

    fn pick(&self, url: &url::Url) -> Result<Backend<'_>, BackendError> {
        match url.scheme() {
            "http" | "https" => Ok(Backend::Http(&self.http)),
            s if object::is_object_scheme(s) => Ok(Backend::Object(&self.objects)),
            ferry_types::CACHE_SCHEME => Err(BackendError::NotInCluster(url.path().to_owned())),
            other => Err(BackendError::UnsupportedScheme(other.to_owned())),
        }
    }

    /// Opens the object at `offset`; the returned validators are the whole object's.
    pub async fn open(&self, req: &OriginRequest, offset: u64) -> Result<SourceBody, BackendError> {
        match self.pick(req.url())? {
            Backend::Http(h) => h.open(req, offset).await,
            Backend::Object(o) => o.open(req, offset).await,
        }
    }

    /// Whether this request may read the object, and the object's validators, at the cost
    /// of one small origin request.
    pub async fn check(&self, req: &OriginRequest) -> Result<Validators, BackendError> {
        match self.pick(req.url())? {
            Backend::Http(h) => h.check(req).await,
            Backend::Object(o) => o.check(req).await,
        }
    }
}

/// The implementation for one URL.
enum Backend<'a> {
    Http(&'a HttpBackend),
    Object(&'a object::ObjectStores),
}
