//! A small HTTP origin for the demo and the tests: serves in-memory files with range
//! support and validators (ETag, Last-Modified), counts every body byte it sends, and can
//! misbehave on purpose: fixed error statuses, a first few 500s, a bandwidth cap, and, by
//! path prefix, a token-protected file (`/private/`), a gzip-encoded body (`/gzip/`), a
//! first response cut half-way followed by shifted ranges (`/shifted/`) or by other
//! content under another ETag (`/changing/`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct OriginStats {
    pub bytes_served: AtomicU64,
    pub requests: AtomicU64,
    /// Response bodies being sent now, and the most there ever were at once.
    pub active: AtomicU64,
    pub max_active: AtomicU64,
}

/// One response body in flight: counted while it lives.
struct Active(Arc<OriginStats>);

impl Active {
    fn new(stats: Arc<OriginStats>) -> Self {
        let now = stats.active.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_active.fetch_max(now, Ordering::SeqCst);
        Self(stats)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Debug, Default)]
pub struct OriginOptions {
    /// Bytes per second per response; none means as fast as possible.
    pub throttle: Option<u64>,
    /// Answer this many file requests with 500 before serving normally.
    pub fail_first: u32,
    /// `/private/<name>` requires `Authorization: Bearer <token>` (401 without, 403 wrong).
    pub token: Option<String>,
}

/// How a route serves a file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Private,
    Gzip,
    Shifted,
    Changing,
}

struct Inner {
    files: std::sync::RwLock<HashMap<String, Bytes>>,
    stats: Arc<OriginStats>,
    opts: OriginOptions,
    failures_left: AtomicU32,
    /// Files of `/shifted/` and `/changing/` whose first response was already cut.
    cut: std::sync::Mutex<std::collections::HashSet<String>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub stats: Arc<OriginStats>,
    inner: Arc<Inner>,
    cancel: CancellationToken,
}

impl Origin {
    /// Serves `files` at `/files/<name>`; `/status/<code>` answers with that status.
    pub async fn start(files: HashMap<String, Bytes>, opts: OriginOptions) -> std::io::Result<Self> {
        Self::start_on(([127, 0, 0, 1], 0).into(), files, opts).await
    }

    pub async fn start_on(
        addr: SocketAddr,
        files: HashMap<String, Bytes>,
        opts: OriginOptions,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(OriginStats::default());
        let inner = Arc::new(Inner {
            files: std::sync::RwLock::new(files),
            stats: stats.clone(),
            failures_left: AtomicU32::new(opts.fail_first),
            opts,
            cut: Default::default(),
        });
        let route = |mode: Mode| {
            move |state: State<Arc<Inner>>, name: Path<String>, headers: HeaderMap| {
                serve_file(state, name, headers, mode)
            }
        };
        let app = Router::new()
            .route("/files/*name", get(route(Mode::Plain)))
            .route("/private/*name", get(route(Mode::Private)))
            .route("/gzip/*name", get(route(Mode::Gzip)))
            .route("/shifted/*name", get(route(Mode::Shifted)))
            .route("/changing/*name", get(route(Mode::Changing)))
            .route("/status/:code", get(serve_status))
            .with_state(inner.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Ok(Self { addr, stats, inner, cancel })
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/files/{name}", self.addr)
    }

    /// The file under another route: `private`, `gzip`, `shifted` or `changing`.
    pub fn url_as(&self, route: &str, name: &str) -> String {
        format!("http://{}/{route}/{name}", self.addr)
    }

    pub fn status_url(&self, code: u16) -> String {
        format!("http://{}/status/{code}", self.addr)
    }

    /// Serves other bytes under `name` from now on (a new version of the object).
    pub fn replace(&self, name: &str, bytes: Bytes) {
        self.inner.files.write().expect("not poisoned").insert(name.to_owned(), bytes);
    }

    pub fn bytes_served(&self) -> u64 {
        self.stats.bytes_served.load(Ordering::Relaxed)
    }

    /// The most response bodies the origin was sending at once.
    pub fn max_concurrent(&self) -> u64 {
        self.stats.max_active.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn serve_status(Path(code): Path<u16>) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Parses `bytes=a-` or `bytes=a-b` against the file length.
fn range(headers: &HeaderMap, len: u64) -> Option<(u64, u64)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?.strip_prefix("bytes=")?;
    let (a, b) = v.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end: u64 = if b.is_empty() { len.checked_sub(1)? } else { b.parse::<u64>().ok()?.min(len.checked_sub(1)?) };
    (start <= end).then_some((start, end))
}

fn authorized(o: &Inner, headers: &HeaderMap) -> Result<(), StatusCode> {
    let Some(token) = &o.opts.token else { return Ok(()) };
    match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        None => Err(StatusCode::UNAUTHORIZED),
        Some(v) if v == format!("Bearer {token}") => Ok(()),
        Some(_) => Err(StatusCode::FORBIDDEN),
    }
}

async fn serve_file(State(o): State<Arc<Inner>>, Path(name): Path<String>, headers: HeaderMap, mode: Mode) -> Response {
    o.stats.requests.fetch_add(1, Ordering::Relaxed);
    if o.failures_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if mode == Mode::Private {
        if let Err(s) = authorized(&o, &headers) {
            return s.into_response();
        }
    }
    let Some(mut file) = o.files.read().expect("not poisoned").get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The first response of a cutting route stops half-way; what comes after differs.
    let cut_now = matches!(mode, Mode::Shifted | Mode::Changing)
        && o.cut.lock().expect("not poisoned").insert(format!("{}:{name}", mode as u8));
    if mode == Mode::Changing && !cut_now {
        file = file.iter().map(|b| b ^ 0xff).collect::<Vec<u8>>().into();
    }
    let len = file.len() as u64;
    let etag = format!("\"{}\"", &blake3::hash(&file).to_hex()[..16]);
    let (status, body, content_range) = match range(&headers, len) {
        Some((s, e)) if mode == Mode::Shifted && s < e => (
            StatusCode::PARTIAL_CONTENT,
            file.slice(s as usize + 1..=e as usize),
            Some(format!("bytes {}-{e}/{len}", s + 1)),
        ),
        Some((s, e)) => {
            (StatusCode::PARTIAL_CONTENT, file.slice(s as usize..=e as usize), Some(format!("bytes {s}-{e}/{len}")))
        }
        None if headers.contains_key(header::RANGE) && len > 0 => {
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))])
                .into_response()
        }
        None => (StatusCode::OK, file, None),
    };
    let body_len = body.len();
    let stats = o.stats.clone();
    let throttle = o.opts.throttle;
    let cut_at = if cut_now { body_len / 2 } else { usize::MAX };
    const CHUNK: usize = 64 * 1024;
    // Dropped with the stream: when the body is sent, or the client went away.
    let active = Arc::new(Active::new(stats.clone()));
    let stream = futures::stream::unfold(0usize, move |at| {
        let (body, stats, _active) = (body.clone(), stats.clone(), active.clone());
        async move {
            if at >= body.len() {
                return None;
            }
            if at >= cut_at {
                return Some((Err(std::io::Error::other("cut on purpose")), usize::MAX));
            }
            let end = (at + CHUNK).min(body.len());
            if let Some(rate) = throttle {
                tokio::time::sleep(Duration::from_secs_f64((end - at) as f64 / rate as f64)).await;
            }
            stats.bytes_served.fetch_add((end - at) as u64, Ordering::Relaxed);
            Some((Ok::<_, std::io::Error>(body.slice(at..end)), end))
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, body_len.into());
    h.insert(header::ACCEPT_RANGES, "bytes".parse().expect("valid header"));
    h.insert(header::ETAG, etag.parse().expect("valid header"));
    h.insert(header::LAST_MODIFIED, "Mon, 30 Nov 2026 00:00:00 GMT".parse().expect("valid header"));
    if mode == Mode::Gzip {
        h.insert(header::CONTENT_ENCODING, "gzip".parse().expect("valid header"));
    }
    if let Some(cr) = content_range {
        h.insert(header::CONTENT_RANGE, cr.parse().expect("valid header"));
    }
    resp
}
