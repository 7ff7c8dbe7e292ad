//! Deterministic test content: the same (seed, size) always gives the same bytes, so a
//! checker can recompute what any peer should hold.

use bytes::Bytes;

pub fn generate(seed: u64, size: usize) -> Bytes {
    let mut out = vec![0u8; size];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in out.chunks_mut(8) {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_and_seed_dependent() {
        assert_eq!(super::generate(1, 1001), super::generate(1, 1001));
        assert_ne!(super::generate(1, 64), super::generate(2, 64));
        assert_eq!(super::generate(1, 0).len(), 0);
    }
}
