#!/usr/bin/env bash
# GPU benchmarks at real size, in one script (run from anywhere on a machine with a GPU and CuPy):
#   1. install the carried wheels (.whl/*.whl) and fill the kernel cache (tests/device_setup.sh);
#   2. for each synthetic preset in PRESETS (default llama-8b): refspec bench decode --preset (graphs on;
#      with EAGER=1 also --no-graphs), and llama.cpp's llama-bench on the same file when .anchors/llama-bench.xz
#      was carried (tg128 and passes of 1..16 rows);
#   3. with GEMV=1, refspec bench gemv (production kernels; GEMV_ARGS=--mma adds the other mappings).
# JSON and logs go to $OUT: per preset its two JSON files, and one log for all of them (bench_decode.log; llama-bench's
# own log only where it failed), since a device call returns at most 8 files. Files written for presets are removed
# after use unless KEEP=1 (disk is small).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refspec-device-bench}
PRESETS=${PRESETS:-llama-8b}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/refspec-cache}
. tests/device_setup.sh
device_install_wheels
device_kernels
LLAMA_BENCH=""
if [ -f .anchors/llama-bench.xz ]; then
  xz -dc .anchors/llama-bench.xz > /tmp/llama-bench && chmod +x /tmp/llama-bench && LLAMA_BENCH=/tmp/llama-bench
  export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
status=0
for preset in $PRESETS; do
  t0=$(date +%s)
  python3 -m refspec.cli bench decode --preset "$preset" --repeats "${REPEATS:-3}" \
    --json-out "$OUT/bench_decode_$preset.json" 2>&1 | tee -a "$OUT/bench_decode.log" || status=1
  if [ "${EAGER:-0}" = 1 ]; then
    python3 -m refspec.cli bench decode --preset "$preset" --repeats 1 --no-graphs \
      --json-out "$OUT/bench_decode_${preset}_eager.json" 2>&1 | tee -a "$OUT/bench_decode.log" || status=1
  fi
  file="$XDG_CACHE_HOME/refspec/synthetic/$preset.gguf"
  if [ -n "$LLAMA_BENCH" ] && [ -f "$file" ]; then
    if ! "$LLAMA_BENCH" -m "$file" -ngl 99 -p 1,2,4,8,12,16 -n 128 -r 3 -o json > "$OUT/llama_bench_$preset.json" \
      2> "/tmp/llama_bench_$preset.log"; then
      cp "/tmp/llama_bench_$preset.log" "$OUT/"
      echo "llama-bench failed on $preset (see llama_bench_$preset.log)"
    else python3 - "$OUT/llama_bench_$preset.json" <<'PY' || true
import json, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    what = f"tg{r['n_gen']}" if r["n_gen"] else f"pp{r['n_prompt']}"
    ms = [1e3 * max(r["n_gen"], r["n_prompt"]) / ts for ts in r["samples_ts"]]
    print(f"llama.cpp {what}: {r['avg_ts']:.1f} tokens/s; best pass {min(ms):.3f} ms" if not r["n_gen"] else
          f"llama.cpp {what}: {r['avg_ts']:.1f} tokens/s ({1e3 / r['avg_ts']:.3f} ms/token)")
PY
    fi
  fi 2>&1 | tee -a "$OUT/bench_decode.log"
  [ "${KEEP:-0}" = 1 ] || rm -f "$file"
  echo "$preset: $(( $(date +%s) - t0 )) s"
done
if [ "${GEMV:-0}" = 1 ]; then
  python3 -m refspec.bench_gemv ${GEMV_ARGS:-} --json-out "$OUT/bench_gemv.json" 2>&1 | tee "$OUT/bench_gemv.log" || status=1
fi
exit $status
