#!/usr/bin/env bash
# Per-kernel times (ncu, clocks left alone) of one eager pass of a 2-layer model of PRESET's width (PRESET=default:
# the default model, every layer) at each of ROWS, at position POS (default 64): the kernels after the last
# warm-up; a summary table by kernel name. Output under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refspec-profile}; mkdir -p "$OUT"
PRESET=${PRESET:-llama-8b}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
for rows in ${ROWS:-1 8}; do
  # warm-up kernels: prompt pass + 2 steps; count them once without ncu is not possible cheaply, so profile
  # everything and keep the last pass's kernels (those after the last embed launch).
  "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv python3 tests/profile_pass.py "$PRESET" "$rows" "${POS:-64}" \
    > "$OUT/ncu_${PRESET}_r$rows.csv" 2> "$OUT/ncu_${PRESET}_r$rows.err"
  python3 - "$OUT/ncu_${PRESET}_r$rows.csv" "$rows" <<'PY'
import csv, sys, collections
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
rows = list(csv.DictReader(lines))
names = [r["Kernel Name"] for r in rows]
ids = sorted({int(r["ID"]) for r in rows})
times = {}
for r in rows:
    # ncu writes thousands with commas ("4,160")
    times[int(r["ID"])] = (r["Kernel Name"].split("(")[0], float(r["Metric Value"].replace(",", "")), r["Metric Unit"])
last_embed = max(i for i, (n, _, _) in times.items() if n.startswith("embed"))
scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}  # to microseconds
sel = [(n, v * scale[u]) for i, (n, v, u) in times.items() if i >= last_embed]
tot = collections.defaultdict(lambda: [0, 0.0])
for n, v in sel:
    tot[n][0] += 1; tot[n][1] += v
print(f"rows={sys.argv[2]}: {len(sel)} kernels, {sum(v for _, v in sel):.1f} us of kernel time")
for n, (c, v) in sorted(tot.items(), key=lambda kv: -kv[1][1]):
    print(f"  {n[:60]:<60} x{c:<3} {v:9.1f} us  ({v / c:.2f} us each)")
PY
done
