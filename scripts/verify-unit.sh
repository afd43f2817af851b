#!/usr/bin/env bash
# Checks vmtun's units (vmtun@.service, vmtun-follow-libvirt@.service) with `systemd-analyze
# verify` as installed in ROOT, a throwaway tree holding usr/bin/vmtun,
# usr/share/man/man1/vmtun*.1[.gz] and the units in lib/systemd/system (the unpacked
# package, or what tests/service.rs lays out). Fails on any complaint (an unknown key is only a warning to systemd). Copies this
# machine's targets and slices into ROOT so the unit's dependencies resolve; changes
# nothing outside ROOT.
#   usage: scripts/verify-unit.sh ROOT
set -euo pipefail
root=$(realpath "${1:?usage: scripts/verify-unit.sh ROOT}")
units=$root/lib/systemd/system
if ! command -v systemd-analyze >/dev/null; then
  echo "verify-unit: systemd-analyze is missing; run scripts/setup.sh" >&2
  exit 1
fi
cp -n /lib/systemd/system/*.target /lib/systemd/system/*.slice "$units/"
# The Documentation= man pages are looked up with man(1), which does not know --root.
for unit in vmtun@example.service vmtun-follow-libvirt@example.service; do
  if ! out=$(MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" \
               "$unit" 2>&1) || [ -n "$out" ]; then
    echo "verify-unit: systemd-analyze verify $unit:" >&2
    echo "$out" >&2
    exit 1
  fi
done
echo "verify-unit: vmtun@.service and vmtun-follow-libvirt@.service verified (systemd $(systemd-analyze --version | head -n 1 | cut -d' ' -f2))" >&2
