#!/usr/bin/env bash
# The pass against the cache length, and what bounds attention over a long cache, in one device call (carry .whl
# and .cache-kernels; output under $OUT):
#   1. for each preset in PRESETS (default llama-8b), graph replays of its pass at ROWS (default 1,8,16) rows at
#      each of POSITIONS (default 64 448 1984; tests/pass_times.py, REPEATS, default 30), one process a position,
#      into $OUT/pass_vs_position.jsonl, a summary last (ms and the ratio to one row);
#   2. with NCU_ROWS (e.g. "1 16"), ncu --set full of attention at llama-8b's layer shape at position NCU_POS
#      (default 1984; a cache that long runs the spread plan, two kernels a call: positions up to ~400 run one
#      kernel, which --launch-skip 4 would miss), the third call's kernels (tests/profile_attention_once.py), into
#      $OUT/ncu_attention_r<R>_pos<P>.txt; and every plan's time in a chain of 32 there
#      (tests/profile_attention.py) into $OUT/profile_attention_pos<P>.jsonl.
# A fresh machine writes each preset's file first (qwen2.5-32b: ~100 s); STEP_TIMEOUT (default 150 s) bounds each
# step, so that what finished still comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/device_setup.sh
device_tool_setup /tmp/refspec-pass-vs-position  # OUT, the kernel cache, the wheels, NCU
limit=${STEP_TIMEOUT:-150}
status=0
for preset in ${PRESETS:-llama-8b}; do
  for p in ${POSITIONS:-64 448 1984}; do
    (cd tests && timeout "$limit" env POSITION="$p" python3 pass_times.py "$preset" "${ROWS:-1,8,16}" "${REPEATS:-30}" \
      "$preset@$p" "$OUT/pass_vs_position.jsonl" > /dev/null 2>> "$OUT/pass_vs_position.err") \
      || { status=1; echo "$preset at $p: failed or timed out (pass_vs_position.err)"; }
  done
done
if [ -f "$OUT/pass_vs_position.jsonl" ]; then
  python3 - "$OUT/pass_vs_position.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    ms = r["ms"]
    ratios = " / ".join(f"{ms[w] / ms['1']:.3f}" for w in ms if w != "1") if "1" in ms else ""
    print(f"{r['preset']:12s} position {r['position']:5d} ms " + " / ".join(f"{v:.3f}" for v in ms.values())
          + (f"  (over one row: {ratios}x)" if ratios else ""))
PY
fi
pos=${NCU_POS:-1984}
if [ -n "${NCU_ROWS:-}" ]; then
  [ -n "$NCU" ] || { echo "no ncu on this machine" >&2; exit 2; }
  for r in $NCU_ROWS; do  # the spread plan is two kernels a call (attention_scores, attention_values): skip 2 calls
    timeout "$limit" "$NCU" --set full -k regex:attention --launch-skip 4 --launch-count 2 \
      python3 tests/profile_attention_once.py "$r" "$pos" > "$OUT/ncu_attention_r${r}_pos$pos.txt" 2>&1 || status=1
    grep -E "^  void attention|Duration|Executed Instructions  |Issue Slots Busy|L1/TEX Cache Throughput|DRAM Throughput" \
      "$OUT/ncu_attention_r${r}_pos$pos.txt" | sed "s/^/rows $r: /"
  done
  timeout "$limit" python3 tests/profile_attention.py 10 "$pos" 1,8,16 > "$OUT/profile_attention_pos$pos.jsonl" 2>&1 \
    || status=1
fi
exit $status
