//! Requests the mirror does not serve from P2P go to the upstream registry as they came
//! (method, path, query, body, the client's headers but hop-by-hop ones), and its answer
//! comes back as it is: status, headers (a `WWW-Authenticate` challenge too) and body.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::TryStreamExt;

use super::{error, ErrorType, Mirror};

/// Headers that belong to one connection, or that the mirror sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "x-ferry-registry",
    "x-dragonfly-registry",
];

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The upstream URL for a request's path and query (without containerd's `ns=`).
fn target(upstream: &url::Url, req: &Request) -> Result<url::Url, String> {
    let mut url = upstream.join(req.uri().path()).map_err(|e| e.to_string())?;
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k != "ns")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(url)
}

pub async fn forward(m: &Mirror, upstream: &url::Url, req: Request) -> Response {
    match target(upstream, &req) {
        Ok(url) => forward_to(m, url, req).await,
        Err(e) => error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &e, ErrorType::Mirror),
    }
}

/// Sends `req` to `url` as it came and returns the answer as it is.
pub async fn forward_to(m: &Mirror, url: url::Url, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let send = m.client.request(parts.method.clone(), url.clone()).headers(headers).body(body).send();
    let limit = m.opts.timeout;
    let resp = match tokio::time::timeout(limit, send).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::info!(upstream = %url.host_str().unwrap_or_default(), error = %e, "upstream unreachable");
            let msg = format!("upstream registry {} unreachable", url.host_str().unwrap_or_default());
            return error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &msg, ErrorType::Upstream);
        }
        Err(_) => {
            let msg =
                format!("upstream registry {} did not answer within {limit:?}", url.host_str().unwrap_or_default());
            return error(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", &msg, ErrorType::Upstream);
        }
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    copy_headers(resp.headers(), &mut headers);
    let mut out = Response::new(Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other)));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The upstream's own answer to a `HEAD` (or `GET`) of `path` with the client's headers:
/// how a client without access gets the registry's `401` and its challenge, not ours.
pub async fn upstream_answer(m: &Mirror, upstream: &url::Url, req_headers: &HeaderMap, path: &str) -> Option<Response> {
    let url = upstream.join(path).ok()?;
    let mut headers = HeaderMap::new();
    copy_headers(req_headers, &mut headers);
    let send = m.client.head(url).headers(headers).send();
    let resp = tokio::time::timeout(m.opts.timeout, send).await.ok()?.ok()?;
    let status = StatusCode::from_u16(resp.status().as_u16()).ok()?;
    let mut out =
        super::error(status, code_for(status), &format!("upstream registry answered {status}"), ErrorType::Upstream);
    for name in ["www-authenticate", "docker-distribution-api-version"] {
        if let Some(v) = resp.headers().get(name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    Some(out)
}

fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "DENIED",
        StatusCode::NOT_FOUND => "BLOB_UNKNOWN",
        StatusCode::TOO_MANY_REQUESTS => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    }
}
