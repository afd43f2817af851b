#!/usr/bin/env bash
# tunnel-compare.sh - vmtun side by side with the reference tunnels, same machine, same run.
#
# Builds vmtun (release), then runs benches/tunnel-peers.sh with its vmtun hook
# (two throwaway namespaces vtb-a / vtb-b joined by a veth; the root namespace is never
# touched) and prints one markdown table from its key=value output.
#
# Usage (root):
#   benches/tunnel-compare.sh [IMPL...]      # default: raw boringtun wireguard-go gotatun vmtun
#   RUNS=3 DURATION=10 benches/tunnel-compare.sh raw gotatun vmtun
#   benches/tunnel-compare.sh --table FILE   # only print the table of an earlier raw file
#   benches/tunnel-compare.sh --udp64 IMPL...  # only the UDP 64-byte test
#
# Environment:
#   TUNNEL_PEERS  path of tunnel-peers.sh (default: benches/tunnel-peers.sh
#                 relative to the repository)
#   RESULTS_DIR   where the raw key=value output goes (default: benches/results)
#   SKIP_BUILD=1  use target/release/vmtun as it is
#   UDP64=0       skip the UDP 64-byte packets/s test that follows (own namespaces, see
#                 udp64 below; raw, vmtun, wireguard-go, boringtun, gotatun)
#   RUNS, DURATION, PINGS, ... are passed through to tunnel-peers.sh.
#
# Table columns: TCP x1 / x4 = iperf3 receiver goodput (median of RUNS, min-max);
# RTT = ping through the tunnel; CPU = the tunnel processes of both namespaces, % of one
# core, during the TCP x1 / x4 runs; CPU s/GB = tunnel CPU seconds per GB of goodput
# (tun_cpu_pct/100 * 8 / Gbit/s, from the medians); ratio = TCP figure / the best
# reference tunnel's (not raw, not vmtun) in the same run.
set -Eeuo pipefail

SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
IFACE_A=vtbvma
IFACE_B=vtbvmb
PORT=51820

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- prep hook --
# Runs inside ns vtb-a with cwd $VTB_TMP (tunnel-peers.sh's VMTUN_PREP): writes both
# configs, a.toml for this side and b.toml for the peer, keys from `vmtun keygen`.
prep() {
  local bin=${VMTUN_BIN:?} ka kb pa pb
  ka=$("$bin" keygen)
  kb=$("$bin" keygen)
  pa=$(printf '%s\n' "$ka" | "$bin" pubkey)
  pb=$(printf '%s\n' "$kb" | "$bin" pubkey)
  umask 077
  # side a: the side PREP runs on; side b: the peer.
  write_conf "$VTB_TMP/a.toml" $IFACE_A "$ka" "$VTB_INNER_LOCAL" "$pb" "$VTB_UNDER_PEER" "$VTB_INNER_PEER"
  write_conf "$VTB_TMP/b.toml" $IFACE_B "$kb" "$VTB_INNER_PEER" "$pa" "$VTB_UNDER_LOCAL" "$VTB_INNER_LOCAL"
  "$bin" up --dry-run -c "$VTB_TMP/a.toml" >/dev/null
  "$bin" up --dry-run -c "$VTB_TMP/b.toml" >/dev/null
}
write_conf() { # FILE IFACE PRIVATE ADDRESS PEER_PUB PEER_UNDERLAY PEER_INNER
  cat >"$1" <<EOF
[interface]
name = "$2"
private_key = "$3"
listen_port = $PORT
address = "$4/${VTB_INNER_PREFIX:-24}"
mtu = 1420

[[peer]]
public_key = "$5"
endpoint = "$6:$PORT"
allowed_ips = ["$7/32"]
EOF
}

# -------------------------------------------------------------------- table --
# table FILE: one markdown row per `impl=` summary line of tunnel-peers.sh output.
table() {
  awk '
    function kv(line, arr,   n, i, f, p) {
      n = split(line, f, " ")
      for (i = 1; i <= n; i++) { p = index(f[i], "="); if (p) arr[substr(f[i], 1, p - 1)] = substr(f[i], p + 1) }
    }
    function num(x) { return (x ~ /^-?[0-9.]+$/) }
    function rng(x) { return (x == "" ? "" : " (" x ")") }
    function sgb(cpu, g) { return (num(cpu) && num(g) && g > 0 && cpu > 0) ? sprintf("%.2f", cpu / 100 * 8 / g) : "—" }
    function ratio(v, best) { return (num(v) && best > 0) ? sprintf("%.2f×", v / best) : "NA" }
    /^meta / { meta = $0; next }
    /^version / { delete a; kv($0, a); ver[a["impl"]] = a["version"]; next }
    /^impl=/ && !/status=FAILED/ {
      delete a; kv($0, a); i = a["impl"]
      if (!((i) in seen)) { order[++n] = i; seen[i] = 1 }
      for (k in a) S[i, k] = a[k]
      if (i != "raw" && i != "vmtun") {
        if (num(a["tcp1_gbps"]) && a["tcp1_gbps"] > b1) { b1 = a["tcp1_gbps"]; b1i = i }
        if (num(a["tcp4_gbps"]) && a["tcp4_gbps"] > b4) { b4 = a["tcp4_gbps"]; b4i = i }
      }
      next
    }
    /^impl=.*status=FAILED/ { delete a; kv($0, a); failed = failed " " a["impl"] }
    /^udp64 / && /recv_pps=/ {
      delete a; kv($0, a); U[a["impl"]] = a["recv_pps"]; UC[a["impl"]] = a["tun_cpu_pct"]
      if (a["impl"] != "raw" && a["impl"] != "vmtun" && a["recv_pps"] > bu) { bu = a["recv_pps"]; bui = a["impl"] }
    }
    END {
      if (meta != "") print "<!-- " meta " -->"
      printf "| impl | TCP ×1 Gbit/s | TCP ×4 Gbit/s | UDP 64 B kpps | RTT avg ms | RTT p99 ms | tunnel CPU %% ×1 / ×4 | CPU s/GB ×1 / ×4 | ×1 vs best ref | ×4 vs best ref | UDP vs best ref |\n"
      printf "|---|---|---|---|---|---|---|---|---|---|---|\n"
      for (j = 1; j <= n; j++) {
        i = order[j]
        printf "| %s | %s%s | %s%s | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s |\n", i,
          S[i, "tcp1_gbps"], rng(S[i, "tcp1_gbps_rng"]), S[i, "tcp4_gbps"], rng(S[i, "tcp4_gbps_rng"]),
          (i in U) ? sprintf("%.0f", U[i] / 1000) : "—",
          S[i, "rtt_avg_ms"], S[i, "rtt_p99_ms"],
          S[i, "tcp1_tun_cpu_pct"], S[i, "tcp4_tun_cpu_pct"],
          sgb(S[i, "tcp1_tun_cpu_pct"], S[i, "tcp1_gbps"]), sgb(S[i, "tcp4_tun_cpu_pct"], S[i, "tcp4_gbps"]),
          ratio(S[i, "tcp1_gbps"], b1), ratio(S[i, "tcp4_gbps"], b4), (i in U) ? ratio(U[i], bu) : "—"
      }
      print ""
      if (b1i != "") printf "Best reference: %s (TCP ×1), %s (TCP ×4), %s (UDP). ", b1i, b4i, (bui == "" ? "none" : bui)
      printf "Versions:"
      for (j = 1; j <= n; j++) printf " %s=%s;", order[j], ver[order[j]]
      print ""
      if (failed != "") print "FAILED:" failed
    }' "$1"
}

# ---------------------------------------------------------------- UDP 64 B --
# udp64 IMPL...: iperf3 -u -l 64 -b 0 for DURATION s from ns a to ns b, in namespaces of
# our own (vtc<pid>a / vtc<pid>b, deleted afterwards), because tunnel-peers.sh has no
# UDP test. IMPL: raw, vmtun, wireguard-go, boringtun, gotatun (the last three set up as
# tunnel-peers.sh does: daemon per namespace, keys and peer with `wg`, MTU 1420).
# Prints: udp64 impl=X sent_pps=.. recv_pps=.. lost_pct=.. tun_cpu_pct=..
UDP_NS_A=vtc$$a
UDP_NS_B=vtc$$b
UDP_PIDS=()
UDP_DIR=
udp_cleanup() {
  local p ns pid t
  for p in "${UDP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for t in 1 2 3 4 5 6 7 8 9 10; do
    local left=
    for ns in $UDP_NS_A $UDP_NS_B; do
      [ -e /var/run/netns/$ns ] || continue
      for pid in $(ip netns pids "$ns" 2>/dev/null); do
        left=1
        if [ $t -lt 8 ]; then kill -TERM "$pid" 2>/dev/null || true; else kill -KILL "$pid" 2>/dev/null || true; fi
      done
    done
    [ -n "$left" ] || break
    sleep 0.3
  done
  for p in "${UDP_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  UDP_PIDS=()
  ip netns del $UDP_NS_A 2>/dev/null || true
  ip netns del $UDP_NS_B 2>/dev/null || true
  rm -f /var/run/wireguard/vtc*.sock 2>/dev/null || true
}
tun_ticks() { # CPU ticks of the non-iperf processes in our two namespaces
  local ns pid comm rest ticks=0
  for ns in $UDP_NS_A $UDP_NS_B; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      comm=$(cat /proc/$pid/comm 2>/dev/null) || continue
      case $comm in iperf3 | ping | timeout) continue ;; esac
      rest=$(cat /proc/$pid/stat 2>/dev/null) || continue
      rest=${rest##*) }
      set -- $rest
      ticks=$((ticks + ${12} + ${13}))
    done
  done
  echo $ticks
}
udp_wg_up() { # KIND: start one daemon per namespace and configure them with wg
  local kind=$1 side ns dev bin
  for side in a b; do
    if [ $side = a ]; then ns=$UDP_NS_A; else ns=$UDP_NS_B; fi
    dev=vtc-$kind-$side
    case $kind in
      wg) ip netns exec $ns env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go -f $dev >"$UDP_DIR/$dev.log" 2>&1 & ;;
      bt) bin=${ANCHOR_ROOT:-/opt/anchors}/bin/boringtun-cli
        ip netns exec $ns env WG_SUDO=1 "$bin" --foreground --disable-drop-privileges --verbosity error \
          --log "$UDP_DIR/$dev.out" $dev >"$UDP_DIR/$dev.log" 2>&1 & ;;
      gt) bin=${ANCHOR_ROOT:-/opt/anchors}/bin/gotatun
        ip netns exec $ns env WG_SUDO=1 "$bin" --foreground --disable-drop-privileges --verbosity error \
          $dev >"$UDP_DIR/$dev.log" 2>&1 & ;;
    esac
    UDP_PIDS+=($!)
    local i
    for i in $(seq 100); do [ -S /var/run/wireguard/$dev.sock ] && break; sleep 0.1; done
  done
  (umask 077
    wg genkey >"$UDP_DIR/a.key"; wg pubkey <"$UDP_DIR/a.key" >"$UDP_DIR/a.pub"
    wg genkey >"$UDP_DIR/b.key"; wg pubkey <"$UDP_DIR/b.key" >"$UDP_DIR/b.pub")
  ip netns exec $UDP_NS_A wg set vtc-$kind-a private-key "$UDP_DIR/a.key" listen-port $PORT \
    peer "$(cat "$UDP_DIR/b.pub")" endpoint 198.18.0.6:$PORT allowed-ips 192.0.2.2/32
  ip netns exec $UDP_NS_B wg set vtc-$kind-b private-key "$UDP_DIR/b.key" listen-port $PORT \
    peer "$(cat "$UDP_DIR/a.pub")" endpoint 198.18.0.5:$PORT allowed-ips 192.0.2.1/32
  ip -n $UDP_NS_A addr add 192.0.2.1/24 dev vtc-$kind-a
  ip -n $UDP_NS_A link set vtc-$kind-a mtu 1420 up
  ip -n $UDP_NS_B addr add 192.0.2.2/24 dev vtc-$kind-b
  ip -n $UDP_NS_B link set vtc-$kind-b mtu 1420 up
}
udp64() {
  local impl target i t0 t1 k0 k1 dur=${DURATION:-10}
  UDP_DIR=$(mktemp -d /tmp/vtc-udp.XXXXXX)
  for impl in "$@"; do
    udp_cleanup
    ip netns add $UDP_NS_A
    ip netns add $UDP_NS_B
    ip -n $UDP_NS_A link add vtc-veth-a type veth peer name vtc-veth-b netns $UDP_NS_B
    ip -n $UDP_NS_A addr add 198.18.0.5/30 dev vtc-veth-a
    ip -n $UDP_NS_B addr add 198.18.0.6/30 dev vtc-veth-b
    ip -n $UDP_NS_A link set lo up; ip -n $UDP_NS_B link set lo up
    ip -n $UDP_NS_A link set vtc-veth-a up; ip -n $UDP_NS_B link set vtc-veth-b up
    target=192.0.2.2
    case $impl in
      raw) target=198.18.0.6 ;;
      vmtun)
        (cd "$UDP_DIR" && VTB_TMP=$UDP_DIR VTB_INNER_LOCAL=192.0.2.1 VTB_INNER_PEER=192.0.2.2 \
          VTB_INNER_PREFIX=24 VTB_UNDER_LOCAL=198.18.0.5 VTB_UNDER_PEER=198.18.0.6 prep)
        ip netns exec $UDP_NS_B "$VMTUN_BIN" up -c "$UDP_DIR/b.toml" >"$UDP_DIR/vmtun-b.log" 2>&1 &
        UDP_PIDS+=($!)
        ip netns exec $UDP_NS_A "$VMTUN_BIN" up -c "$UDP_DIR/a.toml" >"$UDP_DIR/vmtun-a.log" 2>&1 &
        UDP_PIDS+=($!) ;;
      wireguard-go) udp_wg_up wg ;;
      boringtun) udp_wg_up bt ;;
      gotatun) udp_wg_up gt ;;
      *) echo "udp64 impl=$impl status=UNSUPPORTED"; continue ;;
    esac
    for i in $(seq 100); do
      ip netns exec $UDP_NS_A ping -n -c1 -W1 $target >/dev/null 2>&1 && break
      sleep 0.2
    done
    ip netns exec $UDP_NS_B iperf3 -s -1 >"$UDP_DIR/srv.log" 2>&1 &
    UDP_PIDS+=($!)
    for i in $(seq 50); do
      [ -n "$(ip netns exec $UDP_NS_B ss -Htln 'sport = :5201')" ] && break
      sleep 0.1
    done
    k0=$(tun_ticks); t0=$(date +%s.%N)
    timeout $((dur + 30)) ip netns exec $UDP_NS_A iperf3 -c $target -u -l 64 -b 0 -t "$dur" -J \
      >"$UDP_DIR/udp-$impl.json" 2>&1 || true
    k1=$(tun_ticks); t1=$(date +%s.%N)
    local cpu
    cpu=$(awk -v a="$k0" -v b="$k1" -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%.0f", (t1 > t0) ? 100 * (b - a) / hz / (t1 - t0) : 0 }')
    jq -r --arg impl "$impl" --arg cpu "$cpu" '.end.sum as $s |
      "udp64 impl=\($impl) sent_pps=\(($s.packets/$s.seconds)|round) recv_pps=\((($s.packets-$s.lost_packets)/$s.seconds)|round) lost_pct=\($s.lost_percent*10|round/10) tun_cpu_pct=\($cpu)"' \
      "$UDP_DIR/udp-$impl.json" 2>/dev/null ||
      echo "udp64 impl=$impl status=FAILED $(head -c 200 "$UDP_DIR/udp-$impl.json" | tr '\n' ' ')"
  done
  udp_cleanup
  rm -rf "$UDP_DIR"
}

# --------------------------------------------------------------------- main --
case ${1:-} in
  --prep) prep; exit 0 ;;
  --table) table "$2"; exit 0 ;;
  --udp64)
    shift
    export VMTUN_BIN=${VMTUN_BIN:-$REPO/target/release/vmtun}
    trap udp_cleanup EXIT
    udp64 "$@"
    exit 0 ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (namespaces, tun)"
[ $# -ge 1 ] || set -- raw boringtun wireguard-go gotatun vmtun
PEERS=${TUNNEL_PEERS:-$REPO/benches/tunnel-peers.sh}
[ -x "$PEERS" ] || die "tunnel-peers.sh not found at $PEERS (set TUNNEL_PEERS)"
RESULTS_DIR=${RESULTS_DIR:-$REPO/benches/results}
mkdir -p "$RESULTS_DIR"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  (cd "$REPO" && cargo build --release --bin vmtun >&2)
fi
# A private copy: other builds may replace target/release/vmtun during the run.
BIN_DIR=$(mktemp -d /tmp/vtc-bin.XXXXXX)
trap 'udp_cleanup; rm -rf "$BIN_DIR"' EXIT
cp "$REPO/target/release/vmtun" "$BIN_DIR/vmtun"
export VMTUN_BIN=$BIN_DIR/vmtun
if REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null); then
  (cd "$REPO" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock) || REV=$REV-dirty
else
  REV=${VMTUN_REV:-unknown} # e.g. a `git archive` snapshot
fi
export VMTUN_VERSION="vmtun_$("$VMTUN_BIN" --version | awk '{print $2}')_git=$REV"
export VMTUN_PREP="\"$SELF\" --prep"
export VMTUN_UP_A="exec \"$VMTUN_BIN\" up -c \"\$VTB_TMP/a.toml\""
export VMTUN_UP_B="exec \"$VMTUN_BIN\" up -c \"\$VTB_TMP/b.toml\""

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW=$RESULTS_DIR/tunnel-$STAMP.txt
{
  echo "# benches/tunnel-compare.sh $*  (RUNS=${RUNS:-3} DURATION=${DURATION:-10})"
  echo "# host: nproc=$(nproc) kernel=$(uname -r) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "# load before: $(uptime)"
} >"$RAW"
log "raw output: $RAW"
rc=0
RESULTS_FILE=$RAW "$PEERS" "$@" >/dev/null || rc=$?
echo "# load after: $(uptime)" >>"$RAW"
if [ "${UDP64:-1}" = 1 ]; then
  log "UDP 64-byte packets/s (own namespaces): $*"
  udp64 "$@" | tee -a "$RAW" >&2
fi
table "$RAW" | tee "${RAW%.txt}.md"
exit $rc
