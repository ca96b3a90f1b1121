"""Loading GGUF models: synthetic models of every arch and weight type come back with the right config and
bit-exact weights, and the default model loads with SmolLM2-135M's hyper-parameters."""
import argparse
import mmap
import time

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_writer import GGUFValue
from gguf import quants as ggml_quants

from refspec import synthetic
from refspec.errors import UnsupportedModelError, UsageError
from refspec.gguf_model import LAYER_TENSORS, MODEL_TENSORS, NEXTN_TENSORS, load
from refspec.model import Q8Matrix, RopeScaling

Q8_0 = GGMLQuantizationType.Q8_0


def file_tensors(path) -> dict:
    """{name: (ggml type, raw data)} read with gguf-py's own reader, independently of refspec."""
    return {t.name: (t.tensor_type, np.array(t.data)) for t in GGUFReader(path).tensors}


def expected_q8(ggml_type, raw) -> tuple[np.ndarray, np.ndarray]:
    """(q, d) that refspec must hold for a matrix stored as `raw`: Q8_0 blocks as they are, anything else
    through gguf-py's reference dequantize -> quantize to Q8_0."""
    if ggml_type != Q8_0:
        raw = ggml_quants.quantize(ggml_quants.dequantize(raw, ggml_type), Q8_0)
    n = raw.shape[0]
    blocks = raw.reshape(n, -1, 34)
    return blocks[:, :, 2:].reshape(n, -1).view(np.int8), blocks[:, :, :2].reshape(n, -1).view(np.float16)


def assert_same_bits(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    actual, expected = np.ascontiguousarray(actual), np.ascontiguousarray(expected)  # mapped views are strided
    differ = np.flatnonzero(actual.reshape(-1).view(np.uint8) != expected.reshape(-1).view(np.uint8))
    assert differ.size == 0, f"{what}: {differ.size} bytes differ, first at byte {differ[0]}"


def maps_a_file(a: np.ndarray) -> bool:
    """Whether `a` is (a view of) memory mapped from a file."""
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap):
            return True
        a = a.base
    return isinstance(a, mmap.mmap)


def refspec_tensors(model) -> dict:
    """{GGUF name: refspec array or Q8Matrix}, through the loader's own name map (rope_freqs.weight lives in
    the config: test_rope_freqs_are_llamas_alone)."""
    weights = model.weights
    found = {name: getattr(weights, spec.field) for name, spec in MODEL_TENSORS.items()
             if name != "rope_freqs.weight"}
    for i, layer in enumerate(weights.layers):
        found.update({f"blk.{i}.{key}": getattr(layer, spec.field) for key, spec in LAYER_TENSORS.items()})
    if weights.mtp is not None:  # the nextn block's own tensors
        prefix = f"blk.{model.config.n_layer}."
        found.update({prefix + key: getattr(weights.mtp, spec.field) for key, spec in NEXTN_TENSORS.items()})
    return {name: value for name, value in found.items() if value is not None}


def assert_weights_match_file(model, path) -> None:
    stored = file_tensors(path)
    loaded = refspec_tensors(model)
    for name, (ggml_type, raw) in stored.items():
        value = loaded[name]
        if isinstance(value, Q8Matrix):
            q, d = expected_q8(ggml_type, raw)
            assert_same_bits(value.q, q, f"{name} quants")
            assert_same_bits(value.d, d, f"{name} scales")
            if ggml_type == Q8_0:  # read where it lies: a view of the mapped file, not a copy
                assert maps_a_file(value.blocks), f"{name} is a copy, not a view of the mapped file"
        else:
            assert_same_bits(value, ggml_quants.dequantize(raw, ggml_type).astype(np.float32), name)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("weight_type", ["Q8_0", "F32", "F16"])
def test_synthetic_round_trip(tmp_path, arch, weight_type):
    tied = weight_type != "F16"
    path = synthetic.write_model(tmp_path / "m.gguf", arch=arch, weight_type=weight_type, tie_embeddings=tied,
                                 n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=2, n_ctx=128,
                                 rope_base=50000.0, eps=1e-6, seed=3)
    notes = []
    model = load(path, log=notes.append)
    c = model.config
    assert (c.arch, c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_head_kv) == (arch, 2, 64, 96, 4, 2)
    assert (c.head_dim, c.n_rot, c.n_ctx, c.n_vocab) == (16, 16, 128, len(synthetic.tokenizer_vocab()[0]))
    assert c.rope_base == 50000.0 and c.rms_eps == float(np.float32(1e-6))
    assert (model.weights.output is model.weights.tok_embd) == tied
    assert (model.weights.layers[0].bq is not None) == (arch == "qwen2")
    assert (model.weights.layers[0].q_norm is not None) == (arch == "qwen3")
    assert_weights_match_file(model, path)
    if weight_type == "Q8_0":
        assert notes == []
    else:
        n_matrices = 2 * 7 + 1 + (not tied)
        assert notes == [f"refspec: note: converted {n_matrices} matrices ({weight_type}) to Q8_0 at load"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rope_scaling_is_read_as_llama_cpp_reads_it(tmp_path, arch):
    def config(**kwargs):
        return load(synthetic.write_model(tmp_path / "m.gguf", arch=arch, n_ctx=256, **kwargs)).config

    assert config().rope_scaling == RopeScaling()
    assert config(rope_scaling="linear", rope_factor=4.0).rope_scaling == RopeScaling(kind="linear", factor=4.0)
    yarn = config(rope_scaling="yarn", rope_factor=8.0, rope_orig_ctx=32, rope_attn_factor=0.75).rope_scaling
    assert yarn == RopeScaling(kind="yarn", factor=8.0, n_ctx_orig=32, attn_factor=0.75)
    assert config(rope_scaling="yarn").rope_scaling.n_ctx_orig == 64  # default n_ctx / factor in synthetic
    path = synthetic.write_model(tmp_path / "m.gguf", arch=arch, n_ctx=256)
    old_key = synthetic.rewrite_gguf(path, tmp_path / "old.gguf", metadata={f"{arch}.rope.scale_linear": 2.0})
    assert load(old_key).config.rope_scaling == RopeScaling(kind="linear", factor=2.0)  # no type: linear
    no_type = synthetic.rewrite_gguf(path, tmp_path / "t.gguf", metadata={f"{arch}.rope.scaling.factor": 0.0})
    assert load(no_type).config.rope_scaling == RopeScaling()  # factor 0: unset
    base64 = synthetic.rewrite_gguf(path, tmp_path / "b.gguf",
                                    metadata={f"{arch}.rope.freq_base": GGUFValue(1e4 + 1e-4, GGUFValueType.FLOAT64)})
    assert load(base64).config.rope_base == float(np.float32(1e4 + 1e-4)) == 10000.0


def test_rope_freqs_are_llamas_alone(tmp_path):
    path = synthetic.write_model(tmp_path / "m.gguf", arch="llama", rope_scaling="llama3", rope_factor=8.0,
                                 rope_orig_ctx=64, rope_base=500000.0)
    model = load(path)
    want = GGUFReader(path).get_tensor(len(GGUFReader(path).tensors) - 1)
    assert want.name == "rope_freqs.weight"
    assert model.config.rope_scaling.freq_factors == tuple(float(v) for v in want.data)
    factors = want.data.tolist()
    assert model.config.rope_scaling.kind == "none" and factors == sorted(factors)  # slow pairs scaled most
    assert factors[0] == 1.0 and factors[-1] == 8.0 and any(1.0 < f < 8.0 for f in factors)
    qwen = synthetic.write_model(tmp_path / "q.gguf", arch="qwen2")
    with_freqs = synthetic.rewrite_gguf(qwen, tmp_path / "qf.gguf",
                                        add_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(UnsupportedModelError, match="rope_freqs.weight is not part of refspec's qwen2"):
        load(with_freqs)


def test_explicit_head_dim_and_partial_rotation(tmp_path):
    # qwen3 style: n_head * head_dim != n_embd; rope on the first half of each head only.
    path = synthetic.write_model(tmp_path / "m.gguf", arch="qwen3", n_embd=64, n_head=4, n_head_kv=1,
                                 head_dim=32, n_rot=16, n_vocab=400)
    model = load(path)
    c = model.config
    assert (c.head_dim, c.n_rot, c.n_q, c.n_kv, c.n_vocab) == (32, 16, 128, 32, 400)
    assert model.weights.layers[0].wq.shape == (128, 64)
    assert model.weights.layers[0].wo.shape == (64, 128)
    assert model.weights.layers[1].k_norm.shape == (32,)
    assert_weights_match_file(model, path)


def test_metadata_is_plain_python(tmp_path):
    path = synthetic.write_model(tmp_path / "m.gguf", n_vocab=300)
    md = load(path).metadata
    tokens, types, merges = synthetic.tokenizer_vocab(300)
    assert md["tokenizer.ggml.tokens"] == tokens
    assert md["tokenizer.ggml.token_type"] == types
    assert md["tokenizer.ggml.merges"] == merges
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.chat_template"] == synthetic.CHAT_TEMPLATE
    assert md["tokenizer.ggml.bos_token_id"] == synthetic.BOS_ID and md["tokenizer.ggml.add_bos_token"] is False
    assert md["general.architecture"] == "llama"
    assert not any(key.startswith(("llama.", "GGUF.")) for key in md)
    for value in md.values():
        assert type(value) in (str, int, float, bool, list)


@pytest.mark.parametrize("matrix_type", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"])
def test_other_types_are_requantized_like_ggml(tmp_path, matrix_type):
    src = synthetic.write_model(tmp_path / "f32.gguf", arch="qwen2", weight_type="F32", n_layer=1)
    changed = {"blk.0.attn_q.weight": matrix_type, "blk.0.ffn_down.weight": matrix_type,
               "blk.0.attn_norm.weight": "F16", "blk.0.attn_k.bias": "BF16"}
    path = synthetic.rewrite_gguf(src, tmp_path / "mixed.gguf", tensor_types=changed)
    notes = []
    model = load(path, log=notes.append)
    assert_weights_match_file(model, path)
    kinds = ", ".join(sorted([f"2 {matrix_type}", "6 F32"], key=lambda kind: kind.split()[1]))
    assert notes == [f"refspec: note: converted 8 matrices ({kinds}) to Q8_0 at load"]


def test_untied_head_is_its_own_matrix(tmp_path):
    path = synthetic.write_model(tmp_path / "m.gguf", tie_embeddings=False, seed=5)
    weights = load(path).weights
    assert weights.output is not weights.tok_embd
    assert not np.array_equal(weights.output.q, weights.tok_embd.q)


def test_synthetic_weights_have_sensible_scale(tmp_path):
    path = synthetic.write_model(tmp_path / "m.gguf", n_embd=128, n_ff=256)
    layer = load(path).weights.layers[0]
    for matrix, k in ((layer.wq, 128), (layer.w_down, 256)):
        std = matrix.dequantize().std()
        assert 0.7 / np.sqrt(k) < std < 1.3 / np.sqrt(k)
    assert 0.8 < layer.attn_norm.mean() < 1.2


def test_synthetic_is_reproducible_and_seeded(tmp_path):
    a = synthetic.write_model(tmp_path / "a.gguf", seed=1).read_bytes()
    b = synthetic.write_model(tmp_path / "b.gguf", seed=1).read_bytes()
    c = synthetic.write_model(tmp_path / "c.gguf", seed=2).read_bytes()
    assert a == b and a != c


def test_synthetic_without_tokenizer(tmp_path):
    model = load(synthetic.write_model(tmp_path / "m.gguf", tokenizer=False, n_vocab=320))
    assert model.config.n_vocab == 320
    assert not any(key.startswith("tokenizer.") for key in model.metadata)


def test_synthetic_refuses_a_vocab_smaller_than_its_tokenizer(tmp_path):
    with pytest.raises(UsageError, match="n_vocab 10"):
        synthetic.write_model(tmp_path / "m.gguf", n_vocab=10)


def test_synthetic_command_line(tmp_path):
    parser = argparse.ArgumentParser()
    synthetic.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "m.gguf"), "--arch", "qwen2", "--n-layer", "1", "--n-embd", "32",
                              "--n-ff", "64", "--n-head", "2", "--n-head-kv", "1", "--untied"])
    config = load(synthetic.run(args)).config
    assert (config.arch, config.n_layer, config.n_embd, config.n_head_kv) == ("qwen2", 1, 32, 1)


def test_presets_have_real_model_shapes():
    llama = synthetic.PRESETS["llama-8b"]
    assert (llama["n_embd"], llama["n_ff"], llama["n_layer"], llama["n_head"], llama["n_head_kv"],
            llama["n_vocab"]) == (4096, 14336, 32, 32, 8, 128256)
    qwen = synthetic.PRESETS["qwen2.5-7b"]
    assert (qwen["n_embd"], qwen["n_ff"], qwen["n_layer"], qwen["n_head"], qwen["n_head_kv"],
            qwen["n_vocab"]) == (3584, 18944, 28, 28, 4, 152064)


@pytest.fixture(scope="module")
def default_model(default_model_path):
    notes = []
    start = time.perf_counter()
    model = load(default_model_path, log=notes.append)
    print(f"default model loaded in {time.perf_counter() - start:.2f} s")
    return model, notes


def test_default_model_config(default_model):
    model, notes = default_model
    c = model.config
    assert (c.arch, c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.head_dim, c.n_rot) == (
        "llama", 30, 576, 1536, 9, 3, 64, 64)
    assert (c.rope_base, c.n_ctx, c.n_vocab) == (100000.0, 8192, 49152)
    assert c.rms_eps == float(np.float32(1e-5))
    assert model.weights.output is model.weights.tok_embd
    assert notes == []  # the cached default model is the Q8_0 conversion: nothing to convert at load
    assert len(model.metadata["tokenizer.ggml.tokens"]) == 49152
    assert model.metadata["tokenizer.ggml.pre"] == "smollm"


def test_default_model_weights_match_ggml(default_model, default_model_path):
    model, _ = default_model
    stored = {t.name: t for t in GGUFReader(default_model_path).tensors}
    loaded = refspec_tensors(model)
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "blk.7.attn_norm.weight"):
        t = stored[name]
        if isinstance(loaded[name], Q8Matrix):
            q, d = expected_q8(t.tensor_type, np.array(t.data))
            assert_same_bits(loaded[name].q, q, name)
            assert_same_bits(loaded[name].d, d, name)
        else:
            assert_same_bits(loaded[name], np.array(t.data), name)


def test_a_long_conversion_says_how_far_it_is(tmp_path, monkeypatch):
    """Converting an F16 8B model takes a minute or more: progress lines while it runs (here every matrix, the
    interval set to 0), none for a Q8_0 file, and the note at the end either way."""
    import refspec.gguf_model as gguf_model
    from refspec.progress import ByteProgress

    class Eager(ByteProgress):
        def __init__(self, total, label, log, seconds=10.0):
            super().__init__(total, label, log, 0.0)

    monkeypatch.setattr(gguf_model, "ByteProgress", Eager)
    f16 = synthetic.write_model(tmp_path / "f16.gguf", arch="llama", n_layer=2, weight_type="F16")
    q8 = synthetic.write_model(tmp_path / "q8.gguf", arch="llama", n_layer=2)
    lines, quiet = [], []
    load(f16, log=lines.append)
    load(q8, log=quiet.append)
    steps = [line for line in lines if line.startswith("refspec: converting to Q8_0: ")]
    assert len(steps) >= 10 and "100 % of" not in steps[0] and lines[-1].startswith("refspec: note: converted")
    assert "100 % of" in steps[-1] and "round" not in steps[-1]  # the last matrix ends the round at 100 %, not 0 %
    assert quiet == []


def test_writing_a_synthetic_model_says_how_far_it_is(tmp_path, monkeypatch):
    import refspec.synthetic as synthetic_module
    from refspec.progress import ByteProgress

    class Eager(ByteProgress):
        def __init__(self, total, label, log, seconds=10.0):
            super().__init__(total, label, log, 0.0)

    monkeypatch.setattr(synthetic_module, "ByteProgress", Eager)
    lines = []
    path = synthetic.write_model(tmp_path / "w.gguf", arch="llama", n_layer=2, log=lines.append)
    assert lines and all(line.startswith("refspec: writing w.gguf: ") for line in lines)
    assert "100 % of" in lines[-1] and load(path, log=lambda m: None).config.n_layer == 2
    with pytest.raises(UsageError, match="log must be callable"):
        synthetic.write_model(tmp_path / "x.gguf", log="yes")
