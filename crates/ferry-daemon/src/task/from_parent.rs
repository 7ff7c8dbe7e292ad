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
use ferry_transport::{ParentEvent, TransportError};
use ferry_types::{HostId, PieceDigest};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use super::env::{ParentConn, ParentEvents, ParentRequests};
use super::shared::{Event, Shared, Stored};
use crate::DaemonError;

/// `RequestAny`s a child keeps waiting at a seed. Two, so the next piece can be on its way
/// while one is being stored.
const ANY_DEPTH: usize = 2;

/// Pieces from one parent verified and stored at once while the next ones arrive.
const STORE_DEPTH: usize = 4;

/// A piece from this parent on its way to storage: its index, whether it was asked for by
/// index (it then holds a slot in the picker), and how storing it went.
type Storing<'a> = Pin<Box<dyn Future<Output = (u32, bool, Result<Stored, DaemonError>)> + Send + 'a>>;

/// One parent connection: what was asked, what is being stored, what the parent holds, and
/// the seed-dispensing bookkeeping. Its steps: [`Worker::ask`] keeps requests outstanding,
/// [`Worker::on_event`] takes what the parent sends, [`Worker::on_stored`] settles a stored
/// piece, and [`Worker::settle`] hands back whatever is unfinished when the worker ends.
struct Worker<'a> {
    shared: &'a Shared,
    parent: &'a HostId,
    seed: bool,
    requests: Box<dyn ParentRequests>,
    /// Asked of the parent, not arrived: (index, when asked).
    inflight: VecDeque<(u32, Instant)>,
    /// Arrived, being verified and stored; drained before the worker ends, so every piece
    /// that holds a picker slot is settled.
    stores: FuturesUnordered<Storing<'a>>,
    /// The indices in `stores`.
    storing: Vec<u32>,
    /// What the parent holds.
    has: Vec<bool>,
    /// What an ordinary parent has shown, to pick from (see `ferry_policy::Offer`).
    offer: ferry_policy::Offer,
    rng: rand::rngs::StdRng,
    last_arrival: Instant,
    /// `RequestAny`s waiting at a seed.
    any_waiting: usize,
    /// The seed has nothing more to hand out (always true of an ordinary parent).
    exhausted: bool,
    /// Per piece, since when only the seed shows it (see [`Shared::seed_mask`]).
    seed_only_since: Vec<Option<Instant>>,
}

/// Pulls from `parent` until it fails, the task completes, or `stop` (the scheduler
/// dropped the parent: it then ends with `Unspecified`, after settling what it holds).
pub async fn parent_worker(
    shared: &Shared,
    parent: &HostId,
    addr: SocketAddr,
    seed: bool,
    stop: &CancellationToken,
) -> FailReason {
    let connected = tokio::select! {
        c = Worker::connect(shared, parent, addr, seed) => c,
        _ = stop.cancelled() => return FailReason::Unspecified,
    };
    let (mut worker, mut events, _reader) = match connected {
        Ok(w) => w,
        Err(reason) => return reason,
    };
    let reason = worker.run(&mut events, stop).await;
    worker.settle(&mut events).await;
    reason
}

fn held(has: &[bool]) -> impl Iterator<Item = u32> + '_ {
    has.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i as u32)
}

impl<'a> Worker<'a> {
    /// Waits for the task's layout, connects (a parent that does not know the task yet is
    /// asked again a few times), and starts the task that reads the parent's socket.
    async fn connect(
        shared: &'a Shared,
        parent: &'a HostId,
        addr: SocketAddr,
        seed: bool,
    ) -> Result<(Self, ParentEvents, Box<dyn Send>), FailReason> {
        let opts = &shared.env.opts;
        let mut changed = shared.changed.subscribe();
        while shared.layout().is_none() {
            changed.changed().await.map_err(|_| FailReason::Unspecified)?;
        }
        let layout = shared.layout().expect("layout known");
        // A parent the scheduler offers has registered the task, but may not know its
        // layout yet (it learns it a moment later): "unknown task" is worth a few retries.
        let mut backoff = crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_millis(400), Some(25));
        let conn = loop {
            match shared.env.parents.connect(addr, shared.handle.id, layout.piece_size(), opts.piece_timeout).await {
                Ok(c) => break c,
                Err(TransportError::UnknownTask { .. }) => match backoff.next_pause() {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => {
                        tracing::info!(%parent, "parent does not know the task");
                        return Err(FailReason::Unreachable);
                    }
                },
                Err(e) => {
                    tracing::info!(%parent, error = %e, "cannot connect to parent");
                    return Err(FailReason::Unreachable);
                }
            }
        };
        let ParentConn { mut has, events, requests, guard } = conn;
        has.resize(layout.piece_count() as usize, false);
        let mut offer = ferry_policy::Offer::default();
        if !seed {
            shared.count_holders(held(&has), 1);
            held(&has).for_each(|i| offer.push(i));
        }
        let worker = Self {
            shared,
            parent,
            seed,
            requests,
            inflight: VecDeque::new(),
            stores: FuturesUnordered::new(),
            storing: vec![],
            seed_only_since: vec![None; has.len()],
            has,
            offer,
            rng: rand::rngs::StdRng::from_entropy(),
            last_arrival: Instant::now(),
            any_waiting: 0,
            exhausted: !seed,
        };
        Ok((worker, events, guard))
    }

    async fn run(&mut self, events: &mut ParentEvents, stop: &CancellationToken) -> FailReason {
        let mut changed = self.shared.changed.subscribe();
        let timeout = self.shared.env.opts.piece_timeout;
        loop {
            if self.shared.complete() {
                return FailReason::Unspecified;
            }
            let grace_ends = match self.ask().await {
                Ok(g) => g,
                Err(reason) => return reason,
            };
            let deadline = self.inflight.front().map(|(_, t)| (*t).max(self.last_arrival) + timeout);
            let step = tokio::select! {
                _ = sleep_until(deadline) => {
                    tracing::info!(parent = %self.parent, "parent too slow");
                    Err(FailReason::Slow)
                }
                _ = sleep_until(grace_ends) => Ok(()),
                _ = stop.cancelled() => Err(FailReason::Unspecified),
                r = changed.changed() => r.map_err(|_| FailReason::Unspecified),
                Some(done) = self.stores.next(), if !self.stores.is_empty() => self.on_stored(done),
                ev = events.recv(), if self.stores.len() < STORE_DEPTH => self.on_event(ev),
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// Keeps `RequestAny`s waiting at a seed and requests by index outstanding. Returns
    /// when the next seed-only piece comes due, if any.
    async fn ask(&mut self) -> Result<Option<Instant>, FailReason> {
        while !self.exhausted && self.any_waiting < ANY_DEPTH {
            self.requests.request_any().await.map_err(|_| FailReason::Unreachable)?;
            self.any_waiting += 1;
        }
        let mut grace_ends = None;
        while self.inflight.len() < self.shared.env.opts.pieces_in_flight {
            let Some(index) = self.pick(&mut grace_ends) else { break };
            if self.requests.request(index).await.is_err() {
                self.shared.release(index);
                return Err(FailReason::Unreachable);
            }
            self.inflight.push_back((index, Instant::now()));
        }
        Ok(grace_ends)
    }

    /// The next piece to ask for (see [`ferry_policy::PiecePicker::pick_for_parent`]); at a
    /// seed, `grace_ends` learns when its next seed-only piece comes due.
    fn pick(&mut self, grace_ends: &mut Option<Instant>) -> Option<u32> {
        let mut picker = self.shared.picker.lock().expect("not poisoned");
        let mask = || match self.seed {
            true => {
                let (mask, next) = self.shared.seed_mask(&self.has, &mut self.seed_only_since);
                *grace_ends = next;
                mask
            }
            false => self.has.clone(),
        };
        let busy = self.inflight.iter().map(|(i, _)| *i).chain(self.storing.iter().copied());
        let offer = (!self.seed).then_some(&mut self.offer);
        picker.as_mut()?.pick_for_parent(offer, &self.has, mask, busy, &mut self.rng)
    }

    fn on_event(&mut self, ev: Option<Result<ParentEvent, TransportError>>) -> Result<(), FailReason> {
        match ev {
            None | Some(Err(_)) => Err(FailReason::Unreachable),
            Some(Ok(ParentEvent::Have(i))) => {
                self.set_has(i, true);
                Ok(())
            }
            Some(Ok(ParentEvent::Reject { code: RejectCode::Exhausted, .. })) => {
                self.exhausted = true;
                self.any_waiting = 0;
                Ok(())
            }
            Some(Ok(ParentEvent::Reject { index, code })) => {
                self.on_reject(index, code);
                Ok(())
            }
            Some(Ok(ParentEvent::Piece { index, bytes, claimed })) => self.on_piece(index, bytes, claimed),
        }
    }

    fn set_has(&mut self, index: u32, holds: bool) {
        if let Some(h) = self.has.get_mut(index as usize) {
            if *h != holds && !self.seed {
                self.shared.count_holders(std::iter::once(index), if holds { 1 } else { -1 });
                if holds {
                    self.offer.push(index);
                }
            }
            *h = holds;
        }
    }

    fn on_reject(&mut self, index: u32, code: RejectCode) {
        if let Some(pos) = self.inflight.iter().position(|(i, _)| *i == index) {
            self.inflight.remove(pos);
            self.shared.release(index);
        }
        if code == RejectCode::Busy {
            // A seed still reading the origin keeps its upload for new pieces: it does hold
            // this one, so ask again after another grace time.
            if let Some(since) = self.seed_only_since.get_mut(index as usize) {
                *since = Some(Instant::now());
            }
        } else {
            self.set_has(index, false);
        }
    }

    /// A piece arrived: asked by index, or handed out for a `RequestAny`. It goes to
    /// verification and storage while the worker goes on.
    fn on_piece(&mut self, index: u32, bytes: Vec<u8>, claimed: Option<[u8; 32]>) -> Result<(), FailReason> {
        let now = Instant::now();
        let (asked, by_index) = match self.inflight.iter().position(|(i, _)| *i == index) {
            Some(pos) => (self.inflight.remove(pos).expect("position is valid").1, true),
            None if self.any_waiting > 0 => {
                self.any_waiting -= 1;
                (self.last_arrival, false)
            }
            None => return Err(FailReason::BadPiece),
        };
        let cost = now - asked.max(self.last_arrival);
        self.last_arrival = now;
        let (shared, parent, claimed) = (self.shared, self.parent.clone(), claimed.map(PieceDigest));
        let store = async move {
            if let Some(limit) = &shared.env.opts.download_limit {
                limit.acquire(bytes.len() as u64).await;
            }
            (index, by_index, shared.store_piece(index, bytes, parent, cost, claimed).await)
        };
        self.stores.push(Box::pin(store));
        self.storing.push(index);
        Ok(())
    }

    fn on_stored(
        &mut self,
        (index, by_index, stored): (u32, bool, Result<Stored, DaemonError>),
    ) -> Result<(), FailReason> {
        if let Some(pos) = self.storing.iter().position(|i| *i == index) {
            self.storing.swap_remove(pos);
        }
        let release = |i| {
            if by_index {
                self.shared.release(i)
            }
        };
        match stored {
            Ok(Stored::New) => Ok(()),
            Ok(Stored::Skipped) => {
                release(index);
                Ok(())
            }
            Ok(Stored::Mismatch) => {
                release(index);
                tracing::warn!(parent = %self.parent, index, "piece failed verification; dropping parent");
                Err(FailReason::BadPiece)
            }
            Err(e) => {
                tracing::warn!(parent = %self.parent, index, error = %e, "storing piece failed");
                release(index);
                self.shared.emit(Event::Fatal(e));
                Err(FailReason::Unspecified)
            }
        }
    }

    /// The worker ends: pieces already received are stored even though the parent is
    /// dropped (they are good until verified otherwise, and a seed hands each out only
    /// once), including those read off the socket and not yet taken (a failed request
    /// write ends the worker with them waiting); what was asked and not settled goes back
    /// to the picker.
    async fn settle(mut self, events: &mut ParentEvents) {
        while let Ok(Ok(ParentEvent::Piece { index, bytes, claimed })) = events.try_recv() {
            if self.on_piece(index, bytes, claimed).is_err() {
                break;
            }
        }
        while let Some(done) = self.stores.next().await {
            let _ = self.on_stored(done);
        }
        for (i, _) in &self.inflight {
            self.shared.release(*i);
        }
        if !self.seed {
            self.shared.count_holders(held(&self.has), -1);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
