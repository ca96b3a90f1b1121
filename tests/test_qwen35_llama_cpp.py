"""refspec's qwen35 (Gated DeltaNet + gated attention, with an MTP block in the file) against llama.cpp itself
(llama-cpp-python, CPU) on a synthetic model: the same greedy ids wherever the two engines' logits cannot
disagree on the argmax, and logits that agree as two readings of one model do. The model has twice as many
DeltaNet value heads as key heads, partial rotary and gated attention, so a wrong reading of the head tiling,
the query/gate layout or the RoPE sections would show as an NMSE near 1, not 1e-15.

llama-cpp-python comes with the ``llamacpp`` extra (CI installs it); without it these tests skip, except under
``CI=true``, where they must run.
"""
import os

import numpy as np
import pytest

from refspec.backends import CpuBackend
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gguf_model import load
from refspec.synthetic import write_model

if os.environ.get("CI") == "true":
    import llama_cpp
else:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llamacpp]')")

N_PREDICT = 24
SHAPE = dict(arch="qwen35", n_layer=4, n_embd=128, n_ff=256, n_head=4, n_head_kv=2, head_dim=32, n_ctx=256,
             n_nextn=1, ssm_d_state=32, ssm_n_k_heads=2, ssm_n_v_heads=4)  # layers 0-2 DeltaNet, 3 attention
PROMPTS = {"repeats": [5, 60, 70, 80, 100, 5, 60, 70], "one token": [42], "bytes": list(range(70, 100)),
           "mixed": [1, 200, 3, 150, 7, 7, 7, 280, 13, 90, 11]}


@pytest.fixture(scope="module", params=[3, 8])
def pair(request, tmp_path_factory):
    """(refspec Transformer, llama.cpp model) on one synthetic qwen35 file (seeds 3 and 8)."""
    path = write_model(tmp_path_factory.mktemp("q35") / "q35.gguf", seed=request.param, **SHAPE)
    # An F32 KV cache: llama.cpp's default F16 one rounds keys and values (refspec's cache is float32).
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return Transformer(load(path, log=lambda message: None), CpuBackend()), llm


def nmse(mine: np.ndarray, theirs: np.ndarray) -> float:
    mine = mine.astype(np.float64)
    return float(np.sum((mine - theirs) ** 2) / np.sum(mine**2))


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_qwen35_greedy_ids_and_logits_equal_llama_cpp(pair, prompt):
    """refspec decodes greedily; llama.cpp computes logits for the same tokens (prompt + refspec's ids). Each
    refspec choice must be llama.cpp's argmax too, unless the two runs' logits differ enough to swap the top two
    (refspec's top-2 margin under twice the row's largest logit difference), and such near-ties stay rare. Most
    rows agree to NMSE ~1e-14 (summation order); once a last-bit difference flips an int8 of a quantized
    activation (llama.cpp's AVX quantizer rounds 127/amax ties to even, ggml's reference one, which refspec
    follows, away from zero), the DeltaNet state carries it on, and later rows agree to ~1e-4."""
    tf, llm = pair
    prompt_ids = PROMPTS[prompt]
    ours = generate(tf, prompt_ids, N_PREDICT, keep_logits=True)
    llm.reset()
    llm.eval(prompt_ids + ours.ids[:-1])
    theirs = np.asarray(llm.scores[len(prompt_ids) - 1 : llm.n_tokens], dtype=np.float32)  # [N_PREDICT, V]
    mine = np.stack(ours.logits)
    assert theirs.shape == mine.shape
    rows = [nmse(a, b) for a, b in zip(mine, theirs)]
    assert nmse(mine, theirs) < 1e-3, f"logits NMSE {nmse(mine, theirs):.3g} against llama.cpp"
    assert rows[0] < 1e-10, f"the prompt's row: NMSE {rows[0]:.3g}"  # before any state could drift
    near_ties, agree = 0, 0
    for step, (token, row, other) in enumerate(zip(ours.ids, mine, theirs)):
        agree += int(np.argmax(other)) == token
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] < 2 * np.max(np.abs(row - other)):
            near_ties += 1
            continue
        assert int(np.argmax(other)) == token, f"step {step}: llama.cpp chose {np.argmax(other)}, refspec {token}"
    print(f"{prompt}: argmax agrees on {agree} of {N_PREDICT} steps, {N_PREDICT - near_ties} checked, "
          f"NMSE {nmse(mine, theirs):.2g} (median row {np.median(rows):.2g}, max row {max(rows):.2g})")
    assert near_ties <= N_PREDICT // 4, f"{near_ties} of {N_PREDICT} steps were near-ties"


# ------------------------------------------------------------------------------------------- the MTP block
class LlamaCppMtp:
    """llama.cpp's MTP drafting, driven as its speculative driver does (common/speculative.cpp): a target
    context that outputs the final-normed hidden row of every token, and an MTP context (ctx_type MTP) fed
    token q with the target's hidden row of q-1. The staging calls (llama_set_embeddings_nextn,
    llama_get_embeddings_nextn_ith) are C++ symbols of llama-ext.h that llama-cpp-python does not bind."""

    def __init__(self, path, n_embd: int, n_vocab: int):
        import ctypes

        from llama_cpp.llama_cpp import _lib as lib

        self.ct, self.lib, self.n_embd, self.n_vocab = ctypes, lib, n_embd, n_vocab
        self.embd_t = type("llama_embd", (ctypes.Structure,), {"_fields_": [
            ("data", ctypes.POINTER(ctypes.c_float)), ("n_rows", ctypes.c_size_t), ("n_embd", ctypes.c_size_t)]})
        p, i32, f32p = ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_float)
        self.set_nextn = self._fn("_Z26llama_set_embeddings_nextnP13llama_contextbb", [p, ctypes.c_bool, ctypes.c_bool], None)
        self.nextn_ith = self._fn("_Z30llama_get_embeddings_nextn_ithP13llama_contexti", [p, i32], f32p)
        self.batch_init = self._fn("llama_batch_ext_init", [p], p)
        self.batch_free = self._fn("llama_batch_ext_free", [p], None)
        self.add_token = self._fn("llama_batch_ext_add_token", [p, i32, i32], i32)
        self.set_pos = self._fn("llama_batch_ext_set_pos", [p, i32, ctypes.POINTER(i32)], ctypes.c_bool)
        self.set_embd = self._fn("llama_batch_ext_set_embd_token", [p, i32, self.embd_t], ctypes.c_bool)
        self.set_output = self._fn("llama_batch_ext_set_output_logits", [p, i32, ctypes.c_bool], ctypes.c_bool)
        self.process_fn = self._fn("llama_process", [p, ctypes.c_int, p], i32)
        self.logits_ith = self._fn("llama_get_logits_ith", [p, i32], f32p)
        params = llama_cpp.llama_model_default_params()
        params.load_mtp = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        self.target, self.mtp = self._context(False), self._context(True)
        self.set_nextn(self.target, True, False)
        self.set_nextn(self.mtp, True, True)

    def _fn(self, name, argtypes, restype):
        f = getattr(self.lib, name)
        f.argtypes, f.restype = argtypes, restype
        return f

    def _context(self, mtp: bool):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = 256
        params.n_threads = params.n_threads_batch = 2
        params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # refspec's attention order, nearly
        if mtp:
            params.ctx_type = llama_cpp.LLAMA_CONTEXT_TYPE_MTP
        return llama_cpp.llama_init_from_model(self.model, params)

    def process(self, ctx, tokens, pos0, hidden=None, last_output=True) -> None:
        batch = self.batch_init(ctx)
        rows = [] if hidden is None else [np.ascontiguousarray(h, np.float32) for h in hidden]
        for j, token in enumerate(tokens):
            idx = self.add_token(batch, 0, int(token))
            self.set_pos(batch, idx, (self.ct.c_int32 * 1)(pos0 + j))
            if rows:
                data = rows[j].ctypes.data_as(self.ct.POINTER(self.ct.c_float))
                assert self.set_embd(batch, idx, self.embd_t(data, 1, self.n_embd))
            self.set_output(batch, idx, last_output and j == len(tokens) - 1 or ctx == self.target)
        assert self.process_fn(ctx, llama_cpp.LLAMA_PROCESS_TYPE_DECODE, batch) == 0
        self.batch_free(batch)

    def row(self, pointer, n: int) -> np.ndarray:
        return np.ctypeslib.as_array(pointer, (n,)).copy()

    def drafts(self, prompt: list[int], k: int):
        """llama.cpp's k recursive MTP steps after `prompt`: [(logits [V], hidden [E])] per step. The catch-up
        rows and each draft step go in separate batches, as its driver does (with masked output, a batch of
        several rows returns the first row's hidden state, not the output row's)."""
        self.process(self.target, prompt, 0)
        h = np.stack([self.row(self.nextn_ith(self.target, i), self.n_embd) for i in range(len(prompt))])
        before = np.vstack([np.zeros((1, self.n_embd), np.float32), h[:-1]])
        if len(prompt) > 1:
            self.process(self.mtp, prompt[:-1], 0, before[:-1], last_output=False)
        steps, token, pos, h_row = [], prompt[-1], len(prompt) - 1, before[-1]
        for _ in range(k):
            self.process(self.mtp, [token], pos, [h_row])
            logits = self.row(self.logits_ith(self.mtp, -1), self.n_vocab)
            h_row = self.row(self.nextn_ith(self.mtp, -1), self.n_embd)
            steps.append((logits, h_row))
            token, pos = int(np.argmax(logits)), pos + 1
        return steps

    def close(self) -> None:
        for ctx in (self.target, self.mtp):
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(self.model)


def refspec_mtp_steps(tf, prompt: list[int], k: int):
    """The same k steps in refspec: the model over the prompt for its hidden rows, the MTP block over every
    prompt position (the drafter's catch-up), then the recursion. tests/test_qwen35.py checks that MtpDrafter
    proposes exactly these tokens."""
    cache = tf.new_cache(len(prompt) + k)
    _, hidden = tf.forward(cache, prompt, 0, hidden=True)
    before = np.vstack([np.zeros((1, tf.config.n_embd), np.float32), hidden[:-1]])
    logits, h = tf.forward(cache, prompt, 0, mtp_from=before)
    steps = [(logits[0], h[0])]
    for i in range(1, k):
        logits, h = tf.forward(cache, [int(np.argmax(logits[0]))], len(prompt) - 1 + i, mtp_from=h)
        steps.append((logits[0], h[0]))
    return steps


@pytest.mark.parametrize("seed", [3, 8])
def test_mtp_drafts_equal_llama_cpp(tmp_path, seed):
    """Three recursive MTP steps (llama.cpp's default draft length) after each prompt: the same draft tokens
    and logits that agree to summation order (NMSE < 1e-10; measured ~6e-15)."""
    path = write_model(tmp_path / "q35.gguf", seed=seed, **SHAPE)
    tf = Transformer(load(path, log=lambda message: None), CpuBackend())
    for name, prompt in sorted(PROMPTS.items()):
        theirs = LlamaCppMtp(path, tf.config.n_embd, tf.config.n_vocab)
        try:
            steps = theirs.drafts(prompt, 3)
        finally:
            theirs.close()
        mine = refspec_mtp_steps(tf, prompt, 3)
        for i, ((logits, h), (other, other_h)) in enumerate(zip(mine, steps)):
            assert nmse(logits, other) < 1e-10, f"{name}: MTP step {i}: logits NMSE {nmse(logits, other):.3g}"
            assert nmse(h, other_h) < 1e-10, f"{name}: MTP step {i}: hidden NMSE {nmse(h, other_h):.3g}"
            assert int(np.argmax(logits)) == int(np.argmax(other)), f"{name}: MTP step {i}: draft tokens differ"
        worst = max(nmse(a, b) for (a, _), (b, _) in zip(mine, steps))
        print(f"seed {seed} {name}: 3 MTP steps, same drafts, logits NMSE <= {worst:.2g}")
