//! A model hub for tests: the Hugging Face API as clients use it (`huggingface_hub`'s
//! `snapshot_download` works against it), with repositories held in memory.
//!
//! - `GET /api/{models|datasets}/{owner}/{repo}/revision/{rev}`: the commit id a branch (or
//!   commit) names and its files (`siblings`, with size and LFS sha256).
//! - `GET|HEAD /[datasets/]{owner}/{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`, `ETag`;
//!   small files served here, LFS files redirected (302) to a second listener — the "CDN",
//!   another host:port — with `X-Linked-Etag` / `X-Linked-Size`.
//!
//! The same repositories answer the ModelScope API too ([`crate::modelscope`]).
//!
//! It counts body bytes served per file, records whether the CDN ever saw an
//! `Authorization` header, can require a token, and can serve an LFS file corrupted.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// A file of a commit, with its digests computed once (requests look files up by them).
#[derive(Clone)]
pub struct HubFile {
    pub path: String,
    pub bytes: Bytes,
    /// Stored in LFS: redirected to the CDN, listed with its sha256.
    pub lfs: bool,
    sha256: String,
    git_oid: String,
}

impl HubFile {
    pub fn new(path: &str, bytes: impl Into<Bytes>, lfs: bool) -> Self {
        let bytes = bytes.into();
        let sha256 = hex(&Sha256::digest(&bytes));
        // Git's blob id: SHA-1 over `blob <len>\0` and the bytes.
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", bytes.len()).as_bytes());
        h.update(&bytes);
        Self { path: path.into(), bytes, lfs, sha256, git_oid: hex(&h.finalize()) }
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn git_oid(&self) -> &str {
        &self.git_oid
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Default)]
pub(crate) struct Repo {
    pub(crate) branches: HashMap<String, String>,
    pub(crate) commits: HashMap<String, Vec<HubFile>>,
}

#[derive(Default)]
pub(crate) struct Hub {
    /// By `kind/owner/name` (`models/org/model`).
    pub(crate) repos: Mutex<HashMap<String, Repo>>,
    token: Option<String>,
    cdn: Mutex<String>,
    /// Body bytes served, by file sha256.
    served: Mutex<HashMap<String, u64>>,
    corrupt: Mutex<HashSet<String>>,
    cdn_saw_auth: AtomicBool,
}

pub struct HubServer {
    pub addr: SocketAddr,
    pub cdn_addr: SocketAddr,
    hub: Arc<Hub>,
    tls: bool,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HubServer {
    /// Starts the hub and its CDN on loopback; with `token`, every hub request must carry
    /// `Authorization: Bearer <token>`.
    pub async fn start(token: Option<&str>) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), token).await
    }

    /// The hub on `addr`, its CDN on the same IP (any port).
    pub async fn start_on(addr: SocketAddr, token: Option<&str>) -> std::io::Result<Self> {
        let hub = Arc::new(Hub { token: token.map(str::to_owned), ..Default::default() });
        let l = tokio::net::TcpListener::bind(addr).await?;
        let cdn = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
        let (addr, cdn_addr) = (l.local_addr()?, cdn.local_addr()?);
        *hub.cdn.lock().unwrap() = format!("http://{cdn_addr}");
        let app = axum::Router::new().fallback(serve_hub).with_state(hub.clone());
        let cdn_app = axum::Router::new().fallback(serve_cdn).with_state(hub.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(cdn, cdn_app).await;
            }),
        ];
        Ok(Self { addr, cdn_addr, hub, tls: false, _tasks: tasks })
    }

    /// The hub over HTTPS (the ModelScope client speaks nothing else), with a CA made in
    /// `dir` (its certificate at the returned path); the CDN stays plain HTTP.
    pub async fn start_tls(token: Option<&str>, dir: &std::path::Path) -> std::io::Result<(Self, std::path::PathBuf)> {
        let tls = crate::tls::TestTls::new(dir)?;
        let hub = Arc::new(Hub { token: token.map(str::to_owned), ..Default::default() });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let cdn = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (addr, cdn_addr) = (l.local_addr()?, cdn.local_addr()?);
        *hub.cdn.lock().unwrap() = format!("http://{cdn_addr}");
        let app = axum::Router::new().fallback(serve_hub).with_state(hub.clone());
        let cdn_app = axum::Router::new().fallback(serve_cdn).with_state(hub.clone());
        let tasks = vec![
            tokio::spawn(crate::tls::serve(l, tls.config, app)),
            tokio::spawn(async move {
                let _ = axum::serve(cdn, cdn_app).await;
            }),
        ];
        Ok((Self { addr, cdn_addr, hub, tls: true, _tasks: tasks }, tls.ca_pem))
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Commits `files` (the whole tree) to `repo` (`models/org/name`) on `branch`; returns
    /// the commit id.
    pub fn commit(&self, repo: &str, branch: &str, files: Vec<HubFile>) -> String {
        let mut h = Sha256::new();
        h.update(repo.as_bytes());
        for f in &files {
            h.update(f.path.as_bytes());
            h.update(f.sha256().as_bytes());
        }
        let sha = hex(&h.finalize())[..40].to_owned();
        let mut repos = self.hub.repos.lock().unwrap();
        let r = repos.entry(repo.to_owned()).or_default();
        r.commits.insert(sha.clone(), files);
        r.branches.insert(branch.to_owned(), sha.clone());
        sha
    }

    /// Body bytes served of the file with this content (hub and CDN together).
    pub fn served(&self, file: &HubFile) -> u64 {
        self.hub.served.lock().unwrap().get(file.sha256()).copied().unwrap_or(0)
    }

    /// Body bytes served of every file (hub and CDN together).
    pub fn served_total(&self) -> u64 {
        self.hub.served.lock().unwrap().values().sum()
    }

    /// From now on the CDN serves this file with one byte changed.
    pub fn corrupt(&self, file: &HubFile) {
        self.hub.corrupt.lock().unwrap().insert(file.sha256().to_owned());
    }

    pub fn cdn_saw_authorization(&self) -> bool {
        self.hub.cdn_saw_auth.load(Ordering::Relaxed)
    }
}

pub(crate) fn status(code: StatusCode, msg: &str) -> Response {
    (code, [("content-type", "application/json")], serde_json::json!({ "error": msg }).to_string()).into_response()
}

async fn serve_hub(State(hub): State<Arc<Hub>>, req: Request) -> Response {
    if let Some(t) = &hub.token {
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {t}")) {
            return status(StatusCode::UNAUTHORIZED, "Invalid credentials in Authorization header");
        }
    }
    let path = req.uri().path().to_owned();
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    if segs.first().map(String::as_str) == Some("api") {
        if segs.get(1).map(String::as_str) == Some("v1") {
            return crate::modelscope::serve(&hub, &segs[2..], &req);
        }
        return revision_info(&hub, &segs[1..]);
    }
    let (kind, rest) = match segs.first().map(String::as_str) {
        Some("datasets") => ("datasets", &segs[1..]),
        Some("spaces") => ("spaces", &segs[1..]),
        _ => ("models", &segs[..]),
    };
    if rest.len() < 5 || rest[2] != "resolve" {
        return status(StatusCode::NOT_FOUND, "no such route");
    }
    let repo = format!("{kind}/{}/{}", rest[0], rest[1]);
    let (rev, file_path) = (&rest[3], rest[4..].join("/"));
    let Some((commit, file)) = find(&hub, &repo, rev, Some(&file_path)) else {
        return status(StatusCode::NOT_FOUND, "Entry not found");
    };
    let file = file.expect("a file was asked for");
    let sha = file.sha256();
    let mut r = if file.lfs {
        let location = format!("{}/lfs/{sha}", hub.cdn.lock().unwrap());
        let mut r = StatusCode::FOUND.into_response();
        let h = r.headers_mut();
        h.insert("location", location.parse().unwrap());
        h.insert("x-linked-etag", format!("\"{sha}\"").parse().unwrap());
        h.insert("x-linked-size", file.bytes.len().into());
        r
    } else {
        body(&hub, &file, req.method(), req.headers(), false)
    };
    let h = r.headers_mut();
    h.insert("x-repo-commit", commit.parse().unwrap());
    h.insert("etag", format!("\"{}\"", file.git_oid()).parse().unwrap());
    r
}

/// The commit `rev` names in `repo`, and the file at `path` in it (when asked).
pub(crate) fn find(hub: &Hub, repo: &str, rev: &str, path: Option<&str>) -> Option<(String, Option<HubFile>)> {
    let repos = hub.repos.lock().unwrap();
    let r = repos.get(repo)?;
    let commit = r.branches.get(rev).cloned().or_else(|| r.commits.contains_key(rev).then(|| rev.to_owned()))?;
    let files = r.commits.get(&commit)?;
    match path {
        None => Some((commit, None)),
        Some(p) => files.iter().find(|f| f.path == p).map(|f| (commit.clone(), Some(f.clone()))),
    }
}

/// `/api/{kind}/{owner}/{repo}/revision/{rev}`.
fn revision_info(hub: &Hub, segs: &[String]) -> Response {
    if segs.len() != 5 || segs[3] != "revision" {
        return status(StatusCode::NOT_FOUND, "no such route");
    }
    let repo = format!("{}/{}/{}", segs[0], segs[1], segs[2]);
    let Some((commit, _)) = find(hub, &repo, &segs[4], None) else {
        return status(StatusCode::NOT_FOUND, "Repository or revision not found");
    };
    let repos = hub.repos.lock().unwrap();
    let files = &repos[&repo].commits[&commit];
    let siblings: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let mut s = serde_json::json!({ "rfilename": f.path, "size": f.bytes.len(), "blobId": f.git_oid() });
            if f.lfs {
                s["lfs"] = serde_json::json!({ "sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134 });
            }
            s
        })
        .collect();
    let id = format!("{}/{}", segs[1], segs[2]);
    let info = serde_json::json!({ "id": id, "modelId": id, "sha": commit, "private": false, "siblings": siblings });
    ([("content-type", "application/json")], info.to_string()).into_response()
}

async fn serve_cdn(State(hub): State<Arc<Hub>>, req: Request) -> Response {
    if req.headers().contains_key("authorization") {
        hub.cdn_saw_auth.store(true, Ordering::Relaxed);
    }
    let Some(sha) = req.uri().path().strip_prefix("/lfs/") else {
        return status(StatusCode::NOT_FOUND, "no such object");
    };
    let file = {
        let repos = hub.repos.lock().unwrap();
        repos.values().flat_map(|r| r.commits.values().flatten()).find(|f| f.lfs && f.sha256() == sha).cloned()
    };
    let Some(file) = file else { return status(StatusCode::NOT_FOUND, "no such object") };
    let corrupt = hub.corrupt.lock().unwrap().contains(sha);
    let mut r = body(&hub, &file, req.method(), req.headers(), corrupt);
    r.headers_mut().insert("etag", format!("\"{sha}\"").parse().unwrap());
    r
}

/// The file's bytes (or the asked range of them), counted.
pub(crate) fn body(hub: &Hub, file: &HubFile, method: &Method, headers: &HeaderMap, corrupt: bool) -> Response {
    let len = file.bytes.len();
    let range = headers.get("range").and_then(|v| v.to_str().ok()).and_then(|r| parse_range(r, len));
    let (start, end) = range.unwrap_or((0, len));
    let mut bytes = file.bytes.slice(start..end);
    if corrupt && !bytes.is_empty() {
        let mut v = bytes.to_vec();
        v[0] ^= 0xff;
        bytes = v.into();
    }
    let n = bytes.len();
    let mut r = if *method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        *hub.served.lock().unwrap().entry(file.sha256().to_owned()).or_default() += n as u64;
        Response::new(Body::from(bytes))
    };
    let h = r.headers_mut();
    h.insert("content-length", n.into());
    h.insert("accept-ranges", "bytes".parse().unwrap());
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let v = format!("bytes {start}-{}/{len}", end - 1);
        r.headers_mut().insert("content-range", v.parse().unwrap());
    }
    r
}

/// `bytes=a-b` or `bytes=a-` as `[start, end)`.
fn parse_range(h: &str, len: usize) -> Option<(usize, usize)> {
    let (a, b) = h.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = a.parse().ok()?;
    let end = if b.is_empty() { len } else { (b.parse::<usize>().ok()? + 1).min(len) };
    (start < end).then_some((start, end))
}
