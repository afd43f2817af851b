//! The table of our random 32-bit session indices (whitepaper 5.4.1): incoming responses,
//! cookie replies and transport messages name one, and it tells which peer to ask.
//! Owns allocation (random, unique) and release; the peer knows which of its handshakes
//! or sessions carries the index.

use std::collections::HashMap;

use rand::RngCore as _;
use rand::rngs::OsRng;

use super::PeerId;

/// Index to peer.
#[derive(Debug, Default)]
pub struct IndexTable {
    map: HashMap<u32, PeerId>,
}

impl IndexTable {
    /// A fresh random index, not in use, now owned by `peer`. Random so indices do not
    /// reveal how many sessions exist, as WireGuard requires.
    pub fn allocate(&mut self, peer: PeerId) -> u32 {
        loop {
            let index = OsRng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(slot) = self.map.entry(index) {
                slot.insert(peer);
                return index;
            }
        }
    }

    /// Frees an index when its handshake or session goes.
    pub fn release(&mut self, index: u32) {
        self.map.remove(&index);
    }

    /// The peer an index belongs to.
    pub fn get(&self, index: u32) -> Option<PeerId> {
        self.map.get(&index).copied()
    }

    /// How many indices are live (tests check nothing leaks).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_and_release() {
        let mut table = IndexTable::default();
        let a = table.allocate(PeerId(0));
        let b = table.allocate(PeerId(1));
        assert_ne!(a, b);
        assert_eq!(table.get(a), Some(PeerId(0)));
        assert_eq!(table.get(b), Some(PeerId(1)));
        table.release(a);
        assert_eq!(table.get(a), None);
        assert_eq!(table.len(), 1);
    }
}
