"""The model as refspec holds it in memory: hyper-parameters from GGUF metadata and Q8_0 weights in
refspec's aligned layout.

Aligned Q8_0 layout (``Q8Matrix``). A GGUF Q8_0 row of K values is K/32 blocks of 34 bytes (an fp16 scale,
then 32 int8 quants), which leaves the quants at 2-byte alignment. refspec splits every matrix into two
arrays:

* ``q``: int8, shape [N, K], row n holds output feature n's K quants, contiguous (16-byte aligned rows
  whenever K % 16 == 0, which K % 32 == 0 guarantees);
* ``d``: float16, shape [N, K/32], ``d[n, b]`` scales quants ``q[n, 32*b : 32*b+32]``.

The value of element (n, k) is ``float32(d[n, k // 32]) * float32(q[n, k])`` (exact in binary32).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

QK8_0 = 32  # values per Q8_0 block, fixed by the ggml format
ARCHITECTURES = ("llama", "qwen2", "qwen3")


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
    rope_neox: bool = field(init=False)  # pairs (i, i + n_rot/2) instead of (2i, 2i+1)
    has_qkv_bias: bool = field(init=False)
    has_qk_norm: bool = field(init=False)

    def __post_init__(self):
        # llama GGUFs are converted with Q/K rows permuted for adjacent-pair RoPE; Qwen uses the NeoX halves.
        object.__setattr__(self, "rope_neox", self.arch in ("qwen2", "qwen3"))
        object.__setattr__(self, "has_qkv_bias", self.arch == "qwen2")
        object.__setattr__(self, "has_qk_norm", self.arch == "qwen3")

    @property
    def n_q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def n_kv(self) -> int:
        return self.n_head_kv * self.head_dim


@dataclass
class Q8Matrix:
    """A Q8_0 matrix in the aligned layout (module docstring). Shape [N out, K in]."""

    q: np.ndarray  # int8 [N, K]
    d: np.ndarray  # float16 [N, K // 32]

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        """float32 [N, K]: d * q per block, exact in binary32."""
        n, k = self.q.shape
        vals = self.q.astype(np.float32).reshape(n, k // QK8_0, QK8_0)
        return (vals * self.d.astype(np.float32)[:, :, None]).reshape(n, k)


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # f32 [n_embd]
    wq: Q8Matrix  # [n_head*head_dim, n_embd]
    wk: Q8Matrix  # [n_head_kv*head_dim, n_embd]
    wv: Q8Matrix  # [n_head_kv*head_dim, n_embd]
    wo: Q8Matrix  # [n_embd, n_head*head_dim]
    ffn_norm: np.ndarray  # f32 [n_embd]
    w_gate: Q8Matrix  # [n_ff, n_embd]
    w_up: Q8Matrix  # [n_ff, n_embd]
    w_down: Q8Matrix  # [n_embd, n_ff]
    bq: np.ndarray | None = None  # qwen2: f32 biases of Q, K, V
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None  # qwen3: f32 [head_dim] RMSNorm weights per head
    k_norm: np.ndarray | None = None


@dataclass
class ModelWeights:
    tok_embd: Q8Matrix  # [n_vocab, n_embd]
    layers: list[LayerWeights]
    output_norm: np.ndarray  # f32 [n_embd]
    output: Q8Matrix  # [n_vocab, n_embd]; the same object as tok_embd when the file ties them


@dataclass
class Model:
    """What ``refspec.gguf_model.load`` returns."""

    config: ModelConfig
    weights: ModelWeights
    metadata: dict  # tokenizer.* and general.* GGUF keys, as Python values
    path: str = ""
