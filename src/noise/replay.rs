//! The receive-side anti-replay window of one session (RFC 6479, as in the Linux module's
//! `counter_validate`). Owns only the bitmap; the caller checks cheaply before decrypting
//! and commits after the tag verified, so forged packets cannot move the window.

use super::timers::REJECT_AFTER_MESSAGES;

const BITS_PER_BLOCK: u64 = u64::BITS as u64;
/// 128 blocks of 64 bits: 8192 bits in a ring (RFC 6479 section 2).
const RING_BLOCKS: usize = 128;
const RING_BITS: u64 = RING_BLOCKS as u64 * BITS_PER_BLOCK;
/// Packets this far behind the newest are still accepted: one block of the ring is kept
/// free so advancing never clears bits still inside the window (WireGuard's
/// `COUNTER_WINDOW_SIZE`, 8192 - 64).
pub const WINDOW_SIZE: u64 = RING_BITS - BITS_PER_BLOCK;

/// Which counters a session has received, for the last [`WINDOW_SIZE`] counters.
#[derive(Clone)]
pub struct ReplayWindow {
    /// One more than the greatest counter committed; 0 before the first. Counters from
    /// `next - 1 - WINDOW_SIZE` up are inside the window.
    next: u64,
    ring: [u64; RING_BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            next: 0,
            ring: [0; RING_BLOCKS],
        }
    }
}

fn position(counter: u64) -> (usize, u64) {
    // The block number modulo the ring size is < RING_BLOCKS, so it fits a usize.
    let block = ((counter / BITS_PER_BLOCK) % RING_BLOCKS as u64) as usize;
    (block, 1u64 << (counter % BITS_PER_BLOCK))
}

impl ReplayWindow {
    /// Whether `counter` could be accepted: not too old, not seen, below the reject limit.
    /// Does not change anything.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        // counter < next here, so next >= 1: the newest committed counter is next - 1.
        if (self.next - 1) - counter > WINDOW_SIZE {
            return false;
        }
        let (block, bit) = position(counter);
        self.ring[block] & bit == 0
    }

    /// Marks `counter` as received after its packet authenticated. Returns false if it
    /// must be refused after all (a duplicate or out of the window).
    pub fn commit(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear the blocks the window slides over, at most the whole ring.
            let current_block = self.next.saturating_sub(1) / BITS_PER_BLOCK;
            let target_block = counter / BITS_PER_BLOCK;
            let advance = (target_block - current_block).min(RING_BLOCKS as u64);
            for step in 1..=advance {
                let (block, _) = position((current_block + step) * BITS_PER_BLOCK);
                self.ring[block] = 0;
            }
            // REJECT_AFTER_MESSAGES < u64::MAX, so this cannot overflow.
            self.next = counter + 1;
        }
        let (block, bit) = position(counter);
        self.ring[block] |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(window: &mut ReplayWindow, counter: u64) -> bool {
        window.check(counter) && window.commit(counter)
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::default();
        for c in 0..200 {
            assert!(accept(&mut w, c));
        }
        assert!(!accept(&mut w, 0));
        assert!(!accept(&mut w, 199));
        assert!(!accept(&mut w, 150));
    }

    #[test]
    fn out_of_order_within_window() {
        let mut w = ReplayWindow::default();
        assert!(accept(&mut w, 10));
        assert!(accept(&mut w, 3));
        assert!(accept(&mut w, 0));
        assert!(!accept(&mut w, 3));
        assert!(accept(&mut w, 9));
    }

    #[test]
    fn window_edge_is_exact() {
        let mut w = ReplayWindow::default();
        let top = 20_000;
        assert!(accept(&mut w, top));
        // Counters down to top - WINDOW_SIZE are in the window, as in the Linux module.
        let oldest = top - WINDOW_SIZE;
        assert!(!w.check(oldest - 1), "one beyond the edge");
        assert!(accept(&mut w, oldest), "exactly at the edge");
        assert!(!accept(&mut w, oldest), "edge duplicate");
        assert!(accept(&mut w, top - 1));
    }

    #[test]
    fn far_old_is_refused() {
        let mut w = ReplayWindow::default();
        assert!(accept(&mut w, 100_000));
        assert!(!accept(&mut w, 100_000 - 8128 - 1));
        assert!(!accept(&mut w, 5));
    }

    #[test]
    fn far_future_jump_clears_the_whole_ring() {
        let mut w = ReplayWindow::default();
        for c in 0..8192 {
            assert!(accept(&mut w, c));
        }
        let jump = 1_000_000_000;
        assert!(accept(&mut w, jump));
        // Every counter just below the jump maps onto a block that held old bits:
        // none may look received.
        for c in (jump - WINDOW_SIZE)..jump {
            assert!(w.check(c), "counter {c} wrongly marked");
        }
        assert!(!w.check(jump));
    }

    #[test]
    fn ring_wraps_around_many_times() {
        let mut w = ReplayWindow::default();
        for c in (0..50_000).step_by(3) {
            assert!(accept(&mut w, c));
        }
        // Recent counters skipped by the step are still free, taken ones are not.
        assert!(accept(&mut w, 49_997));
        assert!(!accept(&mut w, 49_998));
        assert!(!accept(&mut w, 49_995));
        assert!(accept(&mut w, 49_994));
        assert!(
            accept(&mut w, 49_998 - WINDOW_SIZE + 2),
            "not a multiple of 3"
        );
        assert!(!w.check(49_998 - WINDOW_SIZE - 1), "beyond the window");
    }

    #[test]
    fn advancing_one_block_at_a_time_keeps_the_window() {
        let mut w = ReplayWindow::default();
        assert!(accept(&mut w, 63));
        assert!(accept(&mut w, 64));
        assert!(!accept(&mut w, 63));
        assert!(accept(&mut w, 0));
        assert!(accept(&mut w, 64 * 127 + 5));
        // Block 0 is still within the window (8128 back from 8133 is 5).
        assert!(!accept(&mut w, 63));
        assert!(accept(&mut w, 64 * 128 + 5));
        // Block 0's slot now holds block 128: counters up to 68 are too old, block 1
        // still remembers 64.
        assert!(!w.check(0));
        assert!(!w.check(68));
        assert!(!w.check(64 * 128 + 5));
        assert!(w.check(69));
        assert!(w.check(64 * 128));
    }

    #[test]
    fn reject_limit() {
        let mut w = ReplayWindow::default();
        assert!(!w.check(REJECT_AFTER_MESSAGES));
        assert!(!w.check(u64::MAX));
        assert!(accept(&mut w, REJECT_AFTER_MESSAGES - 1));
        assert!(!accept(&mut w, REJECT_AFTER_MESSAGES - 1));
    }
}
