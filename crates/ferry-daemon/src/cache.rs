//! Files put into the cluster from this host (`ferry cache import|stat|rm`), what the
//! incumbent calls a persistent cache.
//!
//! An imported file is a task named by its sha256 and requested by `ferry:<digest>`: it has
//! no origin. The importer copies the file into its store with the piece digests, and
//! registers it like any finished task; then the task's scheduler has `--replicas` seeds
//! download it from the hosts that hold it (checking the digest that names it) and pin it
//! for `--ttl`: the collector leaves a pinned task alone until then. The importer may go
//! away once the replicas hold it; `ferry cache export` on any host is a download of the
//! digest from whoever holds it. A pinned task is registered again when its daemon starts.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::daemon::{CacheHolder, CacheImportRequest, CacheImportResponse, CacheStatResponse};
use ferry_proto::scheduler::{DropTaskRequest, ReplicateRequest, ReplicateTask, TaskHoldersRequest};
use ferry_storage::{PieceStore, Pin, TaskRecord};
use ferry_types::{
    cache_url, DigestAlgo, FileDigest, FileHasher, OriginRequest, PieceDigest, PieceLayout, TaskId, TaskIdInput,
};

use crate::ctx::Ctx;
use crate::gc::now_unix;
use crate::DaemonError;

/// How long an imported task may take to reach its scheduler before the import gives up.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// The request every host uses for an imported file.
pub fn request(digest: &FileDigest) -> OriginRequest {
    OriginRequest::new(cache_url(digest), vec![], Some(digest.clone()), vec![]).expect("no headers to refuse")
}

fn task_of(digest: &FileDigest) -> TaskId {
    TaskId::derive(&TaskIdInput { digest: Some(digest), ..Default::default() })
}

pub fn parse_digest(s: &str) -> Result<FileDigest, DaemonError> {
    let d: FileDigest = s.parse().map_err(|e: ferry_types::ParseError| DaemonError::BadRequest(e.to_string()))?;
    Ok(d)
}

/// `ferry cache import`: stores the file, registers it, and waits for the replicas.
pub async fn import(ctx: &Arc<Ctx>, req: CacheImportRequest) -> Result<CacheImportResponse, DaemonError> {
    let path = std::path::PathBuf::from(&req.path);
    if !path.is_absolute() {
        return Err(DaemonError::BadRequest(format!("`{}` is not an absolute path", req.path)));
    }
    let ttl = req.ttl_seconds;
    let c = ctx.clone();
    let (id, digest, layout) = tokio::task::spawn_blocking(move || store_file(&c, &path, ttl))
        .await
        .map_err(|e| DaemonError::BadRequest(format!("import stopped: {e}")))??;
    tracing::info!(task = ?id, %digest, bytes = layout.content_length(), "file imported; registering it");
    let handle = ctx.start_task(id, request(&digest), false, layout.piece_size());
    let mut progress = handle.progress.subscribe();
    let outcome = progress
        .wait_for(|p| p.outcome.is_some())
        .await
        .map(|p| p.outcome.clone())
        .map_err(|_| DaemonError::ShuttingDown)?;
    if let Some(Err(e)) = outcome {
        return Err(DaemonError::OriginRemote(e.failure()));
    }
    wait_registered(ctx, id).await?;
    let mut replicas = vec![];
    if req.replicas > 0 {
        let (addr, mut client) = ctx.schedulers.pick(&id);
        let replicate = ReplicateRequest {
            task_id: id.0.to_vec(),
            digest: digest.to_string(),
            replicas: req.replicas,
            ttl_seconds: ttl,
            timeout_millis: req.timeout_millis,
            host_id: ctx.env.opts.host_id.to_string(),
        };
        let timeout = Duration::from_millis(req.timeout_millis);
        let holders =
            client.replicate(replicate).await.map_err(|s| replicate_error(&addr, s, timeout))?.into_inner().holders;
        replicas = holders.into_iter().map(|h| h.host_id).collect();
    }
    Ok(CacheImportResponse {
        digest: digest.to_string(),
        task_id: id.to_string(),
        content_length: layout.content_length(),
        replicas,
    })
}

/// The scheduler's refusal as this host's error: too few seeds is the caller's to fix; a
/// replication the scheduler gave up on (a seed left or failed) is its own error.
fn replicate_error(addr: &str, s: tonic::Status, timeout: Duration) -> DaemonError {
    match s.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
            DaemonError::BadRequest(s.message().to_owned())
        }
        tonic::Code::DeadlineExceeded => DaemonError::Timeout(timeout),
        tonic::Code::Aborted => DaemonError::Replication(s.message().to_owned()),
        _ => DaemonError::NoScheduler(format!("{addr}: {}", s.message())),
    }
}

/// Waits until the task's scheduler lists this host as holding the whole task.
async fn wait_registered(ctx: &Arc<Ctx>, id: TaskId) -> Result<(), DaemonError> {
    let me = ctx.env.opts.host_id.to_string();
    let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
    loop {
        let (addr, mut client) = ctx.schedulers.pick(&id);
        let answer = client.task_holders(TaskHoldersRequest { task_id: id.0.to_vec() }).await;
        match answer {
            Ok(r) if r.get_ref().holders.iter().any(|h| h.host_id == me && h.complete) => return Ok(()),
            Ok(_) => {}
            Err(s) if tokio::time::Instant::now() >= deadline => {
                return Err(DaemonError::NoScheduler(format!("{addr}: {}", s.message())))
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DaemonError::NoScheduler(format!(
                "{addr} did not list the imported task within {REGISTER_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Copies the file into the store as a complete task named by its sha256, with every
/// piece's digest, and pins it for `ttl` seconds (0: not pinned). Reads the file twice: once
/// for the digest that names the task, once to store it while the digest is checked again
/// (a file that changed in between is refused, and nothing of it stays).
fn store_file(ctx: &Ctx, path: &Path, ttl: u64) -> Result<(TaskId, FileDigest, PieceLayout), DaemonError> {
    let open_err = |e: std::io::Error| DaemonError::BadRequest(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(DaemonError::BadRequest(format!("{} is not a regular file", path.display())));
    }
    let len = meta.len();
    if len == 0 {
        return Err(DaemonError::BadRequest(format!("{} is empty: nothing to import", path.display())));
    }
    let digest = sha256_of(&file, len).map_err(open_err)?;
    let id = task_of(&digest);
    let layout = match ctx.env.opts.piece_size {
        Some(ps) => PieceLayout::new(len, ps).map_err(|e| DaemonError::BadRequest(e.to_string()))?,
        None => PieceLayout::for_length(len),
    };
    let store = &ctx.env.store;
    let existed = store.task_record(id)?;
    let layout = match &existed {
        // Held already (imported before, or fetched as a blob): keep its layout.
        Some(r) => PieceLayout::new(r.content_length, r.piece_size).unwrap_or(layout),
        None => {
            ctx.env.gc.admit(len, now_unix());
            layout
        }
    };
    let record = TaskRecord {
        url: cache_url(&digest).to_string(),
        content_length: len,
        piece_size: layout.piece_size(),
        ..Default::default()
    };
    let copied = copy_pieces(ctx, &file, id, &record).map_err(|e| match e {
        CopyError::Io(e) => open_err(e),
        CopyError::Daemon(e) => e,
    });
    let failure = match copied {
        Ok(d) if d == digest => None,
        Ok(d) => Some(DaemonError::BadRequest(format!(
            "{} changed while it was imported ({digest}, then {d}); import it again once it is written",
            path.display()
        ))),
        Err(e) => Some(e),
    };
    if let Some(e) = failure {
        // What this import added goes; a task held before stays (its pieces were verified).
        if existed.is_none() {
            let _ = store.remove_task(id);
        }
        return Err(e);
    }
    if ttl > 0 {
        store.pin(id, &Pin { until: now_unix().saturating_add(ttl), digest: digest.to_string() })?;
    }
    Ok((id, digest, layout))
}

enum CopyError {
    Io(std::io::Error),
    Daemon(DaemonError),
}

impl From<ferry_storage::StorageError> for CopyError {
    fn from(e: ferry_storage::StorageError) -> Self {
        Self::Daemon(e.into())
    }
}

/// Writes every piece of `file` the store does not hold yet, with its digest; returns the
/// sha256 of what it read.
fn copy_pieces(ctx: &Ctx, file: &std::fs::File, id: TaskId, record: &TaskRecord) -> Result<FileDigest, CopyError> {
    let store = &ctx.env.store;
    let (content, held) = store.open_task(id, record)?;
    let held: std::collections::HashSet<u32> = held.iter().map(|(i, _)| i.get()).collect();
    let layout = *content.layout();
    let mut check = FileHasher::new(DigestAlgo::Sha256, layout.content_length());
    let mut buf = vec![];
    for index in layout.indices() {
        buf.resize(layout.len(index) as usize, 0);
        file.read_exact_at(&mut buf, layout.offset(index)).map_err(CopyError::Io)?;
        check.update(&buf);
        if !held.contains(&index.get()) {
            content.write_piece(index, &buf)?;
            store.record_piece(id, index, PieceDigest::of(&buf))?;
        }
    }
    Ok(check.finish())
}

fn sha256_of(file: &std::fs::File, len: u64) -> std::io::Result<FileDigest> {
    let mut h = FileHasher::new(DigestAlgo::Sha256, len);
    let mut buf = vec![0u8; 1 << 20];
    let mut reader = file;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// `ferry cache stat`: the hosts holding the task, as its scheduler knows them.
pub async fn stat(ctx: &Arc<Ctx>, digest: &FileDigest) -> Result<CacheStatResponse, DaemonError> {
    let id = task_of(digest);
    let (addr, mut client) = ctx.schedulers.pick(&id);
    let r = client
        .task_holders(TaskHoldersRequest { task_id: id.0.to_vec() })
        .await
        .map_err(|s| DaemonError::NoScheduler(format!("{addr}: {}", s.message())))?
        .into_inner();
    if r.holders.is_empty() {
        return Err(DaemonError::Origin(ferry_backend::BackendError::NotInCluster(digest.to_string())));
    }
    let holders = r
        .holders
        .into_iter()
        .map(|h| CacheHolder { host_id: h.host_id, seed: h.seed, complete: h.complete, pinned_until: h.pinned_until })
        .collect();
    Ok(CacheStatResponse { task_id: id.to_string(), content_length: r.content_length, holders })
}

/// `ferry cache rm`: drops the task here and has the scheduler tell every holder to.
pub async fn remove(ctx: &Arc<Ctx>, digest: &FileDigest) -> Result<Vec<String>, DaemonError> {
    let id = task_of(digest);
    let (addr, mut client) = ctx.schedulers.pick(&id);
    let told = client
        .drop_task(DropTaskRequest { task_id: id.0.to_vec() })
        .await
        .map_err(|s| DaemonError::NoScheduler(format!("{addr}: {}", s.message())))?
        .into_inner()
        .hosts;
    let gc = ctx.env.gc.clone();
    let here = tokio::task::spawn_blocking(move || gc.remove(id)).await.unwrap_or(false);
    let mut hosts = told;
    let me = ctx.env.opts.host_id.to_string();
    if here && !hosts.contains(&me) {
        hosts.push(me);
    }
    if hosts.is_empty() {
        return Err(DaemonError::Origin(ferry_backend::BackendError::NotInCluster(digest.to_string())));
    }
    Ok(hosts)
}

/// A scheduler's order to this seed: fetch an imported file from the hosts that hold it,
/// and keep it for the import's TTL. An order whose digest does not name its task is dropped.
pub fn replicate_order(ctx: &Arc<Ctx>, order: ReplicateTask) {
    let (Some(id), Ok(digest)) = (TaskId::from_slice(&order.task_id), parse_digest(&order.digest)) else {
        tracing::warn!("dropping a malformed replicate order");
        return;
    };
    if task_of(&digest) != id {
        tracing::warn!(task = ?id, "dropping a replicate order whose digest does not name its task");
        return;
    }
    let pin = Pin { until: now_unix().saturating_add(order.ttl_seconds), digest: digest.to_string() };
    if order.ttl_seconds > 0 {
        if let Err(e) = ctx.env.store.pin(id, &pin) {
            tracing::warn!(task = ?id, error = %e, "cannot pin the task");
        }
    }
    tracing::info!(task = ?id, %digest, ttl = order.ttl_seconds, "replicating an imported file");
    ctx.start_task(id, request(&digest), false, 0);
}

/// Registers every task pinned here, so they have holders again as soon as the daemon is up
/// (other tasks wait for a request).
pub fn announce_pinned(ctx: &Arc<Ctx>) {
    let pins = match ctx.env.store.pins() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list pinned tasks");
            return;
        }
    };
    let now = now_unix();
    let mut n = 0;
    for (id, pin) in pins.into_iter().filter(|(_, p)| p.until > now) {
        let Ok(digest) = parse_digest(&pin.digest) else { continue };
        if task_of(&digest) == id {
            ctx.start_task(id, request(&digest), false, 0);
            n += 1;
        }
    }
    if n > 0 {
        tracing::info!(tasks = n, "registered pinned tasks");
    }
}
