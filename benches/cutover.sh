#!/usr/bin/env bash
# cutover.sh - the cutover benchmark of issue 4 on the migration lab (`vmtun demo`).
#
# Runs `vmtun demo --json` N times per variant and summarises, from each run's JSON:
# cutover latency (first native packet at the new host -> mark rule gone), replies sent the
# wrong way (through the old host, to probes sent after the provider switch), and per phase
# probes sent / lost / longest gap. The demo builds its own namespaces and deletes them;
# the root namespace is never touched. Needs root.
#
# Variants (name: demo options):
#   vmtun-1k            --rate 1000                       (vmtun, cutover = "auto")
#   vmtun-10k           --rate 10000
#   seed-1k             --rate 1000  --seed-cutover       (tcpdump -c 1 -i br0 net NET -s 1
#   seed-10k            --rate 10000 --seed-cutover        && iptables -t mangle -F PREROUTING)
#   seed-immediate-1k   --rate 1000  --seed-cutover --immediate   (only with IMMEDIATE=1)
#   seed-immediate-10k  --rate 10000 --seed-cutover --immediate   (only with IMMEDIATE=1)
# Trials are interleaved round-robin (trial 1 of every variant, then trial 2, ...) so that
# a change in the machine's load hits every variant alike.
#
# Usage (root):
#   benches/cutover.sh                        # TRIALS=50 of each variant
#   TRIALS_SEED=20 IMMEDIATE=1 benches/cutover.sh
#   VARIANTS="vmtun-1k seed-1k" TRIALS=5 benches/cutover.sh
#   benches/cutover.sh --table benches/results/cutover-<stamp>.jsonl   # re-print the tables
#
# Environment:
#   TRIALS            trials per variant (default 50)
#   TRIALS_VMTUN      trials of vmtun-1k/vmtun-10k (default TRIALS)
#   TRIALS_SEED       trials of seed-1k/seed-10k (default TRIALS)
#   TRIALS_IMMEDIATE  trials of the seed-immediate variants (default TRIALS_SEED)
#   IMMEDIATE=1       add the seed-immediate variants
#   VARIANTS          explicit list of variant names (overrides the defaults above)
#   DWELL             the demo's --dwell in seconds (default 0.3: 0.3 s before the move,
#                     0.3 s settle after the move and after the switch, 0.6 s after each;
#                     0.3 leaves room for the move's outage and for arming tcpdump)
#   SEED_DWELL_SPREAD seed variants draw their dwell per trial uniformly from
#                     [DWELL, DWELL + SEED_DWELL_SPREAD] (default 0.5; 0 = fixed). Without
#                     --immediate-mode, tcpdump only sees the packet when TPACKET_V3's block
#                     retire timer (libpcap's 1 s timeout) fires, a timer that starts when
#                     tcpdump opens its socket; with a fixed dwell the time from arming to
#                     the switch is fixed, so the lab would always hit the same phase of that
#                     timer (dwell 0.3: ~1.40 s every time, dwell 1.0: ~1.01 s). The spread
#                     moves the switch over 2 x 0.5 = 1 s of the timer, as an operator arming
#                     the line at an arbitrary moment would.
#   RESULTS_DIR       where cutover-<stamp>.{jsonl,md} go (default benches/results)
#   SKIP_BUILD=1      use target/release/vmtun as it is (default: cargo build --release)
#   VMTUN             the vmtun binary (default target/release/vmtun)
#
# Output: benches/results/cutover-<UTC stamp>.jsonl, one line per trial:
#   {"variant", "trial", "rc", "wall_s", "args", "load", "report" (the demo's JSON or
#    null), "error" (the last stderr lines when rc != 0 or no JSON)}
# and cutover-<stamp>.md with the tables, also printed on stdout.
# Statistics: p50 = median; p99 = nearest rank (ceil(0.99 n)-th smallest, i.e. the max for
# n <= 100). Trials whose demo exited non-zero are counted as failed and left out of the
# statistics (their JSON, if any, is still in the .jsonl).
set -Euo pipefail

SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)

log() { printf '[%s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ tables --
# The statistics and markdown tables, from a .jsonl file (argv[1]).
table() {
  python3 - "$1" <<'PY'
import json, math, statistics, sys

path = sys.argv[1]
rows = [json.loads(line) for line in open(path) if line.strip()]
order = ["vmtun-1k", "vmtun-10k", "seed-1k", "seed-10k", "seed-immediate-1k", "seed-immediate-10k"]
variants = sorted({r["variant"] for r in rows}, key=lambda v: (order.index(v) if v in order else 99, v))

def p50(xs):
    return statistics.median(xs) if xs else None

def p99(xs):
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]

def mx(xs):
    return max(xs) if xs else None

def f(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, int) or float(x).is_integer() and nd == 0:
        return str(int(x))
    return f"{x:.{nd}f}"

def phase(report, name):
    return next((p for p in report["phases"] if p["name"] == name), None)

ok = {v: [r["report"] for r in rows if r["variant"] == v and r["rc"] == 0 and r["report"]] for v in variants}
failed = {v: [r for r in rows if r["variant"] == v and not (r["rc"] == 0 and r["report"])] for v in variants}

out = []
out.append("| variant | trials ok / failed | latency p50 ms | p99 ms | max ms | wrong-way replies p50 | max | move longest gap p50 ms | max ms | switch lost p50 | max |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|")
no_latency = {}
for v in variants:
    reps = ok[v]
    lat = [c["latency_ns"] / 1e6 for c in (r["cutover"] for r in reps) if c and c.get("latency_ns") is not None]
    no_latency[v] = len(reps) - len(lat)
    ww = [r["cutover"]["wrong_way_replies"] for r in reps if r["cutover"]]
    mg = [phase(r, "move")["longest_gap_ms"] for r in reps]
    sl = [phase(r, "switch")["lost"] for r in reps]
    out.append(
        f"| {v} | {len(reps)} / {len(failed[v])} | {f(p50(lat))} | {f(p99(lat))} | {f(mx(lat))} "
        f"| {f(p50(ww), 1 if p50(ww) and not float(p50(ww)).is_integer() else 0)} | {f(mx(ww), 0)} "
        f"| {f(p50(mg), 1)} | {f(mx(mg), 1)} | {f(p50(sl), 1 if p50(sl) and not float(p50(sl)).is_integer() else 0)} | {f(mx(sl), 0)} |"
    )
notes = [f"{v}: {n} successful trial(s) without a latency" for v, n in no_latency.items() if n]
for v in variants:
    for r in failed[v]:
        err = (r.get("error") or "").strip().splitlines()
        notes.append(f"{v} trial {r['trial']} failed (rc {r['rc']}): {err[-1] if err else 'no stderr'}")

# vmtun's latency split: packet -> watcher saw it, watcher -> rule removed.
split = []
for v in variants:
    cs = [r["cutover"] for r in ok[v] if r["cutover"] and r["cutover"]["by"] == "vmtun"]
    det = [c["detection_delay_ns"] / 1e6 for c in cs if c.get("detection_delay_ns") is not None]
    rem = [c["removal_ns"] / 1e6 for c in cs if c.get("removal_ns") is not None]
    left = sum(1 for c in cs if c.get("mark_rule_left"))
    if cs:
        split.append(f"| {v} | {f(p50(det))} | {f(p99(det))} | {f(p50(rem))} | {f(p99(rem))} | {left} |")

def phase_table(v):
    reps = ok[v]
    t = [f"Per phase, {v} ({len(reps)} trials; p50 / max over trials):", "",
         "| phase | sent p50 | sent max | lost p50 | lost max | longest gap p50 ms | longest gap max ms |",
         "|---|---|---|---|---|---|---|"]
    names = [p["name"] for p in reps[0]["phases"]] if reps else []
    for n in names:
        ps = [phase(r, n) for r in reps]
        sent = [p["sent"] for p in ps]; lost = [p["lost"] for p in ps]; gap = [p["longest_gap_ms"] for p in ps]
        t.append(f"| {n} | {f(p50(sent), 0 if float(p50(sent)).is_integer() else 1)} | {mx(sent)} "
                 f"| {f(p50(lost), 0 if float(p50(lost)).is_integer() else 1)} | {mx(lost)} | {f(p50(gap), 1)} | {f(mx(gap), 1)} |")
    return t

print("\n".join(out))
print()
print("Latency: first native packet at the new host -> mark rule gone. Wrong-way replies: replies that left")
print("through the old host to probes sent after the provider switch. p99: nearest rank, i.e. the max for")
print("fewer than 100 trials. Move longest gap: the client's longest run of lost probes while the VM moves")
print("(a lab artefact mostly: process spawns of `ip`). Failed trials (non-zero exit) are left out.")
print()
if notes:
    print("\n".join("- " + n for n in notes))
    print()
if split:
    print("vmtun's latency split (ms): packet -> watcher recognised it, recognised -> rule removed; and runs whose mark rule was left behind:")
    print()
    print("| variant | detect p50 | detect p99 | remove p50 | remove p99 | mark rule left |")
    print("|---|---|---|---|---|---|")
    print("\n".join(split))
    print()
for v in ("vmtun-1k",):
    if v in ok and ok[v]:
        print("\n".join(phase_table(v)))
        print()
PY
}

if [[ ${1-} == --table ]]; then
  [[ -f ${2-} ]] || die "usage: $0 --table FILE.jsonl"
  table "$2"
  exit 0
fi

# ------------------------------------------------------------------- setup --
[[ $(id -u) -eq 0 ]] || die "needs root (the demo creates network namespaces)"
command -v python3 >/dev/null || die "python3 is needed for the statistics"
cd "$REPO"
TRIALS=${TRIALS:-50}
TRIALS_VMTUN=${TRIALS_VMTUN:-$TRIALS}
TRIALS_SEED=${TRIALS_SEED:-$TRIALS}
TRIALS_IMMEDIATE=${TRIALS_IMMEDIATE:-$TRIALS_SEED}
DWELL=${DWELL:-0.3}
SEED_DWELL_SPREAD=${SEED_DWELL_SPREAD:-0.5}
RESULTS_DIR=${RESULTS_DIR:-$REPO/benches/results}
VMTUN=${VMTUN:-$REPO/target/release/vmtun}
if [[ -z ${VARIANTS-} ]]; then
  VARIANTS="vmtun-1k vmtun-10k seed-1k seed-10k"
  [[ ${IMMEDIATE-0} == 1 ]] && VARIANTS+=" seed-immediate-1k seed-immediate-10k"
fi

if [[ ${SKIP_BUILD-0} != 1 ]]; then
  log "cargo build --release"
  cargo build --release --quiet || die "build failed"
fi
[[ -x $VMTUN ]] || die "no vmtun binary at $VMTUN"

args_of() { # VARIANT -> demo options
  case $1 in
    vmtun-1k) echo "--rate 1000" ;;
    vmtun-10k) echo "--rate 10000" ;;
    seed-1k) echo "--rate 1000 --seed-cutover" ;;
    seed-10k) echo "--rate 10000 --seed-cutover" ;;
    seed-immediate-1k) echo "--rate 1000 --seed-cutover --immediate" ;;
    seed-immediate-10k) echo "--rate 10000 --seed-cutover --immediate" ;;
    *) return 1 ;;
  esac
}
trials_of() {
  case $1 in
    vmtun-*) echo "$TRIALS_VMTUN" ;;
    seed-immediate-*) echo "$TRIALS_IMMEDIATE" ;;
    seed-*) echo "$TRIALS_SEED" ;;
  esac
}
max=0
for v in $VARIANTS; do
  args_of "$v" >/dev/null || die "unknown variant $v"
  n=$(trials_of "$v"); (( n > max )) && max=$n
done

mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
JSONL=$RESULTS_DIR/cutover-$STAMP.jsonl
MD=$RESULTS_DIR/cutover-$STAMP.md
TMP=$(mktemp -d /tmp/vmtun-cutover.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
: >"$JSONL"

LOAD_BEFORE=$(uptime)
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$REPO" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
log "variants: $VARIANTS; trials: vmtun $TRIALS_VMTUN, seed $TRIALS_SEED, immediate $TRIALS_IMMEDIATE; dwell $DWELL s"
log "load before: $LOAD_BEFORE"
START=$(date +%s)

# ------------------------------------------------------------------ trials --
declare -A FAILS=()
for (( i = 1; i <= max; i++ )); do
  for v in $VARIANTS; do
    (( i <= $(trials_of "$v") )) || continue
    read -r -a args <<<"$(args_of "$v")"
    dwell=$DWELL
    if [[ $v == seed-* ]]; then
      # (not awk: mawk's srand() with a large seed repeats the same rand() value)
      dwell=$(python3 -c 'import random, sys; print("%.3f" % (float(sys.argv[1]) + float(sys.argv[2]) * random.random()))' \
        "$DWELL" "$SEED_DWELL_SPREAD")
    fi
    t0=$(date +%s.%N)
    rc=0
    "$VMTUN" demo --json --dwell "$dwell" "${args[@]}" >"$TMP/out.json" 2>"$TMP/err.txt" || rc=$?
    t1=$(date +%s.%N)
    if ! python3 - "$v" "$i" "$rc" "$t0" "$t1" "$dwell ${args[*]}" "$TMP/out.json" "$TMP/err.txt" >>"$JSONL" <<'PY'
import json, os, sys
v, i, rc, t0, t1, args, out, err = sys.argv[1:]
try:
    report = json.load(open(out))
except Exception:
    report = None
errtext = open(err, errors="replace").read()
line = {
    "variant": v, "trial": int(i), "rc": int(rc), "wall_s": round(float(t1) - float(t0), 3),
    "args": "--json --dwell " + args, "load": os.getloadavg()[0], "report": report,
    "error": None if (int(rc) == 0 and report) else "\n".join(errtext.splitlines()[-5:]),
}
print(json.dumps(line, separators=(",", ":")))
if int(rc) != 0 or report is None:
    sys.exit(3)
PY
    then
      FAILS[$v]=$(( ${FAILS[$v]:-0} + 1 ))
      log "$v trial $i FAILED (rc $rc): $(tail -1 "$TMP/err.txt")"
    else
      log "$v trial $i (dwell $dwell): $(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["cutover"] or {}; l=c.get("latency_ns"); print("latency", "none" if l is None else "%.3f ms" % (l/1e6), "wrong-way", c.get("wrong_way_replies"))' "$TMP/out.json") ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)"
    fi
  done
done

END=$(date +%s)
LOAD_AFTER=$(uptime)
log "load after: $LOAD_AFTER"
failed_total=0
for v in "${!FAILS[@]}"; do failed_total=$(( failed_total + FAILS[$v] )); done

{
  echo "# Cutover benchmark $STAMP"
  echo
  echo "vmtun $COMMIT$([[ $DIRTY -gt 0 ]] && echo " (+ uncommitted changes in src/)"), \`vmtun demo --json --dwell D ...\`,"
  echo "D = $DWELL s for vmtun, uniform in [$DWELL, $(awk -v d="$DWELL" -v s="$SEED_DWELL_SPREAD" 'BEGIN{print d+s}')] s per trial for the seed;"
  echo "variants: $VARIANTS; trials: vmtun $TRIALS_VMTUN, seed $TRIALS_SEED$([[ $VARIANTS == *immediate* ]] && echo ", seed-immediate $TRIALS_IMMEDIATE"), interleaved."
  echo "Wall time $(( (END - START) / 60 )) min $(( (END - START) % 60 )) s; failed trials: $failed_total."
  echo
  echo "- load before: $LOAD_BEFORE"
  echo "- load after: $LOAD_AFTER"
  echo
  table "$JSONL"
  echo "Raw: $(basename "$JSONL") (one line per trial, the demo's JSON under \"report\")."
} >"$MD"
cat "$MD"
log "wrote $JSONL and $MD"
