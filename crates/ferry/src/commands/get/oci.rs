//! `ferry get oci://registry/repository[:tag|@digest] -O DIR`: an OCI artifact — a CNCF
//! ModelPack model, or any artifact whose layers name their files — written as a directory.
//!
//! The manifest comes from the registry (a tag is not content; an index is narrowed to
//! `--platform`); each layer is then a P2P task by its digest, verified end to end, and
//! lands at the path its annotation names (`org.cncf.model.filepath`, else
//! `org.opencontainers.image.title`); `.tar` (and `.tar+gzip`) layers are unpacked there.

use std::path::{Path, PathBuf};

use ferry_backend::registry_auth::{RegistryAuth, RegistryCredentials};
use ferry_daemon::mirror::oci::{platform_manifest, valid_digest, Reference, MANIFEST_TYPES};
use ferry_daemon::mirror::preheat::{parse_reference, ImageRef};
use ferry_proto::daemon::{DownloadRequest, Header};
use ferry_types::FileDigest;

use super::many::{self, Job};
use crate::cli::GetArgs;
use crate::{exit, Exit};

/// How a layer lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unpack {
    Raw,
    Tar,
    TarGzip,
}

#[derive(Debug)]
struct Layer {
    digest: FileDigest,
    size: u64,
    /// Relative, checked: no `..`, not absolute.
    path: PathBuf,
    unpack: Unpack,
}

pub async fn run(a: GetArgs) -> Result<(), Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    let reference = a.url.strip_prefix("oci://").unwrap_or(&a.url);
    let image = parse_reference(reference, a.insecure_registry).map_err(usage)?;
    let output = super::absolute(&a.output).map_err(|e| usage(format!("output {}: {e}", a.output.display())))?;
    let creds = match &a.registry_auth {
        Some(p) => RegistryCredentials::load(p).map_err(usage)?,
        None => RegistryCredentials::default(),
    };
    let client = super::http_client()?;
    let auth = RegistryAuth::new(client.clone(), creds, true);
    let scope = format!("repository:{}:pull", image.repository);
    let header = auth.authorization(&image.registry, Some(&scope)).await.map_err(|e| Exit::new(exit::ORIGIN, e))?;
    let manifest = manifest(&client, &image, header.as_deref(), &a.platform).await?;
    let layers = layers(&manifest).map_err(|e| Exit::new(exit::ORIGIN, format!("{reference}: {e}")))?;
    if layers.is_empty() {
        return Err(Exit::new(exit::ORIGIN, format!("{reference} has no layers to write")));
    }
    std::fs::create_dir_all(&output).map_err(|e| usage(format!("create {}: {e}", output.display())))?;
    let jobs: Vec<Job> = layers.iter().map(|l| job(&image, l, &output, header.as_deref(), &a)).collect();
    let mut outcomes = many::fetch_all(&a.socket, jobs, a.parallel).await?;
    for (o, l) in outcomes.iter_mut().zip(&layers) {
        if l.unpack == Unpack::Raw || o.result.is_err() {
            continue;
        }
        let archive = staging(&output, l);
        match unpack(&archive, &output, l.unpack) {
            Ok(()) => {
                let _ = std::fs::remove_file(&archive);
            }
            Err(e) => o.result = Err(Exit::new(exit::INTEGRITY, format!("unpack {}: {e}", l.path.display()))),
        }
    }
    let summary = serde_json::json!({ "artifact": reference, "layers": layers.len() });
    many::report(&outcomes, a.json, summary)
}

/// Where a layer is written: its path, or (to be unpacked) an archive beside the files.
fn staging(output: &Path, l: &Layer) -> PathBuf {
    match l.unpack {
        Unpack::Raw => output.join(&l.path),
        _ => output.join(format!(".ferry-layer-{}", l.digest.to_string().replace(':', "-"))),
    }
}

fn job(image: &ImageRef, l: &Layer, output: &Path, auth: Option<&str>, a: &GetArgs) -> Job {
    let url = format!("{}v2/{}/blobs/{}", image.registry, image.repository, l.digest);
    let out = staging(output, l);
    let headers = auth.map(|v| Header { name: "Authorization".into(), value: v.into() }).into_iter().collect();
    Job {
        path: l.path.display().to_string(),
        output: out.clone(),
        request: DownloadRequest {
            url,
            output: out.display().to_string(),
            headers,
            digest: l.digest.to_string(),
            timeout_millis: a.timeout.map_or(0, |t| t.as_millis() as u64),
            link: a.link,
            ..Default::default()
        },
        size: Some(l.size),
        digest: Some(l.digest.clone()),
    }
}

/// The manifest the reference names (narrowed to `platform` if it is an index).
async fn manifest(
    client: &reqwest::Client,
    image: &ImageRef,
    auth: Option<&str>,
    platform: &str,
) -> Result<serde_json::Value, Exit> {
    let reference = match &image.reference {
        Reference::Tag(t) => t.clone(),
        Reference::Digest(d) => d.to_string(),
    };
    let top = get_manifest(client, image, &reference, auth).await?;
    match platform_manifest(&top, platform).map_err(|e| Exit::new(exit::USAGE, e))? {
        Some(digest) => get_manifest(client, image, &digest.to_string(), auth).await,
        None => Ok(top),
    }
}

async fn get_manifest(
    client: &reqwest::Client,
    image: &ImageRef,
    reference: &str,
    auth: Option<&str>,
) -> Result<serde_json::Value, Exit> {
    let url = format!("{}v2/{}/manifests/{reference}", image.registry, image.repository);
    let mut req = client.get(&url).header("accept", MANIFEST_TYPES);
    if let Some(h) = auth {
        req = req.header("authorization", h);
    }
    let origin = |m: String| Exit::new(exit::ORIGIN, m);
    let resp = req.send().await.map_err(|e| origin(format!("registry {}: {e}", image.registry)))?;
    match resp.status().as_u16() {
        200 => {}
        401 | 403 => {
            return Err(origin(format!(
                "registry refused {}:{reference} ({}); give credentials with --registry-auth",
                image.repository,
                resp.status()
            )))
        }
        404 => return Err(origin(format!("{}:{reference} does not exist on {}", image.repository, image.registry))),
        s => return Err(origin(format!("registry answered {s} for {url}"))),
    }
    // The distribution spec lets registries refuse manifests over 4 MiB.
    ferry_backend::json_limited(resp, 4 << 20)
        .await
        .map_err(|e| origin(format!("the manifest of {}:{reference}: {e}", image.repository)))
}

/// The layers to write, with their checked paths.
fn layers(manifest: &serde_json::Value) -> Result<Vec<Layer>, String> {
    let list = manifest["layers"].as_array().ok_or("the manifest lists no layers")?;
    let mut out = vec![];
    for l in list {
        let digest = valid_digest(l["digest"].as_str().unwrap_or_default()).map_err(|e| e.message())?;
        let media_type = l["mediaType"].as_str().unwrap_or_default();
        let ann = &l["annotations"];
        let name = ann["org.cncf.model.filepath"].as_str().or(ann["org.opencontainers.image.title"].as_str());
        let name = name.ok_or_else(|| format!("layer {digest} names no file (org.cncf.model.filepath)"))?;
        let path = many::safe_path(name).ok_or_else(|| format!("layer {digest} names an unsafe path `{name}`"))?;
        let unpack = if media_type.ends_with(".tar") {
            Unpack::Tar
        } else if media_type.ends_with(".tar+gzip") || media_type.ends_with(".tar.gzip") {
            Unpack::TarGzip
        } else if media_type.contains("+zstd") {
            return Err(format!("layer {digest} is {media_type}: zstd layers are not supported yet"));
        } else {
            Unpack::Raw
        };
        out.push(Layer { digest, size: l["size"].as_u64().unwrap_or(0), path, unpack });
    }
    Ok(out)
}

/// Unpacks a tar (or gzipped tar) into `dir`; entries that would land outside it are refused.
fn unpack(archive: &Path, dir: &Path, kind: Unpack) -> std::io::Result<()> {
    let f = std::fs::File::open(archive)?;
    let reader: Box<dyn std::io::Read> = match kind {
        Unpack::TarGzip => Box::new(flate2::read::GzDecoder::new(f)),
        _ => Box::new(f),
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries()? {
        let mut entry = entry?;
        if !entry.unpack_in(dir)? {
            let p = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
            return Err(std::io::Error::other(format!("entry `{p}` would land outside the directory")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_by_media_type_and_annotation() {
        let d = format!("sha256:{}", "a".repeat(64));
        let m = serde_json::json!({ "layers": [
            { "digest": d, "size": 3, "mediaType": "application/vnd.cncf.model.weight.v1.raw",
              "annotations": { "org.cncf.model.filepath": "w/model.bin" } },
            { "digest": d, "size": 3, "mediaType": "application/vnd.cncf.model.doc.v1.tar",
              "annotations": { "org.opencontainers.image.title": "docs" } },
        ]});
        let l = layers(&m).unwrap();
        assert_eq!((l[0].path.to_str(), l[0].unpack), (Some("w/model.bin"), Unpack::Raw));
        assert_eq!((l[1].path.to_str(), l[1].unpack), (Some("docs"), Unpack::Tar));
        let bad =
            serde_json::json!({ "layers": [{ "digest": d, "annotations": { "org.cncf.model.filepath": "../x" } }] });
        assert!(layers(&bad).unwrap_err().contains("unsafe"));
    }
}
