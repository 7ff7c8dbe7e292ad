//! What a child may ask a seed for by index while the seed still reads the origin.
//!
//! A seed dispenses (it hands each new piece to one child, see `ferry_transport::avail`), so
//! a child normally gets a seed's pieces from other children. It asks the seed itself for a
//! piece by index only when no other parent of its has shown that piece for a grace time:
//! the child that got it may have died, or be slow to pass it on.
//!
//! Invariants:
//! - a piece some other parent shows is never asked of the seed (its timer starts over);
//! - a piece comes due `grace * (1 + jitter)` after it was first seen only at the seed, with
//!   the jitter in [0, 2) fixed per (host, piece): children of one seed do not all give up on
//!   the same piece at the same moment; the first to ask passes it on to the rest.

use std::time::{Duration, Instant};

/// The mask of pieces a child may ask a seed parent for by index now, and the earliest
/// moment another comes due. `has`: what the seed shows; `other_holders[i]`: how many other
/// (non-seed) parents show piece `i`; `since[i]`: when piece `i` was first seen only at the
/// seed (kept by the caller across calls); `host`: the child's host id, for the jitter.
pub fn seed_only_mask(
    has: &[bool],
    other_holders: &[u16],
    since: &mut [Option<Instant>],
    now: Instant,
    grace: Duration,
    host: &str,
) -> (Vec<bool>, Option<Instant>) {
    let mut next: Option<Instant> = None;
    let host = host_key(host);
    let mask = has
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let Some(slot) = since.get_mut(i) else { return false };
            if !*b || other_holders.get(i).is_some_and(|c| *c > 0) {
                *slot = None;
                return false;
            }
            let due = *slot.get_or_insert(now) + grace + grace.mul_f64(jitter(host, i as u32));
            if due <= now {
                return true;
            }
            next = Some(next.map_or(due, |n| n.min(due)));
            false
        })
        .collect();
    (mask, next)
}

/// The host's part of [`jitter`], hashed once per call rather than once per piece (the mask
/// is built for every piece on every ask).
fn host_key(host: &str) -> u64 {
    host.bytes().fold(0xcbf29ce484222325, |x, b| (x ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// A per (host, piece) factor in [0, 2): the piece index mixed into the host's key
/// (SplitMix64's finaliser).
fn jitter(host: u64, index: u32) -> f64 {
    let mut x = host ^ u64::from(index).wrapping_mul(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^= x >> 31;
    (x % 1024) as f64 / 512.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(1);

    #[test]
    fn a_piece_comes_due_only_after_its_grace_and_never_while_another_parent_shows_it() {
        let t0 = Instant::now();
        let mut since = vec![None; 2];
        let (mask, next) = seed_only_mask(&[true, true], &[0, 1], &mut since, t0, G, "h");
        assert_eq!(mask, vec![false, false]);
        let due = next.expect("piece 0 comes due");
        assert!(due >= t0 + G && due < t0 + 3 * G);
        assert_eq!(since[1], None, "shown elsewhere: no timer");
        let (mask, _) = seed_only_mask(&[true, true], &[0, 1], &mut since, due, G, "h");
        assert_eq!(mask, vec![true, false]);
        let (mask, _) = seed_only_mask(&[true, true], &[1, 1], &mut since, due, G, "h");
        assert_eq!(mask, vec![false, false], "another parent showed it: the timer starts over");
        assert_eq!(since[0], None);
    }

    #[test]
    fn jitter_spreads_hosts_over_the_grace_window() {
        let j: Vec<f64> = (0..64).map(|h| jitter(host_key(&format!("host-{h}")), 7)).collect();
        assert!(j.iter().all(|x| (0.0..2.0).contains(x)));
        assert!(j.iter().any(|x| *x < 0.5) && j.iter().any(|x| *x > 1.5));
        let pieces: Vec<f64> = (0..64).map(|i| jitter(host_key("host-1"), i)).collect();
        assert!(pieces.iter().any(|x| *x < 0.5) && pieces.iter().any(|x| *x > 1.5), "and one host's pieces");
    }
}
