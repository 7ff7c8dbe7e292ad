//! HTTP(S) origins via reqwest (rustls with ring).

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use crate::{BackendError, SourceBody, SourceRequest};

#[derive(Clone)]
pub struct HttpBackend {
    client: reqwest::Client,
}

impl HttpBackend {
    pub fn new(connect_timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .build()
            .expect("TLS backend initialises");
        Self { client }
    }

    pub(crate) async fn open(&self, req: &SourceRequest, offset: u64) -> Result<SourceBody, BackendError> {
        let url = req.url.as_str().to_owned();
        let mut rb = self.client.get(req.url.clone());
        for (k, v) in &req.headers {
            rb = rb.header(k, v);
        }
        if offset > 0 {
            rb = rb.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = rb.send().await.map_err(|e| BackendError::Connect { url: url.clone(), reason: error_chain(&e) })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(BackendError::Status { status: status.as_u16(), url });
        }
        let content_length = if offset > 0 {
            if status != StatusCode::PARTIAL_CONTENT {
                return Err(BackendError::RangeIgnored { url, offset });
            }
            // Content-Range: bytes start-end/total
            resp.headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|t| t.parse().ok())
                .ok_or(BackendError::NoContentLength { url: url.clone() })?
        } else {
            resp.headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or(BackendError::NoContentLength { url: url.clone() })?
        };
        Ok(SourceBody { content_length, inner: HttpBody { resp, url } })
    }
}

pub(crate) struct HttpBody {
    resp: reqwest::Response,
    url: String,
}

impl HttpBody {
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, BackendError> {
        self.resp.chunk().await.map_err(|e| BackendError::Read { url: self.url.clone(), reason: error_chain(&e) })
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
