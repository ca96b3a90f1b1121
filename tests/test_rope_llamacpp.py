"""RoPE scaling against llama.cpp (llama-cpp-python on the CPU): synthetic files of every kind refspec
reads (plain, linear, YaRN, Llama 3's rope_freqs, an attention factor) decode to the same greedy ids, and the
logits agree far more closely than they would if refspec ignored the scaling."""
import dataclasses

import numpy as np
import pytest

from refspec.backends import CpuBackend
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gguf_model import load
from refspec.model import RopeScaling
from refspec.synthetic import write_model

llama_cpp = pytest.importorskip("llama_cpp")

SHAPE = dict(n_layer=2, n_embd=128, n_ff=256, n_head=4, n_head_kv=2, n_ctx=512, seed=5)
KINDS = {  # name: write_model arguments
    "plain": dict(arch="llama"),
    "linear": dict(arch="llama", rope_scaling="linear", rope_factor=4.0),
    "yarn": dict(arch="llama", rope_scaling="yarn", rope_factor=4.0, rope_orig_ctx=64),
    "llama3": dict(arch="llama", rope_scaling="llama3", rope_factor=8.0, rope_orig_ctx=64),
    "qwen2 yarn": dict(arch="qwen2", rope_scaling="yarn", rope_factor=4.0, rope_orig_ctx=64),
    "qwen3 linear+attn": dict(arch="qwen3", rope_scaling="linear", rope_factor=2.0, rope_attn_factor=1.25,
                              head_dim=32),  # llama.cpp's qwen3 rotates whole heads only
}
N_PROMPT, N_PREDICT = 160, 16
NMSE_MAX = 1e-3  # llama.cpp's own numerics (f32 RoPE angles, double RMSNorm sums, other sum orders)


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).sum() / (b**2).sum())


def llama_cpp_greedy(path, prompt: list[int], n_predict: int) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy ids, one token per step, and the logits each step chose from. F32 KV cache (the
    default F16 cache rounds keys and values), two threads."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=N_PROMPT + n_predict, n_batch=512, logits_all=True,
                          n_threads=2, type_k=0, type_v=0, verbose=False)
    llm.eval(prompt)
    ids, rows = [], []
    for _ in range(n_predict):
        rows.append(np.array(llm.scores[llm.n_tokens - 1], np.float32))
        ids.append(int(np.argmax(rows[-1])))
        llm.eval([ids[-1]])
    return ids, np.array(rows)


def refspec_greedy(model, prompt: list[int], n_predict: int) -> tuple[list[int], np.ndarray]:
    result = generate(Transformer(model, CpuBackend()), prompt, n_predict, keep_logits=True)
    return result.ids, np.array(result.logits)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_scaled_rope_matches_llama_cpp(tmp_path, kind):
    path = write_model(tmp_path / "m.gguf", **{**SHAPE, **KINDS[kind]})
    model = load(path, log=lambda message: None)
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, model.config.n_vocab, N_PROMPT)]
    ours, our_logits = refspec_greedy(model, prompt, N_PREDICT)
    theirs, their_logits = llama_cpp_greedy(path, prompt, N_PREDICT)
    error = nmse(our_logits, their_logits)
    assert ours == theirs, f"{kind}: greedy ids differ (logit NMSE {error:.3g})"
    assert error < NMSE_MAX, f"{kind}: logit NMSE {error:.3g}"
    if kind != "plain":  # the scaling matters: without it refspec would be far from llama.cpp
        plain = dataclasses.replace(model, config=dataclasses.replace(model.config, rope_scaling=RopeScaling()))
        unscaled = generate(Transformer(plain, CpuBackend()), prompt + ours[:-1], 1, keep_logits=True)
        ignored = nmse(unscaled.logits[0], their_logits[-1])
        assert ignored > 30 * max(error, nmse(our_logits[-1], their_logits[-1])), (kind, error, ignored)
    print(f"{kind}: {N_PREDICT}/{N_PREDICT} ids equal, logit NMSE {error:.3g}")
