#!/usr/bin/env bash
# Runs every test: unit tests, and the real tests in network namespaces (needs root).
# Exits non-zero if any test fails. The namespace tests create and delete their own
# namespaces (vmtunlab-*) and never touch the root network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests

if [ "$(id -u)" -ne 0 ]; then
  echo "test: the namespace tests need root; run as root (e.g. sudo scripts/test.sh)" >&2
  exit 1
fi

# Dependencies (deny.toml): licenses, banned and duplicate crates, and sources, offline.
# Advisories need the RustSec database: see SECURITY.md.
echo "test: cargo deny check licenses bans sources" >&2
cargo deny --offline check --hide-inclusion-graph licenses bans sources

# Two test threads per binary: each namespace test runs a tunnel on both ends and a
# 50 MB transfer, and the machine has two cores.
export RUST_BACKTRACE=1
timeout --kill-after=30 1500 \
  cargo test --release -- --test-threads="${TEST_THREADS:-2}"

# What the README relies on beyond the tests: the benches build and run once in test mode
# (same profile as above, so nothing is built twice), which includes the allocation check
# (benches/alloc.rs exits non-zero if the per-packet path allocates); and the fuzz
# targets (their own workspace under fuzz/) each fuzz briefly, on the stable toolchain, from
# their seeds and after replaying every crash input ever found (fuzz/regressions/).
echo "test: the benches in test mode, with the zero-allocation check" >&2
timeout --kill-after=30 900 cargo test --release --benches
echo "test: checking the fuzz crate (targets, seed generator)" >&2
timeout --kill-after=30 600 cargo check --manifest-path fuzz/Cargo.toml --bins --examples
echo "test: every fuzz target for ${FUZZ_SECONDS:-25} s" >&2
timeout --kill-after=30 900 scripts/fuzz.sh all "${FUZZ_SECONDS:-25}"
