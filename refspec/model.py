"""The model as refspec holds it in memory: hyper-parameters from GGUF metadata and Q8_0 weights, read
where they lie in the memory-mapped file.

Q8_0 matrices (``Q8Matrix``). A GGUF Q8_0 row of K values is K/32 blocks of 34 bytes (an fp16 scale, then 32
int8 quants). refspec reads every matrix through two views:

* ``q_blocks``: int8, shape [N, K/32, 32], ``q_blocks[n, b]`` holds output feature n's quants of block b;
* ``d``: float16, shape [N, K/32], ``d[n, b]`` scales quants ``q_blocks[n, b]``.

The value of element (n, 32*b + i) is ``float32(d[n, b]) * float32(q_blocks[n, b, i])`` (exact in binary32).

A matrix is stored one of two ways, with the same values. A matrix loaded from a Q8_0 GGUF keeps the file's
own blocks (``blocks``: a structured array [N, K/32] of ``Q8_0_BLOCK``), normally a view of the memory-mapped
file, so a model costs no memory beyond the pages the kernel maps (the views above are strided views of those
bytes, no copies). A matrix built in memory from separate arrays (tests, hand-made weights) keeps them
(``q`` int8 [N, K] contiguous, ``d``). ``q`` as [N, K] is a view of the split storage and a fresh copy of a
block-stored matrix: fine for one matrix at a time (a GPU upload), wasteful per token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

QK8_0 = 32  # values per Q8_0 block, fixed by the ggml format
ARCHITECTURES = ("llama", "qwen2", "qwen3", "qwen35")
HYBRID_ARCHITECTURES = ("qwen35",)  # Gated DeltaNet layers between gated full-attention layers


@dataclass(frozen=True)
class RopeScaling:
    """What shapes RoPE's angles beyond n_rot and the base, all from the file (SPEC.md, "RoPE"). The
    default is plain RoPE."""

    kind: str = "none"  # "none", "linear" (every angle / factor) or "yarn" (per-pair mix, magnitude scale)
    factor: float = 1.0  # s >= 1: the context extension factor of linear and YaRN scaling
    attn_factor: float = 1.0  # a: every cos and sin entry is multiplied by it (rope.scaling.attn_factor)
    n_ctx_orig: int = 0  # YaRN: the context length the model was trained for
    beta_fast: float = 32.0  # YaRN: pairs turning more than beta_fast times over n_ctx_orig are not scaled
    beta_slow: float = 1.0  # YaRN: pairs turning fewer than beta_slow times are fully scaled
    freq_factors: tuple[float, ...] | None = None  # rope_freqs.weight (Llama 3.x): pair i's angle / f[i]


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters, all read from GGUF metadata (never from a model's name)."""

    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int  # rotated dimensions per head (the rest pass through)
    rope_base: float
    rms_eps: float  # as stored in the file (float32)
    n_ctx: int
    n_vocab: int
    rope_scaling: RopeScaling = RopeScaling()
    # qwen35 (hybrid) only; see `recurrent` and the ssm_* sizes below
    n_nextn: int = 0  # MTP ("nextn") blocks stored after the n_layer trunk layers (0 or 1)
    recurrent: tuple[bool, ...] = ()  # per block (trunk, then nextn): Gated DeltaNet instead of attention
    ssm_d_conv: int = 0  # causal conv1d taps
    ssm_d_state: int = 0  # key (and value) dimension of a DeltaNet head
    ssm_n_k_heads: int = 0  # DeltaNet key heads (GGUF ssm.group_count)
    ssm_n_v_heads: int = 0  # DeltaNet value heads (GGUF ssm.time_step_rank); a multiple of the key heads
    rope_neox: bool = field(init=False)  # pairs (i, i + n_rot/2) instead of (2i, 2i+1)
    has_qkv_bias: bool = field(init=False)
    has_qk_norm: bool = field(init=False)
    has_attn_gate: bool = field(init=False)  # qwen35: Q projection = [query, gate] per head, out * sigmoid(gate)
    has_post_attention_norm: bool = field(init=False)  # qwen35 names the FFN's norm post_attention_norm

    def __post_init__(self):
        hybrid = self.arch in HYBRID_ARCHITECTURES
        # llama GGUFs are converted with Q/K rows permuted for adjacent-pair RoPE; Qwen uses the NeoX halves
        # (qwen35's interleaved multi-section RoPE is NeoX's when every section has the text position).
        object.__setattr__(self, "rope_neox", self.arch in ("qwen2", "qwen3", "qwen35"))
        object.__setattr__(self, "has_qkv_bias", self.arch == "qwen2")
        object.__setattr__(self, "has_qk_norm", self.arch in ("qwen3", "qwen35"))
        object.__setattr__(self, "has_attn_gate", hybrid)
        object.__setattr__(self, "has_post_attention_norm", hybrid)
        if not self.recurrent:
            object.__setattr__(self, "recurrent", (False,) * (self.n_layer + self.n_nextn))

    def is_recurrent(self, layer: int) -> bool:
        return self.recurrent[layer]

    @property
    def has_ffn_norm(self) -> bool:
        return not self.has_post_attention_norm

    @property
    def n_block(self) -> int:
        """Blocks in the file: the trunk's n_layer, then the MTP blocks."""
        return self.n_layer + self.n_nextn

    @property
    def n_q_proj(self) -> int:
        """Rows of the Q projection: the queries, and with an output gate the gates too."""
        return self.n_q * (2 if self.has_attn_gate else 1)

    @property
    def ssm_key_dim(self) -> int:
        return self.ssm_n_k_heads * self.ssm_d_state

    @property
    def ssm_value_dim(self) -> int:
        return self.ssm_n_v_heads * self.ssm_d_state

    @property
    def ssm_conv_dim(self) -> int:
        """Channels of the conv1d: q, k and v of every DeltaNet head."""
        return 2 * self.ssm_key_dim + self.ssm_value_dim

    @property
    def n_embd_2(self) -> int:
        """Inputs of the MTP block's eh_proj: the normed embedding and hidden state, concatenated."""
        return 2 * self.n_embd

    @property
    def n_rot_pairs(self) -> int:
        return self.n_rot // 2

    @property
    def has_rope_freqs(self) -> bool:
        return self.rope_scaling.freq_factors is not None

    @property
    def n_q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def n_kv(self) -> int:
        return self.n_head_kv * self.head_dim


Q8_0_BLOCK = np.dtype([("d", "<f2"), ("q", "i1", (QK8_0,))])  # GGUF's 34-byte block, unaligned fields


class Q8Matrix:
    """A Q8_0 matrix [N out, K in]: split arrays ``Q8Matrix(q, d)`` or GGUF blocks ``Q8Matrix(blocks=...)``
    (module docstring)."""

    def __init__(self, q: np.ndarray | None = None, d: np.ndarray | None = None, *,
                 blocks: np.ndarray | None = None):
        if (blocks is None) == (q is None or d is None):
            raise ValueError("a Q8Matrix is built from q and d, or from blocks")
        if blocks is not None and (blocks.dtype != Q8_0_BLOCK or blocks.ndim != 2):
            raise ValueError(f"blocks must be a 2-D array of Q8_0_BLOCK, not {blocks.dtype} {blocks.shape}")
        self.blocks = blocks
        self._q, self._d = q, d

    @property
    def shape(self) -> tuple[int, int]:
        if self.blocks is None:
            return self._q.shape
        n, nb = self.blocks.shape
        return n, nb * QK8_0

    @property
    def d(self) -> np.ndarray:
        """float16 [N, K/32] (a strided view when block-stored)."""
        return self._d if self.blocks is None else self.blocks["d"]

    @property
    def q_blocks(self) -> np.ndarray:
        """int8 [N, K/32, 32], a view in either storage."""
        if self.blocks is None:
            n, k = self._q.shape
            return self._q.reshape(n, k // QK8_0, QK8_0)
        return self.blocks["q"]

    @property
    def q(self) -> np.ndarray:
        """int8 [N, K], C-contiguous: the split array itself, or a copy of a block-stored matrix's quants."""
        return self._q if self.blocks is None else np.ascontiguousarray(self.q_blocks).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of quants and scales (34 per block of 32 values)."""
        n, k = self.shape
        return n * (k // QK8_0) * Q8_0_BLOCK.itemsize

    def dequantize(self) -> np.ndarray:
        """float32 [N, K]: d * q per block, exact in binary32."""
        vals = self.q_blocks.astype(np.float32)
        return (vals * self.d.astype(np.float32)[:, :, None]).reshape(self.shape)


@dataclass
class LayerWeights:
    """One block's weights; a field is None where the block has no such tensor (attention fields in a
    Gated DeltaNet layer, qwen2's biases elsewhere, ...)."""

    attn_norm: np.ndarray  # f32 [n_embd]
    ffn_norm: np.ndarray  # f32 [n_embd] (qwen35: post_attention_norm)
    w_gate: Q8Matrix  # [n_ff, n_embd]
    w_up: Q8Matrix  # [n_ff, n_embd]
    w_down: Q8Matrix  # [n_embd, n_ff]
    wq: Q8Matrix | None = None  # [n_head*head_dim, n_embd] (qwen35: [2*n_head*head_dim]: query, gate per head)
    wk: Q8Matrix | None = None  # [n_head_kv*head_dim, n_embd]
    wv: Q8Matrix | None = None  # [n_head_kv*head_dim, n_embd]
    wo: Q8Matrix | None = None  # [n_embd, n_head*head_dim]
    bq: np.ndarray | None = None  # qwen2: f32 biases of Q, K, V
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None  # qwen3, qwen35: f32 [head_dim] RMSNorm weights per head
    k_norm: np.ndarray | None = None
    # qwen35 Gated DeltaNet layers (their attention fields above are None)
    w_qkv: Q8Matrix | None = None  # [conv_dim, n_embd]: q, k, v of every head, before the conv
    w_z: Q8Matrix | None = None  # [value_dim, n_embd]: the output gate
    w_beta: Q8Matrix | None = None  # [n_v_heads, n_embd]
    w_alpha: Q8Matrix | None = None  # [n_v_heads, n_embd]
    ssm_conv1d: np.ndarray | None = None  # f32 [conv_dim, d_conv]
    ssm_dt: np.ndarray | None = None  # f32 [n_v_heads]: bias of alpha
    ssm_a: np.ndarray | None = None  # f32 [n_v_heads]: -exp(A_log), as the converter stores it
    ssm_norm: np.ndarray | None = None  # f32 [d_state]: gated RMSNorm weights per value head
    ssm_out: Q8Matrix | None = None  # [n_embd, value_dim]


@dataclass
class MtpWeights:
    """The MTP ("nextn") block's own tensors; its decoder block is ModelWeights.layers[n_layer]."""

    eh_proj: Q8Matrix  # [n_embd, 2 * n_embd]
    enorm: np.ndarray  # f32 [n_embd], for the next token's embedding
    hnorm: np.ndarray  # f32 [n_embd], for the model's hidden state
    embed: Q8Matrix  # [n_vocab, n_embd]: the model's token embedding unless the file has its own
    head_norm: np.ndarray  # f32 [n_embd]: the model's output norm unless the file has its own
    head: Q8Matrix  # [n_vocab, n_embd]: the model's LM head unless the file has its own


@dataclass
class ModelWeights:
    tok_embd: Q8Matrix  # [n_vocab, n_embd]
    layers: list[LayerWeights]
    output_norm: np.ndarray  # f32 [n_embd]
    output: Q8Matrix  # [n_vocab, n_embd]; the same object as tok_embd when the file ties them
    mtp: MtpWeights | None = None  # qwen35 files with a nextn block


@dataclass
class Model:
    """What ``refspec.gguf_model.load`` returns."""

    config: ModelConfig
    weights: ModelWeights
    metadata: dict  # tokenizer.* and general.* GGUF keys, as Python values
    path: str = ""  # the file loaded (a split model's first part)
    files: tuple[str, ...] = ()  # every file the weights come from, in order: (path,), or a split model's parts
