#!/usr/bin/env bash
# Runs fuzz targets with libFuzzer on the stable toolchain: `scripts/fuzz.sh TARGET [SECONDS]`
# fuzzes one target (default 600 s), `scripts/fuzz.sh all [SECONDS]` each in turn (CI: 25 s).
# Targets: wire datagram config responder initiator classify (fuzz/fuzz_targets/).
#
# It builds what `cargo fuzz build -s none` builds (sanitizer-coverage instrumentation,
# debug assertions, --cfg fuzzing; no AddressSanitizer, which needs nightly and buys little
# in safe Rust) with plain cargo, so no nightly toolchain nor cargo-fuzz is needed.
# Each run starts from the seeds kept in the repo (fuzz/seeds/TARGET, made by
# `cargo run --example seeds` in fuzz/) and every crash input ever found
# (fuzz/regressions/TARGET, replayed first), and grows fuzz/corpus/TARGET (gitignored).
# A crash lands in fuzz/artifacts/TARGET/: copy it into fuzz/regressions/TARGET/ once fixed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(wire datagram config responder initiator classify)
target="${1:?usage: scripts/fuzz.sh TARGET|all [SECONDS]}"
seconds="${2:-600}"
if [ "$target" = all ]; then
  chosen=("${TARGETS[@]}")
else
  chosen=("$target")
fi

# The flags cargo-fuzz passes for `-s none` (cargo-fuzz src/project.rs). --target keeps
# them off build scripts and proc macros, which must not be instrumented.
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=target/sancov
bins=()
for t in "${chosen[@]}"; do bins+=(--bin "$t"); done
cargo build --release --target "$triple" "${bins[@]}"

for t in "${chosen[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "regressions/$t"
  echo "fuzz: $t for ${seconds} s" >&2
  # Regressions first, as whole files: any that still crashes fails here, named.
  if [ -n "$(ls -A "regressions/$t")" ]; then
    "$CARGO_TARGET_DIR/$triple/release/$t" "regressions/$t"/*
  fi
  "$CARGO_TARGET_DIR/$triple/release/$t" "corpus/$t" "seeds/$t" \
    -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
    -timeout=10 -rss_limit_mb=2048
done
