"""refspec against llama.cpp itself (llama-cpp-python, CPU) on synthetic models of both vocabulary kinds:
SentencePiece (``tokenizer.ggml.model = llama``) and byte-level BPE. Tokenization must give the same ids on any
text; greedy decoding the same ids wherever the two engines' logits cannot disagree on the argmax.

llama-cpp-python comes with the ``llamacpp`` extra (CI installs it); without it these tests skip, except under
``CI=true``, where they must run.
"""
import os

import gguf
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_vocab_files import vocab_dir
from refspec.backends import make_backend
from refspec.forward import Transformer
from refspec.generate import generate
from refspec.gguf_model import load, read_metadata
from refspec.synthetic import write_model
from refspec.tokenizer import _PRE_TOKENIZERS, Tokenizer

if os.environ.get("CI") == "true":
    import llama_cpp
else:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[llamacpp]')")

VOCABS = ("spm", "bpe")
N_PREDICT = 32
# Text the synthetic vocabularies cover in every way: merged pieces, single characters, runs of spaces, byte
# fallback (é, 世界, 😀), the special tokens' text.
PIECES = ["the", " the", "and", " and", "is", "in", "of", "to", "ab", "Hello", " ", "  ", "\n", "\t", "é", "世界",
          "😀", "!", "?", ".", "'s", "3", "42", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "\u00a0", "\u3000"]
texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=12).map("".join)


@pytest.fixture(scope="module", params=VOCABS)
def pair(request, tmp_path_factory):
    """(vocabulary kind, model path, refspec model, refspec tokenizer, llama.cpp model) on one synthetic file."""
    path = write_model(tmp_path_factory.mktemp(request.param) / "model.gguf", vocab=request.param, n_layer=2,
                       n_embd=64, n_ff=128, seed=3)
    model = load(path)
    # An F32 KV cache: llama.cpp's default F16 one rounds keys and values (logits NMSE ~2e-4 against refspec's
    # float32 cache); with F32 most rows' logits agree to NMSE ~4e-15 (see test_greedy_ids_equal_llama_cpp).
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return request.param, path, model, Tokenizer.from_metadata(model.metadata), llm


@given(text=texts, parse_special=st.booleans())
def test_tokenization_equals_llama_cpp(pair, text, parse_special):
    _, _, _, tok, llm = pair
    theirs = llm.tokenize(text.encode(), add_bos=True, special=parse_special)
    assert tok.encode(text, parse_special=parse_special) == theirs


@pytest.mark.parametrize("prompt", ["the cat and the hat", "Hello world!\n", "é 世界 is in 42"])
def test_greedy_ids_equal_llama_cpp(pair, prompt):
    """refspec decodes greedily; llama.cpp computes logits for the same tokens (prompt + refspec's ids). Each
    refspec choice must be llama.cpp's argmax too, unless the two runs' logits differ enough to swap the top two:
    refspec's margin between its first and second choice is under twice the largest logit difference of that
    row; and such near-ties must stay rare. The logits must agree as two runs of one model do: most rows to NMSE
    ~1e-14 (summation order), some to ~1e-4, where a last-bit difference flipped an int8 of a row's quantized
    activations (llama.cpp's AVX quantizer scales by 127/amax and rounds ties to even; ggml's reference
    quantizer, which refspec follows, by 1/(amax/127), ties away from zero)."""
    kind, _, model, tok, llm = pair
    prompt_ids = tok.encode(prompt)
    ours = generate(Transformer(model, make_backend("cpu")), prompt_ids, N_PREDICT, keep_logits=True)
    llm.reset()
    llm.eval(prompt_ids + ours.ids[:-1])
    theirs = np.asarray(llm.scores[len(prompt_ids) - 1:llm.n_tokens], dtype=np.float32)  # [N_PREDICT, V]
    mine = np.stack(ours.logits)
    assert theirs.shape == mine.shape
    nmse = float(np.sum((mine.astype(np.float64) - theirs) ** 2) / np.sum(mine.astype(np.float64) ** 2))
    assert nmse < 1e-3, f"{kind}: logits NMSE {nmse:.3g} against llama.cpp"
    near_ties = 0
    for step, (token, row, other) in enumerate(zip(ours.ids, mine, theirs)):
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] < 2 * np.max(np.abs(row - other)):
            near_ties += 1
            continue
        assert int(np.argmax(other)) == token, f"{kind}: step {step}: llama.cpp chose {np.argmax(other)}, refspec {token}"
    print(f"{kind} {prompt!r}: {N_PREDICT - near_ties} of {N_PREDICT} steps checked, NMSE {nmse:.2g}")
    assert near_ties <= N_PREDICT // 4, f"{kind}: {near_ties} of {N_PREDICT} steps were near-ties"


# --- every pre-tokenizer, on a real vocabulary ---------------------------------------------------------------------
# One tokenizer.ggml.pre name for each distinct (regexes, ignore_merges, add_bos) that refspec knows, written into
# a slice of GPT-2's vocabulary from llama.cpp's test files: its first 8000 tokens and the 7744 merges that make
# them (GPT-2's token 256 + i is merge i), so pieces merge across every kind of boundary a regex can draw.
PRE_NAMES = sorted({(p.regexes, p.ignore_merges, p.add_bos): name for name, p in _PRE_TOKENIZERS.items()}.values())
SLICE = 8000
# Text that crosses every boundary the regexes draw: cases, contractions, digit runs, punctuation, each kind of
# space (U+2028 and U+3000 sit inside deepseek's character ranges), CJK, Hangul, kana, combining marks, emoji.
ALPHABET = list("aAbBzZ éÉüÜßİǅʼ'sSdDtTlLvVrReEmM 0123456789½²٣ .,!?;:…。，、।۔،()[]{}<>$+=^~|`@#%&*/\\-_\"\n\r\t"
                "\u00a0\u0085\u1680\u2000\u2028\u205f\u3000\u0301\u0300\u200b\ufeff 한국어世界日本語ひらカタ가힣ㄱㄅ 😀👍🏽")
WORDS = PIECES + ["I'M", "you're", "1234567", " \u2028", " \u3000", "\u3000 ", " \u00a0", " \u0085", "  \n"]
mixed_text = st.lists(st.one_of(st.sampled_from(ALPHABET), st.sampled_from(WORDS)), max_size=40).map("".join)


@pytest.fixture(scope="module")
def pre_tokenizers(tmp_path_factory):
    """pre name -> (refspec tokenizer, llama.cpp vocabulary), built on first use."""
    source = read_metadata(vocab_dir() / "ggml-vocab-gpt-2.gguf")
    tokens = source["tokenizer.ggml.tokens"][:SLICE] + ["<|endoftext|>"]
    built = {}

    def get(pre: str):
        if pre not in built:
            path = tmp_path_factory.mktemp("pre") / f"{pre}.gguf"
            writer = gguf.GGUFWriter(str(path), "gpt2")
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(pre)
            writer.add_token_list(tokens)
            writer.add_token_types([1] * SLICE + [3])
            writer.add_token_merges(source["tokenizer.ggml.merges"][:SLICE - 256])
            writer.add_bos_token_id(SLICE)
            writer.add_eos_token_id(SLICE)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            writer.close()
            built[pre] = (Tokenizer.from_metadata(read_metadata(path)),
                          llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False))
        return built[pre]

    return get


@pytest.mark.parametrize("pre", PRE_NAMES)
@given(text=mixed_text)
def test_pre_tokenizer_equals_llama_cpp(pre_tokenizers, pre, text):
    """Ids with BOS as the vocabulary decides (the name's add_bos default: the file has no add_bos_token key)."""
    tok, llm = pre_tokenizers(pre)
    assert tok.encode(text, parse_special=False) == llm.tokenize(text.encode(), add_bos=True, special=False)
