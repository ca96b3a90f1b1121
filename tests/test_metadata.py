"""Every metadata key refspec reads is checked for its GGUF type and range before use: wrong types are one
clean refspec error, never a traceback and never a value read by Python's truthiness."""
import math

import pytest
from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue

from refspec import synthetic
from refspec.errors import ModelFileError, TokenizerError, UnsupportedModelError, UsageError
from refspec.gguf_model import load
from refspec.metadata import MetadataReader
from refspec.tokenizer import Tokenizer

V = GGUFValueType


# --- the accessor ------------------------------------------------------------------------------------------------
def test_reader_checks_types_and_ranges():
    md = MetadataReader({"b": True, "s": "false", "i": 3, "f": 2.5, "nan": math.nan, "one": 1,
                         "ints": [1, 2, 3], "mixed": [1, "2"], "floats": [0.5, math.nan], "strs": ["a", "b"]})
    assert md.boolean("b") is True and md.boolean("absent", False) is False
    for key in ("s", "one", "i"):  # a string "false" or the integer 1 is not a BOOL
        with pytest.raises(ModelFileError, match="expected BOOL"):
            md.boolean(key)
    assert md.integer("i", lo=0, hi=3) == 3
    with pytest.raises(ModelFileError, match="not in 0..2"):
        md.integer("i", lo=0, hi=2)
    with pytest.raises(ModelFileError, match="is BOOL, expected an integer"):
        md.integer("b")
    with pytest.raises(ModelFileError, match="is a float, expected an integer"):
        md.integer("f")
    assert md.number("one") == 1.0 and md.number("f", positive=True) == 2.5
    with pytest.raises(ModelFileError, match="finite"):
        md.number("nan")
    assert md.integers("ints", length=3, lo=1, hi=3) == [1, 2, 3]
    with pytest.raises(ModelFileError, match="has 3 items, expected 4"):
        md.integers("ints", length=4)
    with pytest.raises(ModelFileError, match="mixed types, expected an array of integers"):
        md.integers("mixed")
    with pytest.raises(ModelFileError, match="an integer, expected an array of strings"):
        md.strings("i")
    with pytest.raises(ModelFileError, match="non-finite"):
        md.numbers("floats")
    with pytest.raises(ModelFileError, match="missing"):
        md.string("absent")
    assert md.token_id("i", 4) == 3 and md.token_id("absent", 4) is None
    with pytest.raises(ModelFileError, match="outside the vocabulary"):
        md.token_id("i", 3)
    assert md.unread("") == ["strs"]  # every other key was asked for
    with pytest.raises(UsageError):
        MetadataReader(["not", "a", "mapping"])


# --- tokenizer metadata of every wrong type ----------------------------------------------------------------------
def tokenizer_metadata(**overrides) -> dict:
    tokens, types, merges = synthetic.tokenizer_vocab()
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
                "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": synthetic.CHAT_TEMPLATE}
    metadata.update(overrides)
    return metadata


N_VOCAB = len(synthetic.tokenizer_vocab()[0])

WRONG_TOKENIZER_METADATA = {  # name: (overrides, fragment of the message)
    "token_type a scalar": ({"tokenizer.ggml.token_type": 1}, "token_type is an integer, expected an array"),
    "token_type strings": ({"tokenizer.ggml.token_type": ["1"] * N_VOCAB}, "array of strings, expected an array of integers"),
    "token_type NaN floats": ({"tokenizer.ggml.token_type": [math.nan] * N_VOCAB}, "array of floats"),
    "token_type BOOLs": ({"tokenizer.ggml.token_type": [True] * N_VOCAB}, "array of BOOLs"),
    "token_type too short": ({"tokenizer.ggml.token_type": [1] * (N_VOCAB - 1)}, f"expected {N_VOCAB}"),
    "token_type too long": ({"tokenizer.ggml.token_type": [1] * (N_VOCAB + 1)}, f"expected {N_VOCAB}"),
    "token_type out of range": ({"tokenizer.ggml.token_type": [1] * (N_VOCAB - 1) + [99]}, "99, not in 0..6"),
    "token_type negative": ({"tokenizer.ggml.token_type": [-1] + [1] * (N_VOCAB - 1)}, "-1, not in 0..6"),
    "pre an array": ({"tokenizer.ggml.pre": ["smollm"]}, "pre is an array of strings, expected a string"),
    "model an integer": ({"tokenizer.ggml.model": 2}, "model is an integer, expected a string"),
    "merges a scalar": ({"tokenizer.ggml.merges": "a b"}, "merges is a string, expected an array of strings"),
    "merges integers": ({"tokenizer.ggml.merges": [1, 2]}, "expected an array of strings"),
    "tokens a string": ({"tokenizer.ggml.tokens": "abc"}, "tokens is a string, expected an array of strings"),
    "tokens empty": ({"tokenizer.ggml.tokens": []}, "tokens is empty"),
    "add_bos_token the string false": ({"tokenizer.ggml.add_bos_token": "false"}, "is a string, expected BOOL"),
    "add_bos_token an integer": ({"tokenizer.ggml.add_bos_token": 0}, "is an integer, expected BOOL"),
    "add_eos_token a float": ({"tokenizer.ggml.add_eos_token": 1.0}, "is a float, expected BOOL"),
    "bos id a float": ({"tokenizer.ggml.bos_token_id": 1.0}, "expected an integer token id"),
    "bos id a BOOL": ({"tokenizer.ggml.bos_token_id": True}, "expected an integer token id"),
    "eos id negative": ({"tokenizer.ggml.eos_token_id": -1}, "outside the vocabulary"),
    "eot id past the end": ({"tokenizer.ggml.eot_token_id": N_VOCAB}, "outside the vocabulary"),
    "fim id a string": ({"tokenizer.ggml.fim_pad_token_id": "3"}, "expected an integer token id"),
    "chat template an integer": ({"tokenizer.chat_template": 7}, "chat_template is an integer, expected a string"),
    "chat template an array": ({"tokenizer.chat_template": ["{{ x }}"]}, "expected a string"),
}


@pytest.mark.parametrize("case", sorted(WRONG_TOKENIZER_METADATA))
def test_wrong_tokenizer_metadata_is_one_tokenizer_error(case):
    overrides, fragment = WRONG_TOKENIZER_METADATA[case]
    Tokenizer.from_metadata(tokenizer_metadata())  # the unchanged metadata builds
    with pytest.raises(TokenizerError) as info:
        Tokenizer.from_metadata(tokenizer_metadata(**overrides))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_add_bos_token_is_read_as_a_bool():
    assert Tokenizer.from_metadata(tokenizer_metadata(**{"tokenizer.ggml.add_bos_token": True})).add_bos is True
    assert Tokenizer.from_metadata(tokenizer_metadata(**{"tokenizer.ggml.add_bos_token": False})).add_bos is False


def test_from_metadata_needs_a_mapping():
    with pytest.raises(UsageError):
        Tokenizer.from_metadata([("tokenizer.ggml.model", "gpt2")])


# --- the same through a GGUF file: the types are GGUF's -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic.write_model(tmp_path_factory.mktemp("md") / "tiny.gguf", n_layer=1, n_ctx=64)


def tokenizer_of(tmp_path, tiny, **metadata):
    path = synthetic.rewrite_gguf(tiny, tmp_path / "changed.gguf", metadata=metadata)
    return Tokenizer.from_metadata(load(path, log=lambda m: None).metadata)


@pytest.mark.parametrize("key, value, fragment", [
    ("tokenizer.ggml.add_bos_token", GGUFValue("false", V.STRING), "expected BOOL"),
    ("tokenizer.ggml.add_bos_token", GGUFValue(1, V.UINT8), "expected BOOL"),
    ("tokenizer.ggml.token_type", GGUFValue(1, V.INT32), "expected an array of integers"),
    ("tokenizer.ggml.token_type", GGUFValue([math.nan] * N_VOCAB, V.ARRAY, V.FLOAT32), "array of floats"),
    ("tokenizer.ggml.pre", GGUFValue(["smollm"], V.ARRAY, V.STRING), "expected a string"),
    ("tokenizer.ggml.merges", GGUFValue(3, V.UINT32), "expected an array of strings"),
    ("tokenizer.ggml.bos_token_id", GGUFValue(1.0, V.FLOAT32), "expected an integer token id"),
    ("tokenizer.chat_template", GGUFValue(5, V.UINT32), "expected a string"),
])
def test_wrong_gguf_types_in_a_file(tmp_path, tiny, key, value, fragment):
    with pytest.raises(TokenizerError, match=fragment):
        tokenizer_of(tmp_path, tiny, **{key: value})


def test_bool_flag_in_a_file_is_honoured(tmp_path, tiny):
    assert tokenizer_of(tmp_path, tiny, **{"tokenizer.ggml.add_bos_token": GGUFValue(True, V.BOOL)}).add_bos


# --- {arch}.* keys refspec does not implement are refused by name ------------------------------------------------
@pytest.mark.parametrize("key, value", [
    ("llama.logit_scale", GGUFValue(0.5, V.FLOAT32)),
    ("llama.attention.clamp_kqv", GGUFValue(8.0, V.FLOAT32)),
    ("llama.attention.sliding_window", GGUFValue(32, V.UINT32)),
    ("llama.expert_count", GGUFValue(8, V.UINT32)),
    ("llama.expert_used_count", GGUFValue(2, V.UINT32)),
    ("llama.attn_logit_softcapping", GGUFValue(50.0, V.FLOAT32)),
    ("llama.final_logit_softcapping", GGUFValue(30.0, V.FLOAT32)),
    ("llama.embedding_scale", GGUFValue(12.0, V.FLOAT32)),
    ("llama.attention.causal", GGUFValue(False, V.BOOL)),
    ("llama.attention.causal", GGUFValue(1, V.UINT8)),  # not a BOOL: not the neutral value
    ("llama.some_future_feature", GGUFValue(1, V.UINT32)),
])
def test_unimplemented_model_keys_are_refused(tmp_path, tiny, key, value):
    path = synthetic.rewrite_gguf(tiny, tmp_path / "changed.gguf", metadata={key: value})
    with pytest.raises(UnsupportedModelError, match=f"metadata {key} = .* refusing to ignore it"):
        load(path, log=lambda m: None)


@pytest.mark.parametrize("key, value", [
    ("llama.expert_count", GGUFValue(0, V.UINT32)),
    ("llama.logit_scale", GGUFValue(1.0, V.FLOAT32)),
    ("llama.attention.sliding_window", GGUFValue(0, V.UINT32)),
    ("llama.final_logit_softcapping", GGUFValue(0.0, V.FLOAT32)),
    ("llama.attention.causal", GGUFValue(True, V.BOOL)),
    ("general.some_note", GGUFValue("anything", V.STRING)),  # general.* never changes the model
    ("qwen2.logit_scale", GGUFValue(3.0, V.FLOAT32)),  # another architecture's key
])
def test_neutral_values_and_other_namespaces_load(tmp_path, tiny, key, value):
    path = synthetic.rewrite_gguf(tiny, tmp_path / "changed.gguf", metadata={key: value})
    assert load(path, log=lambda m: None).config.n_layer == 1


def test_a_large_unread_string_array_is_refused_before_parsing(tmp_path, tiny):
    import time

    path = synthetic.rewrite_gguf(tiny, tmp_path / "junk.gguf", metadata={
        "general.junk": GGUFValue([""] * (1 << 17), V.ARRAY, V.STRING)})
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match="absurd metadata: general.junk holds 131072 strings"):
        load(path, log=lambda m: None)
    assert time.perf_counter() - t0 < 5

