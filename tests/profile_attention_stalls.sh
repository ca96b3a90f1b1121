#!/usr/bin/env bash
# Where attention's time goes at a llama-8b layer's shape over a short cache (position POS, default 64), at
# 1 / 8 / 16 rows (ROWS): ncu --set full with source lines (tests/profile_attention_once.py, LINEINFO=1) on
# the third launch of each row count, its details and per-line stall samples; then each plan's time in a chain
# of 32 (tests/profile_attention.py). One device call; output under $OUT. Carry .whl and .cache-kernels.
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/device_setup.sh
device_tool_setup /tmp/refspec-attention-stalls
POS=${POS:-64}
if [ -n "$NCU" ]; then
  for r in ${ROWS:-1 8 16}; do
    LINEINFO=1 "$NCU" --set full --import-source yes -k regex:attention --launch-skip 2 --launch-count 1 -f \
      -o "$OUT/ncu_attn_r$r" python3 tests/profile_attention_once.py "$r" "$POS" > "$OUT/ncu_attn_r$r.log" 2>&1
    "$NCU" -i "$OUT/ncu_attn_r$r.ncu-rep" --page details > "$OUT/ncu_attn_r${r}_details.txt" 2>&1
    "$NCU" -i "$OUT/ncu_attn_r$r.ncu-rep" --page source --csv --print-source cuda,sass > "$OUT/ncu_attn_r${r}_source.csv" 2>&1
    grep -E "attention|Duration|Achieved Occupancy|Registers Per|Issue Slots Busy|L2 Hit" "$OUT/ncu_attn_r${r}_details.txt" \
      | head -12 | sed "s/^/rows $r: /"
    "$NCU" -i "$OUT/ncu_attn_r$r.ncu-rep" --page source --csv --print-source sass > /tmp/ncu_attn_sass.csv 2>&1
    python3 tests/ncu_sass_summary.py /tmp/ncu_attn_sass.csv | tee "$OUT/ncu_attn_r${r}_summary.txt"
  done
fi
python3 tests/profile_attention.py 20 "$POS,300" 1,8,16 | tee "$OUT/profile_attention.jsonl"
