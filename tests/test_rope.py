"""The RoPE table against an arbitrary-precision reference written from SPEC.md ("RoPE"): every entry is the
correctly rounded binary32 of m * cos(theta) or m * sin(theta), whatever NumPy's cos and sin return."""
import math
import time
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refspec import rope
from refspec.model import RopeScaling

from bits import assert_bits_equal

F32 = np.float32
LLAMA3_FACTORS = tuple(float(F32(f)) for f in np.linspace(1.0, 8.0, 32))  # Llama 3.x: 1 (fast) .. 8 (slow)
CASES = {  # (n_pos, n_rot, base, scaling): plain tables of the default model's and real models' shapes
    "smollm2": (3000, 64, 100000.0, RopeScaling()),
    "llama3": (2000, 128, 500000.0, RopeScaling()),
    "qwen": (1500, 128, 1000000.0, RopeScaling()),
    "partial": (1000, 16, 10000.0, RopeScaling()),
    "rope_freqs": (1500, 64, 500000.0, RopeScaling(freq_factors=LLAMA3_FACTORS)),
    "linear": (1500, 64, 10000.0, RopeScaling(kind="linear", factor=4.0)),
    "yarn": (1500, 64, 1000000.0, RopeScaling(kind="yarn", factor=4.0, n_ctx_orig=4096)),
    "yarn+attn": (800, 32, 10000.0, RopeScaling(kind="yarn", factor=3.0, n_ctx_orig=256, attn_factor=0.75)),
    "attn": (800, 32, 10000.0, RopeScaling(attn_factor=1.25)),
}
REF_BITS = 320


def reference_entry(p: int, i: int, sine: bool, n_rot: int, base: float, sc: RopeScaling) -> float:
    """SPEC.md's definition, computed at REF_BITS and rounded to binary32 by mpmath (ties to even)."""
    with mpmath.workprec(REF_BITS):
        freq = mpmath.mpf(base) ** (mpmath.mpf(-2 * i) / n_rot)
        if sc.freq_factors is not None:
            freq /= sc.freq_factors[i]
        m = mpmath.mpf(sc.attn_factor)
        if sc.kind == "linear":
            freq /= sc.factor
        if sc.kind == "yarn":
            def d(beta):
                return n_rot * mpmath.log(sc.n_ctx_orig / (2 * mpmath.pi * beta)) / (2 * mpmath.log(base))
            low = max(0, int(mpmath.floor(d(sc.beta_fast))))
            high = min(n_rot - 1, int(mpmath.ceil(d(sc.beta_slow))))
            y = Fraction(i - low, high - low) if high > low else Fraction(int(i > low))
            gamma = 1 - min(Fraction(1), max(Fraction(0), y))
            g = mpmath.mpf(gamma.numerator) / gamma.denominator
            freq *= (1 - g) / sc.factor + g
            if sc.factor > 1:
                m *= 1 + mpmath.log(sc.factor) / 10
        value = m * (mpmath.sin(p * freq) if sine else mpmath.cos(p * freq))
    with mpmath.workprec(24):
        return float(+value)


def check_entries(case: str, entries) -> None:
    n_pos, n_rot, base, sc = CASES[case]
    cos, sin = rope.rope_table(n_pos, n_rot, base, sc)
    for p, i, sine in entries:
        got = (sin if sine else cos)[p, i]
        want = F32(reference_entry(p, i, sine, n_rot, base, sc))
        assert got.view(np.uint32) == want.view(np.uint32), (case, p, i, sine, float(got), float(want))


@pytest.mark.parametrize("case", sorted(CASES))
def test_sampled_entries_are_correctly_rounded(case):
    n_pos, n_rot, _, _ = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    p = np.concatenate([[0, 1, n_pos - 1], rng.integers(0, n_pos, 60)])
    i = np.concatenate([[0, n_rot // 2 - 1, n_rot // 4], rng.integers(0, n_rot // 2, 60)])
    check_entries(case, [(int(a), int(b), sine) for a, b in zip(p, i) for sine in (False, True)])


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_boundary_entry_is_correctly_rounded(case):
    n_pos, n_rot, base, sc = CASES[case]
    entries = rope.boundary_entries(n_pos, n_rot, base, sc)
    check_entries(case, entries)


def test_the_high_precision_path_is_taken():
    # The plain tables above hold entries within float64's error bound of a binary32 rounding boundary.
    assert sum(len(rope.boundary_entries(*CASES[c])) for c in ("smollm2", "llama3", "qwen")) >= 5


def test_position_zero_is_exact():
    for n_pos, n_rot, base, sc in CASES.values():
        cos, sin = rope.rope_table(1, n_rot, base, sc)
        m = F32(reference_entry(0, 0, False, n_rot, base, sc))
        assert (cos == m).all() and (sin.view(np.uint32) == 0).all()  # m * cos 0 and +0.0


@pytest.mark.parametrize("case", ["smollm2", "yarn", "rope_freqs"])
def test_table_does_not_depend_on_libm(monkeypatch, case):
    """A libm whose cos and sin are off by up to 2**-44 relative (10^2..10^3 ulp) gives the same bits."""
    n_pos, n_rot, base, sc = CASES[case]
    want_cos, want_sin = rope.rope_table(n_pos, n_rot, base, sc)
    rng = np.random.default_rng(5)

    class SloppyNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def cos(x):
            return np.cos(x) * (1 + rng.uniform(-2.0**-44, 2.0**-44, np.shape(x)))

        @staticmethod
        def sin(x):
            return np.sin(x) * (1 + rng.uniform(-2.0**-44, 2.0**-44, np.shape(x)))

    monkeypatch.setattr(rope, "np", SloppyNumpy())
    cos, sin = rope.rope_table(n_pos, n_rot, base, sc)
    assert_bits_equal(cos, want_cos, f"{case} cos with a sloppy libm")
    assert_bits_equal(sin, want_sin, f"{case} sin with a sloppy libm")


def test_table_rows_do_not_depend_on_the_table_size():
    small = rope.rope_table(100, 64, 100000.0)
    large = rope.rope_table(700, 64, 100000.0)
    for a, b in zip(small, large):
        assert_bits_equal(a, b[:100], "first 100 rows")


def test_table_is_fast():
    rope._doubles.cache_clear()
    start = time.perf_counter()
    rope.rope_table(4096, 128, 500000.0)
    seconds = time.perf_counter() - start
    assert seconds < 2.0, f"4096 positions x 64 pairs took {seconds:.2f} s (0.13 s on the 2-core CI machine)"


@given(st.floats(allow_nan=False, allow_infinity=True, width=64))
def test_round_binary32_matches_numpy_on_doubles(x):
    if math.isinf(x):
        return
    with mpmath.workprec(53):
        got = rope.round_binary32(mpmath.mpf(x))
    with np.errstate(over="ignore"):  # doubles beyond binary32's range round to inf
        want = np.float64(x).astype(F32)
    assert F32(got).view(np.uint32) == want.view(np.uint32) or (got == 0 and x == 0)


def test_round_binary32_ties_subnormals_and_overflow():
    one_ulp = 2.0**-23
    with mpmath.workprec(200):
        cases = {
            1 + one_ulp / 2: 1.0,  # tie: to even
            1 + 3 * one_ulp / 2: 1 + 2 * one_ulp,
            1 + one_ulp / 2 + 2.0**-52: 1 + one_ulp,  # just above the tie
            2.0**-149 * 1.5: 2.0**-148,  # subnormal tie: to even
            2.0**-149 * 0.5: 0.0,
            2.0**-150 + 2.0**-190: 2.0**-149,
            -(1 + one_ulp / 2): -1.0,
        }
        for x, want in cases.items():
            assert rope.round_binary32(mpmath.mpf(x)) == want, x
        just_above = 1 + mpmath.mpf(one_ulp) / 2 + mpmath.mpf(2) ** -190  # far below a double's resolution
        assert rope.round_binary32(just_above) == 1 + one_ulp
        top = mpmath.mpf(2) ** 128 * (1 - mpmath.mpf(2) ** -25)  # halfway between FLT_MAX and 2**128
        assert rope.round_binary32(top) == math.inf
        assert rope.round_binary32(top - mpmath.mpf(2) ** 80) == float(np.finfo(F32).max)
