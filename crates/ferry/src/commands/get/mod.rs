//! `ferry get URL -O PATH`: one download through the local daemon; `hf://` and `modelscope://` repositories
//! (one file, or with `-r` many, each its own task) in [`hub`].

mod hub;
mod many;
mod objects;
mod oci;

use std::path::PathBuf;
use std::time::Instant;

use ferry_proto::daemon::{DownloadProgress, DownloadRequest, Header};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use tonic::Code;

use ferry_proto::scheduler::FailureCode;

use crate::cli::GetArgs;
use crate::{exit, Exit};

/// Maps a status from the daemon to an exit code; the daemon's message is already one line.
/// The failure code the daemon attaches decides; the gRPC code is the fallback.
pub fn exit_for(status: &tonic::Status) -> Exit {
    let failure = status
        .metadata()
        .get(ferry_daemon::error::FAILURE_METADATA)
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        .and_then(|c| FailureCode::try_from(c).ok());
    let by_failure = failure.and_then(|f| {
        Some(match f {
            FailureCode::OriginStatus
            | FailureCode::OriginUnreachable
            | FailureCode::Unauthorized
            | FailureCode::OriginBadResponse => exit::ORIGIN,
            FailureCode::DigestMismatch => exit::INTEGRITY,
            FailureCode::StorageFull => exit::DISK_FULL,
            FailureCode::Timeout => exit::TIMEOUT,
            FailureCode::NoScheduler => exit::NO_SCHEDULER,
            FailureCode::OriginChanged => exit::ORIGIN_CHANGED,
            _ => return None,
        })
    });
    if let Some(code) = by_failure.filter(|_| status.code() != Code::InvalidArgument) {
        return Exit::new(code, status.message().to_owned());
    }
    let code = match status.code() {
        Code::InvalidArgument => exit::USAGE,
        Code::NotFound | Code::PermissionDenied => exit::ORIGIN,
        Code::Unavailable => exit::ORIGIN,
        Code::DataLoss => exit::INTEGRITY,
        Code::ResourceExhausted => exit::DISK_FULL,
        Code::DeadlineExceeded => exit::TIMEOUT,
        _ => exit::FAILURE,
    };
    Exit::new(code, status.message().to_owned())
}

fn request(a: &GetArgs) -> Result<DownloadRequest, Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    let url = url::Url::parse(&a.url).map_err(|e| usage(format!("malformed URL `{}`: {e}", a.url)))?;
    if !matches!(url.scheme(), "http" | "https") && !ferry_backend::object::is_object_scheme(url.scheme()) {
        return Err(usage(ferry_backend::BackendError::UnsupportedScheme(url.scheme().to_owned()).to_string()));
    }
    if ferry_backend::object::is_object_scheme(url.scheme()) {
        ferry_backend::object::ObjectUrl::parse(&url).map_err(|e| usage(e.to_string()))?;
    }
    if let Some(d) = &a.digest {
        d.parse::<ferry_types::FileDigest>().map_err(|e| usage(e.to_string()))?;
    }
    let output = output_file(&a.output)?;
    let headers = a
        .headers
        .iter()
        .map(|h| {
            let (n, v) = h.split_once(':').ok_or_else(|| usage(format!("header `{h}` is not `Name: value`")))?;
            Ok((n.trim().to_owned(), v.trim().to_owned()))
        })
        .collect::<Result<Vec<_>, Exit>>()?;
    // The daemon checks again; checking here gives the same line without a daemon.
    ferry_types::OriginRequest::new(url, headers.clone(), None, vec![]).map_err(|e| usage(e.to_string()))?;
    let headers = headers.into_iter().map(|(name, value)| Header { name, value }).collect();
    Ok(DownloadRequest {
        url: a.url.clone(),
        output: output.display().to_string(),
        headers,
        digest: a.digest.clone().unwrap_or_default(),
        tag: a.identity.tag.clone(),
        application: a.identity.application.clone(),
        filtered_query_params: a.identity.filter_query_params.clone(),
        timeout_millis: a.timeout.map_or(0, |t| t.as_millis() as u64),
        link: a.link,
    })
}

/// The absolute path of a file to write: refused when it is a directory or its directory
/// does not exist.
pub(crate) fn output_file(path: &std::path::Path) -> Result<PathBuf, Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    let output = absolute(path).map_err(|e| usage(format!("output path {}: {e}", path.display())))?;
    if output.is_dir() {
        return Err(usage(format!("output {} is a directory; give a file path", output.display())));
    }
    match output.parent() {
        Some(dir) if dir.is_dir() => Ok(output),
        _ => Err(usage(format!(
            "output directory {} does not exist; create it first",
            output.parent().unwrap_or(&output).display()
        ))),
    }
}

/// The CLI's own HTTP client (hub and registry APIs): the daemon's origin client, with its
/// timeouts, TLS roots and `User-Agent`.
fn http_client() -> Result<reqwest::Client, Exit> {
    let backend = ferry_backend::HttpBackend::new(&Default::default());
    Ok(backend.map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?.client().clone())
}

pub(crate) fn absolute(p: &std::path::Path) -> std::io::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

pub async fn run(a: GetArgs) -> Result<(), Exit> {
    if a.url.starts_with("hf://") || a.url.starts_with("modelscope://") {
        return hub::run(a).await;
    }
    if a.url.starts_with("oci://") {
        return oci::run(a).await;
    }
    if a.recursive && a.url.split_once("://").is_some_and(|(s, _)| ferry_backend::object::is_object_scheme(s)) {
        return objects::run(a).await;
    }
    if a.recursive {
        return Err(Exit::new(
            exit::USAGE,
            "-r fetches a directory (hf://, s3://, gs://, azblob://); an http(s) URL is one file",
        ));
    }
    let req = request(&a)?;
    let started = Instant::now();
    let mut client = ferry_daemon::local::connect(&a.socket).await.map_err(|m| Exit::new(exit::NO_DAEMON, m))?;
    let bar = (!a.quiet && !a.json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid template"),
        );
        b
    });
    let result = download(&mut client, req, &a.socket, bar.as_ref()).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let (Err(e), true) = (&result, a.json) {
        println!("{}", serde_json::json!({ "error": e.message, "exit_code": e.code, "url": redacted(&a.url) }));
    }
    let p = result?;
    if a.json {
        let j = serde_json::json!({
            "task_id": p.task_id,
            "output": a.output,
            "bytes": p.content_length,
            "bytes_from_peers": p.bytes_from_peers,
            "bytes_from_origin": p.bytes_from_origin,
            "bytes_from_cache": p.bytes_from_cache,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{j}");
    }
    Ok(())
}

/// One download through the daemon, to its end: the last progress message, or why not.
pub(crate) async fn download(
    client: &mut ferry_proto::daemon::daemon_client::DaemonClient<tonic::transport::Channel>,
    req: DownloadRequest,
    socket: &std::path::Path,
    bar: Option<&ProgressBar>,
) -> Result<DownloadProgress, Exit> {
    let mut stream = client.download(req).await.map_err(|s| exit_for(&s))?.into_inner();
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                if let Some(b) = bar {
                    b.set_length(p.content_length);
                    b.set_position(p.completed_bytes);
                }
                if p.done {
                    return Ok(p);
                }
            }
            Ok(None) => return Err(lost(socket, "it closed the download without a result")),
            // Every status the daemon itself sends carries a failure code; one without is
            // the connection breaking under the stream.
            Err(s)
                if s.metadata().get(ferry_daemon::error::FAILURE_METADATA).is_none()
                    && s.code() != Code::InvalidArgument =>
            {
                return Err(lost(socket, s.message()))
            }
            Err(s) => return Err(exit_for(&s)),
        }
    }
}

fn lost(socket: &std::path::Path, detail: &str) -> Exit {
    Exit::new(
        exit::DAEMON_LOST,
        format!(
            "lost the connection to the daemon at {} mid-download ({detail}); is it still running? \
             Run the command again once it is: pieces it stored are kept",
            socket.display()
        ),
    )
}

fn redacted(url: &str) -> String {
    url::Url::parse(url).map(|u| ferry_types::redact_url(&u, &[])).unwrap_or_default()
}
