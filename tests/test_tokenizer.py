"""refspec.tokenizer: llama.cpp's byte-level BPE tokenization, on SmolLM2's vocabulary and on a small synthetic one.

Expected ids and pieces below were worked out by hand from llama.cpp's rules (src/llama-vocab.cpp, src/unicode.cpp)
and the vocabularies, not recorded from refspec's own output.
"""
import time

import gguf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refspec.errors import TokenizerError
from refspec.tokenizer import Tokenizer

# --- the default model's tokenizer (SmolLM2-135M-Instruct) ----------------------------------------------------


def read_tokenizer_metadata(path) -> dict:
    """The GGUF's ``tokenizer.*`` keys as plain Python values."""
    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


@pytest.fixture(scope="module")
def smol_metadata(default_model_path):
    return read_tokenizer_metadata(default_model_path)


@pytest.fixture(scope="module")
def smol(smol_metadata):
    return Tokenizer.from_metadata(smol_metadata)


# --- a synthetic byte-level vocabulary -------------------------------------------------------------------------


def gpt2_byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode, written out independently of refspec's copy."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE = gpt2_byte_alphabet()
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2: control
BYTE_BASE = len(SPECIALS)  # byte b is token BYTE_BASE + b
MERGED = ["Ġt", "he", "Ġthe", "ab", "bc", "12", "123", "45", "abc"]  # "abc" has no merge that makes it
MERGES = ["Ġ t", "h e", "Ġt he", "a b", "b c", "1 2", "12 3", "4 5"]
THINK = "<think>"  # user-defined
UNUSED = "[PAD999]"


def synthetic_metadata(**overrides) -> dict:
    tokens = SPECIALS + BYTE + MERGED + [THINK, UNUSED]
    types = [3] * len(SPECIALS) + [1] * (256 + len(MERGED)) + [4, 5]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


@pytest.fixture(scope="module")
def synth():
    return Tokenizer.from_metadata(synthetic_metadata())


def tid(text: str) -> int:
    return synthetic_metadata()["tokenizer.ggml.tokens"].index(text)


def byte_ids(text: str) -> list[int]:
    return [BYTE_BASE + b for b in text.encode()]


# --- round trips -------------------------------------------------------------------------------------------------

AWKWARD = ["😀", "👨‍👩‍👧", "e\u0301", "\u0300", "世界", "한국어", " ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0",
           "\x00", "\x1f", "\x85", "\u2028", "'s", "'LL", "1234567", "٣", "\ufeff", "<|im_start|>", "<think>"]
texts = st.lists(st.one_of(st.text(), st.sampled_from(AWKWARD))).map("".join)


def without_bytes(s: str, missing) -> str:
    return bytes(b for b in s.encode() if b not in missing).decode("utf-8", "replace")


@given(texts)
def test_round_trip_default_model(smol, s):
    """Exact, except for the bytes SmolLM2's vocabulary has no token for: llama.cpp drops those."""
    assert smol.decode(smol.encode(s, add_bos=False)) == without_bytes(s, smol.missing_bytes)


def test_default_model_missing_bytes(smol):
    assert smol.missing_bytes == {0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)}
    assert smol.encode("a\x04b") == smol.encode("a") + smol.encode("b")  # "\x04" is a piece of its own, lost
    assert smol.decode(smol.encode("\U00040000")) == "\ufffd" * 3  # lead byte 0xF1 lost, 3 stray continuations


@given(texts)
def test_round_trip_synthetic(synth, s):
    assert synth.missing_bytes == set()
    assert synth.decode(synth.encode(s)) == s


@given(texts)
def test_stream_equals_decode_default_model(smol, s):
    ids = smol.encode(s)
    stream = smol.stream()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == smol.decode(ids)


@given(st.lists(st.integers(0, 255), max_size=40))
def test_stream_equals_decode_on_any_bytes(synth, data):
    """Byte tokens one by one: characters split across tokens, and invalid UTF-8, come out as decode() has them."""
    ids = [BYTE_BASE + b for b in data]
    stream = synth.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == synth.decode(ids) == bytes(data).decode("utf-8", "replace")


def test_stream_holds_back_split_characters(synth):
    ids = byte_ids("é😀")  # 2 + 4 bytes, one token each
    stream = synth.stream()
    assert [stream.push(i) for i in ids] == ["", "é", "", "", "", "😀"]
    assert stream.flush() == ""
    stream.push(ids[2])
    assert stream.flush() == "\ufffd"  # an unfinished character at the end


# --- golden encodings of SmolLM2 ---------------------------------------------------------------------------------


def test_smollm2_golden_ids(smol):
    # pre 'smollm' isolates each digit, then gpt-2's regex: 'Hello' ' world' '!' ' ' '1' '2' '3'
    vocab = {smol.token_text(i): i for i in range(smol.n_vocab)}
    expected = [vocab[t] for t in ["Hello", "Ġworld", "!", "Ġ", "1", "2", "3"]]
    assert expected == [19556, 905, 17, 216, 33, 34, 35]
    assert smol.encode("Hello world! 123") == expected
    # gpt-2's \s+(?!\S) leaves the last space of a run to the next word
    assert smol.encode("  multiple   spaces") == [vocab[t] for t in ["Ġ", "Ġmultiple", "ĠĠ", "Ġspaces"]]
    assert smol.encode("2024") == [vocab[d] for d in "2024"]
    assert smol.encode("\n") == [vocab["Ċ"]]


def test_smollm2_pre_tokenizer(smol):
    assert smol.pre == "smollm"
    assert smol.pre_tokenize("Hello world! 123") == ["Hello", " world", "!", " ", "1", "2", "3"]
    assert smol.pre_tokenize("I'M x  \ny") == ["I", "'", "M", " x", "  ", "\n", "y"]  # contractions are lower case only


def test_smollm2_special_tokens(smol):
    vocab = {smol.token_text(i): i for i in range(smol.n_vocab)}
    ids = smol.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids == [1, vocab["user"], vocab["Ċ"], vocab["hi"], 2]
    assert smol.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert smol.decode(ids, skip_special=True) == "user\nhi"
    as_text = smol.encode("<|im_start|>", parse_special=False)
    assert 1 not in as_text and smol.decode(as_text) == "<|im_start|>"


def test_smollm2_bos_eos_eog(smol, smol_metadata):
    assert (smol.n_vocab, smol.bos_id, smol.eos_id) == (49152, 1, 2)
    assert smol.add_bos is False  # tokenizer.ggml.add_bos_token = false in the file
    assert smol.encode("hi")[0] != 1
    # <|endoftext|> and <|im_end|> by text (and eos), <reponame> as llama.cpp's FIM-repo token
    assert smol.eog_ids == {0, 2, 4}
    with_bos = Tokenizer.from_metadata({**smol_metadata, "tokenizer.ggml.add_bos_token": True})
    assert with_bos.encode("hi") == [1] + smol.encode("hi")


def test_smollm2_chat_template(smol):
    prompt = smol.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert smol.apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


def test_smollm2_builds_fast(smol_metadata):
    start = time.perf_counter()
    Tokenizer.from_metadata(smol_metadata)
    assert time.perf_counter() - start < 1.0


# --- BPE and pre-tokenizer rules, on the synthetic vocabulary --------------------------------------------------


def test_merges_apply_lowest_rank_first(synth):
    assert synth.encode(" the") == [tid("Ġthe")]
    assert synth.encode("abc") == [tid("ab"), BYTE_BASE + ord("c")]  # 'a b' outranks 'b c'
    swapped = Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.ggml.merges": ["b c", "a b"]}))
    assert swapped.encode("abc") == [BYTE_BASE + ord("a"), tid("bc")]


def test_llama3_ignores_merges_for_whole_tokens():
    llama3 = Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.ggml.pre": "llama-bpe"}))
    assert llama3.encode("abc") == [tid("abc")]


@pytest.mark.parametrize("pre, text, pieces", [
    ("gpt-2", "12345 I'M", ["12345", " I", "'", "M"]),
    ("llama-bpe", "12345 I'M", ["123", "45", " I", "'M"]),
    ("qwen2", "12345 I'M", ["1", "2", "3", "4", "5", " I", "'M"]),
    ("smollm", "12345 I'M", ["1", "2", "3", "4", "5", " I", "'", "M"]),
    ("default", "a+b=3.14159", ["a", "+", "b", "=", "3", ".", "141", "59"]),
    ("llama-bpe", "a\n\n  b", ["a", "\n\n", " ", " b"]),
    ("qwen2", "x!!\n\ny", ["x", "!!\n\n", "y"]),
    # llama.cpp's hand-written splitters: digits in threes from the end of a run (the text before a run is glued
    # to its first group, then split off by the next regex); Han apart from other letters, marks apart
    ("tiny_aya", "ab1234cd 12345678", ["ab", "1", "234", "cd", " ", "12", "345", "678"]),
    ("afmoe", "x12345 世界ab", ["x", "12", "345", " ", "世界", "ab"]),
    ("kimi-k2", "I'M 世界ab cafe\u0301 12345", ["I'M", " ", "世界", "ab", " cafe", "\u0301", " ", "123", "45"]),
    ("superbpe", "a1234567 89", ["a", "1", "234", "567", " ", "89"]),
])
def test_pre_tokenizers(pre, text, pieces):
    tokenizer = Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.ggml.pre": pre}))
    assert tokenizer.pre_tokenize(text) == pieces


def test_pre_tokenizer_decides_merges():
    """'12' '3' merge inside one piece; llama-3 keeps 123 together, qwen2 splits every digit."""
    gpt2 = Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.ggml.pre": "gpt-2"}))
    qwen2 = Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.ggml.pre": "qwen2"}))
    assert gpt2.encode("12345") == [tid("123"), tid("45")]
    assert qwen2.encode("12345") == byte_ids("12345")


def test_special_and_user_defined_tokens(synth):
    assert synth.encode("<|im_start|>the<|im_end|>") == [1, BYTE_BASE + ord("t"), tid("he"), 2]
    assert synth.encode("<|im_start|>", parse_special=False) == byte_ids("<|im_start|>")
    # user-defined tokens are split out even without parse_special, and always print
    assert synth.encode("a<think>b", parse_special=False) == [BYTE_BASE + ord("a"), tid(THINK), BYTE_BASE + ord("b")]
    assert synth.decode([tid(THINK), 1], skip_special=True) == THINK
    assert synth.decode([tid(UNUSED)]) == ""  # llama.cpp prints nothing for unused tokens
    assert synth.token_text(tid("Ġthe")) == "Ġthe" and synth.token_bytes(tid("Ġthe")) == b" the"


def test_longest_special_token_wins():
    metadata = synthetic_metadata()
    tokens = metadata["tokenizer.ggml.tokens"] + ["<a>", "<a><b>"]
    types = metadata["tokenizer.ggml.token_type"] + [3, 3]
    tokenizer = Tokenizer.from_metadata(synthetic_metadata(**{
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}))
    assert tokenizer.encode("<a><b><a>") == [len(tokens) - 1, len(tokens) - 2]


# --- BOS, EOS, EOG -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [True, False])
def test_bos_follows_add_bos_token(flag):
    tokenizer = Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.ggml.add_bos_token": flag}))
    assert tokenizer.add_bos is flag
    assert tokenizer.encode("hi") == [0] * flag + byte_ids("hi")
    assert tokenizer.encode("hi", add_bos=not flag) == [0] * (not flag) + byte_ids("hi")
    assert tokenizer.encode("", add_bos=True) == [0]


@pytest.mark.parametrize("pre, default", [("gpt-2", False), ("smollm", False), ("qwen2", False), ("llama-bpe", True)])
def test_add_bos_default_when_key_absent(pre, default):
    """llama.cpp: BPE vocabularies default to no BOS, except the llama-3 family."""
    metadata = synthetic_metadata(**{"tokenizer.ggml.pre": pre, "tokenizer.ggml.add_bos_token": None})
    assert Tokenizer.from_metadata(metadata).add_bos is default


def test_eog_ids():
    metadata = synthetic_metadata()
    tokens = metadata["tokenizer.ggml.tokens"] + ["<|eot_id|>", "<|fim_pad|>", "<|fim_prefix|>"]
    types = metadata["tokenizer.ggml.token_type"] + [1, 1, 1]  # marked normal: llama.cpp overrides by text
    n = len(tokens)
    tokenizer = Tokenizer.from_metadata(synthetic_metadata(**{
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.eom_token_id": tid("he")}))
    assert tokenizer.eog_ids == {0, 2, tid("he"), n - 3, n - 2}  # text, eos, eom key, <|eot_id|>, FIM pad
    assert tokenizer.encode("<|eot_id|><|fim_prefix|>") == [n - 3, n - 1]  # now control tokens
    assert tokenizer.decode([n - 3], skip_special=True) == ""


# --- errors ------------------------------------------------------------------------------------------------------


def test_unknown_pre_tokenizer():
    with pytest.raises(TokenizerError, match="'not-a-pre'"):
        Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.ggml.pre": "not-a-pre"}))


def test_unsupported_model():
    with pytest.raises(TokenizerError, match="unsupported tokenizer model 'rwkv'"):
        Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.ggml.model": "rwkv"}))


@pytest.mark.parametrize("overrides, message", [
    ({"tokenizer.ggml.merges": None}, "merges is missing"),
    ({"tokenizer.ggml.merges": ["ab"]}, "not two pieces"),
    ({"tokenizer.ggml.merges": ["x y"]}, "merges do not fit"),
    ({"tokenizer.ggml.tokens": SPECIALS + BYTE + ["a"]}, "duplicate token"),
    ({"tokenizer.ggml.bos_token_id": 10**6}, "outside the vocabulary"),
    ({"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": None}, "bos_token_id is not set"),
])
def test_bad_metadata(overrides, message):
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_metadata(synthetic_metadata(**overrides))


def test_bad_inputs(synth):
    with pytest.raises(TokenizerError, match="surrogate"):
        synth.encode("a\ud800")
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        synth.decode([synth.n_vocab])


# --- chat templates ----------------------------------------------------------------------------------------------


def with_template(template):
    return Tokenizer.from_metadata(synthetic_metadata(**{"tokenizer.chat_template": template}))


def test_chatml_fallback(synth):
    assert synth.chat_template is None
    assert synth.apply_chat_template([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_template_environment():
    template = ("{% for m in messages %}{{ m | tojson }}\n{% endfor %}"
                "{% if messages | length > 5 %}{{ raise_exception('too many') }}{% endif %}{{ bos_token }}")
    tokenizer = with_template(template)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "<é&>"}]) == (
        '{"role": "user", "content": "<é&>"}\n<|endoftext|>')
    with pytest.raises(TokenizerError, match="too many"):
        tokenizer.apply_chat_template([{"role": "user", "content": ""}] * 6)


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.system('touch {path}') }}",
    "{{ self.__init__.__globals__.__builtins__.open('{path}', 'w') }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ 'x' * 10**12 }}",
    "{% for %}",
])
def test_malicious_template_is_refused(template, tmp_path):
    path = tmp_path / "pwned"
    messages = [{"role": "user", "content": "hi"}]
    tokenizer = with_template(template.replace("{path}", str(path)))
    with pytest.raises(TokenizerError) as info:
        tokenizer.apply_chat_template(messages)
    assert "\n" not in str(info.value)
    assert not path.exists()
    assert messages == [{"role": "user", "content": "hi"}]


# --- SentencePiece vocabularies (tokenizer.ggml.model = llama) ------------------------------------------------------
# llama.cpp's rules (llm_tokenizer_spm_session): spaces become '▁', a '▁' goes in front of the text and of text after
# a special token, then the adjacent pair whose concatenation is the highest-scoring token merges, again and again;
# a character that is no token becomes its bytes' <0xXX> tokens.

def spm_metadata(pieces: dict[str, float], **overrides) -> dict:
    """<unk>, <s>, </s>, the 256 byte tokens, then ``pieces`` with their scores."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(pieces)
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
        "tokenizer.ggml.scores": [0.0] * 259 + list(pieces.values()),
        "tokenizer.ggml.unknown_token_id": 0,
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


SPM_PIECES = {"▁": -10.0, "a": -11.0, "b": -12.0, "c": -13.0, "t": -14.0, "h": -15.0, "e": -16.0,
              "ab": -2.0, "bc": -1.0, "▁a": -3.0, "▁t": 0.0, "he": -4.0, "▁the": -5.0}


def spm_tokenizer(pieces=SPM_PIECES, **overrides) -> Tokenizer:
    return Tokenizer.from_metadata(spm_metadata(pieces, **overrides))


def spm_ids(tokenizer: Tokenizer, *texts: str) -> list[int]:
    index = {tokenizer.token_text(i): i for i in range(tokenizer.n_vocab)}
    return [index[t] for t in texts]


def test_spm_highest_score_merges_first():
    spm = spm_tokenizer()
    assert spm.encode("abc", add_bos=False) == spm_ids(spm, "▁a", "bc")  # '▁a' (-3) < 'bc' (-1): bc first
    swapped = spm_tokenizer({**SPM_PIECES, "bc": -3.5})  # now 'ab' (-2) first, and '▁ab' is no token
    assert swapped.encode("abc", add_bos=False) == spm_ids(spm, "▁", "ab", "c")
    no_prefix = spm_tokenizer(**{"tokenizer.ggml.add_space_prefix": False})
    assert no_prefix.encode("abc", add_bos=False) == spm_ids(spm, "a", "bc")
    assert spm_tokenizer({**SPM_PIECES, "ab": 1.0}, **{"tokenizer.ggml.add_space_prefix": False}).encode(
        "abc", add_bos=False) == spm_ids(spm, "ab", "c")
    assert spm.encode("the", add_bos=False) == spm_ids(spm, "▁the")  # ▁t, then he, then ▁t he


def test_spm_spaces_bytes_and_special_tokens():
    spm = spm_tokenizer()
    assert spm.add_bos and spm.bos_id == 1 and spm.eos_id == 2  # llama.cpp's defaults for SentencePiece
    assert spm.encode("a  b") == [1] + spm_ids(spm, "▁a", "▁", "▁", "b")
    assert spm.encode("é!", add_bos=False) == spm_ids(spm, "▁", "<0xC3>", "<0xA9>", "<0x21>")
    assert spm.encode("a</s>b", add_bos=False) == spm_ids(spm, "▁a", "</s>", "▁", "b")  # a space after specials
    assert spm.encode("</s>", add_bos=False, parse_special=False) == spm_ids(
        spm, "▁", "<0x3C>", "<0x2F>", "<0x73>", "<0x3E>")
    assert spm.pre_tokenize("a b") == ["▁a▁b"]


def test_spm_decode_takes_off_the_prefix_space():
    spm = spm_tokenizer()
    the = spm_ids(spm, "▁the")
    assert spm.decode(the) == "the"  # llama.cpp's detokenize takes off the space encoding put there
    assert spm.decode(the, continuation=True) == " the"  # generated tokens print as llama.cpp prints them
    assert spm.decode([1] + the) == "<s> the" and spm.decode([1] + the, skip_special=True) == " the"
    assert spm.decode(spm_ids(spm, "<0xC3>", "<0xA9>")) == "é"
    for continuation in (False, True):
        stream = spm.stream(continuation=continuation)
        ids = the + the
        assert "".join(stream.push(i) for i in ids) + stream.flush() == spm.decode(ids, continuation=continuation)


@given(st.one_of(texts, st.just("a\u2581b")))
def test_spm_round_trip(s):
    """A '▁' in the text comes back as a space: SentencePiece writes spaces as '▁' (llama.cpp's round trip too)."""
    spm = spm_tokenizer()
    assert spm.decode(spm.encode(s, add_bos=False, parse_special=False)) == s.replace("\u2581", " ")


def test_spm_refuses_what_llama_cpp_cannot_tokenize():
    pieces = spm_metadata(SPM_PIECES)
    no_bytes = spm_tokenizer(**{"tokenizer.ggml.tokens": [t if t != "<0xA9>" else "x" for t in
                                                          pieces["tokenizer.ggml.tokens"]]})
    assert no_bytes.encode("abc", add_bos=False) == spm_ids(no_bytes, "▁a", "bc")
    with pytest.raises(TokenizerError, match="no byte token <0xA9>"):
        no_bytes.encode("é")
    with pytest.raises(TokenizerError, match="scores"):
        spm_tokenizer(**{"tokenizer.ggml.scores": [0.0] * 10})
    with pytest.raises(TokenizerError, match="scores"):
        spm_tokenizer(**{"tokenizer.ggml.scores": [float("nan")] * 300})


def test_byte_tokens_print_their_byte():
    """llama.cpp's token_to_piece prints a byte-typed <0xXX> token as that byte, in BPE vocabularies too."""
    metadata = synthetic_metadata()
    tokens = metadata["tokenizer.ggml.tokens"] + ["<0x41>"]
    tokenizer = Tokenizer.from_metadata(synthetic_metadata(**{
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": metadata["tokenizer.ggml.token_type"] + [6]}))
    assert tokenizer.decode([len(tokens) - 1]) == "A"


# --- Gemma 4's BPE over raw characters with '▁' for spaces (tokenizer.ggml.model = gemma4) --------------------------

def gemma4_tokenizer(**overrides) -> Tokenizer:
    pieces = ["▁", "a", "b", "\n", "ab", "▁a", "\n\n", "\n\n\n"]  # '\n\n\n' is a token no merge makes
    metadata = {
        "tokenizer.ggml.model": "gemma4",
        "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces,
        "tokenizer.ggml.token_type": [3, 3, 3, 2] + [6] * 256 + [1] * len(pieces),
        "tokenizer.ggml.merges": ["a b", "▁ a", "\n \n"],
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_bos_token": False,
    }
    metadata.update(overrides)
    return Tokenizer.from_metadata({k: v for k, v in metadata.items() if v is not None})


def test_gemma4_bpe():
    gemma = gemma4_tokenizer()
    assert gemma.add_bos and gemma.encode("") == [2]  # llama.cpp forces BOS on for gemma4
    assert gemma.encode("ab ab", add_bos=False) == spm_ids(gemma, "ab", "▁", "ab")  # rank 0 'a b' before '▁ a'
    assert gemma.encode(" a", add_bos=False) == spm_ids(gemma, "▁a")  # no space is put in front
    assert gemma.encode("é", add_bos=False) == spm_ids(gemma, "<0xC3>", "<0xA9>")
    assert gemma.encode("\n\n\n", add_bos=False) == spm_ids(gemma, "\n\n\n")  # a newline run that is a token
    assert gemma.encode("a\n\n\nb", add_bos=False) == spm_ids(gemma, "a", "\n\n\n", "b")
    assert gemma.decode(gemma.encode("ab ab\n\né")) == "<bos>ab ab\n\né"
    sarvam = gemma4_tokenizer(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "sarvam-moe"})
    assert not sarvam.add_bos
    assert sarvam.encode("\n\n\n") == spm_ids(sarvam, "\n\n", "\n")  # merged like any other run


@given(st.one_of(texts, st.just("a\u2581b")))
def test_gemma4_round_trip(s):
    gemma = gemma4_tokenizer()
    assert gemma.decode(gemma.encode(s, add_bos=False, parse_special=False)) == s.replace("\u2581", " ")


# --- WordPiece (tokenizer.ggml.model = bert) ---------------------------------------------------------------------------
# llama.cpp's llm_tokenizer_wpm_session: lower-case, strip accents, cut at spaces, punctuation and CJK ideographs,
# then the longest token first; GGUF writes word-initial tokens with '▁' and continuations without '##'.

def bert_tokenizer(**overrides) -> Tokenizer:
    pieces = ["▁hello", "▁world", "▁un", "aff", "able", "▁!", "▁,", "▁世", "▁界", "▁cafe"]
    metadata = {
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.tokens": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + pieces,
        "tokenizer.ggml.token_type": [3] * 5 + [1] * len(pieces),
        "tokenizer.ggml.unknown_token_id": 1, "tokenizer.ggml.seperator_token_id": 3,
        "tokenizer.ggml.bos_token_id": 2,
    }
    metadata.update(overrides)
    return Tokenizer.from_metadata({k: v for k, v in metadata.items() if v is not None})


def test_wordpiece():
    bert = bert_tokenizer()
    assert bert.encode("Hello, World!") == [2] + spm_ids(bert, "▁hello", "▁,", "▁world", "▁!") + [3]  # [CLS] .. [SEP]
    assert bert.encode("Unaffable Café 世界", add_bos=False, add_eos=False) == spm_ids(
        bert, "▁un", "aff", "able", "▁cafe", "▁世", "▁界")
    assert bert.encode("hellox world", add_bos=False, add_eos=False) == [1] + spm_ids(bert, "▁world")  # [UNK]
    assert bert.pre_tokenize("Hello,World") == ["hello", ",", "world"]
    assert bert.decode(spm_ids(bert, "▁un", "aff", "able", "▁!")) == " unaffable !"
    cased = bert_tokenizer(**{"tokenizer.ggml.normalizer.lowercase": False})
    assert cased.encode("Hello hello", add_bos=False, add_eos=False) == [1] + spm_ids(cased, "▁hello")
