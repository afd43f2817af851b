//! The per-packet cost of the protocol core, through the public `vmtun::noise::Tunnel` API
//! the driver calls, in packets/s (one element = one packet or one handshake).
//!
//! - `seal/N`: `handle_outbound` of an N-byte IPv4 packet (route lookup, padding to 16,
//!   ChaCha20-Poly1305, header) on an established session.
//! - `open/N`: `handle_datagram` of the matching transport message (index lookup, replay
//!   check, decrypt, replay commit, allowed-IPs check). Replay protection refuses a counter
//!   twice, so every timed open needs a fresh sealed message: each sample seals chunks of
//!   up to `CHUNK` messages untimed, then times opening exactly those, in order (the
//!   common case on a single path). Only the opens are timed (`iter_custom`).
//! - `handshake`: from A's first packet to B delivering it: initiation (A), response (B),
//!   A consuming the response, the queued packet sealed as the first transport message
//!   and opened by B. Fresh tunnel pairs (built untimed) per iteration, so no flood guard
//!   or timestamp check interferes.
//! - `handshake/bad_mac1`: B refusing an initiation whose mac1 is wrong (a flood of forged
//!   initiations costs this each, no X25519): compare it with the handshake above.
//!
//! Run: `cargo bench --bench data_path` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vmtun::noise::{Inbound, Outbound};

mod common;
use common::{A_IP, B_IP, BUF, addr_a, established, fresh, handshake, ipv4, seal};

const SIZES: [usize; 3] = [64, 512, 1420];
/// Sealed messages prepared per untimed batch of the open benchmark.
const CHUNK: usize = 1024;

fn seal_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    for size in SIZES {
        let now = Instant::now();
        let (mut a, _b) = established(now);
        let packet = ipv4(A_IP, B_IP, size);
        let mut out = vec![0u8; BUF];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(size), &packet, |bench, p| {
            bench.iter(|| black_box(seal(&mut a, now, black_box(p), &mut out)));
        });
    }
    g.finish();
}

fn open_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    for size in SIZES {
        let now = Instant::now();
        let (mut a, mut b) = established(now);
        let packet = ipv4(A_IP, B_IP, size);
        let mut sealed: Vec<(Vec<u8>, usize)> = (0..CHUNK).map(|_| (vec![0u8; BUF], 0)).collect();
        let mut out = vec![0u8; BUF];
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(size), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    for (buf, len) in &mut sealed[..n] {
                        *len = seal(&mut a, now, &packet, buf);
                    }
                    let start = Instant::now();
                    for (buf, len) in &sealed[..n] {
                        let r = b.handle_datagram(now, addr_a(), black_box(&buf[..*len]), &mut out);
                        debug_assert!(matches!(r, Inbound::Deliver { .. }), "{r:?}");
                        black_box(r);
                    }
                    total += start.elapsed();
                    left -= n as u64;
                }
                total
            });
        });
    }
    g.finish();
}

fn handshake_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    let first = ipv4(A_IP, B_IP, 64);
    let mut out = vec![0u8; BUF];
    let mut back = vec![0u8; BUF];
    g.bench_function("initiation_to_first_transport", |bench| {
        bench.iter_batched(
            || fresh(Instant::now()),
            |(mut a, mut b)| {
                let now = Instant::now();
                let len = handshake(&mut a, &mut b, now, &first, &mut out, &mut back);
                black_box(len);
                (a, b) // dropped outside the timing
            },
            BatchSize::SmallInput,
        );
    });
    let (mut a, mut b) = fresh(Instant::now());
    let now = Instant::now();
    assert_eq!(a.handle_outbound(now, &first, &mut out), Outbound::Queued);
    let init = a.poll_transmit(now, &mut out).expect("initiation");
    let mut forged = out[..init.len].to_vec();
    forged[117] ^= 1; // inside mac1
    g.bench_function("bad_mac1", |bench| {
        bench.iter(|| {
            let r = b.handle_datagram(now, addr_a(), black_box(&forged), &mut back);
            debug_assert!(matches!(r, Inbound::Dropped(_)), "{r:?}");
            black_box(r)
        });
    });
    g.finish();
}

criterion_group!(benches, seal_bench, open_bench, handshake_bench);
criterion_main!(benches);
