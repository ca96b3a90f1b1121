"""Which dp4a GEMV mapping a verify pass should run on each of a small model's matrices (device machine, for
tuning; a tool, not a test). On edit-code's context (165 tokens, as tests/profile_spec.py), the forward pass +
argmax of a WIDTH-row graph computing its first 1, 2 and WIDTH rows (GpuBackend.live_rows) is timed with one
matrix's GEMV configuration replaced by each of CANDIDATES_BY_SHAPE, then with COMBO and a fill-the-GPU rule
over all matrices at once; each beside the backend's own configurations, timed in turn (a pass's time drifts
by a few percent over a run):

    python3 tests/profile_configs.py MODEL.gguf [WIDTH] [REPEATS] [rule]

With `rule`, only the backend's rule against the one before GEMV_FEW_BLOCKS (both of the production module's
kernels), at 1, 2, 4 and WIDTH live rows.

Prints JSON: by_matrix {"NxK": {"nr,split,occ": {live: [base ms, ms, difference]}}}, rules {name: the same}.
"""
from __future__ import annotations

import json
import statistics
import sys

import numpy as np

from refspec.bench_decode import COPY_PROMPTS
from refspec.cli import load_model, load_tokenizer
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gpu import GpuBackend
from refspec.gpu_mappings import GEMV_CONFIGS, GemvConfig

from graph_timing import graph_seconds

path = sys.argv[1]
width = int(sys.argv[2]) if len(sys.argv) > 2 else 8
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 30
mode = sys.argv[4] if len(sys.argv) > 4 else "all"
CONTEXT = 165  # edit-code's prompt and 48 greedy tokens on the default model
CANDIDATES_BY_SHAPE = {  # (n, k) of the default model's matrices: (nr, split, occ) to try
    (576, 1536): [(2, 4, 1), (2, 2, 1), (4, 4, 1), (4, 2, 1)],
    (576, 576): [(4, 4, 1), (4, 2, 1), (2, 1, 1)],
    (960, 576): [(4, 4, 1), (2, 2, 1), (4, 2, 1)],
    (3072, 576): [(4, 2, 1), (8, 2, 1)],
    (49152, 576): [(4, 1, 1), (4, 2, 1), (8, 2, 1), (2, 1, 1)],  # the output head (production: tensor cores)
}
CANDIDATES = sorted({c for cs in CANDIDATES_BY_SHAPE.values() for c in cs})
COMBO = {(576, 1536): (2, 4, 1), (576, 576): (4, 4, 1), (960, 576): (4, 4, 1)}

model = load_model(path)
tok = load_tokenizer(model)
be = GpuBackend()
cp = be.cp
tf = Transformer(model, be)
text = COPY_PROMPTS["edit-code"]
prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))
context = (prompt + generate(tf, prompt, 48, eog_ids=()).ids)[:CONTEXT]  # a synthetic model's prompt is longer
n = len(context)
cache = tf.new_cache(n + 64)
tf.forward(cache, context[:-1], 0)
ids_d = cp.asarray(np.array([context[-1]] * width, np.int32))
pos_d = cp.asarray(np.array([n - 1], np.int32))
production = be.gemv_config
shapes = set()


def record(rows, k, n_):
    config = production(rows, k, n_)
    if rows == width:
        shapes.add((n_, k))
    return config


def time_pass(choose, counts) -> dict:
    """{live rows: ms} of the width-row pass + argmax with be.gemv_config = choose."""
    be.gemv_config = choose
    out = {}
    try:
        for count in counts:
            be.live_rows(cp.asarray(np.array([count], np.int32)))
            out[count] = 1e3 * graph_seconds(cp, lambda: be.argmax_device(tf.run(cache, ids_d, pos_d, width)), repeats)
            be.live_rows(None)
    finally:
        be.gemv_config = production
    return out


def against_base(choose, counts=(1, 2, width), rounds: int = 3) -> dict:
    """{live rows: [base ms, ms with `choose`, difference]}, medians over `rounds` timings of each, taken in
    turn (the pass's time drifts by a few percent over a run: the two are compared side by side)."""
    base, alt = {c: [] for c in counts}, {c: [] for c in counts}
    for _ in range(rounds):
        for c, t in time_pass(record, counts).items():
            base[c].append(t)
        for c, t in time_pass(choose, counts).items():
            alt[c].append(t)
    out = {}
    for c in counts:
        b, a = statistics.median(base[c]), statistics.median(alt[c])
        out[c] = [round(b, 4), round(a, 4), round(a - b, 4)]
    return out


def replace(table: dict):
    """be.gemv_config with the `width`-row GEMVs of the matrices in `table` ((n, k) -> (nr, split, occ))."""
    def choose(rows, k, n_):
        if rows == width and (n_, k) in table:
            return GemvConfig("q8_gemv", *table[n_, k])
        return production(rows, k, n_)
    return choose


def fill_rule(nr: int):
    """The smallest split of 1, 2, 4 giving at least one thread block a multiprocessor (nr rows a group)."""
    def choose(rows, k, n_):
        config = production(rows, k, n_)
        if config.kernel != "q8_gemv" or rows != width:
            return config
        for split in (1, 2, 4):
            config = GemvConfig("q8_gemv", nr, split)
            if be._blocks(n_, config.weight_rows_per_block()) >= be._multiprocessors:
                break
        return config
    return choose


def rule_before():
    """be.gemv_config as it was before GEMV_FEW_BLOCKS: GEMV_CONFIGS[rows] where the tensor cores do not run."""
    def choose(rows, k, n_):
        config = production(rows, k, n_)
        return GEMV_CONFIGS[rows] if config.kernel == "q8_gemv" else config
    return choose


report = {"model": path, "width": width, "context_tokens": n}
if mode == "rule":  # only the production rule against the one before it (both in the production module)
    report["start"] = [time_pass(record, (1, width)) for _ in range(3)]
    report["before_few_blocks"] = against_base(rule_before(), (1, 2, 4, width), rounds=5)
    print(json.dumps(report, indent=1))
    sys.exit(0)
time_pass(record, (1,))  # the matrices' shapes
# Does the drift come from loading more kernels? The production pass, before and after the candidates' module
# is compiled and loaded (nothing of it launched), then after one pass with a candidate.
drift = report["drift"] = {"start": [time_pass(record, (1, width)) for _ in range(3)]}
be.gemv_module([GemvConfig("q8_gemv", *c).name(width) for c in CANDIDATES] +
               [GemvConfig("q8_gemv", nr, split).name(width) for nr in (2, 4) for split in (1, 2, 4)])
for c in CANDIDATES:
    be._gemv_function(GemvConfig("q8_gemv", *c), width)
drift["loaded"] = [time_pass(record, (1, width)) for _ in range(3)]
time_pass(replace({(576, 1536): (2, 4, 1)}), (1,))
drift["after_one"] = [time_pass(record, (1, width)) for _ in range(3)]
print(json.dumps(drift), file=sys.stderr)
report["shapes"] = sorted(f"{a}x{b}" for a, b in shapes)
report["one_row_graph_vs_live1"] = [
    round(1e3 * graph_seconds(cp, lambda: be.argmax_device(tf.run(cache, ids_d[:1], pos_d, 1)), repeats), 4),
    round(time_pass(record, (1,))[1], 4)]
report["by_matrix"] = {}
for (nshape, kshape), candidates in sorted(CANDIDATES_BY_SHAPE.items()):
    if (nshape, kshape) not in shapes:
        continue
    row = report["by_matrix"][f"{nshape}x{kshape}"] = {}
    for c in candidates:
        row["%d,%d,%d" % c] = against_base(replace({(nshape, kshape): c}))
        print(f"{nshape}x{kshape}", c, row["%d,%d,%d" % c], file=sys.stderr)
report["rules"] = {"combo": against_base(replace(COMBO)), "fill4": against_base(fill_rule(4))}
print(json.dumps(report, indent=1))
