//! Model hubs: a repository named `hf://[models/|datasets/|spaces/]owner/repo[/path]` (the
//! Hugging Face API: huggingface.co and compatible endpoints) or `modelscope://owner/repo[/path]`
//! (the ModelScope API, [`modelscope`]), resolved at a revision to the commit id it points at
//! and the files it holds there.
//!
//! The commit id, never the branch name, is what file URLs use. Every file comes with a
//! digest that becomes its task id and is checked end to end: the hub's sha256 for a file
//! stored in LFS, git's blob id for one kept in git. So when the branch moves, only files
//! whose content changed get new tasks.

mod modelscope;

use ferry_types::FileDigest;
use serde::Deserialize;

/// Which API a repository is read with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    HuggingFace,
    ModelScope,
}

impl Flavor {
    /// The flag that gives this hub a token, for error messages.
    fn token_flag(self) -> &'static str {
        match self {
            Flavor::HuggingFace => "--hf-token or HF_TOKEN",
            Flavor::ModelScope => "--modelscope-token or MODELSCOPE_API_TOKEN",
        }
    }

    /// The revision a repository is read at when none is named.
    pub fn default_revision(self) -> &'static str {
        match self {
            Flavor::HuggingFace => "main",
            Flavor::ModelScope => "master",
        }
    }
}

/// What went wrong resolving a repository; each maps to one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    BadName(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("hub {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("hub {endpoint} sent an unusable answer: {reason}")]
    BadResponse { endpoint: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
    Space,
}

impl RepoKind {
    /// The segment in API paths (`/api/models/...`).
    fn api(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
            RepoKind::Space => "spaces",
        }
    }

    /// The prefix of file URLs (`/datasets/owner/repo/resolve/...`; none for models).
    fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
            RepoKind::Space => "spaces/",
        }
    }
}

/// A repository (and a path inside it) as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRepo {
    pub flavor: Flavor,
    pub kind: RepoKind,
    pub owner: String,
    pub name: String,
    /// A file or directory inside the repository; empty for all of it.
    pub path: String,
}

/// `owner` and `repo` as the hub allows them: letters, digits, `-`, `_`, `.`, not starting
/// or ending with `-`/`.`, no `--` or `..`, at most 96 characters.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

impl HubRepo {
    pub fn parse(url: &str) -> Result<Self, HubError> {
        let bad = |why: &str| HubError::BadName(format!("`{url}` is not a hub repository: {why}"));
        let (flavor, kind, rest) = if let Some(rest) = url.strip_prefix("modelscope://") {
            (Flavor::ModelScope, RepoKind::Model, rest)
        } else {
            let rest = url.strip_prefix("hf://").ok_or_else(|| {
                bad("expected hf://[models/|datasets/|spaces/]owner/repo[/path] or modelscope://owner/repo[/path]")
            })?;
            match rest.split_once('/') {
                Some(("models", r)) => (Flavor::HuggingFace, RepoKind::Model, r),
                Some(("datasets", r)) => (Flavor::HuggingFace, RepoKind::Dataset, r),
                Some(("spaces", r)) => (Flavor::HuggingFace, RepoKind::Space, r),
                _ => (Flavor::HuggingFace, RepoKind::Model, rest),
            }
        };
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name = parts.next().ok_or_else(|| bad("expected owner/repo"))?;
        if !valid_name(owner) || !valid_name(name) {
            return Err(bad("owner and repo are letters, digits, `-`, `_` and `.`"));
        }
        let path = parts.next().unwrap_or_default().trim_end_matches('/').to_owned();
        if !path.is_empty() && path.split('/').any(|s| s.is_empty() || s == ".." || s == ".") {
            return Err(bad("the path inside the repository may not hold `.`, `..` or empty segments"));
        }
        Ok(Self { flavor, kind, owner: owner.to_owned(), name: name.to_owned(), path })
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// One file of a repository at a commit.
#[derive(Clone, Debug)]
pub struct RepoFile {
    /// Its path in the repository.
    pub path: String,
    pub size: Option<u64>,
    /// The hub's sha256 of an LFS file, else git's blob id (`gitsha1:`), when listed.
    pub digest: Option<FileDigest>,
    /// Where to read it, at the commit id.
    pub url: url::Url,
}

/// A repository resolved at a revision.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The 40-hex commit id the revision pointed at.
    pub commit: String,
    pub files: Vec<RepoFile>,
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
}

/// A hub endpoint and the token to show it.
pub struct Hub {
    client: reqwest::Client,
    endpoint: url::Url,
    token: Option<String>,
}

impl Hub {
    pub fn new(client: reqwest::Client, endpoint: url::Url, token: Option<String>) -> Self {
        Self { client, endpoint, token: token.filter(|t| !t.is_empty()) }
    }

    /// The `Authorization` header requests for files should carry.
    pub fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// The repository's commit at `revision` and its files (under `repo.path`): the whole
    /// listing, however many files.
    pub async fn snapshot(&self, repo: &HubRepo, revision: &str) -> Result<Snapshot, HubError> {
        match repo.flavor {
            Flavor::HuggingFace => self.hf_snapshot(repo, revision).await,
            Flavor::ModelScope => modelscope::snapshot(self, repo, revision).await,
        }
    }

    fn endpoint(&self) -> String {
        self.endpoint.as_str().trim_end_matches('/').to_owned()
    }

    /// GETs a JSON answer of the hub's API; `missing` says what a 404 means.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        api: &str,
        repo: &HubRepo,
        missing: impl FnOnce() -> String,
    ) -> Result<T, HubError> {
        let endpoint = self.endpoint();
        let mut req = self.client.get(api);
        if let Some(a) = self.authorization() {
            req = req.header("authorization", a);
        }
        let unreachable =
            |e: reqwest::Error| HubError::Unreachable { endpoint: endpoint.clone(), reason: e.to_string() };
        let resp = req.send().await.map_err(unreachable)?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(HubError::Unauthorized(format!(
                    "hub refused access to {} ({}): give a token with {}",
                    repo.id(),
                    resp.status(),
                    repo.flavor.token_flag()
                )))
            }
            404 => return Err(HubError::NotFound(missing())),
            s => return Err(HubError::BadResponse { endpoint, reason: format!("status {s} for {api}") }),
        }
        // A listing of 100,000 files is about 20 MB.
        crate::json_limited(resp, 256 << 20)
            .await
            .map_err(|e| HubError::BadResponse { endpoint, reason: format!("{api}: {e}") })
    }

    async fn hf_snapshot(&self, repo: &HubRepo, revision: &str) -> Result<Snapshot, HubError> {
        let endpoint = self.endpoint();
        let rev: String = url::form_urlencoded::byte_serialize(revision.as_bytes()).collect();
        let api = format!("{endpoint}/api/{}/{}/revision/{rev}?blobs=true", repo.kind.api(), repo.id());
        let missing = || {
            format!(
                "{} {} or its revision `{revision}` does not exist on {endpoint}",
                repo.kind.api().trim_end_matches('s'),
                repo.id()
            )
        };
        let info: RevisionInfo = self.get_json(&api, repo, missing).await?;
        let bad = |reason: String| HubError::BadResponse { endpoint: endpoint.clone(), reason };
        let commit = info.sha.filter(|s| s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit()));
        let commit = commit.ok_or_else(|| bad("no 40-hex commit id (`sha`) for the revision".into()))?;
        let mut files = vec![];
        for s in info.siblings {
            if !in_path(&s.rfilename, &repo.path) {
                continue;
            }
            let digest = match (&s.lfs, &s.blob_id) {
                (Some(l), _) => Some(format!("sha256:{}", l.sha256)),
                (None, Some(oid)) => Some(format!("gitsha1:{oid}")),
                (None, None) => None,
            };
            let digest = digest.map(|d| d.parse::<FileDigest>()).transpose();
            let digest = digest.map_err(|e| bad(format!("{}: {e}", s.rfilename)))?;
            let url = self.file_url(repo, &commit, &s.rfilename).map_err(|e| bad(format!("{}: {e}", s.rfilename)))?;
            files.push(RepoFile { path: s.rfilename, size: s.size, digest, url });
        }
        Ok(Snapshot { commit, files })
    }

    fn file_url(&self, repo: &HubRepo, commit: &str, path: &str) -> Result<url::Url, url::ParseError> {
        let mut url = self.endpoint.clone();
        {
            let mut segs = url.path_segments_mut().map_err(|_| url::ParseError::RelativeUrlWithCannotBeABaseBase)?;
            segs.pop_if_empty();
            if let Some(p) = repo.kind.url_prefix().strip_suffix('/') {
                segs.push(p);
            }
            segs.extend([repo.owner.as_str(), repo.name.as_str(), "resolve", commit]);
            segs.extend(path.split('/'));
        }
        Ok(url)
    }
}

/// Whether `file` is `path` or under it (everything when `path` is empty).
fn in_path(file: &str, path: &str) -> bool {
    path.is_empty() || file == path || file.strip_prefix(path).is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        let r = HubRepo::parse("hf://openai/whisper-large-v3").unwrap();
        assert_eq!((r.kind, r.id().as_str(), r.path.as_str()), (RepoKind::Model, "openai/whisper-large-v3", ""));
        let r = HubRepo::parse("hf://datasets/org/data.set/train/part-0.parquet").unwrap();
        assert_eq!(
            (r.kind, r.id().as_str(), r.path.as_str()),
            (RepoKind::Dataset, "org/data.set", "train/part-0.parquet")
        );
        assert_eq!(HubRepo::parse("hf://models/a/b/").unwrap().path, "");
        for bad in [
            "hf://",
            "hf://owner",
            "hf://-x/y",
            "hf://a/b..c",
            "hf://a/b/../etc",
            "s3://a/b",
            "hf://a/b//c",
            "hf://a b/c",
        ] {
            assert!(matches!(HubRepo::parse(bad), Err(HubError::BadName(_))), "{bad}");
        }
    }

    #[test]
    fn paths_select_files_and_directories() {
        assert!(in_path("a/b.bin", ""));
        assert!(in_path("a/b.bin", "a"));
        assert!(in_path("a/b.bin", "a/b.bin"));
        assert!(!in_path("ab/c", "a"));
    }

    #[test]
    fn file_urls_use_the_commit_and_encode_paths() {
        let hub = Hub::new(reqwest::Client::new(), "http://127.0.0.1:9/mirror/".parse().unwrap(), None);
        let repo = HubRepo::parse("hf://datasets/o/r").unwrap();
        let u = hub.file_url(&repo, &"a".repeat(40), "dir/my file.bin").unwrap();
        assert_eq!(
            u.as_str(),
            format!("http://127.0.0.1:9/mirror/datasets/o/r/resolve/{}/dir/my%20file.bin", "a".repeat(40))
        );
    }
}
