#!/usr/bin/env bash
# Peak memory of vmtun under load: two throwaway namespaces joined by a veth, vmtun on
# both ends, iperf3 TCP x1 then x4 through the tunnel (T seconds each, default 10), then
# the peak resident set (VmHWM) of each vmtun process. Issue 4's target: < 32 MiB.
#
#   ns rssa<pid> [198.18.0.1] ==veth== [198.18.0.2] ns rssb<pid>
#   tunnel 192.0.2.1 <==================> 192.0.2.2
#
# Root only; touches nothing outside its two namespaces, which are deleted on exit.
set -euo pipefail
umask 077 # the configs hold private keys inline: vmtun refuses them if others can read them
cd "$(dirname "$0")/.."
V=${VMTUN:-target/release/vmtun}
[ -x "$V" ] || cargo build --release --quiet
T=${T:-10}
A=rssa$$ B=rssb$$ D=$(mktemp -d)
PA= PB=
cleanup() {
  for p in $PA $PB; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
ip netns add "$A"; ip netns add "$B"
ip link add "va$$" netns "$A" type veth peer name "vb$$" netns "$B"
ip -n "$A" addr add 198.18.0.1/24 dev "va$$"; ip -n "$B" addr add 198.18.0.2/24 dev "vb$$"
for n in "$A" "$B"; do ip -n "$n" link set lo up; done
ip -n "$A" link set "va$$" up; ip -n "$B" link set "vb$$" up
KA=$($V keygen); KB=$($V keygen)
conf() { # name key address peer-key peer-endpoint peer-address
  printf '[interface]\nname = "%s"\nprivate_key = "%s"\naddress = "%s/24"\n[[peer]]\npublic_key = "%s"\nendpoint = "%s:51820"\nallowed_ips = ["%s/32"]\n' "$@"
}
conf "rssa$$" "$KA" 192.0.2.1 "$(echo "$KB" | $V pubkey)" 198.18.0.2 192.0.2.2 > "$D/a.toml"
conf "rssb$$" "$KB" 192.0.2.2 "$(echo "$KA" | $V pubkey)" 198.18.0.1 192.0.2.1 > "$D/b.toml"
ip netns exec "$A" "$V" up -c "$D/a.toml" 2>"$D/a.log" & PA=$!
ip netns exec "$B" "$V" up -c "$D/b.toml" 2>"$D/b.log" & PB=$!
for _ in $(seq 50); do ip netns exec "$A" ping -c 1 -W 0.2 192.0.2.2 >/dev/null 2>&1 && break; done
gbps() { python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'; }
for streams in 1 4; do
  ip netns exec "$B" iperf3 -s -D -1 >/dev/null; sleep 0.3
  echo "tcp x$streams: $(ip netns exec "$A" iperf3 -c 192.0.2.2 -t "$T" -P "$streams" -J | gbps) Gbit/s"
done
for side in a:$PA b:$PB; do
  echo "vmtun ${side%%:*} (${side#*:}): $(grep VmHWM "/proc/${side#*:}/status" | tr -s ' \t' ' ')"
done
