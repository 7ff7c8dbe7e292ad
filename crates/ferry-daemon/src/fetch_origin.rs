//! Back-to-source: read the task from its origin, cut it into pieces, hash and store them.
//!
//! The origin is read once, front to back, from the first piece not yet held. A retryable
//! failure (5xx, reset, timeout) reopens the object with a range request at the start of the
//! piece being read, after an exponential pause; progress resets the retry budget. The piece
//! digests computed here become the task's reference list for every other peer.

use std::time::Duration;

use ferry_backend::{Backend, SourceRequest};
use ferry_types::PieceLayout;

use crate::task::{Event, Shared, Source};
use crate::DaemonError;

pub async fn fetch(shared: &Shared, piece_size: u32) -> Result<(), DaemonError> {
    let ctx = &shared.ctx;
    let spec = &shared.handle.spec;
    let backend = Backend::for_url(&spec.url, &ctx.backend)?;
    let req = SourceRequest { url: spec.url.clone(), headers: spec.headers.clone() };
    let mut attempt = 0u32;
    loop {
        let offset = first_missing_offset(shared);
        if offset.is_some_and(|o| shared.layout().is_some_and(|l| o >= l.content_length())) {
            return Ok(());
        }
        let result = read_from(shared, &backend, &req, offset.unwrap_or(0), piece_size).await;
        match result {
            Ok(()) if shared.complete() => return Ok(()),
            Ok(()) => {}
            Err((e, progressed)) => {
                let retryable = matches!(&e, DaemonError::Origin(b) if b.is_retryable());
                if progressed {
                    attempt = 0;
                }
                if !retryable || attempt >= ctx.opts.origin_retries {
                    return Err(e);
                }
                attempt += 1;
                let pause = Duration::from_millis(100 << attempt.min(6));
                tracing::warn!(error = %e, attempt, ?pause, "origin read failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Offset of the first piece not held, or `None` when the layout is still unknown.
fn first_missing_offset(shared: &Shared) -> Option<u64> {
    let layout = shared.layout()?;
    let first = layout.indices().find(|i| !shared.is_done(i.get()));
    Some(first.map_or(layout.content_length(), |i| layout.offset(i)))
}

/// One pass over the origin's body; the flag says whether any piece was stored.
async fn read_from(
    shared: &Shared,
    backend: &Backend,
    req: &SourceRequest,
    offset: u64,
    piece_size: u32,
) -> Result<(), (DaemonError, bool)> {
    let mut body = backend.open(req, offset).await.map_err(|e| (e.into(), false))?;
    let layout = match shared.layout() {
        Some(l) => l,
        None => {
            let l = match piece_size {
                0 => PieceLayout::for_length(body.content_length),
                ps => PieceLayout::new(body.content_length, ps)
                    .map_err(|e| (DaemonError::BadRequest(e.to_string()), false))?,
            };
            shared.init_content(l).map_err(|e| (e, false))?;
            let _ = shared.events.send(Event::Layout(l));
            l
        }
    };
    if body.content_length != layout.content_length() {
        return Err((
            DaemonError::BadRequest(format!(
                "origin size changed: {} bytes now, {} when the task started",
                body.content_length,
                layout.content_length()
            )),
            false,
        ));
    }
    let mut index = (offset / layout.piece_size() as u64) as u32;
    let mut progressed = false;
    let mut buf: Vec<u8> = Vec::with_capacity(layout.piece_size() as usize);
    while index < layout.piece_count() {
        let want = layout.len(layout.index(index).expect("in range")) as usize;
        while buf.len() < want {
            match body.chunk().await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                Ok(None) => {
                    let e = ferry_backend::BackendError::Read {
                        url: req.url.to_string(),
                        reason: "body ended early".into(),
                    };
                    return Err((e.into(), progressed));
                }
                Err(e) => return Err((e.into(), progressed)),
            }
        }
        let rest = buf.split_off(want);
        let piece = std::mem::replace(&mut buf, rest);
        if !shared.is_done(index) {
            let stored = shared.store_piece(index, piece, Source::Origin).await.map_err(|e| (e, progressed))?;
            if stored == crate::task::Stored::Mismatch {
                return Err((DaemonError::OriginChanged { index }, progressed));
            }
            progressed = true;
        }
        index += 1;
    }
    Ok(())
}
