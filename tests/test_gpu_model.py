"""Whole forward passes on the GPU: the logits of tiny random models of every architecture and of the default
model equal the CPU's (the spec's) bit for bit, and R rows in one pass equal R single-row passes."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refspec.backends import CpuBackend
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.gpu import gpu_available
from refspec.synthetic import write_model

from bits import assert_bits_equal

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no GPU: CuPy sees none")]

SHAPES = {  # odd block counts, GQA, partial RoPE, head dims that are not multiples of 32
    "llama": dict(n_layer=2, n_embd=96, n_ff=160, n_head=3, n_head_kv=1, head_dim=32),
    "qwen2": dict(n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=2),
    "qwen3": dict(n_layer=3, n_embd=64, n_ff=224, n_head=6, n_head_kv=2, head_dim=48, n_rot=16),
}
N_CTX = 320  # long enough for attention over more than one 256-position chunk


@functools.lru_cache(maxsize=None)
def tiny_model(arch: str, tmp_dir: str):
    path = write_model(f"{tmp_dir}/{arch}.gguf", arch=arch, n_ctx=N_CTX, seed=11, **SHAPES[arch])
    return load(path, log=lambda message: None)


@pytest.fixture(scope="module")
def gpu():
    from refspec.gpu import GpuBackend

    return GpuBackend(poison=0xFF)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp_dir = str(tmp_path_factory.mktemp("gpu-models"))
    return lambda arch: tiny_model(arch, tmp_dir)


def passes(tf: Transformer, ids: list[int], chunks: list[int]) -> list[np.ndarray]:
    """Logits of the prompt `ids` fed in passes of the given sizes, each brought to the host."""
    cache = tf.new_cache(len(ids))
    out, pos = [], 0
    for size in chunks:
        out.append(tf.be.to_host(tf.forward(cache, ids[pos : pos + size], pos)))
        pos += size
    return out


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_tiny_model_logits_gpu_equal_cpu(models, gpu, arch):
    model = models(arch)
    ids = list(np.random.default_rng(1).integers(0, model.config.n_vocab, 300))
    chunks = [64, 64, 64, 64, 20, 1, 16, 7]  # prompt-sized passes, one step, verification-sized passes
    cpu_logits = passes(Transformer(model, CpuBackend()), ids, chunks)
    gpu_logits = passes(Transformer(model, gpu), ids, chunks)
    for i, (c, g) in enumerate(zip(cpu_logits, gpu_logits)):
        assert_bits_equal(g, c, f"{arch}: logits of pass {i} ({chunks[i]} rows)")


@pytest.mark.parametrize("arch", sorted(SHAPES))
@settings(max_examples=6)
@given(data=st.data())
def test_gpu_rows_in_one_pass_equal_single_row_passes(models, gpu, arch, data):
    model = models(arch)
    tf = Transformer(model, gpu)
    ids = data.draw(st.lists(st.integers(0, model.config.n_vocab - 1), min_size=2, max_size=40))
    split = data.draw(st.integers(1, len(ids) - 1))
    batched = passes(tf, ids, [split, len(ids) - split])[1]  # [R, V]
    single = passes(tf, ids, [1] * len(ids))
    for pos in range(split, len(ids)):
        assert_bits_equal(single[pos][0], batched[pos - split], f"{arch}: logits at position {pos}")


@pytest.mark.slow
def test_default_model_logits_gpu_equal_cpu(default_model_path, gpu):
    model = load(default_model_path, log=lambda message: None)
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 11173, 30, 2, 198, 1, 4093]  # a chat-shaped prompt's ids
    ids = [i % model.config.n_vocab for i in ids]
    chunks = [len(ids) - 3, 1, 2]
    cpu_logits = passes(Transformer(model, CpuBackend()), ids, chunks)
    gpu_logits = passes(Transformer(model, gpu), ids, chunks)
    for i, (c, g) in enumerate(zip(cpu_logits, gpu_logits)):
        assert_bits_equal(g, c, f"default model: logits of pass {i} ({chunks[i]} rows)")
