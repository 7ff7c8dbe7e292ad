//! Which pieces of a task this daemon holds, which of them children may see, and who wants
//! to hear about new ones.
//!
//! An ordinary peer shows every piece it holds. A *dispensing* peer (a seed) shows a piece
//! only once it has handed it to one child: new pieces queue in arrival order and go, one
//! each, to `RequestAny` waiters in the order they asked. Children never see a piece at the
//! seed that nobody else could have yet, so they fetch it from the child that got it, and
//! the seed's upload carries each piece about once.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::{broadcast, mpsc};

/// Sent down a waiter's channel when nothing is left to hand out.
pub const EXHAUSTED: u32 = u32::MAX;

/// One child connection, as a dispensing peer tracks it.
pub type ChildId = u64;

pub struct Availability {
    inner: Mutex<Inner>,
    haves: broadcast::Sender<u32>,
    next_child: AtomicU64,
    /// Children connected now.
    children: std::sync::atomic::AtomicU32,
}

struct Inner {
    held: Vec<bool>,
    /// The verified digest of each held piece, sent with it (zeros: not held).
    digests: Vec<[u8; 32]>,
    held_count: u32,
    dispense: Option<Dispense>,
}

#[derive(Default)]
struct Dispense {
    /// The child each handed-out piece went to last; `Some` is what children may see.
    holder: Vec<Option<ChildId>>,
    /// Children connected now.
    live: HashSet<ChildId>,
    /// Held, not yet handed out; oldest first.
    queue: VecDeque<u32>,
    waiters: VecDeque<(ChildId, mpsc::UnboundedSender<u32>)>,
}

/// What a `RequestAny` gets right away.
#[derive(Debug, PartialEq, Eq)]
pub enum AnyOutcome {
    /// Send this piece now.
    Given(u32),
    /// Queued: a piece (or [`EXHAUSTED`]) will come down the waiter's channel.
    Queued,
    Exhausted,
}

impl Inner {
    fn complete(&self) -> bool {
        self.held_count as usize == self.held.len()
    }

    /// Hands queued pieces to waiters; tells waiters when nothing more will come.
    fn pump(&mut self, haves: &broadcast::Sender<u32>) {
        let complete = self.complete();
        let Some(d) = self.dispense.as_mut() else { return };
        while let Some(&index) = d.queue.front() {
            let Some((child, w)) = d.waiters.pop_front() else { break };
            if w.send(index).is_ok() {
                d.queue.pop_front();
                d.hand_out(index, child, haves);
            }
        }
        if complete && d.queue.is_empty() {
            for (_, w) in d.waiters.drain(..) {
                let _ = w.send(EXHAUSTED);
            }
        }
    }
}

impl Dispense {
    /// Records that a held piece went to `child`; the first time, children hear of it.
    fn hand_out(&mut self, index: u32, child: ChildId, haves: &broadcast::Sender<u32>) {
        if let Some(h) = self.holder.get_mut(index as usize) {
            if h.replace(child).is_none() {
                let _ = haves.send(index);
            }
        }
    }
}

impl Availability {
    /// `dispensing`: show pieces only once handed out (see the module docs).
    pub fn new(piece_count: u32, dispensing: bool) -> Self {
        let n = piece_count as usize;
        // The channel allocates all its slots up front: sized by the task, not for the
        // largest one (a finished 1-piece task must not cost 160 KiB). A child that falls
        // behind gets the whole picture again (`Lagged`), so a small one is only slower.
        let (haves, _) = broadcast::channel(n.clamp(16, 4096));
        let dispense = dispensing.then(|| Dispense { holder: vec![None; n], ..Default::default() });
        let inner = Mutex::new(Inner { held: vec![false; n], digests: vec![[0; 32]; n], held_count: 0, dispense });
        Self { inner, haves, next_child: AtomicU64::new(1), children: Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    pub fn piece_count(&self) -> u32 {
        self.lock().held.len() as u32
    }

    /// Held here (whether or not shown to children).
    pub fn has(&self, index: u32) -> bool {
        self.lock().held.get(index as usize).copied().unwrap_or(false)
    }

    pub fn held_count(&self) -> u32 {
        self.lock().held_count
    }

    pub fn is_complete(&self) -> bool {
        self.lock().complete()
    }

    /// The digest a held piece was verified against.
    pub fn digest(&self, index: u32) -> Option<[u8; 32]> {
        let inner = self.lock();
        inner.held.get(index as usize).copied().unwrap_or(false).then(|| inner.digests[index as usize])
    }

    /// Marks a piece held, verified against `digest`; returns false if it already was. An
    /// ordinary peer tells its subscribers now; a dispensing one queues the piece for the
    /// next `RequestAny`.
    pub fn insert(&self, index: u32, digest: [u8; 32]) -> bool {
        let mut inner = self.lock();
        let Some(slot) = inner.held.get_mut(index as usize) else {
            return false;
        };
        if std::mem::replace(slot, true) {
            return false;
        }
        inner.digests[index as usize] = digest;
        inner.held_count += 1;
        match inner.dispense.as_mut() {
            Some(d) => d.queue.push_back(index),
            None => {
                let _ = self.haves.send(index);
            }
        }
        inner.pump(&self.haves);
        true
    }

    /// How many children are connected.
    pub fn children(&self) -> u32 {
        self.children.load(Ordering::Relaxed)
    }

    /// A child connected: its id for the calls below.
    pub fn open_child(&self) -> ChildId {
        let id = self.next_child.fetch_add(1, Ordering::Relaxed);
        self.children.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = self.lock().dispense.as_mut() {
            d.live.insert(id);
        }
        id
    }

    /// A child's connection ended; pieces handed to it but never sent go to the next child
    /// that asks, first.
    pub fn close_child(&self, child: ChildId, unsent: impl IntoIterator<Item = u32>) {
        self.children.fetch_sub(1, Ordering::Relaxed);
        let mut inner = self.lock();
        if let Some(d) = inner.dispense.as_mut() {
            d.live.remove(&child);
            for i in unsent {
                if i != EXHAUSTED && !d.queue.contains(&i) {
                    d.queue.push_front(i);
                }
            }
        }
        inner.pump(&self.haves);
    }

    /// A `RequestAny` from `child`, whose answers go down `waiter`.
    pub fn request_any(&self, child: ChildId, waiter: &mpsc::UnboundedSender<u32>) -> AnyOutcome {
        let mut inner = self.lock();
        let complete = inner.complete();
        let Some(d) = inner.dispense.as_mut() else {
            return AnyOutcome::Exhausted;
        };
        if let Some(index) = d.queue.pop_front() {
            d.hand_out(index, child, &self.haves);
            return AnyOutcome::Given(index);
        }
        if complete {
            return AnyOutcome::Exhausted;
        }
        d.waiters.push_back((child, waiter.clone()));
        AnyOutcome::Queued
    }

    /// `RequestAny`s waiting for a piece.
    pub fn waiting(&self) -> usize {
        self.lock().dispense.as_ref().map_or(0, |d| d.waiters.len())
    }

    /// Whether `child` may have a piece it asked for by index.
    ///
    /// While a dispensing peer is still receiving the task (reading the origin), its upload
    /// carries the first copy of every new piece, and the ACKs of its own download share that
    /// link: measured on the testbed, a seed whose children asked it for pieces they could
    /// not yet see elsewhere uploaded 1.3-2 copies and its origin read stalled. So until it
    /// holds the whole task it sends a handed-out piece again only when the child it went to
    /// has disconnected (died before passing it on); the asker gets it and holds it instead.
    pub fn claim_by_index(&self, child: ChildId, index: u32) -> bool {
        let mut inner = self.lock();
        let complete = inner.complete();
        let held = inner.held.get(index as usize).copied().unwrap_or(false);
        let Some(d) = inner.dispense.as_mut() else { return true };
        if !held {
            // Answered `NotHeld` by the sender; nothing to record.
            return true;
        }
        if let Some(pos) = d.queue.iter().position(|i| *i == index) {
            d.queue.remove(pos);
        } else if !complete && d.holder[index as usize].is_some_and(|h| d.live.contains(&h)) {
            return false;
        }
        d.hand_out(index, child, &self.haves);
        true
    }

    /// Whether a child may see the piece here.
    pub fn shown(&self, index: u32) -> bool {
        let inner = self.lock();
        match &inner.dispense {
            Some(d) => d.holder.get(index as usize).is_some_and(Option::is_some),
            None => inner.held.get(index as usize).copied().unwrap_or(false),
        }
    }

    /// What a child may see, with a subscription taken under the same lock, so no piece
    /// falls between them.
    pub fn subscribe(&self) -> (Vec<u8>, u32, broadcast::Receiver<u32>) {
        let inner = self.lock();
        let rx = self.haves.subscribe();
        let bits = match &inner.dispense {
            Some(d) => pack_bits(&d.holder.iter().map(Option::is_some).collect::<Vec<_>>()),
            None => pack_bits(&inner.held),
        };
        (bits, inner.held.len() as u32, rx)
    }
}

pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        out[i / 8] |= 0x80 >> (i % 8);
    }
    out
}

pub fn unpack_bits(bytes: &[u8], count: u32) -> Vec<bool> {
    (0..count as usize).map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        let bits = vec![true, false, true, true, false, false, false, false, true];
        assert_eq!(unpack_bits(&pack_bits(&bits), 9), bits);
    }

    #[test]
    fn insert_notifies_once() {
        let a = Availability::new(3, false);
        let (_, _, mut rx) = a.subscribe();
        assert!(a.insert(1, [1; 32]));
        assert!(!a.insert(1, [1; 32]));
        assert!(!a.insert(7, [1; 32]));
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert!(rx.try_recv().is_err());
        assert_eq!(a.held_count(), 1);
    }

    #[test]
    fn dispensing_hands_each_piece_to_one_waiter_in_order() {
        let a = Availability::new(3, true);
        let (bits, _, mut haves) = a.subscribe();
        assert_eq!(bits, vec![0]);
        let (w1, mut r1) = mpsc::unbounded_channel();
        let (w2, mut r2) = mpsc::unbounded_channel();
        assert_eq!(a.request_any(1, &w1), AnyOutcome::Queued);
        assert_eq!(a.request_any(2, &w2), AnyOutcome::Queued);
        a.insert(2, [1; 32]);
        a.insert(0, [1; 32]);
        assert_eq!(r1.try_recv().unwrap(), 2);
        assert_eq!(r2.try_recv().unwrap(), 0);
        assert_eq!((haves.try_recv().unwrap(), haves.try_recv().unwrap()), (2, 0));
        // Held but not handed out: invisible, and the next ask gets it at once.
        a.insert(1, [1; 32]);
        assert!(a.has(1) && !a.shown(1));
        assert!(haves.try_recv().is_err());
        assert_eq!(a.request_any(1, &w1), AnyOutcome::Given(1));
        assert!(a.shown(1));
        assert_eq!(a.request_any(1, &w1), AnyOutcome::Exhausted);
    }

    #[test]
    fn waiters_hear_exhausted_and_requeued_pieces_go_first() {
        let a = Availability::new(2, true);
        let (w1, mut r1) = mpsc::unbounded_channel();
        let (w2, mut r2) = mpsc::unbounded_channel();
        let (w3, mut r3) = mpsc::unbounded_channel();
        for w in [&w1, &w2, &w3] {
            assert_eq!(a.request_any(9, w), AnyOutcome::Queued);
        }
        a.insert(0, [1; 32]);
        a.insert(1, [1; 32]);
        assert_eq!((r1.try_recv().unwrap(), r2.try_recv().unwrap()), (0, 1));
        assert_eq!(r3.try_recv().unwrap(), EXHAUSTED, "a waiter left over when all is handed out");
        assert_eq!(a.request_any(1, &w1), AnyOutcome::Exhausted);
        // w2's connection died before sending piece 1: the next child gets it.
        drop(r2);
        a.close_child(2, [1]);
        assert_eq!(a.request_any(1, &w1), AnyOutcome::Given(1));
    }

    #[test]
    fn closed_waiters_are_skipped() {
        let a = Availability::new(1, true);
        let (w1, r1) = mpsc::unbounded_channel();
        let (w2, mut r2) = mpsc::unbounded_channel();
        a.request_any(1, &w1);
        a.request_any(2, &w2);
        drop(r1);
        a.insert(0, [1; 32]);
        assert_eq!(r2.try_recv().unwrap(), 0);
    }

    #[test]
    fn ordinary_peer_shows_everything_and_never_dispenses() {
        let a = Availability::new(2, false);
        let (w, _r) = mpsc::unbounded_channel();
        a.insert(0, [1; 32]);
        assert!(a.shown(0));
        assert_eq!(a.request_any(1, &w), AnyOutcome::Exhausted);
    }

    #[test]
    fn a_piece_goes_again_only_when_its_receiver_is_gone_or_all_is_held() {
        let a = Availability::new(2, true);
        let (w, _r) = mpsc::unbounded_channel();
        let (c1, c2, c3) = (a.open_child(), a.open_child(), a.open_child());
        a.insert(0, [1; 32]);
        assert_eq!(a.request_any(c1, &w), AnyOutcome::Given(0));
        assert!(!a.claim_by_index(c2, 0), "c1 holds it and will pass it on");
        a.close_child(c1, []);
        assert!(a.claim_by_index(c2, 0), "c1 is gone: repair");
        assert!(!a.claim_by_index(c3, 0), "c2 holds it now");
        a.insert(1, [1; 32]);
        assert!(a.claim_by_index(c3, 1), "asked by index before it was handed out: its first copy");
        assert!(a.claim_by_index(c3, 0), "all held: the upload is free for anything");
        assert_eq!(a.request_any(c3, &w), AnyOutcome::Exhausted);
    }
}
