"""llama.cpp side by side: run llama.cpp (through llama-cpp-python, the `llamacpp` extra) on the same GGUF
file and the same token ids as refspec, and record its logits in refspec's golden format
(refspec/golden.py), so `refspec compare` says where llama.cpp stands against the spec.

llama.cpp runs the file's weights as they are (a Q4_1 file runs as Q4_1, where refspec requantizes it to
Q8_0): `requantize_q8_0` writes a Q8_0 copy with llama.cpp's own quantizer for a comparison of the numerics
alone. Generated tokens (-n) are llama.cpp's greedy choices, one token per step; the logits recorded are
those of one teacher-forced pass over the whole sequence (every position's logits, logits_all), as refspec
records its own. llama.cpp is not batch invariant: other batch sizes give other bits.
"""
from __future__ import annotations

import os

import numpy as np

from refspec.errors import ModelFileError, UsageError
from refspec.golden import Golden, check_ids, load_model, run_metadata

BATCH = 512  # llama.cpp's default batch: the sequence's positions per decode call


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UsageError("the llama.cpp engine needs llama-cpp-python: pip install 'refspec[llamacpp]'") from None
    return llama_cpp


def open_model(path, n_ctx: int, *, n_threads: int | None = None, n_gpu_layers: int = 0):
    """A llama_cpp.Llama keeping the logits of every position."""
    llama_cpp = _llama_cpp()
    try:
        return llama_cpp.Llama(model_path=os.fspath(path), n_ctx=n_ctx, n_batch=min(n_ctx, BATCH),
                               n_ubatch=min(n_ctx, BATCH), logits_all=True, n_threads=n_threads or os.cpu_count(),
                               n_gpu_layers=n_gpu_layers, verbose=False)
    except (ValueError, RuntimeError, OSError) as err:
        raise ModelFileError(f"llama.cpp cannot load {path}: {err}") from err


def dump(model, prompt_ids: list[int], n_predict: int = 0, *, n_threads: int | None = None,
         n_gpu_layers: int = 0) -> Golden:
    """llama.cpp's logits of every position of `prompt_ids` plus `n_predict` greedy tokens, as a Golden."""
    llama_cpp = _llama_cpp()
    model = load_model(model)
    ids = check_ids(prompt_ids, model.config.n_vocab)
    if n_predict < 0:
        raise UsageError(f"-n must be 0 or more tokens, got {n_predict}")
    n_total = len(ids) + n_predict
    if n_total > model.config.n_ctx:
        raise UsageError(f"{n_total} tokens exceed the model's context of {model.config.n_ctx}")
    llm = open_model(model.path, n_total, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
    if llm.n_vocab() != model.config.n_vocab:
        raise ModelFileError(f"llama.cpp reads a vocabulary of {llm.n_vocab()}, refspec {model.config.n_vocab}")
    if n_predict:
        ids = ids + greedy(llm, ids, n_predict)
        llm.reset()
    llm.eval(ids)  # one pass over every position, in batches of BATCH
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    meta = {"engine": "llama.cpp", "engine_version": f"llama-cpp-python {llama_cpp.__version__}",
            "device": "cpu" if not n_gpu_layers else f"gpu ({n_gpu_layers} layers)", "n_batch": min(len(ids), BATCH)}
    return Golden(np.asarray(ids, np.int32), {"result_output": logits}, run_metadata(model, len(prompt_ids), meta))


def greedy(llm, prompt_ids: list[int], n_predict: int) -> list[int]:
    """llama.cpp's greedy continuation: the argmax (lowest index on ties) after each step."""
    llm.eval(prompt_ids)
    out = []
    for _ in range(n_predict):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        if len(out) < n_predict:
            llm.eval([out[-1]])
    return out


def requantize_q8_0(src, dst) -> str:
    """Write a Q8_0 copy of a GGUF with llama.cpp's quantizer (every matrix requantized, as refspec does at
    load time); returns dst."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    from llama_cpp._utils import suppress_stdout_stderr  # the quantizer reports every tensor on stderr

    with suppress_stdout_stderr(disable=False):
        status = llama_cpp.llama_model_quantize(os.fspath(src).encode(), os.fspath(dst).encode(), params)
    if status != 0:
        raise ModelFileError(f"llama.cpp could not requantize {src} to Q8_0 (status {status})")
    return os.fspath(dst)
