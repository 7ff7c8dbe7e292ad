//! OCI image layouts written from deterministic bytes, for pushing to a real registry with
//! `skopeo copy oci:DIR:TAG docker://...`: images with several layers, and multi-arch
//! indexes whose platforms share some layers.

use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// One blob: its bytes and `sha256:<hex>`.
#[derive(Clone, Debug)]
pub struct Blob {
    pub bytes: Bytes,
    pub digest: String,
}

impl Blob {
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        Self { bytes, digest }
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        serde_json::json!({ "mediaType": media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An image for one platform: a config and its layers.
pub struct Image {
    pub architecture: String,
    pub layers: Vec<Blob>,
}

/// What a layout holds: every blob (configs, layers, manifests, the index) by digest.
pub struct Layout {
    pub blobs: Vec<Blob>,
    /// The index the tag points at.
    pub index: Blob,
}

impl Layout {
    /// A multi-arch index over `images`.
    pub fn new(images: &[Image]) -> Self {
        let mut blobs: Vec<Blob> = vec![];
        let mut manifests = vec![];
        for img in images {
            let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.digest.as_str()).collect();
            let config = Blob::new(
                serde_json::json!({
                    "architecture": img.architecture,
                    "os": "linux",
                    "rootfs": { "type": "layers", "diff_ids": diff_ids },
                })
                .to_string(),
            );
            let manifest = Blob::new(
                serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": MANIFEST,
                    "config": config.descriptor(CONFIG),
                    "layers": img.layers.iter().map(|l| l.descriptor(LAYER)).collect::<Vec<_>>(),
                })
                .to_string(),
            );
            let mut d = manifest.descriptor(MANIFEST);
            d["platform"] = serde_json::json!({ "architecture": img.architecture, "os": "linux" });
            manifests.push(d);
            blobs.push(config);
            blobs.extend(img.layers.iter().cloned());
            blobs.push(manifest);
        }
        let index = Blob::new(
            serde_json::json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests }).to_string(),
        );
        blobs.push(index.clone());
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        blobs.dedup_by(|a, b| a.digest == b.digest);
        Self { blobs, index }
    }

    /// Writes the layout to `dir`, the index tagged `tag`.
    pub fn write(&self, dir: &Path, tag: &str) -> std::io::Result<()> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs)?;
        for b in &self.blobs {
            std::fs::write(blobs.join(b.digest.trim_start_matches("sha256:")), &b.bytes)?;
        }
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut d = self.index.descriptor(INDEX);
        d["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
        std::fs::write(dir.join("index.json"), serde_json::json!({ "schemaVersion": 2, "manifests": [d] }).to_string())
    }
}
