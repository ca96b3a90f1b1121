#!/usr/bin/env bash
# Why does the one-row GEMV read at 85 % of what a plain streaming read reaches under the same kernel boundaries
# (tests/probe_grid_barrier.py, 2026-12-04), and why do more rounds of weights in flight (DEPTH) not help? One
# device call (run from anywhere on the device machine; output under $OUT): ncu --set full on llama-8b's down
# projection (4096 x 14336) at one row for DEPTH = 1 (production) and 2 (tests/profile_gemv.py), each report's
# details and its per-instruction stall samples (source page, SASS), to set beside the SASS that
# tests/sass_from_cache.py reads here from the carried kernel cache. Carry .whl and .cache-kernels.
# Other GEMVs: SHAPE="N K" and CONFIGS="ROWS:KERNEL/NR/SPLIT/OCC[/DEPTH[/RES/GROUPS]] ..." (tests/profile_gemv.py's
# fields), e.g. SHAPE="14336 4096" CONFIGS="16:q8_gemv_mma/8/1/2/1/1/2 8:q8_gemv_mma/8/1/4/1/1/2"; each gets
# ncu_<i>_details.txt, ncu_<i>_source.csv and its summary (tests/ncu_sass_summary.py).
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/device_setup.sh
device_tool_setup /tmp/refspec-gemv-stalls

if [ -n "$NCU" ]; then
  if [ -z "${CONFIGS:-}" ]; then
    SHAPE="4096 14336"
    CONFIGS="1:q8_gemv/2/1/1/1 1:q8_gemv/2/1/1/2"
  fi
  i=0
  for c in $CONFIGS; do
    i=$((i + 1))
    rows=${c%%:*} config=${c#*:}
    # shellcheck disable=SC2086  # SHAPE is two arguments
    "$NCU" --set full --import-source yes -k regex:q8_gemv --launch-skip 1 --launch-count 1 -f -o "$OUT/ncu_$i" \
      python3 tests/profile_gemv.py $SHAPE "$rows" "$config" > "$OUT/ncu_$i.log" 2>&1
    "$NCU" -i "$OUT/ncu_$i.ncu-rep" --page details > "$OUT/ncu_${i}_details.txt" 2>&1
    "$NCU" -i "$OUT/ncu_$i.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_${i}_source.csv" 2>&1
    echo "== $i: $SHAPE, $rows rows, $config"
    grep -E "Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" \
      "$OUT/ncu_${i}_details.txt"
    python3 tests/ncu_sass_summary.py "$OUT/ncu_${i}_source.csv" 12 > "$OUT/ncu_${i}_summary.txt" 2>&1
    head -40 "$OUT/ncu_${i}_summary.txt"
    rm -f "$OUT/ncu_$i.ncu-rep" "$OUT/ncu_$i.log"
    gzip -f "$OUT/ncu_${i}_source.csv"
  done
fi
