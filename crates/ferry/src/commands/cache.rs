//! `ferry cache import|export|stat|rm`: files put into the cluster from a host, through the
//! local daemon (which does the work: see `ferry_daemon::cache`).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferry_proto::daemon::{CacheImportRequest, CacheRemoveRequest, CacheStatRequest, DownloadRequest};
use ferry_types::FileDigest;

use super::get::{download, exit_for, output_file};
use crate::cli::{CacheCommand, CacheDigestArgs, CacheExportArgs, CacheImportArgs};
use crate::{exit, Exit};

pub async fn run(c: CacheCommand) -> Result<(), Exit> {
    let (json, result) = match c {
        CacheCommand::Import(a) => (a.json, import(&a).await),
        CacheCommand::Export(a) => (a.json, export(&a).await),
        CacheCommand::Stat(a) => (a.json, stat(&a).await),
        CacheCommand::Rm(a) => (a.json, rm(&a).await),
    };
    match result {
        Ok(out) if json => println!("{out}"),
        Ok(_) => {}
        Err(e) if json => {
            println!("{}", serde_json::json!({ "error": e.message, "exit_code": e.code }));
            return Err(e);
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

fn digest(s: &str) -> Result<FileDigest, Exit> {
    s.parse().map_err(|e: ferry_types::ParseError| Exit::new(exit::USAGE, e.to_string()))
}

async fn connect(
    socket: &std::path::Path,
) -> Result<ferry_proto::daemon::daemon_client::DaemonClient<tonic::transport::Channel>, Exit> {
    ferry_daemon::local::connect(socket).await.map_err(|m| Exit::new(exit::NO_DAEMON, m))
}

async fn import(a: &CacheImportArgs) -> Result<serde_json::Value, Exit> {
    let path =
        super::get::absolute(&a.file).map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", a.file.display())))?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(Exit::new(exit::USAGE, format!("{} is not a regular file", path.display()))),
        Err(e) => return Err(Exit::new(exit::USAGE, format!("cannot read {}: {e}", path.display()))),
    }
    let started = Instant::now();
    let mut client = connect(&a.socket).await?;
    let req = CacheImportRequest {
        path: path.display().to_string(),
        replicas: a.replicas,
        ttl_seconds: a.ttl.as_secs(),
        timeout_millis: a.timeout.as_millis() as u64,
    };
    let r = client.cache_import(req).await.map_err(|s| exit_for(&s))?.into_inner();
    if !a.json {
        println!("{}", r.digest);
        eprintln!(
            "{} bytes imported; held by this host and {} seed(s): {}",
            r.content_length,
            r.replicas.len(),
            r.replicas.join(", ")
        );
    }
    Ok(serde_json::json!({
        "digest": r.digest,
        "task_id": r.task_id,
        "bytes": r.content_length,
        "replicas": r.replicas,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

async fn export(a: &CacheExportArgs) -> Result<serde_json::Value, Exit> {
    let d = digest(&a.digest)?;
    let output = output_file(&a.output)?;
    let started = Instant::now();
    let mut client = connect(&a.socket).await?;
    let req = DownloadRequest {
        url: ferry_types::cache_url(&d).to_string(),
        output: output.display().to_string(),
        digest: d.to_string(),
        timeout_millis: a.timeout.map_or(0, |t| t.as_millis() as u64),
        ..Default::default()
    };
    let p = download(&mut client, req, &a.socket, None).await?;
    Ok(serde_json::json!({
        "digest": d.to_string(),
        "task_id": p.task_id,
        "output": output,
        "bytes": p.content_length,
        "bytes_from_peers": p.bytes_from_peers,
        "bytes_from_cache": p.bytes_from_cache,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

async fn stat(a: &CacheDigestArgs) -> Result<serde_json::Value, Exit> {
    let d = digest(&a.digest)?;
    let mut client = connect(&a.socket).await?;
    let r = client.cache_stat(CacheStatRequest { digest: d.to_string() }).await.map_err(|s| exit_for(&s))?.into_inner();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_secs());
    if !a.json {
        println!("{d}: {} bytes, task {}", r.content_length, r.task_id);
        for h in &r.holders {
            let role = if h.seed { "seed" } else { "peer" };
            let state = if h.complete { "complete" } else { "partial" };
            let kept = match h.pinned_until.checked_sub(now) {
                Some(left) if left > 0 => format!("kept {}h{:02}m more", left / 3600, left % 3600 / 60),
                _ => "ordinary cache".to_owned(),
            };
            println!("  {:<24} {role} {state:<8} {kept}", h.host_id);
        }
    }
    let holders: Vec<serde_json::Value> = r
        .holders
        .iter()
        .map(|h| {
            serde_json::json!({
                "host_id": h.host_id, "seed": h.seed, "complete": h.complete, "pinned_until": h.pinned_until,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "digest": d.to_string(), "task_id": r.task_id, "bytes": r.content_length, "holders": holders,
    }))
}

async fn rm(a: &CacheDigestArgs) -> Result<serde_json::Value, Exit> {
    let d = digest(&a.digest)?;
    let mut client = connect(&a.socket).await?;
    let r =
        client.cache_remove(CacheRemoveRequest { digest: d.to_string() }).await.map_err(|s| exit_for(&s))?.into_inner();
    if !a.json {
        println!("{d}: dropped by {} host(s): {}", r.hosts.len(), r.hosts.join(", "));
    }
    Ok(serde_json::json!({ "digest": d.to_string(), "hosts": r.hosts }))
}
