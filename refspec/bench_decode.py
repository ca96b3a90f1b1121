"""`refspec bench decode`: how fast greedy decoding runs, and what self-speculative decoding gains on prompts
whose answer copies from the input, each speculative output checked against greedy's token for token.

(a) greedy: a 16-token prompt, 64 new tokens (no early stop), repeated; the median tokens/s.
(b) speculative: chat prompts that ask to edit code, rewrite a list, extract fields or correct a text;
    greedy vs each drafter: tokens/s, tokens per forward pass, acceptance rate, identical output or not
    (left out for --preset models: random weights copy nothing).
(c) on a GPU: the read ceiling (a streaming read, refspec.bench_gemv.read_bandwidth) and the roofline it gives,
    ceiling / weight bytes read per token; and the end-to-end time of one forward pass of R = 1, 2, 4, 8, 12,
    16 rows (a step at position 64, synchronised), relative to one row.
(d) models with an MTP block (qwen35): the time of one MTP draft step (the block and the LM head over one
    row, as the mtp drafter runs each guess after its first), beside a one-row step of the model; on copy
    prompts the mtp drafter runs too.

--preset NAME times a synthetic model of a real model's shapes (refspec.synthetic.PRESETS), written once to
the cache ($XDG_CACHE_HOME/refspec/synthetic/NAME.gguf).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys

DRAFTERS = ("ngram", "layerskip")  # and "mtp" for models with an MTP block
GREEDY_PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
                 "combined movable metal type with an oil-based ink")
GREEDY_PROMPT_TOKENS, GREEDY_NEW_TOKENS = 16, 64
REPEATS, COPY_NEW_TOKENS = 3, 128  # --repeats and --n-predict unless given
QUICK_GREEDY_TOKENS, QUICK_COPY_TOKENS = 8, 16  # --quick's (every measurement run once)

COPY_PROMPTS = {
    "edit-code": "Rename the function `compute_total` to `sum_prices` everywhere in this code and return the "
                 "whole code:\n\n```python\ndef compute_total(items):\n    total = 0\n    for item in items:\n"
                 "        total += item.price * item.quantity\n    return total\n\n\n"
                 "cart = load_cart('cart.json')\nprint('Total:', compute_total(cart))\n```",
    "rewrite-list": "Rewrite this shopping list as a numbered list, keeping every item exactly as written:\n\n"
                    "- 2 cups of flour\n- 1 teaspoon of baking soda\n- 3 large eggs\n- 1 cup of whole milk\n"
                    "- 2 tablespoons of melted butter\n- a pinch of salt",
    "extract-fields": "Extract the name, company, email and phone number from this message as JSON with the keys "
                      "name, company, email, phone:\n\nHi, this is Maria Gonzalez from Blue River Logistics. You "
                      "can reach me at maria.gonzalez@blueriver-logistics.com or call 555-0142 during office "
                      "hours. Thanks!",
    "correct-text": "Correct the spelling mistakes in this paragraph and return the corrected paragraph only:\n\n"
                    "The quick brown fox jumpd over the lazy dog. Evry morning, the fox runs thru the forest to "
                    "find food for its famly, and evry evening it returns to its den near the river.",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from refspec.cli import add_model_argument, add_threads_argument
    from refspec.speculative import DRAFT_MAX

    add_model_argument(p)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where to run (default auto: the GPU when CuPy sees one)")
    add_threads_argument(p)
    p.add_argument("--repeats", type=int, default=None, metavar="N",  # (None: not given, see ignored_options)
                   help=f"runs of every measurement; the median is reported (default {REPEATS})")
    p.add_argument("--n-predict", type=int, default=None, metavar="N",
                   help=f"most new tokens per copy prompt (default {COPY_NEW_TOKENS}; generation also stops at end "
                        "of turn)")
    p.add_argument("--draft-max", type=int, default=None, metavar="K",
                   help=f"most draft tokens per verify pass (default {DRAFT_MAX})")
    p.add_argument("--quick", action="store_true",
                   help=f"a short run (1 greedy repeat of {QUICK_GREEDY_TOKENS} tokens, 2 copy prompts "
                        f"of {QUICK_COPY_TOKENS} tokens), for tests; --repeats and --n-predict are then ignored")
    p.add_argument("--json-out", metavar="FILE", help="also write every number, the hardware and the date as JSON")
    p.add_argument("--preset", metavar="NAME",
                   help="time a synthetic model of a real model's shapes instead of -m (llama-8b, qwen2.5-32b, ...: "
                        "written once to the cache); greedy decoding only, so --n-predict and --draft-max are ignored")
    p.add_argument("--no-graphs", action="store_true",
                   help="GPU: run every pass launch by launch instead of replaying captured graphs (to compare)")
    p.add_argument("--no-overlap", action="store_true",
                   help="GPU: launch each kernel after the one before it has finished, instead of overlapping "
                        "their boundaries (programmatic dependent launch, NVIDIA sm_90+; same bits), to compare")
    p.add_argument("--no-conditional", action="store_true",
                   help="GPU: capture each chained verify pass as one body computing its live rows, instead of "
                        "behind conditional graph nodes (NVIDIA, CUDA 12.4+; same bits), to compare")
    p.add_argument("--no-short-rows", action="store_true",
                   help="GPU: one-row GEMVs over rows of 3072-5120 values with one round of weight loads in "
                        "flight, instead of 2-3 where the grid fits the GPU (NVIDIA; same bits), to compare")
    p.add_argument("--no-even-blocks", action="store_true",
                   help="GPU: one- and two-row GEMVs over rows of 8192 or more values whose grid is one wave leave the "
                        "hardware to place their blocks, instead of holding each multiprocessor to an even share "
                        "(NVIDIA; same bits), to compare")
    p.add_argument("--no-resident", action="store_true",
                   help="GPU: tensor-core GEMVs whose thread blocks take several tiles copy the activations with "
                        "every tile, instead of once a block (NVIDIA sm_80+; same bits), to compare")
    p.add_argument("--mma-min-rows", type=int, default=None, metavar="R",
                   help="GPU: GEMVs of R or more rows on integer tensor cores (NVIDIA sm_80+; same bits)")
    p.add_argument("--mma-min-weights", type=int, default=None, metavar="W",
                   help="GPU: ... only of matrices of W or more weights (default 4194304: smaller ones are faster "
                        "on the dp4a kernel)")
    p.add_argument("--pass-rows", default="1,2,4,8,12,16", metavar="LIST",
                   help="GPU: rows of the forward passes timed for the rows curve (default 1,2,4,8,12,16)")
    p.add_argument("--pass-position", type=int, default=64, metavar="P",
                   help="GPU: the position of those passes, after a context of P tokens (default 64; e.g. 4000 to "
                        "time attention over a long context)")


def run(args) -> int:
    from refspec import checks
    from refspec.cli import device_words, load_model, load_tokenizer, make_cli_backend, note
    from refspec.errors import ContextLengthError, UsageError
    from refspec.forward import Transformer
    from refspec.generate import generate
    from refspec.speculative import DRAFT_MAX, MAX_DRAFT

    if args.preset:
        check_preset(args.preset)
        if args.model is not None:  # (here, not in an argparse group as bench cpu's: a script's args too)
            raise UsageError(f"-m {args.model} and --preset {args.preset} both name the model to time: give one")
    for flag, value in (("--repeats", args.repeats), ("--n-predict", args.n_predict)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.draft_max is not None and not 1 <= args.draft_max <= MAX_DRAFT:  # (before minutes of greedy decoding)
        raise UsageError(f"--draft-max must be in 1..{MAX_DRAFT} (the most guesses a verify pass takes), got "
                         f"{args.draft_max}")
    if args.mma_min_rows is not None and not 1 <= args.mma_min_rows <= 16:
        raise UsageError(f"--mma-min-rows must be in 1..16 (rows of one GEMV launch), got {args.mma_min_rows}")
    if args.mma_min_weights is not None and args.mma_min_weights < 0:
        raise UsageError(f"--mma-min-weights must be at least 0, got {args.mma_min_weights}")
    pass_rows = parse_rows(args.pass_rows)
    if args.pass_position < 1:  # (its upper bound, the model's context less the rows, is checked once it loads)
        raise UsageError(f"--pass-position must be in 1.. (a position of the model's context), got {args.pass_position}")
    if args.json_out:
        checks.output_file(args.json_out, "--json-out")
    for line in ignored_options(args):
        note(line)
    backend = make_cli_backend(args)  # before a preset's model is written: no GPU, no 8-34 GB file
    model = load_model(preset_model_path(args.preset, note) if args.preset else args.model)
    tok = load_tokenizer(model)
    if args.mma_min_rows is not None and backend.name == "gpu":
        backend.mma_min_rows = args.mma_min_rows
    if args.mma_min_weights is not None and backend.name == "gpu":
        backend.mma_min_weights = args.mma_min_weights
    if args.no_overlap and backend.name == "gpu":
        backend.overlap = False
    if args.no_short_rows and backend.name == "gpu":
        backend.short_rows = False
    if args.no_even_blocks and backend.name == "gpu":
        backend.even_blocks = False
    if args.no_resident and backend.name == "gpu":
        backend.resident_activations = False
    tf = Transformer(model, backend, graphs=False if args.no_graphs else None)
    if args.no_conditional and tf.graphs is not None:
        tf.graphs.conditional = None
    if args.quick:
        repeats, n_greedy, n_copy = 1, QUICK_GREEDY_TOKENS, QUICK_COPY_TOKENS
    else:
        repeats = REPEATS if args.repeats is None else args.repeats
        n_greedy, n_copy = GREEDY_NEW_TOKENS, COPY_NEW_TOKENS if args.n_predict is None else args.n_predict
    draft_max = DRAFT_MAX if args.draft_max is None else args.draft_max
    prompts = dict(list(COPY_PROMPTS.items())[:2]) if args.quick else COPY_PROMPTS
    if not args.preset:  # (presets run no copy prompts)
        for name, text in prompts.items():
            n = len(copy_prompt_ids(tok, text))
            if n >= tf.config.n_ctx:
                raise ContextLengthError(f"the copy prompt {name!r} has {n} tokens; the model's context holds "
                                         f"{tf.config.n_ctx}, too few for it and an answer")
    if backend.name == "gpu" and not 1 <= args.pass_position <= tf.config.n_ctx - max(pass_rows) - 8:
        raise UsageError(f"--pass-position must be in 1..{tf.config.n_ctx - max(pass_rows) - 8} (the context length "
                         f"{tf.config.n_ctx} less the rows), got {args.pass_position}")
    note(f"model {model.config.arch}, {model.config.n_layer} layers, device {device_words(backend)}")

    generate(tf, tok.encode(GREEDY_PROMPT)[:4], 2, eog_ids=())  # warm up: the first pass touches every weight page
    greedy = bench_greedy(tf, tok, repeats, n_greedy)
    note(f"greedy: {greedy['tokens_per_second_median']} tokens/s (median of {repeats})")
    copy = None
    if not args.preset:
        copy = bench_copy_prompts(tf, tok, prompts, n_copy, draft_max, note, repeats)
    device = None
    if backend.name == "gpu":
        device = bench_device(tf, pass_rows, 5 if args.quick else 30, args.pass_position)
        device["greedy_fraction_of_roofline"] = round(
            greedy["tokens_per_second_median"] / device["roofline_tokens_per_second"], 4)
        note(f"read ceiling {device['read_gb_per_second']} GB/s, roofline {device['roofline_tokens_per_second']} "
             f"tokens/s; greedy at {device['greedy_fraction_of_roofline']:.1%} of it")
    mtp = None
    if tf.weights.mtp is not None:
        mtp = bench_mtp_step(tf, 3 if args.quick else 30)
        note(f"MTP draft step {mtp['draft_step_ms']} ms, {mtp['draft_over_step']}x a one-row step of the model")

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(backend),
        "model": {"path": str(model.path), "name": model.metadata.get("general.name"), "arch": model.config.arch,
                  "n_layer": model.config.n_layer, "n_embd": model.config.n_embd, "n_vocab": model.config.n_vocab},
        "quick": bool(args.quick),
        "graphs": tf.graphs is not None,
        "overlap": bool(getattr(backend, "overlap", False)),
        "conditional": tf.graphs is not None and tf.graphs.conditional is not None,
        "conditional_node": (None if tf.graphs is None or tf.graphs.conditional is None  # chained verify passes
                             else "switch" if tf.graphs.conditional.switch else "if"),
        "short_rows": bool(getattr(backend, "short_rows", False)),
        "even_blocks": bool(getattr(backend, "even_blocks", False)),
        "resident_activations": bool(getattr(backend, "resident_activations", False)),
        "greedy": greedy,
        "speculative": copy,
        "device": device,
        "mtp": mtp,
    }
    print_tables(report)
    if args.json_out:
        checks.write_json(args.json_out, report, "--json-out")
    if copy and copy["mismatches"]:
        print(f"MISMATCH: {len(copy['mismatches'])} speculative outputs differ from greedy: "
              f"{', '.join(copy['mismatches'])}", file=sys.stderr)
        return 1
    return 0


def ignored_options(args) -> list[str]:
    """Notes for options given that the run does not use: --preset runs no copy prompts (so no --n-predict, no
    --draft-max), --quick sets its own repeats and token counts."""
    def given(*names):
        return [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in names
                if getattr(args, name) is not None]

    notes = []
    if args.preset and given("n_predict", "draft_max"):
        notes.append(f"note: {', '.join(given('n_predict', 'draft_max'))} ignored: --preset times greedy decoding "
                     "only (its random weights copy nothing: no copy prompts run)")
    quick = given("repeats") + ([] if args.preset else given("n_predict"))
    if args.quick and quick:
        notes.append(f"note: {', '.join(quick)} ignored: --quick runs every measurement once"
                     + ("" if args.preset else f", with {QUICK_COPY_TOKENS} new tokens per copy prompt"))
    return notes


def check_preset(name: str) -> None:
    """UsageError unless `name` is a preset of refspec.synthetic."""
    from refspec.errors import UsageError
    from refspec.synthetic import PRESETS

    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))}")


def preset_model_path(name: str, note):
    """The synthetic model of preset `name`, written to the cache the first time (atomically)."""
    import pathlib

    from refspec.default_model import default_cache_dir
    from refspec.synthetic import PRESETS, write_model

    check_preset(name)
    path = default_cache_dir() / "synthetic" / f"{name}.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        note(f"writing the synthetic {name} model to {path} (once)")
        tmp = path.with_suffix(f".tmp{os.getpid()}.gguf")
        try:
            write_model(tmp, **PRESETS[name], log=lambda line: note(line.removeprefix("refspec: ")))
            os.replace(tmp, path)
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)
    return str(path)


def parse_rows(text: str) -> list[int]:
    from refspec.errors import UsageError

    try:
        rows = [int(r) for r in text.split(",")]
    except ValueError:
        raise UsageError(f"--pass-rows: expected a comma-separated list of integers, got {text!r}") from None
    if not rows or any(not 1 <= r <= 64 for r in rows):
        raise UsageError(f"--pass-rows: each R must be in 1..64, got {text!r}")
    return rows


def bench_device(tf, pass_rows: list[int], repeats: int, position: int = 64) -> dict:
    """(c): the read ceiling, the roofline, and the times of forward passes of each of pass_rows rows at
    `position` (after a context of that many tokens)."""
    from refspec.bench_gemv import _Timer, read_bandwidth

    be = tf.be
    read_bw = read_bandwidth(be, _Timer(be.cp, 20))
    per_token = weight_bytes_per_token(tf)
    # every timed pass continues the state after the context (qwen35): the ring keeps it past 16 rows
    cache = tf.new_cache(min(tf.config.n_ctx, position + max(pass_rows) + 8), n_states=max(pass_rows) + 1)
    for start in range(0, position, 256):  # the context for the timed steps
        tf.forward(cache, [1] * min(256, position - start), start)
    times = {}
    for rows in pass_rows:
        ids = [(7 * i + 3) % tf.config.n_vocab for i in range(rows)]
        times[rows] = time_pass(be, lambda: tf.forward(cache, ids, position), repeats)
    base = times.get(1)
    return {
        "read_gb_per_second": round(read_bw / 1e9, 1),
        "weight_bytes_per_token": per_token,
        "roofline_tokens_per_second": round(read_bw / per_token, 1),
        "roofline_ms_per_token": round(1e3 * per_token / read_bw, 3),
        "pass_position": position,
        "pass_ms": {str(r): round(t * 1e3, 3) for r, t in times.items()},
        "pass_over_one_row": {str(r): round(t / base, 3) for r, t in times.items()} if base else None,
        "pass_repeats": repeats,
    }


def time_pass(be, run, repeats: int) -> float:
    """The median seconds of run() (a forward pass), synchronised, after three unmeasured runs (the first
    captures a graph)."""
    import time

    for _ in range(3):
        run()
    be.synchronize()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        be.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bench_mtp_step(tf, repeats: int) -> dict:
    """(d): one MTP draft step (forward(..., mtp_from=one hidden row): the MTP block and the LM head over one
    row), and a one-row step of the model at the same position for scale."""
    import numpy as np

    be = tf.be
    n_pos = min(tf.config.n_ctx, 72)
    pos = min(64, n_pos - 1)
    cache = tf.new_cache(n_pos, n_states=2)  # the repeated model step continues the state after pos-1
    ids = [(7 * i + 3) % tf.config.n_vocab for i in range(n_pos)]
    _, hidden = tf.forward(cache, ids[:pos], 0, hidden=True)  # the model's keys, values, states, hidden rows
    hidden = be.to_host(hidden)
    before = np.concatenate([np.zeros((1, hidden.shape[1]), np.float32), hidden[:-1]])  # h of positions p-1
    tf.forward(cache, ids[:pos], 0, mtp_from=be.asarray(before))  # the MTP block's keys and values
    h = be.asarray(hidden[-1:])
    draft = time_pass(be, lambda: tf.forward(cache, ids[pos : pos + 1], pos, mtp_from=h), repeats)
    step = time_pass(be, lambda: tf.forward(cache, ids[pos : pos + 1], pos), repeats)
    return {"draft_step_ms": round(draft * 1e3, 3), "model_step_ms": round(step * 1e3, 3),
            "draft_over_step": round(draft / step, 4), "position": pos, "repeats": repeats}


def weight_bytes_per_token(tf) -> int:
    """Bytes of Q8_0 weights one pass reads, from the uploaded weights: the model's layers' matrices and the
    output head (the embedding lookup reads a row per token, left out; a tied head counts once; an MTP block
    is not part of a pass of the model)."""
    w = tf.weights
    seen, total = set(), 0
    for m in [w.output] + [m for lw in w.layers[: tf.config.n_layer] for m in vars(lw).values()]:
        if hasattr(m, "q") and hasattr(m, "d") and id(m) not in seen:
            seen.add(id(m))
            total += m.q.nbytes + m.d.nbytes
    return total


def bench_greedy(tf, tok, repeats: int, n_new: int) -> dict:
    """(a): greedy decoding of n_new tokens after a GREEDY_PROMPT_TOKENS-token prompt, `repeats` times after
    one warm-up run."""
    from refspec.generate import generate

    prompt = (tok.encode(GREEDY_PROMPT) * GREEDY_PROMPT_TOKENS)[:GREEDY_PROMPT_TOKENS]
    generate(tf, prompt, n_new, eog_ids=())  # a full warm-up run: the first runs of a process are slower (page mapping)
    runs = [generate(tf, prompt, n_new, eog_ids=()).stats for _ in range(repeats)]  # always n_new tokens
    speeds = [s["tokens_per_second"] for s in runs]
    return {"prompt_tokens": len(prompt), "new_tokens": n_new, "repeats": repeats,
            "tokens_per_second": speeds, "tokens_per_second_median": statistics.median(speeds),
            "prompt_tokens_per_second_median": statistics.median(s["prompt_tokens_per_second"] for s in runs),
            "ms_per_token_median": round(1e3 / statistics.median(speeds), 3)}


def median_run(run, repeats: int):
    """Run `run()` `repeats` times; the result whose decoding time is the median (the outputs are equal)."""
    results = sorted((run() for _ in range(repeats)), key=lambda r: r.stats["decode_seconds"])
    return results[len(results) // 2]


def copy_prompt_ids(tok, text: str) -> list[int]:
    """A copy prompt as the benchmark feeds it: one user message, chat-templated."""
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True)


def bench_copy_prompts(tf, tok, prompts: dict, n_predict: int, draft_max: int, note, repeats: int = 1) -> dict:
    """(b): each prompt, chat-templated, decoded greedily and with each drafter (each the median of
    `repeats` runs by decoding time); outputs compared."""
    from refspec.generate import generate
    from refspec.speculative import make_drafter, speculative_generate

    drafters = DRAFTERS + (("mtp",) if tf.weights.mtp is not None else ())
    rows, mismatches = [], []
    for name, text in prompts.items():
        ids = copy_prompt_ids(tok, text)
        n_new = min(n_predict, tf.config.n_ctx - len(ids))  # a short context (a test model) cuts the answer
        reference = median_run(lambda: generate(tf, ids, n_new, eog_ids=tok.eog_ids), repeats)
        rows.append(run_row(name, "greedy", reference, reference))
        for drafter in drafters:
            result = median_run(lambda: speculative_generate(tf, ids, n_new, drafter=make_drafter(drafter, tf),
                                                             draft_max=draft_max, eog_ids=tok.eog_ids), repeats)
            rows.append(run_row(name, drafter, result, reference))
            if not rows[-1]["identical"]:
                mismatches.append(f"{name}/{drafter}")
            note(f"{name} {drafter}: {rows[-1]['tokens_per_second']} tokens/s, "
                 f"{rows[-1]['mean_tokens_per_pass']} tokens per pass, identical: {rows[-1]['identical']}")
    totals = {}
    for method in ("greedy",) + drafters:
        mine = [r for r in rows if r["method"] == method]
        tokens = sum(r["n_tokens"] - 1 for r in mine)  # the first token comes from the prompt's pass
        seconds = sum(r["decode_seconds"] for r in mine)
        passes = sum(r["n_passes"] for r in mine)
        drafted = sum(r.get("n_drafted") or 0 for r in mine)
        accepted = sum(r.get("n_accepted") or 0 for r in mine)
        totals[method] = {"tokens_per_second": round(tokens / seconds, 3) if seconds else None,
                          "mean_tokens_per_pass": round(tokens / passes, 4) if passes else None,
                          "acceptance_rate": round(accepted / drafted, 4) if drafted else None}
    for method in drafters:
        base, mine = totals["greedy"]["tokens_per_second"], totals[method]["tokens_per_second"]
        totals[method]["speedup"] = round(mine / base, 3) if base and mine else None
    return {"n_predict": n_predict, "draft_max": draft_max, "runs": rows, "totals": totals,
            "mismatches": mismatches}


def run_row(prompt: str, method: str, result, reference) -> dict:
    keys = ("n_prompt_tokens", "n_tokens", "n_passes", "decode_seconds", "tokens_per_second", "n_drafted",
            "n_accepted", "acceptance_rate", "mean_tokens_per_pass", "accepted_histogram", "verify_ms_mean",
            "single_step_ms", "draft_seconds")
    row = {"prompt": prompt, "method": method, "stop_reason": result.stop_reason}
    row.update({k: result.stats.get(k) for k in keys})
    if method == "greedy":
        row["mean_tokens_per_pass"] = 1.0
        passes = row["n_passes"]
        row["single_step_ms"] = round(1e3 * row["decode_seconds"] / passes, 3) if passes else None
    row["identical"] = result.ids == reference.ids and result.stop_reason == reference.stop_reason
    return row


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), or what platform knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def hardware(backend) -> dict:
    info = {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "device": backend.name}
    if backend.name != "cpu":
        info["gpu"] = gpu_name(backend)
    else:
        info["threads"] = backend.running_threads
    return info


def gpu_name(backend) -> str | None:
    name = getattr(backend, "device_name", None)
    if name:
        return str(name)
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:  # noqa: BLE001 (the name is a nicety: the report goes on without it)
        return None


def print_tables(report: dict) -> None:
    hw, g = report["hardware"], report["greedy"]
    print(f"refspec bench decode, {report['date']}, {hw['cpu']} ({hw['cpu_cores']} cores), device {hw['device']}"
          + (f" ({hw['gpu']})" if hw.get("gpu") else "")
          + (f", {hw['threads']} threads" if "threads" in hw else ""))
    print(f"model {report['model']['name'] or report['model']['path']}")
    print(f"\n(a) greedy, {g['prompt_tokens']}-token prompt, {g['new_tokens']} new tokens, "
          f"median of {g['repeats']}: "
          f"{g['tokens_per_second_median']} tokens/s ({g['ms_per_token_median']} ms/token); "
          f"prompt {g['prompt_tokens_per_second_median']} tokens/s")
    d = report.get("device")
    if d:
        print(f"\n(c) read ceiling {d['read_gb_per_second']} GB/s; {d['weight_bytes_per_token'] / 1e9:.3f} GB of weights "
              f"per token: roofline {d['roofline_tokens_per_second']} tokens/s; greedy at "
              f"{d['greedy_fraction_of_roofline']:.1%} of it (graphs {'on' if report['graphs'] else 'off'})")
        print(f"    forward pass at position {d['pass_position']}, R rows: " + "  ".join(
            f"R={r} {ms} ms ({d['pass_over_one_row'][r]}x)" for r, ms in d["pass_ms"].items()))
    m = report.get("mtp")
    if m:
        print(f"\n(d) MTP draft step (one row through the MTP block and the LM head, position {m['position']}): "
              f"{m['draft_step_ms']} ms, {m['draft_over_step']}x a one-row step of the model ({m['model_step_ms']} ms)")
    s = report["speculative"]
    if not s:
        return
    print(f"\n(b) copy-heavy chat prompts, up to {s['n_predict']} new tokens, draft_max {s['draft_max']}")
    header = f"{'prompt':<16}{'method':<11}{'tokens':>7}{'tok/s':>9}{'tok/pass':>10}{'accept':>8}{'identical':>11}"
    print(header)
    print("-" * len(header))
    for r in s["runs"]:
        acc = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.2f}"
        tps = "-" if r["tokens_per_second"] is None else f"{r['tokens_per_second']:.2f}"
        print(f"{r['prompt']:<16}{r['method']:<11}{r['n_tokens']:>7}{tps:>9}{r['mean_tokens_per_pass']:>10.2f}"
              f"{acc:>8}{'yes' if r['identical'] else 'MISMATCH':>11}")
    print("-" * len(header))
    for method, t in s["totals"].items():
        speed = "" if "speedup" not in t else f", {t['speedup']}x greedy"
        acc = "-" if t["acceptance_rate"] is None else f"{t['acceptance_rate']:.2f}"
        tps, per_pass = t["tokens_per_second"] or "-", t["mean_tokens_per_pass"] or "-"
        print(f"{'all':<16}{method:<11}{'':>7}{tps:>9}{per_pass:>10}{acc:>8}{speed}")
