//! Blobs and manifests by digest, through P2P.
//!
//! The task is named by the digest alone and verified against it (every piece against its
//! digest, the whole against the sha256). The answer is sent once the task is complete, from
//! the cache, each piece checked again against its recorded digest as it is read: a client
//! never gets a byte of content that did not verify. A client whose upstream refuses it (no
//! or wrong credentials, unknown blob) gets the upstream's own answer, challenge included.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use ferry_types::{FileDigest, OriginRequest, PieceDigest, TaskId, TaskIdInput};

use super::oci::MANIFEST_TYPES;
use super::{empty, error, passthrough, ErrorType, Mirror};
use crate::ctx::Ctx;
use crate::registry::TaskHandle;
use crate::DaemonError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Blob,
    Manifest,
}

/// A manifest served by digest is read whole to find its media type; none is this large.
const MAX_MANIFEST: u64 = 4 << 20;

pub async fn serve(
    m: &Arc<Mirror>,
    upstream: &url::Url,
    kind: Kind,
    name: &str,
    digest: &FileDigest,
    req: Request,
) -> Response {
    // Only the head is needed; a body is not Sync, and this future must be Send.
    let (parts, _) = req.into_parts();
    let req = &parts;
    let segment = if kind == Kind::Blob { "blobs" } else { "manifests" };
    let path = format!("/v2/{name}/{segment}/{digest}");
    let request = match origin_request(upstream, &path, kind, digest, req) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &e, ErrorType::Mirror),
    };
    let id = TaskId::derive(&TaskIdInput { digest: Some(digest), ..Default::default() });
    match checked(m, id, &request, m.public(upstream)).await {
        Ok(handle) => answer(handle, kind, Some(digest), req).await,
        Err(e) => refused(m, upstream, req, &path, &e).await,
    }
}

/// The complete task `id` (joined or started) for a client that may read it: asked of the
/// origin first when the client brings credentials (or always, if so configured), else once
/// the content turns out private (first read with someone's credentials); never for a
/// registry configured as public. A task of a URL without digest is the one of the version
/// the origin names in that first answer.
async fn checked(
    m: &Mirror,
    mut id: TaskId,
    request: &OriginRequest,
    public: bool,
) -> Result<Arc<TaskHandle>, Arc<DaemonError>> {
    let ctx = &m.ctx;
    let mut authorized = public;
    if !public && (request.credentialed() || ctx.env.opts.always_authorize) {
        let v = ctx.authorize(request).await?;
        if request.digest().is_none() {
            id = id.at_version(&v);
        }
        authorized = true;
    }
    let handle = complete(ctx, id, request, m.opts.timeout).await?;
    if !authorized && handle.content.get().is_some_and(|c| c.private) {
        ctx.authorize(request).await?;
    }
    Ok(handle)
}

/// Any other URL a proxy rule sends through P2P: a task of the URL (at the version the
/// origin names, when the request proves its access first), answered once complete.
pub async fn serve_url(m: &Arc<Mirror>, url: url::Url, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let req = &parts;
    let mut headers = vec![];
    if let Some(auth) = req.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        headers.push(("Authorization".to_owned(), auth.to_owned()));
    }
    let path = url.as_str().to_owned();
    let request = match OriginRequest::new(url.clone(), headers, None, vec![]) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &e.to_string(), ErrorType::Mirror),
    };
    let id = TaskId::derive(&TaskIdInput { url: Some(&url), ..Default::default() });
    match checked(m, id, &request, false).await {
        Ok(handle) => answer(handle, Kind::Blob, None, req).await,
        Err(e) => refused(m, &url, req, &path, &e).await,
    }
}

/// The response for a complete task that this client may read: headers, and the body (or
/// the asked range of it) from the cache.
async fn answer(handle: Arc<TaskHandle>, kind: Kind, digest: Option<&FileDigest>, req: &Parts) -> Response {
    let len = handle.content.get().expect("a complete task has content").file.layout().content_length();
    let media_type = match kind {
        Kind::Blob => "application/octet-stream".to_owned(),
        Kind::Manifest if len > MAX_MANIFEST => {
            return error(StatusCode::BAD_GATEWAY, "MANIFEST_INVALID", "manifest too large", ErrorType::Upstream)
        }
        Kind::Manifest => match read_range(handle.clone(), 0, len).await {
            Ok(bytes) => super::oci::manifest_media_type(&bytes)
                .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned()),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e, ErrorType::P2p),
        },
    };
    let range = match req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|r| parse_range(r, len)) {
        None => None,
        Some(Ok(r)) => r,
        Some(Err(())) => {
            let mut resp =
                error(StatusCode::RANGE_NOT_SATISFIABLE, "UNKNOWN", "range not satisfiable", ErrorType::Mirror);
            resp.headers_mut().insert(header::CONTENT_RANGE, header_value(&format!("bytes */{len}")));
            return resp;
        }
    };
    let (start, end) = range.unwrap_or((0, len));
    let mut resp =
        if req.method == Method::HEAD { empty(StatusCode::OK) } else { Response::new(body(handle, start, end)) };
    if let Some((s, e)) = range {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(header::CONTENT_RANGE, header_value(&format!("bytes {s}-{}/{len}", e - 1)));
    }
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, header_value(&(end - start).to_string()));
    h.insert(header::CONTENT_TYPE, header_value(&media_type));
    if let Some(digest) = digest {
        h.insert("docker-content-digest", header_value(&digest.to_string()));
        h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    resp
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The request the task reads the upstream with: the client's credentials, if any, ride
/// along (a private registry serves nothing without them).
fn origin_request(
    upstream: &url::Url,
    path: &str,
    kind: Kind,
    digest: &FileDigest,
    req: &Parts,
) -> Result<OriginRequest, String> {
    let url = upstream.join(path).map_err(|e| e.to_string())?;
    let mut headers = vec![];
    if let Some(auth) = req.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        headers.push(("Authorization".to_owned(), auth.to_owned()));
    }
    if kind == Kind::Manifest {
        headers.push(("Accept".to_owned(), MANIFEST_TYPES.to_owned()));
    }
    OriginRequest::new(url, headers, Some(digest.clone()), vec![]).map_err(|e| e.to_string())
}

/// Joins (or starts) the digest's task and waits until it is complete.
pub(crate) async fn complete(
    ctx: &Arc<Ctx>,
    id: TaskId,
    request: &OriginRequest,
    idle: Duration,
) -> Result<Arc<TaskHandle>, Arc<DaemonError>> {
    let mut restarts = 0;
    loop {
        let piece_size = ctx.env.opts.piece_size.unwrap_or(0);
        let handle = ctx.start_task(id, request.clone(), false, piece_size);
        match wait(&handle, idle).await {
            Ok(()) => return Ok(handle),
            Err(e) if restarts < crate::ctx::MAX_RESTARTS && crate::ctx::not_its_own(&e, &handle, request) => {
                restarts += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits for the task's outcome; gives up after `idle` without progress.
async fn wait(handle: &TaskHandle, idle: Duration) -> Result<(), Arc<DaemonError>> {
    let mut watch = handle.progress.subscribe();
    loop {
        if let Some(o) = watch.borrow_and_update().outcome.clone() {
            return o;
        }
        match tokio::time::timeout(idle, watch.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Arc::new(DaemonError::ShuttingDown)),
            // Nothing at all yet: the registry has not answered. Else the download stalled.
            Err(_) if handle.content.get().is_none() => return Err(Arc::new(DaemonError::OriginSilent(idle))),
            Err(_) => return Err(Arc::new(DaemonError::Timeout(idle))),
        }
    }
}

/// The answer to a request the task could not serve: the upstream's own answer when it
/// refused this client or does not know the content, else ours.
async fn refused(m: &Mirror, upstream: &url::Url, req: &Parts, path: &str, e: &DaemonError) -> Response {
    let status = e.failure().http_status;
    if matches!(status, 401 | 403 | 404 | 429) {
        if let Some(answer) = passthrough::upstream_answer(m, upstream, &req.headers, path).await {
            return answer;
        }
    }
    tracing::info!(error = %e, "mirror request failed");
    let msg = e.to_string();
    match e {
        DaemonError::Origin(_) | DaemonError::OriginRemote(_) | DaemonError::OriginChanged(_) => {
            error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &msg, ErrorType::Upstream)
        }
        DaemonError::DigestMismatch { .. } => error(
            StatusCode::BAD_GATEWAY,
            "DIGEST_INVALID",
            &format!("the upstream's content does not match its digest: {msg}"),
            ErrorType::Upstream,
        ),
        DaemonError::OriginSilent(_) => error(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", &msg, ErrorType::Upstream),
        DaemonError::Timeout(_) => error(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", &msg, ErrorType::P2p),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &msg, ErrorType::P2p),
    }
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` as `[start, end)`; `Ok(None)` for a form not served
/// as a range (several ranges: the whole body comes back).
fn parse_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| ())?, b.parse().map_err(|_| ())?);
            (a, (b + 1).min(len))
        }
    };
    if start >= end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Bytes `[start, end)` of a complete task, read piece by piece from the cache, each piece
/// checked against the digest it was verified with when it was stored.
fn body(handle: Arc<TaskHandle>, start: u64, end: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut at = start;
        while at < end {
            let h = handle.clone();
            let read = tokio::task::spawn_blocking(move || read_checked(&h, at, end)).await;
            let chunk = read.unwrap_or_else(|e| Err(e.to_string())).map_err(std::io::Error::other);
            let n = chunk.as_ref().map_or(0, |c| c.len() as u64);
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
            at += n;
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The rest of the piece holding `at`, up to `end`.
fn read_checked(handle: &TaskHandle, at: u64, end: u64) -> Result<Bytes, String> {
    let content = handle.content.get().ok_or("the task has no content")?;
    let layout = *content.file.layout();
    let idx = layout.index((at / layout.piece_size() as u64) as u32).map_err(|e| e.to_string())?;
    let piece = content.file.read_piece(idx).map_err(|e| e.to_string())?;
    let recorded = content.avail.digest(idx.get()).ok_or("piece not held")?;
    if PieceDigest::of(&piece).0 != recorded {
        return Err(format!("piece {} of the cache no longer matches its digest", idx.get()));
    }
    let from = (at - layout.offset(idx)) as usize;
    let to = ((end - layout.offset(idx)) as usize).min(piece.len());
    Ok(Bytes::from(piece).slice(from..to))
}

pub(super) async fn read_range(handle: Arc<TaskHandle>, start: u64, end: u64) -> Result<Vec<u8>, String> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut at = start;
        while at < end {
            let c = read_checked(&handle, at, end)?;
            at += c.len() as u64;
            out.extend_from_slice(&c);
        }
        Ok(out)
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=95-200", 100), Ok(Some((95, 100))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=9-3", 100), Err(()));
        assert_eq!(parse_range("bytes=x-3", 100), Err(()));
    }
}
