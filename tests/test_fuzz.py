"""Seeded fuzzing: a few hundred mutations of a small synthetic GGUF (bytes flipped, extreme numbers written
into the header, truncation, metadata keys rewritten with values of every GGUF type, weights overwritten),
each loaded, tokenized with, run for two tokens and decoded. Every case must end in success or a RefspecError
(never another exception) within CASE_SECONDS, all of it in a child process whose address space is limited.

The same seed gives the same cases; `python tests/test_fuzz.py SEED N` runs other ones and prints a summary.
"""
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback

SEED = 20261201
N_CASES = 300
CASE_SECONDS = 10  # generous: a case takes ~0.1 s; the bound is for hangs, on a shared CI machine
EXTRA_ADDRESS_SPACE = 2 << 30  # the child may grow this much past what it has after its imports
TOTAL_SECONDS = 300

KEYS = [  # metadata keys the mutations rewrite: those refspec reads, neighbours it must refuse, and junk
    "general.architecture", "general.name", "general.alignment", "qwen2.block_count", "qwen2.context_length",
    "qwen2.embedding_length", "qwen2.feed_forward_length", "qwen2.attention.head_count",
    "qwen2.attention.head_count_kv", "qwen2.attention.key_length", "qwen2.rope.dimension_count",
    "qwen2.rope.freq_base", "qwen2.attention.layer_norm_rms_epsilon", "qwen2.vocab_size", "qwen2.logit_scale",
    "qwen2.attention.sliding_window", "qwen2.expert_count", "qwen2.final_logit_softcapping",
    "qwen2.rope.scaling.type", "qwen2.rope.scaling.factor", "tokenizer.ggml.model", "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template", "general.junk", "zzz.unknown",
]


# ---------------------------------------------------------------------------------------------------------
# Mutations (run in the child)
# ---------------------------------------------------------------------------------------------------------
def random_value(rng: random.Random, n_vocab: int):
    """A GGUFValue of a random type, with values chosen to hit edges (0, -1, huge, NaN, lengths off by one)."""
    from gguf import GGUFValueType as V
    from gguf.gguf_writer import GGUFValue

    ints = [0, 1, -1, 2, 7, n_vocab - 1, n_vocab, 2**31 - 1, -(2**31), 2**24, 2**63 - 1]
    floats = [0.0, -0.0, 1.0, -1.0, 1e-300, 1e38, math.inf, -math.inf, math.nan, 0.5]
    strings = ["", "gpt2", "llama", "qwen2", "smollm", "false", "a b", "\n", "é" * 50, "{{ x }}", "x" * 10000]
    kind = rng.choice(["int", "uint", "float", "bool", "string", "array"])
    if kind == "int":
        return GGUFValue(rng.choice(ints) % 2**31 - (2**31 if rng.random() < 0.3 else 0), V.INT32)
    if kind == "uint":
        return GGUFValue(rng.choice(ints) % 2**64, V.UINT64)
    if kind == "float":
        return GGUFValue(rng.choice(floats), rng.choice([V.FLOAT32, V.FLOAT64]))
    if kind == "bool":
        return GGUFValue(rng.random() < 0.5, V.BOOL)
    if kind == "string":
        return GGUFValue(rng.choice(strings), V.STRING)
    length = rng.choice([1, 2, n_vocab - 1, n_vocab, n_vocab + 1])  # (GGUFWriter writes no empty array)
    item = rng.choice(["int", "float", "bool", "string"])
    if item == "int":
        return GGUFValue([rng.choice(ints) % 2**31 for _ in range(length)], V.ARRAY, V.INT32)
    if item == "float":
        return GGUFValue([rng.choice(floats) for _ in range(length)], V.ARRAY, V.FLOAT32)
    if item == "bool":
        return GGUFValue([rng.random() < 0.5 for _ in range(length)], V.ARRAY, V.BOOL)
    return GGUFValue([f"{rng.choice(strings)[:20]}{i}" if rng.random() < 0.9 else "" for i in range(length)],
                     V.ARRAY, V.STRING)


def mutate(rng: random.Random, base: bytes, base_path: str, out_path: str, header_end: int, n_vocab: int) -> str:
    """Writes one mutation of the base file to out_path; returns its description."""
    kind = rng.choice(["flip", "flip", "extreme", "truncate", "splice", "metadata", "metadata", "metadata",
                       "drop", "data"])
    data = bytearray(base)
    if kind == "flip":
        spots = [(rng.randrange(header_end), rng.randrange(1, 256)) for _ in range(rng.randint(1, 8))]
        for at, mask in spots:
            data[at] ^= mask
        description = f"flip {spots}"
    elif kind == "extreme":
        width = rng.choice([4, 8])
        at = rng.randrange(header_end - width)
        value = rng.choice([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, rng.getrandbits(64)]) % 2 ** (8 * width)
        data[at:at + width] = value.to_bytes(width, "little")
        description = f"extreme {value} ({width} bytes) at {at}"
    elif kind == "truncate":
        cut = rng.randrange(len(data))
        del data[cut:]
        description = f"truncate at {cut}"
    elif kind == "splice":
        a, b = sorted(rng.randrange(header_end) for _ in range(2))
        if rng.random() < 0.5:
            del data[a:b]
        else:
            data[a:a] = data[a:b]
        description = f"splice {a}..{b}"
    elif kind in ("metadata", "drop"):
        from gguf import GGUFValueType
        from gguf.gguf_writer import GGUFValue

        from refspec.synthetic import rewrite_gguf

        key = rng.choice(KEYS)
        if kind == "drop":
            rewrite_gguf(base_path, out_path, drop=[key])
            return f"drop {key}"
        value = random_value(rng, n_vocab)
        if key == "general.architecture":  # rewrite_gguf hands it to GGUFWriter, which takes a plain string
            value = GGUFValue(str(value.value)[:40], GGUFValueType.STRING)
        rewrite_gguf(base_path, out_path, metadata={key: value.value if key == "general.architecture" else value})
        return f"metadata {key} = {value.type.name}{'/' + value.sub_type.name if value.sub_type else ''} " \
               f"{str(value.value)[:60]!r}"
    else:  # weights: random 4-byte words in the tensor data (NaN, inf, huge scales)
        spots = [rng.randrange(header_end, len(data) - 4) for _ in range(rng.randint(1, 16))]
        for at in spots:
            data[at:at + 4] = struct.pack("<f", rng.choice([math.nan, math.inf, 1e38, -1e38, 65504.0, 1e-40]))
        description = f"data words at {spots[:4]}..."
    with open(out_path, "wb") as f:
        f.write(bytes(data))
    return description


def exercise(path: str, touched_template: bool) -> None:
    """Everything a user does with a file: load, tokenizer, two greedy tokens, decode (and chat)."""
    from refspec.backends import make_backend
    from refspec.forward import Transformer
    from refspec.generate import generate
    from refspec.gguf_model import load
    from refspec.tokenizer import Tokenizer

    model = load(path, log=lambda message: None)
    tok = Tokenizer.from_metadata(model.metadata)
    if touched_template:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    ids = tok.encode("hello <|im_start|> world") or [0]
    result = generate(Transformer(model, make_backend("cpu")), ids[: model.config.n_ctx - 2], 2)
    tok.decode(result.ids)


def limit_address_space() -> None:
    import resource

    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = min((x for x in resource.getrlimit(resource.RLIMIT_AS) if x != resource.RLIM_INFINITY),
              default=used + EXTRA_ADDRESS_SPACE)
    limit = min(used + EXTRA_ADDRESS_SPACE, cap)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class CaseTimeout(BaseException):
    pass


def on_alarm(signum, frame):
    raise CaseTimeout()


def run_cases(seed: int, n_cases: int, directory: str):
    """Yields one dict per case: its mutation, its outcome ('ok', a RefspecError's class name, or
    'UNEXPECTED ...') and its time."""
    import signal

    import numpy  # noqa: F401 (imported before the limit is measured, as everything below uses it)

    from refspec.errors import RefspecError
    from refspec.synthetic import write_model

    base_path = os.path.join(directory, "base.gguf")
    write_model(base_path, arch="qwen2", n_layer=1, n_embd=32, n_ff=64, n_head=2, n_head_kv=1, n_ctx=32, seed=seed)
    base = open(base_path, "rb").read()
    from gguf import GGUFReader

    reader = GGUFReader(base_path)
    header_end, n_vocab = int(reader.data_offset), len(reader.fields["tokenizer.ggml.tokens"].data)
    del reader
    exercise(base_path, True)  # the unmutated file works end to end (and warms every import up)
    limit_address_space()
    signal.signal(signal.SIGALRM, on_alarm)
    rng = random.Random(seed)
    out_path = os.path.join(directory, "case.gguf")
    for case in range(n_cases):
        t0 = time.perf_counter()
        description, outcome = "?", "ok"
        signal.alarm(CASE_SECONDS)
        try:
            description = mutate(rng, base, base_path, out_path, header_end, n_vocab)
            exercise(out_path, "chat_template" in description)
        except RefspecError as error:
            outcome = type(error).__name__
            if "\n" in str(error):
                outcome = f"UNEXPECTED multi-line message: {str(error)[:200]!r}"
        except CaseTimeout:
            outcome = f"UNEXPECTED: took more than {CASE_SECONDS} s"
        except BaseException as error:  # anything else is a finding
            outcome = f"UNEXPECTED {type(error).__name__}: {str(error)[:200]} | " + \
                      " <- ".join(f"{fr.name}:{fr.lineno}" for fr in traceback.extract_tb(error.__traceback__)[-4:])
        finally:
            signal.alarm(0)
        yield {"case": case, "mutation": description, "outcome": outcome,
               "seconds": round(time.perf_counter() - t0, 3)}


def child_main(seed: int, n_cases: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for record in run_cases(seed, n_cases, directory):
            print(json.dumps(record), flush=True)


# ---------------------------------------------------------------------------------------------------------
# The test (the parent)
# ---------------------------------------------------------------------------------------------------------
def run_child(seed: int, n_cases: int) -> tuple[list[dict], float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(seed), str(n_cases), "--child"],
                          capture_output=True, text=True, timeout=TOTAL_SECONDS)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return records, time.perf_counter() - t0, proc.stderr


def test_fuzzed_files_end_in_refspec_errors_within_bounds():
    records, seconds, stderr = run_child(SEED, N_CASES)
    assert len(records) == N_CASES, stderr[-2000:]
    unexpected = [r for r in records if r["outcome"].startswith("UNEXPECTED")]
    assert not unexpected, json.dumps(unexpected[:5], indent=1)
    assert max(r["seconds"] for r in records) < CASE_SECONDS
    outcomes = {r["outcome"] for r in records}
    assert "ok" in outcomes and {"ModelFileError", "UnsupportedModelError", "TokenizerError"} <= outcomes, outcomes
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr[-2000:]
    print(f"{N_CASES} fuzz cases in {seconds:.1f} s: " +
          ", ".join(f"{o} {sum(r['outcome'] == o for r in records)}" for o in sorted(outcomes)))


if __name__ == "__main__":
    if sys.argv[3:] == ["--child"]:
        child_main(int(sys.argv[1]), int(sys.argv[2]))
    else:
        seed, n = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (SEED, N_CASES)
        records, seconds, stderr = run_child(seed, n)
        for r in records:
            if r["outcome"].startswith("UNEXPECTED"):
                print(json.dumps(r))
        print(f"{len(records)} cases in {seconds:.1f} s; slowest {max(r['seconds'] for r in records):.2f} s;",
              {o: sum(r["outcome"] == o for r in records) for o in sorted({r["outcome"] for r in records})})
        print(stderr[-3000:], file=sys.stderr)
