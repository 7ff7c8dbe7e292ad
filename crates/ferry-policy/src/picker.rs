//! Which piece to ask a parent for next.
//!
//! Invariants:
//! - a piece is only picked when its digest is known (a child can verify nothing else) and the
//!   parent holds it;
//! - a missing piece is requested from at most one parent, until end-game: when no piece of
//!   the task is missing any more (all are done or in flight), an idle parent may duplicate
//!   one that is in flight at most once (the first copy to arrive wins), so one slow parent
//!   cannot hold the tail. Before that, an idle parent waits: while a seed is still reading
//!   the origin, children are caught up most of the time, and duplicating then would spend
//!   upload on copies nobody needs;
//! - among candidates the choice is random, so children of one parent spread over its pieces
//!   and can then trade among themselves.

use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Missing,
    InFlight(u8),
    Done,
}

#[derive(Clone, Debug)]
pub struct PiecePicker {
    slots: Vec<Slot>,
    verifiable: Vec<bool>,
    /// Pick pieces whose digest is not known yet: the caller checks them some other way.
    unverified_ok: bool,
    done: u32,
}

impl PiecePicker {
    pub fn new(piece_count: u32) -> Self {
        Self {
            slots: vec![Slot::Missing; piece_count as usize],
            verifiable: vec![false; piece_count as usize],
            unverified_ok: false,
            done: 0,
        }
    }

    pub fn piece_count(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The piece's digest became known.
    pub fn set_verifiable(&mut self, index: u32) {
        if let Some(v) = self.verifiable.get_mut(index as usize) {
            *v = true;
        }
    }

    /// Whether pieces without a known digest may be picked (a daemon that lost its
    /// scheduler checks them against the digest their parent recorded).
    pub fn set_unverified_ok(&mut self, ok: bool) {
        self.unverified_ok = ok;
    }

    pub fn is_done(&self, index: u32) -> bool {
        self.slots.get(index as usize) == Some(&Slot::Done)
    }

    pub fn is_complete(&self) -> bool {
        self.done == self.piece_count()
    }

    pub fn done_count(&self) -> u32 {
        self.done
    }

    /// Marks a piece stored; returns false when it already was (a duplicate arrival).
    pub fn mark_done(&mut self, index: u32) -> bool {
        match self.slots.get_mut(index as usize) {
            Some(s) if *s != Slot::Done => {
                *s = Slot::Done;
                self.done += 1;
                true
            }
            _ => false,
        }
    }

    /// A request for the piece ended without it (parent failed, rejected, sent garbage).
    pub fn release(&mut self, index: u32) {
        if let Some(s) = self.slots.get_mut(index as usize) {
            *s = match *s {
                Slot::InFlight(n) if n > 1 => Slot::InFlight(n - 1),
                Slot::InFlight(_) => Slot::Missing,
                other => other,
            };
        }
    }

    /// Claims this one piece if [`PiecePicker::pick`] could have picked it before end game:
    /// missing, not in flight, its digest known. For a caller that knows nothing else became
    /// pickable since it last asked (a parent just showed this piece), without the scan.
    pub fn pick_index(&mut self, index: u32) -> bool {
        let i = index as usize;
        let ok = self.slots.get(i) == Some(&Slot::Missing) && (self.verifiable[i] || self.unverified_ok);
        if ok {
            self.slots[i] = Slot::InFlight(1);
        }
        ok
    }

    /// Whether some piece is neither stored nor in flight (before end game).
    pub fn any_missing(&self) -> bool {
        self.slots.contains(&Slot::Missing)
    }

    /// Picks a piece for a parent holding `has`, and marks it in flight.
    pub fn pick<R: Rng>(&mut self, has: &[bool], rng: &mut R) -> Option<u32> {
        self.pick_by(has, |_| 0, rng)
    }

    /// Like [`PiecePicker::pick`], but among the pieces it could pick, only those the fewest
    /// of this peer's other parents show (`holders[i]`): rarest first, as BitTorrent picks. A
    /// piece a seed has just handed to one peer is held by few; fetching it first spreads it
    /// while the common ones can still come from anyone.
    pub fn pick_rarest<R: Rng>(&mut self, has: &[bool], holders: &[u16], rng: &mut R) -> Option<u32> {
        self.pick_by(has, |i| holders.get(i).copied().unwrap_or(0), rng)
    }

    fn pick_by<R: Rng>(&mut self, has: &[bool], rank: impl Fn(usize) -> u16, rng: &mut R) -> Option<u32> {
        let verifiable = |i: usize| self.verifiable[i] || self.unverified_ok;
        let ok = |i: usize, s: &Slot, want: Slot| *s == want && verifiable(i) && has.get(i) == Some(&true);
        let mut fresh: Vec<usize> = vec![];
        let mut best = u16::MAX;
        for (i, s) in self.slots.iter().enumerate() {
            if !ok(i, s, Slot::Missing) {
                continue;
            }
            let r = rank(i);
            if r < best {
                best = r;
                fresh.clear();
            }
            if r == best {
                fresh.push(i);
            }
        }
        let chosen = if !fresh.is_empty() {
            fresh[rng.gen_range(0..fresh.len())]
        } else if self.slots.contains(&Slot::Missing) {
            // Not the tail yet: pieces still missing elsewhere (not verifiable, or not held by
            // this parent) will come; duplicating now would only waste the parent's upload.
            return None;
        } else {
            let dup: Vec<usize> =
                self.slots.iter().enumerate().filter(|(i, s)| ok(*i, s, Slot::InFlight(1))).map(|(i, _)| i).collect();
            if dup.is_empty() {
                return None;
            }
            dup[rng.gen_range(0..dup.len())]
        };
        self.slots[chosen] = match self.slots[chosen] {
            Slot::InFlight(n) => Slot::InFlight(n + 1),
            _ => Slot::InFlight(1),
        };
        Some(chosen as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn verifiable(n: u32) -> PiecePicker {
        let mut p = PiecePicker::new(n);
        (0..n).for_each(|i| p.set_verifiable(i));
        p
    }

    #[test]
    fn only_picks_pieces_with_known_digest() {
        let mut p = PiecePicker::new(2);
        assert_eq!(p.pick(&[true, true], &mut rng()), None);
        p.set_verifiable(1);
        assert_eq!(p.pick(&[true, true], &mut rng()), Some(1));
    }

    #[test]
    fn picks_unverified_pieces_only_when_told_they_can_be_checked() {
        let mut p = PiecePicker::new(2);
        p.set_unverified_ok(true);
        assert_eq!(p.pick(&[true, false], &mut rng()), Some(0));
        p.set_unverified_ok(false);
        assert_eq!(p.pick(&[false, true], &mut rng()), None);
    }

    #[test]
    fn only_picks_what_the_parent_has() {
        let mut p = verifiable(3);
        assert_eq!(p.pick(&[false, false, true], &mut rng()), Some(2));
    }

    #[test]
    fn each_piece_once_then_end_game_duplicates_once() {
        let mut p = verifiable(2);
        let all = [true, true];
        let a = p.pick(&all, &mut rng()).unwrap();
        let b = p.pick(&all, &mut rng()).unwrap();
        assert_ne!(a, b);
        let c = p.pick(&all, &mut rng()).unwrap();
        let d = p.pick(&all, &mut rng()).unwrap();
        assert_ne!(c, d);
        assert_eq!(p.pick(&all, &mut rng()), None);
    }

    #[test]
    fn no_duplicates_while_pieces_are_still_missing() {
        let mut p = PiecePicker::new(3);
        p.set_verifiable(0);
        p.set_verifiable(1);
        let all = [true, true, true];
        p.pick(&all, &mut rng()).unwrap();
        p.pick(&all, &mut rng()).unwrap();
        // Piece 2 is missing but not verifiable yet: no end-game.
        assert_eq!(p.pick(&all, &mut rng()), None);
    }

    #[test]
    fn pick_index_claims_only_a_missing_verifiable_piece() {
        let mut p = PiecePicker::new(3);
        p.set_verifiable(0);
        assert!(!p.pick_index(1), "no digest yet");
        assert!(p.pick_index(0));
        assert!(!p.pick_index(0), "in flight already");
        assert!(!p.pick_index(9));
        assert!(p.any_missing());
    }

    #[test]
    fn rarest_first_picks_among_the_least_held() {
        let mut p = verifiable(4);
        let all = [true, true, true, true];
        for _ in 0..20 {
            let mut q = p.clone();
            assert_eq!(q.pick_rarest(&all, &[3, 1, 2, 1], &mut rand::thread_rng()).map(|i| i % 2), Some(1));
        }
        assert_eq!(p.pick_rarest(&[true, false, true, false], &[3, 0, 2, 0], &mut rng()), Some(2));
    }

    #[test]
    fn released_pieces_are_picked_again_and_done_ones_never() {
        let mut p = verifiable(2);
        let all = [true, true];
        let a = p.pick(&all, &mut rng()).unwrap();
        p.release(a);
        let b = p.pick(&all, &mut rng()).unwrap();
        assert!(p.mark_done(b));
        assert!(!p.mark_done(b));
        let c = p.pick(&all, &mut rng()).unwrap();
        assert_ne!(c, b);
        assert!(p.mark_done(c));
        assert!(p.is_complete());
        assert_eq!(p.pick(&all, &mut rng()), None);
    }
}
