"""Replay the speculative loop offline, to compare n-gram drafting policies without a GPU (a tool, not a test):

    python tests/replay_ngram.py [--draft-max 7] [--other] [-m MODEL] [--cache FILE]

Greedy decoding of each of `refspec bench decode`'s four copy prompts (chat-templated, up to 128 new tokens,
stopping at end of turn), and with --other of seven more chat prompts (three that copy, four that write
freely), runs once on the CPU; its ids are cached (--cache). Every verify pass is then replayed as
refspec/speculative.py's loop runs it on a GPU (k = draft_max for the cheap ngram drafter, capped so a pass
yields at most the tokens left): the drafter proposes from the context; the accepted guesses are the longest
prefix of its proposal equal to greedy's continuation; the pass yields them and one token more, stopping
early at an end-of-generation token or the budget. Because the loop's output is greedy's whatever the
drafter proposes, the greedy ids are all a replay needs.

Each pass is costed as measured on the H200 (tests/results/bench_decode_default_h200.json, default model):
HOST_MS of host time plus the device time of a pass of its rows (PASS_MS, linear between the points
measured), against greedy's GREEDY_MS a token (chained graph replays); the library's NgramDrafter adds
its drafting time, measured here. Drafters compared:
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

# One pass of the speculative loop on the H200, default model, positions ~100-250: host (acceptance, drafting
# excluded, launch, transfer) plus device time of a pass of R rows, replayed; greedy's cost a token.
HOST_MS = 0.16
PASS_MS = ((1, 0.61), (8, 0.738), (16, 0.841))  # (rows, ms): linear between, and past the last two
GREEDY_MS = 0.70
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


def pass_ms(rows: int) -> float:
    """HOST_MS plus a pass of `rows` rows, linear between the measured points of PASS_MS."""
    (r0, t0), (r1, t1) = next((a, b) for a, b in zip(PASS_MS, PASS_MS[1:]) if rows <= b[0] or b == PASS_MS[-1])
    return HOST_MS + t0 + (t1 - t0) * (rows - r0) / (r1 - r0)


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


def replay(run: dict, drafter, draft_max: int) -> dict:
    """The loop of refspec.speculative._speculative_generate over greedy's ids, k = draft_max (not adaptive)."""
    prompt, greedy, eog = run["prompt_ids"], run["ids"], set(run["eog_ids"])
    out = greedy[:1]  # the prompt's pass chooses the first token
    drafter.begin(None)
    n_passes = n_drafted = n_accepted = 0
    ms, draft_seconds = 0.0, 0.0
    while out[-1] not in eog and len(out) < N_PREDICT:
        k = min(draft_max, N_PREDICT - len(out) - 1)
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
        n_passes, n_drafted, n_accepted = n_passes + 1, n_drafted + len(drafts), n_accepted + n_ok
        ms += pass_ms(len(drafts) + 1)
    assert out == greedy
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
    p.add_argument("--cache", type=pathlib.Path, default=pathlib.Path("/tmp/refspec-replay/greedy.json"),
                   help="where greedy's ids are kept (default /tmp/refspec-replay/greedy.json)")
    args = p.parse_args()
    runs = greedy_runs(args.model, OTHER_PROMPTS if args.other else COPY_PROMPTS, args.cache)
    drafters = {"previous": lambda: ScanNgramDrafter(first=False), "first": lambda: ScanNgramDrafter(first=True),
                "ngram": NgramDrafter}
    print(f"draft_max {args.draft_max}; a pass costs {HOST_MS} ms + "
          + ", ".join(f"{r} rows {t} ms" for r, t in PASS_MS) + f"; greedy {GREEDY_MS} ms a token")
    print(f"{'prompt':<16}{'drafter':<10}{'tokens':>7}{'passes':>7}{'tok/pass':>9}{'accept':>8}{'tok/s':>8}"
          f"{'speedup':>9}{'drafting ms':>13}{'with it':>9}")
    totals = {name: Counter() for name in drafters}
    for prompt, run in runs.items():
        for name, make in drafters.items():
            r = replay(run, make(), args.draft_max)
            if name == "ngram":  # the least drafting time of three replays (the scans' time is not the point)
                r["draft_ms"] = min([r["draft_ms"]] + [replay(run, make(), args.draft_max)["draft_ms"]
                                                       for _ in range(2)])
            totals[name].update(r)
            print_row(prompt, name, r)
    for name, t in totals.items():
        print_row("all", name, t)


def print_row(prompt: str, drafter: str, r) -> None:
    """tok/s and speedup from the passes' cost alone; for the library's drafter, its drafting time and the
    speedup with it."""
    accept = r["accepted"] / r["drafted"] if r["drafted"] else 0.0
    greedy_ms = r["tokens"] * GREEDY_MS
    line = (f"{prompt:<16}{drafter:<10}{r['tokens']:>7}{r['passes']:>7}{r['tokens'] / r['passes']:>9.2f}"
            f"{accept:>8.2f}{1e3 * r['tokens'] / r['pass_ms']:>8.0f}{greedy_ms / r['pass_ms']:>8.3f}x")
    if drafter == "ngram":
        line += f"{r['draft_ms']:>13.2f}{greedy_ms / (r['pass_ms'] + r['draft_ms']):>8.3f}x"
    print(line)


if __name__ == "__main__":
    main()
