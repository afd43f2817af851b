#!/usr/bin/env bash
# rtt-ab.sh - round-trip time through a tunnel, several builds side by side, alternated.
#
# For each round and each target: two throwaway namespaces joined by a veth, the tunnel
# between them, 20 warm-up pings, then PINGS pings at INTERVAL through the tunnel, with
# `perf stat -e task-clock` on both tunnel processes while they run. Targets alternate
# within every round, so a drift of the machine hits all of them alike. Prints min /
# avg / p50 / p90 / p99 of all pings per target and the tunnel CPU time per ping.
#
#   ns rtt<pid>a [198.18.0.1] ==veth== [198.18.0.2] ns rtt<pid>b
#   tunnel 192.0.2.1 <==================> 192.0.2.2
#
# LOAD=S first pushes S seconds of iperf3 TCP (STREAMS streams) through the tunnel and
# waits 1 s, as tunnel-peers.sh's ping follows its iperf3 runs; the table then also shows
# that load's goodput (mean Gbit/s), so one run compares throughput too.
#
# Usage (root):  benches/rtt-ab.sh TARGET...
#   TARGET: a vmtun binary (path), optionally with @key=value added to both configs'
#   [interface] (e.g. target/release/vmtun@busy_poll_us=0); or `boringtun` /
#   `boringtun:N` (boringtun-cli with --threads N, default 1; BORINGTUN=path, default
#   /opt/anchors/bin/boringtun-cli, as benches/tunnel-peers.sh installs it).
# Environment: ROUNDS=3 PINGS=500 INTERVAL=0.01 LOAD=0 (seconds) STREAMS=4
#   RAW=FILE keeps every ping ("label round ms").
# Example: benches/rtt-ab.sh /tmp/vmtun.before target/release/vmtun boringtun
#
# Touches nothing outside its two namespaces, which are deleted after each target, also
# on failure; stops only the processes it started.
set -euo pipefail
umask 077 # the configs hold private keys inline: vmtun refuses them if others can read them
ROUNDS=${ROUNDS:-3} PINGS=${PINGS:-500} INTERVAL=${INTERVAL:-0.01} LOAD=${LOAD:-0} STREAMS=${STREAMS:-4}
BORINGTUN=${BORINGTUN:-/opt/anchors/bin/boringtun-cli}
[ "$(id -u)" -eq 0 ] || { echo "rtt-ab: needs root (namespaces)" >&2; exit 1; }
[ $# -gt 0 ] || { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
command -v perf >/dev/null || { echo "rtt-ab: needs perf (linux-perf)" >&2; exit 1; }
for c in iperf3 jq; do
  [ "$LOAD" = 0 ] || command -v $c >/dev/null || { echo "rtt-ab: LOAD needs $c" >&2; exit 1; }
done

A=rtt$$a B=rtt$$b VA=rtt$$va VB=rtt$$vb IFA=rtt$$ta IFB=rtt$$tb
D=$(mktemp -d) PA= PB=
teardown() {
  for p in $PA $PB; do kill "$p" 2>/dev/null || true; done
  for p in $PA $PB; do wait "$p" 2>/dev/null || true; done
  PA= PB=
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}
trap 'teardown; rm -rf "$D"' EXIT

underlay() {
  ip netns add "$A"; ip netns add "$B"
  ip link add "$VA" netns "$A" type veth peer name "$VB" netns "$B"
  ip -n "$A" addr add 198.18.0.1/24 dev "$VA"; ip -n "$B" addr add 198.18.0.2/24 dev "$VB"
  for n in "$A" "$B"; do ip -n "$n" link set lo up; done
  ip -n "$A" link set "$VA" up; ip -n "$B" link set "$VB" up
}

up_vmtun() { # binary[@key=value]: the setting goes into both [interface] sections
  local v=${1%%@*} extra= ka kb
  [[ $1 != *@* ]] || extra="${1#*@}"
  ka=$("$v" keygen); kb=$("$v" keygen)
  conf() { # name key address peer-key peer-endpoint peer-address
    printf '[interface]\n%s\nname = "%s"\nprivate_key = "%s"\naddress = "%s/24"\n[[peer]]\npublic_key = "%s"\nendpoint = "%s:51820"\nallowed_ips = ["%s/32"]\n' "$@"
  }
  conf "$extra" "$IFA" "$ka" 192.0.2.1 "$(echo "$kb" | "$v" pubkey)" 198.18.0.2 192.0.2.2 >"$D/a.toml"
  conf "$extra" "$IFB" "$kb" 192.0.2.2 "$(echo "$ka" | "$v" pubkey)" 198.18.0.1 192.0.2.1 >"$D/b.toml"
  ip netns exec "$A" "$v" up -c "$D/a.toml" 2>"$D/a.log" & PA=$!
  ip netns exec "$B" "$v" up -c "$D/b.toml" 2>"$D/b.log" & PB=$!
}

up_boringtun() { # threads
  local t=$1 side ns dev
  (umask 077; wg genkey >"$D/ka"; wg genkey >"$D/kb")
  ip netns exec "$A" env WG_SUDO=1 "$BORINGTUN" --foreground --disable-drop-privileges \
    --threads "$t" --verbosity error --log "$D/a.out" "$IFA" >"$D/a.log" 2>&1 & PA=$!
  ip netns exec "$B" env WG_SUDO=1 "$BORINGTUN" --foreground --disable-drop-privileges \
    --threads "$t" --verbosity error --log "$D/b.out" "$IFB" >"$D/b.log" 2>&1 & PB=$!
  for _ in $(seq 50); do
    [ -S "/var/run/wireguard/$IFA.sock" ] && [ -S "/var/run/wireguard/$IFB.sock" ] && break
    sleep 0.1
  done
  ip netns exec "$A" wg set "$IFA" private-key "$D/ka" listen-port 51820 \
    peer "$(wg pubkey <"$D/kb")" endpoint 198.18.0.2:51820 allowed-ips 192.0.2.2/32
  ip netns exec "$B" wg set "$IFB" private-key "$D/kb" listen-port 51820 \
    peer "$(wg pubkey <"$D/ka")" endpoint 198.18.0.1:51820 allowed-ips 192.0.2.1/32
  for side in a:"$A":"$IFA":1 b:"$B":"$IFB":2; do
    IFS=: read -r _ ns dev last <<<"$side"
    ip -n "$ns" addr add "192.0.2.$last/24" dev "$dev"; ip -n "$ns" link set "$dev" up
  done
}

measure() { # target label
  local target=$1 label=$2
  underlay
  case $target in
    boringtun) up_boringtun 1 ;;
    boringtun:*) up_boringtun "${target#boringtun:}" ;;
    *) up_vmtun "$target" ;;
  esac
  for _ in $(seq 100); do
    ip netns exec "$A" ping -c 1 -W 0.2 192.0.2.2 >/dev/null 2>&1 && break
  done
  if [ "$LOAD" != 0 ]; then
    ip netns exec "$B" iperf3 -s -1 -D >/dev/null; sleep 0.3
    ip netns exec "$A" iperf3 -c 192.0.2.2 -P "$STREAMS" -t "$LOAD" -J |
      jq -r --arg l "$label" '"\($l) \(.end.sum_received.bits_per_second / 1e9)"' >>"$D/load"
    sleep 1
  fi
  ip netns exec "$A" ping -c 20 -i "$INTERVAL" -q 192.0.2.2 >/dev/null
  perf stat -x, -e task-clock -p "$PA,$PB" -o "$D/stat" &
  local perf=$!
  ip netns exec "$A" ping -n -c "$PINGS" -i "$INTERVAL" 192.0.2.2 |
    grep -o 'time=[0-9.]*' | cut -d= -f2 | sed "s|^|$label $round |" >>"$D/rtt"
  kill -INT "$perf"; wait "$perf" || true
  echo "$label $(cut -d, -f1 "$D/stat" | grep -E '^[0-9.]+$' | head -1)" >>"$D/cpu"
  teardown
}

labels=()
for t in "$@"; do
  case $t in boringtun*)
    command -v wg >/dev/null || { echo "rtt-ab: boringtun needs wg (wireguard-tools)" >&2; exit 1; }
    [ -x "$BORINGTUN" ] || { echo "rtt-ab: no $BORINGTUN (run benches/tunnel-peers.sh boringtun once, or set BORINGTUN)" >&2; exit 1; } ;; *) [ -x "${t%%@*}" ] || { echo "rtt-ab: ${t%%@*} is not an executable" >&2; exit 1; } ;; esac
  name=$(basename "${t%%@*}"); [[ $t != *@* ]] || name+="@${t##*=}"
  labels+=("$name#${#labels[@]}")
done
for round in $(seq "$ROUNDS"); do
  i=0
  for t in "$@"; do
    echo "[$(date +%T)] round $round/$ROUNDS: $t" >&2
    measure "$t" "${labels[$i]}"; i=$((i + 1))
  done
done
printf '%-24s %6s %6s %6s %6s %6s %6s  %11s  %s\n' target n min avg p50 p90 p99 "CPU us/ping" "load Gbit/s"
for l in "${labels[@]}"; do
  ms=$(awk -v l="$l" '$1 == l { s += $2 } END { print s }' "$D/cpu")
  load=$(awk -v l="$l" '$1 == l { s += $2; n++ } END { if (n) printf "%.2f", s / n; else print "-" }' "$D/load" 2>/dev/null || echo -)
  grep "^$l " "$D/rtt" | cut -d' ' -f3 | sort -g | awk -v l="$l" -v ms="$ms" -v per="$((PINGS * ROUNDS))" -v load="$load" '
    function at(q) { i = int(NR * q); if (i < 1) i = 1; return v[i] }
    { v[NR] = $1; s += $1 }
    END { printf "%-24s %6d %6.3f %6.3f %6.3f %6.3f %6.3f  %11.0f  %s\n", l, NR, v[1], s / NR, at(0.5), at(0.9), at(0.99), ms * 1000 / per, load }'
done

# The machine's drift moves whole rounds, so compare targets round by round: the mean of
# each round's average, and each target's paired difference from the first target, with
# a 95 % confidence interval (Student's t over the rounds).
echo
printf '%-24s %s\n' target "avg of round avgs (ms, 95% CI) | minus ${labels[0]}, paired"
awk -v rounds="$ROUNDS" -v first="${labels[0]}" '
  { s[$1, $2] += $3; n[$1, $2]++; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
  function t95(df) { split("12.71 4.30 3.18 2.78 2.57 2.45 2.36 2.31 2.26 2.23 2.20 2.18 2.16 2.14 2.13", t, " "); return df < 1 ? 0 : df <= 15 ? t[df] : 2.0 }
  function ci(x, m,   i, ss) { for (i = 1; i <= m; i++) ss += (x[i] - mean(x, m)) ^ 2; return m < 2 ? 0 : t95(m - 1) * sqrt(ss / (m - 1) / m) }
  function mean(x, m,   i, a) { for (i = 1; i <= m; i++) a += x[i]; return a / m }
  END {
    for (j = 1; j <= k; j++) {
      l = order[j]; delete a; delete d
      for (r = 1; r <= rounds; r++) { a[r] = s[l, r] / n[l, r]; d[r] = a[r] - s[first, r] / n[first, r] }
      line = sprintf("%-24s %.3f +- %.3f", l, mean(a, rounds), ci(a, rounds))
      if (l != first) line = line sprintf("   | %+.3f +- %.3f", mean(d, rounds), ci(d, rounds))
      print line
    }
  }' "$D/rtt"
[ -z "${RAW:-}" ] || cp "$D/rtt" "$RAW"
