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
//!
//! Two ways to pick: [`PiecePicker::pick`] scans a parent's whole bitfield (what a seed
//! worker needs: its mask changes with time), [`PiecePicker::pick_offered`] draws from an
//! [`Offer`], the list of pieces the parent has shown, kept by the caller: a piece leaves the
//! list once stored or in flight and comes back if released, so over a download each entry is
//! looked at about once, however many times the workers ask. Measured in the fleet simulator
//! at 4,096 pieces: the scan on every stored piece was over half of all the work.

use rand::Rng;

/// Requests by index a child keeps in flight per parent, by default. Each hop of a new piece
/// through the mesh waits behind what the child already asked of all its parents (about
/// parents x this x piece time), and the swarm ends that long after the seed. Fleet
/// simulator, 4 GiB over 10 Gbit/s with 1 MiB pieces: 4 in flight 0.886 of the bound at
/// 1,000 hosts, 2 in flight 0.915 (100 hosts: 0.907, 0.926); on the testbed (16 hosts,
/// 50 Mbit/s) 2 and 4 are within run-to-run noise.
pub const PIECES_IN_FLIGHT: usize = 2;

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
    /// Slots `Missing` now.
    missing: u32,
    /// Every piece released so far, in order: offers take them back (see [`Offer`]).
    released: Vec<u32>,
}

/// The pieces one parent has shown, for [`PiecePicker::pick_offered`]; kept by the worker
/// that asks that parent.
#[derive(Clone, Debug, Default)]
pub struct Offer {
    pieces: Vec<u32>,
    /// How much of the picker's release log this offer has taken back.
    released_seen: usize,
}

impl Offer {
    /// The parent shows this piece (its bitfield at connect, or a `Have`).
    pub fn push(&mut self, index: u32) {
        self.pieces.push(index);
    }
}

impl PiecePicker {
    pub fn new(piece_count: u32) -> Self {
        Self {
            slots: vec![Slot::Missing; piece_count as usize],
            verifiable: vec![false; piece_count as usize],
            unverified_ok: false,
            done: 0,
            missing: piece_count,
            released: vec![],
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
                if *s == Slot::Missing {
                    self.missing -= 1;
                }
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
                Slot::InFlight(_) => {
                    self.missing += 1;
                    self.released.push(index);
                    Slot::Missing
                }
                other => other,
            };
        }
    }

    /// Whether some piece is neither stored nor in flight: before end game.
    pub fn any_missing(&self) -> bool {
        self.missing > 0
    }

    /// Picks a missing piece the parent showed (`offer`, checked against its current bitfield
    /// `has`) and marks it in flight. `None` also in end game: the caller then picks with
    /// [`PiecePicker::pick`], which duplicates.
    pub fn pick_offered<R: Rng>(&mut self, offer: &mut Offer, has: &[bool], rng: &mut R) -> Option<u32> {
        for &i in &self.released[offer.released_seen..] {
            if has.get(i as usize) == Some(&true) {
                offer.pieces.push(i);
            }
        }
        offer.released_seen = self.released.len();
        if self.missing == 0 {
            return None;
        }
        // Entries that are stored, in flight or no longer shown leave for good (a release
        // brings a piece back through the log above); a missing piece whose digest is not
        // known yet stays for later.
        let mut waiting = 0;
        while offer.pieces.len() > waiting {
            let k = rng.gen_range(waiting..offer.pieces.len());
            let i = offer.pieces[k] as usize;
            let slot = self.slots.get(i).copied();
            if slot != Some(Slot::Missing) || has.get(i) != Some(&true) {
                offer.pieces.swap_remove(k);
            } else if self.verifiable[i] || self.unverified_ok {
                offer.pieces.swap_remove(k);
                self.slots[i] = Slot::InFlight(1);
                self.missing -= 1;
                return Some(i as u32);
            } else {
                offer.pieces.swap(k, waiting);
                waiting += 1;
            }
        }
        None
    }

    /// What one parent's worker asks for next: from an ordinary parent's `offer` until end
    /// game (no scan of every piece); else from `mask()` (a seed's grace mask, or the parent's
    /// bitfield) less `busy`, the pieces this parent is sending or has just sent (in end game
    /// the picker hands out pieces already in flight). `mask` runs only when needed.
    pub fn pick_for_parent<R: Rng>(
        &mut self,
        offer: Option<&mut Offer>,
        has: &[bool],
        mask: impl FnOnce() -> Vec<bool>,
        busy: impl IntoIterator<Item = u32>,
        rng: &mut R,
    ) -> Option<u32> {
        if let Some(offer) = offer.filter(|_| self.any_missing()) {
            return self.pick_offered(offer, has, rng);
        }
        let mut mask = mask();
        for i in busy {
            if let Some(m) = mask.get_mut(i as usize) {
                *m = false;
            }
        }
        self.pick(&mask, rng)
    }

    /// Picks a piece for a parent holding `has`, and marks it in flight.
    pub fn pick<R: Rng>(&mut self, has: &[bool], rng: &mut R) -> Option<u32> {
        let verifiable = |i: usize| self.verifiable[i] || self.unverified_ok;
        let ok = |i: usize, s: &Slot, want: Slot| *s == want && verifiable(i) && has.get(i) == Some(&true);
        // A uniform choice among the matching slots, in two passes rather than a list of
        // them: this runs on every ask of a seed worker, over every piece.
        let choose = |want: Slot, rng: &mut R| -> Option<usize> {
            let matching = |(i, s): &(usize, &Slot)| ok(*i, s, want);
            let count = self.slots.iter().enumerate().filter(matching).count();
            let k = (count > 0).then(|| rng.gen_range(0..count))?;
            self.slots.iter().enumerate().filter(matching).nth(k).map(|(i, _)| i)
        };
        let chosen = if let Some(i) = choose(Slot::Missing, rng) {
            i
        } else if self.missing > 0 {
            // Not the tail yet: pieces still missing elsewhere (not verifiable, or not held by
            // this parent) will come; duplicating now would only waste the parent's upload.
            return None;
        } else {
            choose(Slot::InFlight(1), rng)?
        };
        self.slots[chosen] = match self.slots[chosen] {
            Slot::InFlight(n) => Slot::InFlight(n + 1),
            _ => {
                self.missing -= 1;
                Slot::InFlight(1)
            }
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
    fn an_offer_yields_each_missing_shown_piece_once_and_released_ones_again() {
        let mut p = verifiable(4);
        let has = [true, true, false, true];
        let mut offer = Offer::default();
        (0..4).for_each(|i| offer.push(i));
        p.mark_done(3);
        let a = p.pick_offered(&mut offer, &has, &mut rng()).unwrap();
        let b = p.pick_offered(&mut offer, &has, &mut rng()).unwrap();
        assert_eq!([a.min(b), a.max(b)], [0, 1], "not 2 (not shown), not 3 (stored)");
        assert_eq!(p.pick_offered(&mut offer, &has, &mut rng()), None);
        p.release(a);
        assert_eq!(p.pick_offered(&mut offer, &has, &mut rng()), Some(a), "released: back in the offer");
    }

    #[test]
    fn an_offer_keeps_pieces_without_digest_for_later_and_ends_at_end_game() {
        let mut p = PiecePicker::new(2);
        let has = [true, true];
        let mut offer = Offer::default();
        offer.push(0);
        offer.push(1);
        assert_eq!(p.pick_offered(&mut offer, &has, &mut rng()), None);
        p.set_verifiable(1);
        assert_eq!(p.pick_offered(&mut offer, &has, &mut rng()), Some(1));
        p.set_verifiable(0);
        assert_eq!(p.pick_offered(&mut offer, &has, &mut rng()), Some(0));
        assert!(!p.any_missing());
        assert_eq!(p.pick_offered(&mut offer, &has, &mut rng()), None, "end game: the caller duplicates with pick");
        assert!(p.pick(&has, &mut rng()).is_some());
    }

    #[test]
    fn a_parent_worker_uses_its_offer_then_the_mask_less_what_it_is_sending() {
        let mut p = verifiable(2);
        let has = [true, true];
        let mut offer = Offer::default();
        offer.push(1);
        let no_mask = || -> Vec<bool> { panic!("the offer answers before end game") };
        assert_eq!(p.pick_for_parent(Some(&mut offer), &has, no_mask, [], &mut rng()), Some(1));
        assert_eq!(p.pick_for_parent(None, &has, || has.to_vec(), [], &mut rng()), Some(0), "a seed: the mask");
        // End game: duplicates, never of a piece this parent is sending.
        assert_eq!(p.pick_for_parent(Some(&mut offer), &has, || has.to_vec(), [0], &mut rng()), Some(1));
        assert_eq!(p.pick_for_parent(Some(&mut offer), &has, || has.to_vec(), [0, 1], &mut rng()), None);
    }

    proptest::proptest! {
        #[test]
        fn offers_and_scans_agree_on_what_is_pickable(n in 1u32..40, seed in 0u64..1000) {
            use rand::Rng;
            let mut r = StdRng::seed_from_u64(seed);
            let mut p = PiecePicker::new(n);
            let has: Vec<bool> = (0..n).map(|_| r.gen_bool(0.7)).collect();
            let mut offer = Offer::default();
            for i in 0..n {
                if r.gen_bool(0.8) { p.set_verifiable(i) }
                if r.gen_bool(0.3) { p.mark_done(i); }
                if has[i as usize] { offer.push(i) }
            }
            let mut q = p.clone();
            let mut a = vec![];
            while let Some(i) = p.pick_offered(&mut offer, &has, &mut r) { a.push(i) }
            let mut b = vec![];
            while q.any_missing() { match q.pick(&has, &mut r) { Some(i) => b.push(i), None => break } }
            a.sort();
            b.sort();
            proptest::prop_assert_eq!(a, b);
        }
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
