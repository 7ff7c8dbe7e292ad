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
use reqwest::header::{
    HeaderMap, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED, RANGE,
};
use reqwest::StatusCode;

use crate::{BackendError, SourceBody};

/// What an operator sets for HTTP(S) origins.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub connect_timeout: Duration,
    /// PEM files of extra CA certificates to trust (a private CA), on top of the system's.
    pub ca_certs: Vec<PathBuf>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(10), ca_certs: vec![] }
    }
}

#[derive(Clone)]
pub struct HttpBackend {
    client: reqwest::Client,
}

impl HttpBackend {
    pub fn new(opts: &HttpOptions) -> Result<Self, BackendError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
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
        let client =
            builder.build().map_err(|e| BackendError::CaCert { path: String::new(), reason: e.to_string() })?;
        Ok(Self { client })
    }

    async fn send(&self, req: &OriginRequest, range: Option<String>) -> Result<reqwest::Response, BackendError> {
        let mut rb = self.client.get(req.url().clone()).header(ACCEPT_ENCODING, "identity");
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
        let headers = resp.headers();
        check_identity(headers, &url)?;
        let bad = |reason: String| BackendError::BadResponse { url: url.clone(), reason };
        let length = match (offset, status) {
            (0, StatusCode::OK) => {
                header_u64(headers, CONTENT_LENGTH).ok_or(BackendError::NoContentLength { url: url.clone() })?
            }
            (0, s) => return Err(bad(format!("answered {s} to a request without Range"))),
            (_, StatusCode::PARTIAL_CONTENT) => {
                let (start, end, total) =
                    content_range(headers).ok_or_else(|| bad("a 206 without a valid Content-Range".into()))?;
                if start != offset || end + 1 != total {
                    return Err(bad(format!("asked for bytes {offset}- and got bytes {start}-{end}/{total}")));
                }
                total
            }
            _ => return Err(BackendError::RangeIgnored { url, offset }),
        };
        let body_len = length.saturating_sub(offset);
        if header_u64(headers, CONTENT_LENGTH).is_some_and(|n| n != body_len) {
            return Err(bad(format!("Content-Length disagrees with the {body_len} bytes expected")));
        }
        let validators = validators(headers, length);
        Ok(SourceBody { validators, inner: HttpBody { resp, url } })
    }

    /// Asks the origin whether this request may read the object, at the cost of one byte:
    /// `GET` with `Range: bytes=0-0` (a signed URL is often signed for GET only). Returns the
    /// object's validators.
    pub(crate) async fn check(&self, req: &OriginRequest) -> Result<Validators, BackendError> {
        let url = req.redacted_url();
        let resp = self.send(req, Some("bytes=0-0".into())).await?;
        let status = resp.status();
        let headers = resp.headers();
        let bad = |reason: &str| BackendError::BadResponse { url: url.clone(), reason: reason.into() };
        let length = match status {
            StatusCode::PARTIAL_CONTENT => {
                content_range(headers).map(|(_, _, t)| t).ok_or_else(|| bad("a 206 without a valid Content-Range"))?
            }
            StatusCode::OK => {
                header_u64(headers, CONTENT_LENGTH).ok_or(BackendError::NoContentLength { url: url.clone() })?
            }
            // An empty object has no byte 0.
            StatusCode::RANGE_NOT_SATISFIABLE => match unsatisfied_total(headers) {
                Some(0) => 0,
                _ => return Err(bad("416 for byte 0 of a non-empty object")),
            },
            s => return Err(BackendError::Status { status: s.as_u16(), url }),
        };
        check_identity(headers, &url)?;
        Ok(validators(headers, length))
    }
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

fn check_identity(headers: &HeaderMap, url: &str) -> Result<(), BackendError> {
    match headers.get(CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None => Ok(()),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(()),
        Some(e) => Err(BackendError::BadResponse {
            url: url.to_owned(),
            reason: format!("sent a `{e}`-encoded body although Ferry asked for identity encoding"),
        }),
    }
}

fn header_u64(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `Content-Range: bytes start-end/total`, with start <= end < total.
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?.trim().strip_prefix("bytes ")?;
    let (range, total) = v.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total): (u64, u64, u64) = (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, end, total))
}

/// `Content-Range: bytes */total` of a 416.
fn unsatisfied_total(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_RANGE)?.to_str().ok()?.trim().strip_prefix("bytes */")?.parse().ok()
}

fn validators(headers: &HeaderMap, length: u64) -> Validators {
    let text = |name| headers.get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(str::to_owned);
    Validators { length, etag: text(ETAG), last_modified: text(LAST_MODIFIED) }
}

pub(crate) struct HttpBody {
    resp: reqwest::Response,
    url: String,
}

impl HttpBody {
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, BackendError> {
        self.resp
            .chunk()
            .await
            .map_err(|e| BackendError::Read { url: self.url.clone(), reason: error_chain(&e.without_url()) })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        assert_eq!(content_range(&headers(&[("content-range", "bytes 5-9/10")])), Some((5, 9, 10)));
        for bad in ["bytes 5-9/*", "bytes 9-5/10", "bytes 5-10/10", "items 0-1/2", "bytes 5-/10", "bytes x-9/10"] {
            assert_eq!(content_range(&headers(&[("content-range", bad)])), None, "{bad}");
        }
        assert_eq!(unsatisfied_total(&headers(&[("content-range", "bytes */0")])), Some(0));
    }

    #[test]
    fn only_identity_bodies_are_accepted() {
        assert!(check_identity(&headers(&[]), "u").is_ok());
        assert!(check_identity(&headers(&[("content-encoding", "identity")]), "u").is_ok());
        assert!(check_identity(&headers(&[("content-encoding", "gzip")]), "u").is_err());
    }
}
