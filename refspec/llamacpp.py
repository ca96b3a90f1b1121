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

import ctypes
import os

import numpy as np

from refspec import checks
from refspec.errors import ModelFileError, UsageError
from refspec.golden import LOGITS, Golden, check_ids, forward_order, load_model, run_metadata, tensor_names

BATCH = 512  # llama.cpp's default batch: the sequence's positions per decode call


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UsageError("the llama.cpp engine needs llama-cpp-python: pip install 'refspec[llamacpp]'") from None
    return llama_cpp


KV_TYPES = {"f16": 1, "f32": 0}  # ggml type ids; llama.cpp's default KV cache is f16


def open_model(path, n_ctx: int, *, n_threads: int | None = None, n_gpu_layers: int = 0, kv_cache: str = "f16"):
    """A llama_cpp.Llama keeping the logits of every position."""
    llama_cpp = _llama_cpp()
    try:
        return llama_cpp.Llama(model_path=os.fspath(path), n_ctx=n_ctx, n_batch=min(n_ctx, BATCH),
                               n_ubatch=min(n_ctx, BATCH), logits_all=True, n_threads=n_threads or os.cpu_count(),
                               n_gpu_layers=n_gpu_layers, type_k=KV_TYPES[kv_cache], type_v=KV_TYPES[kv_cache],
                               verbose=False)
    except (ValueError, RuntimeError, OSError) as err:
        raise ModelFileError(f"llama.cpp cannot load {path}: {err}") from err


def dump(model, prompt_ids: list[int], n_predict: int = 0, *, layers: bool = False, n_threads: int | None = None,
         n_gpu_layers: int = 0, kv_cache: str = "f16") -> Golden:
    """llama.cpp's logits of every position of `prompt_ids` plus `n_predict` greedy tokens, as a Golden; with
    `layers`, also llama.cpp's graph nodes that carry refspec's tensor names (`LayerTap`)."""
    if checks.integer("n_predict", n_predict) < 0:
        raise UsageError(f"-n must be 0 or more tokens, got {n_predict}")
    checks.flag("layers", layers)
    if n_threads is not None:
        checks.integer("n_threads", n_threads, 1)
    checks.integer("n_gpu_layers", n_gpu_layers, -1)
    if not isinstance(kv_cache, str) or kv_cache not in KV_TYPES:
        raise UsageError(f"kv_cache must be one of {', '.join(KV_TYPES)}, got {kv_cache!r}")
    llama_cpp = _llama_cpp()
    model = load_model(model)
    ids = check_ids(prompt_ids, model.config.n_vocab)
    n_prompt = len(ids)
    n_total = len(ids) + n_predict
    if n_total > model.config.n_ctx:
        raise UsageError(f"{n_total} tokens exceed the model's context of {model.config.n_ctx}")
    llm = open_model(model.path, n_total, n_threads=n_threads, n_gpu_layers=n_gpu_layers, kv_cache=kv_cache)
    if llm.n_vocab() != model.config.n_vocab:
        raise ModelFileError(f"llama.cpp reads a vocabulary of {llm.n_vocab()}, refspec {model.config.n_vocab}")
    if n_predict:
        ids = ids + greedy(llm, ids, n_predict)
        llm.reset()
    tap = LayerTap(llama_cpp, llm, tensor_names(model.config.n_layer)[:-1]) if layers else None
    llm.eval(ids)  # one pass over every position, in batches of BATCH
    tensors = tap.tensors(len(ids)) if tap else {}
    tensors[LOGITS] = np.array(llm.scores[: len(ids)], dtype=np.float32)
    meta = {"engine": "llama.cpp", "engine_version": f"llama-cpp-python {llama_cpp.__version__}",
            "device": "cpu" if not n_gpu_layers else f"gpu ({n_gpu_layers} layers)", "n_batch": min(len(ids), BATCH),
            "kv_cache": kv_cache}
    return Golden(np.asarray(ids, np.int32), {n: tensors[n] for n in sorted(tensors, key=forward_order)},
                  run_metadata(model, n_prompt, meta))


class LayerTap:
    """Copies llama.cpp's graph nodes named like refspec's tensors (`attn_norm-3`, ..., `result_norm`) as
    they are computed, through the context's eval callback (cb_eval, what llama-eval-callback uses). The
    Llama object gets a second context with the callback; nodes are read with ggml's own accessors."""

    GGML_TYPE_F32 = 0
    NE_OFFSET = 16  # struct ggml_tensor: enum type (4 bytes, padded to 8), buffer pointer, then int64 ne[4]

    def __init__(self, llama_cpp, llm, names):
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr  # llama.cpp's context notes go to stderr

        self.lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
        self.lib.ggml_get_name.restype, self.lib.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        self.lib.ggml_nbytes.restype, self.lib.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
        self.lib.ggml_is_contiguous.restype, self.lib.ggml_is_contiguous.argtypes = ctypes.c_bool, [ctypes.c_void_p]
        self.lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.wanted = set(names)
        self.parts: dict[str, list] = {}
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)  # kept: C holds a pointer
        params = llm.context_params
        params.cb_eval = self.callback
        with suppress_stdout_stderr(disable=False):
            context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        llm._ctx = llm._stack.enter_context(_closing(context))

    def _on_node(self, tensor, ask, user_data) -> bool:
        name = self.lib.ggml_get_name(tensor).decode(errors="replace")
        if ask:
            return name in self.wanted
        kind = ctypes.c_int32.from_address(tensor).value
        ne = (ctypes.c_int64 * 4).from_address(tensor + self.NE_OFFSET)
        if kind == self.GGML_TYPE_F32 and ne[2] == ne[3] == 1 and self.lib.ggml_is_contiguous(tensor):
            rows = np.empty((ne[1], ne[0]), np.float32)  # ggml [ne0 features, ne1 tokens] -> [tokens, features]
            self.lib.ggml_backend_tensor_get(tensor, rows.ctypes.data, 0, rows.nbytes)
            self.parts.setdefault(name, []).append(rows)
        return True  # False would cancel the computation

    def tensors(self, n_pos: int) -> dict:
        """Every tapped name that covers all n_pos positions, [n_pos, ...]."""
        out = {name: np.concatenate(rows) for name, rows in self.parts.items()}
        return {name: t for name, t in out.items() if t.shape[0] == n_pos}


def _closing(obj):
    import contextlib

    return contextlib.closing(obj)


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
