"""The backend protocol: every method refspec/forward.py and the decoding loops (refspec/generate.py,
refspec/speculative.py) call on a backend, and nothing else. refspec's CpuBackend (refspec/backends.py) and
GpuBackend (refspec/gpu.py) implement it; a foreign backend that implements it runs refspec's forward pass and
can be checked op by op against the spec with `refspec check-backend MODULE:FACTORY` (refspec/testing).

forward.py also calls fused operations (FUSED below; for qwen35 QWEN35_FUSED); a backend gets them by inheriting
refspec.backends.FusedFromParts, which composes them from the methods below (a backend with its own fused kernels
must give the bits of that composition). qwen35 models need the methods of QWEN35 too.

Arrays are the backend's own type (NumPy, CuPy, torch, ...); `asarray` brings host arrays in and `to_host`
takes results out as NumPy. Every operation must give the bits of its refspec.spec twin (refspec/SPEC.md).
Shapes: R rows, E embedding, K inputs, N outputs, H query heads, G kv heads, D head dim, T cache positions.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from refspec.model import ModelWeights

Array = Any  # the backend's array type
Q8 = Any  # a Q8_0 matrix as the backend's upload_weights holds it


@runtime_checkable
class Backend(Protocol):
    name: str  # "cpu", "gpu", or the foreign backend's name

    # ---- memory
    def asarray(self, a: np.ndarray) -> Array: ...  # host -> backend, same dtype and bits
    def to_host(self, a: Array) -> np.ndarray: ...  # backend -> NumPy, same dtype and bits
    def zeros(self, shape: tuple) -> Array: ...  # float32 zeros (the KV cache)
    def synchronize(self) -> None: ...  # wait for queued work (timing)
    def upload_weights(self, weights: ModelWeights) -> ModelWeights: ...  # same fields; matrices as Q8

    # ---- operations (refspec.spec twins)
    def embed(self, w: Q8, ids: Sequence[int]) -> Array: ...  # [R] -> f32 [R, E]
    def rmsnorm(self, x: Array, w: Array, eps: float) -> Array: ...  # f32 [..., n] over the last axis
    def rmsnorm_q8(self, x: Array, w: Array, eps: float) -> tuple[Array, Array]: ...  # -> int8 [R, E], f16 [R, E/32]
    def quantize_q8(self, x: Array) -> tuple[Array, Array]: ...  # f32 [R, K] -> int8 [R, K], f16 [R, K/32]
    def q8_gemv(self, w: Q8, xq: Array, xd: Array) -> Array: ...  # -> f32 [R, N]
    def q8_gemv_many(self, ws: Sequence[Q8], xq: Array, xd: Array) -> list[Array]: ...  # one per matrix
    def add(self, x: Array, y: Array) -> Array: ...  # f32, y broadcast over rows
    def silu_mul(self, gate: Array, up: Array) -> Array: ...  # f32 [R, F]
    def rope(self, x: Array, pos0: int, cos: Array, sin: Array, neox: bool) -> Array: ...  # f32 [R, H, D]
    def kv_write(self, k_cache: Array, v_cache: Array, k: Array, v: Array, pos0: int) -> None: ...  # [G, T, D]
    def attention(self, q: Array, k_cache: Array, v_cache: Array, pos0: int) -> Array: ...  # -> f32 [R, H, D]
    def argmax_rows(self, logits: Array) -> tuple[Any, Any]: ...  # -> ids [R], finite flags [R]


METHODS = tuple(name for name in Backend.__annotations__) + tuple(
    name for name, value in vars(Backend).items() if callable(value) and not name.startswith("_"))


# The fused operations forward.py calls on the dense architectures (llama, qwen2, qwen3): refspec.backends.
# FusedFromParts composes them from the methods above; check-backend checks each against that composition.
FUSED = ("pass_input", "q8_gemv_add", "q8_gemv_many_bias", "silu_mul_q8", "rope_kv", "attention_q8")
# What qwen35 models (gated attention, Gated DeltaNet, the MTP block) call besides: the basic operations (their
# refspec.spec twins; conv1d_causal and delta_rule keep their states in rings of slots, spec.ring_slots), then the
# fused ones FusedFromParts composes of them. A backend with all of them is checked on qwen35 too.
QWEN35 = ("split_query_gate", "sigmoid_gate", "silu", "l2norm", "gated_rmsnorm", "deltanet_gates", "conv1d_causal",
          "delta_rule", "concat", "stack")
QWEN35_FUSED = ("conv1d_silu", "gated_delta_rule", "sigmoid_gate_q8", "gated_rmsnorm_q8")


def missing_methods(backend, names=METHODS) -> list[str]:
    """The protocol's names (or `names`) `backend` lacks. A foreign backend's attribute whose lookup raises (a
    property) is lacking too, with what it raised: `attention (raised RuntimeError: ...)`."""
    missing = []
    for name in names:
        try:
            getattr(backend, name)
        except AttributeError:
            missing.append(name)
        except (Exception, SystemExit) as err:  # foreign code: any error, or a sys.exit, is its own
            missing.append(f"{name} (raised {type(err).__name__}: {' '.join(str(err).split())[:120]})")
    return missing
