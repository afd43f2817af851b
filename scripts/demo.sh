#!/usr/bin/env bash
# Runs `vmtun demo`: the whole move (client, provider, old host, new host, a VM with a UDP
# echo responder) in network namespaces on this machine, with progress, a timeline and a
# per-phase summary. Arguments go to `vmtun demo` (e.g. --json, --rate 10000,
# --seed-cutover; --real-vm builds the guest first, scripts/guest.sh). Needs root; never
# touches the root network namespace, and deletes every namespace it made, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root to create network namespaces; run: sudo scripts/demo.sh $*" >&2
  exit 1
fi

scripts/setup.sh
# Not --quiet: the first build on a fresh clone takes about 6 minutes on 2 cores (fat LTO),
# and cargo's progress shows it is working; afterwards it takes seconds.
echo "demo: building vmtun (release; the first build takes about 6 minutes on 2 cores)" >&2
cargo build --release
# --real-vm needs the guest: built once from Debian packages, cached.
for arg in "$@"; do
  if [ "$arg" = --real-vm ]; then
    VMTUN_GUEST_DIR=$(scripts/guest.sh)
    export VMTUN_GUEST_DIR
  fi
done
exec target/release/vmtun demo "$@"
