//! `ferry get hf://...` and `modelscope://...`: a hub repository resolved once to its commit
//! id; each file a download of its URL at that commit, with the digest the hub lists for it
//! (sha256, or git's blob id) as its task id, checked end to end.

use std::path::PathBuf;

use ferry_backend::hub::{Flavor, Hub, HubError, HubRepo, RepoFile};
use ferry_proto::daemon::{DownloadRequest, Header};

use super::many::{self, Job};
use crate::cli::GetArgs;
use crate::{exit, Exit};

fn hub_exit(e: HubError) -> Exit {
    let code = match e {
        HubError::BadName(_) => exit::USAGE,
        _ => exit::ORIGIN,
    };
    Exit::new(code, e.to_string())
}

pub async fn run(a: GetArgs) -> Result<(), Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    let repo = HubRepo::parse(&a.url).map_err(hub_exit)?;
    let (flag, endpoint, token) = match repo.flavor {
        Flavor::HuggingFace => ("--hf-endpoint", &a.hf_endpoint, &a.hf_token),
        Flavor::ModelScope => ("--modelscope-endpoint", &a.modelscope_endpoint, &a.modelscope_token),
    };
    let endpoint = url::Url::parse(endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| usage(format!("{flag} `{endpoint}` is not an http(s) URL")))?;
    let revision = a.revision.clone().unwrap_or_else(|| repo.flavor.default_revision().to_owned());
    let output = super::absolute(&a.output).map_err(|e| usage(format!("output {}: {e}", a.output.display())))?;
    let client = super::http_client()?;
    let hub = Hub::new(client, endpoint, token.clone());
    let snapshot = hub.snapshot(&repo, &revision).await.map_err(hub_exit)?;
    let auth = hub.authorization();
    let job = |f: &RepoFile, output: PathBuf, path: String| Job {
        path,
        output: output.clone(),
        request: request(f, &output, auth.as_deref(), &a),
        size: f.size,
        digest: f.digest.clone(),
    };
    if !a.recursive {
        let f = snapshot.files.iter().find(|f| f.path == repo.path).ok_or_else(|| {
            let what = if repo.path.is_empty() {
                "no file named (use -r for the whole repository)".to_owned()
            } else {
                format!("no file `{}`", repo.path)
            };
            usage(format!("{what} in {} at `{revision}` ({})", repo.id(), snapshot.commit))
        })?;
        if output.is_dir() {
            return Err(usage(format!("output {} is a directory; give a file path (or use -r)", output.display())));
        }
        let outcomes = many::fetch_all(&a.socket, vec![job(f, output, f.path.clone())], 1).await?;
        return many::report(&outcomes, a.json, summary(&repo, &snapshot.commit, &revision));
    }
    let mut jobs = vec![];
    for f in snapshot.files.iter().filter(|f| many::selected(&a, &f.path)) {
        let rel = relative(&f.path, &repo.path);
        let safe = many::safe_path(&rel).ok_or_else(|| unsafe_path(&repo, &f.path))?;
        jobs.push(job(f, output.join(safe), rel));
    }
    let nothing = format!(
        "no file of {} at `{revision}` ({}) matches the path and --include/--exclude given",
        repo.id(),
        snapshot.commit
    );
    many::fetch_dir(&a, &output, jobs, nothing, summary(&repo, &snapshot.commit, &revision)).await
}

/// A listing that names a file outside the output directory is refused whole.
fn unsafe_path(repo: &HubRepo, path: &str) -> Exit {
    Exit::new(
        exit::ORIGIN,
        format!("the hub lists a file of {} at an unsafe path `{path}`; nothing fetched", repo.id()),
    )
}

/// `file`'s path below the directory the user named (its name alone when they named it).
fn relative(file: &str, dir: &str) -> String {
    if dir.is_empty() {
        return file.to_owned();
    }
    match file.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) {
        Some(r) => r.to_owned(),
        None => file.rsplit('/').next().unwrap_or(file).to_owned(),
    }
}

fn request(f: &RepoFile, output: &std::path::Path, auth: Option<&str>, a: &GetArgs) -> DownloadRequest {
    let headers = auth.map(|v| Header { name: "Authorization".into(), value: v.into() }).into_iter().collect();
    DownloadRequest {
        url: f.url.to_string(),
        output: output.display().to_string(),
        headers,
        digest: f.digest.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        tag: a.identity.tag.clone(),
        application: a.identity.application.clone(),
        filtered_query_params: vec![],
        timeout_millis: a.timeout.map_or(0, |t| t.as_millis() as u64),
        link: a.link,
    }
}

fn summary(repo: &HubRepo, commit: &str, revision: &str) -> serde_json::Value {
    serde_json::json!({ "repository": repo.id(), "revision": revision, "commit": commit })
}
