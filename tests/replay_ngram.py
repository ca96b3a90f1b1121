"""Replay the speculative loop offline, to compare n-gram drafting policies without a GPU (a tool, not a test):

    python tests/replay_ngram.py [--draft-max 7] [--other] [--cold-max K] [-m MODEL] [--cache FILE]
                                 [--cost host-loop|chained|chained-active|graph-widths|few-blocks]

Greedy decoding of each of `refspec bench decode`'s four copy prompts (chat-templated, up to 128 new tokens,
stopping at end of turn), and with --other of seven more chat prompts (three that copy, four that write
freely), runs once on the CPU; its ids are cached (--cache). Every verify pass is then replayed as
refspec/speculative.py's loop runs it on a GPU (k = draft_max for the cheap ngram drafter, capped so a pass
yields at most the tokens left): the drafter proposes from the context; the accepted guesses are the longest
prefix of its proposal equal to greedy's continuation; the pass yields them and one token more, stopping
early at an end-of-generation token or the budget. Because the loop's output is greedy's whatever the
drafter proposes, the greedy ids are all a replay needs.

Each pass is costed as measured on the H200 (default model; --cost picks one of COSTS below): host time plus
the device time of a pass of its rows, against greedy's time a token (chained graph replays); the library's
NgramDrafter adds its drafting time, measured here (the chained costs run it on the device). Drafters compared:
  * previous: the rule of commit 1561abd and before: among the n-gram's occurrences followed by its most
    common next token, the latest (a scan of the context);
  * first:    the same, but the first of them (a scan; no cap on the guesses from a one-token match);
  * ngram:    refspec.speculative.NgramDrafter as it is now (its index, and its drafting time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import time
from collections import Counter

from refspec.speculative import DRAFT_MAX, Drafter, NgramDrafter

# How a pass is costed (--cost): (host ms a pass, (rows, ms) of the device's pass: linear between and past the last
# two, greedy's ms a token, whether every pass has draft_max + 1 rows, passes of draft_max + 1 rows queued past
# each run's end and waited for), measured on the H200, default model.
#   host-loop: the loop on the host (refspec/speculative.py with chain=False): host time (acceptance, launch,
#     transfer; drafting apart) plus a pass of 1 + guesses rows replayed at position 64 (2026-12-02 01:44 UTC);
#   chained: passes chained on the device (the default on a GPU): no host time, draft_max + 1 rows every pass,
#     at the copy prompts' positions (~120-200): 8 rows 0.87 ms on edit-code, 16 rows 1.04 ms (from the 15-guess
#     run's 1.60x at 2.40 tokens a pass), a greedy step 0.694 ms (2026-12-02 03:40-03:44 UTC; these are means over
#     a run's passes, the two then queued past its end included, so none is added);
#   chained-active: the passes as they run since 05:15 UTC, computing only their first 1 + guesses rows
#     (GpuBackend.live_rows): one row 0.685 ms (fitted so that this loop, with the pass queued past each run's
#     end, gives the measured 1.86x), 8 / 16 rows 0.13 / 0.257 ms more (forward passes at position 64), greedy
#     0.654 ms a token (1528.5 tok/s on the copy prompts; 2026-12-02 05:15 UTC). Optimistic where a pass's live
#     rows are neither one nor all of them (the dp4a GEMV then computes all of them): with the ngram drafter at
#     7 guesses that never happens; at 15, a one-token match's 7 guesses are 8 of 16 rows.
#   graph-widths: the passes as they run since 07:06 UTC (the step between passes in parallel, the first
#     guesses drafted on the device): forward pass + argmax of a graph of draft_max + 1 rows (8, 12 or 16)
#     computing its first 1 + guesses rows, WIDTH_COSTS, measured on edit-code's context
#     (tests/results/profile_spec_widths_default_h200.json; the dp4a GEMV computes a whole group of rows, so a
#     count between two points costs the upper one), plus 0.0185 ms a pass for the rest (the step, the copy of
#     its result, the run's first and last passes: fitted so that 7 guesses give the measured 1.96x; 11 then
#     give 1.97x, measured 1.969x), greedy 0.6508 ms a token (1536.6 tok/s; 2026-12-02 07:06 UTC).
#   few-blocks: the same since the down projection's 8-row GEMV runs GEMV_FEW_BLOCKS (2026-12-02 09:03 UTC):
#     graphs of 8 rows only, 0.668 / 0.761 ms at 1 / 8 live rows (tests/results/profile_spec_default_h200.json),
#     0.733 at 2 (0.0285 less than at 8, tests/results/profile_configs_rule_default_h200.json), 0.024 ms a pass
#     for the rest (fitted to the measured 1.983x), greedy 0.6519 ms a token (1533.9 tok/s).
WIDTH_COSTS = {8: ((1, 0.662), (8, 0.787)), 12: ((1, 0.680), (8, 0.797), (12, 0.917)),
               16: ((1, 0.754), (8, 0.862), (16, 0.916))}
FEW_BLOCKS_COSTS = {8: ((1, 0.668), (2, 0.733), (8, 0.761))}
COSTS = {
    "host-loop": (0.16, ((1, 0.61), (8, 0.738), (16, 0.841)), 0.70, False, 0),
    "chained": (0.0, ((1, 0.694), (8, 0.87), (16, 1.04)), 0.694, True, 0),
    "chained-active": (0.0, ((1, 0.685), (8, 0.815), (16, 0.942)), 0.654, False, 1),
    "graph-widths": (0.0185, WIDTH_COSTS, 0.6508, False, 0),
    "few-blocks": (0.024, FEW_BLOCKS_COSTS, 0.6519, False, 0),
}
N_PREDICT = 128

OTHER_PROMPTS = {
    "csv-table": "Convert this CSV to a markdown table, keeping every value:\n\nname,age,city\nAlice,34,Paris\n"
                 "Bob,29,Berlin\nCarol,41,Madrid\nDave,25,Rome",
    "fix-indent": "Fix the indentation of this Python code and return the whole code:\n\n```python\n"
                  "def greet(name):\nprint('Hello, ' + name)\nif name == 'Bob':\nprint('Welcome back!')\n"
                  "return name\n```",
    "json-edit": "Change the price of the apple to 1.25 in this JSON and return the whole JSON:\n\n"
                 "{\"items\": [{\"name\": \"apple\", \"price\": 0.99, \"stock\": 120}, {\"name\": \"banana\", "
                 "\"price\": 0.49, \"stock\": 80}, {\"name\": \"cherry\", \"price\": 3.10, \"stock\": 15}]}",
    "story": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "explain": "Explain in a few sentences how a hash table works.",
    "poem": "Write a poem about autumn leaves.",
    "summarize": "Summarize this paragraph in one sentence:\n\nThe city council met on Tuesday to discuss the new "
                 "park. Residents asked for more trees, a playground and better lighting. The council agreed to "
                 "fund the playground this year and the lighting next year, but said the trees depend on a grant.",
}


def pass_ms(cost: str, rows: int, width: int) -> float:
    """A pass of `rows` rows (computed; `width`: its graph's rows) by the cost model `cost`: its host time plus
    the device's, linear between the measured points (graph-widths: the next point up, from the graph's
    width)."""
    host, points = COSTS[cost][:2]
    if isinstance(points, dict):  # costs by graph width: the next point up
        return host + next(t for r, t in points[width] if rows <= r)
    (r0, t0), (r1, t1) = next((a, b) for a, b in zip(points, points[1:]) if rows <= b[0] or b == points[-1])
    return host + t0 + (t1 - t0) * (rows - r0) / (r1 - r0)


def greedy_runs(model_path: str | None, prompts: dict, cache: pathlib.Path) -> dict:
    """{name: {prompt_ids, ids, eog_ids}}: greedy decoding of each chat-templated prompt on the CPU, kept
    in `cache` by model file and prompt text (each run once)."""
    import refspec

    path = str(model_path or refspec.default_model_path())
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    runs, tf, tok = {}, None, None
    for name, text in prompts.items():
        key = hashlib.sha256(json.dumps([path, text, N_PREDICT]).encode()).hexdigest()
        if key not in stored:
            if tf is None:
                model = refspec.load(path, log=lambda m: None)
                tok = refspec.Tokenizer.from_metadata(model.metadata)
                tf = refspec.Transformer(model, refspec.make_backend("cpu"))
            ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))
            print(f"greedy decoding of {name} on the CPU (once)", file=sys.stderr)
            result = refspec.generate(tf, ids, N_PREDICT, eog_ids=tok.eog_ids)
            stored[key] = {"prompt_ids": ids, "ids": result.ids, "eog_ids": sorted(tok.eog_ids)}
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(stored))
        runs[name] = stored[key]
    return runs


def replay(run: dict, drafter, draft_max: int, cost: str, cold_max: int | None = None) -> dict:
    """The loop of refspec.speculative._speculative_generate over greedy's ids, k = draft_max (not adaptive;
    with cold_max, at most cold_max after a pass that did not accept all its guesses, or guessed none)."""
    prompt, greedy, eog = run["prompt_ids"], run["ids"], set(run["eog_ids"])
    out = greedy[:1]  # the prompt's pass chooses the first token
    drafter.begin(None)
    n_passes = n_drafted = n_accepted = 0
    ms, draft_seconds = 0.0, 0.0
    warm = False  # the last pass accepted all its guesses (at least one)
    while out[-1] not in eog and len(out) < N_PREDICT:
        k = min(draft_max if warm or cold_max is None else min(draft_max, cold_max), N_PREDICT - len(out) - 1)
        t0 = time.perf_counter()
        drafts = drafter.propose(prompt + out, k)[:k] if k else []
        draft_seconds += time.perf_counter() - t0
        n_ok = 0
        for j in range(len(drafts) + 1):  # the accept rule
            out.append(greedy[len(out)])
            right = j < len(drafts) and out[-1] == drafts[j]
            n_ok += right
            if out[-1] in eog or len(out) >= N_PREDICT or not right:
                break
        drafter.accepted(len(drafts), n_ok)
        warm = 0 < len(drafts) == n_ok
        n_passes, n_drafted, n_accepted = n_passes + 1, n_drafted + len(drafts), n_accepted + n_ok
        ms += pass_ms(cost, draft_max + 1 if COSTS[cost][3] else len(drafts) + 1, draft_max + 1)
    assert out == greedy
    ms += COSTS[cost][4] * pass_ms(cost, draft_max + 1, draft_max + 1)  # queued past the end, waited for
    return {"tokens": len(greedy) - 1, "passes": n_passes, "drafted": n_drafted, "accepted": n_accepted,
            "pass_ms": ms, "draft_ms": 1e3 * draft_seconds}


class ScanNgramDrafter(Drafter):
    """An n-gram rule by a scan of the whole context (n = max_n down to 1): of the occurrences followed by the
    trailing n-gram's most common next token (ties: as for the occurrences), the latest or the first."""

    def __init__(self, first: bool, max_n: int = 4):
        self.first, self.max_n = first, max_n

    def propose(self, ids: list[int], k: int) -> list[int]:
        for n in range(min(self.max_n, len(ids) - 1), 0, -1):
            starts = [s + n for s in range(len(ids) - n) if ids[s : s + n] == ids[len(ids) - n :]]
            if starts:
                counts = Counter(ids[s] for s in starts)
                most = [s for s in starts if counts[ids[s]] == max(counts.values())]
                start = most[0] if self.first else most[-1]
                copy = ids[start : start + k]
                while len(copy) < k:
                    copy.append(copy[-(len(ids) - start)])
                return copy
        return []


def main() -> None:
    from refspec.bench_decode import COPY_PROMPTS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", help="GGUF file (default: the default model)")
    p.add_argument("--draft-max", type=int, default=DRAFT_MAX, help=f"guesses a pass (default {DRAFT_MAX})")
    p.add_argument("--other", action="store_true", help="the seven other prompts instead of the copy prompts")
    p.add_argument("--cost", choices=sorted(COSTS), default="host-loop",
                   help="how a pass is costed (default host-loop; see COSTS in the source)")
    p.add_argument("--cold-max", type=int, help="at most this many guesses after a pass that did not accept all of "
                   "its guesses (default: draft_max every pass)")
    p.add_argument("--cache", type=pathlib.Path, default=pathlib.Path("/tmp/refspec-replay/greedy.json"),
                   help="where greedy's ids are kept (default /tmp/refspec-replay/greedy.json)")
    args = p.parse_args()
    runs = greedy_runs(args.model, OTHER_PROMPTS if args.other else COPY_PROMPTS, args.cache)
    drafters = {"previous": lambda: ScanNgramDrafter(first=False), "first": lambda: ScanNgramDrafter(first=True),
                "ngram": NgramDrafter}
    host, points, greedy, fixed, _ = COSTS[args.cost]
    if isinstance(points, dict):
        if args.draft_max + 1 not in points:
            p.error(f"--cost {args.cost} has graphs of {sorted(points)} rows: --draft-max one less")
        points = points[args.draft_max + 1]
    print(f"draft_max {args.draft_max}; cost {args.cost}: a pass costs {host} ms + "
          + ", ".join(f"{r} rows {t} ms" for r, t in points) + f"; greedy {greedy} ms a token"
          + ("; every pass draft_max + 1 rows" if fixed else ""))
    print(f"{'prompt':<16}{'drafter':<10}{'tokens':>7}{'passes':>7}{'tok/pass':>9}{'accept':>8}{'tok/s':>8}"
          f"{'speedup':>9}{'drafting ms':>13}{'with it':>9}")
    totals = {name: Counter() for name in drafters}
    for prompt, run in runs.items():
        for name, make in drafters.items():
            r = replay(run, make(), args.draft_max, args.cost, args.cold_max)
            if name == "ngram":  # the least drafting time of three replays (the scans' time is not the point)
                r["draft_ms"] = min([r["draft_ms"]] + [replay(run, make(), args.draft_max, args.cost,
                                                              args.cold_max)["draft_ms"]
                                                       for _ in range(2)])
            totals[name].update(r)
            print_row(prompt, name, r, greedy, args.cost == "host-loop")
    for name, t in totals.items():
        print_row("all", name, t, greedy, args.cost == "host-loop")


def print_row(prompt: str, drafter: str, r, greedy_token_ms: float, host_drafting: bool) -> None:
    """tok/s and speedup from the passes' cost alone; for the library's drafter drafting on the host, its
    drafting time and the speedup with it."""
    accept = r["accepted"] / r["drafted"] if r["drafted"] else 0.0
    greedy_ms = r["tokens"] * greedy_token_ms
    line = (f"{prompt:<16}{drafter:<10}{r['tokens']:>7}{r['passes']:>7}{r['tokens'] / r['passes']:>9.2f}"
            f"{accept:>8.2f}{1e3 * r['tokens'] / r['pass_ms']:>8.0f}{greedy_ms / r['pass_ms']:>8.3f}x")
    if drafter == "ngram" and host_drafting:
        line += f"{r['draft_ms']:>13.2f}{greedy_ms / (r['pass_ms'] + r['draft_ms']):>8.3f}x"
    print(line)


if __name__ == "__main__":
    main()
