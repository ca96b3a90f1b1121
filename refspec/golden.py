"""Golden files: what `refspec dump` writes and `refspec compare` reads.

A golden file is a safetensors file (readable from NumPy, PyTorch, C and Rust) holding one run of a model over
a token sequence: the prompt's ids, optionally followed by N greedily generated ids, and what the engine
computed at every position. Tensors (T positions, E embedding, H*D attention width, V vocabulary):

    token_ids        int32 [T]        the prompt's ids, then the generated ones
    result_output    float32 [T, V]   logits of every position (row t: after token t)
  with --layers, for every layer i (llama.cpp's graph names, so a llama.cpp user can line them up):
    attn_norm-{i}    float32 [T, E]   RMSNorm of the layer's input (before it is quantized for Q/K/V)
    kqv_out-{i}      float32 [T, H*D] attention output, before the output projection
    attn_out-{i}     float32 [T, E]   after the output projection
    ffn_inp-{i}      float32 [T, E]   residual stream after the attention block
    ffn_norm-{i}     float32 [T, E]   RMSNorm of ffn_inp (before it is quantized for gate/up)
    ffn_out-{i}      float32 [T, E]   feed-forward output (down projection)
    l_out-{i}        float32 [T, E]   residual stream after the layer
    result_norm      float32 [T, E]   the final RMSNorm

The header's metadata (strings): format = "refspec-golden", format_version, engine ("refspec" or
"llama.cpp"), engine_version, refspec_version, spec_version (refspec.spec.SPEC_VERSION), model_sha256 (of
the model file's bytes; a split model's parts one after the other), model_name, arch, n_prompt (how many of
token_ids are the prompt), n_layer, device.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from refspec import checks
from refspec.errors import GoldenFileError, UsageError

FORMAT = "refspec-golden"
FORMAT_VERSION = "1"
LOGITS = "result_output"
TOKEN_IDS = "token_ids"
LAYER_TENSORS = ("attn_norm", "kqv_out", "attn_out", "ffn_inp", "ffn_norm", "ffn_out", "l_out")  # forward order
FINAL_TENSORS = ("result_norm", LOGITS)
DUMP_CHUNK = 64  # positions per forward pass of the teacher-forced run (any size gives the same bits)


@dataclass
class Golden:
    """One run: token ids [T], named float32 tensors [T, ...] in forward order, and string metadata."""

    token_ids: np.ndarray
    tensors: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def logits(self) -> np.ndarray:
        return self.tensors[LOGITS]

    @property
    def n_prompt(self) -> int:
        return int(self.metadata.get("n_prompt", len(self.token_ids)))


def tensor_names(n_layer: int) -> list[str]:
    """Every tensor name of a full dump, in forward order."""
    return [f"{name}-{i}" for i in range(n_layer) for name in LAYER_TENSORS] + list(FINAL_TENSORS)


def forward_order(name: str) -> tuple:
    """Sort key: a name's place in the forward pass (unknown names after all others, alphabetically)."""
    m = re.fullmatch(r"(.+)-(\d+)", name)
    if m and m.group(1) in LAYER_TENSORS:
        return (int(m.group(2)), LAYER_TENSORS.index(m.group(1)), "")
    if name in FINAL_TENSORS:
        return (float("inf"), FINAL_TENSORS.index(name), "")
    return (float("inf"), len(FINAL_TENSORS), name)


def file_sha256(*paths) -> str:
    """SHA-256 of the files' bytes one after the other (a split model's parts in order)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- running
def dump(model, prompt_ids: list[int], n_predict: int = 0, *, layers: bool = False,
         device: str = "auto", backend=None, on_progress=None) -> Golden:
    """Run refspec on `prompt_ids` plus exactly `n_predict` greedy tokens (an end-of-generation token does not
    end them); record every position's logits (and with `layers`, every per-layer tensor). `prompt_ids`: a
    sequence in order (a generator too) of integers in the vocabulary. `model` is a refspec Model
    (refspec.gguf_model.load) or a GGUF path;
    `backend`, if given, is used instead of make_backend(device) (any backend of refspec/protocol.py).
    The tokens are generated first, then the whole sequence is run once, teacher-forced, with taps: batch
    invariance makes those logits the ones that chose each token. on_progress(done, total), if given, follows
    the positions of both passes (for a progress line on long sequences)."""
    from refspec import __version__
    from refspec.backends import make_backend
    from refspec.forward import Transformer
    from refspec.generate import generate
    from refspec.spec import SPEC_VERSION

    checks.flag("layers", layers)
    checks.callback("on_progress", on_progress)
    if checks.integer("n_predict", n_predict) < 0:
        raise UsageError(f"-n must be 0 or more tokens, got {n_predict}")
    model = load_model(model)
    backend = backend if backend is not None else make_backend(device)
    tf = Transformer(model, backend)
    prompt_ids = check_ids(prompt_ids, model.config.n_vocab)
    ids = prompt_ids
    if n_predict:  # exactly n_predict: an end-of-generation id does not stop it (nor llamacpp.dump's greedy)
        ids = ids + generate(tf, ids, n_predict, eog_ids=(), on_prompt=on_progress).ids
    tensors = run_teacher_forced(tf, ids, layers, on_progress)
    meta = {"engine": "refspec", "engine_version": __version__, "refspec_version": __version__,
            "spec_version": SPEC_VERSION, "device": str(getattr(backend, "name", type(backend).__name__))}
    return Golden(np.asarray(ids, np.int32), tensors, run_metadata(model, len(prompt_ids), meta))


def run_teacher_forced(tf, ids: list[int], layers: bool, on_progress=None) -> dict:
    """Logits of every position (and every tapped tensor when `layers`) for the sequence `ids`;
    on_progress(done, total) after each chunk."""
    parts: dict[str, list] = {}
    taps = (lambda name, t: parts.setdefault(name, []).append(tf.be.to_host(t).astype(np.float32))) if layers else None
    cache = tf.new_cache(len(ids))
    logits = []
    for start in range(0, len(ids), DUMP_CHUNK):
        logits.append(tf.be.to_host(tf.forward(cache, ids[start : start + DUMP_CHUNK], start, taps=taps)))
        if on_progress is not None:
            on_progress(min(start + DUMP_CHUNK, len(ids)), len(ids))
    tensors = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    tensors[LOGITS] = np.concatenate(logits).astype(np.float32)
    return {name: tensors[name] for name in sorted(tensors, key=forward_order)}


def load_model(model):
    """A refspec Model, loaded from a path (quietly) unless it is one already."""
    if isinstance(model, (str, os.PathLike)):
        from refspec.gguf_model import load as load_gguf

        return load_gguf(model, log=lambda message: None)
    return model


def run_metadata(model, n_prompt: int, engine: dict) -> dict:
    """The header's metadata, all strings (safetensors allows nothing else)."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **engine,
            "model_sha256": file_sha256(*(model.files or (model.path,))),
            "model_name": str(model.metadata.get("general.name", "")),
            "arch": model.config.arch, "n_layer": model.config.n_layer, "n_prompt": n_prompt}
    if "refspec_version" not in meta:
        from refspec import __version__

        meta["refspec_version"] = __version__
    return {key: str(value) for key, value in meta.items()}


def check_ids(ids, n_vocab: int) -> list[int]:
    """The prompt's ids as a list: a sequence in order (a generator too) of integers in 0..n_vocab-1 (floats,
    bools, strings, None and sets refused, never converted), at least one."""
    ids = checks.token_ids("prompt_ids", ids, n_vocab, allow_empty=True, ordered=True)
    if not ids:
        raise UsageError("the prompt is empty: give some text or at least one token id")
    return ids


# ------------------------------------------------------------------------------------------------- files
def save(golden: Golden, path) -> int:
    """Write a golden file; returns its size in bytes. The file is written beside `path` and renamed to it once
    complete, so a failure (a full disk, an interrupt) leaves no truncated golden file behind and an older one
    intact. A path that exists and is not a regular file (a device, a FIFO) is refused: the rename would replace
    it (safetensors' own writer renames too)."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    if not isinstance(golden, Golden):
        raise UsageError(f"save takes a Golden (golden.dump's or golden.load's), not {type(golden).__name__}")
    path = checks.path_name(path, "golden file path")
    checks.output_file(path, renamed=True)
    tensors = {TOKEN_IDS: np.ascontiguousarray(golden.token_ids, np.int32)}
    tensors.update({name: np.ascontiguousarray(t, np.float32) for name, t in golden.tensors.items()})
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        save_file(tensors, partial, metadata={k: str(v) for k, v in golden.metadata.items()})
        _set_created_file_mode(partial)
        os.replace(partial, path)
    except (OSError, SafetensorError) as err:
        raise UsageError(f"cannot write {path}: {_one_line(err)}") from err
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return os.path.getsize(path)


def _set_created_file_mode(path: str) -> None:
    """Give `path` the mode open() gives a new file, 0o666 less the umask: safetensors writes through a temporary
    file of mode 0600 whatever the umask. (The umask can only be read by setting it, so it is put back at once.)"""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except PermissionError:
        pass  # a file system without Unix modes (vfat, some network mounts): the file is whole, keep its mode


def load(path) -> Golden:
    """Read a golden file, checking that it is one of FORMAT_VERSION: GoldenFileError (one line) for anything else."""
    from safetensors import SafetensorError, safe_open

    path = checks.path_name(path, "golden file path")
    checks.open_regular_file(path, "golden file", GoldenFileError).close()  # a FIFO would hang safetensors
    try:
        with safe_open(path, framework="np") as f:
            metadata = dict(f.metadata() or {})
            names = list(f.keys())
            if metadata.get("format") != FORMAT:
                raise GoldenFileError(f"{path}: a safetensors file, but not a golden file of refspec dump "
                                      f"(its metadata has no format = {FORMAT})")
            _check_format_version(metadata.get("format_version"), path)
            if TOKEN_IDS not in names or LOGITS not in names:
                raise GoldenFileError(f"{path}: a golden file needs the tensors {TOKEN_IDS} and {LOGITS}")
            tensors = {name: f.get_tensor(name) for name in sorted(names, key=forward_order) if name != TOKEN_IDS}
            token_ids = f.get_tensor(TOKEN_IDS)
    except (SafetensorError, OSError, ValueError) as err:
        raise GoldenFileError(f"{path}: not a readable safetensors file ({_one_line(err)})") from err
    return _checked(Golden(token_ids, tensors, metadata), path)


def _check_format_version(found: str | None, path) -> None:
    """Every golden file refspec has written records format_version: a missing one is refused as a different one."""
    if found != FORMAT_VERSION:
        what = "without format_version" if found is None else f"of format_version {found!r}"
        raise GoldenFileError(f"{path}: a golden file {what}; this refspec reads format_version "
                              f"{FORMAT_VERSION!r} only")


def _checked(golden: Golden, path) -> Golden:
    ids, n = golden.token_ids, len(golden.token_ids)
    if ids.ndim != 1 or ids.dtype != np.int32 or n == 0:
        raise GoldenFileError(f"{path}: {TOKEN_IDS} must be a non-empty int32 vector, got {ids.dtype} {ids.shape}")
    for name, t in golden.tensors.items():
        if t.dtype != np.float32 or t.ndim != 2 or t.shape[0] != n:
            raise GoldenFileError(f"{path}: tensor {name} must be float32 [{n}, ...] (one row per token), "
                                  f"got {t.dtype} {list(t.shape)}")
    if golden.logits.size == 0:
        raise GoldenFileError(f"{path}: no logits (shape {list(golden.logits.shape)})")
    n_prompt = golden.metadata.get("n_prompt", str(n))
    if not (n_prompt.isdigit() and 1 <= int(n_prompt) <= n):
        raise GoldenFileError(f"{path}: n_prompt {golden.metadata.get('n_prompt')} is not in 1..{n}")
    return golden


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def describe(golden: Golden) -> dict:
    """A summary for the command line: positions, tensors, metadata."""
    return {"positions": len(golden.token_ids), "n_prompt": golden.n_prompt, "tensors": len(golden.tensors),
            **{k: golden.metadata[k] for k in ("engine", "model_name", "model_sha256") if k in golden.metadata}}


# ---------------------------------------------------------------------------------------------- command
def add_arguments(p) -> None:
    from refspec.cli import add_model_argument, add_threads_argument

    add_model_argument(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="prompt text (encoded with the model's tokenizer); - reads standard input")
    src.add_argument("-f", "--file", metavar="FILE",
                     help="the prompt text from a UTF-8 file (without its last newline, as llama.cpp reads it)")
    src.add_argument("--ids", help="token ids instead of text, e.g. '1,2,3'")
    src.add_argument("--ids-from", metavar="GOLDEN", help="the token ids of a golden file (all of them: prompt "
                     "and generated), to run another engine on exactly the same tokens")
    p.add_argument("-n", "--n-predict", type=int, default=0, metavar="N",
                   help="greedy tokens to generate after the prompt (default 0), all recorded")
    p.add_argument("--chat", action="store_true", help="the prompt text as one user message through the model's "
                   "chat template (the ids refspec generate --chat runs)")
    p.add_argument("-sys", "--system-prompt", dest="system", metavar="TEXT", help="a system message (with --chat)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="golden file to write (safetensors)")
    p.add_argument("--layers", action="store_true", help="also record every layer's tensors (llama.cpp: the graph "
                   "nodes with the same names, through its eval callback)")
    p.add_argument("--engine", choices=("refspec", "llama.cpp"), default="refspec",
                   help="who computes: refspec (the spec) or llama.cpp through llama-cpp-python "
                   "(pip install 'refspec[llamacpp]'), on the same model file and token ids")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default=None,
                   help="refspec engine: where it runs (default auto); the bits are the same")
    add_threads_argument(p)
    p.add_argument("--kv-cache", choices=("f16", "f32"), default=None,
                   help="llama.cpp engine: its KV cache type (default f16, llama.cpp's default); refspec's own "
                   "engine keeps K and V in float32")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def run(args) -> int:
    from refspec.cli import check_system_options, load_tokenizer, note, raise_usage, system_messages
    from refspec.prompt_input import parse_ids, prompt_text
    from refspec.cli import load_model as load_cli_model

    if args.chat and args.prompt is None and args.file is None:
        raise_usage("--chat takes the prompt as text (-p or -f), not as ids")
    check_system_options(args)
    checks.output_file(args.output, renamed=True)  # (save() checks again, after the run)
    _check_output_is_no_input(args.output, model_files=[args.model] if args.model is not None else [],
                              ids_from=args.ids_from)
    text = prompt_text(args)  # a missing prompt file fails before the model loads
    options = _engine_options(args, note)  # refspec's backend first: no GPU is said before a model is loaded
    model = load_cli_model(args.model)
    _check_output_is_no_input(args.output, model_files=model.files or (model.path,))  # split parts, the default
    n_prompt = None
    if args.ids is not None:
        prompt_ids = parse_ids(args.ids, model.config.n_vocab)
    elif args.ids_from is not None:
        source = load(args.ids_from)
        prompt_ids, n_prompt = source.token_ids.tolist(), source.n_prompt
    elif args.chat:
        messages = system_messages(args) + [{"role": "user", "content": text}]
        prompt_ids = load_tokenizer(model).apply_chat_template(messages, tokenize=True)
    else:
        prompt_ids = load_tokenizer(model).encode(text)
    if args.engine == "llama.cpp":
        from refspec.llamacpp import dump as engine_dump
    else:
        engine_dump = dump
    golden = engine_dump(model, prompt_ids, args.n_predict, **options)
    if n_prompt is not None and not args.n_predict:
        golden.metadata["n_prompt"] = str(n_prompt)  # the same split as the source file
    size = save(golden, args.output)
    summary = {"path": args.output, "bytes": size, **describe(golden)}
    if args.json:
        print(json.dumps(summary))
    else:
        note(f"wrote {args.output}: {summary['positions']} positions ({summary['n_prompt']} prompt), "
             f"{summary['tensors']} tensors, {size / 1e6:.1f} MB")
    return 0


def _check_output_is_no_input(output: str, model_files, ids_from: str | None = None) -> None:
    """UsageError where -o names a file the run reads: save() would replace the model (or --ids-from's golden
    file) with the golden file it writes."""
    if any(checks.same_file(output, f) for f in model_files):
        raise UsageError(f"-o {output} is the model file itself; name another output file")
    if ids_from is not None and checks.same_file(output, ids_from):
        raise UsageError(f"-o {output} is the --ids-from file itself; name another output file")


def _engine_options(args, note) -> dict:
    """The engine's keyword arguments; `note` tells of an option given for the other engine."""
    if args.engine == "refspec":
        from refspec.cli import PromptProgress, make_cli_backend

        args.device = args.device or "auto"
        if args.kv_cache is not None:
            note(f"note: --kv-cache {args.kv_cache} ignored: it sets the KV cache type of --engine llama.cpp; "
                 "refspec's own engine keeps K and V in float32 (refspec/SPEC.md)")
        return {"layers": args.layers, "backend": make_cli_backend(args), "on_progress": PromptProgress("positions")}
    if args.device is not None:
        note(f"note: --device {args.device} ignored: --engine llama.cpp runs on the CPU (n_gpu_layers 0)")
    kv_cache = {} if args.kv_cache is None else {"kv_cache": args.kv_cache}  # (else llamacpp.dump's default)
    return {"layers": args.layers, "n_threads": args.threads, **kv_cache}
