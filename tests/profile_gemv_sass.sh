#!/usr/bin/env bash
# Why does the one-row GEMV read at 85 % of what a plain streaming read reaches under the same kernel boundaries
# (tests/probe_grid_barrier.py, 2026-12-04), and why do more rounds of weights in flight (DEPTH) not help? One
# device call (run from anywhere on the device machine; output under $OUT):
#   1. the SASS of the production one-row GEMV q8_gemv<1, 2, 1, 1, D> for D = 1, 2, 3, as the backend compiled it
#      (its module in the kernel cache; cuobjdump): where each round's weight loads sit against their first use;
#   2. ncu --set full on llama-8b's down projection (4096 x 14336) at one row for D = 1 and 2
#      (tests/profile_gemv.py), each report's details and its per-instruction stall samples (source page, SASS).
# Carry .whl and .cache-kernels (the compiled kernels: step 1 reads the module from the cache).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refspec-gemv-sass}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/refspec-cache} PYTHONUNBUFFERED=1
. tests/device_setup.sh
device_install_wheels
device_kernels
CUOBJDUMP=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)

# 1. the production GEMV module's file in the cache (the key refspec.gpu.GpuBackend._load_module computes)
module=$(python3 - <<'EOF'
import hashlib

from refspec.gpu import COMPILE_OPTIONS, GpuBackend, kernel_cache_dir, kernel_source
from refspec.gpu_mappings import GEMV_CONFIGS

be = GpuBackend()
be._gemv_function(GEMV_CONFIGS[1], 1)  # compiles it, or finds it in the cache
group = be._gemv_groups[GEMV_CONFIGS[1].name(1)]
key = hashlib.sha256(repr((kernel_source("q8_gemv"), COMPILE_OPTIONS[be.platform], group,
                           be._toolchain())).encode()).hexdigest()
print(kernel_cache_dir() / f"q8_gemv-{key[:32]}.bin")
EOF
)
echo "module: $module; cuobjdump: ${CUOBJDUMP:-none}; ncu: ${NCU:-none}" | tee "$OUT/tools.txt"
if [ -n "$CUOBJDUMP" ] && [ -f "$module" ]; then
  for d in 1 2 3; do
    "$CUOBJDUMP" -sass -fun "_Z7q8_gemvILi1ELi2ELi1ELi1ELi${d}EEvPKaPKtS1_S3_PfiiiPKfPKi" "$module" \
      > "$OUT/sass_q8_gemv_1_2_1_1_$d.txt" 2>&1
    echo "depth $d: $(grep -c 'LDG' "$OUT/sass_q8_gemv_1_2_1_1_$d.txt") LDG, $(wc -l < "$OUT/sass_q8_gemv_1_2_1_1_$d.txt") lines"
  done
fi

# 2. ncu on the down projection at one row, depth 1 (production) and 2
if [ -n "$NCU" ]; then
  for d in 1 2; do
    "$NCU" --set full --import-source yes -k regex:q8_gemv --launch-skip 1 --launch-count 1 -f -o "$OUT/ncu_d$d" \
      python3 tests/profile_gemv.py 4096 14336 1 "q8_gemv/2/1/1/$d" > "$OUT/ncu_d$d.log" 2>&1
    "$NCU" -i "$OUT/ncu_d$d.ncu-rep" --page details > "$OUT/ncu_d${d}_details.txt" 2>&1
    "$NCU" -i "$OUT/ncu_d$d.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_d${d}_source.csv" 2>&1
    grep -E "Duration|DRAM Throughput|Achieved Occupancy|Registers Per" "$OUT/ncu_d${d}_details.txt" | sed "s/^/depth $d: /"
  done
fi
