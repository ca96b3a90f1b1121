#!/usr/bin/env bash
# Sources A/B in whole passes, in one device call: variant "main" is the carried tree; each other variant NAME is the
# directory .ab/NAME/ (carry .ab), laid out as the repository (e.g. .ab/NAME/kernels_raw/attention.hip), whose files
# replace the tree's while it runs (kernels and Python alike: each run is a fresh process).
# For each variant other than main, first the GPU tests that TESTS selects (pytest -k; default: none) with its
# sources; then ROUNDS rounds, each running, for each preset of PRESETS (default $PRESET or llama-8b), every variant
# in turn in a fresh process (tests/pass_times.py: graph replays of the preset's pass at ROWS, position $POSITION or
# 64); last, a summary by preset, and a check that every variant's logits have the same digest at each preset and
# width (exit 1 if not). Carry .whl and .cache-kernels too. Output under $OUT.
# GEMV_SHAPES (e.g. 5120x5120,7168x5120) also times those GEMVs alone in each round, each variant's production
# mapping (refspec bench gemv, rows GEMV_ROWS or 1,8,16), into $OUT/gemv_times.jsonl and the summary.
#   e.g. mkdir -p .ab/finish/kernels_raw
#        git show try/attention-finish:kernels_raw/attention.hip > .ab/finish/kernels_raw/attention.hip
#        VARIANTS=finish TESTS=attention OUT=$OUT bash tests/ab_pass_sources.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refspec-ab}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/refspec-cache} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
. tests/device_setup.sh
device_install_wheels
device_kernels
PRESETS=${PRESETS:-${PRESET:-llama-8b}}
ROWS=${ROWS:-1,8,16}
VARIANTS="main ${VARIANTS:-}"
backup=$(mktemp -d)
for v in $VARIANTS; do  # the tree's own copies of every file a variant replaces
  [ "$v" = main ] || [ ! -d ".ab/$v" ] || (cd ".ab/$v" && find . -type f) | while read -r f; do
    [ -f "$f" ] && mkdir -p "$backup/$(dirname "$f")" && cp -a "$f" "$backup/$f"
  done
done
use() {  # the sources of variant $1 in the tree
  cp -a "$backup/." ./
  [ "$1" = main ] || cp -a ".ab/$1/." ./
}
status=0
for v in $VARIANTS; do
  [ "$v" = main ] && continue
  [ -d ".ab/$v" ] || { echo "ab_pass_sources: no .ab/$v/ (carry .ab)" >&2; exit 2; }
  if [ -n "${TESTS:-}" ]; then
    use "$v"
    python3 -m pytest -q -rfE -m gpu -p no:cacheprovider --continue-on-collection-errors tests -k "$TESTS" \
      > "$OUT/tests_$v.log" 2>&1
    [ "$(pytest_log_verdict "$OUT/tests_$v.log")" = passed ] || status=1
    echo "tests of $v (-k '$TESTS'): $(tail -1 "$OUT/tests_$v.log")"
  fi
done
for round in $(seq "${ROUNDS:-2}"); do
  for preset in $PRESETS; do
    for v in $VARIANTS; do
      use "$v"
      (cd tests && python3 pass_times.py "$preset" "$ROWS" "${REPEATS:-50}" "$v" "$OUT/pass_times.jsonl") \
        2>> "$OUT/pass_times.err" || { status=1; tail -3 "$OUT/pass_times.err"; }
    done
  done
  if [ -n "${GEMV_SHAPES:-}" ]; then
    for v in $VARIANTS; do
      use "$v"
      python3 -m refspec.bench_gemv --shapes "$GEMV_SHAPES" --rows "${GEMV_ROWS:-1,8,16}" --json-out /tmp/ab_gemv.json \
        > "$OUT/bench_gemv_$v.log" 2>&1 || { status=1; tail -3 "$OUT/bench_gemv_$v.log"; }
      python3 -c "import json, sys; r = json.load(open('/tmp/ab_gemv.json'))['results']; print(json.dumps({'label': sys.argv[1], 'us': {f\"{e['n']}x{e['k']} R={e['rows']}\": round(e['seconds'] * 1e6, 3) for e in r if e['production']}}))" \
        "$v" >> "$OUT/gemv_times.jsonl" || status=1
    done
  fi
done
use main
python3 - "$OUT/pass_times.jsonl" "$OUT/gemv_times.jsonl" <<'PY' || status=1
import collections, json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
times, digests = collections.defaultdict(list), collections.defaultdict(set)
for r in runs:
    for rows, ms in r["ms"].items():
        times[(r["preset"], r["label"], int(rows))].append(ms)
        digests[(r["preset"], int(rows))].add(r["logits_sha256"][rows])
for (preset, label, rows), ms in sorted(times.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1] != "main", kv[0][1])):
    print(f"{preset:12s} {label:12s} rows={rows:3d} ms {min(ms):.4f}-{max(ms):.4f} ({len(ms)} runs)")
try:
    gemv = collections.defaultdict(list)
    for line in open(sys.argv[2]):
        r = json.loads(line)
        for what, us in r["us"].items():
            gemv[(what, r["label"])].append(us)
    for (what, label), us in sorted(gemv.items(), key=lambda kv: (kv[0][0], kv[0][1] != "main", kv[0][1])):
        print(f"{label:12s} {what:22s} us {min(us):.2f}-{max(us):.2f} ({len(us)} runs)")
except FileNotFoundError:
    pass
bad = sorted(rows for rows, d in digests.items() if len(d) != 1)
print("logits: the same bits in every variant at each preset and width" if not bad else f"logits DIFFER at {bad}")
sys.exit(1 if bad else 0)
PY
exit $status
