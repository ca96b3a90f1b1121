"""llama.cpp command-line habits that make no sense for refspec, recognised and answered in one line.

A llama.cpp user types `-ngl 99 --temp 0.7 -c 4096` out of habit. Rather than argparse's "unrecognized
arguments", each such flag is parsed (its value checked like any other) and answered after parsing:

* a **note** on stderr, and the run goes on, when the flag cannot change what refspec computes (`-ngl`,
  `--seed`, `-tb`, sampling filters under greedy decoding, `--temp 0`, ...);
* an **error** (one line, exit status 1) when honouring it would change the output and refspec cannot
  (`--temp 0.8`, `--repeat-penalty 1.1`, `-md draft.gguf`, `--grammar`, `-hf`, ...).

The table below is the one place that decides which; `--help` prints each flag's answer from it.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, NamedTuple

from refspec.errors import UsageError

GREEDY = "refspec decodes greedily by design (argmax, lowest id on ties): it has no sampler"
ROPE = "refspec takes RoPE from the model file's metadata (refspec info shows it); write a changed copy instead"


class ForeignFlag(NamedTuple):
    names: tuple[str, ...]  # llama.cpp's spellings, the first one is used in messages
    metavar: str | None  # None: a switch without a value
    type: Callable[[str], Any] | None
    harmless: Callable[[Any], bool]  # True: note and go on; False: error
    answer: str  # what refspec does instead (one line)
    optional_value: bool = False  # the value may be left out (llama.cpp's `-fa` alone or `-fa on`)

    @property
    def dest(self) -> str:
        return "llama_" + self.names[-1].lstrip("-").replace("-", "_")


def _always(value) -> bool:
    return True


def _never(value) -> bool:
    return False


def _equals(neutral: float) -> Callable[[Any], bool]:
    return lambda value: value == neutral


FLAGS = (
    ForeignFlag(("-ngl", "--gpu-layers", "--n-gpu-layers"), "N", int, _always,
                "refspec runs every layer on the device --device picks (auto: the GPU when CuPy sees one); "
                "the bits are the same on every device"),
    ForeignFlag(("-b", "--batch-size"), "N", int, _always,
                "refspec runs the prompt in chunks of 64 rows; any chunking gives the same bits"),
    ForeignFlag(("-ub", "--ubatch-size"), "N", int, _always,
                "refspec runs the prompt in chunks of 64 rows; any chunking gives the same bits"),
    ForeignFlag(("-tb", "--threads-batch"), "N", int, _always,
                "refspec runs the prompt with the threads of -t, as it decodes; the bits do not depend on them"),
    ForeignFlag(("-fa", "--flash-attn"), "on|off|auto", str, _always,
                "refspec's attention has one fixed summation order on every device (refspec/SPEC.md)", True),
    ForeignFlag(("--mlock",), None, None, _always,
                "refspec maps the model file and reads each matrix where it lies (a GPU copies them to its "
                "memory at load); the kernel keeps the pages while memory allows"),
    ForeignFlag(("--no-mmap",), None, None, _always,
                "refspec always maps the model file and reads each matrix where it lies (a GPU copies them to "
                "its memory at load); the bits do not depend on how the weights are read"),
    ForeignFlag(("-s", "--seed"), "N", int, _always,
                "greedy decoding draws no random numbers: every run gives the same bits"),
    ForeignFlag(("--temp", "--temperature"), "T", float, lambda value: value <= 0.0,
                f"{GREEDY}; greedy is --temp 0 (or below 0, which llama.cpp decodes greedily too), the only "
                "values accepted"),
    ForeignFlag(("--top-k",), "N", int, _always, f"{GREEDY}; a top-k filter never removes the argmax"),
    ForeignFlag(("--top-p",), "P", float, _always, f"{GREEDY}; a top-p filter never removes the argmax"),
    ForeignFlag(("--min-p",), "P", float, _always, f"{GREEDY}; a min-p filter never removes the argmax"),
    ForeignFlag(("--typical",), "P", float, _always, f"{GREEDY}; a typical-p filter never removes the argmax"),
    ForeignFlag(("--repeat-last-n",), "N", int, _always, f"{GREEDY}, with no repetition penalty"),
    ForeignFlag(("--repeat-penalty",), "F", float, _equals(1.0),
                f"{GREEDY}, with no repetition penalty (only --repeat-penalty 1 is accepted)"),
    ForeignFlag(("--presence-penalty",), "F", float, _equals(0.0),
                f"{GREEDY}, with no presence penalty (only --presence-penalty 0 is accepted)"),
    ForeignFlag(("--frequency-penalty",), "F", float, _equals(0.0),
                f"{GREEDY}, with no frequency penalty (only --frequency-penalty 0 is accepted)"),
    ForeignFlag(("--mirostat",), "N", int, _equals(0), f"{GREEDY} (only --mirostat 0 is accepted)"),
    ForeignFlag(("--grammar", "--grammar-file", "-j", "--json-schema"), "X", str, _never,
                "refspec has no constrained decoding: every token is the argmax over the whole vocabulary"),
    ForeignFlag(("-md", "--model-draft"), "GGUF", str, _never,
                "refspec drafts from the model itself, no draft model: --draft ngram or --draft layerskip"),
    ForeignFlag(("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft"), "N", int, _always,
                "refspec drafts from the model itself, on the model's device"),
    ForeignFlag(("-hf", "-hfr", "--hf-repo"), "REPO", str, _never,
                "refspec does not download models from Hugging Face: download the .gguf and pass -m FILE "
                "(without -m refspec uses its default model)"),
    ForeignFlag(("--lora",), "FILE", str, _never, "refspec runs the model file as it is: no adapters"),
    ForeignFlag(("-i", "--interactive"), None, None, _never,
                "for a conversation use --chat without -p (one message per line on stdin)"),
    ForeignFlag(("-no-cnv", "--no-conversation"), None, None, _always,
                "refspec continues the prompt as plain text unless --chat is given"),
    ForeignFlag(("-st", "--single-turn"), None, None, _always,
                "--chat with a prompt is one turn; without one, one turn per line of standard input"),
    ForeignFlag(("--jinja",), None, None, _always,
                "refspec always applies the model's own Jinja chat template (sandboxed)"),
    ForeignFlag(("--chat-template", "--chat-template-file"), "T", str, _never,
                "refspec applies the model's own chat template (refspec info --template shows it)"),
    ForeignFlag(("--no-display-prompt",), None, None, _always, "refspec prints only the continuation, never the prompt"),
    ForeignFlag(("--no-escape",), None, None, _always,
                "refspec takes -p and -sys as written unless -e is given"),
    ForeignFlag(("--log-disable",), None, None, _always,
                "refspec's progress and statistics go to stderr: redirect it (2>/dev/null) to hide them"),
    ForeignFlag(("-v", "--verbose", "--log-verbose"), None, None, _always,
                "refspec says what it does on stderr; --json gives every statistic"),
    ForeignFlag(("-co", "--color"), "on|off|auto", str, _always, "refspec prints plain text", True),
    ForeignFlag(("--simple-io",), None, None, _always, "refspec prints plain text and reads plain lines"),
    ForeignFlag(("--no-warmup",), None, None, _always, "refspec runs no warm-up pass; no output depends on one"),
    ForeignFlag(("-dev",), "DEV", str, _always,
                "refspec runs on the device --device picks (auto, cpu or gpu); the bits are the same on each"),
    ForeignFlag(("-sm", "--split-mode"), "MODE", str, _always, "refspec runs a model on one device"),
    ForeignFlag(("-mg", "--main-gpu"), "N", int, _always, "refspec runs on the first GPU CuPy sees"),
    ForeignFlag(("-ts", "--tensor-split"), "SPLIT", str, _always, "refspec runs a model on one device"),
    ForeignFlag(("-nkvo", "--no-kv-offload"), None, None, _always,
                "refspec keeps the KV cache on the device that runs the model"),
    ForeignFlag(("--numa",), "TYPE", str, _always, "refspec's CPU threads are numba's; the bits do not depend on them"),
    ForeignFlag(("--prio",), "N", int, _always, "refspec runs at the priority it was started with"),
    ForeignFlag(("--keep",), "N", int, _always,
                "refspec never shifts the context: generation stops when the context is full (stop reason context)"),
    ForeignFlag(("--no-context-shift",), None, None, _always,
                "refspec never shifts the context: generation stops when the context is full (stop reason context)"),
    ForeignFlag(("--context-shift",), None, None, _never,
                "refspec never shifts the context: generation stops when the context is full (stop reason context)"),
    ForeignFlag(("-ctk", "--cache-type-k"), "TYPE", str, _equals("f32"),
                "refspec's KV cache holds binary32 values as the spec defines them (only f32 is accepted; llama.cpp's "
                "default f16 rounds them)"),
    ForeignFlag(("-ctv", "--cache-type-v"), "TYPE", str, _equals("f32"),
                "refspec's KV cache holds binary32 values as the spec defines them (only f32 is accepted; llama.cpp's "
                "default f16 rounds them)"),
    ForeignFlag(("--rope-scaling",), "TYPE", str, _never, ROPE),
    ForeignFlag(("--rope-freq-base",), "F", float, _never, ROPE),
    ForeignFlag(("--rope-freq-scale",), "F", float, _never, ROPE),
    ForeignFlag(("--rope-scale",), "F", float, _never, ROPE),
    ForeignFlag(("--yarn-orig-ctx",), "N", int, _never, ROPE),
    ForeignFlag(("--yarn-ext-factor",), "F", float, _never, ROPE),
    ForeignFlag(("--yarn-attn-factor",), "F", float, _never, ROPE),
    ForeignFlag(("--yarn-beta-fast",), "F", float, _never, ROPE),
    ForeignFlag(("--yarn-beta-slow",), "F", float, _never, ROPE),
    ForeignFlag(("--override-kv",), "KEY=TYPE:VALUE", str, _never,
                "refspec runs the model file as it is: write a changed copy of the file instead"),
    ForeignFlag(("-r", "--reverse-prompt"), "PROMPT", str, _never,
                "refspec stops at the model's end-of-generation tokens, at -n tokens or at a full context; it has "
                "no stop strings"),
    ForeignFlag(("--in-prefix", "--in-suffix"), "TEXT", str, _never,
                "with --chat, each line of standard input is one user message as it is"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds every flag of the table to ``parser`` as one help group: the help says note or error, and why."""
    group = parser.add_argument_group(
        "llama.cpp options", "Recognised and answered in one line: 'note' ones print a note on stderr and "
        "the run goes on (they cannot change the output); 'error' ones stop with exit status 1.")
    for flag in FLAGS:
        kind = "note" if flag.harmless is _always else "error" if flag.harmless is _never else "note if neutral, else error"
        help_text = f"{kind}: {flag.answer}".replace("%", "%%")
        if flag.metavar is None:
            group.add_argument(*flag.names, dest=flag.dest, action="store_true", default=None, help=help_text)
        else:
            extra = {"nargs": "?", "const": "on"} if flag.optional_value else {}
            group.add_argument(*flag.names, dest=flag.dest, metavar=flag.metavar, type=flag.type, default=None,
                               help=help_text, **extra)


def answer(args: argparse.Namespace, note: Callable[[str], None]) -> None:
    """Notes every harmless llama.cpp flag given; raises UsageError for the first one refspec cannot honour."""
    for flag in FLAGS:
        value = getattr(args, flag.dest, None)
        if value is None:
            continue
        shown = flag.names[0] if flag.metavar is None else f"{flag.names[0]} {value}"
        if not flag.harmless(value):
            raise UsageError(f"{shown}: {flag.answer}")
        note(f"note: {shown} ignored: {flag.answer}")
