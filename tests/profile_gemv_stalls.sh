#!/usr/bin/env bash
# Why does the one-row GEMV read at 85 % of what a plain streaming read reaches under the same kernel boundaries
# (tests/probe_grid_barrier.py, 2026-12-04), and why do more rounds of weights in flight (DEPTH) not help? One
# device call (run from anywhere on the device machine; output under $OUT): ncu --set full on llama-8b's down
# projection (4096 x 14336) at one row for DEPTH = 1 (production) and 2 (tests/profile_gemv.py), each report's
# details and its per-instruction stall samples (source page, SASS), to set beside the SASS that
# tests/sass_from_cache.py reads here from the carried kernel cache. Carry .whl and .cache-kernels.
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/device_setup.sh
device_tool_setup /tmp/refspec-gemv-stalls

if [ -n "$NCU" ]; then
  for d in 1 2; do
    "$NCU" --set full --import-source yes -k regex:q8_gemv --launch-skip 1 --launch-count 1 -f -o "$OUT/ncu_d$d" \
      python3 tests/profile_gemv.py 4096 14336 1 "q8_gemv/2/1/1/$d" > "$OUT/ncu_d$d.log" 2>&1
    "$NCU" -i "$OUT/ncu_d$d.ncu-rep" --page details > "$OUT/ncu_d${d}_details.txt" 2>&1
    "$NCU" -i "$OUT/ncu_d$d.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_d${d}_source.csv" 2>&1
    grep -E "Duration|DRAM Throughput|Achieved Occupancy|Registers Per" "$OUT/ncu_d${d}_details.txt" | sed "s/^/depth $d: /"
  done
fi
