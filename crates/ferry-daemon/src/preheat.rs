//! A scheduler's preheat order (the manager's preheat job, relayed): fetch a file or an
//! image into this host's cache, exactly as a download or a pull would, then tell the
//! scheduler how it went (`PreheatDone`).

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::scheduler::{preheat_work, PreheatFile, PreheatImage, PreheatOrder, PreheatReport};
use ferry_types::{FileDigest, OriginRequest, TaskId, TaskIdInput};

use crate::ctx::Ctx;
use crate::DaemonError;

/// A preheat waits this long without progress before it gives up (as `ferry preheat` does).
const IDLE: Duration = Duration::from_secs(300);

/// Runs the order in the background and reports to the scheduler at `from`.
pub fn on_order(ctx: &Arc<Ctx>, from: String, order: PreheatOrder) {
    let ctx = ctx.clone();
    let span = tracing::info_span!("preheat_order", order = order.order_id, scheduler = %from);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let deadline = Duration::from_millis(order.timeout_millis.max(1));
            let work = order.work.and_then(|w| w.work);
            let outcome = match tokio::time::timeout(deadline, run(&ctx, work)).await {
                Ok(r) => r,
                Err(_) => Err(DaemonError::Timeout(deadline)),
            };
            let report = match outcome {
                Ok(urls) => {
                    tracing::info!(items = urls.len(), "preheated");
                    PreheatReport {
                        order_id: order.order_id,
                        host_id: ctx.env.opts.host_id.to_string(),
                        ok: true,
                        urls,
                        ..Default::default()
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "preheat failed");
                    PreheatReport {
                        order_id: order.order_id,
                        host_id: ctx.env.opts.host_id.to_string(),
                        error: e.to_string(),
                        ..Default::default()
                    }
                }
            };
            report_to(&ctx, &from, report).await;
        },
        span,
    ));
}

/// Tells the scheduler, retrying briefly: its wait ends with this answer or its deadline.
async fn report_to(ctx: &Ctx, from: &str, report: PreheatReport) {
    for attempt in 0..5u32 {
        let Some(mut client) = ctx.schedulers.client(from) else {
            tracing::info!("the scheduler that ordered the preheat left this host's set; not reporting");
            return;
        };
        match client.preheat_done(report.clone()).await {
            Ok(_) => return,
            Err(s) => {
                tracing::debug!(error = %s.message(), attempt, "cannot report the preheat yet");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    tracing::warn!("could not report the preheat to its scheduler");
}

/// What was fetched: the file's URL, or each blob's digest.
async fn run(ctx: &Arc<Ctx>, work: Option<preheat_work::Work>) -> Result<Vec<String>, DaemonError> {
    match work {
        Some(preheat_work::Work::File(f)) => file(ctx, f).await.map(|u| vec![u]),
        Some(preheat_work::Work::Image(i)) => image(ctx, i).await,
        None => Err(DaemonError::BadRequest("the preheat order names nothing to fetch".into())),
    }
}

async fn file(ctx: &Arc<Ctx>, f: PreheatFile) -> Result<String, DaemonError> {
    let url = url::Url::parse(&f.url).map_err(|e| DaemonError::BadRequest(format!("url: {e}")))?;
    let digest = match f.digest.as_str() {
        "" => None,
        d => Some(d.parse::<FileDigest>().map_err(|e| DaemonError::BadRequest(e.to_string()))?),
    };
    let id = TaskId::derive(&TaskIdInput {
        url: Some(&url),
        digest: digest.as_ref(),
        tag: &f.tag,
        application: &f.application,
        filtered_query_params: &f.filtered_query_params,
    });
    let headers = f.headers.into_iter().map(|h| (h.name, h.value)).collect();
    let request = OriginRequest::new(url, headers, digest, f.filtered_query_params)
        .map_err(|e| DaemonError::BadRequest(e.to_string()))?;
    let id = if request.credentialed() || ctx.env.opts.always_authorize {
        let v = ctx.authorize(&request).await?;
        if request.digest().is_some() {
            id
        } else {
            id.at_version(&v)
        }
    } else {
        id
    };
    crate::mirror::content::complete(ctx, id, &request, IDLE)
        .await
        .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|e| DaemonError::BadRequest(e.to_string())))?;
    Ok(request.redacted_url())
}

async fn image(ctx: &Arc<Ctx>, i: PreheatImage) -> Result<Vec<String>, DaemonError> {
    let image = crate::mirror::preheat::parse_reference(&i.reference, i.insecure).map_err(DaemonError::BadRequest)?;
    let platform = if i.platform.is_empty() { "linux/amd64" } else { i.platform.as_str() };
    let headers: Vec<(String, String)> = i.headers.into_iter().map(|h| (h.name, h.value)).collect();
    let blobs = crate::mirror::preheat::preheat_image(ctx, &image, platform, &headers).await?;
    Ok(blobs.into_iter().map(|(d, _)| d.to_string()).collect())
}
