"""refspec.testing as another project uses it: the strategies draw what they promise and the CPU backend
matches the spec on them; the pytest plugin's fixture passes a conforming backend and fails a wrong one."""
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refspec import spec
from refspec.backends import CpuBackend
from refspec.gguf_model import load
from refspec.model import QK8_0
from refspec.synthetic import write_model
from refspec.testing import REFERENCE_OPS, assert_bits_equal, strategies as rst

import wrong_backends


@given(rst.gemv_inputs())
def test_cpu_gemv_matches_the_spec_on_drawn_weights(case):
    w, xq, xd = case
    be = CpuBackend()
    up = be.upload_weights(_weights_of(w)).output
    assert_bits_equal(be.q8_gemv(up, xq, xd), REFERENCE_OPS["q8_gemv"](w, xq, xd), "q8_gemv")


def _weights_of(w):
    from refspec.model import ModelWeights

    return ModelWeights(tok_embd=w, layers=[], output_norm=np.ones(w.shape[1], np.float32), output=w)


@given(rst.activations())
def test_activations_have_the_edges_and_quantize_like_the_spec(x):
    assert x.dtype == np.float32 and np.isfinite(x).all()
    if x.shape[1] % QK8_0 == 0:
        q, d = CpuBackend().quantize_q8(x)
        want_q, want_d = spec.quantize_q8_0(x)
        assert_bits_equal(q, want_q, "quants")
        assert_bits_equal(d, want_d, "scales")


@given(rst.attention_inputs())
def test_cpu_attention_matches_the_spec_on_drawn_inputs(case):
    q, k, v, pos0 = case
    assert k.shape[1] == pos0 + q.shape[0] and q.shape[1] % k.shape[0] == 0
    assert_bits_equal(CpuBackend.attention(q, k, v, pos0), spec.attention(q, k, v, pos0), "attention")


@given(rst.tiny_model_kwargs())
def test_tiny_model_kwargs_give_models_that_load_and_run(tmp_path_factory, kwargs):
    from refspec.forward import Transformer

    path = write_model(tmp_path_factory.mktemp("m") / "m.gguf", **kwargs)
    model = load(path, log=lambda m: None)
    assert model.config.arch == kwargs["arch"] and model.config.n_layer == kwargs["n_layer"]
    tf = Transformer(model, CpuBackend())
    assert np.isfinite(tf.forward(tf.new_cache(4), [3, 4, 5], 0)).all()


def test_strategies_find_a_wrong_backend():
    """The drawn inputs are rich enough to catch a sequential sum in the GEMV (hypothesis finds a case)."""
    @given(rst.gemv_inputs())
    def prop(case):
        w, xq, xd = case
        assert_bits_equal(wrong_backends.SequentialSum._sequential(w, xq, xd), spec.q8_gemv(w, xq, xd))

    try:
        prop()
    except AssertionError as err:
        assert "elements differ; first at" in str(err) and "ULP" in str(err)
    else:
        raise AssertionError("no drawn GEMV input told a sequential sum from the lane tree")


def test_pytest_plugin_fixture_in_another_project(tmp_path):
    (tmp_path / "test_other.py").write_text(textwrap.dedent("""
        from refspec.backends import CpuBackend
        import wrong_backends

        def test_good(refspec_check_backend):
            refspec_check_backend(CpuBackend, models=False)

        def test_wrong(refspec_check_backend):
            refspec_check_backend(wrong_backends.LibmExp, models=False)

        def test_dense_only(refspec_check_backend):
            refspec_check_backend(wrong_backends.DenseOnly, models=False)

        def test_dense_only_asked_for_qwen35(refspec_check_backend):
            refspec_check_backend(wrong_backends.DenseOnly, models=False, qwen35=True)

        def test_qwen35(refspec_check_backend):
            refspec_check_backend(CpuBackend(), models=False, qwen35=True)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pathlib.Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "refspec.testing.pytest_plugin",
                           "-p", "no:cacheprovider", str(tmp_path / "test_other.py")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env=env)
    assert "2 failed, 3 passed" in proc.stdout, proc.stdout[-2000:]
    assert "silu_mul(2x604): FAIL bitwise" in proc.stdout
    assert "qwen35 is not checked: the backend lacks delta_rule" in proc.stdout


def test_reference_ops_name_qwen35s_spec_twins():
    """REFERENCE_OPS holds qwen35's ops too, and each is the spec function check-backend's cases compare with."""
    import numpy as np

    from refspec import spec
    from refspec.testing import cases

    for name in ("silu", "sigmoid_gate", "l2norm", "gated_rmsnorm", "deltanet_gates", "conv1d_causal", "delta_rule"):
        assert REFERENCE_OPS[name] is getattr(spec, name)
    w = cases.weights(np.random.default_rng(1))
    case = next(c for c in cases.qwen35_cases() if c.op == "l2norm")
    assert_bits_equal(REFERENCE_OPS["l2norm"](case.inputs["x"], case.inputs["eps"]),
                      cases.reference_op(w, case)[0], "l2norm")
    x = np.linspace(-3, 3, 64, dtype=np.float32).reshape(2, 32)
    assert_bits_equal(REFERENCE_OPS["silu"](x), cases.reference_op(w, cases.Case("silu", "", {"x": x}))[0], "silu")


@settings(max_examples=60, deadline=None)
@given(rst.delta_rule_inputs(), st.integers(1, 7), st.integers(0, 40))
def test_the_cpu_backends_delta_rule_rings_equal_the_spec(case, n_states, pos0):
    """CpuBackend.delta_rule (the reference check-backend compares with) on a ring of n_states slots: from the
    state in slot (pos0-1) % n_states (zeros at 0), its output and every row's state in slot (pos0+r) % n_states,
    a later row's winning a slot, are spec.delta_rule's."""
    q, k, v, decay, beta, state = case
    ring = np.full((n_states,) + state.shape, np.float32(7.0))
    start = state if pos0 else np.zeros_like(state)
    if pos0:
        ring[(pos0 - 1) % n_states] = state
    want, states = spec.delta_rule(q, k, v, decay, beta, start)
    assert_bits_equal(CpuBackend.delta_rule(q, k, v, decay, beta, ring, pos0), want, "output")
    last = {(pos0 + r) % n_states: r for r in range(len(v))}  # the row whose state each slot keeps
    for slot, r in last.items():
        assert_bits_equal(ring[slot], states[r], f"state of row {r}")


@settings(max_examples=60, deadline=None)
@given(rst.conv1d_inputs(), st.integers(1, 7), st.integers(1, 40))
def test_the_cpu_backends_conv1d_rings_equal_the_spec(case, n_states, pos0):
    """The same for conv1d_causal: its windows are the states."""
    x, state, w = case
    ring = np.full((n_states,) + state.shape, np.float32(-3.0))
    ring[(pos0 - 1) % n_states] = state
    with np.errstate(all="ignore"):
        want, windows = spec.conv1d_causal(x, state, w)
        assert_bits_equal(CpuBackend.conv1d_causal(x, w, ring, pos0), want, "conv1d output")
    last = {(pos0 + r) % n_states: r for r in range(len(x))}  # the row whose state each slot keeps
    for slot, r in last.items():
        assert_bits_equal(ring[slot], windows[r], f"window of row {r}")
