//! Pulling pieces from one parent.
//!
//! One worker per parent: it connects, learns what the parent holds (its bitfield, then a
//! `Have` per new piece), and keeps up to `pieces_in_flight` requests outstanding, picking
//! pieces through the task's shared picker so parents never duplicate work (except in
//! end-game). The socket is read by a separate task, because a frame read must never be
//! cancelled half-way; the worker selects on what that task forwards.
//!
//! A seed parent dispenses (see `ferry_proto::frame`): the worker keeps [`ANY_DEPTH`]
//! `RequestAny`s waiting there and takes whatever new piece the seed hands it; by index it
//! asks a seed only for pieces no other parent has shown for a grace time
//! ([`Shared::seed_mask`]), which covers a first receiver that died before passing a piece on.
//!
//! A parent is dropped, and the scheduler told why, when the connection fails
//! (`Unreachable`), a piece fails verification (`BadPiece`) or a request waits longer than
//! `piece_timeout` (`Slow`). Its outstanding pieces go back to the picker for other parents.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use ferry_proto::frame::RejectCode;
use ferry_proto::scheduler::FailReason;
use ferry_transport::{connect, ParentEvent, TransportError};
use ferry_types::{HostId, PieceDigest};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::SeedableRng;
use tokio::sync::mpsc;

use crate::task::{Shared, Source, Stored};
use crate::DaemonError;

/// `RequestAny`s a child keeps waiting at a seed. Two, so the next piece can be on its way
/// while one is being stored.
const ANY_DEPTH: usize = 2;

/// Pieces from one parent verified and stored at once while the next ones arrive.
const STORE_DEPTH: usize = 4;

/// A piece from this parent on its way to storage: its index, whether it was asked for by
/// index (it then holds a slot in the picker), and how storing it went.
type Storing<'a> = Pin<Box<dyn Future<Output = (u32, bool, Result<Stored, DaemonError>)> + Send + 'a>>;

/// What a worker holds that must be settled however it ends.
struct Pending<'a> {
    /// Asked of the parent, not arrived: (index, when asked).
    inflight: VecDeque<(u32, Instant)>,
    /// Arrived, being verified and stored.
    stores: FuturesUnordered<Storing<'a>>,
    /// Indices among `stores` that were asked for by index.
    storing: Vec<u32>,
    /// What the parent holds.
    has: Vec<bool>,
}

pub async fn parent_worker(shared: &Shared, parent: &HostId, addr: SocketAddr, seed: bool) -> FailReason {
    let mut p = Pending { inflight: VecDeque::new(), stores: FuturesUnordered::new(), storing: vec![], has: vec![] };
    let reason = run(shared, parent, addr, seed, &mut p).await;
    // Pieces already received are stored even when the parent is dropped: they are good
    // until verified otherwise, and a seed hands each out only once.
    while let Some((index, by_index, stored)) = p.stores.next().await {
        if let Err(e) = stored {
            let _ = shared.events.send(crate::task::Event::Fatal(e));
        }
        if by_index {
            p.storing.retain(|i| *i != index);
            shared.release(index);
        }
    }
    let Pending { inflight, storing, has, .. } = p;
    // Asked of this parent and not settled: back to the picker (a stored one is done, and
    // releasing it changes nothing).
    for i in inflight.into_iter().map(|(i, _)| i).chain(storing) {
        shared.release(i);
    }
    if !seed {
        shared.count_holders(held(&has), -1);
    }
    reason
}

fn held(has: &[bool]) -> impl Iterator<Item = u32> + '_ {
    has.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i as u32)
}

async fn run<'a>(shared: &'a Shared, parent: &HostId, addr: SocketAddr, seed: bool, p: &mut Pending<'a>) -> FailReason {
    let Pending { inflight, stores, storing, has } = p;
    let opts = &shared.ctx.opts;
    // Content must be known to size requests; wait for the layout.
    let mut changed = shared.changed.subscribe();
    while shared.layout().is_none() {
        if changed.changed().await.is_err() {
            return FailReason::Unspecified;
        }
    }
    let layout = shared.layout().expect("layout known");
    // A parent the scheduler offers has registered the task, but may not know its layout
    // yet (it learns it a moment later): "unknown task" is worth a few retries.
    let mut backoff = crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_millis(400), Some(25));
    let (mut reader, mut writer) = loop {
        match connect(addr, shared.handle.id, layout.piece_size(), opts.piece_timeout).await {
            Ok((bits, r, w)) => {
                *has = bits;
                break (r, w);
            }
            Err(TransportError::UnknownTask { .. }) => match backoff.next_pause() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => {
                    tracing::info!(%parent, "parent does not know the task");
                    return FailReason::Unreachable;
                }
            },
            Err(e) => {
                tracing::info!(%parent, error = %e, "cannot connect to parent");
                return FailReason::Unreachable;
            }
        }
    };
    has.resize(layout.piece_count() as usize, false);
    if !seed {
        shared.count_holders(held(has), 1);
    }
    let (ev_tx, mut ev_rx) = mpsc::channel::<Result<ParentEvent, TransportError>>(8);
    let read_task = tokio::spawn(async move {
        loop {
            let ev = reader.next().await;
            let stop = !matches!(ev, Ok(Some(_)));
            let msg = match ev {
                Ok(Some(e)) => Ok(e),
                Ok(None) => Err(TransportError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                Err(e) => Err(e),
            };
            if ev_tx.send(msg).await.is_err() || stop {
                return;
            }
        }
    });
    let _abort = AbortOnDrop(read_task);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut last_arrival = Instant::now();
    let mut any_waiting = 0;
    let mut exhausted = !seed;
    let mut seed_only_since = vec![None; has.len()];
    loop {
        if shared.complete() {
            return FailReason::Unspecified;
        }
        while !exhausted && any_waiting < ANY_DEPTH {
            if writer.request_any().await.is_err() {
                return FailReason::Unreachable;
            }
            any_waiting += 1;
        }
        let mut grace_ends = None;
        while inflight.len() < opts.pieces_in_flight {
            let mask = if seed {
                let (mask, next) = shared.seed_mask(has, &mut seed_only_since);
                grace_ends = next;
                mask
            } else {
                has.clone()
            };
            let pick = shared.picker.lock().expect("not poisoned").as_mut().and_then(|p| p.pick(&mask, &mut rng));
            let Some(index) = pick else { break };
            if writer.request(index).await.is_err() {
                shared.release(index);
                return FailReason::Unreachable;
            }
            inflight.push_back((index, Instant::now()));
        }
        let deadline = inflight.front().map(|(_, t)| (*t).max(last_arrival) + opts.piece_timeout);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let grace = async {
            match grace_ends {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                tracing::info!(%parent, "parent too slow");
                return FailReason::Slow;
            }
            _ = grace => {}
            r = changed.changed() => {
                if r.is_err() {
                    return FailReason::Unspecified;
                }
            }
            Some((index, by_index, stored)) = stores.next(), if !stores.is_empty() => {
                if by_index {
                    storing.retain(|i| *i != index);
                }
                let release = |i| if by_index { shared.release(i) };
                match stored {
                    Ok(Stored::New) => {}
                    Ok(Stored::Skipped) => release(index),
                    Ok(Stored::Mismatch) => {
                        release(index);
                        tracing::warn!(%parent, index, "piece failed verification; dropping parent");
                        return FailReason::BadPiece;
                    }
                    Err(e) => {
                        tracing::warn!(%parent, index, error = %e, "storing piece failed");
                        release(index);
                        let _ = shared.events.send(crate::task::Event::Fatal(e));
                        return FailReason::Unspecified;
                    }
                }
            }
            ev = ev_rx.recv(), if stores.len() < STORE_DEPTH => match ev {
                None | Some(Err(_)) => return FailReason::Unreachable,
                Some(Ok(ParentEvent::Have(i))) => {
                    if let Some(h) = has.get_mut(i as usize) {
                        if !*h && !seed {
                            shared.count_holders(std::iter::once(i), 1);
                        }
                        *h = true;
                    }
                }
                Some(Ok(ParentEvent::Reject { code: RejectCode::Exhausted, .. })) => {
                    exhausted = true;
                    any_waiting = 0;
                }
                Some(Ok(ParentEvent::Reject { index, code })) => {
                    if let Some(pos) = inflight.iter().position(|(i, _)| *i == index) {
                        inflight.remove(pos);
                        shared.release(index);
                    }
                    if code == RejectCode::Busy {
                        // A seed still reading the origin keeps its upload for new pieces: it
                        // does hold this one, so ask again after another grace time.
                        if let Some(since) = seed_only_since.get_mut(index as usize) {
                            *since = Some(Instant::now());
                        }
                    } else if let Some(h) = has.get_mut(index as usize) {
                        if *h && !seed {
                            shared.count_holders(std::iter::once(index), -1);
                        }
                        *h = false;
                    }
                }
                Some(Ok(ParentEvent::Piece { index, bytes, claimed })) => {
                    let now = Instant::now();
                    // Asked by index, or handed out in answer to a `RequestAny`.
                    let (asked, by_index) = match inflight.iter().position(|(i, _)| *i == index) {
                        Some(pos) => (inflight.remove(pos).expect("position is valid").1, true),
                        None if any_waiting > 0 => {
                            any_waiting -= 1;
                            (last_arrival, false)
                        }
                        None => return FailReason::BadPiece,
                    };
                    let cost = now - asked.max(last_arrival);
                    last_arrival = now;
                    let claimed = claimed.map(PieceDigest);
                    let source = Source::Parent { host: parent.clone(), cost, claimed };
                    if by_index {
                        storing.push(index);
                    }
                    stores.push(Box::pin(async move { (index, by_index, shared.store_piece(index, bytes, source).await) }));
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
