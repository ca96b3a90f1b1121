"""Model-level properties of the forward pass on the CPU: batch invariance, repeatability, and the default
model's golden continuation."""
import functools
import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refspec.backends import CpuBackend
from refspec.errors import ContextLengthError, UsageError
from refspec.forward import Transformer
from refspec.generate import generate, prefill
from refspec.spec import rope_table
from refspec.gguf_model import load
from refspec.synthetic import write_model

from bits import assert_bits_equal

SHAPES = {  # tiny models of every architecture; odd head counts, GQA groups, partial RoPE, a 3-block ffn
    "llama": dict(n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=2),
    "qwen2": dict(n_layer=2, n_embd=96, n_ff=160, n_head=3, n_head_kv=1, head_dim=32),
    "qwen3": dict(n_layer=3, n_embd=64, n_ff=64, n_head=2, n_head_kv=2, head_dim=32, n_rot=16),
    "qwen35": dict(n_layer=3, n_embd=64, n_ff=96, n_head=2, n_head_kv=1, head_dim=32, ssm_n_v_heads=6,
                   full_attention_interval=2),  # DeltaNet, attention, DeltaNet; 6 value heads over 2 key heads
}


@functools.lru_cache(maxsize=None)
def tiny(arch: str, tmp_dir: str) -> Transformer:
    path = write_model(f"{tmp_dir}/{arch}.gguf", arch=arch, n_ctx=96, seed=7, **SHAPES[arch])
    return Transformer(load(path, log=lambda message: None), CpuBackend())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp_dir = str(tmp_path_factory.mktemp("models"))
    return lambda arch: tiny(arch, tmp_dir)


@given(arch=st.sampled_from(sorted(SHAPES)), data=st.data())
def test_rows_in_one_pass_equal_single_row_passes(models, arch, data):
    tf = models(arch)
    n_vocab = tf.config.n_vocab
    ids = data.draw(st.lists(st.integers(0, n_vocab - 1), min_size=2, max_size=40))
    split = data.draw(st.integers(1, len(ids) - 1))  # a prefix first, then the rest as one batch of R rows
    batched = tf.new_cache(64)
    tf.forward(batched, ids[:split], 0)
    many = tf.forward(batched, ids[split:], split)  # [R, V]
    single = tf.new_cache(64)
    for pos, token in enumerate(ids):
        one = tf.forward(single, [token], pos)
        if pos >= split:
            assert_bits_equal(one[0], many[pos - split], f"{arch}: logits at position {pos}")
    for layer in range(tf.config.n_layer):  # and the caches hold the same keys and values, or states
        if tf.config.is_recurrent(layer):
            assert_bits_equal(single.ssm[layer][0], batched.ssm[layer][0], f"DeltaNet state {layer}")
            assert_bits_equal(single.conv[layer][0], batched.conv[layer][0], f"conv state {layer}")
            continue
        assert_bits_equal(single.k[layer][:, : len(ids)], batched.k[layer][:, : len(ids)], f"k cache {layer}")
        assert_bits_equal(single.v[layer][:, : len(ids)], batched.v[layer][:, : len(ids)], f"v cache {layer}")


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_two_runs_give_identical_bits(models, arch):
    tf = models(arch)
    first = generate(tf, [1, 2, 3, 4, 5], 12, keep_logits=True)
    second = generate(tf, [1, 2, 3, 4, 5], 12, keep_logits=True)
    assert first.ids == second.ids
    for a, b in zip(first.logits, second.logits):
        assert_bits_equal(a, b, f"{arch} logits")


@given(chunk=st.integers(1, 17))
def test_prompt_chunk_size_does_not_change_bits(models, chunk):
    tf = models("qwen2")
    prompt = list(range(3, 40))
    want = prefill(tf, tf.new_cache(64), prompt, chunk=64)
    assert_bits_equal(prefill(tf, tf.new_cache(64), prompt, chunk=chunk), want, f"chunk {chunk}")


def test_token_ids_outside_the_vocabulary_are_refused(models):
    tf = models("llama")
    for bad in ([-1], [tf.config.n_vocab], [3, tf.config.n_vocab + 7], []):
        with pytest.raises(UsageError, match="token ids"):
            tf.forward(tf.new_cache(8), bad, 0)


def test_context_limit_is_a_clear_error(models):
    tf = models("llama")  # n_ctx 96
    with pytest.raises(ContextLengthError, match="context"):
        generate(tf, [1] * 90, 10)
    with pytest.raises(ContextLengthError):
        generate(tf, [1] * 96, 1)
    result = generate(tf, [1] * 90, -1, eog_ids=())  # until the context is full
    assert len(result.ids) == 6 and result.stop_reason == "context"


def test_rope_table_is_sized_to_the_cache(tmp_path):
    # A file claiming a 2**24-position context: its full table would take 2**24 * 16 * 8 bytes = 2 GiB. The
    # Transformer builds none; each cache holds the table for its own positions, the spec's table.
    path = write_model(tmp_path / "long.gguf", arch="llama", n_ctx=2**24, seed=3, **SHAPES["llama"])
    tf = Transformer(load(path, log=lambda message: None), CpuBackend())
    cfg = tf.config
    cache = tf.new_cache(40)
    want_cos, want_sin = rope_table(40, cfg.n_rot, cfg.rope_base)
    assert cache.rope_cos.shape == (40, cfg.n_rot // 2)
    assert_bits_equal(cache.rope_cos, want_cos, "cos")
    assert_bits_equal(cache.rope_sin, want_sin, "sin")
    assert tf.forward(cache, [1, 2, 3], 0).shape == (3, cfg.n_vocab)
    with pytest.raises(ContextLengthError):
        tf.forward(cache, [1, 2], 39)


def test_cache_table_follows_the_files_rope_scaling(tmp_path):
    path = write_model(tmp_path / "yarn.gguf", arch="qwen2", n_ctx=256, seed=3, rope_scaling="yarn",
                       rope_factor=4.0, rope_orig_ctx=32, **SHAPES["qwen2"])
    tf = Transformer(load(path, log=lambda message: None), CpuBackend())
    cfg = tf.config
    cache = tf.new_cache(50)
    want_cos, want_sin = rope_table(50, cfg.n_rot, cfg.rope_base, cfg.rope_scaling)
    assert_bits_equal(cache.rope_cos, want_cos, "cos")
    assert_bits_equal(cache.rope_sin, want_sin, "sin")
    plain_cos, _ = rope_table(50, cfg.n_rot, cfg.rope_base)
    assert not np.array_equal(cache.rope_cos, plain_cos)


# The default model (SmolLM2-135M-Instruct, Q4_1 converted to Q8_0 at load) continuing a fixed prompt:
# recorded from refspec's CPU path; any change to the numerics or the loader shows up here. The sha256 of the
# 16 rows of logits (float32 little-endian, [16, 49152]) pins every bit: a NumPy or BLAS upgrade, or a change of
# machine, that flips one bit of one logit fails here (spec version 2; the same bits as version 1, whose RoPE
# table first differs at position 183).
GOLDEN_PROMPT = "The capital of France is"
GOLDEN_IDS = [7042, 30, 198, 198, 504, 2988, 314, 42, 216, 34, 32, 33, 40, 29, 32, 33]  # " Paris.\n\nThe answer is: 2018-01"
GOLDEN_LOGITS_SHA256 = "7525cbf62aba32633f79023906e5848998e46daca70156da1da3d953a6808918"


def test_default_model_golden_continuation(default_model_path):
    from refspec.tokenizer import Tokenizer

    model = load(default_model_path, log=lambda message: None)
    tok = Tokenizer.from_metadata(model.metadata)
    tf = Transformer(model, CpuBackend())
    result = generate(tf, tok.encode(GOLDEN_PROMPT), 16, eog_ids=(), keep_logits=True)
    assert result.ids == GOLDEN_IDS, (result.ids, tok.decode(result.ids))
    logits = np.ascontiguousarray(np.array(result.logits), dtype="<f4")
    assert logits.shape == (16, 49152)
    assert hashlib.sha256(logits.tobytes()).hexdigest() == GOLDEN_LOGITS_SHA256, (
        "the default model's logits changed bits (same greedy ids); first rows' argmax and max: "
        f"{[(int(r.argmax()), float(r.max())) for r in logits[:3]]}")


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_taps_name_every_layer_tensor_and_change_no_bits(models, arch):
    tf = models(arch)
    cfg = tf.config
    ids = [5, 9, 33, 2, 71]
    seen = {}
    tapped = tf.forward(tf.new_cache(8), ids, 0, taps=lambda name, t: seen.setdefault(name, np.array(t)))
    assert_bits_equal(tapped, tf.forward(tf.new_cache(8), ids, 0), "logits with taps")
    per_layer = ("attn_norm", "kqv_out", "attn_out", "ffn_inp", "ffn_norm", "ffn_out", "l_out")
    want = [f"{n}-{i}" for i in range(cfg.n_layer) for n in per_layer] + ["result_norm", "result_output"]
    assert list(seen) == want  # forward order
    assert_bits_equal(seen["result_output"], tapped, "result_output")
    width = cfg.ssm_value_dim if cfg.is_recurrent(0) else cfg.n_q  # a DeltaNet layer's output before ssm_out
    assert seen["kqv_out-0"].shape == (len(ids), width) and seen["l_out-0"].shape == (len(ids), cfg.n_embd)
    last = cfg.n_layer - 1
    for i in range(1, cfg.n_layer):  # the residual stream adds up as the names say
        assert_bits_equal(seen[f"ffn_inp-{i}"], seen[f"l_out-{i - 1}"] + seen[f"attn_out-{i}"], f"ffn_inp-{i}")
    for i in range(cfg.n_layer):
        assert_bits_equal(seen[f"l_out-{i}"], seen[f"ffn_inp-{i}"] + seen[f"ffn_out-{i}"], f"l_out-{i}")
    w = tf.weights
    assert_bits_equal(seen["result_norm"], tf.be.rmsnorm(seen[f"l_out-{last}"], w.output_norm, cfg.rms_eps), "norm")
