"""Backends with one deliberate mistake each, the kinds a port of refspec makes: refspec check-backend must
report each as FAIL at the op that has it (tests/test_check_backend.py). Also backends that break the
protocol (raise, wrong dtype or shape, missing methods) for the bad-input tests."""
import contextlib

import numpy as np

from refspec import spec
from refspec.backends import CpuBackend

F32 = np.float32


class SequentialSum(CpuBackend):
    """The GEMV sums its blocks' terms one after another, not over 32 lanes and a halving tree."""

    def q8_gemv(self, w, xq, xd):
        return self._sequential(w.source, xq, xd)

    def q8_gemv_many(self, ws, xq, xd):
        return [self._sequential(w.source, xq, xd) for w in ws]

    @staticmethod
    def _sequential(m, xq, xd):
        dots = spec.block_dots(m.q, xq)  # [nb, R, N], exact
        terms = (m.d.astype(F32).T[:, None, :] * xd.astype(F32).T[:, :, None]) * dots
        total = np.zeros(terms.shape[1:], F32)
        for t in terms:
            total += t
        return total


@contextlib.contextmanager
def attention_chunk(n: int):
    saved, spec.ATTN_CHUNK = spec.ATTN_CHUNK, n
    try:
        yield
    finally:
        spec.ATTN_CHUNK = saved


class Chunk512(CpuBackend):
    """Attention sums positions in chunks of 512 instead of 256."""

    def attention(self, q, k_cache, v_cache, pos0):
        with attention_chunk(512):
            return spec.attention(q, k_cache, v_cache, pos0)


class ContractedRope(CpuBackend):
    """RoPE with a fused multiply-add, as a compiler contracts a*c - b*s: the product a*c is not rounded
    before the subtraction (emulated in float64, rounded once to binary32)."""

    @staticmethod
    def rope(x, pos0, cos, sin, neox):
        x = np.asarray(x, F32)
        rows, half = x.shape[0], cos.shape[1]
        c = cos[pos0 : pos0 + rows][:, None, :].astype(np.float64)
        s = sin[pos0 : pos0 + rows][:, None, :]
        lo, hi = (slice(0, half), slice(half, 2 * half)) if neox else (slice(0, 2 * half, 2), slice(1, 2 * half, 2))
        a, b = x[..., lo], x[..., hi]
        out = x.copy()
        out[..., lo] = (a.astype(np.float64) * c - (b * s)).astype(F32)  # fma(a, c, -(b*s))
        out[..., hi] = (b.astype(np.float64) * c + (a * s)).astype(F32)  # fma(b, c, a*s)
        return out


class LibmExp(CpuBackend):
    """silu_mul with libm's exp (NumPy's) instead of refspec's own."""

    @staticmethod
    def silu_mul(gate, up):
        gate = np.asarray(gate, F32)
        with np.errstate(over="ignore"):
            return (gate / (F32(1) + np.exp(-gate))) * np.asarray(up, F32)


class Raising(CpuBackend):
    """`add` raises."""

    def add(self, x, y):
        raise RuntimeError("add is not implemented on this device")


class WrongDtype(CpuBackend):
    """silu_mul returns float64."""

    @staticmethod
    def silu_mul(gate, up):
        return spec.silu_mul(gate, up).astype(np.float64)


class WrongShape(CpuBackend):
    """The GEMV returns [N, R] instead of [R, N]."""

    def q8_gemv(self, w, xq, xd):
        return np.ascontiguousarray(super().q8_gemv(w, xq, xd).T)


class NoAttention:
    """Lacks most of the protocol."""

    name = "incomplete"

    def add(self, x, y):
        return x + y


def failing_factory():
    raise OSError("device not found")


# ---- mistakes in a fused kernel only (its parts are right): check-backend's fused cases catch them
def _even_ties_q8(y):
    """Q8_0 quantization with ties rounded to even (np.rint), not away from zero."""
    blocks = y.reshape(y.shape[0], -1, 32)
    d = np.abs(blocks).max(axis=-1) / F32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, F32(0), F32(1) / d).astype(F32)
    return np.rint(blocks * inv[..., None]).astype(np.int8).reshape(y.shape), d.astype(np.float16)


class EvenTiesSiluMulQ8(CpuBackend):
    """silu_mul_q8 whose quantizer rounds ties to even (rint), not away from zero as Q8_0 does."""

    @staticmethod
    def silu_mul_q8(gate, up):
        return _even_ties_q8(spec.silu_mul(gate, up))


class FusedWindow512(CpuBackend):
    """attention_q8 reads at most 512 cache positions (a fixed-size buffer), the unfused attention all of them."""

    def attention_q8(self, q, k_cache, v_cache, pos0):
        k, v = np.array(k_cache), np.array(v_cache)
        k[:, 512:], v[:, 512:] = 0, 0
        a = spec.attention(q, k, v, pos0)
        return spec.quantize_q8_0(a.reshape(a.shape[0], -1))


class UnrotatedKeys(CpuBackend):
    """rope_kv stores the keys before rotating them."""

    def rope_kv(self, q, k, v, k_cache, v_cache, pos0, cos, sin, neox):
        self.kv_write(k_cache, v_cache, k, v, pos0)
        return self.rope(q, pos0, cos, sin, neox)


class LastBiasOnce(CpuBackend):
    """q8_gemv_many_bias adds the last bias to the first row only."""

    def q8_gemv_many_bias(self, ws, biases, xq, xd):
        ys = [self.add(y, b) for y, b in zip(self.q8_gemv_many(ws, xq, xd)[:-1], biases)]
        last = np.array(self.q8_gemv(ws[-1], xq, xd))
        last[0] += biases[-1]
        return ys + [last]


class NoFused(CpuBackend):
    """Has the protocol's methods but not FusedFromParts' q8_gemv_add."""

    def __getattribute__(self, name):
        if name == "q8_gemv_add":
            raise AttributeError(name)
        return super().__getattribute__(name)


# ---- qwen35's operations
class PairwiseDeltaRule(CpuBackend):
    """The delta rule's dot products summed as NumPy sums (pairwise), not over the spec's 32 lanes."""

    @staticmethod
    def delta_rule(q, k, v, decay, beta, ring, pos0):
        read, writes = spec.ring_slots(int(pos0), v.shape[0], ring.shape[0])
        s = ring[read] if read is not None else np.zeros(ring.shape[1:], F32)
        out = np.empty(v.shape, F32)
        tile = np.arange(v.shape[1]) % k.shape[1]
        for r, slot in enumerate(writes):
            kh, qh = k[r][tile][:, None, :], (q[r] * (F32(1) / np.sqrt(F32(k.shape[2]))))[tile][:, None, :]
            s = s * decay[r][:, None, None]
            d = (v[r] - np.sum(s * kh, axis=-1, dtype=F32)) * beta[r][:, None]
            s = s + kh * d[:, :, None]
            out[r] = np.sum(s * qh, axis=-1, dtype=F32)
            ring[slot] = s
        return out


class RingSlotAhead(CpuBackend):
    """conv1d_causal reads the state from slot pos0 % n (its own row's) instead of (pos0 - 1) % n."""

    @staticmethod
    def conv1d_causal(x, w, ring, pos0):
        n, pos0 = ring.shape[0], int(pos0)
        state = ring[pos0 % n] if pos0 else np.zeros(ring.shape[1:], F32)
        y, windows = spec.conv1d_causal(x, state, w)
        for r in range(len(x)):
            ring[(pos0 + r) % n] = windows[r]
        return y


class EvenTiesSigmoidGateQ8(CpuBackend):
    """sigmoid_gate_q8 whose quantizer rounds ties to even (its sigmoid_gate is right)."""

    @staticmethod
    def sigmoid_gate_q8(a, gate):
        y = spec.sigmoid_gate(a, gate)
        return _even_ties_q8(y.reshape(len(y), -1))


class DenseOnly(CpuBackend):
    """Has no delta_rule: a backend for the dense architectures only."""

    def __getattribute__(self, name):
        if name == "delta_rule":
            raise AttributeError(name)
        return super().__getattribute__(name)
