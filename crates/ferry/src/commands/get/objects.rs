//! `ferry get -r s3://bucket/prefix/ -O DIR` (and `gs://`, `azblob://`): every object under
//! the prefix, each its own task, listed with this process's credentials (the same
//! environment variables the daemon reads objects with).

use ferry_backend::object::ObjectStores;
use ferry_proto::daemon::DownloadRequest;

use super::many::{self, Job};
use crate::cli::GetArgs;
use crate::{exit, Exit};

pub async fn run(a: GetArgs) -> Result<(), Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    let url = url::Url::parse(&a.url).map_err(|e| usage(format!("malformed URL `{}`: {e}", a.url)))?;
    let output = super::absolute(&a.output).map_err(|e| usage(format!("output {}: {e}", a.output.display())))?;
    let listed = ObjectStores::default().list(&url).await.map_err(|e| match e {
        ferry_backend::BackendError::BadUrl(m) => usage(m),
        other => Exit::new(exit::ORIGIN, format!("listing {}: {other}", a.url)),
    })?;
    let prefix = url.path().trim_start_matches('/').trim_end_matches('/').to_owned();
    let mut jobs = vec![];
    for o in &listed {
        let rel = o.key.strip_prefix(&prefix).unwrap_or(&o.key).trim_start_matches('/').to_owned();
        if rel.is_empty() || rel.ends_with('/') {
            continue;
        }
        if !many::selected(&a, &rel) {
            continue;
        }
        let mut object = url.clone();
        object.set_path(&o.key);
        let Some(safe) = many::safe_path(&rel) else {
            let msg = format!("the store lists an object at an unsafe path `{}`; nothing fetched", o.key);
            return Err(Exit::new(exit::ORIGIN, msg));
        };
        let out = output.join(safe);
        let request = DownloadRequest {
            url: object.to_string(),
            output: out.display().to_string(),
            tag: a.identity.tag.clone(),
            application: a.identity.application.clone(),
            timeout_millis: a.timeout.map_or(0, |t| t.as_millis() as u64),
            link: a.link,
            ..Default::default()
        };
        jobs.push(Job { path: rel, output: out, request, size: Some(o.size), digest: None });
    }
    let nothing = format!("no object under {} matches --include/--exclude", a.url);
    many::fetch_dir(&a, &output, jobs, nothing, serde_json::json!({ "prefix": a.url })).await
}
