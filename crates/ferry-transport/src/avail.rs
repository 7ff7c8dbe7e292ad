//! Which pieces of a task this daemon holds, which of them children may see, and who wants
//! to hear about new ones.
//!
//! An ordinary peer shows every piece it holds. A *dispensing* peer (a seed) shows a piece
//! only once it has handed it to one child: new pieces queue in arrival order and go, one
//! each, to `RequestAny` waiters in the order they asked. Children never see a piece at the
//! seed that nobody else could have yet, so they fetch it from the child that got it, and
//! the seed's upload carries each piece about once.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{broadcast, mpsc};

/// Sent down a waiter's channel when nothing is left to hand out.
pub const EXHAUSTED: u32 = u32::MAX;

pub struct Availability {
    inner: Mutex<Inner>,
    haves: broadcast::Sender<u32>,
}

struct Inner {
    held: Vec<bool>,
    held_count: u32,
    dispense: Option<Dispense>,
}

#[derive(Default)]
struct Dispense {
    shown: Vec<bool>,
    /// Held, not yet handed out; oldest first.
    queue: VecDeque<u32>,
    waiters: VecDeque<mpsc::UnboundedSender<u32>>,
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

    fn show(&mut self, index: u32, haves: &broadcast::Sender<u32>) {
        if let Some(d) = self.dispense.as_mut() {
            if let Some(s) = d.shown.get_mut(index as usize) {
                if !std::mem::replace(s, true) {
                    let _ = haves.send(index);
                }
            }
        }
    }

    /// Hands queued pieces to waiters; tells waiters when nothing more will come.
    fn pump(&mut self, haves: &broadcast::Sender<u32>) {
        let complete = self.complete();
        let Some(d) = self.dispense.as_mut() else { return };
        let mut given = vec![];
        while let Some(&index) = d.queue.front() {
            let Some(w) = d.waiters.pop_front() else { break };
            if w.send(index).is_ok() {
                d.queue.pop_front();
                given.push(index);
            }
        }
        if complete && d.queue.is_empty() {
            for w in d.waiters.drain(..) {
                let _ = w.send(EXHAUSTED);
            }
        }
        for i in given {
            self.show(i, haves);
        }
    }
}

impl Availability {
    /// `dispensing`: show pieces only once handed out (see the module docs).
    pub fn new(piece_count: u32, dispensing: bool) -> Self {
        let (haves, _) = broadcast::channel(4096);
        let n = piece_count as usize;
        let dispense = dispensing.then(|| Dispense { shown: vec![false; n], ..Default::default() });
        Self { inner: Mutex::new(Inner { held: vec![false; n], held_count: 0, dispense }), haves }
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

    /// Marks a piece held; returns false if it already was. An ordinary peer tells its
    /// subscribers now; a dispensing one queues the piece for the next `RequestAny`.
    pub fn insert(&self, index: u32) -> bool {
        let mut inner = self.lock();
        let Some(slot) = inner.held.get_mut(index as usize) else {
            return false;
        };
        if std::mem::replace(slot, true) {
            return false;
        }
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

    /// A `RequestAny` from the child behind `waiter`.
    pub fn request_any(&self, waiter: &mpsc::UnboundedSender<u32>) -> AnyOutcome {
        let mut inner = self.lock();
        let complete = inner.complete();
        let Some(d) = inner.dispense.as_mut() else {
            return AnyOutcome::Exhausted;
        };
        if let Some(index) = d.queue.pop_front() {
            inner.show(index, &self.haves);
            return AnyOutcome::Given(index);
        }
        if complete {
            return AnyOutcome::Exhausted;
        }
        d.waiters.push_back(waiter.clone());
        AnyOutcome::Queued
    }

    /// `RequestAny`s waiting for a piece.
    pub fn waiting(&self) -> usize {
        self.lock().dispense.as_ref().map_or(0, |d| d.waiters.len())
    }

    /// A piece is being sent by index: it counts as handed out.
    pub fn note_sent(&self, index: u32) {
        let mut inner = self.lock();
        if let Some(d) = inner.dispense.as_mut() {
            if let Some(pos) = d.queue.iter().position(|i| *i == index) {
                d.queue.remove(pos);
            }
        }
    }

    /// Pieces handed to a child whose connection ended before they were sent: hand them out
    /// again, first.
    pub fn requeue(&self, pieces: impl IntoIterator<Item = u32>) {
        let mut inner = self.lock();
        if let Some(d) = inner.dispense.as_mut() {
            for i in pieces {
                if i != EXHAUSTED && !d.queue.contains(&i) {
                    d.queue.push_front(i);
                }
            }
        }
        inner.pump(&self.haves);
    }

    /// Whether a child may see the piece here.
    pub fn shown(&self, index: u32) -> bool {
        let inner = self.lock();
        match &inner.dispense {
            Some(d) => d.shown.get(index as usize).copied().unwrap_or(false),
            None => inner.held.get(index as usize).copied().unwrap_or(false),
        }
    }

    /// What a child may see, with a subscription taken under the same lock, so no piece
    /// falls between them.
    pub fn subscribe(&self) -> (Vec<u8>, u32, broadcast::Receiver<u32>) {
        let inner = self.lock();
        let rx = self.haves.subscribe();
        let bits = match &inner.dispense {
            Some(d) => &d.shown,
            None => &inner.held,
        };
        (pack_bits(bits), bits.len() as u32, rx)
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
        assert!(a.insert(1));
        assert!(!a.insert(1));
        assert!(!a.insert(7));
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
        assert_eq!(a.request_any(&w1), AnyOutcome::Queued);
        assert_eq!(a.request_any(&w2), AnyOutcome::Queued);
        a.insert(2);
        a.insert(0);
        assert_eq!(r1.try_recv().unwrap(), 2);
        assert_eq!(r2.try_recv().unwrap(), 0);
        assert_eq!((haves.try_recv().unwrap(), haves.try_recv().unwrap()), (2, 0));
        // Held but not handed out: invisible, and the next ask gets it at once.
        a.insert(1);
        assert!(a.has(1) && !a.shown(1));
        assert!(haves.try_recv().is_err());
        assert_eq!(a.request_any(&w1), AnyOutcome::Given(1));
        assert!(a.shown(1));
        assert_eq!(a.request_any(&w1), AnyOutcome::Exhausted);
    }

    #[test]
    fn waiters_hear_exhausted_and_requeued_pieces_go_first() {
        let a = Availability::new(2, true);
        let (w1, mut r1) = mpsc::unbounded_channel();
        let (w2, mut r2) = mpsc::unbounded_channel();
        let (w3, mut r3) = mpsc::unbounded_channel();
        for w in [&w1, &w2, &w3] {
            assert_eq!(a.request_any(w), AnyOutcome::Queued);
        }
        a.insert(0);
        a.insert(1);
        assert_eq!((r1.try_recv().unwrap(), r2.try_recv().unwrap()), (0, 1));
        assert_eq!(r3.try_recv().unwrap(), EXHAUSTED, "a waiter left over when all is handed out");
        assert_eq!(a.request_any(&w1), AnyOutcome::Exhausted);
        // w2's connection died before sending piece 1: the next child gets it.
        drop(r2);
        a.requeue([1]);
        assert_eq!(a.request_any(&w1), AnyOutcome::Given(1));
    }

    #[test]
    fn closed_waiters_are_skipped() {
        let a = Availability::new(1, true);
        let (w1, r1) = mpsc::unbounded_channel();
        let (w2, mut r2) = mpsc::unbounded_channel();
        a.request_any(&w1);
        a.request_any(&w2);
        drop(r1);
        a.insert(0);
        assert_eq!(r2.try_recv().unwrap(), 0);
    }

    #[test]
    fn ordinary_peer_shows_everything_and_never_dispenses() {
        let a = Availability::new(2, false);
        let (w, _r) = mpsc::unbounded_channel();
        a.insert(0);
        assert!(a.shown(0));
        assert_eq!(a.request_any(&w), AnyOutcome::Exhausted);
    }
}
