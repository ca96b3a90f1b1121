"""Model files are untrusted input: every damaged, absurd or lying GGUF is refused with a RefspecError whose
message is one line, and nothing else ever escapes from `load` (no numpy/gguf traceback, no hang)."""
import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_writer import GGUFValue
from hypothesis import given
from hypothesis import strategies as st

from refspec import synthetic
from refspec.errors import ModelFileError, RefspecError, UnsupportedModelError
from refspec.gguf_model import load

V = GGUFValueType
F32, Q8_0 = int(GGMLQuantizationType.F32), int(GGMLQuantizationType.Q8_0)


# ---------------------------------------------------------------------------------------------------------
# Hand-made GGUF bytes, for what GGUFWriter would refuse to write.
# ---------------------------------------------------------------------------------------------------------
def string(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key, vtype: int, payload: bytes) -> bytes:
    return string(key) + struct.pack("<I", vtype) + payload


def kv_u32(key, value: int) -> bytes:
    return kv(key, V.UINT32, struct.pack("<I", value))


def kv_text(key, value) -> bytes:
    return kv(key, V.STRING, string(value))


def tensor_info(name, dims, ggml_type=F32, offset=0) -> bytes:
    return (string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<IQ", ggml_type, offset))


def gguf_bytes(kvs=(), infos=(), data=b"", *, version=3, n_kv=None, n_tensors=None, alignment=32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % alignment) + data


ARCH = kv_text("general.architecture", "llama")

RAW_CASES = {  # name: (file bytes, expected error type, fragment of its message)
    "empty file": (b"", ModelFileError, "not a GGUF"),
    "three bytes": (b"GGU", ModelFileError, "not a GGUF"),
    "ggml magic": (b"GGML" + bytes(40), ModelFileError, "not a GGUF"),
    "header cut short": (b"GGUF\x03\x00\x00\x00" + bytes(6), ModelFileError, "truncated"),
    "version 1": (gguf_bytes(version=1), UnsupportedModelError, "version 1"),
    "version 999": (gguf_bytes(version=999), UnsupportedModelError, "version 999"),
    "big endian": (gguf_bytes(version=3 << 24), UnsupportedModelError, "big-endian"),
    "huge kv count": (gguf_bytes([ARCH], n_kv=2**64 - 1), ModelFileError, "absurd header"),
    "huge tensor count": (gguf_bytes([ARCH], n_tensors=2**40), ModelFileError, "absurd header"),
    "kv count past the end": (gguf_bytes([ARCH], n_kv=3, alignment=1), ModelFileError, "truncated"),
    "key length huge": (gguf_bytes([struct.pack("<Q", 2**63) + b"x" * 20]), ModelFileError, "truncated"),
    "key not utf-8": (gguf_bytes([kv_u32(b"general.\xff\xfe", 1)]), ModelFileError, "UTF-8"),
    "key repeated": (gguf_bytes([ARCH, ARCH]), ModelFileError, "repeated"),
    "key with a newline": (gguf_bytes([kv_u32("general.a\nb", 1)]), ModelFileError, "control characters"),
    "empty tensor name": (gguf_bytes([ARCH], [tensor_info("", [8])], bytes(32)), ModelFileError, "empty"),
    "unknown value type": (gguf_bytes([kv("general.x", 99, b"\0" * 8)]), ModelFileError, "value type 99"),
    "array length huge": (gguf_bytes([kv("general.x", V.ARRAY, struct.pack("<IQ", V.UINT8, 2**62))]),
                          ModelFileError, "absurd metadata"),
    "array past the end": (gguf_bytes([kv("general.x", V.ARRAY, struct.pack("<IQ", V.UINT32, 5000))]),
                           ModelFileError, "truncated"),
    "string array past the end": (gguf_bytes([kv("tokenizer.ggml.tokens", V.ARRAY,
                                                 struct.pack("<IQ", V.STRING, 1000) + string("a"))]),
                                  ModelFileError, "truncated"),
    "string item huge": (gguf_bytes([kv("tokenizer.ggml.tokens", V.ARRAY,
                                        struct.pack("<IQQ", V.STRING, 1, 2**60))]), ModelFileError, "truncated"),
    "array of arrays": (gguf_bytes([kv("general.x", V.ARRAY, struct.pack("<IQ", V.ARRAY, 1))]),
                        UnsupportedModelError, "array of arrays"),
    "many array items": (gguf_bytes([kv("general.x", V.ARRAY, struct.pack("<IQ", V.BOOL, 3 << 20) + bytes(3 << 20)),
                                     kv("general.y", V.ARRAY, struct.pack("<IQ", V.BOOL, 3 << 20) + bytes(3 << 20))]),
                         ModelFileError, "absurd metadata"),
    "alignment zero": (gguf_bytes([kv_u32("general.alignment", 0)]), ModelFileError, "power of two"),
    "alignment three": (gguf_bytes([kv_u32("general.alignment", 3)]), ModelFileError, "power of two"),
    "alignment as u64": (gguf_bytes([kv("general.alignment", V.UINT64, struct.pack("<Q", 32))]),
                         ModelFileError, "UINT32"),
    "five dims": (gguf_bytes([ARCH], [tensor_info("t", [1, 1, 1, 1, 1])], bytes(32)), ModelFileError, "n_dims 5"),
    "zero dims": (gguf_bytes([ARCH], [tensor_info("t", [])], bytes(32)), ModelFileError, "n_dims 0"),
    "zero-length dim": (gguf_bytes([ARCH], [tensor_info("t", [4, 0])], bytes(32)), ModelFileError, "dims"),
    "negative dim": (gguf_bytes([ARCH], [tensor_info("t", [4, 2**64 - 4])], bytes(32)), ModelFileError, "dims"),
    "exabyte tensor in 4 kB": (gguf_bytes([ARCH], [tensor_info("t", [2**30, 2**30, 2**4])], bytes(4096)),
                               ModelFileError, "past the end"),
    "byte size overflows 64 bits": (gguf_bytes([ARCH], [tensor_info("t", [2**32, 2**32], Q8_0)], bytes(64)),
                                    ModelFileError, "past the end"),
    "unknown tensor type": (gguf_bytes([ARCH], [tensor_info("t", [32], 99)], bytes(64)),
                            UnsupportedModelError, "unknown ggml type 99"),
    "partial block": (gguf_bytes([ARCH], [tensor_info("t", [33], Q8_0)], bytes(64)), ModelFileError, "block size"),
    "offset past the end": (gguf_bytes([ARCH], [tensor_info("t", [8], F32, 2**40)], bytes(32)),
                            ModelFileError, "past the end"),
    "offset misaligned": (gguf_bytes([ARCH], [tensor_info("t", [2], F32, 4)], bytes(64)), ModelFileError, "alignment"),
    "tensors overlap": (gguf_bytes([ARCH], [tensor_info("a", [16]), tensor_info("b", [16], F32, 32)], bytes(128)),
                        ModelFileError, "overlap"),
    "tensor named twice": (gguf_bytes([ARCH], [tensor_info("a", [8]), tensor_info("a", [8], F32, 32)], bytes(64)),
                           ModelFileError, "twice"),
    "no architecture": (gguf_bytes([kv_u32("llama.block_count", 1)]), ModelFileError, "general.architecture"),
    "architecture not a string": (gguf_bytes([kv_u32("general.architecture", 1)]), ModelFileError,
                                  "general.architecture"),
}


def refused(path) -> RefspecError | None:
    """Loads `path`; returns the RefspecError it raised, or None if it loaded. Anything else fails the test."""
    try:
        load(path, log=lambda message: None)
    except RefspecError as e:
        assert "\n" not in str(e), f"message is not one line: {e}"
        return e
    return None


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_hand_made_files_are_refused(tmp_path, case):
    data, error_type, fragment = RAW_CASES[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    error = refused(path)
    assert isinstance(error, error_type), f"{case}: {error!r}"
    assert fragment in str(error) and str(path) in str(error)


def test_missing_file_and_directory(tmp_path):
    assert isinstance(refused(tmp_path / "nothing.gguf"), ModelFileError)
    assert isinstance(refused(tmp_path), ModelFileError)


# ---------------------------------------------------------------------------------------------------------
# Well-formed files whose metadata lies or that use something refspec does not support.
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    return synthetic.write_model(tmp_path_factory.mktemp("good") / "good.gguf", arch="llama", n_layer=2,
                                 n_embd=64, n_ff=96, n_head=4, n_head_kv=2, weight_type="F32")


def i32(value) -> GGUFValue:
    return GGUFValue(value, V.INT32)


LYING_CASES = {  # name: (rewrite_gguf arguments, expected error type, message fragment)
    "unknown architecture": (dict(metadata={"general.architecture": "mamba"}), UnsupportedModelError,
                             "architecture 'mamba'"),
    "block_count missing": (dict(drop=["llama.block_count"]), ModelFileError, "llama.block_count is missing"),
    "block_count absurd": (dict(metadata={"llama.block_count": 2**31}), ModelFileError, "block_count"),
    "block_count zero": (dict(metadata={"llama.block_count": 0}), ModelFileError, "block_count"),
    "head_count zero": (dict(metadata={"llama.attention.head_count": 0}), ModelFileError, "head_count is 0"),
    "head_count_kv not dividing": (dict(metadata={"llama.attention.head_count_kv": 3}), ModelFileError,
                                   "multiple of head_count_kv"),
    "n_embd not divisible by heads": (dict(metadata={"llama.attention.head_count": 3,
                                                     "llama.attention.head_count_kv": 3}),
                                      ModelFileError, "not divisible by head_count"),
    "head_dim times heads mismatch": (dict(metadata={"llama.attention.key_length": 8}), ModelFileError,
                                      "attn_q.weight has shape"),
    "value_length differs": (dict(metadata={"llama.attention.value_length": 8}), UnsupportedModelError,
                             "value_length"),
    "n_rot odd": (dict(metadata={"llama.rope.dimension_count": 15}), ModelFileError, "dimension_count 15"),
    "n_rot above head_dim": (dict(metadata={"llama.rope.dimension_count": 32}), ModelFileError,
                             "dimension_count 32"),
    "n_rot zero": (dict(metadata={"llama.rope.dimension_count": 0}), ModelFileError, "dimension_count 0"),
    "rope base zero": (dict(metadata={"llama.rope.freq_base": 0.0}), ModelFileError, "freq_base"),
    "rope base negative": (dict(metadata={"llama.rope.freq_base": -1.0}), ModelFileError, "freq_base"),
    "rope base nan": (dict(metadata={"llama.rope.freq_base": float("nan")}), ModelFileError, "freq_base"),
    "rope base inf": (dict(metadata={"llama.rope.freq_base": float("inf")}), ModelFileError, "freq_base"),
    "rope base below 1": (dict(metadata={"llama.rope.freq_base": 0.5}), UnsupportedModelError, "freq_base 0.5"),
    "rope scaling longrope": (dict(metadata={"llama.rope.scaling.type": "longrope",
                                             "llama.rope.scaling.factor": 4.0}),
                              UnsupportedModelError, "'longrope' is not supported"),
    "rope scaling type unknown": (dict(metadata={"llama.rope.scaling.type": "ntk"}), UnsupportedModelError,
                                  "'ntk'"),
    "rope scaling type not a string": (dict(metadata={"llama.rope.scaling.type": 1.0}), ModelFileError,
                                       "scaling.type"),
    "rope scaling none with a factor": (dict(metadata={"llama.rope.scaling.type": "none",
                                                       "llama.rope.scaling.factor": 4.0}),
                                        UnsupportedModelError, "does not guess"),
    "rope factor below 1": (dict(metadata={"llama.rope.scaling.type": "linear",
                                           "llama.rope.scaling.factor": 0.5}), UnsupportedModelError, "factor 0.5"),
    "rope factor nan": (dict(metadata={"llama.rope.scaling.type": "yarn",
                                       "llama.rope.scaling.factor": float("nan")}), ModelFileError, "scaling.factor is nan"),
    "rope factor negative": (dict(metadata={"llama.rope.scale_linear": -2.0}), ModelFileError, "factor -2"),
    "rope factor absurd": (dict(metadata={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 1e6}),
                           UnsupportedModelError, "factor 1000000"),
    "rope attn factor zero": (dict(metadata={"llama.rope.scaling.attn_factor": 0.0}), UnsupportedModelError,
                              "attn_factor 0"),
    "yarn original context zero": (dict(metadata={"llama.rope.scaling.type": "yarn",
                                                  "llama.rope.scaling.factor": 4.0,
                                                  "llama.rope.scaling.original_context_length": 0}),
                                   ModelFileError, "original_context_length 0"),
    "yarn beta other than llama.cpp's": (dict(metadata={"llama.rope.scaling.type": "yarn",
                                                        "llama.rope.scaling.factor": 4.0,
                                                        "llama.rope.scaling.yarn_beta_fast": 16.0}),
                                         UnsupportedModelError, "yarn_beta_fast is 16"),
    "yarn log multiplier": (dict(metadata={"llama.rope.scaling.yarn_log_multiplier": 0.1}), UnsupportedModelError,
                            "yarn_log_multiplier"),
    "rope_freqs of the wrong length": (dict(add_tensors={"rope_freqs.weight": np.ones(6, np.float32)}),
                                       ModelFileError, "rope_freqs.weight has shape [6]"),
    "rope_freqs not finite": (dict(add_tensors={"rope_freqs.weight": np.full(8, np.inf, np.float32)}),
                              ModelFileError, "non-finite"),
    "rope_freqs zero": (dict(add_tensors={"rope_freqs.weight": np.zeros(8, np.float32)}), UnsupportedModelError,
                        "rope_freqs.weight value 0"),
    "eps zero": (dict(metadata={"llama.attention.layer_norm_rms_epsilon": 0.0}), ModelFileError, "epsilon"),
    "eps nan": (dict(metadata={"llama.attention.layer_norm_rms_epsilon": float("nan")}), ModelFileError,
                "epsilon"),
    "eps underflows float32": (dict(metadata={"llama.attention.layer_norm_rms_epsilon":
                                              GGUFValue(1e-300, V.FLOAT64)}), ModelFileError, "epsilon"),
    "eps missing": (dict(drop=["llama.attention.layer_norm_rms_epsilon"]), ModelFileError, "missing"),
    "context zero": (dict(metadata={"llama.context_length": 0}), ModelFileError, "context_length 0"),
    "context absurd": (dict(metadata={"llama.context_length": 2**30}), ModelFileError, "context_length"),
    "context negative": (dict(metadata={"llama.context_length": i32(-5)}), ModelFileError, "context_length"),
    "head_count a string": (dict(metadata={"llama.attention.head_count": GGUFValue("4", V.STRING)}),
                            ModelFileError, "expected an integer"),
    "tokens not an array": (dict(metadata={"tokenizer.ggml.tokens": GGUFValue("abc", V.STRING)}), ModelFileError,
                            "expected an array of strings"),
    "vocab_size against tokens": (dict(metadata={"llama.vocab_size": 999}), ModelFileError, "vocab_size 999"),
    "vocab_size against embedding": (dict(metadata={"llama.vocab_size": 999},
                                          drop=["tokenizer.ggml.tokens"]), ModelFileError,
                                     "token_embd.weight has shape"),
    "n_ff against tensors": (dict(metadata={"llama.feed_forward_length": 128}), ModelFileError,
                             "ffn_gate.weight has shape"),
    "tensor missing": (dict(drop=["blk.1.ffn_up.weight"]), ModelFileError, "blk.1.ffn_up.weight is missing"),
    "output norm missing": (dict(drop=["output_norm.weight"]), ModelFileError, "output_norm.weight is missing"),
    "unknown tensor": (dict(add_tensors={"rope_long.weight": np.ones(8, np.float32)}), UnsupportedModelError,
                       "rope_long.weight"),
    "bias in a llama model": (dict(add_tensors={"blk.0.attn_q.bias": np.zeros(64, np.float32)}),
                              UnsupportedModelError, "blk.0.attn_q.bias"),
    "layer beyond block_count": (dict(metadata={"llama.block_count": 1}), UnsupportedModelError, "blk.1."),
    "quantized norm": (dict(tensor_types={"output_norm.weight": "Q8_0"}), UnsupportedModelError,
                       "output_norm.weight is Q8_0"),
    "F64 matrix": (dict(drop=["blk.0.attn_q.weight"], add_tensors={"blk.0.attn_q.weight": np.zeros((64, 64))}),
                   UnsupportedModelError, "F64"),
    "matrix of the wrong shape": (dict(drop=["blk.0.attn_k.weight"],
                                       add_tensors={"blk.0.attn_k.weight": np.zeros((64, 32), np.float32)}),
                                  ModelFileError, "attn_k.weight has shape [32, 64]"),
    "infinite weight": (dict(drop=["blk.0.ffn_up.weight"],
                             add_tensors={"blk.0.ffn_up.weight": np.full((96, 64), np.inf, np.float32)}),
                        ModelFileError, "non-finite"),
    "weight beyond fp16": (dict(drop=["blk.0.ffn_up.weight"],
                                add_tensors={"blk.0.ffn_up.weight": np.full((96, 64), 1e38, np.float32)}),
                           ModelFileError, "non-finite"),
    "nan norm": (dict(drop=["blk.1.ffn_norm.weight"],
                      add_tensors={"blk.1.ffn_norm.weight": np.full(64, np.nan, np.float32)}),
                 ModelFileError, "non-finite"),
}


@pytest.mark.parametrize("case", sorted(LYING_CASES))
def test_lying_or_unsupported_files_are_refused(tmp_path, good_model, case):
    changes, error_type, fragment = LYING_CASES[case]
    path = synthetic.rewrite_gguf(good_model, tmp_path / "bad.gguf", **changes)
    error = refused(path)
    assert isinstance(error, error_type), f"{case}: {error!r}"
    assert fragment in str(error), str(error)


def test_matrix_rows_must_be_whole_q8_0_blocks(tmp_path):
    path = synthetic.write_model(tmp_path / "m.gguf", weight_type="F32", n_embd=48, n_head=3, n_head_kv=1)
    error = refused(path)
    assert isinstance(error, UnsupportedModelError) and "multiple of 32" in str(error)


def test_invalid_utf8_in_a_metadata_string(tmp_path, good_model):
    data = bytearray(good_model.read_bytes())
    at = data.index(b"<|im_start|>assistant")  # inside tokenizer.chat_template
    data[at] = 0xFF
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(data))
    error = refused(path)
    assert isinstance(error, ModelFileError) and "UTF-8" in str(error) and "chat_template" in str(error)


def test_a_byte_flip_in_norm_data_is_a_valid_file(tmp_path, good_model):
    reader = GGUFReader(good_model)
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    data = bytearray(good_model.read_bytes())
    data[norm.data_offset] ^= 0x01  # lowest mantissa bit of the first weight
    path = tmp_path / "flipped.gguf"
    path.write_bytes(bytes(data))
    assert refused(path) is None


# ---------------------------------------------------------------------------------------------------------
# Properties: whatever the damage, a RefspecError or a successful load, never anything else.
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A small Q8_0 qwen2 model, its bytes, where its data section starts and where its last tensor ends."""
    directory = tmp_path_factory.mktemp("small")
    path = synthetic.write_model(directory / "small.gguf", arch="qwen2", n_layer=1, n_embd=32, n_ff=64,
                                 n_head=2, n_head_kv=1)
    reader = GGUFReader(path)
    data_end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    return path.read_bytes(), reader.data_offset, data_end, directory / "damaged.gguf"


@given(cut=st.integers(min_value=0, max_value=2**20))
def test_truncated_files_are_refused(small_model, cut):
    data, _, data_end, path = small_model
    cut = cut % len(data)
    path.write_bytes(data[:cut])
    error = refused(path)
    if cut < data_end:
        assert isinstance(error, ModelFileError)


@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
                      min_size=1, max_size=8))
def test_flipped_header_bytes(small_model, flips):
    data, data_start, _, path = small_model
    damaged = bytearray(data)
    for position, mask in flips:
        damaged[position % data_start] ^= mask
    path.write_bytes(bytes(damaged))
    refused(path)


EXTREMES = [0, 1, 5, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


@given(position=st.integers(min_value=0), value=st.sampled_from(EXTREMES) | st.integers(0, 2**64 - 1),
       width=st.sampled_from([4, 8]))
def test_extreme_numbers_written_into_the_header(small_model, position, value, width):
    data, data_start, _, path = small_model
    damaged = bytearray(data)
    position %= data_start - width
    damaged[position:position + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    path.write_bytes(bytes(damaged))
    refused(path)


@given(changes=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                        min_size=1, max_size=32))
def test_random_bytes_anywhere(small_model, changes):
    data, _, _, path = small_model
    damaged = bytearray(data)
    for position, byte in changes:
        damaged[position % len(damaged)] = byte
    path.write_bytes(bytes(damaged))
    refused(path)
