#!/usr/bin/env bash
# fullsize-udp.sh - full-size (1500-byte) non-TCP packets through the tunnel (issue 9):
# measures the options side by side, in throwaway network namespaces.
#
#   ns C (client)        ns A (router, vmtun)       ns B (router, vmtun)     ns S (server)
#   192.0.2.2 ==veth 1500== 192.0.2.1  198.18.0.1 ==underlay== 198.18.0.2  198.51.100.1 ==veth 1500== 198.51.100.2
#                                      tunnel 100.64.0.1 <=====> 100.64.0.2
#
# A and B are routers: C's packets to S are forwarded into the tunnel, so an ICMP
# fragmentation-needed for them comes from A's kernel (as on a real host). Plain tunnel
# (no [migration] section), so no TCP MSS clamp. The options (OPTIONS, default all four):
#   a   today: TUN MTU 1420 (the default), underlay MTU 1500. DF packets over 1420 get
#       ICMP frag-needed from A; packets without DF are fragmented by A before the TUN.
#   b   TUN MTU 1500 (`mtu = 1500`), underlay 1500, vmtun as it is.
#   bf  as b, with outer fragmentation: vmtun runs with an LD_PRELOAD shim (compiled
#       here, needs cc) that sets its UDP socket to IP_PMTUDISC_DONT (vmtun/quinn-udp set
#       IP_PMTUDISC_PROBE, which makes the kernel refuse oversize datagrams with EMSGSIZE)
#       and sends a GSO batch whose segments exceed the MTU as single datagrams (the
#       kernel refuses those with EMSGSIZE whatever the PMTUDISC mode). A prototype of
#       what vmtun would have to do for outer fragmentation; not what the binary does.
#   c   underlay MTU 1600, TUN MTU 1500: no fragmentation anywhere (reference).
# Per option, RUNS times, options interleaved within each run, a fresh lab each time:
#   ping -M do -s 1472 C->S; the IP_MTU a DF UDP socket at C learns (python3); iperf3 UDP
#   1472-byte payloads C->S without DF (C's ip_no_pmtu_disc=1) at RATE_LOW and RATE_HIGH,
#   with DF (iperf3 --dont-fragment) at RATE_LOW, with DF while C drops ICMP
#   frag-needed, without DF while B's underlay drops IP fragments; iperf3 TCP C->S
#   (routed), the same while B's underlay drops fragments, and TCP between the tunnel
#   addresses A->B. The table shows the median over runs (min-max when they differ).
#
# Usage (root): benches/fullsize-udp.sh
# Environment: VMTUN=target/release/vmtun RUNS=3 DURATION=10 RATE_LOW=200M RATE_HIGH=1G
#   OPTIONS="a b bf c" RAW=FILE (keeps every measurement: "option test run value")
#
# Only the four namespaces it creates (mtu-<pid>-c/a/b/s) are configured; the root
# namespace is never touched. They are deleted at the end, also on failure; only the
# processes this script started are stopped, by PID.
set -euo pipefail
umask 077 # the configs hold private keys inline: vmtun refuses them if others can read them

cd "$(dirname "$0")/.."
VMTUN=${VMTUN:-target/release/vmtun}
RUNS=${RUNS:-3} DURATION=${DURATION:-10} RATE_LOW=${RATE_LOW:-200M} RATE_HIGH=${RATE_HIGH:-1G}
OPTIONS=${OPTIONS:-"a b bf c"}
RAW=${RAW:-}

die() { echo "fullsize-udp: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
[ "$(id -u)" -eq 0 ] || die "needs root (namespaces, TUN)"
[ -x "$VMTUN" ] || die "no vmtun binary at $VMTUN (set VMTUN=...)"
VMTUN=$(readlink -f "$VMTUN")
for c in ip iperf3 jq ping nft ss column; do command -v $c >/dev/null || die "needs $c"; done
HAVE_PY=0; command -v python3 >/dev/null && HAVE_PY=1

T=mtu-$$
NC=$T-c NA=$T-a NB=$T-b NS=$T-s
TUNA=mt$$a TUNB=mt$$b # global names: vmtun's control socket is /run/vmtun/<name>.sock
D=$(mktemp -d /tmp/fullsize-udp.XXXXXX)
PIDS=()

untrack() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
stop_pids() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
lab_down() {
  stop_pids
  local n
  # After a hard kill: let vmtun remove what its instance left (control socket, state).
  if compgen -G "/run/vmtun/*/$TUNA.*" >/dev/null && [ -e "$D/a.toml" ]; then
    ip netns exec $NA "$VMTUN" down -c "$D/a.toml" >/dev/null 2>&1 || true
  fi
  if compgen -G "/run/vmtun/*/$TUNB.*" >/dev/null && [ -e "$D/b.toml" ]; then
    ip netns exec $NB "$VMTUN" down -c "$D/b.toml" >/dev/null 2>&1 || true
  fi
  for n in $NC $NA $NB $NS; do ip netns del "$n" 2>/dev/null || true; done
}
trap 'rc=$?; trap - EXIT; lab_down; rm -rf "$D"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------- the shim (bf) --
SHIM=
if [[ " $OPTIONS " == *" bf "* ]]; then
  command -v cc >/dev/null || die "option bf needs cc (or leave it out of OPTIONS)"
  cat >"$D/fragshim.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
/* Outer fragmentation for vmtun: its UDP socket may fragment (no DF, no EMSGSIZE). */
int setsockopt(int fd, int level, int name, const void *val, socklen_t len) {
  static int (*real)(int, int, int, const void *, socklen_t);
  if (!real) real = dlsym(RTLD_NEXT, "setsockopt");
  static const int dont = IP_PMTUDISC_DONT, off = 0;
  if (level == IPPROTO_IP && name == IP_MTU_DISCOVER) { val = &dont; len = sizeof dont; }
  else if (level == IPPROTO_IPV6 && name == IPV6_MTU_DISCOVER) { val = &dont; len = sizeof dont; }
  else if (level == IPPROTO_IPV6 && name == IPV6_DONTFRAG) { val = &off; len = sizeof off; }
  return real(fd, level, name, val, len);
}
/* A GSO batch whose segments exceed the device MTU gets EMSGSIZE whatever the PMTUDISC
   mode: send its datagrams one by one instead, so the kernel fragments each. */
ssize_t sendmsg(int fd, const struct msghdr *m, int flags) {
  static ssize_t (*real)(int, const struct msghdr *, int);
  if (!real) real = dlsym(RTLD_NEXT, "sendmsg");
  ssize_t r = real(fd, m, flags);
  if (r >= 0 || errno != EMSGSIZE || m->msg_iovlen != 1) return r;
  uint16_t seg = 0;
  char cbuf[512] __attribute__((aligned(8)));
  size_t clen = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR((struct msghdr *)m, c)) {
    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_SEGMENT) { memcpy(&seg, CMSG_DATA(c), sizeof seg); continue; }
    size_t n = CMSG_ALIGN(c->cmsg_len);
    if (clen + n > sizeof cbuf) { errno = EMSGSIZE; return -1; }
    memcpy(cbuf + clen, c, n); clen += n;
  }
  if (!seg) { errno = EMSGSIZE; return -1; }
  struct msghdr one = *m;
  struct iovec iov;
  one.msg_iov = &iov; one.msg_iovlen = 1;
  one.msg_control = clen ? cbuf : NULL; one.msg_controllen = clen;
  char *p = m->msg_iov[0].iov_base;
  size_t left = m->msg_iov[0].iov_len, total = 0;
  while (left) {
    size_t n = left < seg ? left : seg;
    iov.iov_base = p; iov.iov_len = n;
    if (real(fd, &one, flags) < 0 && total == 0) return -1;
    p += n; left -= n; total += n;
  }
  return total;
}
EOF
  cc -O2 -shared -fPIC -o "$D/fragshim.so" "$D/fragshim.c" -ldl
  SHIM=$D/fragshim.so
fi

# ------------------------------------------------------------------- the lab --
write_config() { # file name key peer_pub endpoint address allowed tun_mtu
  cat >"$1" <<EOF
[interface]
name = "$2"
private_key = "$3"
listen_port = 51820
address = "$6"
mtu = $8

[[peer]]
public_key = "$4"
endpoint = "$5"
allowed_ips = $7
EOF
  chmod 600 "$1"
}

lab_up() { # option
  local umtu=1500 tmtu=1420 pre=() n ka kb
  case $1 in
    a) ;;
    b) tmtu=1500 ;;
    bf) tmtu=1500; pre=(env LD_PRELOAD="$SHIM") ;;
    c) umtu=1600 tmtu=1500 ;;
    *) die "unknown option $1" ;;
  esac
  for n in $NC $NA $NB $NS; do ip netns add "$n"; ip -n "$n" link set lo up; done
  ip -n $NC link add c0 type veth peer name ac netns $NA
  ip -n $NA link add au type veth peer name bu netns $NB
  ip -n $NB link add bs type veth peer name s0 netns $NS
  ip -n $NC addr add 192.0.2.2/24 dev c0
  ip -n $NA addr add 192.0.2.1/24 dev ac
  ip -n $NA addr add 198.18.0.1/24 dev au
  ip -n $NB addr add 198.18.0.2/24 dev bu
  ip -n $NB addr add 198.51.100.1/24 dev bs
  ip -n $NS addr add 198.51.100.2/24 dev s0
  ip -n $NA link set au mtu $umtu; ip -n $NB link set bu mtu $umtu
  ip -n $NC link set c0 up; ip -n $NA link set ac up; ip -n $NA link set au up
  ip -n $NB link set bu up; ip -n $NB link set bs up; ip -n $NS link set s0 up
  ip -n $NC route add default via 192.0.2.1
  ip -n $NS route add default via 198.51.100.1
  ip netns exec $NA sysctl -qw net.ipv4.ip_forward=1
  ip netns exec $NB sysctl -qw net.ipv4.ip_forward=1

  ka=$("$VMTUN" keygen); kb=$("$VMTUN" keygen)
  write_config "$D/a.toml" $TUNA "$ka" "$(echo "$kb" | "$VMTUN" pubkey)" 198.18.0.2:51820 \
    100.64.0.1/24 '["100.64.0.2/32", "198.51.100.0/24"]' $tmtu
  write_config "$D/b.toml" $TUNB "$kb" "$(echo "$ka" | "$VMTUN" pubkey)" 198.18.0.1:51820 \
    100.64.0.2/24 '["100.64.0.1/32", "192.0.2.0/24"]' $tmtu
  ip netns exec $NB "${pre[@]}" "$VMTUN" up -c "$D/b.toml" >"$D/b.log" 2>&1 & PIDS+=($!)
  ip netns exec $NA "${pre[@]}" "$VMTUN" up -c "$D/a.toml" >"$D/a.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 100); do
    ip -n $NA link show $TUNA >/dev/null 2>&1 && ip -n $NB link show $TUNB >/dev/null 2>&1 && break
    sleep 0.1
  done
  ip -n $NA route add 198.51.100.0/24 dev $TUNA
  ip -n $NB route add 192.0.2.0/24 dev $TUNB
  for _ in $(seq 50); do
    ip netns exec $NC ping -n -c1 -W1 198.51.100.2 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  cat "$D/a.log" "$D/b.log" >&2
  die "option $1: no ping through the tunnel"
}

# ----------------------------------------------------------------- the tests --
fresh_sender() { # C forgets learned path MTUs; $1 = ip_no_pmtu_disc (1: DF never set)
  ip netns exec $NC sysctl -qw net.ipv4.ip_no_pmtu_disc="$1"
  ip -n $NC route flush cache
}
filter() { # ns rules...: one nft table "fsu" in that namespace
  local ns=$1; shift
  printf '%s\n' "table inet fsu {" "$@" "}" | ip netns exec "$ns" nft -f -
}
unfilter() { ip netns exec "$1" nft delete table inet fsu 2>/dev/null || true; }
drop_icmp_frag_needed() { # at C: a sender behind a filter that drops ICMP size errors
  filter $NC "chain in { type filter hook input priority 0; icmp type destination-unreachable icmp code frag-needed drop; }"
}
drop_fragments() { # on B's underlay: a path that drops IP fragments (before reassembly)
  filter $NB "chain pre { type filter hook prerouting priority -500; iifname \"bu\" ip frag-off & 0x3fff != 0 drop; }"
}

iperf() { # server-ns bind-address client-ns iperf3-client-args... ; prints the JSON
  local sns=$1 addr=$2 cns=$3 spid; shift 3
  ip netns exec "$sns" iperf3 -s -1 -B "$addr" -p 5201 >/dev/null 2>&1 & spid=$!
  PIDS+=($spid)
  for _ in $(seq 50); do
    ip netns exec "$sns" ss -ltn 2>/dev/null | grep -q ":5201 " && break; sleep 0.1
  done
  timeout $((DURATION + 20)) ip netns exec "$cns" iperf3 -c "$addr" -p 5201 -t "$DURATION" -J "$@" \
    2>/dev/null || true
  kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
  untrack "$spid"
}
udp_figures() { # JSON on stdin -> "Mbit/s loss%" (loss: 1 - delivered/sent), or the error
  jq -r 'if .error then
           (if (.error | test("Message too long")) then "sender_EMSGSIZE" else "error:" + (.error | gsub(" "; "_")) end)
         else .end as $e
           | ($e.sum_received.packets - $e.sum_received.lost_packets) as $got
           | "\($e.sum_received.bits_per_second / 1e6 * 10 | round / 10) \(if $e.sum_sent.packets > 0 then (1 - $got / $e.sum_sent.packets) * 1000 | round / 10 else 100 end)"
         end' 2>/dev/null ||
    echo "error:no_result"
}
tcp_figure() {
  jq -r 'if .error then "error:" + (.error | gsub(" "; "_"))
         else "\(.end.sum_received.bits_per_second / 1e6 | round)" end' 2>/dev/null ||
    echo "error:no_result"
}
udp_c_to_s() { iperf $NS 198.51.100.2 $NC -u -l 1472 "$@" | udp_figures; }

record() { # option test run value
  echo "$1 $2 $3 $4" >>"$D/results"
  [ -z "$RAW" ] || echo "$1 $2 $3 $4" >>"$RAW"
}
record_udp() { # option name run "mbps loss" | "error:..."
  local v=$4
  if [[ $v != *" "* ]]; then record "$1" "$2_mbps" "$3" "$v"; record "$1" "$2_loss" "$3" "$v"
  else record "$1" "$2_mbps" "$3" "${v% *}"; record "$1" "$2_loss" "$3" "${v#* }"; fi
}

measure() { # option run
  local o=$1 r=$2 out got mtu
  # DF ping of a 1500-byte packet: replies, and the ICMP frag-needed's MTU if one came.
  fresh_sender 0
  out=$(ip netns exec $NC ping -n -M do -s 1472 -c 3 -i 0.3 -W 1 198.51.100.2 2>&1 || true)
  got=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' <<<"$out")
  mtu=$(grep -o 'Frag needed and DF set (mtu = [0-9]*)' <<<"$out" | head -1 | grep -o '[0-9]*' || true)
  record "$o" ping_df "$r" "${got:-0}/3${mtu:+,icmp_mtu=$mtu}"
  # A DF UDP socket at C: three 1472-byte datagrams, then its IP_MTU.
  if [ $HAVE_PY = 1 ]; then
    fresh_sender 0
    out=$(ip netns exec $NC python3 - <<'EOF'
import errno, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.connect(("198.51.100.2", 9))
errs = set()
for _ in range(3):
    try:
        s.send(b"x" * 1472)
    except OSError as e:
        if e.errno == errno.EMSGSIZE:
            errs.add("EMSGSIZE")
    time.sleep(0.3)
print(str(s.getsockopt(socket.IPPROTO_IP, 14)) + ("," + ",".join(sorted(errs)) if errs else ""))  # IP_MTU
EOF
)
    record "$o" ip_mtu "$r" "$out"
  fi
  fresh_sender 1; record_udp "$o" udp_nodf_low "$r" "$(udp_c_to_s -b "$RATE_LOW")"
  fresh_sender 1; record_udp "$o" udp_nodf_high "$r" "$(udp_c_to_s -b "$RATE_HIGH")"
  fresh_sender 0; record_udp "$o" udp_df_low "$r" "$(udp_c_to_s -b "$RATE_LOW" --dont-fragment)"
  fresh_sender 0; drop_icmp_frag_needed
  record_udp "$o" udp_df_noicmp "$r" "$(udp_c_to_s -b "$RATE_LOW" --dont-fragment)"
  unfilter $NC
  fresh_sender 1; drop_fragments
  record_udp "$o" udp_nodf_nofrag "$r" "$(udp_c_to_s -b "$RATE_LOW")"
  unfilter $NB
  fresh_sender 0; record "$o" tcp_routed "$r" "$(iperf $NS 198.51.100.2 $NC | tcp_figure)"
  fresh_sender 0; drop_fragments
  record "$o" tcp_routed_nofrag "$r" "$(iperf $NS 198.51.100.2 $NC | tcp_figure)"
  unfilter $NB
  record "$o" tcp_tunnel "$r" "$(iperf $NB 100.64.0.2 $NA | tcp_figure)"
  # What vmtun on A could not send (EMSGSIZE and other send errors), over all tests.
  record "$o" a_udp_send_failed "$r" \
    "$(ip netns exec $NA "$VMTUN" status --json -c "$D/a.toml" | jq '.drops.udp_send_failed')"
  record "$o" b_reasm_ok "$r" "$(ip netns exec $NB awk '/^Ip:/ {n++; if (n == 1) for (i = 1; i <= NF; i++) c[$i] = i; else print $c["ReasmOKs"]}' /proc/net/snmp)"
}

# --------------------------------------------------------------------- runs --
log "vmtun $("$VMTUN" --version | awk '{print $2}') ($VMTUN); $RUNS runs x options: $OPTIONS; ${DURATION}s per iperf3"
for r in $(seq "$RUNS"); do
  for o in $OPTIONS; do
    log "run $r option $o"
    lab_up "$o"
    measure "$o" "$r"
    lab_down
  done
done

# -------------------------------------------------------------------- table --
cell() { # option test -> median (min-max), or the distinct values
  local v
  v=$(awk -v o="$1" -v t="$2" '$1 == o && $2 == t {print $4}' "$D/results")
  [ -n "$v" ] || { echo "-"; return; }
  if grep -qv '^[0-9.]*$' <<<"$v"; then sort -u <<<"$v" | paste -sd'|'; return; fi
  sort -n <<<"$v" | awk '{a[NR] = $1} END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    if (a[1] == a[NR]) printf "%.10g", m; else printf "%.10g (%.10g-%.10g)", m, a[1], a[NR] }'
}
label() {
  case $1 in
    ping_df) echo "ping -M do -s 1472 C->S: replies/3, ICMP mtu" ;;
    ip_mtu) echo "DF UDP socket at C after 3 x 1472 B: IP_MTU" ;;
    udp_nodf_low_mbps) echo "UDP 1472 B no DF @$RATE_LOW: recv Mbit/s" ;;
    udp_nodf_low_loss) echo "UDP 1472 B no DF @$RATE_LOW: loss %" ;;
    udp_nodf_high_mbps) echo "UDP 1472 B no DF @$RATE_HIGH: recv Mbit/s" ;;
    udp_nodf_high_loss) echo "UDP 1472 B no DF @$RATE_HIGH: loss %" ;;
    udp_df_low_mbps) echo "UDP 1472 B DF @$RATE_LOW: recv Mbit/s" ;;
    udp_df_low_loss) echo "UDP 1472 B DF @$RATE_LOW: loss %" ;;
    udp_df_noicmp_mbps) echo "  same, C drops ICMP frag-needed: Mbit/s" ;;
    udp_df_noicmp_loss) echo "  same, C drops ICMP frag-needed: loss %" ;;
    udp_nodf_nofrag_mbps) echo "UDP no DF @$RATE_LOW, underlay drops frags: Mbit/s" ;;
    udp_nodf_nofrag_loss) echo "UDP no DF @$RATE_LOW, underlay drops frags: loss %" ;;
    tcp_routed) echo "TCP C->S (routed), Mbit/s" ;;
    tcp_routed_nofrag) echo "  same, underlay drops frags: Mbit/s" ;;
    tcp_tunnel) echo "TCP A->B tunnel addresses, Mbit/s" ;;
    a_udp_send_failed) echo "vmtun A udp_send_failed (all tests)" ;;
    b_reasm_ok) echo "B IpReasmOKs (all tests)" ;;
  esac
}
echo
echo "fullsize-udp: vmtun $("$VMTUN" --version | awk '{print $2}'), $(nproc) cores, kernel $(uname -r), $(date -u '+%F %H:%M UTC')"
echo "median of $RUNS runs (min-max), ${DURATION}s per iperf3; options: a = TUN 1420 / underlay 1500 (today);"
echo "b = TUN 1500 / underlay 1500; bf = b + outer fragmentation (LD_PRELOAD shim); c = TUN 1500 / underlay 1600"
{
  printf '%s' "test"; for o in $OPTIONS; do printf '\t%s' "$o"; done; echo
  for t in ping_df ip_mtu udp_nodf_low_mbps udp_nodf_low_loss udp_nodf_high_mbps udp_nodf_high_loss \
    udp_df_low_mbps udp_df_low_loss udp_df_noicmp_mbps udp_df_noicmp_loss udp_nodf_nofrag_mbps \
    udp_nodf_nofrag_loss tcp_routed tcp_routed_nofrag tcp_tunnel a_udp_send_failed b_reasm_ok; do
    grep -q " $t " "$D/results" || continue
    printf '%s' "$(label $t)"; for o in $OPTIONS; do printf '\t%s' "$(cell "$o" "$t")"; done; echo
  done
} | column -t -s $'\t'
