"""Random-weight GGUF models, written with gguf-py's GGUFWriter, for tests and benchmarks.

A synthetic model is a complete GGUF that ``refspec.gguf_model.load`` accepts: hyper-parameters under the usual
``{arch}.*`` keys, every tensor of the arch, and a small working byte-level BPE tokenizer (GPT-2 byte alphabet,
a few merges, ChatML control tokens, a ChatML chat template), so a tiny model runs end to end.

Weights are random with a sensible scale (element std 1/sqrt(K) for a matrix with K inputs; norm weights near
1), so activations stay finite and logits vary. Matrices are generated a few million values at a time while
they are written, so a model of real width (``PRESETS``) costs little memory; Q8_0 matrices are written as
random int8 quants and fp16 scales directly, without a float copy.

    python -m refspec.synthetic tiny.gguf --arch qwen2 --n-layer 2
    python -m refspec.synthetic llama8b-2l.gguf --preset llama-8b --n-layer 2
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np
from gguf import (GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, RopeScalingType,
                  TokenType)
from gguf import quants as ggml_quants
from gguf.gguf_writer import GGUFValue

from refspec import checks
from refspec.errors import OutputError, RefspecError, UsageError
from refspec.gguf_model import (MAX_CONTEXT, MAX_NEXTN, ROPE_ATTN_FACTOR_RANGE, ROPE_BASE_RANGE, ROPE_FACTOR_RANGE,
                                ROPE_FREQ_FACTOR_RANGE)
from refspec.model import ARCHITECTURES, QK8_0
from refspec.progress import ByteProgress
from refspec.tokenizer import byte_alphabet

# Shapes of real models, for benchmarks (pass n_layer to write only a few layers of real width).
PRESETS = {
    "llama-8b": dict(arch="llama", n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8,
                     n_ctx=8192, n_vocab=128256, rope_base=500000.0, eps=1e-5),
    "qwen2.5-7b": dict(arch="qwen2", n_layer=28, n_embd=3584, n_ff=18944, n_head=28, n_head_kv=4,
                       n_ctx=32768, n_vocab=152064, rope_base=1000000.0, eps=1e-6),
    "qwen3-8b": dict(arch="qwen3", n_layer=36, n_embd=4096, n_ff=12288, n_head=32, n_head_kv=8, head_dim=128,
                     n_ctx=40960, n_vocab=151936, rope_base=1000000.0, eps=1e-6),
    "qwen2.5-32b": dict(arch="qwen2", n_layer=64, n_embd=5120, n_ff=27648, n_head=40, n_head_kv=8,
                        n_ctx=32768, n_vocab=152064, rope_base=1000000.0, eps=1e-6),
    "qwen3-32b": dict(arch="qwen3", n_layer=64, n_embd=5120, n_ff=25600, n_head=64, n_head_kv=8, head_dim=128,
                      n_ctx=40960, n_vocab=151936, rope_base=1000000.0, eps=1e-6),
    # Qwen3.5-27B's public config: 64 layers (every 4th full attention), 48 DeltaNet value heads over 16 key
    # heads of 128, rotary on 64 of 256 dims in sections [11, 11, 10], one MTP block. n_ctx is cut from
    # 262144 to keep the KV cache of a benchmark small.
    "qwen3.5-27b": dict(arch="qwen35", n_layer=64, n_embd=5120, n_ff=17408, n_head=24, n_head_kv=4, head_dim=256,
                        n_rot=64, n_ctx=32768, n_vocab=248320, rope_base=10000000.0, eps=1e-6, n_nextn=1,
                        ssm_d_conv=4, ssm_d_state=128, ssm_n_k_heads=16, ssm_n_v_heads=48,
                        full_attention_interval=4),
}

WEIGHT_TYPES = {"Q8_0": GGMLQuantizationType.Q8_0, "F32": GGMLQuantizationType.F32,
                "F16": GGMLQuantizationType.F16}
FLOAT_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16)}
_FILE_TYPES = {"Q8_0": LlamaFileType.MOSTLY_Q8_0, "F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16}
ROPE_SCALINGS = ("none", "linear", "yarn", "llama3")
CHUNK_VALUES = 1 << 22  # values drawn at a time (a constant, so a seed always gives the same file)
Q8_0_STD = math.sqrt((255**2 - 1) / 12)  # std of int8 quants uniform in [-127, 127], near enough

# ---------------------------------------------------------------------------------------------------------
# The tokenizer: byte-level BPE in the GPT-2 style, as llama.cpp stores it (tokenizer.ggml.model = "gpt2").
# ---------------------------------------------------------------------------------------------------------
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2; token type CONTROL
BOS_ID, EOS_ID, UNK_ID, PAD_ID = 1, 2, 0, 2
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("e", "r"), ("o", "n"), ("r", "e"),
          ("Ġ", "s"), ("a", "t"), ("e", "n"), ("o", "r"), ("Ġ", "w"), ("Ġ", "o"), ("a", "n"), ("Ġa", "n"),
          ("Ġan", "d"), ("i", "s"), ("Ġ", "i"), ("l", "l"), ("o", "u"), ("Ġ", "c"), ("e", "s"), ("in", "g")]
VOCABS = ("bpe", "spm")
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer_vocab(n_vocab: int | None = None) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges). Padded to n_vocab with unused "[PAD{i}]" tokens, as llama.cpp pads."""
    tokens = SPECIAL_TOKENS + byte_alphabet() + [left + right for left, right in MERGES]
    types = [TokenType.CONTROL] * len(SPECIAL_TOKENS) + [TokenType.NORMAL] * (len(tokens) - len(SPECIAL_TOKENS))
    tokens, types = _pad(tokens, types, n_vocab)
    return tokens, types, [f"{left} {right}" for left, right in MERGES]


# The SentencePiece alternative (tokenizer.ggml.model = "llama"), laid out as Llama-2's: <unk>, <s>, </s>, the
# 256 byte tokens <0x00>..<0xFF>, then pieces by score. Spaces are '▁'. A merged piece scores higher the earlier
# it is listed (SentencePiece merges the highest-scoring pair first); single characters score lowest.
SPM_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: unknown, then control (BOS, EOS)
SPM_BOS_ID, SPM_EOS_ID, SPM_UNK_ID = 1, 2, 0
SPM_MERGED = ["▁t", "he", "▁the", "▁a", "in", "er", "on", "re", "▁s", "at", "en", "or", "▁w", "▁o", "an",
              "▁an", "▁and", "is", "▁i", "ll", "ou", "▁c", "es", "ing", "▁is", "▁in", "▁of", "▁to", "▁he"]
SPM_CHARS = "▁etaoinshrdlucmfwypvbgkqjxzETAOINSHRDLUCMFWYPVBGKQJXZ0123456789.,!?'\"-:;()"


def spm_vocab(n_vocab: int | None = None) -> tuple[list[str], list[int], list[float]]:
    """(tokens, token types, scores) of a small SentencePiece vocabulary, padded as ``tokenizer_vocab``."""
    pieces = SPM_MERGED + [c for c in SPM_CHARS if c not in SPM_MERGED]
    tokens = SPM_SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = ([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
             + [TokenType.NORMAL] * len(pieces))
    tokens, types = _pad(tokens, types, n_vocab)
    scores = [0.0] * (len(SPM_SPECIAL_TOKENS) + 256) + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, types, scores


def _pad(tokens: list[str], types: list[int], n_vocab: int | None) -> tuple[list[str], list[int]]:
    if n_vocab is not None:
        if n_vocab < len(tokens):
            raise UsageError(f"n_vocab {n_vocab} is smaller than the synthetic tokenizer's {len(tokens)} tokens")
        tokens = tokens + [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
        types = types + [TokenType.UNUSED] * (n_vocab - len(types))
    return tokens, [int(t) for t in types]


# ---------------------------------------------------------------------------------------------------------
# Random tensors, generated while they are written.
# ---------------------------------------------------------------------------------------------------------
class RandomMatrix:
    """An [N, K] matrix of random weights with element std 1/sqrt(K). GGUFWriter.write_tensor_data needs only
    ``nbytes`` and ``tofile``; rows are drawn and written CHUNK_VALUES at a time."""

    def __init__(self, rng: np.random.Generator, n: int, k: int, weight_type: str):
        self.rng, self.n, self.k, self.weight_type = rng, n, k, weight_type
        self.ggml_type = WEIGHT_TYPES[weight_type]
        if weight_type == "Q8_0":
            self.row_bytes = k // QK8_0 * (2 + QK8_0)
            self.file_shape = (n, self.row_bytes)  # numpy order, bytes: what GGUFWriter expects for quants
        else:
            self.row_bytes = k * FLOAT_DTYPES[weight_type].itemsize
            self.file_shape = (n, k)
        self.nbytes = n * self.row_bytes

    def tofile(self, f) -> None:
        rows_per_chunk = max(1, CHUNK_VALUES // self.k)
        for start in range(0, self.n, rows_per_chunk):
            self.rows(min(rows_per_chunk, self.n - start)).tofile(f)

    def rows(self, n_rows: int) -> np.ndarray:
        k, std = self.k, 1.0 / math.sqrt(self.k)
        if self.weight_type != "Q8_0":
            return (self.rng.standard_normal((n_rows, k), dtype=np.float32) * np.float32(std)).astype(
                FLOAT_DTYPES[self.weight_type])
        n_blocks = k // QK8_0
        # Raw generator output as int8 is 3x faster than rng.integers; -128 becomes -127, as in ggml's quants.
        quants = self.rng.bit_generator.random_raw(n_rows * k // 8).view(np.int8).reshape(n_rows, n_blocks, QK8_0)
        np.maximum(quants, -127, out=quants)
        scales = (self.rng.uniform(0.5, 1.5, size=(n_rows, n_blocks, 1)) * (std / Q8_0_STD)).astype(np.float16)
        blocks = np.empty((n_rows, n_blocks, 2 + QK8_0), dtype=np.uint8)  # GGUF block: fp16 scale, 32 int8
        blocks[:, :, :2] = scales.view(np.uint8)
        blocks[:, :, 2:] = quants.view(np.uint8)
        return blocks


def _vector(rng: np.random.Generator, n: int, mean: float, std: float) -> np.ndarray:
    return (mean + std * rng.standard_normal(n)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# The model file.
# ---------------------------------------------------------------------------------------------------------
def write_model(path: str | os.PathLike, *, arch: str = "llama", n_layer: int = 2, n_embd: int = 64,
                n_ff: int = 96, n_head: int = 4, n_head_kv: int = 2, head_dim: int | None = None,
                n_rot: int | None = None, n_ctx: int = 256, n_vocab: int | None = None,
                rope_base: float = 10000.0, eps: float = 1e-5, seed: int = 0, weight_type: str = "Q8_0",
                tie_embeddings: bool = True, tokenizer: bool = True, vocab: str | None = None, n_nextn: int = 0,
                ssm_d_conv: int | None = None, ssm_d_state: int | None = None, ssm_n_k_heads: int | None = None,
                ssm_n_v_heads: int | None = None, full_attention_interval: int | None = None,
                rope_scaling: str = "none", rope_factor: float | None = None, rope_orig_ctx: int | None = None,
                rope_attn_factor: float | None = None, log=None) -> pathlib.Path:
    """Write a random-weight GGUF model and return its path. ``log``, if given, receives a progress line every
    10 s of the writing (a 34 GB preset takes minutes).

    ``head_dim`` and ``n_rot`` are written (as attention.key_length / rope.dimension_count) only when given;
    otherwise the loader's defaults (n_embd / n_head, head_dim) apply. ``n_vocab`` defaults to the tokenizer's
    size; a larger one pads the vocabulary with unused tokens. ``tokenizer=False`` leaves out every
    ``tokenizer.*`` key (the model then has only token ids). ``vocab``: "bpe" (byte-level BPE, ChatML tokens;
    the default) or "spm" (SentencePiece, Llama-2's layout: ``spm_vocab``).

    qwen35 only: ``n_nextn`` MTP blocks (0 or 1) after the ``n_layer`` layers; the Gated DeltaNet sizes
    ``ssm_*`` (default HYBRID_DEFAULTS; value heads tiled over key heads); every ``full_attention_interval``-th
    layer (default min(4, n_layer)) is full attention; ``n_rot`` defaults to a quarter of the head, as Qwen3.5's.

    ``rope_scaling`` (one of ROPE_SCALINGS) writes RoPE scaling as converters do: ``linear`` and ``yarn`` as
    rope.scaling.* keys with ``rope_factor`` (default 4; and ``rope_orig_ctx``, default n_ctx / rope_factor,
    for YaRN); ``llama3`` (llama only) as the tensor rope_freqs.weight, from ``rope_factor`` and
    ``rope_orig_ctx`` by the rule of Llama 3.1's rope_scaling (low_freq_factor 1, high_freq_factor 4).
    ``rope_attn_factor`` writes rope.scaling.attn_factor.

    Every argument is checked before anything is written (a UsageError): numbers must lie in the ranges the
    loader accepts, as the binary32 values the file holds, and an option that cannot apply (an ``ssm_*`` size
    on another arch, ``rope_factor`` without ``rope_scaling``, ``vocab`` without a tokenizer) is refused rather
    than ignored."""
    (n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_rot, n_ctx, n_vocab, seed, rope_base,
     eps) = _check_arguments(arch=arch, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                             n_head_kv=n_head_kv, head_dim=head_dim, n_rot=n_rot, n_ctx=n_ctx, n_vocab=n_vocab,
                             rope_base=rope_base, eps=eps, seed=seed, weight_type=weight_type)
    rope_factor, rope_orig_ctx, rope_attn_factor = _check_rope_arguments(
        arch, n_ctx, rope_base, rope_scaling, rope_factor, rope_orig_ctx, rope_attn_factor)
    vocab = _check_vocab(vocab, tokenizer)
    dim = head_dim if head_dim is not None else n_embd // n_head
    n_q, n_kv = n_head * dim, n_head_kv * dim
    for what, k in (("n_embd", n_embd), ("n_head*head_dim", n_q), ("n_ff", n_ff)):
        if k <= 0 or (weight_type == "Q8_0" and k % QK8_0):
            raise UsageError(f"{what} = {k} must be positive, and a multiple of {QK8_0} for Q8_0 matrices")
    n_nextn = checks.integer("n_nextn", n_nextn, 0, MAX_NEXTN)
    hybrid_options = dict(n_nextn=n_nextn, ssm_d_conv=ssm_d_conv, ssm_d_state=ssm_d_state,
                          ssm_n_k_heads=ssm_n_k_heads, ssm_n_v_heads=ssm_n_v_heads,
                          full_attention_interval=full_attention_interval)
    hybrid = arch == "qwen35"
    if hybrid:
        ssm = _hybrid_shape(n_layer, weight_type, **hybrid_options)
        if n_rot is None:
            n_rot = max(2, dim // 8 * 2)
    else:
        _refuse_hybrid_options(**hybrid_options)
    out = _output_path(path)
    checks.callback("log", log)
    tokens, token_types, merges_or_scores = (spm_vocab if vocab == "spm" else tokenizer_vocab)(n_vocab)
    n_vocab = len(tokens)
    orig_ctx = rope_orig_ctx if rope_orig_ctx is not None else max(1, int(n_ctx / rope_factor))

    writer = GGUFWriter(None, arch)
    writer.add_name(f"refspec synthetic {arch}")
    writer.add_file_type(_FILE_TYPES[weight_type])
    writer.add_block_count(n_layer + n_nextn)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    if head_dim is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if n_rot is not None:
        writer.add_rope_dimension_count(n_rot)
    writer.add_rope_freq_base(rope_base)
    if rope_scaling in ("linear", "yarn"):
        writer.add_rope_scaling_type(RopeScalingType(rope_scaling))
        writer.add_rope_scaling_factor(rope_factor)
        if rope_scaling == "yarn":
            writer.add_rope_scaling_orig_ctx_len(orig_ctx)
    if rope_attn_factor is not None:
        writer.add_rope_scaling_attn_factors(rope_attn_factor)
    writer.add_layer_norm_rms_eps(eps)
    writer.add_vocab_size(n_vocab)
    if hybrid:
        _add_hybrid_keys(writer, ssm, n_rot)
    if tokenizer:
        (_add_spm_tokenizer if vocab == "spm" else _add_tokenizer)(writer, tokens, token_types, merges_or_scores)

    rng = np.random.default_rng(seed)
    tensors = {"token_embd.weight": RandomMatrix(rng, n_vocab, n_embd, weight_type)}
    for i in range(n_layer + n_nextn):
        if hybrid and ssm.recurrent(i):
            layer = _deltanet_tensors(rng, n_embd, n_ff, ssm, weight_type)
        else:
            layer = _layer_tensors(rng, arch, n_embd, n_ff, n_q, n_kv, dim, weight_type)
        if hybrid and i >= n_layer:
            layer.update(_nextn_tensors(rng, n_embd, weight_type))
        tensors.update({f"blk.{i}.{name}": tensor for name, tensor in layer.items()})
    tensors["output_norm.weight"] = _vector(rng, n_embd, 1.0, 0.1)
    if rope_scaling == "llama3":
        tensors["rope_freqs.weight"] = llama3_rope_freqs(n_rot or dim, rope_base, rope_factor, orig_ctx)
    if not tie_embeddings:
        tensors["output.weight"] = RandomMatrix(rng, n_vocab, n_embd, weight_type)

    for name, tensor in tensors.items():
        if isinstance(tensor, RandomMatrix):
            raw_dtype = tensor.ggml_type if weight_type == "Q8_0" else None
            dtype = np.uint8 if weight_type == "Q8_0" else FLOAT_DTYPES[weight_type]
            writer.add_tensor_info(name, tensor.file_shape, dtype, tensor.nbytes, raw_dtype=raw_dtype)
        else:
            writer.add_tensor_info(name, tensor.shape, tensor.dtype, tensor.nbytes)

    total = sum(tensor.nbytes for tensor in tensors.values())
    checks.room(out, total, "the model")
    progress = None if log is None else ByteProgress(total, f"writing {out.name}", log)

    def write(temporary: str) -> None:
        writer.write_header_to_file(pathlib.Path(temporary))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tensors.values():
            writer.write_tensor_data(tensor)
            if progress is not None:
                progress.advance(tensor.nbytes)

    _write_atomically(out, write, writer.close)
    return out


# Bounds on write_model's arguments: far above real models (presets), low enough that nothing absurd is
# attempted (the vocabulary is built as a Python list; the loader refuses more than 2**20 strings).
MAX_LAYERS, MAX_WIDTH, MAX_HEADS, MAX_VOCAB = 1024, 1 << 17, 1024, 1 << 19
# Positive binary32 numbers: what the loader asks of attention.layer_norm_rms_epsilon.
FLOAT32_POSITIVE = (float(np.finfo(np.float32).smallest_subnormal), float(np.finfo(np.float32).max))


def _check_arguments(*, arch, n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_rot, n_ctx, n_vocab,
                     rope_base, eps, seed, weight_type) -> tuple:
    """write_model's shape arguments, checked before anything is written. Returns the integers as int and
    the numbers as float (NumPy scalars are accepted), in the order of the arguments from n_layer on."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"arch {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    if weight_type not in WEIGHT_TYPES:
        raise UsageError(f"weight_type {weight_type!r} is not one of {', '.join(WEIGHT_TYPES)}")
    n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_rot, n_ctx, n_vocab, seed = (
        None if value is None and what in ("head_dim", "n_rot", "n_vocab") else checks.integer(what, value, lo, hi)
        for what, value, lo, hi in (("n_layer", n_layer, 1, MAX_LAYERS), ("n_embd", n_embd, 1, MAX_WIDTH),
                                    ("n_ff", n_ff, 1, MAX_WIDTH), ("n_head", n_head, 1, MAX_HEADS),
                                    ("n_head_kv", n_head_kv, 1, MAX_HEADS), ("head_dim", head_dim, 1, MAX_WIDTH),
                                    ("n_rot", n_rot, 2, MAX_WIDTH), ("n_ctx", n_ctx, 1, MAX_CONTEXT),
                                    ("n_vocab", n_vocab, 1, MAX_VOCAB), ("seed", seed, 0, 2**64 - 1)))
    if n_head % n_head_kv:
        raise UsageError(f"n_head = {n_head} must be a multiple of n_head_kv = {n_head_kv}")
    if head_dim is None and n_embd % n_head:
        raise UsageError(f"n_embd = {n_embd} must be a multiple of n_head = {n_head} (or give head_dim)")
    dim = head_dim if head_dim is not None else n_embd // n_head
    if n_rot is not None and (n_rot % 2 or n_rot > dim):
        raise UsageError(f"n_rot = {n_rot} must be even and at most head_dim = {dim}")
    rope_base = _binary32_in("rope_base", rope_base, ROPE_BASE_RANGE, "rope.freq_base")
    eps = _binary32_in("eps", eps, FLOAT32_POSITIVE, "attention.layer_norm_rms_epsilon")
    return n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_rot, n_ctx, n_vocab, seed, rope_base, eps


def _check_rope_arguments(arch, n_ctx, rope_base, rope_scaling, rope_factor, rope_orig_ctx,
                          rope_attn_factor) -> tuple[float, int | None, float | None]:
    """The rope_* arguments in the loader's ranges, and rope_factor and rope_orig_ctx only where the scaling
    uses them. Returns (rope_factor, default 4; rope_orig_ctx; rope_attn_factor)."""
    if rope_scaling not in ROPE_SCALINGS:
        raise UsageError(f"rope_scaling {rope_scaling!r} is not one of {', '.join(ROPE_SCALINGS)}")
    if rope_scaling == "llama3" and arch != "llama":
        raise UsageError(f"rope_scaling 'llama3' (rope_freqs.weight) is for llama files, not {arch}")
    if rope_factor is not None:
        if rope_scaling == "llama3":  # the file holds frequency factors from 1 up to rope_factor
            limits, key = (ROPE_FACTOR_RANGE[0], ROPE_FREQ_FACTOR_RANGE[1]), "rope_freqs.weight values"
        else:
            limits, key = ROPE_FACTOR_RANGE, "rope.scaling.factor"
        rope_factor = _binary32_in("rope_factor", rope_factor, limits, key)
        if rope_scaling == "none":
            raise UsageError("rope_factor (a RoPE scaling factor) needs rope_scaling linear, yarn or llama3")
    if rope_orig_ctx is not None:
        rope_orig_ctx = checks.integer("rope_orig_ctx", rope_orig_ctx)
        if not 1 <= rope_orig_ctx <= n_ctx:
            raise UsageError(f"rope_orig_ctx must be an integer in 1..n_ctx ({n_ctx}), got {rope_orig_ctx}")
        if rope_scaling not in ("yarn", "llama3"):
            raise UsageError("rope_orig_ctx (the original context of RoPE scaling) needs rope_scaling yarn or "
                             "llama3")
    if rope_attn_factor is not None:
        rope_attn_factor = _binary32_in("rope_attn_factor", rope_attn_factor, ROPE_ATTN_FACTOR_RANGE,
                                        "rope.scaling.attn_factor")
    if rope_scaling == "yarn" and not np.float32(rope_base) > 1:
        raise UsageError(f"rope_base must exceed 1 for rope_scaling 'yarn' (the loader's rule), got {rope_base!r}")
    return (4.0 if rope_factor is None else rope_factor), rope_orig_ctx, rope_attn_factor


def _binary32_in(what: str, value, limits: tuple[float, float], key: str) -> float:
    """``value``, a real number, as a float, where the binary32 number the file will hold (GGUF stores these
    as float32) lies within ``limits``: the range refspec's loader accepts for ``key``."""
    value = checks.real(what, value)
    with np.errstate(over="ignore"):
        stored = float(np.float32(value))
    if not limits[0] <= stored <= limits[1]:
        rounded = (stored == 0) != (value == 0) or math.isinf(stored) != math.isinf(value)  # under- or overflow
        held = f" ({stored:g} in binary32)" if rounded else ""
        raise UsageError(f"{what} must be a number in {limits[0]:g}..{limits[1]:g} (the loader's range for "
                         f"{key}), got {value!r}{held}")
    return value


def _check_vocab(vocab, tokenizer) -> str:
    if vocab is None:
        return "bpe"
    if vocab not in VOCABS:
        raise UsageError(f"vocab {vocab!r} is not one of {', '.join(VOCABS)}")
    if not tokenizer:
        raise UsageError("vocab (the tokenizer's kind) needs tokenizer=True")
    return vocab


def _output_path(path) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path) or "\0" in os.fspath(path):
        raise UsageError(f"output path {path!r} is not a usable file name")
    if os.fspath(path) == "-":
        raise UsageError("output path '-': a GGUF cannot be written to standard output; give a file name "
                         "(./- for a file named '-')")
    checks.output_file(path, renamed=True)
    return pathlib.Path(path)


def _write_atomically(out: pathlib.Path, write, close) -> None:
    """``write(temporary)`` writes the whole file next to ``out``; only a complete file is renamed to
    ``out``, so a failure (a full disk, an interrupt) never leaves a truncated model behind. OS errors
    become one OutputError."""
    temporary = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        try:
            write(temporary)
        finally:
            close()
        os.replace(temporary, out)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        if temporary.exists():
            temporary.unlink()


def llama3_rope_freqs(n_rot: int, base: float, factor: float, orig_ctx: int, low_freq_factor: float = 1.0,
                      high_freq_factor: float = 4.0) -> np.ndarray:
    """Llama 3.1's frequency factors as llama.cpp's converter writes them to rope_freqs.weight: 1 for pairs
    whose wavelength is below orig_ctx / high_freq_factor, `factor` above orig_ctx / low_freq_factor, and a
    smooth interpolation between. (Data for a synthetic file; the spec reads the factors, it never derives
    them.)"""
    freqs = 1.0 / base ** (np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    wavelen = 2 * math.pi / freqs
    smooth = (orig_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    factors = np.where(wavelen < orig_ctx / high_freq_factor, 1.0,
                       np.where(wavelen > orig_ctx / low_freq_factor, factor, 1 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def _add_tokenizer(writer: GGUFWriter, tokens: list[str], token_types: list[int], merges: list[str]) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")  # the pre-tokenizer of the default model, so both take the same path
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _add_spm_tokenizer(writer: GGUFWriter, tokens: list[str], token_types: list[int], scores: list[float]) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(SPM_BOS_ID)
    writer.add_eos_token_id(SPM_EOS_ID)
    writer.add_unk_token_id(SPM_UNK_ID)
    writer.add_add_bos_token(True)


def _layer_tensors(rng, arch, n_embd, n_ff, n_q, n_kv, head_dim, weight_type) -> dict:
    """One attention layer's tensors, named and shaped as in refspec.gguf_model.LAYER_TENSORS (numpy order:
    [N, K]). qwen35's Q projection holds each head's query and then its output gate."""
    tensors = {
        "attn_norm.weight": _vector(rng, n_embd, 1.0, 0.1),
        "attn_q.weight": RandomMatrix(rng, n_q * (2 if arch == "qwen35" else 1), n_embd, weight_type),
        "attn_k.weight": RandomMatrix(rng, n_kv, n_embd, weight_type),
        "attn_v.weight": RandomMatrix(rng, n_kv, n_embd, weight_type),
        "attn_output.weight": RandomMatrix(rng, n_embd, n_q, weight_type),
    }
    tensors.update(_ffn_tensors(rng, arch, n_embd, n_ff, weight_type))
    if arch == "qwen2":
        tensors.update({"attn_q.bias": _vector(rng, n_q, 0.0, 0.1), "attn_k.bias": _vector(rng, n_kv, 0.0, 0.1),
                        "attn_v.bias": _vector(rng, n_kv, 0.0, 0.1)})
    if arch in ("qwen3", "qwen35"):
        tensors.update({"attn_q_norm.weight": _vector(rng, head_dim, 1.0, 0.1),
                        "attn_k_norm.weight": _vector(rng, head_dim, 1.0, 0.1)})
    return tensors


def _ffn_tensors(rng, arch, n_embd, n_ff, weight_type) -> dict:
    norm = "post_attention_norm.weight" if arch == "qwen35" else "ffn_norm.weight"
    return {
        norm: _vector(rng, n_embd, 1.0, 0.1),
        "ffn_gate.weight": RandomMatrix(rng, n_ff, n_embd, weight_type),
        "ffn_up.weight": RandomMatrix(rng, n_ff, n_embd, weight_type),
        "ffn_down.weight": RandomMatrix(rng, n_embd, n_ff, weight_type),
    }


# qwen35's Gated DeltaNet sizes where write_model is given none.
HYBRID_DEFAULTS = dict(ssm_d_conv=4, ssm_d_state=16, ssm_n_k_heads=2, ssm_n_v_heads=4)
# What each qwen35-only option of write_model is, for the error that refuses it on another arch.
HYBRID_OPTIONS = {"n_nextn": "an MTP block", "ssm_d_conv": "a Gated DeltaNet size",
                  "ssm_d_state": "a Gated DeltaNet size", "ssm_n_k_heads": "a Gated DeltaNet size",
                  "ssm_n_v_heads": "a Gated DeltaNet size", "full_attention_interval": "a hybrid layer pattern"}


def _refuse_hybrid_options(**given) -> None:
    """qwen35's options on another arch: refused, not ignored (n_nextn = 0, no MTP block, applies anywhere)."""
    for what, value in given.items():
        if value is not None and not (what == "n_nextn" and value == 0):
            raise UsageError(f"{what} ({HYBRID_OPTIONS[what]}) needs arch qwen35")


def _hybrid_shape(n_layer, weight_type, *, n_nextn, ssm_d_conv, ssm_d_state, ssm_n_k_heads, ssm_n_v_heads,
                  full_attention_interval):
    """qwen35's sizes (HYBRID_DEFAULTS where not given), checked like write_model's other arguments."""
    def size(what, value, hi):
        return checks.integer(what, HYBRID_DEFAULTS[what] if value is None else value, 1, hi)

    d_conv, d_state = size("ssm_d_conv", ssm_d_conv, 64), size("ssm_d_state", ssm_d_state, MAX_WIDTH)
    n_k_heads = size("ssm_n_k_heads", ssm_n_k_heads, MAX_HEADS)
    n_v_heads = size("ssm_n_v_heads", ssm_n_v_heads, MAX_HEADS)
    interval = min(4, n_layer) if full_attention_interval is None else full_attention_interval
    interval = checks.integer("full_attention_interval", interval, 1, n_layer + n_nextn)
    if n_v_heads % n_k_heads:
        raise UsageError(f"ssm_n_v_heads = {n_v_heads} must be a multiple of ssm_n_k_heads = {n_k_heads}")
    shape = _HybridShape(n_layer, n_nextn, d_conv, d_state, n_k_heads, n_v_heads, interval)
    if weight_type == "Q8_0" and shape.value_dim % QK8_0:
        raise UsageError(f"ssm_n_v_heads * ssm_d_state = {shape.value_dim} must be a multiple of {QK8_0}")
    return shape


class _HybridShape(NamedTuple):
    n_layer: int
    n_nextn: int
    d_conv: int
    d_state: int
    n_k_heads: int
    n_v_heads: int
    interval: int  # every interval-th layer is full attention

    @property
    def value_dim(self) -> int:
        return self.n_v_heads * self.d_state

    @property
    def conv_dim(self) -> int:
        return 2 * self.n_k_heads * self.d_state + self.value_dim

    def recurrent(self, layer: int) -> bool:
        return layer < self.n_layer and (layer + 1) % self.interval != 0


def _add_hybrid_keys(writer: GGUFWriter, ssm: _HybridShape, n_rot: int) -> None:
    """qwen35's keys, as llama.cpp's converter writes them."""
    if ssm.n_nextn:
        writer.add_nextn_predict_layers(ssm.n_nextn)
    writer.add_ssm_conv_kernel(ssm.d_conv)
    writer.add_ssm_state_size(ssm.d_state)
    writer.add_ssm_group_count(ssm.n_k_heads)
    writer.add_ssm_time_step_rank(ssm.n_v_heads)
    writer.add_ssm_inner_size(ssm.value_dim)
    writer.add_full_attention_interval(ssm.interval)
    pairs = n_rot // 2  # split over time, height, width as Qwen3.5's [11, 11, 10] splits 32 pairs
    first = -(-pairs // 3)
    second = -(-(pairs - first) // 2)
    writer.add_rope_dimension_sections([first, second, pairs - first - second, 0])


def _deltanet_tensors(rng, n_embd, n_ff, ssm: _HybridShape, weight_type) -> dict:
    """A Gated DeltaNet layer's tensors. A and dt_bias are drawn as Qwen3.5's initialisation draws them
    (A uniform in [1, 16], dt = softplus(dt_bias) uniform in [0.001, 0.1]); ssm_a = -A, as the converter
    stores -exp(A_log)."""
    n_v = ssm.n_v_heads
    dt = rng.uniform(0.001, 0.1, n_v)
    tensors = {
        "attn_norm.weight": _vector(rng, n_embd, 1.0, 0.1),
        "attn_qkv.weight": RandomMatrix(rng, ssm.conv_dim, n_embd, weight_type),
        "attn_gate.weight": RandomMatrix(rng, ssm.value_dim, n_embd, weight_type),
        "ssm_beta.weight": RandomMatrix(rng, n_v, n_embd, weight_type),
        "ssm_alpha.weight": RandomMatrix(rng, n_v, n_embd, weight_type),
        "ssm_conv1d.weight": (rng.standard_normal((ssm.conv_dim, ssm.d_conv)) / math.sqrt(ssm.d_conv)).astype(
            np.float32),
        "ssm_dt.bias": np.log(np.expm1(dt)).astype(np.float32),
        "ssm_a": (-rng.uniform(1.0, 16.0, n_v)).astype(np.float32),
        "ssm_norm.weight": _vector(rng, ssm.d_state, 1.0, 0.1),
        "ssm_out.weight": RandomMatrix(rng, n_embd, ssm.value_dim, weight_type),
    }
    tensors.update(_ffn_tensors(rng, "qwen35", n_embd, n_ff, weight_type))
    return tensors


def _nextn_tensors(rng, n_embd, weight_type) -> dict:
    """The MTP block's own tensors (its decoder block is an attention layer's)."""
    return {
        "nextn.eh_proj.weight": RandomMatrix(rng, n_embd, 2 * n_embd, weight_type),
        "nextn.enorm.weight": _vector(rng, n_embd, 1.0, 0.1),
        "nextn.hnorm.weight": _vector(rng, n_embd, 1.0, 0.1),
        "nextn.shared_head_norm.weight": _vector(rng, n_embd, 1.0, 0.1),
    }

def rewrite_gguf(src: str | os.PathLike, dst: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None,
                 drop: Iterable[str] = (), tensor_types: Mapping[str, str] | None = None,
                 add_tensors: Mapping[str, np.ndarray] | None = None) -> pathlib.Path:
    """Copy the GGUF ``src`` to ``dst`` with changes, to make files the loader must refuse (or convert).

    ``metadata`` sets keys: a plain value keeps the key's GGUF type when the key exists (else the type gguf-py
    infers), a ``GGUFValue`` gives the type explicitly. ``drop`` removes keys and tensors by name.
    ``tensor_types`` re-encodes tensors ({name: "Q4_1"}) with gguf-py's reference quantizers.
    ``add_tensors`` appends tensors given as numpy arrays (numpy order, F32/F16)."""
    metadata, tensor_types, drop = dict(metadata or {}), dict(tensor_types or {}), set(drop)
    reader = GGUFReader(src)
    arch = metadata.pop("general.architecture", None) or reader.fields["general.architecture"].contents()
    writer = GGUFWriter(os.fspath(dst), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        value = metadata.pop(key, field.contents())
        if not isinstance(value, GGUFValue):
            sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            value = GGUFValue(value, field.types[0], sub_type)
        writer.add_key_value(key, value.value, value.type, value.sub_type)
    for key, value in metadata.items():
        if not isinstance(value, GGUFValue):
            value = GGUFValue(value, GGUFValueType.get_type(value))
        writer.add_key_value(key, value.value, value.type, value.sub_type)
    for tensor in reader.tensors:
        if tensor.name in drop:
            continue
        new_type = tensor_types.get(tensor.name)
        if new_type is None:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
        else:
            new_type = GGMLQuantizationType[new_type]
            values = ggml_quants.dequantize(tensor.data, tensor.tensor_type)
            writer.add_tensor(tensor.name, ggml_quants.quantize(values, new_type), raw_dtype=new_type)
    for name, values in (add_tensors or {}).items():
        writer.add_tensor(name, values)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return pathlib.Path(dst)


# ---------------------------------------------------------------------------------------------------------
# Command line: python -m refspec.synthetic OUT.gguf [--preset NAME] [--arch ...] ...
# ---------------------------------------------------------------------------------------------------------
_OPTIONS = [  # (flag, write_model keyword, type, help)
    ("--arch", "arch", str, f"one of {', '.join(ARCHITECTURES)} (default llama)"),
    ("--n-layer", "n_layer", int, "layers (default 2)"),
    ("--n-embd", "n_embd", int, "embedding width (default 64)"),
    ("--n-ff", "n_ff", int, "feed-forward width (default 96)"),
    ("--n-head", "n_head", int, "attention heads (default 4)"),
    ("--n-head-kv", "n_head_kv", int, "key/value heads (default 2)"),
    ("--head-dim", "head_dim", int, "head dimension (default n_embd / n_head)"),
    ("--n-rot", "n_rot", int, "rotated dimensions per head (default head_dim)"),
    ("--n-ctx", "n_ctx", int, "context length (default 256)"),
    ("--n-vocab", "n_vocab", int, "vocabulary size (default: the tokenizer's size)"),
    ("--rope-base", "rope_base", float, "RoPE base (default 10000)"),
    ("--eps", "eps", float, "RMSNorm epsilon (default 1e-5)"),
    ("--rope-scaling", "rope_scaling", str, f"one of {', '.join(ROPE_SCALINGS)} (default none; llama3: llama only, "
     "as rope_freqs.weight)"),
    ("--rope-factor", "rope_factor", float, "context extension factor of --rope-scaling (default 4)"),
    ("--rope-orig-ctx", "rope_orig_ctx", int, "original context of yarn and llama3 (default n_ctx / factor)"),
    ("--rope-attn-factor", "rope_attn_factor", float, "rope.scaling.attn_factor (default: not written)"),
    ("--seed", "seed", int, "random seed (default 0)"),
    ("--weight-type", "weight_type", str, f"one of {', '.join(WEIGHT_TYPES)} (default Q8_0)"),
    ("--n-nextn", "n_nextn", int, "qwen35: MTP (nextn) blocks, 0 or 1 (default 0)"),
    ("--ssm-d-state", "ssm_d_state", int, "qwen35: DeltaNet head size (default 16)"),
    ("--ssm-n-k-heads", "ssm_n_k_heads", int, "qwen35: DeltaNet key heads (default 2)"),
    ("--ssm-n-v-heads", "ssm_n_v_heads", int, "qwen35: DeltaNet value heads (default 4)"),
    ("--full-attention-interval", "full_attention_interval", int,
     "qwen35: every N-th layer is full attention (default min(4, n_layer))"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the GGUF file to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="shapes of a real model; flags override them")
    for flag, dest, type_, help_ in _OPTIONS:
        parser.add_argument(flag, dest=dest, type=type_, help=help_)
    parser.add_argument("--untied", action="store_true", help="write a separate output.weight")
    parser.add_argument("--no-tokenizer", action="store_true", help="leave out the tokenizer.* keys")
    parser.add_argument("--vocab", choices=VOCABS,
                        help="byte-level BPE with ChatML tokens (default) or a SentencePiece vocabulary")


def run(args: argparse.Namespace) -> pathlib.Path:
    kwargs = dict(PRESETS[args.preset]) if args.preset else {}
    kwargs.update({dest: getattr(args, dest) for _, dest, _, _ in _OPTIONS if getattr(args, dest) is not None})
    return write_model(args.out, tie_embeddings=not args.untied, tokenizer=not args.no_tokenizer, vocab=args.vocab,
                       log=lambda line: print(line, file=sys.stderr, flush=True), **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m refspec.synthetic", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        print(run(parser.parse_args(argv)))
    except RefspecError as e:
        sys.exit(f"refspec: error: {e}")


if __name__ == "__main__":
    main()
