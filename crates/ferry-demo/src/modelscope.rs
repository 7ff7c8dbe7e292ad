//! The ModelScope API of the test hub ([`crate::hub`]), over the same repositories, as the
//! `modelscope` client uses it (its `snapshot_download` works against it):
//!
//! - `GET /api/v1/models/{owner}/{repo}/revisions`: branches (and tags) with their commit ids;
//! - `GET /api/v1/models/{owner}/{repo}/repo/files?Revision=&Recursive=`: every file at a
//!   revision with `Path`, `Size`, `Sha256` (and a `tree` entry per directory);
//! - `GET|HEAD /api/v1/models/{owner}/{repo}/repo?Revision=&FilePath=`: a file's bytes, ranges
//!   honoured, served here (no CDN redirect).
//!
//! Answers are `{"Code": 200, "Data": ..., "Success": true}`; errors carry the HTTP status.

use std::collections::{BTreeSet, HashMap};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::hub::{body, find, status, Hub};

fn ok(data: serde_json::Value) -> Response {
    let v = serde_json::json!({ "Code": 200, "Data": data, "Message": "success", "Success": true });
    ([("content-type", "application/json")], v.to_string()).into_response()
}

fn query(req: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

/// `segs` are the path segments after `/api/v1/`.
pub(crate) fn serve(hub: &Hub, segs: &[String], req: &Request) -> Response {
    let (repo, rest) = match segs {
        [kind, owner, name, rest @ ..] if kind == "models" => (format!("models/{owner}/{name}"), rest),
        _ => return status(StatusCode::NOT_FOUND, "no such route"),
    };
    let q = query(req);
    let rev = q.get("Revision").map(String::as_str).unwrap_or("master");
    match rest.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["revisions"] => revisions(hub, &repo),
        ["repo", "files"] => files(hub, &repo, rev),
        ["repo"] => {
            let path = q.get("FilePath").cloned().unwrap_or_default();
            match find(hub, &repo, rev, Some(&path)) {
                Some((_, Some(f))) => body(hub, &f, req.method(), req.headers(), false),
                _ => status(StatusCode::NOT_FOUND, "file not found"),
            }
        }
        _ => status(StatusCode::NOT_FOUND, "no such route"),
    }
}

fn revisions(hub: &Hub, repo: &str) -> Response {
    let repos = hub.repos.lock().unwrap();
    let Some(r) = repos.get(repo) else { return status(StatusCode::NOT_FOUND, "model not found") };
    let mut branches: Vec<serde_json::Value> = r
        .branches
        .iter()
        .map(|(name, commit)| serde_json::json!({ "Revision": name, "CommitId": commit, "CreatedAt": 1_700_000_000 }))
        .collect();
    branches.sort_by(|a, b| a["Revision"].as_str().cmp(&b["Revision"].as_str()));
    ok(serde_json::json!({ "RevisionMap": { "Branches": branches, "Tags": [] } }))
}

fn files(hub: &Hub, repo: &str, rev: &str) -> Response {
    let Some((commit, _)) = find(hub, repo, rev, None) else {
        return status(StatusCode::NOT_FOUND, "model or revision not found");
    };
    let repos = hub.repos.lock().unwrap();
    let mut dirs = BTreeSet::new();
    let mut out = vec![];
    for f in &repos[repo].commits[&commit] {
        let mut at = f.path.as_str();
        while let Some((dir, _)) = at.rsplit_once('/') {
            dirs.insert(dir.to_owned());
            at = dir;
        }
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        out.push(serde_json::json!({
            "Name": name, "Path": f.path, "Type": "blob", "Size": f.bytes.len(), "Sha256": f.sha256(),
            "IsLFS": f.lfs, "Revision": commit,
        }));
    }
    for d in dirs {
        let name = d.rsplit('/').next().unwrap_or(&d).to_owned();
        out.push(serde_json::json!({ "Name": name, "Path": d, "Type": "tree", "Size": 0, "Revision": commit }));
    }
    ok(serde_json::json!({ "Files": out }))
}
