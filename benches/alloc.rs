//! No allocation on the per-packet path: a counting global allocator around the system
//! one, 10 000 round trips (A seals, B opens, B seals, A opens) of 64, 512 and 1420-byte
//! packets after a warm-up, through the public `vmtun::noise::Tunnel` API with the
//! driver's buffer discipline (caller-owned `out` buffers, reused). Prints the counts and
//! exits non-zero if any allocation happened.
//!
//! Run: `cargo bench --bench alloc` (a plain binary, `harness = false`; no criterion).

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use vmtun::noise::Inbound;

mod common;
use common::{A_IP, B_IP, BUF, addr_a, addr_b, established, ipv4, seal};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc`; `ptr` came from this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP: usize = 1_000;
const ROUND_TRIPS: usize = 10_000;

fn main() -> ExitCode {
    let mut failed = false;
    for size in [64usize, 512, 1420] {
        let start = Instant::now();
        let (mut a, mut b) = established(start);
        let to_b = ipv4(A_IP, B_IP, size);
        let to_a = ipv4(B_IP, A_IP, size);
        let mut sealed = vec![0u8; BUF];
        let mut opened = vec![0u8; BUF];
        let mut round_trip = |n: usize| {
            for _ in 0..n {
                // Real time, as the driver passes it: timers move as they would.
                let now = Instant::now();
                let len = seal(&mut a, now, &to_b, &mut sealed);
                let r = b.handle_datagram(now, addr_a(), &sealed[..len], &mut opened);
                assert!(
                    matches!(r, Inbound::Deliver { len, .. } if len == size),
                    "{r:?}"
                );
                let len = seal(&mut b, now, &to_a, &mut sealed);
                let r = a.handle_datagram(now, addr_b(), &sealed[..len], &mut opened);
                assert!(
                    matches!(r, Inbound::Deliver { len, .. } if len == size),
                    "{r:?}"
                );
            }
        };
        round_trip(WARMUP);
        let (n0, b0) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let t0 = Instant::now();
        round_trip(ROUND_TRIPS);
        let elapsed = t0.elapsed();
        let allocs = ALLOCS.load(Ordering::Relaxed) - n0;
        let bytes = BYTES.load(Ordering::Relaxed) - b0;
        let packets = 2 * ROUND_TRIPS;
        println!(
            "alloc size={size} round_trips={ROUND_TRIPS} packets_sealed={packets} packets_opened={packets} \
             allocations={allocs} bytes_allocated={bytes} elapsed_ms={:.1} \
             ns_per_seal_plus_open={:.0}",
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e9 / packets as f64
        );
        failed |= allocs != 0;
    }
    if failed {
        eprintln!("FAIL: the per-packet path allocated");
        ExitCode::FAILURE
    } else {
        println!("OK: zero allocations on the per-packet path");
        ExitCode::SUCCESS
    }
}
