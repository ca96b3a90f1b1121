"""llama.cpp side by side (`refspec dump --engine llama.cpp`, the `llamacpp` extra that CI installs): the same
tokens through llama.cpp's CPU path, compared with refspec on the default model. llama.cpp is not bit-exact
with the spec (other summation orders, FMA, an f16 KV cache); these tests pin how close it is."""
import subprocess
import sys

import numpy as np
import pytest

from refspec import compare, golden
from refspec.synthetic import write_model
from refspec.testing import assert_bits_equal

llama_cpp = pytest.importorskip("llama_cpp")

from refspec import llamacpp  # noqa: E402

PROMPT = "The capital of France is"


def refspec(*args):
    return subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def default_dumps(default_model_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("llamacpp")
    ref, ll = d / "refspec.safetensors", d / "llamacpp.safetensors"
    proc = refspec("dump", "-m", str(default_model_path), "-p", PROMPT, "-n", "16", "-o", str(ref), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    proc = refspec("dump", "-m", str(default_model_path), "--ids-from", str(ref), "--engine", "llama.cpp",
                   "-o", str(ll))
    assert proc.returncode == 0, proc.stderr
    return d, ref, ll


@pytest.mark.slow
def test_llama_cpp_on_the_default_model_is_close_but_not_bit_exact(default_dumps):
    d, ref, ll = default_dumps
    a, b = golden.load(ref), golden.load(ll)
    assert b.metadata["engine"] == "llama.cpp" and b.metadata["model_sha256"] == a.metadata["model_sha256"]
    assert b.token_ids.tolist() == a.token_ids.tolist() and b.n_prompt == a.n_prompt
    report = compare.compare(a, compare.load_other(ll, a))
    logits, stats = report["logits"], report["tensors"]["result_output"]
    assert logits["positions"] == 21 and logits["top1_agree"] >= 18 and logits["top5_overlap_mean"] >= 4
    assert 0 < stats["nmse"] < 1e-2  # measured 1.7e-3 (llama.cpp runs the Q4_1 weights; refspec their Q8_0)
    assert stats["bitwise_equal"] < stats["n"] // 100
    proc = refspec("compare", str(ref), str(ll), "--nmse-max", "1e-2")
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr
    assert refspec("compare", str(ref), str(ll), "--bitwise").returncode == 1


@pytest.fixture(scope="module")
def q8_copy(default_model_path, tmp_path_factory):
    """The default model requantized to Q8_0 by llama.cpp's quantizer."""
    return llamacpp.requantize_q8_0(default_model_path, tmp_path_factory.mktemp("q8") / "q8_0.gguf")


@pytest.fixture(scope="module")
def q8_refspec(q8_copy, default_dumps):
    """refspec on the Q8_0 copy, the default dump's tokens, every layer."""
    return golden.dump(q8_copy, golden.load(default_dumps[1]).token_ids.tolist(), 0, layers=True, device="cpu")


@pytest.mark.slow
def test_same_q8_0_weights_isolate_the_numerics(default_dumps, q8_copy, q8_refspec):
    """llama.cpp's Q8_0 requantization of the default model is byte for byte refspec's (refspec's logits on
    the copy are its logits on the original, bit for bit), so llama.cpp on the copy differs from refspec
    by numerics alone."""
    a = golden.load(default_dumps[1])
    assert_bits_equal(q8_refspec.logits, a.logits, "refspec's logits on the Q8_0 copy")
    theirs = llamacpp.dump(q8_copy, a.token_ids.tolist(), 0)
    report = compare.compare(q8_refspec, compare.Rows(theirs.tensors, np.arange(len(a.token_ids)), theirs.metadata, None))
    assert 0 < report["tensors"]["result_output"]["nmse"] < 5e-3  # measured 8.3e-4
    assert report["logits"]["top1_agree"] >= 19


@pytest.mark.slow
def test_where_llama_cpp_parts_from_the_spec_on_the_default_model(default_dumps, q8_copy, q8_refspec):
    """Same Q8_0 weights, f32 KV cache, every layer: llama.cpp agrees with the spec to float rounding in the
    first layer's norm and in its attention over the first 4 positions; its attention parts from there on
    (kqv_out-0, NMSE ~1e-6 at positions 4+), and the residual stream carries it to the logits."""
    mine = q8_refspec
    ids = mine.token_ids.tolist()
    theirs = llamacpp.dump(q8_copy, ids, 0, layers=True, kv_cache="f32")
    assert compare.nmse(mine.tensors["attn_norm-0"], theirs.tensors["attn_norm-0"]) < 1e-12
    assert compare.nmse(mine.tensors["kqv_out-0"][:4], theirs.tensors["kqv_out-0"][:4]) < 1e-12
    report = compare.compare(mine, compare.Rows(theirs.tensors, np.arange(len(ids)), theirs.metadata, None))
    assert report["first_over_nmse_threshold"] == "kqv_out-0"
    assert 1e-8 < report["tensors"]["kqv_out-0"]["nmse"] < 1e-4


def test_llama_cpp_greedy_on_a_tiny_model(tmp_path):
    model = write_model(tmp_path / "tiny.gguf", arch="qwen2", n_ctx=64, seed=2)
    g = llamacpp.dump(model, [5, 6, 7, 8], 5)
    assert g.token_ids[:4].tolist() == [5, 6, 7, 8] and len(g.token_ids) == 9 and g.n_prompt == 4
    assert g.logits.shape == (9, 283) and np.isfinite(g.logits).all()
    assert g.metadata["engine"] == "llama.cpp" and g.metadata["engine_version"].startswith("llama-cpp-python")
    ref = golden.dump(model, g.token_ids.tolist(), 0, device="cpu")
    assert (np.argmax(ref.logits, 1) == np.argmax(g.logits, 1)).mean() >= 0.75


def test_llama_cpp_layers_line_up_with_refspec_names(tmp_path):
    """--layers with llama.cpp: its graph nodes under refspec's names, shapes equal, and on a tiny model the
    first layer's norm agrees with the spec to float rounding."""
    model = write_model(tmp_path / "tiny.gguf", arch="llama", n_ctx=64, seed=4, n_layer=2)
    ids = [5, 6, 7, 8, 9, 10]
    ll = llamacpp.dump(model, ids, 0, layers=True, kv_cache="f32")
    ref = golden.dump(model, ids, 0, layers=True, device="cpu")
    assert list(ll.tensors) == list(ref.tensors) == golden.tensor_names(2)
    for name, t in ref.tensors.items():
        assert ll.tensors[name].shape == t.shape, name
    assert compare.nmse(ref.tensors["attn_norm-0"], ll.tensors["attn_norm-0"]) < 1e-12
    assert compare.nmse(ref.logits, ll.logits) < 1e-6


@pytest.mark.parametrize("args, message", [
    (["-n", "100"], "exceed the model's context"),
    (["--ids", "5,99999"], "token id 99999 is outside the vocabulary"),
])
def test_llama_cpp_engine_bad_input(tmp_path, args, message):
    model = write_model(tmp_path / "tiny.gguf", arch="llama", n_ctx=64, seed=2)
    if "--ids" not in args:
        args = ["--ids", "5,6", *args]
    proc = refspec("dump", "-m", str(model), "--engine", "llama.cpp", "-o", str(tmp_path / "x.safetensors"), *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("refspec: error: "), proc.stderr
    assert message in lines[0]
