//! How a task's content is cut into pieces.
//!
//! A task read from its origin for the first time is cut by the rate its first bytes came
//! at ([`PieceLayout::for_rate`]); content too short to measure, or cut without a read, by
//! its length ([`PieceLayout::for_length`]), as follows.
//!
//! Piece size is a power of two chosen from the content length so that a file has about
//! [`TARGET_PIECES`] pieces, bounded by [`MIN_PIECE_SIZE`] and [`MAX_PIECE_SIZE`]: small
//! files get small pieces (a piece-time is added per level of the distribution tree), large
//! files get large ones (per-piece overhead stays bounded). The last piece may be short.
//!
//! Why 512: a piece a seed hands to one peer reaches the others only after that peer has
//! sent it on, so the swarm lags the seed by a few piece-times per peer. Measured on the
//! testbed (16 hosts, 128 MiB, 200 Mbit/s): 1 MiB pieces (128 per file) 7.4 s, 512 KiB
//! 6.6 s, 256 KiB (512 per file) 6.1 s, 128 KiB 6.4 s (CPU-bound: 99 % busy).
//!
//! Why at most [`AUTO_MAX_PIECE_SIZE`] for large files: each hop of a new piece through the
//! mesh takes about (children sharing the sender's uplink) x (requests queued) x (piece
//! time), and with a fixed count of pieces the piece time grows with the file. In the fleet
//! simulator (`ferry-sim`; 1,000 hosts, 4 GiB, 10 Gbit/s, origin 25 Gbit/s) 8 MiB pieces
//! (512) ended at efficiency 0.63 and 1 MiB pieces (4,096) at 0.80, the seed reading the
//! origin once either way. Past [`MAX_AUTO_PIECES`] pieces sizes grow again, so a 100 GiB
//! file has 12,800 pieces of 8 MiB rather than 102,400.

use crate::ParseError;

pub const MIN_PIECE_SIZE: u32 = 256 * 1024;
pub const MAX_PIECE_SIZE: u32 = 64 * 1024 * 1024;
/// Smallest size accepted for an explicit override (tests, benchmarks).
const MIN_OVERRIDE: u32 = 16 * 1024;
const TARGET_PIECES: u64 = 512;
/// Largest piece size chosen from a length alone, until [`MAX_AUTO_PIECES`].
pub const AUTO_MAX_PIECE_SIZE: u32 = 1024 * 1024;
const MAX_AUTO_PIECES: u64 = 16 * 1024;
/// Content shorter than this is cut by its length alone, not by a measured rate: most of it
/// would be read before a rate could tell anything.
pub const MIN_RATE_LENGTH: u64 = 8 << 20;
/// The longest a piece should take at the rate its origin delivers ([`PieceLayout::for_rate`]).
pub const PIECE_TIME: std::time::Duration = std::time::Duration::from_millis(14);
/// Smallest piece size chosen from a rate: below it per-piece costs dominate.
pub const MIN_RATE_PIECE_SIZE: u32 = 64 * 1024;
/// Most pieces a task may have: a bitfield of them fits one control frame (1 MiB).
pub const MAX_PIECES: u32 = 8 * 1024 * 1024;

/// A piece number known to be inside its task's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(u32);

impl PieceIndex {
    pub fn get(self) -> u32 {
        self.0
    }

    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceLayout {
    content_length: u64,
    piece_size: u32,
}

impl PieceLayout {
    /// The default layout for content of this length.
    pub fn for_length(content_length: u64) -> Self {
        let by_count = (content_length / TARGET_PIECES).max(1).next_power_of_two().min(AUTO_MAX_PIECE_SIZE as u64);
        let by_cap = content_length.div_ceil(MAX_AUTO_PIECES).next_power_of_two();
        let piece_size = by_count.max(by_cap).clamp(MIN_PIECE_SIZE as u64, MAX_PIECE_SIZE as u64) as u32;
        Self { content_length, piece_size }
    }

    /// The layout for content arriving from its origin at `bytes_per_sec`: pieces that take
    /// [`PIECE_TIME`] or a little less at that rate, between [`MIN_RATE_PIECE_SIZE`] and
    /// [`AUTO_MAX_PIECE_SIZE`], and never more than [`MAX_AUTO_PIECES`] of them (past that
    /// they grow as in [`Self::for_length`]).
    ///
    /// Why a piece time rather than a piece count: a new piece reaches the swarm after
    /// about (children sharing a parent's uplink) x (piece time), and the swarm ends that
    /// long after the seed; per-piece costs (requests, `Have`s, digests, records) are paid
    /// per piece, so a piece time also bounds them per second, whatever the speed. Measured
    /// on the testbed (16 hosts, 128 MiB): at 50 Mbit/s 256 KiB pieces end at 0.83-0.85 of
    /// the bound, 128 KiB 0.89, 64 KiB 0.91; at 200 Mbit/s 256 KiB 0.86, 128 KiB 0.85, 64
    /// KiB 0.65 (CPU-bound). Both optima are about 10 ms of the link.
    pub fn for_rate(content_length: u64, bytes_per_sec: f64) -> Self {
        let fits = (bytes_per_sec * PIECE_TIME.as_secs_f64()).clamp(1.0, AUTO_MAX_PIECE_SIZE as f64) as u64;
        // The largest power of two that fits the piece time.
        let by_rate = (fits + 1).next_power_of_two() / 2;
        let by_cap = content_length.div_ceil(MAX_AUTO_PIECES).next_power_of_two();
        let piece_size = by_rate.max(by_cap).clamp(MIN_RATE_PIECE_SIZE as u64, MAX_PIECE_SIZE as u64) as u32;
        Self { content_length, piece_size }
    }

    /// A layout with an explicit piece size (from a peer, or an operator's override).
    pub fn new(content_length: u64, piece_size: u32) -> Result<Self, ParseError> {
        if !piece_size.is_power_of_two() || !(MIN_OVERRIDE..=MAX_PIECE_SIZE).contains(&piece_size) {
            return Err(ParseError::PieceSize(piece_size as u64));
        }
        if content_length.div_ceil(piece_size as u64) > MAX_PIECES as u64 {
            return Err(ParseError::TooManyPieces { length: content_length, piece_size });
        }
        Ok(Self { content_length, piece_size })
    }

    pub fn content_length(&self) -> u64 {
        self.content_length
    }

    pub fn piece_size(&self) -> u32 {
        self.piece_size
    }

    pub fn piece_count(&self) -> u32 {
        self.content_length.div_ceil(self.piece_size as u64) as u32
    }

    pub fn index(&self, index: u32) -> Result<PieceIndex, ParseError> {
        let count = self.piece_count();
        if index < count {
            Ok(PieceIndex(index))
        } else {
            Err(ParseError::PieceIndex { index, count })
        }
    }

    pub fn indices(&self) -> impl Iterator<Item = PieceIndex> {
        (0..self.piece_count()).map(PieceIndex)
    }

    pub fn offset(&self, index: PieceIndex) -> u64 {
        index.0 as u64 * self.piece_size as u64
    }

    pub fn len(&self, index: PieceIndex) -> u32 {
        let start = self.offset(index);
        (self.content_length - start).min(self.piece_size as u64) as u32
    }

    pub fn is_empty(&self) -> bool {
        self.content_length == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn piece_size_grows_with_length_within_bounds() {
        assert_eq!(PieceLayout::for_length(0).piece_size(), MIN_PIECE_SIZE);
        assert_eq!(PieceLayout::for_length(1).piece_size(), MIN_PIECE_SIZE);
        assert_eq!(PieceLayout::for_length(128 * MIB).piece_size(), MIB as u32 / 4);
        assert_eq!(PieceLayout::for_length(256 * MIB).piece_size(), MIB as u32 / 2);
        assert_eq!(PieceLayout::for_length(512 * MIB).piece_size(), MIB as u32);
        assert_eq!(PieceLayout::for_length(4096 * MIB).piece_count(), 4096, "1 MiB pieces for a 4 GiB model");
        assert_eq!(PieceLayout::for_length(16 * 1024 * MIB).piece_size(), MIB as u32);
        assert_eq!(PieceLayout::for_length(100 * 1024 * MIB).piece_size(), 8 * MIB as u32);
        assert_eq!(PieceLayout::for_length(1 << 50).piece_size(), MAX_PIECE_SIZE);
    }

    #[test]
    fn piece_size_follows_the_rate() {
        let mbit = |m: f64| m * 1e6 / 8.0 * 0.95;
        let size = |len: u64, rate: f64| PieceLayout::for_rate(len, rate).piece_size();
        assert_eq!(size(128 * MIB, mbit(50.0)), 64 * 1024);
        assert_eq!(size(128 * MIB, mbit(100.0)), 128 * 1024);
        assert_eq!(size(128 * MIB, mbit(200.0)), 256 * 1024);
        assert_eq!(size(128 * MIB, mbit(10_000.0)), MIB as u32, "at most 1 MiB");
        assert_eq!(size(128 * MIB, 1.0), MIN_RATE_PIECE_SIZE, "at least 64 KiB");
        assert_eq!(size(128 * MIB, 0.0), MIN_RATE_PIECE_SIZE);
        assert_eq!(size(128 * MIB, f64::NAN), MIN_RATE_PIECE_SIZE);
        assert_eq!(size(4096 * MIB, mbit(50.0)), 256 * 1024, "at most 16,384 pieces");
        assert_eq!(size(100 * 1024 * MIB, mbit(50.0)), 8 * MIB as u32);
    }

    #[test]
    fn interesting_sizes() {
        let p = MIN_PIECE_SIZE as u64;
        for (len, count, last) in [(0, 0, 0), (1, 1, 1), (p - 1, 1, p - 1), (p, 1, p), (p + 1, 2, 1)] {
            let l = PieceLayout::for_length(len);
            assert_eq!(l.piece_count(), count, "len {len}");
            if count > 0 {
                assert_eq!(l.len(l.index(count - 1).unwrap()) as u64, last, "len {len}");
            }
            assert!(l.index(count).is_err());
        }
    }

    #[test]
    fn explicit_piece_size_must_be_power_of_two_in_bounds() {
        assert!(PieceLayout::new(10, 3 * 1024 * 1024).is_err());
        assert!(PieceLayout::new(10, 1024).is_err());
        assert!(PieceLayout::new(10, 128 * 1024 * 1024).is_err());
        assert!(PieceLayout::new(10, 1024 * 1024).is_ok());
        assert!(PieceLayout::new(10, 0).is_err());
        assert!(PieceLayout::new(u64::MAX, 16 * 1024).is_err(), "more pieces than a bitfield frame holds");
    }

    proptest! {
        #[test]
        fn pieces_tile_the_content(len in 0u64..(1 << 40)) {
            let l = PieceLayout::for_length(len);
            prop_assert!(l.piece_size().is_power_of_two());
            let count = l.piece_count();
            prop_assert_eq!(count as u64, len.div_ceil(l.piece_size() as u64));
            if count > 0 {
                let last = l.index(count - 1).unwrap();
                prop_assert_eq!(l.offset(last) + l.len(last) as u64, len);
                prop_assert!(l.len(last) > 0);
            }
        }
    }
}
