//! Which pieces of a task this daemon holds, and who wants to hear about new ones.

use std::sync::Mutex;

use tokio::sync::broadcast;

pub struct Availability {
    bits: Mutex<Vec<bool>>,
    haves: broadcast::Sender<u32>,
}

impl Availability {
    pub fn new(piece_count: u32) -> Self {
        let (haves, _) = broadcast::channel(4096);
        Self { bits: Mutex::new(vec![false; piece_count as usize]), haves }
    }

    pub fn piece_count(&self) -> u32 {
        self.bits.lock().expect("not poisoned").len() as u32
    }

    pub fn has(&self, index: u32) -> bool {
        self.bits.lock().expect("not poisoned").get(index as usize).copied().unwrap_or(false)
    }

    pub fn held_count(&self) -> u32 {
        self.bits.lock().expect("not poisoned").iter().filter(|b| **b).count() as u32
    }

    /// Marks a piece held; returns false if it already was. Subscribers hear about it.
    pub fn insert(&self, index: u32) -> bool {
        let mut bits = self.bits.lock().expect("not poisoned");
        let Some(slot) = bits.get_mut(index as usize) else {
            return false;
        };
        if *slot {
            return false;
        }
        *slot = true;
        let _ = self.haves.send(index);
        true
    }

    /// A subscription taken together with the snapshot, so no piece falls between them.
    pub fn subscribe(&self) -> (Vec<u8>, u32, broadcast::Receiver<u32>) {
        let bits = self.bits.lock().expect("not poisoned");
        let rx = self.haves.subscribe();
        (pack_bits(&bits), bits.len() as u32, rx)
    }

    pub fn is_complete(&self) -> bool {
        self.bits.lock().expect("not poisoned").iter().all(|b| *b)
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
        let a = Availability::new(3);
        let (_, _, mut rx) = a.subscribe();
        assert!(a.insert(1));
        assert!(!a.insert(1));
        assert!(!a.insert(7));
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert!(rx.try_recv().is_err());
        assert_eq!(a.held_count(), 1);
    }
}
