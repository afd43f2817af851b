//! The receive-side replay window (src/noise/replay.rs), in counters/s: the check before
//! decrypting plus the commit after, as `Session::decrypt` does.
//!
//! - `in_order`: counters 0, 1, 2, ... (the common case; a block is cleared every 64).
//! - `reordered`: blocks of 64 counters, each block delivered backwards (every packet but
//!   the first of a block is below the newest).
//! - `duplicate`: the check refusing a counter already seen (what a replayed packet costs
//!   before any decryption).
//! - `jump_4096`: every counter 4096 ahead of the last (clears 64 ring blocks each time).
//!
//! Run: `cargo bench --bench replay`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use vmtun::noise::ReplayWindow;

fn accept(w: &mut ReplayWindow, counter: u64) -> bool {
    w.check(counter) && w.commit(counter)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(1));

    g.bench_function("in_order", |b| {
        let mut w = ReplayWindow::default();
        let mut next = 0u64;
        b.iter(|| {
            let ok = accept(&mut w, black_box(next));
            next += 1;
            ok
        });
    });

    g.bench_function("reordered", |b| {
        let mut w = ReplayWindow::default();
        let mut i = 0u64;
        b.iter(|| {
            // Block k = i / 64 is delivered as 64k+63, 64k+62, ..., 64k.
            let counter = (i / 64) * 64 + (63 - i % 64);
            i += 1;
            accept(&mut w, black_box(counter))
        });
    });

    g.bench_function("duplicate", |b| {
        let mut w = ReplayWindow::default();
        for c in 0..10_000 {
            accept(&mut w, c);
        }
        let mut i = 0u64;
        b.iter(|| {
            let counter = 10_000 - 1 - (i % 8000);
            i += 1;
            w.check(black_box(counter))
        });
    });

    g.bench_function("jump_4096", |b| {
        let mut w = ReplayWindow::default();
        let mut next = 0u64;
        b.iter(|| {
            next += 4096;
            accept(&mut w, black_box(next))
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
