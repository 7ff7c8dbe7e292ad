//! `ferry preheat image REF`: the local daemon fetches an image's blobs into the cluster.

use ferry_proto::daemon::{Header, PreheatImageRequest};

use crate::cli::{PreheatCommand, PreheatImageArgs};
use crate::{exit, Exit};

pub async fn run(c: PreheatCommand) -> Result<(), Exit> {
    match c {
        PreheatCommand::Image(a) => image(a).await,
    }
}

async fn image(a: PreheatImageArgs) -> Result<(), Exit> {
    let headers = a
        .headers
        .iter()
        .map(|h| {
            let (n, v) = h
                .split_once(':')
                .ok_or_else(|| Exit::new(exit::USAGE, format!("header `{h}` is not `Name: value`")))?;
            Ok(Header { name: n.trim().to_owned(), value: v.trim().to_owned() })
        })
        .collect::<Result<Vec<_>, Exit>>()?;
    let mut client = ferry_daemon::local::connect(&a.socket).await.map_err(|m| Exit::new(exit::NO_DAEMON, m))?;
    let req =
        PreheatImageRequest { reference: a.reference.clone(), platform: a.platform, insecure: a.insecure, headers };
    let resp = client.preheat_image(req).await.map_err(|s| super::get::exit_for(&s))?.into_inner();
    let bytes: u64 = resp.blobs.iter().map(|b| b.size).sum();
    println!("{}: {} blobs, {bytes} bytes in the cluster", a.reference, resp.blobs.len());
    Ok(())
}
