#!/usr/bin/env bash
# Even blocks a multiprocessor for one-row GEMVs of long rows (GemvConfig.even), on the device machine (output
# under $OUT): their GPU tests, then the llama-8b pass of 1 and 2 rows with and without it in turn (graph replays,
# tests/profile_even_blocks.py), then refspec bench decode --preset llama-8b with and without it. Carry .whl and
# .cache-kernels.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refspec-even-blocks}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/refspec-cache} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
. tests/device_setup.sh
device_install_wheels
device_kernels
python3 -m pytest -q -m gpu tests/test_gpu_fused.py -k "${TESTS:-even or short_rows or gemv_add}" -p no:cacheprovider \
  > "$OUT/tests.txt" 2>&1
tail -1 "$OUT/tests.txt"
(cd tests && python3 profile_even_blocks.py llama-8b ${ROWS:-1,2} 40 ${ROUNDS:-4}) > "$OUT/pass_ab.json" 2> "$OUT/pass_ab.err"
tail -3 "$OUT/pass_ab.err"
grep -v '^{' "$OUT/pass_ab.json" | head -0
for flag in $([ "${BENCH:-1}" = 1 ] && echo "- --no-even-blocks"); do
  [ "$flag" = - ] && flag=""
  python3 -m refspec.cli bench decode --preset llama-8b --repeats "${REPEATS:-3}" $flag \
    --json-out "$OUT/bench_decode_llama-8b${flag:+_no_even}.json" > "$OUT/bench_decode_llama-8b${flag:+_no_even}.log" 2>&1
  grep -i "greedy\|tokens/s" "$OUT/bench_decode_llama-8b${flag:+_no_even}.log" | head -4
done
