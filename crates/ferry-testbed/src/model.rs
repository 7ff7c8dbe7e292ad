//! The model workload: a model repository of `MODEL_FILES` weight files (LFS, about --size in
//! all) and a config, served by the test hub (`ferry_demo::hub`, the Hugging Face API) on the
//! origin's host; every host fetches the whole repository — `ferry get -r hf://...` through
//! its daemon, or every file straight from the hub with curl.

use std::path::Path;

use anyhow::{Context, Result};
use ferry_demo::hub::HubFile;

use crate::net::ORIGIN_IP;

pub const HUB_PORT: u16 = 8080;
pub const REPO: &str = "org/model";
/// Weight files in the repository.
pub const MODEL_FILES: usize = 8;

/// The repository's files (deterministic from `size`).
pub fn files(size: u64) -> Vec<HubFile> {
    let each = (size / MODEL_FILES as u64) as usize;
    let mut v: Vec<HubFile> = (0..MODEL_FILES)
        .map(|i| {
            let name = format!("model-{:05}-of-{MODEL_FILES:05}.safetensors", i + 1);
            HubFile::new(&name, ferry_demo::data::generate(200 + i as u64, each), true)
        })
        .collect();
    v.push(HubFile::new("config.json", r#"{"model_type":"testbed"}"#, false));
    v
}

/// What a host must end up with: each file's path and blake3.
pub struct ModelWorkload {
    pub files: Vec<(String, blake3::Hash)>,
    pub bytes: u64,
    /// The --size the files were made from (what the hub is told to make again).
    pub nominal: u64,
}

impl ModelWorkload {
    pub fn new(size: u64) -> Self {
        let files = files(size);
        let bytes = files.iter().map(|f| f.bytes.len() as u64).sum();
        Self { files: files.iter().map(|f| (f.path.clone(), blake3::hash(&f.bytes))).collect(), bytes, nominal: size }
    }
}

/// Serves the repository on `listen` until SIGTERM; prints the ready line, then the body
/// bytes served (`ferry-testbed hub`, run inside the origin's namespace).
pub async fn serve(size: u64, listen: std::net::SocketAddr) -> Result<()> {
    let hub = ferry_demo::hub::HubServer::start_on(listen, None).await.context("start the hub")?;
    hub.commit(&format!("models/{REPO}"), "main", files(size));
    crate::announce(&serde_json::json!({ "ready": "hub", "addr": hub.addr.to_string() }))?;
    crate::stopped().await;
    crate::announce(&serde_json::json!({ "bytes_served": hub.served_total() }))
}

pub fn endpoint() -> String {
    format!("http://{ORIGIN_IP}:{HUB_PORT}")
}

/// curl fetching every file straight from the hub (following its redirects to the CDN),
/// eight at once, into `out`.
pub fn direct_args(model: &ModelWorkload, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["curl", "-sS", "-fL", "--parallel", "--parallel-max", "8", "--create-dirs"]
        .into_iter()
        .map(String::from)
        .collect();
    for (path, _) in &model.files {
        args.push("-o".into());
        args.push(out.join(path).display().to_string());
        args.push(format!("{}/{REPO}/resolve/main/{path}", endpoint()));
    }
    args
}

/// Whether `out` holds every file with the right bytes.
pub fn verify(model: &ModelWorkload, out: &Path) -> bool {
    model.files.iter().all(|(path, want)| std::fs::read(out.join(path)).is_ok_and(|b| blake3::hash(&b) == *want))
}
