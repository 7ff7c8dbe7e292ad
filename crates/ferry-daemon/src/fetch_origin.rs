//! Back-to-source: read the task from its origin, cut it into pieces, hash and store them.
//!
//! The origin is read once, front to back, from the first piece not yet held. A retryable
//! failure (5xx, reset, timeout) reopens the object with a range request at the start of the
//! piece being read, after an exponential pause; progress resets the retry budget. The piece
//! digests computed here become the task's reference list for every other peer, so nothing
//! unchecked may become one:
//!
//! - every reopened response must carry the validators (length, ETag, Last-Modified) the
//!   task started with, else the task fails with "origin changed" rather than mixing two
//!   versions of the object;
//! - when the task is named by a whole-file digest, the bytes are hashed as they stream and
//!   the last piece is stored only if the digest matches: a wrong URL under a digest fails
//!   its own request, and no peer ever completes, or keeps, bytes that are not the digest's.

use std::time::Duration;

use ferry_backend::{Backend, SourceBody};
use ferry_types::{FileDigest, FileHasher, PieceLayout};
use futures::stream::{FuturesOrdered, StreamExt};

use crate::retry::Backoff;
use crate::task::{ContentMeta, Event, Shared, Source, Stored};
use crate::DaemonError;

pub async fn fetch(shared: &Shared, piece_size: u32) -> Result<(), DaemonError> {
    let ctx = &shared.ctx;
    let request = &shared.handle.request;
    let backend = Backend::for_url(request.url(), &ctx.backend)?;
    let mut check = request.digest().map(WholeFile::new);
    let mut backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5), Some(ctx.opts.origin_retries as usize));
    loop {
        let offset = first_missing_offset(shared);
        if offset.is_some_and(|o| shared.layout().is_some_and(|l| o >= l.content_length())) {
            return Ok(());
        }
        let result = read_from(shared, &backend, offset.unwrap_or(0), piece_size, &mut check).await;
        match result {
            Ok(()) if shared.complete() => return Ok(()),
            Ok(()) => {}
            Err((e, progressed)) => {
                let retryable = matches!(&e, DaemonError::Origin(b) if b.is_retryable());
                if progressed {
                    backoff.reset();
                }
                let Some(pause) = backoff.next_pause().filter(|_| retryable) else {
                    return Err(e);
                };
                tracing::warn!(error = %e, ?pause, "origin read failed; retrying");
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

/// The whole-file digest, computed over the object in order as it streams by. Bytes before
/// the point a read starts at (held from an earlier read) are hashed from the content file.
struct WholeFile {
    expected: FileDigest,
    hasher: Option<FileHasher>,
    /// Bytes hashed so far.
    at: u64,
}

impl WholeFile {
    fn new(expected: &FileDigest) -> Self {
        Self { expected: expected.clone(), hasher: Some(expected.hasher()), at: 0 }
    }

    /// Brings the hash up to `offset` from what is on disk.
    fn catch_up(&mut self, shared: &Shared, offset: u64) -> Result<(), DaemonError> {
        let (Some(h), Some(c)) = (self.hasher.as_mut(), shared.handle.content.get()) else { return Ok(()) };
        let layout = *c.file.layout();
        while self.at < offset {
            let idx = layout.index((self.at / layout.piece_size() as u64) as u32).expect("offset inside the layout");
            let piece = c.file.read_piece(idx)?;
            let skip = (self.at - layout.offset(idx)) as usize;
            h.update(&piece[skip..]);
            self.at = layout.offset(idx) + piece.len() as u64;
        }
        Ok(())
    }

    fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = self.hasher.as_mut() {
            h.update(bytes);
            self.at += bytes.len() as u64;
        }
    }

    fn verify(&mut self) -> Result<(), DaemonError> {
        let Some(h) = self.hasher.take() else { return Ok(()) };
        let actual = h.finish();
        if actual != self.expected {
            return Err(DaemonError::DigestMismatch {
                expected: self.expected.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

/// The layout of a task read for the first time, or a check that a reopened response still
/// describes the content the task started with.
fn settle_content(shared: &Shared, body: &SourceBody, piece_size: u32) -> Result<PieceLayout, DaemonError> {
    if let Some(c) = shared.handle.content.get() {
        if !body.validators.same_content(&c.validators) {
            return Err(DaemonError::OriginChanged(format!(
                "the task started with {:?} and the origin now answers {:?}",
                c.validators, body.validators
            )));
        }
        return Ok(*c.file.layout());
    }
    let length = body.validators.length;
    let layout = match piece_size {
        0 => PieceLayout::for_length(length),
        ps => PieceLayout::new(length, ps).map_err(|e| DaemonError::BadRequest(e.to_string()))?,
    };
    let meta =
        ContentMeta { layout, validators: body.validators.clone(), private: shared.handle.request.credentialed() };
    shared.init_content(meta.clone())?;
    let _ = shared.events.send(Event::Layout(meta));
    Ok(layout)
}

/// Pieces handed to verification and storage while the next ones are read: the socket is
/// never left waiting on a hash or a write.
const STORE_DEPTH: usize = 4;

/// One pass over the origin's body; the flag says whether any piece was stored.
async fn read_from(
    shared: &Shared,
    backend: &Backend,
    offset: u64,
    piece_size: u32,
    check: &mut Option<WholeFile>,
) -> Result<(), (DaemonError, bool)> {
    let request = &shared.handle.request;
    let mut body = backend.open(request, offset).await.map_err(|e| (e.into(), false))?;
    let layout = settle_content(shared, &body, piece_size).map_err(|e| (e, false))?;
    if let Some(c) = check.as_mut() {
        c.catch_up(shared, offset).map_err(|e| (e, false))?;
    }
    let first = (offset / layout.piece_size() as u64) as u32;
    let mut storing = FuturesOrdered::new();
    let mut progressed = false;
    let mut buf: Vec<u8> = Vec::with_capacity(layout.piece_size() as usize);
    let read = async {
        for index in first..layout.piece_count() {
            let want = layout.len(layout.index(index).expect("in range")) as usize;
            while buf.len() < want {
                let chunk = tokio::select! {
                    biased;
                    Some(stored) = storing.next(), if !storing.is_empty() => {
                        progressed |= settled(stored)?;
                        continue;
                    }
                    chunk = body.chunk() => chunk,
                };
                match chunk? {
                    Some(chunk) => buf.extend_from_slice(&chunk),
                    None => {
                        let reason = "body ended early".into();
                        return Err(ferry_backend::BackendError::Read { url: request.redacted_url(), reason }.into());
                    }
                }
            }
            // The next piece's buffer, allocated whole once: no regrowing copies.
            let mut next = Vec::with_capacity(layout.piece_size() as usize);
            next.extend_from_slice(&buf[want..]);
            buf.truncate(want);
            let piece = std::mem::replace(&mut buf, next);
            if let Some(c) = check.as_mut() {
                c.update(&piece);
                if index + 1 == layout.piece_count() {
                    c.verify()?;
                }
            }
            if !shared.is_done(index) {
                storing.push_back(store(shared, index, piece));
                while storing.len() >= STORE_DEPTH {
                    progressed |= settled(storing.next().await.expect("not empty"))?;
                }
            }
        }
        Ok::<(), DaemonError>(())
    }
    .await;
    // However the read ended, pieces already read are stored: a retry starts after them.
    let mut stored = Ok(());
    while let Some(s) = storing.next().await {
        match settled(s) {
            Ok(p) => progressed |= p,
            Err(e) => stored = stored.and(Err(e)),
        }
    }
    read.and(stored).map_err(|e| (e, progressed))?;
    if let Some(c) = check.as_mut() {
        // An empty object has no last piece to verify before.
        c.verify().map_err(|e| (e, progressed))?;
    }
    if !buf.is_empty() || body.chunk().await.is_ok_and(|c| c.is_some_and(|c| !c.is_empty())) {
        let e = DaemonError::OriginChanged("the origin sent more bytes than its length".into());
        return Err((e, progressed));
    }
    Ok(())
}

async fn store(shared: &Shared, index: u32, piece: Vec<u8>) -> Result<(u32, Stored), DaemonError> {
    shared.store_piece(index, piece, Source::Origin).await.map(|s| (index, s))
}

/// What one stored piece means for the read: progress, or the origin changed under it.
fn settled(stored: Result<(u32, Stored), DaemonError>) -> Result<bool, DaemonError> {
    match stored? {
        (index, Stored::Mismatch) => {
            Err(DaemonError::OriginChanged(format!("piece {index} no longer matches its digest")))
        }
        _ => Ok(true),
    }
}
