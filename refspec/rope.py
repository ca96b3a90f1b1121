"""The RoPE table (SPEC.md, "RoPE"): cos and sin of every angle theta(p, i) = p * kappa_i for positions p and
rotated pairs i, each entry the correctly rounded binary32 of an exactly defined real number, so that the table
has the same bits on every machine whatever its libm.

SPEC.md defines the reals: kappa_i (pair i's frequency, from the base, the frequency factors and the scaling)
and m (a magnitude scale); the entries are RN32(m * cos theta) and RN32(m * sin theta). They are computed in
two steps:

1. Every entry in float64 with an error bound. kappa_i comes from mpmath as a double-double (k_hi + k_lo);
   p * k_hi is split exactly into hi + lo (Veltkamp: k_hi's two 26-bit halves times p < 2**24 are exact in
   float64, and Fast2Sum joins them), and lo also takes p * k_lo, so theta = hi + lo to ~2**-100 relative. Then
   cos theta = cos(hi) - sin(hi) * lo and sin theta = sin(hi) + cos(hi) * lo, leaving out less than lo**2.
   cos(hi) and sin(hi) are NumPy's float64 functions (libm or SIMD code), trusted only to LIBM_REL relative
   plus LIBM_ABS * |theta|: every platform's are within a few ulp (2**-50), a thousand times better. An entry
   whose whole error interval rounds to one binary32 is that binary32, since rounding is monotone.
2. The few entries whose interval straddles a rounding boundary are recomputed with mpmath at START_BITS and
   then twice as many bits until the interval rounds to one binary32 (Ziv's strategy). It ends: cos and sin of
   a nonzero algebraic angle are transcendental (Lindemann-Weierstrass), never a boundary between binary32s.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import mpmath
import numpy as np

from refspec.errors import NumericsError
from refspec.model import RopeScaling

F32 = np.float32
LIBM_REL = 2.0**-40  # trusted relative accuracy of NumPy's float64 cos and sin (see the module docstring)
LIBM_ABS = 2.0**-70  # ... plus this times |theta| absolute (argument reduction of large angles)
TINY = 2.0**-1000  # absolute slack for results near zero
VELTKAMP = 2.0**27 + 1  # splits a double into two halves of at most 26 significant bits
START_BITS, MAX_BITS = 128, 4096  # mpmath working precision of step 2
KAPPA_BITS = 192  # precision of kappa_i and m for step 1's doubles


def rope_table(n_pos: int, n_rot: int, base: float, scaling: RopeScaling = RopeScaling()):
    """cos and sin [n_pos, n_rot/2] as float32: entry [p, i] = RN32(m * cos(p * kappa_i)) and
    RN32(m * sin(p * kappa_i)) (SPEC.md, "RoPE"). n_pos <= 2**24."""
    tables = []
    for sine, value, undecided in _step1(n_pos, n_rot, base, scaling):
        table = value.astype(F32)
        for p, i in zip(*np.nonzero(undecided)):
            table[p, i] = exact_entry(int(p), int(i), sine, n_rot, float(base), scaling)
        tables.append(table)
    return tables[0], tables[1]


def boundary_entries(n_pos: int, n_rot: int, base: float, scaling: RopeScaling = RopeScaling()):
    """(p, i, sine) of the entries rope_table computes in step 2 (for tests and reports)."""
    return [(int(p), int(i), sine) for sine, _, undecided in _step1(n_pos, n_rot, base, scaling)
            for p, i in zip(*np.nonzero(undecided))]


# ------------------------------------------------------------------------------- step 1: float64 with a bound
@dataclass(frozen=True)
class _Doubles:
    k_top: np.ndarray  # [n_rot/2] the upper 26 bits of RN64(kappa_i)
    k_bottom: np.ndarray  # the rest of RN64(kappa_i) (at most 26 bits)
    k_lo: np.ndarray  # kappa_i - RN64(kappa_i), rounded to double
    m: float  # the magnitude scale, rounded to double


@functools.lru_cache(maxsize=64)
def _doubles(n_rot: int, base: float, scaling: RopeScaling) -> _Doubles:
    with mpmath.workprec(KAPPA_BITS):
        kappas = [kappa(i, n_rot, base, scaling, KAPPA_BITS) for i in range(n_rot // 2)]
        k_hi = np.array([float(k) for k in kappas])
        k_lo = np.array([float(k - mpmath.mpf(float(k))) for k in kappas])
        m = float(magnitude(scaling, KAPPA_BITS))
    split = k_hi * VELTKAMP
    k_top = split - (split - k_hi)
    return _Doubles(k_top=k_top, k_bottom=k_hi - k_top, k_lo=k_lo, m=m)


def _step1(n_pos: int, n_rot: int, base: float, scaling: RopeScaling):
    """For cos, then sin: (sine, float64 values [n_pos, n_rot/2], where the error bound straddles a binary32
    rounding boundary). Elsewhere RN32(value) is the entry."""
    if not 0 <= n_pos <= 2**24:
        raise ValueError(f"rope_table: {n_pos} positions, at most 2**24")
    doubles = _doubles(n_rot, float(base), scaling)
    hi, lo = _angles(np.arange(n_pos, dtype=np.float64)[:, None], doubles)  # [n_pos, n_rot/2] each
    cos_hi, sin_hi = np.cos(hi), np.sin(hi)
    slack = doubles.m * (np.abs(hi) * LIBM_ABS + lo * lo) + TINY
    for sine, value in ((False, (cos_hi - sin_hi * lo) * doubles.m), (True, (sin_hi + cos_hi * lo) * doubles.m)):
        bound = np.abs(value) * LIBM_REL + slack
        yield sine, value, (value - bound).astype(F32) != (value + bound).astype(F32)


def _angles(p: np.ndarray, d: _Doubles) -> tuple[np.ndarray, np.ndarray]:
    """theta = p * kappa as hi + lo: p * k_top and p * k_bottom are exact (24 + 26 bits); Fast2Sum makes their
    sum hi + lo exactly (|p * k_top| >= |p * k_bottom|); lo then takes p * k_lo."""
    x, y = p * d.k_top, p * d.k_bottom
    hi = x + y
    lo = ((x - hi) + y) + p * d.k_lo
    return hi, lo


# --------------------------------------------------------------------------- step 2 and the exact definition
def exact_entry(p: int, i: int, sine: bool, n_rot: int, base: float, scaling: RopeScaling) -> float:
    """RN32(m * sin(p * kappa_i)) if sine else RN32(m * cos(p * kappa_i)), as a float holding a binary32."""
    bits = START_BITS
    while bits <= MAX_BITS:
        with mpmath.workprec(bits):
            theta = p * kappa(i, n_rot, base, scaling, bits)
            m = magnitude(scaling, bits)
            value = m * (mpmath.sin(theta) if sine else mpmath.cos(theta))
            # Every step above is accurate to a few units in its last bit; 2**24 of them is a wide margin.
            bound = m * (abs(theta) + 1) * mpmath.ldexp(1, 24 - bits)
            low, high = round_binary32(value - bound), round_binary32(value + bound)
        if low == high:
            return low
        bits *= 2
    raise NumericsError(f"RoPE entry p={p} i={i} lies within 2**-{MAX_BITS} of a binary32 rounding boundary")


@functools.lru_cache(maxsize=4096)
def kappa(i: int, n_rot: int, base: float, scaling: RopeScaling, bits: int):
    """Pair i's frequency kappa_i as an mpf at `bits` (SPEC.md, "RoPE"): base**(-2i/n_rot), divided by the
    frequency factor f_i, then scaled: / s (linear) or * ((1 - gamma_i) / s + gamma_i) (YaRN)."""
    with mpmath.workprec(bits):
        k = mpmath.power(mpmath.mpf(base), mpmath.mpf(-2 * i) / n_rot)
        if scaling.freq_factors is not None:
            k = k / mpmath.mpf(scaling.freq_factors[i])
        if scaling.kind == "linear":
            k = k / mpmath.mpf(scaling.factor)
        elif scaling.kind == "yarn":
            gamma = yarn_ramp(i, n_rot, base, scaling)
            k = k * ((1 - _mpf(gamma)) / mpmath.mpf(scaling.factor) + _mpf(gamma))
        return +k


def magnitude(scaling: RopeScaling, bits: int):
    """m: the attention factor a, times 1 + ln(s)/10 for YaRN with s > 1 (SPEC.md, "RoPE")."""
    with mpmath.workprec(bits):
        m = mpmath.mpf(scaling.attn_factor)
        if scaling.kind == "yarn" and scaling.factor > 1:
            m = m * (1 + mpmath.log(mpmath.mpf(scaling.factor)) / 10)
        return +m


def yarn_ramp(i: int, n_rot: int, base: float, scaling: RopeScaling) -> Fraction:
    """gamma_i in [0, 1], exactly: 1 for pairs kept as trained (fast turning), 0 for fully scaled ones."""
    low, high = yarn_dims(n_rot, base, scaling.n_ctx_orig, scaling.beta_fast, scaling.beta_slow)
    if high > low:
        y = Fraction(i - low, high - low)
    else:  # ggml divides by max(0.001, high - low): any positive width below 1 gives these values
        y = Fraction(0 if i <= low else 1)
    return 1 - min(Fraction(1), max(Fraction(0), y))


@functools.lru_cache(maxsize=64)
def yarn_dims(n_rot: int, base: float, n_ctx_orig: int, beta_fast: float, beta_slow: float) -> tuple[int, int]:
    """The first and last pair of YaRN's ramp: max(0, floor(d(beta_fast))) and min(n_rot - 1,
    ceil(d(beta_slow))), d(beta) = n_rot * ln(n_ctx_orig / (2 pi beta)) / (2 ln base): the pair index at which
    the pair turns beta times over n_ctx_orig positions."""
    def d(beta: float, bits: int):
        with mpmath.workprec(bits):
            return n_rot * mpmath.log(n_ctx_orig / (2 * mpmath.pi * mpmath.mpf(beta))) / (2 * mpmath.log(base))

    def floor_exact(beta: float) -> int:  # floor of d(beta), decided with a margin
        for bits in (START_BITS, MAX_BITS):
            value = d(beta, bits)
            whole = int(mpmath.floor(value))
            with mpmath.workprec(bits):
                margin = mpmath.ldexp(abs(value) + 1, 16 - bits)
                if whole + margin < value < whole + 1 - margin:
                    return whole
        raise NumericsError(f"YaRN: d({beta}) is too close to an integer to decide its floor")

    low = floor_exact(beta_fast)
    high = floor_exact(beta_slow) + 1  # ceil: d is never an integer (decided above)
    return max(0, low), min(n_rot - 1, high)


def _mpf(q: Fraction):
    return mpmath.mpf(q.numerator) / q.denominator


def round_binary32(x) -> float:
    """A finite mpf rounded to the nearest binary32, ties to even, subnormals kept; the result is a Python
    float holding that binary32 exactly (inf beyond binary32's range)."""
    man, exp = x.man_exp  # |x| = man * 2**exp
    if man == 0:
        return 0.0
    sign = -1 if x < 0 else 1
    top = exp + man.bit_length() - 1  # 2**top <= |x| < 2**(top + 1)
    if top >= 128:
        return sign * math.inf
    quantum = max(top - 23, -149)  # binary32's spacing at |x|: 24 significant bits, or 2**-149 (subnormals)
    if exp >= quantum:
        return sign * math.ldexp(man, exp)
    shift = quantum - exp
    whole, rest = man >> shift, man & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rest > half or (rest == half and whole & 1):
        whole += 1
    if whole * 2.0**quantum >= 2.0**128:
        return sign * math.inf
    return sign * math.ldexp(whole, quantum)
