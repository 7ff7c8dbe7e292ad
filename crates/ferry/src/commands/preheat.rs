//! `ferry preheat image REF`: the local daemon fetches an image's blobs into the cluster.

use ferry_proto::daemon::{Header, PreheatImageRequest};

use crate::cli::{PreheatCommand, PreheatFileArgs, PreheatImageArgs};
use crate::{exit, Exit};

pub async fn run(c: PreheatCommand) -> Result<(), Exit> {
    match c {
        PreheatCommand::Image(a) if a.manager.manager_url.is_some() => image_via_manager(a).await,
        PreheatCommand::Image(a) => image(a).await,
        PreheatCommand::File(a) => file_via_manager(a).await,
    }
}

fn parse_headers(raw: &[String]) -> Result<Vec<Header>, Exit> {
    raw.iter()
        .map(|h| {
            let (n, v) = h
                .split_once(':')
                .ok_or_else(|| Exit::new(exit::USAGE, format!("header `{h}` is not `Name: value`")))?;
            Ok(Header { name: n.trim().to_owned(), value: v.trim().to_owned() })
        })
        .collect()
}

fn header_map(headers: &[Header]) -> serde_json::Map<String, serde_json::Value> {
    headers.iter().map(|h| (h.name.clone(), serde_json::Value::String(h.value.clone()))).collect()
}

/// The image onto the scope's hosts of the chosen clusters, as a manager job.
async fn image_via_manager(a: PreheatImageArgs) -> Result<(), Exit> {
    let headers = parse_headers(&a.headers)?;
    let image = ferry_daemon::mirror::preheat::parse_reference(&a.reference, a.insecure)
        .map_err(|m| Exit::new(exit::USAGE, m))?;
    let reference = match &image.reference {
        ferry_daemon::mirror::oci::Reference::Tag(t) => t.clone(),
        ferry_daemon::mirror::oci::Reference::Digest(d) => d.to_string(),
    };
    let url = format!("{}v2/{}/manifests/{reference}", image.registry, image.repository);
    let api = super::manage::Api::connect(&a.manager).await?;
    let args =
        serde_json::json!({"type": "image", "url": url, "platform": a.platform, "headers": header_map(&headers)});
    super::manage::preheat(&api, args, &a.target).await
}

async fn file_via_manager(a: PreheatFileArgs) -> Result<(), Exit> {
    let headers = parse_headers(&a.headers)?;
    let api = super::manage::Api::connect(&a.manager).await?;
    let mut args = super::manage::identity(&a.identity);
    args["type"] = "file".into();
    args["urls"] = serde_json::json!(a.urls);
    args["headers"] = header_map(&headers).into();
    args["digest"] = a.digest.unwrap_or_default().into();
    super::manage::preheat(&api, args, &a.target).await
}

async fn image(a: PreheatImageArgs) -> Result<(), Exit> {
    let headers = parse_headers(&a.headers)?;
    let mut client = ferry_daemon::local::connect(&a.socket).await.map_err(|m| Exit::new(exit::NO_DAEMON, m))?;
    let req =
        PreheatImageRequest { reference: a.reference.clone(), platform: a.platform, insecure: a.insecure, headers };
    let resp = client.preheat_image(req).await.map_err(|s| super::get::exit_for(&s))?.into_inner();
    let bytes: u64 = resp.blobs.iter().map(|b| b.size).sum();
    println!("{}: {} blobs, {bytes} bytes in the cluster", a.reference, resp.blobs.len());
    Ok(())
}
