//! Preheat: every blob of an image, for one platform, fetched into the cluster without
//! writing an output, so a rollout's pulls find it there. `ferry preheat image` and the
//! manager's jobs call it through the local API.
//!
//! The reference's manifest (by tag, from the registry; an index is narrowed to the platform)
//! names the blobs; the platform's manifest, its config and its layers are then fetched as
//! P2P tasks by digest, exactly as the mirror would fetch them for a pull.

use std::sync::Arc;

use ferry_backend::BackendError;
use ferry_types::{FileDigest, OriginRequest, TaskId, TaskIdInput};
use futures::StreamExt;

use super::content::{complete, read_range};
use super::oci::{valid_digest, valid_name, valid_tag, Reference, MANIFEST_TYPES};
use crate::ctx::Ctx;
use crate::DaemonError;

/// Blobs fetched at once.
const PARALLEL: usize = 4;

/// An image reference, resolved to where its registry answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: url::Url,
    pub repository: String,
    pub reference: Reference,
}

/// Parses `[registry/]repository[:tag|@digest]` as container tools do: a first component
/// with a `.` or `:` (or `localhost`) is a registry, else it is Docker Hub, where
/// single-component names live under `library/`.
pub fn parse_reference(s: &str, insecure: bool) -> Result<ImageRef, String> {
    let bad = |why: &str| format!("image reference `{s}`: {why}");
    let (name, reference) = match s.split_once('@') {
        Some((n, d)) => (n, Reference::Digest(valid_digest(d).map_err(|e| bad(&e.message()))?)),
        None => match s.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((n, t)) if valid_tag(t) => (n, Reference::Tag(t.to_owned())),
            Some(_) => return Err(bad("invalid tag")),
            None => (s, Reference::Tag("latest".to_owned())),
        },
    };
    let (host, repo) = match name.split_once('/') {
        Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => (h, r.to_owned()),
        _ if name.contains('/') => ("docker.io", name.to_owned()),
        _ => ("docker.io", format!("library/{name}")),
    };
    let repository = valid_name(&repo).map_err(|e| bad(&e.message()))?;
    let host = if host == "docker.io" { "registry-1.docker.io" } else { host };
    let scheme = if insecure { "http" } else { "https" };
    let registry = url::Url::parse(&format!("{scheme}://{host}")).map_err(|e| bad(&e.to_string()))?;
    Ok(ImageRef { registry, repository, reference })
}

/// Fetches the image's blobs for `platform` (`os/arch[/variant]`) into the cluster; returns
/// each blob's digest and size.
pub async fn preheat_image(
    ctx: &Arc<Ctx>,
    image: &ImageRef,
    platform: &str,
    headers: &[(String, String)],
) -> Result<Vec<(FileDigest, u64)>, DaemonError> {
    let top = top_manifest(ctx, image, headers).await?;
    let (manifest_digest, manifest) = match platform_manifest(&top, platform)? {
        Some(digest) => {
            let bytes = fetch(ctx, image, "manifests", &digest, headers).await?;
            (Some(digest), bytes)
        }
        None => (None, top),
    };
    let mut blobs: Vec<(FileDigest, u64)> = vec![];
    if let Some(d) = manifest_digest {
        blobs.push((d, manifest.len() as u64));
    }
    let doc: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| DaemonError::BadRequest(format!("the manifest is not JSON: {e}")))?;
    let descriptors = doc.get("config").into_iter().chain(doc["layers"].as_array().into_iter().flatten());
    let wanted: Vec<(FileDigest, u64)> = descriptors
        .filter_map(|d| Some((valid_digest(d["digest"].as_str()?).ok()?, d["size"].as_u64().unwrap_or(0))))
        .collect();
    let fetched = futures::stream::iter(wanted.iter().cloned())
        .map(|(digest, size)| async move { task(ctx, image, "blobs", &digest, headers).await.map(|_| (digest, size)) })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    for f in fetched {
        blobs.push(f?);
    }
    tracing::info!(repository = %image.repository, blobs = blobs.len(), "preheated image");
    Ok(blobs)
}

/// The manifest the reference names, straight from the registry (a tag is not content).
async fn top_manifest(ctx: &Arc<Ctx>, image: &ImageRef, headers: &[(String, String)]) -> Result<Vec<u8>, DaemonError> {
    let reference = match &image.reference {
        Reference::Tag(t) => t.clone(),
        Reference::Digest(d) => return fetch(ctx, image, "manifests", d, headers).await,
    };
    let url = image
        .registry
        .join(&format!("/v2/{}/manifests/{reference}", image.repository))
        .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
    let redacted = url.to_string();
    let mut req = ctx.backend.client().get(url).header("accept", MANIFEST_TYPES);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(|e| BackendError::Connect { url: redacted.clone(), reason: e.to_string() })?;
    if !resp.status().is_success() {
        return Err(BackendError::Status { status: resp.status().as_u16(), url: redacted }.into());
    }
    let bytes = resp.bytes().await.map_err(|e| BackendError::Read { url: redacted, reason: e.to_string() })?;
    Ok(bytes.to_vec())
}

/// For an index, the digest of the platform's manifest; `None` for a plain manifest.
fn platform_manifest(top: &[u8], platform: &str) -> Result<Option<FileDigest>, DaemonError> {
    let doc: serde_json::Value =
        serde_json::from_slice(top).map_err(|e| DaemonError::BadRequest(format!("the manifest is not JSON: {e}")))?;
    super::oci::platform_manifest(&doc, platform).map_err(DaemonError::BadRequest)
}

/// A manifest by digest, through P2P, read back from the cache.
async fn fetch(
    ctx: &Arc<Ctx>,
    image: &ImageRef,
    kind: &str,
    digest: &FileDigest,
    headers: &[(String, String)],
) -> Result<Vec<u8>, DaemonError> {
    let handle = task(ctx, image, kind, digest, headers).await?;
    let len = handle.content.get().map_or(0, |c| c.file.layout().content_length());
    read_range(handle, 0, len).await.map_err(DaemonError::BadRequest)
}

/// The content named by `digest` (a blob or a manifest) as a P2P task, complete.
async fn task(
    ctx: &Arc<Ctx>,
    image: &ImageRef,
    kind: &str,
    digest: &FileDigest,
    headers: &[(String, String)],
) -> Result<Arc<crate::registry::TaskHandle>, DaemonError> {
    let url = image
        .registry
        .join(&format!("/v2/{}/{kind}/{digest}", image.repository))
        .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
    let mut h = headers.to_vec();
    if kind == "manifests" {
        h.push(("Accept".to_owned(), MANIFEST_TYPES.to_owned()));
    }
    let request =
        OriginRequest::new(url, h, Some(digest.clone()), vec![]).map_err(|e| DaemonError::BadRequest(e.to_string()))?;
    if request.credentialed() {
        ctx.authorize(&request).await?;
    }
    let id = TaskId::derive(&TaskIdInput { digest: Some(digest), ..Default::default() });
    // A preheat waits as long as the download makes progress at all.
    complete(ctx, id, &request, std::time::Duration::from_secs(300))
        .await
        .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|e| DaemonError::BadRequest(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_as_container_tools_read_them() {
        let r = parse_reference("ubuntu", false).unwrap();
        assert_eq!(r.registry.as_str(), "https://registry-1.docker.io/");
        assert_eq!((r.repository.as_str(), &r.reference), ("library/ubuntu", &Reference::Tag("latest".into())));
        let r = parse_reference("ghcr.io/org/app:1.2", false).unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("https://ghcr.io/", "org/app"));
        let r = parse_reference("127.0.0.1:5000/test/app:v1", true).unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("http://127.0.0.1:5000/", "test/app"));
        assert_eq!(r.reference, Reference::Tag("v1".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("localhost/x@{d}"), true).unwrap();
        assert!(matches!(r.reference, Reference::Digest(_)));
        assert!(parse_reference("Bad/Name", false).is_err());
        assert!(parse_reference("x@sha256:12", false).is_err());
    }

    #[test]
    fn an_index_narrows_to_the_platform() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = serde_json::json!({ "manifests": [
            { "digest": d('a'), "platform": { "os": "linux", "architecture": "amd64" } },
            { "digest": d('b'), "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
        ]})
        .to_string();
        let pick = |p: &str| platform_manifest(index.as_bytes(), p).map(|o| o.map(|d| d.to_string()));
        assert_eq!(pick("linux/amd64").unwrap(), Some(d('a')));
        assert_eq!(pick("linux/arm64").unwrap(), Some(d('b')));
        assert_eq!(pick("linux/arm64/v8").unwrap(), Some(d('b')));
        assert!(pick("windows/amd64").is_err());
        assert_eq!(platform_manifest(br#"{"layers":[]}"#, "linux/amd64").unwrap(), None);
    }
}
