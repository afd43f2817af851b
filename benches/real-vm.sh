#!/usr/bin/env bash
# real-vm.sh - the real-VM scenario of issue 12 (`vmtun demo --real-vm`), RUNS times per
# variant, summarised per run and as median / max:
#   QEMU downtime (query-migrate), the guest's real pause (source STOP -> destination RESUME,
#   QMP event times) and what it carried (query-migrate's downtime-bytes; STOP -> the source's
#   MIGRATION completed, i.e. the rest written; -> RESUME), the client's longest gap and probes lost at the move, probes lost from
#   RESUME + 2 ms until the switch, the longest gap and losses at the provider's switch, the
#   cutover latency (first native packet -> mark rule gone) and wrong-way replies (through the
#   old host, to probes sent after the first native packet reached the new host).
# The demo builds its own namespaces and QEMUs and deletes them; the root namespace is never
# touched. Needs root, QEMU (scripts/setup.sh) and the guest (built here by scripts/guest.sh,
# cached).
#
# Variants (name: demo options), interleaved run by run so that the machine's load hits
# each alike:
#   underlay   --migrate-via underlay   QEMU's stream to the new host's underlay address
#   tunnel     --migrate-via tunnel     to its tunnel address: the stream crosses vmtun
#   underlay-tls  --migrate-via underlay-tls   to its underlay address, encrypted by QEMU's
#              own TLS (the seed's alternative): what encryption costs when QEMU does it
#   wireguard-go  --migrate-via wireguard-go   through a second tunnel between the hosts,
#              the stock wireguard-go: the seed's way through the reference WireGuard
#   underlay-vif-gone, tunnel-vif-gone   the same with --handover vif-gone: the old host
#              routes the VM to the paused source's tap until that tap goes (the seed's way)
#   (underlay-tls-vif-gone, underlay-tls-at-pause likewise)
#   underlay-at-pause, tunnel-at-pause   the same with --hand-over-at-pause: the old host
#              hands the VM over at the source's STOP (`vmtun handover vif0`), so what is sent
#              during the pause waits on the new host's tap (issue 12, item 3)
# A variant may add QEMU migration parameters after commas (--migrate-parameter), e.g.
#   tunnel,downtime-limit=20             QEMU's downtime limit 20 ms instead of 300
# and `lazy-ram` (--guest-ram lazy): the QEMUs allocate the guest's RAM on first touch
# (QEMU's default) instead of at start; on this machine kind the destination's page
# zeroing then makes most of the pause, whatever the path (README "The pause through the
# tunnel"), e.g.
#   underlay,lazy-ram tunnel,lazy-ram
# and `underlay-mbit=N` (--underlay-mbit N): the underlay between the hosts limited to N
# Mbit/s each way, as a real link between data centres is (the lab's veths otherwise carry
# what the CPU can), e.g.
#   underlay,underlay-mbit=2500 tunnel,underlay-mbit=2500
#
# Usage (root):
#   benches/real-vm.sh            # 10 runs of each variant
#   benches/real-vm.sh 3
#   VARIANTS=tunnel benches/real-vm.sh 5
#   VARIANTS="underlay tunnel underlay,downtime-limit=20 tunnel,downtime-limit=20" benches/real-vm.sh 10
#   benches/real-vm.sh --table benches/results/real-vm-<stamp>.jsonl   # re-print the table
#
# Environment:
#   VARIANTS     the variants to run (default "underlay tunnel")
#   DWELL        the demo's --dwell in seconds (default 0.5)
#   RATE         probes per second (default 1000)
#   LINGER_MS    how long the source QEMU stays, paused, after the guest resumed on the new
#                host (default 100: libvirt ends it after its finish/confirm round trips,
#                which took 16-135 ms beyond QEMU's downtime in tests/libvirt.rs)
#   RESULTS_DIR  where real-vm-<stamp>.{jsonl,md} go (default benches/results)
#   SKIP_BUILD=1 use $VMTUN as it is (default: cargo build --release first)
#   VMTUN        the vmtun binary (default target/release/vmtun)
#
# Output: real-vm-<UTC stamp>.jsonl, one line per run ({"variant", "run", "rc", "wall_s",
# "load", "report": the demo's JSON or null, "error"}), and real-vm-<stamp>.md with the
# tables, also printed on stdout. Runs whose demo exited non-zero are listed and left out of
# the medians.
set -Euo pipefail

SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)

log() { printf '[%s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ tables --
table() {
  python3 - "$1" <<'PY'
import json, statistics, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
order = ["underlay", "underlay-tls", "tunnel", "wireguard-go", "underlay-vif-gone", "underlay-tls-vif-gone", "tunnel-vif-gone", "underlay-at-pause", "underlay-tls-at-pause", "tunnel-at-pause"]
def handover(rep):
    m = rep["migration"]
    return "at-pause" if m.get("hand_over_at_pause") else m.get("handover", "—")
variants = sorted({r["variant"] for r in rows}, key=lambda v: (v.count(","), order.index(v.split(",")[0]) if v.split(",")[0] in order else 99, v))

def row(rep, name):
    return next((s for s in rep["summary"] if s["phase"] == name), {})

def span(rep, start, end):
    m = rep["migration"]
    if m.get(start) is None or m.get(end) is None:
        return None
    return (m[end] - m[start]) / 1e6

COLUMNS = [
    ("QEMU downtime ms", lambda r: row(r, "move").get("qemu_downtime_ms"), 0),
    ("real pause ms", lambda r: row(r, "move").get("real_pause_ms"), 1),
    ("stopped kB", lambda r: None if r["migration"].get("downtime_bytes") is None else r["migration"]["downtime_bytes"] / 1e3, 0),
    ("STOP→sent ms", lambda r: span(r, "stop_unix_ns", "source_completed_unix_ns"), 1),
    ("sent→RESUME ms", lambda r: span(r, "source_completed_unix_ns", "resume_unix_ns"), 1),
    ("retrans", lambda r: r["migration"].get("losses", {}).get("tcp_retransmits_old"), 0),
    ("UDP drops", lambda r: None if "losses" not in r["migration"] else r["migration"]["losses"]["udp_rcvbuf_errors_old"] + r["migration"]["losses"]["udp_rcvbuf_errors_new"], 0),
    ("move gap ms", lambda r: row(r, "move").get("longest_gap_ms"), 1),
    ("move lost", lambda r: row(r, "move").get("lost"), 0),
    ("lost after RESUME+2ms", lambda r: row(r, "move").get("lost_after_resume"), 0),
    ("switch gap ms", lambda r: row(r, "switch").get("longest_gap_ms"), 1),
    ("switch lost", lambda r: row(r, "switch").get("lost"), 0),
    ("cutover ms", lambda r: row(r, "switch").get("cutover_latency_ms"), 3),
    ("wrong-way", lambda r: row(r, "switch").get("wrong_way_replies"), 0),
]

def f(x, nd):
    if x is None:
        return "—"
    if nd == 0 and float(x).is_integer():
        return str(int(x))
    return f"{x:.{max(nd, 1)}f}"

head = "| run | variant | path | handover | " + " | ".join(c[0] for c in COLUMNS) + " |"
rule = "|" + "---|" * (4 + len(COLUMNS))
out = [head, rule]
ok = {v: [] for v in variants}
failed = []
for r in rows:
    rep = r["report"]
    if r["rc"] != 0 or not rep:
        failed.append(r)
        continue
    ok[r["variant"]].append(rep)
    cells = [f(c[1](rep), c[2]) for c in COLUMNS]
    out.append(f"| {r['run']} | {r['variant']} | {rep['migration']['path']} | {handover(rep)} | " + " | ".join(cells) + " |")
for v in variants:
    reps = ok[v]
    if not reps:
        continue
    for label, agg in (("median", statistics.median), ("max", max)):
        cells = []
        for c in COLUMNS:
            xs = [c[1](rep) for rep in reps if c[1](rep) is not None]
            cells.append(f(agg(xs), c[2]) if xs else "—")
        out.append(f"| **{label}** ({len(reps)}) | {v} | {reps[0]['migration']['path']} | {handover(reps[0])} | " + " | ".join(cells) + " |")
print("\n".join(out))
print()
print("QEMU downtime: query-migrate's (the source's view). Real pause: the source's STOP event to the")
print("destination's RESUME (QMP timestamps, one clock). Stopped kB: query-migrate's downtime-bytes, the")
print("RAM sent while the guest was stopped; STOP→sent: until the source's MIGRATION completed event (all")
print("written into its socket); sent→RESUME: the rest, the stream's tail arriving and the destination")
print("loading it. Retrans: TCP segments the old host retransmitted from the migrate command until the")
print("source QEMU exited;")
print("UDP drops: datagrams both hosts dropped on a full socket buffer meanwhile (the tunnel's: vmtun's,")
print("or wireguard-go's). Gaps: the client's longest run of lost probes.")
print("Lost after RESUME+2ms: probes sent from RESUME + 2 ms until the provider's switch that were never")
print("answered. Cutover: first native packet at the new host -> mark rule gone. Wrong-way: replies that")
print("left through the old host to probes sent after the first native packet reached the new host.")
for r in failed:
    err = (r.get("error") or "").strip().splitlines()
    print(f"- {r['variant']} run {r['run']} failed (rc {r['rc']}): {err[-1] if err else 'no stderr'}")
PY
}

if [[ ${1-} == --table ]]; then
  [[ -f ${2-} ]] || die "usage: $0 --table FILE.jsonl"
  table "$2"
  exit 0
fi

# ------------------------------------------------------------------- setup --
RUNS=${1:-10}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [RUNS] (a positive number; default 10)"
[[ $(id -u) -eq 0 ]] || die "needs root (the demo creates network namespaces)"
command -v python3 >/dev/null || die "python3 is needed for the tables"
cd "$REPO"
VARIANTS=${VARIANTS:-underlay tunnel underlay-vif-gone tunnel-vif-gone}
DWELL=${DWELL:-0.5}
RATE=${RATE:-1000}
LINGER_MS=${LINGER_MS:-100}
RESULTS_DIR=${RESULTS_DIR:-$REPO/benches/results}
VMTUN=${VMTUN:-$REPO/target/release/vmtun}

args_of() { # VARIANT (PATH[-vif-gone][,NAME=NUMBER]...) -> demo options
  local path params p
  IFS=, read -r path params <<<"$1"
  case $path in
    underlay | tunnel | underlay-tls | wireguard-go) printf -- '--migrate-via %s' "$path" ;;
    underlay-vif-gone | tunnel-vif-gone | underlay-tls-vif-gone) printf -- '--migrate-via %s --handover vif-gone' "${path%-vif-gone}" ;;
    underlay-at-pause | tunnel-at-pause | underlay-tls-at-pause) printf -- '--migrate-via %s --hand-over-at-pause' "${path%-at-pause}" ;;
    *) return 1 ;;
  esac
  IFS=, read -r -a params <<<"$params"
  for p in "${params[@]}"; do
    if [[ $p == lazy-ram ]]; then
      printf -- ' --guest-ram lazy'
      continue
    fi
    if [[ $p =~ ^underlay-mbit=([0-9]+)$ ]]; then
      printf -- ' --underlay-mbit %s' "${BASH_REMATCH[1]}"
      continue
    fi
    [[ $p =~ ^[a-z][a-z0-9-]*=[0-9]+$ ]] || return 1
    printf -- ' --migrate-parameter %s' "$p"
  done
}
for v in $VARIANTS; do args_of "$v" >/dev/null || die "unknown variant $v"; done

if [[ ${SKIP_BUILD-0} != 1 ]]; then
  log "cargo build --release"
  cargo build --release --quiet || die "build failed"
fi
[[ -x $VMTUN ]] || die "no vmtun binary at $VMTUN"
VMTUN_GUEST_DIR=$(scripts/guest.sh) || die "building the guest (scripts/guest.sh) failed"
export VMTUN_GUEST_DIR

mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
JSONL=$RESULTS_DIR/real-vm-$STAMP.jsonl
MD=$RESULTS_DIR/real-vm-$STAMP.md
TMP=$(mktemp -d /tmp/vmtun-real-vm.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
: >"$JSONL"
LOAD_BEFORE=$(uptime)
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
log "variants: $VARIANTS; $RUNS runs each; dwell $DWELL s; $RATE Hz; guest in $VMTUN_GUEST_DIR"
log "load before: $LOAD_BEFORE"
START=$(date +%s)

# -------------------------------------------------------------------- runs --
for (( i = 1; i <= RUNS; i++ )); do
  for v in $VARIANTS; do
    read -r -a args <<<"$(args_of "$v")"
    t0=$(date +%s.%N)
    rc=0
    "$VMTUN" demo --real-vm --json --rate "$RATE" --dwell "$DWELL" \
      --source-linger-ms "$LINGER_MS" "${args[@]}" \
      >"$TMP/out.json" 2>"$TMP/err.txt" || rc=$?
    t1=$(date +%s.%N)
    python3 - "$v" "$i" "$rc" "$t0" "$t1" "$TMP/out.json" "$TMP/err.txt" >>"$JSONL" <<'PY'
import json, os, sys
v, i, rc, t0, t1, out, err = sys.argv[1:]
try:
    report = json.load(open(out))
except Exception:
    report = None
errtext = open(err, errors="replace").read()
print(json.dumps({
    "variant": v, "run": int(i), "rc": int(rc), "wall_s": round(float(t1) - float(t0), 3),
    "load": os.getloadavg()[0], "report": report,
    "error": None if (int(rc) == 0 and report) else "\n".join(errtext.splitlines()[-5:]),
}, separators=(",", ":")))
PY
    if [[ $rc -ne 0 ]]; then
      log "$v run $i FAILED (rc $rc): $(tail -1 "$TMP/err.txt")"
    else
      log "$v run $i: $(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
m = next(s for s in r["summary"] if s["phase"] == "move")
print("downtime %s ms, real pause %.1f ms, gap %.1f ms, lost after RESUME %s" % (
    m["qemu_downtime_ms"], m["real_pause_ms"] or -1, m["longest_gap_ms"], m["lost_after_resume"]))
' "$TMP/out.json")"
    fi
  done
done

END=$(date +%s)
LOAD_AFTER=$(uptime)
log "load after: $LOAD_AFTER"
{
  echo "# Real-VM benchmark $STAMP"
  echo
  echo "vmtun $COMMIT, \`vmtun demo --real-vm --json --rate $RATE --dwell $DWELL --source-linger-ms $LINGER_MS --migrate-via PATH [--handover vif-gone | --hand-over-at-pause]\`,"
  echo "variants: $VARIANTS; $RUNS runs each, interleaved. Wall time $(( (END - START) / 60 )) min $(( (END - START) % 60 )) s."
  echo
  echo "- load before: $LOAD_BEFORE"
  echo "- load after: $LOAD_AFTER"
  echo
  table "$JSONL"
  echo
  echo "Raw: $(basename "$JSONL") (one line per run, the demo's JSON under \"report\")."
} >"$MD"
cat "$MD"
log "wrote $JSONL and $MD"
