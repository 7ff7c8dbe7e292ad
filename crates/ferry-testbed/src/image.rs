//! The image workload: a multi-layer OCI image in a real registry (`docker-registry`) on the
//! origin's host, pulled with `skopeo` on every host — through the host's own Ferry mirror,
//! or straight from the registry.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_demo::oci::{Blob, Image, Layout, INDEX, MANIFEST};

use crate::net::ORIGIN_IP;
use crate::proc::{spawn_in, Proc};

pub const REGISTRY_PORT: u16 = 5000;
pub const REPO: &str = "bench/image";

/// Shares of the image's size per layer, largest first (a base, a runtime, the app's layers).
const LAYER_SHARES: [f64; 8] = [0.30, 0.20, 0.15, 0.10, 0.10, 0.08, 0.05, 0.02];

/// The image as pushed: where the registry keeps it, and every blob a pull must yield.
pub struct ImageWorkload {
    pub storage: PathBuf,
    /// Digests of every blob (layers, config, manifest, index), sorted.
    pub digests: Vec<String>,
    /// Bytes of all blobs: what one pull moves.
    pub bytes: u64,
}

/// Makes an image of about `size` bytes in eight layers and pushes it, through the
/// registry's HTTP API (no recompression), into a registry storage directory under `work`.
pub async fn prepare(work: &Path, size: u64) -> Result<ImageWorkload> {
    let layers: Vec<Blob> = LAYER_SHARES
        .iter()
        .enumerate()
        .map(|(i, share)| Blob::new(ferry_demo::data::generate(100 + i as u64, (size as f64 * share) as usize)))
        .collect();
    let layout = Layout::new(&[Image { architecture: "amd64".into(), layers }]);
    let storage = work.join("registry-data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let registry = start_process(None, &addr, &storage, &work.join("registry-push.log"))?;
    let pushed = push(&layout, &addr).await;
    registry.signal(libc::SIGTERM);
    crate::proc::reap(registry.pid());
    pushed?;
    let digests = layout.blobs.iter().map(|b| b.digest.clone()).collect();
    let bytes = layout.blobs.iter().map(|b| b.bytes.len() as u64).sum();
    Ok(ImageWorkload { storage, digests, bytes })
}

/// `docker-registry serve` on `addr` in namespace `ns` (or here), its log (the access log
/// too) at `log`.
fn start_process(ns: Option<&str>, addr: &str, storage: &Path, log: &Path) -> Result<Proc> {
    let dir = storage.parent().context("storage has a parent")?;
    let config = dir.join(format!("registry-{}.yml", addr.replace([':', '.'], "-")));
    std::fs::write(&config, ferry_demo::registry::config(addr, storage, "", ""))?;
    let args = vec!["docker-registry".to_owned(), "serve".to_owned(), config.display().to_string()];
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut p = match ns {
        Some(ns) => spawn_in(ns, &args, Stdio::from(out), log)?,
        None => {
            let child = std::process::Command::new(&args[0])
                .args(&args[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone()?))
                .stderr(Stdio::from(out))
                .spawn()
                .context("start docker-registry (apt-get install docker-registry)")?;
            Proc { child }
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let reachable = |a: &str| match ns {
        Some(ns) => std::process::Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sf", "-o", "/dev/null", &format!("http://{a}/v2/")])
            .status()
            .is_ok_and(|s| s.success()),
        None => std::net::TcpStream::connect(a).is_ok(),
    };
    while !reachable(addr) {
        if std::time::Instant::now() > deadline || p.child.try_wait()?.is_some() {
            p.signal(libc::SIGKILL);
            bail!("docker-registry did not start on {addr}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(p)
}

/// Pushes every blob, then each manifest by digest, then the index as tag `v1`.
async fn push(layout: &Layout, addr: &str) -> Result<()> {
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/v2/{REPO}");
    let media_type = |b: &Blob| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&b.bytes).ok()?;
        v["mediaType"].as_str().filter(|t| *t == MANIFEST || *t == INDEX).map(str::to_owned)
    };
    let (manifests, blobs): (Vec<&Blob>, Vec<&Blob>) = layout.blobs.iter().partition(|b| media_type(b).is_some());
    for b in blobs {
        let r = http.post(format!("{base}/blobs/uploads/")).send().await?.error_for_status()?;
        let location = r.headers().get("location").and_then(|v| v.to_str().ok()).context("upload location")?;
        let mut url = reqwest::Url::parse(&format!("http://{addr}"))?.join(location)?;
        url.query_pairs_mut().append_pair("digest", &b.digest);
        http.put(url).body(b.bytes.clone()).send().await?.error_for_status().context("blob upload")?;
    }
    // Image manifests first: the index refers to them.
    let mut manifests = manifests;
    manifests.sort_by_key(|b| media_type(b).as_deref() == Some(INDEX));
    for m in manifests {
        let t = media_type(m).expect("a manifest");
        let reference = if m.digest == layout.index.digest { "v1".to_owned() } else { m.digest.clone() };
        http.put(format!("{base}/manifests/{reference}"))
            .header("content-type", t)
            .body(m.bytes.clone())
            .send()
            .await?
            .error_for_status()
            .context("manifest upload")?;
    }
    Ok(())
}

/// The registry on the origin's host, for one system's run.
pub struct RegistryProc {
    proc: Proc,
    log: PathBuf,
}

impl RegistryProc {
    pub fn start(ns: &str, image: &ImageWorkload, log: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_file(&log);
        let addr = format!("{ORIGIN_IP}:{REGISTRY_PORT}");
        let proc = start_process(Some(ns), &addr, &image.storage, &log)?;
        Ok(Self { proc, log })
    }

    /// Stops the registry and returns the body bytes it sent (from its access log).
    pub fn stop(self) -> u64 {
        self.proc.signal(libc::SIGTERM);
        crate::proc::reap(self.proc.pid());
        ferry_demo::registry::bytes_served(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

/// `skopeo copy` of the image from the registry at `from` (`host:port`) into an OCI
/// layout at `out`, layers as they are (skopeo would gzip uncompressed layers by default:
/// CPU that would measure gzip, not the network).
pub fn pull_args(from: &str, out: &Path) -> Vec<String> {
    ["skopeo", "--insecure-policy", "copy", "--all", "--src-tls-verify=false", "--dest-oci-accept-uncompressed-layers"]
        .into_iter()
        .map(String::from)
        .chain([format!("docker://{from}/{REPO}:v1"), format!("oci:{}:v1", out.display())])
        .collect()
}

/// Whether the layout at `out` holds exactly the image's blobs, each matching its digest.
pub fn verify(image: &ImageWorkload, out: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(out.join("blobs/sha256")) else { return false };
    let mut got = vec![];
    for e in entries.flatten() {
        let Ok(bytes) = std::fs::read(e.path()) else { return false };
        let b = Blob::new(bytes);
        if b.digest.trim_start_matches("sha256:") != e.file_name().to_string_lossy() {
            return false;
        }
        got.push(b.digest);
    }
    got.sort();
    if got != image.digests {
        let missing: Vec<&String> = image.digests.iter().filter(|d| !got.contains(d)).collect();
        let extra: Vec<&String> = got.iter().filter(|d| !image.digests.contains(d)).collect();
        eprintln!("{}: image blobs differ: missing {missing:?}, unexpected {extra:?}", out.display());
        return false;
    }
    true
}
