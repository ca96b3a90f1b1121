#!/usr/bin/env bash
# The whole GPU check, in one script, on a machine with a GPU and CuPy (run from anywhere):
#   1. install the carried wheels (.whl/*.whl, e.g. gguf, which such a machine may lack) into /tmp/site
#      (tests/device_setup.sh, as the compiled kernels below);
#   2. find the default model: the refspec cache as usual, or .cache-model/refspec/, or the two halves of a
#      GGUF carried as .cache-model/a/*.part and .cache-model/b/*.part (a transfer limit), joined and checked
#      against refspec.default_model.GGUF_SHA256; without it the default-model test is left out (noted);
#   3. pytest -m gpu with hypothesis (HYPOTHESIS_PROFILE, default ci), log and JUnit XML;
#   4. refspec bench gemv (BENCH_ARGS, default --variants), its table and JSON;
#   5. a short summary table last.
# Logs and JSON go to $OUT (default /tmp/refspec-device-check). STEPS="tests bench" picks steps;
# PYTEST_ARGS adds pytest arguments (e.g. "-k default_model"); MARKER replaces the marker expression (default gpu),
# e.g. MARKER="gpu and slow" for the default model's test alone in a second call, once half b has come.
# Compiling the kernels takes a good part of a fresh machine's run. The compiled kernels come back as
# $OUT/kernels.tar.gz (refspec's disk cache, keyed by source, options, toolchain and GPU); carried back as
# .cache-kernels/kernels.tar.gz, they fill the cache first, and only changed sources compile again.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/refspec-device-check}
STEPS=${STEPS:-tests bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

. tests/device_setup.sh
device_install_wheels

GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
model_note="default model: from the refspec cache"
if [ -f ".cache-model/refspec/$GGUF" ]; then
  export XDG_CACHE_HOME="$ROOT/.cache-model"
  model_note="default model: .cache-model/refspec/"
elif compgen -G ".cache-model/a/*.part" >/dev/null && compgen -G ".cache-model/b/*.part" >/dev/null; then
  export XDG_CACHE_HOME=/tmp/refspec-cache
  mkdir -p "$XDG_CACHE_HOME/refspec"
  cat .cache-model/a/*.part .cache-model/b/*.part > "$XDG_CACHE_HOME/refspec/$GGUF"
  model_note="default model: joined from .cache-model/a and b"
fi
device_kernels  # (after XDG_CACHE_HOME, which the kernel cache follows)
model_ok=$(python3 - <<'EOF'
import hashlib
from refspec import default_model as dm
path = dm.default_cache_dir() / dm.GGUF_NAME
ok = path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == dm.GGUF_SHA256
print("yes" if ok else "no")
EOF
)
marker=${MARKER:-gpu}
if [ "$model_ok" != yes ]; then
  marker="($marker) and not slow"
  model_note="default model: NOT available (its test is left out)"
fi

{
  echo "== $(date -u +%FT%TZ) $(uname -n)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null \
    || rocm-smi --showproductname 2>/dev/null
  python3 -c "import cupy, numpy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'numpy', numpy.__version__)"
  python3 -c "from refspec.gpu import gpu_available; print('gpu_available', gpu_available())"
  echo "$model_note"
} 2>&1 | tee "$OUT/environment.txt"

tests_status=skipped
if [[ " $STEPS " == *" tests "* ]]; then
  python3 -m pytest -m "$marker" -q -rsfE -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/pytest_gpu.xml" ${PYTEST_ARGS:-} tests 2>&1 | tee "$OUT/pytest_gpu.log"
  # (a module this machine cannot import is noted below, not counted)
  tests_status=$(pytest_log_verdict "$OUT/pytest_gpu.log")
  uncollected=$(grep -oE '^ERROR tests/[^ :]+\.py' "$OUT/pytest_gpu.log" | sed 's/^ERROR //' | tr '\n' ' ')
fi

bench_status=skipped
if [[ " $STEPS " == *" bench "* ]]; then
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  python3 -m refspec.bench_gemv ${BENCH_ARGS:---variants} --json-out "$OUT/bench_gemv.json" 2>&1 | tee "$OUT/bench_gemv.log"
  bench_status=$([ "${PIPESTATUS[0]}" -eq 0 ] && echo done || echo FAILED)
fi

if [ -d "$KERNEL_CACHE" ]; then
  tar -czf "$OUT/kernels.tar.gz" -C "$KERNEL_CACHE" . 2>/dev/null || rm -f "$OUT/kernels.tar.gz"
fi

echo
echo "================ device check summary ================"
cat "$OUT/environment.txt"
if [ -f "$OUT/pytest_gpu.log" ]; then
  echo "pytest -m '$marker': $tests_status: $(grep -E ' in [0-9.]+s' "$OUT/pytest_gpu.log" | tail -1)"
  [ -n "${uncollected:-}" ] && echo "  not importable here (not counted): $uncollected"
fi
if [ -f "$OUT/bench_gemv.log" ]; then
  echo "bench gemv: $bench_status (production kernels; full table in bench_gemv.log)"
  grep -E "device-to-device copy|^ +[0-9]+x[0-9]+ +[0-9]" "$OUT/bench_gemv.log" | grep -v "(variant)"
  sed -n '/^targets/,$p' "$OUT/bench_gemv.log"
fi
[[ "$tests_status" != FAILED* ]] && [ "$bench_status" != FAILED ]
