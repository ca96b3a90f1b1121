#!/usr/bin/env bash
# Branch try/values-occupancy (NOT YET RUN; written 2026-12-04 with the device time spent): attention_values with two
# blocks of 512 threads a multiprocessor on NVIDIA (launch bounds: 63 registers, no spills, sm_90 and gfx906 compile
# tests pass) and phase 3 loading one position a lane at a time there (same additions, same order, same bits). ncu on
# main at 8 rows over 4000 positions: attention_values 112 us, 8.2 waves of one 512-thread block a multiprocessor (116
# registers). One device call (carry .whl and .cache-kernels): the GPU attention tests with the branch's kernel, then
# the branch's and main's kernels in turn, twice: attention chains at 1000 and 4000 positions (tests/profile_attention.py;
# every plan and thread count) and the llama-8b pass of 1 / 8 / 16 rows at position 4000 and 1000
# (tests/profile_pass_swaps.py with POSITION). Keep it if the spread plans gain at 8 and 16 rows without one row losing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refspec-ab-values}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/refspec-cache} PYTHONUNBUFFERED=1
. tests/device_setup.sh
device_install_wheels
device_kernels
cp tests/ab_values_branch.hip kernels_raw/attention.hip
python3 -m pytest -q -x tests/test_gpu_kernels.py -k attention -p no:cacheprovider 2>&1 | tail -1 | tee "$OUT/tests.txt"
for v in branch main branch main; do
  cp "tests/ab_values_$v.hip" kernels_raw/attention.hip
  python3 tests/profile_attention.py 10 1000,4000 1,8,16 | sed "s/^/$v /" | tee -a "$OUT/chains.jsonl"
  for p in 4000 1000; do
    (cd tests && POSITION=$p python3 profile_pass_swaps.py llama-8b 1,8,16 20 1 2>&1 | grep -E "^[0-9]+ production" \
      | sed "s/^/$v pass pos $p /") | tee -a "$OUT/passes.txt"
  done
done
cp tests/ab_values_branch.hip kernels_raw/attention.hip
