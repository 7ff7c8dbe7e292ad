//! Many files into one directory, each its own download through the daemon: a bounded
//! number at once, every file tried even when others fail, a file already complete and
//! verified left alone, one report line per file (or JSON), and a failure exit when any
//! file failed.

use std::path::{Component, Path, PathBuf};

use ferry_proto::daemon::daemon_client::DaemonClient;
use ferry_proto::daemon::DownloadRequest;
use ferry_types::FileDigest;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::cli::GetArgs;
use crate::{exit, Exit};

/// One file to fetch.
pub struct Job {
    /// Its path as the report names it (relative to the output directory).
    pub path: String,
    pub output: PathBuf,
    pub request: DownloadRequest,
    pub size: Option<u64>,
    pub digest: Option<FileDigest>,
}

pub struct Outcome {
    pub path: String,
    pub result: Result<Fetched, Exit>,
}

pub enum Fetched {
    /// Already there, complete and verified against its digest.
    Present {
        bytes: u64,
    },
    Fetched(ferry_proto::daemon::DownloadProgress),
}

/// `name` as a relative path with no `..`, root or prefix: where a file an origin lists
/// may be written below the output directory.
pub fn safe_path(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    let ok = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    ok.then(|| p.to_owned())
}

/// Whether `path` passes `--include` (one of them, when any is given) and `--exclude` (none).
pub fn selected(a: &GetArgs, path: &str) -> bool {
    (a.include.is_empty() || a.include.iter().any(|g| glob(g, path))) && !a.exclude.iter().any(|g| glob(g, path))
}

/// A directory's files into `output`, reported: an empty selection is refused with
/// `nothing` (what the user asked for that matched nothing), and so is one over
/// `--max-files`.
pub async fn fetch_dir(
    a: &GetArgs,
    output: &Path,
    jobs: Vec<Job>,
    nothing: String,
    summary: serde_json::Value,
) -> Result<(), Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    if jobs.is_empty() {
        return Err(usage(format!("nothing to fetch: {nothing}")));
    }
    if let Some(max) = a.max_files.filter(|m| jobs.len() > *m) {
        return Err(usage(format!("{} files match, more than --max-files {max}; narrow with --include", jobs.len())));
    }
    std::fs::create_dir_all(output).map_err(|e| usage(format!("create {}: {e}", output.display())))?;
    let outcomes = fetch_all(&a.socket, jobs, a.parallel).await?;
    report(&outcomes, a.json, summary)
}

/// `*` any run of characters (`/` too), `?` one character; the rest literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            (pi, ti) = (pi + 1, ti + 1);
        } else if pi < p.len() && p[pi] == '*' {
            (star, mark) = (Some(pi), ti);
            pi += 1;
        } else if let Some(s) = star {
            (pi, mark) = (s + 1, mark + 1);
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether `out` already holds the file: its size, and its digest (a file without a
/// digest is asked of the daemon again, which serves it from its cache).
fn present(output: &Path, size: Option<u64>, digest: Option<&FileDigest>) -> Option<u64> {
    let len = std::fs::metadata(output).ok()?.len();
    if size.is_some_and(|s| s != len) {
        return None;
    }
    ferry_daemon::output::verify_digest(output, digest?).ok().map(|()| len)
}

/// Fetches every job, `parallel` at once; outcomes in the jobs' order.
pub async fn fetch_all(socket: &Path, jobs: Vec<Job>, parallel: usize) -> Result<Vec<Outcome>, Exit> {
    let client = ferry_daemon::local::connect(socket).await.map_err(|m| Exit::new(exit::NO_DAEMON, m))?;
    let run = |job: Job| {
        let mut client: DaemonClient<Channel> = client.clone();
        async move {
            let result = fetch(&mut client, socket, &job).await;
            Outcome { path: job.path, result }
        }
    };
    Ok(futures::stream::iter(jobs).map(run).buffered(parallel.max(1)).collect().await)
}

async fn fetch(client: &mut DaemonClient<Channel>, socket: &Path, job: &Job) -> Result<Fetched, Exit> {
    let (output, size, digest) = (job.output.clone(), job.size, job.digest.clone());
    let check = move || present(&output, size, digest.as_ref());
    if let Some(bytes) = tokio::task::spawn_blocking(check).await.ok().flatten() {
        return Ok(Fetched::Present { bytes });
    }
    if let Some(dir) = job.output.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Exit::new(exit::FAILURE, format!("create {}: {e}", dir.display())))?;
    }
    super::download(client, job.request.clone(), socket, None).await.map(Fetched::Fetched)
}

/// Prints one line per file (or one JSON object with `summary` merged in) and returns the
/// exit: the first failed file's, or success.
pub fn report(outcomes: &[Outcome], json: bool, summary: serde_json::Value) -> Result<(), Exit> {
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    if json {
        let files: Vec<serde_json::Value> = outcomes.iter().map(file_json).collect();
        let mut v = summary;
        v["files"] = files.into();
        v["ok"] = (outcomes.len() - failed.len()).into();
        v["failed"] = failed.len().into();
        println!("{v}");
    } else {
        for o in outcomes {
            match &o.result {
                Ok(Fetched::Present { bytes }) => eprintln!("present  {} ({bytes} bytes, verified)", o.path),
                Ok(Fetched::Fetched(p)) => eprintln!(
                    "fetched  {} ({} bytes: {} from peers, {} from origin, {} from cache)",
                    o.path, p.content_length, p.bytes_from_peers, p.bytes_from_origin, p.bytes_from_cache
                ),
                Err(e) => eprintln!("FAILED   {}: {}", o.path, e.message),
            }
        }
    }
    match failed.first() {
        None => Ok(()),
        Some(first) => {
            let e = first.result.as_ref().err().expect("a failure");
            let msg =
                format!("{} of {} files failed; first, {}: {}", failed.len(), outcomes.len(), first.path, e.message);
            Err(Exit::new(e.code, msg))
        }
    }
}

fn file_json(o: &Outcome) -> serde_json::Value {
    match &o.result {
        Ok(Fetched::Present { bytes }) => serde_json::json!({ "path": o.path, "status": "present", "bytes": bytes }),
        Ok(Fetched::Fetched(p)) => serde_json::json!({
            "path": o.path, "status": "fetched", "task_id": p.task_id, "bytes": p.content_length,
            "bytes_from_peers": p.bytes_from_peers, "bytes_from_origin": p.bytes_from_origin,
            "bytes_from_cache": p.bytes_from_cache,
        }),
        Err(e) => serde_json::json!({ "path": o.path, "status": "failed", "error": e.message, "exit_code": e.code }),
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn listed_paths_stay_inside() {
        assert!(super::safe_path("model/weights.safetensors").is_some());
        assert!(super::safe_path("./config.json").is_some());
        for bad in ["", "/etc/passwd", "../x", "a/../../x"] {
            assert!(super::safe_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*.safetensors", "model-00001-of-00002.safetensors"));
        assert!(glob("*.json", "sub/dir/config.json"));
        assert!(glob("model-0000?-*", "model-00001-of-2"));
        assert!(glob("*", ""));
        assert!(!glob("*.bin", "model.safetensors"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("a*b*c", "aXbYbZc"));
    }
}
