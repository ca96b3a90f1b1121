"""qwen35's ops (SPEC.md, "Hybrid models") against scalar definitions written from SPEC.md, one binary32
operation at a time, and the recurrence's batch invariance. Each comparison is bitwise; each test also shows
that a plausible other order or variant gives other bits on its data, so it could fail."""
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refspec import spec
from refspec.backends import CpuBackend

from bits import assert_bits_equal
from test_spec import lane_sum_scalar

F32 = np.float32


def exp1(x) -> F32:
    return spec.exp(np.array([x], F32))[0]


def differs(a, b) -> bool:
    return not np.array_equal(np.asarray(a, F32).view(np.uint32), np.asarray(b, F32).view(np.uint32))


def ordered(a):
    i = np.asarray(a, F32).view(np.int32).astype(np.int64)
    return np.where(i >= 0, i, -(i & 0x7FFFFFFF))


def ulps(got, want64):
    return np.abs(ordered(got) - ordered(np.asarray(want64).astype(F32)))


# ------------------------------------------------------------------------------------------------ log1p
def log1p_scalar(y) -> F32:
    """SPEC.md "log1p", step by step."""
    y = F32(y)
    if math.isnan(y) or math.isinf(y):
        return y
    u = F32(F32(1) + y)
    if u == F32(1):
        return y
    c = F32(F32(y - F32(u - F32(1))) / u)
    bits = int(np.array(u, F32).view(np.uint32))
    e = (bits >> 23) - 127
    m = np.array((bits & 0x7FFFFF) | 0x3F800000, np.uint32).view(F32)[()]
    if m > spec.LOG_SQRT2:
        m, e = F32(m * F32(0.5)), e + 1
    f = F32(m - F32(1))
    s = F32(f / F32(F32(2) + f))
    z = F32(s * s)
    p = F32(F32(z * F32(2.0 / 11)) + F32(2.0 / 9))
    for t in (2.0 / 7, 2.0 / 5, 2.0 / 3):
        p = F32(F32(p * z) + F32(t))
    log_m = F32(F32(s + s) + F32(F32(s * z) * p))
    ef = F32(e)
    return F32(F32(ef * F32(0.693359375)) + F32(F32(F32(ef * F32(-2.12194440e-4)) + log_m) + c))


nonneg = st.floats(0, 3.4028234663852886e38, width=32) | st.sampled_from([0.0, 1e-45, 5.9e-8, 6e-8, 0.41421357, 0.4142136, 1.0,
                                                           3.0, 1e9, 4.85e8])


@given(st.lists(nonneg, min_size=1, max_size=20))
def test_log1p_matches_scalar_definition(ys):
    y = np.array(ys, F32)
    assert_bits_equal(spec.log1p(y), np.array([log1p_scalar(v) for v in y], F32), "log1p")


def test_log1p_accuracy_special_values_and_the_correction_term():
    y = np.concatenate([np.linspace(0, 10, 200_001, dtype=F32), np.geomspace(1e-45, 1e9, 200_001).astype(F32)])
    assert ulps(spec.log1p(y), np.log1p(y.astype(np.float64))).max() <= 2
    assert_bits_equal(spec.log1p(np.array([0, np.inf], F32)), np.array([0, np.inf], F32), "log1p(0), log1p(inf)")
    assert np.isnan(spec.log1p(np.array([np.nan], F32))[0])
    # without the correction c the result is worse and its bits differ: the test above could fail
    y = np.array([1e-3, 0.3, 7.7e-4], F32)
    u = F32(1) + y
    no_correction = np.log(u.astype(np.float64)).astype(F32)
    assert differs(spec.log1p(y), no_correction)


# ------------------------------------------------------------------------------------------ activations
finite = st.floats(-100, 100, width=32) | st.sampled_from([0.0, -0.0, 20.0, 20.000001907348633, -87.5, 88.5])


@given(st.lists(finite, min_size=1, max_size=20))
def test_activations_match_scalar_definitions(xs):
    x = np.array(xs, F32)
    with np.errstate(over="ignore"):
        sig = [F32(F32(1) / F32(F32(1) + exp1(-v))) for v in x]
        silu = [F32(v / F32(F32(1) + exp1(-v))) for v in x]
        soft = [v if v > F32(20) else log1p_scalar(exp1(v)) for v in x]
        assert_bits_equal(spec.sigmoid(x), np.array(sig, F32), "sigmoid")
        assert_bits_equal(spec.silu(x), np.array(silu, F32), "silu")
        assert_bits_equal(spec.softplus(x), np.array(soft, F32), "softplus")


def test_softplus_threshold_and_accuracy():
    x = np.linspace(-86, 30, 200_001, dtype=F32)
    want = np.where(x > 20, x, np.log1p(np.exp(x.astype(np.float64))))
    assert ulps(spec.softplus(x), want).max() <= 3
    at = np.array([20.0, np.nextafter(F32(20), F32(30)), 100.0, 3e38], F32)
    got = spec.softplus(at)
    assert got[0] == log1p_scalar(exp1(F32(20)))  # 20 itself still takes the log1p path
    assert_bits_equal(got[1:], at[1:], "softplus above 20 (no overflow through exp)")


# --------------------------------------------------------------------------------------- normalisations
@given(st.integers(1, 4), st.integers(1, 200), st.integers(0, 2**32 - 1), st.sampled_from([1e-6, 1e-5, 0.5]))
def test_l2norm_matches_scalar_definition(rows, n, seed, eps):
    x = (np.random.default_rng(seed).standard_normal((rows, n)) * 3).astype(F32)
    want = np.empty_like(x)
    for r in range(rows):
        inv = F32(F32(1) / np.sqrt(F32(lane_sum_scalar(x[r] * x[r]) + F32(eps))))
        want[r] = x[r] * inv
    assert_bits_equal(spec.l2norm(x, eps), want, "l2norm")


def test_l2norm_order_is_observable():
    x = np.random.default_rng(5).standard_normal((64, 128)).astype(F32)
    plain = x / np.sqrt(np.cumsum(x * x, axis=-1, dtype=F32)[:, -1:] + F32(1e-6))
    assert differs(spec.l2norm(x, 1e-6), plain)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_gated_rmsnorm_matches_scalar_definition(rows, heads, dim, seed):
    rng = np.random.default_rng(seed)
    x, z = (rng.standard_normal((2, rows, heads, dim)) * 2).astype(F32)
    w = rng.standard_normal(dim).astype(F32)
    want = np.empty_like(x)
    for r in range(rows):
        for h in range(heads):
            mean = F32(lane_sum_scalar(x[r, h] * x[r, h]) / F32(dim))
            inv = F32(F32(1) / np.sqrt(F32(mean + F32(1e-6))))
            for i in range(dim):
                silu = F32(z[r, h, i] / F32(F32(1) + exp1(-z[r, h, i])))
                want[r, h, i] = F32(F32(F32(x[r, h, i] * inv) * w[i]) * silu)
    assert_bits_equal(spec.gated_rmsnorm(x, w, z, 1e-6), want, "gated_rmsnorm")


def test_sigmoid_gate():
    a = np.array([[1.5, -2.0, 3.0]], F32)
    g = np.array([[0.0, -100.0, 7.0]], F32)
    want = np.array([[F32(v * F32(F32(1) / F32(F32(1) + exp1(-t)))) for v, t in zip(a[0], g[0])]], F32)
    assert_bits_equal(spec.sigmoid_gate(a, g), want, "sigmoid_gate")
    assert spec.sigmoid_gate(a, g)[0, 0] == F32(0.75)


# ------------------------------------------------------------------------------------------------ conv1d
@given(st.integers(1, 9), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_conv1d_matches_scalar_definition_and_resumes_after_any_row(rows, channels, taps, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, channels)).astype(F32)
    state = rng.standard_normal((channels, taps - 1)).astype(F32)
    w = rng.standard_normal((channels, taps)).astype(F32)
    y, windows = spec.conv1d_causal(x, state, w)
    seq = np.concatenate([state.T, x])
    want = np.array([[lane_sum_scalar([F32(w[c, t] * seq[r + t, c]) for t in range(taps)])
                      for c in range(channels)] for r in range(rows)], F32)
    assert_bits_equal(y, want, "conv1d")
    s = state
    for r in range(rows):  # one row at a time from the state after the previous row: the same bits
        one, win = spec.conv1d_causal(x[r : r + 1], s, w)
        assert_bits_equal(one[0], y[r], f"conv1d row {r} alone")
        assert_bits_equal(win[0], windows[r], f"state after row {r}")
        s = win[0]


def test_conv1d_tap_order_is_observable():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 40)).astype(F32) * 100
    state = np.zeros((40, 3), F32)
    w = rng.standard_normal((40, 4)).astype(F32)
    y, _ = spec.conv1d_causal(x, state, w)
    seq = np.concatenate([state.T, x])
    sequential = sum((w[:, t] * seq[t : t + 50]).astype(F32) for t in range(4))  # (((0+t0)+t1)+t2)+t3
    assert differs(y, sequential)


# ----------------------------------------------------------------------------------------- the delta rule
def delta_rule_scalar(q, k, v, decay, beta, state):
    """SPEC.md "Gated delta rule", element by element."""
    rows, n_v, dim = v.shape
    n_k = k.shape[1]
    s = state.copy()
    out = np.empty(v.shape, F32)
    scale = F32(F32(1) / np.sqrt(F32(dim)))
    for r in range(rows):
        for h in range(n_v):
            kh, qh = k[r, h % n_k], np.array([F32(t * scale) for t in q[r, h % n_k]], F32)
            s[h] = s[h] * decay[r, h]
            for i in range(dim):
                u = lane_sum_scalar(s[h, i] * kh)
                d = F32(F32(v[r, h, i] - u) * beta[r, h])
                s[h, i] = s[h, i] + kh * d
            for i in range(dim):
                out[r, h, i] = lane_sum_scalar(s[h, i] * qh)
    return out, s


def random_delta_inputs(rng, rows, n_k, group, dim):
    n_v = n_k * group
    q = spec.l2norm(rng.standard_normal((rows, n_k, dim)).astype(F32), 1e-6)
    k = spec.l2norm(rng.standard_normal((rows, n_k, dim)).astype(F32), 1e-6)
    v = rng.standard_normal((rows, n_v, dim)).astype(F32)
    decay = rng.uniform(0.2, 1.0, (rows, n_v)).astype(F32)
    beta = rng.uniform(0.0, 1.0, (rows, n_v)).astype(F32)
    state = rng.standard_normal((n_v, dim, dim)).astype(F32)
    return q, k, v, decay, beta, state


@given(st.integers(1, 4), st.integers(1, 2), st.integers(1, 3), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_delta_rule_matches_scalar_definition(rows, n_k, group, dim, seed):
    args = random_delta_inputs(np.random.default_rng(seed), rows, n_k, group, dim)
    out, states = spec.delta_rule(*args)
    want_out, want_state = delta_rule_scalar(*args)
    assert_bits_equal(out, want_out, "delta rule output")
    assert_bits_equal(states[-1], want_state, "delta rule state")


@given(st.integers(1, 9), st.integers(1, 2), st.integers(1, 3), st.sampled_from([8, 33, 64]),
       st.integers(0, 2**32 - 1))
def test_delta_rule_rows_in_one_call_equal_single_steps(rows, n_k, group, dim, seed):
    q, k, v, decay, beta, state = random_delta_inputs(np.random.default_rng(seed), rows, n_k, group, dim)
    out, states = spec.delta_rule(q, k, v, decay, beta, state)
    s = state
    for r in range(rows):
        one, s = spec.delta_rule_step(q[r], k[r], v[r], decay[r], beta[r], s)
        assert_bits_equal(one, out[r], f"row {r}")
        assert_bits_equal(s, states[r], f"state after row {r}")


def test_delta_rule_order_and_head_tiling_are_observable():
    """A sequential dot product, the decay after the update, or value heads grouped instead of tiled over
    the key heads: each gives other bits, so the scalar comparison above would catch it."""
    q, k, v, decay, beta, state = random_delta_inputs(np.random.default_rng(2), 3, 2, 2, 64)
    out, _ = spec.delta_rule(q, k, v, decay, beta, state)
    grouped = [x.repeat(2, axis=1) for x in (q, k)]  # value head h reading key head h // 2
    assert differs(out, spec.delta_rule(grouped[0], grouped[1], v, decay, beta, state)[0])
    s, seq = state.copy(), np.empty_like(out)
    tiled = np.arange(4) % 2
    for r in range(3):
        kh, qh = k[r][tiled], q[r][tiled] * (F32(1) / np.sqrt(F32(64)))
        s = s * decay[r][:, None, None]
        d = (v[r] - np.cumsum(s * kh[:, None, :], axis=-1, dtype=F32)[..., -1]) * beta[r][:, None]
        s = s + kh[:, None, :] * d[:, :, None]
        seq[r] = np.cumsum(s * qh[:, None, :], axis=-1, dtype=F32)[..., -1]
    assert differs(out, seq)


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_deltanet_gates_match_scalar_definition(rows, heads, seed):
    rng = np.random.default_rng(seed)
    alpha, b = (rng.standard_normal((2, rows, heads)) * 4).astype(F32)
    dt = rng.standard_normal(heads).astype(F32) * 3
    a = -rng.uniform(0.5, 16, heads).astype(F32)
    decay, beta = spec.deltanet_gates(alpha, b, dt, a)
    for r in range(rows):
        for h in range(heads):
            t = F32(alpha[r, h] + dt[h])
            sp = t if t > F32(20) else log1p_scalar(exp1(t))
            assert decay[r, h] == exp1(F32(sp * a[h])) and 0 <= decay[r, h] <= 1
            assert beta[r, h] == F32(F32(1) / F32(F32(1) + exp1(-b[r, h])))


# ------------------------------------------------------------------------------------ the CPU backend
def test_backend_rings_resume_after_any_row():
    """The CPU backend's ring versions write the state after each row into its slot: resuming from slot j
    continues exactly as single steps do."""
    be = CpuBackend()
    rng = np.random.default_rng(4)
    q, k, v, decay, beta, state = random_delta_inputs(rng, 5, 2, 2, 16)
    ring = np.zeros((6,) + state.shape, F32)
    ring[5] = state
    out = be.delta_rule(q, k, v, decay, beta, ring, 6)  # after position 5 (slot 5); positions 6..10: slots 0..4
    want, states = spec.delta_rule(q, k, v, decay, beta, state)
    assert_bits_equal(out, want, "ring delta rule")
    for j in range(5):
        assert_bits_equal(ring[j], states[j], f"slot {j}")
    x = rng.standard_normal((5, 8)).astype(F32)
    w = rng.standard_normal((8, 4)).astype(F32)
    conv_ring = np.zeros((2, 8, 3), F32)
    y = be.conv1d_causal(x, w, conv_ring, 0)  # zeros before position 0; slots 0, 1, 0, 1, 0
    want_y, windows = spec.conv1d_causal(x, np.zeros((8, 3), F32), w)
    assert_bits_equal(y, want_y, "ring conv1d")
    assert_bits_equal(conv_ring[0], windows[4], "slot 0 keeps the later row")
    assert_bits_equal(conv_ring[1], windows[3], "slot 1")


def test_split_query_gate_reads_each_heads_query_then_its_gate():
    qg = np.arange(2 * 3 * 2 * 4, dtype=F32).reshape(2, 24)  # 2 rows, 3 heads of D=4
    q, g = CpuBackend.split_query_gate(qg, 3, 4)
    assert q[1, 2].tolist() == [40, 41, 42, 43] and g[1, 2].tolist() == [44, 45, 46, 47]
