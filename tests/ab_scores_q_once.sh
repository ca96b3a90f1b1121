#!/usr/bin/env bash
# One device call (carry .whl and .cache-kernels): attention_scores loading its queries once for all its slices
# (branch try/scores-q-once) against main's kernel (tests/ab_scores_main.hip): the GPU attention tests with the
# branch's kernel, then chains in turn, twice, then llama-8b passes at position 4000 in turn.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refspec-ab}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/refspec-cache} PYTHONUNBUFFERED=1
. tests/device_setup.sh
device_install_wheels >/dev/null
device_kernels >/dev/null
cp kernels_raw/attention.hip /tmp/attention_new.hip
python3 -m pytest -q tests/test_gpu_kernels.py tests/test_gpu_fused.py -k attention -p no:cacheprovider 2>&1 | tail -1 | tee "$OUT/tests.txt"
for v in new main new main; do
  if [ $v = new ]; then cp /tmp/attention_new.hip kernels_raw/attention.hip; else cp tests/ab_scores_main.hip kernels_raw/attention.hip; fi
  (cd tests && python3 ab_chains.py $v) | tee -a "$OUT/ab.jsonl"
done
for v in new main; do
  if [ $v = new ]; then cp /tmp/attention_new.hip kernels_raw/attention.hip; else cp tests/ab_scores_main.hip kernels_raw/attention.hip; fi
  (cd tests && python3 ab_chains.py $v passes 2>&1 | grep pass_pos) | tee -a "$OUT/ab.jsonl"
done
cp /tmp/attention_new.hip kernels_raw/attention.hip
