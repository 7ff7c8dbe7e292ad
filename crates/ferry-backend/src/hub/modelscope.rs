//! The ModelScope API (`modelscope://owner/repo[/path]`, modelscope.cn and compatible
//! endpoints): the revision resolved through the model's branches and tags to its commit id,
//! the files listed at that commit with their sha256, each read at that commit.

use ferry_types::FileDigest;
use serde::Deserialize;

use super::{in_path, Hub, HubError, HubRepo, RepoFile, Snapshot};

/// Every answer: `{"Code": 200, "Data": ..., "Message": ...}`.
#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(rename = "Code")]
    code: Option<i64>,
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(rename = "Data")]
    data: Option<T>,
}

#[derive(Deserialize)]
struct RevisionData {
    #[serde(rename = "RevisionMap")]
    map: RevisionMap,
}

#[derive(Deserialize)]
struct RevisionMap {
    #[serde(rename = "Branches", default)]
    branches: Option<Vec<Ref>>,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<Ref>>,
}

#[derive(Deserialize)]
struct Ref {
    #[serde(rename = "Revision")]
    revision: String,
    #[serde(rename = "CommitId")]
    commit_id: Option<String>,
}

#[derive(Deserialize)]
struct FilesData {
    #[serde(rename = "Files")]
    files: Vec<MsFile>,
}

#[derive(Deserialize)]
struct MsFile {
    #[serde(rename = "Path")]
    path: String,
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "Size")]
    size: Option<u64>,
    #[serde(rename = "Sha256")]
    sha256: Option<String>,
}

fn is_commit(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl<T> Envelope<T> {
    /// The data of a successful answer; the hub's own message otherwise.
    fn data(self, endpoint: &str, what: &str) -> Result<T, HubError> {
        let bad = |reason: String| HubError::BadResponse { endpoint: endpoint.to_owned(), reason };
        if let Some(c) = self.code.filter(|c| *c != 200) {
            return Err(bad(format!("{what}: code {c}: {}", self.message.unwrap_or_default())));
        }
        self.data.ok_or_else(|| bad(format!("{what}: no `Data`")))
    }
}

pub(super) async fn snapshot(hub: &Hub, repo: &HubRepo, revision: &str) -> Result<Snapshot, HubError> {
    let endpoint = hub.endpoint();
    let base = format!("{endpoint}/api/v1/models/{}/{}", encode(&repo.owner), encode(&repo.name));
    let missing = || format!("model {} does not exist on {endpoint}", repo.id());
    let revs: Envelope<RevisionData> = hub.get_json(&format!("{base}/revisions"), repo, missing).await?;
    let map = revs.data(&endpoint, "revisions")?.map;
    let refs: Vec<Ref> = map.branches.into_iter().flatten().chain(map.tags.into_iter().flatten()).collect();
    let commit = match refs.iter().find(|r| r.revision == revision) {
        Some(Ref { commit_id: Some(c), .. }) if is_commit(c) => c.clone(),
        Some(_) => {
            // Files keep their sha256 task ids; only files listed without one are keyed on
            // the name.
            tracing::warn!(%revision, "the hub gives no commit id for the revision; reading it by name");
            revision.to_owned()
        }
        None if is_commit(revision) => revision.to_owned(),
        None => {
            let names: Vec<&str> = refs.iter().map(|r| r.revision.as_str()).collect();
            return Err(HubError::NotFound(format!(
                "model {} has no revision `{revision}` (it has: {})",
                repo.id(),
                names.join(", ")
            )));
        }
    };
    let api = format!("{base}/repo/files?Revision={}&Recursive=True", encode(&commit));
    let missing = || format!("model {} has no revision `{revision}` ({commit}) on {endpoint}", repo.id());
    let listing: Envelope<FilesData> = hub.get_json(&api, repo, missing).await?;
    let bad = |reason: String| HubError::BadResponse { endpoint: endpoint.clone(), reason };
    let mut files = vec![];
    for f in listing.data(&endpoint, "file listing")?.files {
        if f.kind.as_deref() == Some("tree") || !in_path(&f.path, &repo.path) {
            continue;
        }
        let digest = f.sha256.filter(|s| !s.is_empty()).map(|s| format!("sha256:{s}").parse::<FileDigest>());
        let digest = digest.transpose().map_err(|e| bad(format!("{}: {e}", f.path)))?;
        let url = format!("{base}/repo?Revision={}&FilePath={}", encode(&commit), encode(&f.path));
        let url = url::Url::parse(&url).map_err(|e| bad(format!("{}: {e}", f.path)))?;
        files.push(RepoFile { path: f.path, size: f.size, digest, url });
    }
    Ok(Snapshot { commit, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modelscope_names_are_models() {
        let r = HubRepo::parse("modelscope://qwen/Qwen2-7B/sub/dir").unwrap();
        assert_eq!(r.flavor, super::super::Flavor::ModelScope);
        assert_eq!((r.id().as_str(), r.path.as_str()), ("qwen/Qwen2-7B", "sub/dir"));
        for bad in ["modelscope://", "modelscope://owner", "modelscope://a/../b"] {
            assert!(matches!(HubRepo::parse(bad), Err(HubError::BadName(_))), "{bad}");
        }
    }

    #[test]
    fn a_failed_answer_says_the_hub_s_message() {
        let e: Envelope<FilesData> = serde_json::from_str(r#"{"Code": 10010205, "Message": "no such model"}"#).unwrap();
        let err = e.data("http://hub", "file listing").err().unwrap().to_string();
        assert!(err.contains("no such model"), "{err}");
    }
}
