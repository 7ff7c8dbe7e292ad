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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_backend::SourceBody;
use ferry_storage::PieceStore;
use ferry_types::{FileDigest, FileHasher, PieceDigest, PieceIndex, PieceLayout};
use tokio::sync::mpsc;

use super::shared::{ContentMeta, Event, Shared, Source};
use crate::retry::Backoff;
use crate::DaemonError;

pub async fn fetch(shared: &Arc<Shared>, piece_size: u32) -> Result<(), DaemonError> {
    let env = &shared.env;
    let request = &shared.handle.request;
    let mut check = request.digest().map(WholeFile::new);
    let mut backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5), Some(env.opts.origin_retries as usize));
    loop {
        let offset = first_missing_offset(shared);
        if offset.is_some_and(|o| shared.layout().is_some_and(|l| o >= l.content_length())) {
            return Ok(());
        }
        let result = read_from(shared, offset.unwrap_or(0), piece_size, &mut check).await;
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
#[derive(Clone)]
struct WholeFile {
    expected: FileDigest,
    /// Started once the length is known (git's blob id covers it); `None` after `verify`.
    hasher: Option<FileHasher>,
    verified: bool,
    /// Bytes hashed so far.
    at: u64,
}

impl WholeFile {
    fn new(expected: &FileDigest) -> Self {
        Self { expected: expected.clone(), hasher: None, verified: false, at: 0 }
    }

    /// Brings the hash up to `offset` from what is on disk (starting it, the content's
    /// length being known now).
    fn catch_up(&mut self, shared: &Shared, offset: u64) -> Result<(), DaemonError> {
        let Some(c) = shared.handle.content.get() else { return Ok(()) };
        let layout = *c.file.layout();
        if self.hasher.is_none() && !self.verified {
            self.hasher = Some(self.expected.hasher(layout.content_length()));
        }
        let Some(h) = self.hasher.as_mut() else { return Ok(()) };
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
        self.verified = true;
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

/// The look at a new task's first bytes goes in windows ending at 25, 50, 100, 200, ... ms
/// and stops when a window's rate is less than half again the one before (TCP's slow start
/// is over), after [`PROBE_MAX`] or at [`PROBE_MAX_BYTES`].
const PROBE_FIRST: Duration = Duration::from_millis(25);
const PROBE_MAX: Duration = Duration::from_millis(500);
const PROBE_MAX_BYTES: u64 = 16 << 20;

/// The rate (bytes per second) an origin delivers a new task at, for its piece size
/// ([`PieceLayout::for_rate`]): the body's first bytes are read until their rate stops
/// climbing, and put back. `None` when the body ended or failed first (the length then
/// decides). On a LAN the look takes two windows (50 ms); an origin far away is looked at
/// as long as its slow start lasts (the rate, taken over the whole look, is then low by up
/// to half: pieces a size smaller).
async fn probe_rate(body: &mut SourceBody) -> Option<f64> {
    use tokio::time::Instant;
    let start = Instant::now();
    let (mut read, mut total, mut ended) = (Vec::new(), 0u64, false);
    let (mut window, mut in_window, mut before) = ((start, start + PROBE_FIRST), 0u64, None::<f64>);
    let rate = loop {
        match tokio::time::timeout_at(window.1, body.chunk()).await {
            Err(_) => {
                let rate = in_window as f64 / (window.1 - window.0).as_secs_f64();
                let looked = window.1 - start;
                if before.is_some_and(|b| rate < 1.5 * b) || looked >= PROBE_MAX {
                    // Over the whole look: a window of a few chunks is too coarse (bytes
                    // that queued while the look began come in one burst).
                    break Some(total as f64 / looked.as_secs_f64());
                }
                let next = start + (looked * 2).min(PROBE_MAX);
                (window, in_window, before) = ((window.1, next), 0, Some(rate));
            }
            Ok(Ok(Some(c))) => {
                total += c.len() as u64;
                in_window += c.len() as u64;
                read.push(Ok(c));
                if total >= PROBE_MAX_BYTES {
                    break Some(total as f64 / start.elapsed().as_secs_f64());
                }
            }
            Ok(Ok(None)) => {
                ended = true;
                break None;
            }
            Ok(Err(e)) => {
                read.push(Err(e));
                break None;
            }
        }
    };
    body.put_back(read, ended);
    tracing::info!(look = ?start.elapsed(), ?rate, bytes = total, "origin rate measured");
    rate
}

/// The rate to cut a new task by (see [`probe_rate`]); `None` for a task whose layout is
/// known or chosen, or too short to measure.
async fn origin_rate(shared: &Shared, body: &mut SourceBody, piece_size: u32) -> Option<f64> {
    let new_task = shared.handle.content.get().is_none() && piece_size == 0;
    if !new_task || body.validators.length < ferry_types::MIN_RATE_LENGTH {
        return None;
    }
    let rate = probe_rate(body).await?;
    // A download cap is the rate the rest of the read will come at.
    let cap = shared.env.opts.download_limit.as_ref().map(|l| l.bytes_per_second() as f64);
    Some(cap.map_or(rate, |c| rate.min(c)))
}

/// The layout of a task read for the first time, or a check that a reopened response still
/// describes the content the task started with. `rate`: how fast the origin delivers, if
/// it was measured.
fn settle_content(
    shared: &Shared,
    body: &SourceBody,
    piece_size: u32,
    rate: Option<f64>,
) -> Result<PieceLayout, DaemonError> {
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
    let layout = match (piece_size, rate) {
        (0, Some(rate)) => PieceLayout::for_rate(length, rate),
        (0, None) => PieceLayout::for_length(length),
        (ps, _) => PieceLayout::new(length, ps).map_err(|e| DaemonError::BadRequest(e.to_string()))?,
    };
    let meta =
        ContentMeta { layout, validators: body.validators.clone(), private: shared.handle.request.credentialed() };
    shared.init_content(meta.clone())?;
    shared.emit(Event::Layout(meta));
    Ok(layout)
}

/// Chunks in flight between the socket reader and the writer thread.
const CHUNKS_IN_FLIGHT: usize = 64;

/// One pass over the origin's body; the flag says whether any piece was stored.
///
/// The socket is read here; a blocking writer thread ([`write_pieces`]) takes each chunk as
/// it comes, hashes it (piece digest, and whole-file digest when there is one) and writes it
/// to the content file and to any output being written alongside, while the data is still
/// in the CPU's cache. Finished pieces come back with their digest, are recorded, and
/// accepted here. Neither thread waits on the other's work.
async fn read_from(
    shared: &Arc<Shared>,
    offset: u64,
    piece_size: u32,
    check: &mut Option<WholeFile>,
) -> Result<(), (DaemonError, bool)> {
    let request = &shared.handle.request;
    let mut body = shared.env.origin.open(request, offset).await.map_err(|e| (e.into(), false))?;
    let rate = origin_rate(shared, &mut body, piece_size).await;
    let layout = settle_content(shared, &body, piece_size, rate).map_err(|e| (e, false))?;
    if let Some(c) = check.as_mut() {
        c.catch_up(shared, offset).map_err(|e| (e, false))?;
    }
    let first = (offset / layout.piece_size() as u64) as u32;
    let (chunks, chunks_rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let writer = {
        let (shared, whole) = (shared.clone(), check.take());
        tokio::task::spawn_blocking(move || write_pieces(&shared, layout, first, chunks_rx, done_tx, whole))
    };
    let mut left = layout.content_length() - (first as u64 * layout.piece_size() as u64).min(layout.content_length());
    let mut progressed = false;
    let mut failed = None;
    let mut extra = false;
    // Read until the body is done (or fails), accepting pieces as the writer finishes them.
    while failed.is_none() {
        tokio::select! {
            biased;
            Some(w) = done.recv() => match w {
                Ok((index, digest)) => progressed |= shared.accept(index, digest, Source::Origin),
                Err(e) => failed = Some(e),
            },
            chunk = body.chunk() => match chunk {
                Ok(Some(c)) if c.is_empty() => {}
                Ok(Some(c)) if left == 0 => { extra = !c.is_empty(); break }
                Ok(Some(c)) => {
                    let c = if c.len() as u64 > left { extra = true; c.slice(..left as usize) } else { c };
                    left -= c.len() as u64;
                    if let Some(limit) = &shared.env.opts.download_limit {
                        limit.acquire(c.len() as u64).await;
                    }
                    if chunks.send(c).await.is_err() {
                        break; // The writer stopped: its reason comes through `done`.
                    }
                }
                Ok(None) if left == 0 => break,
                Ok(None) => {
                    let reason = "body ended early".into();
                    failed = Some(ferry_backend::BackendError::Read { url: request.redacted_url(), reason }.into());
                }
                Err(e) => failed = Some(e.into()),
            },
        }
    }
    // Whatever ended the read, the pieces already read are finished first: a retry starts
    // after them.
    drop(chunks);
    while let Some(w) = done.recv().await {
        match w {
            Ok((index, digest)) => progressed |= shared.accept(index, digest, Source::Origin),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    *check = writer.await.expect("the piece writer does not panic");
    if let Some(e) = failed {
        return Err((e, progressed));
    }
    if extra || body.chunk().await.is_ok_and(|c| c.is_some_and(|c| !c.is_empty())) {
        let e = DaemonError::OriginChanged("the origin sent more bytes than its length".into());
        return Err((e, progressed));
    }
    if let Some(c) = check.as_mut() {
        // An empty object has no last piece to verify before.
        c.verify().map_err(|e| (e, progressed))?;
    }
    Ok(())
}

/// The writer thread of [`read_from`]: hashes and writes chunks as they come, piece by
/// piece, and reports each finished piece with its digest, recorded in storage. A piece is
/// refused (and the writer stops) when its digest contradicts one the task already has, or
/// when it is the last and the whole-file digest does not match. Returns the whole-file
/// check as of the last finished piece, so a retried read hashes on from there.
fn write_pieces(
    shared: &Shared,
    layout: PieceLayout,
    first: u32,
    mut chunks: mpsc::Receiver<Bytes>,
    done: mpsc::UnboundedSender<Result<(u32, PieceDigest), DaemonError>>,
    mut whole: Option<WholeFile>,
) -> Option<WholeFile> {
    let Some(content) = shared.handle.content.get() else { return whole };
    let (file, store, task) = (&content.file, &shared.env.store, shared.handle.id);
    let mut index = first;
    let mut piece: Option<PieceInProgress> = None;
    // The whole-file hash as of the last finished piece.
    let mut settled = whole.clone();
    while let Some(mut data) = chunks.blocking_recv() {
        while !data.is_empty() {
            let Ok(idx) = layout.index(index) else { return settled };
            let p = piece.get_or_insert_with(|| PieceInProgress::start(shared, idx));
            let take = ((layout.len(idx) - p.written) as usize).min(data.len());
            let seg = data.split_to(take);
            p.hasher.update(&seg);
            if let Some(w) = whole.as_mut() {
                w.update(&seg);
            }
            let at = layout.offset(idx) + p.written as u64;
            if !p.held {
                if let Err(e) = file.write_slice(idx, at, &seg) {
                    let _ = done.send(Err(e.into()));
                    return settled;
                }
            }
            for s in &p.sinks {
                let _ = s.write_at(at, &seg);
            }
            p.written += take as u32;
            if p.written < layout.len(idx) {
                continue;
            }
            let p = piece.take().expect("in progress");
            let digest = PieceDigest(*p.hasher.finalize().as_bytes());
            let verdict = (|| {
                if index + 1 == layout.piece_count() {
                    if let Some(w) = whole.as_mut() {
                        w.verify()?;
                    }
                }
                if shared.known_digest(index).is_some_and(|k| k != digest) {
                    return Err(DaemonError::OriginChanged(format!("piece {index} differs from its digest")));
                }
                if !p.held {
                    store.record_piece(task, idx, digest)?;
                }
                Ok(())
            })();
            if let Err(e) = verdict {
                let _ = done.send(Err(e));
                return settled;
            }
            for s in &p.sinks {
                s.mark(idx);
            }
            settled = whole.clone();
            let _ = done.send(Ok((index, digest)));
            index += 1;
        }
    }
    settled
}

/// The piece the writer is in the middle of.
struct PieceInProgress {
    hasher: blake3::Hasher,
    written: u32,
    /// Already verified here (a resumed task): hashed for the whole-file check, not rewritten.
    held: bool,
    /// Outputs written alongside that were there when the piece began (one that comes
    /// later is filled from the cache when it lands).
    sinks: Vec<Arc<crate::output::OutputSink>>,
}

impl PieceInProgress {
    fn start(shared: &Shared, idx: PieceIndex) -> Self {
        let held = shared.is_done(idx.get());
        Self { hasher: blake3::Hasher::new(), written: 0, held, sinks: shared.handle.live_sinks() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_backend::BackendError;
    use ferry_types::Validators;
    use futures::StreamExt;

    const KIB: usize = 1024;

    /// A body of `len` bytes in chunks of `chunk`, one every `every`, and `tail` after them.
    fn body(len: usize, chunk: usize, every: Duration, tail: Option<BackendError>) -> (SourceBody, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let mut items: Vec<Result<Bytes, BackendError>> =
            data.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        items.extend(tail.map(Err));
        let stream = futures::stream::iter(items).then(move |c| async move {
            tokio::time::sleep(every).await;
            c
        });
        let validators = Validators { length: len as u64, etag: None, last_modified: None };
        (SourceBody::new(validators, stream.boxed()), data)
    }

    /// Everything the body yields from here on: its bytes, and whether it ended in an error.
    async fn drain(body: &mut SourceBody) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        loop {
            match body.chunk().await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => return (got, false),
                Err(_) => return (got, true),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_origin_gets_small_pieces_and_loses_no_byte_to_the_look() {
        // 64 KiB every 10 ms: 6.5 MB/s, a 50 Mbit/s link.
        let (mut b, data) = body(16 << 20, 64 * KIB, Duration::from_millis(10), None);
        let rate = probe_rate(&mut b).await.expect("measured");
        assert!((5e6..8e6).contains(&rate), "rate {rate}");
        assert_eq!(PieceLayout::for_rate(16 << 20, rate).piece_size(), 64 * KIB as u32);
        assert_eq!(drain(&mut b).await, (data, false), "every byte, in order, once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_look_lasts_until_slow_start_is_over() {
        // 64 KiB chunks, the gap between them halving every 40 ms from 40 ms down to 2.5 ms
        // (25 MB/s), as a far origin's rate climbs for a few round trips.
        let data: Vec<u8> = (0..(32usize << 20)).map(|i| (i % 249) as u8).collect();
        let chunks: Vec<Bytes> = data.chunks(64 * KIB).map(Bytes::copy_from_slice).collect();
        let start = tokio::time::Instant::now();
        let stream = futures::stream::iter(chunks).then(move |c| async move {
            let climbed = (start.elapsed().as_millis() / 40).min(4) as u32;
            tokio::time::sleep(Duration::from_millis(40) / 2u32.pow(climbed)).await;
            Ok(c)
        });
        let validators = Validators { length: data.len() as u64, etag: None, last_modified: None };
        let mut b = SourceBody::new(validators, stream.boxed());
        let rate = probe_rate(&mut b).await.expect("measured");
        assert!(start.elapsed() >= Duration::from_millis(150), "looked until the climb ended");
        // 256 KiB at the steady rate; the look's average, slow start in it, may say a size less.
        let size = PieceLayout::for_rate(32 << 20, rate).piece_size();
        assert!([128 * KIB as u32, 256 * KIB as u32].contains(&size), "rate {rate}, piece size {size}");
        assert_eq!(drain(&mut b).await, (data, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_origin_gets_large_pieces_and_the_look_stops_at_its_byte_cap() {
        let (mut b, data) = body(64 << 20, 1024 * KIB, Duration::from_micros(100), None);
        let rate = probe_rate(&mut b).await.expect("measured");
        assert_eq!(PieceLayout::for_rate(64 << 20, rate).piece_size(), 1024 * KIB as u32, "rate {rate}");
        assert_eq!(drain(&mut b).await, (data, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_or_fails_during_the_look_is_cut_by_length_and_read_again_as_it_was() {
        let (mut b, data) = body(300 * KIB, 64 * KIB, Duration::from_millis(1), None);
        assert_eq!(probe_rate(&mut b).await, None);
        assert_eq!(drain(&mut b).await, (data, false));

        let reset = BackendError::Read { url: "http://o/x".into(), reason: "connection reset".into() };
        let (mut b, data) = body(300 * KIB, 64 * KIB, Duration::from_millis(1), Some(reset));
        assert_eq!(probe_rate(&mut b).await, None);
        assert_eq!(drain(&mut b).await, (data, true), "the bytes, then the error");
    }
}
