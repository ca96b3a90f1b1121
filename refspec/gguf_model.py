"""Load a GGUF model file into refspec's in-memory ``Model`` (refspec/model.py).

Model files are untrusted input, so loading goes in three steps, each of which raises ``ModelFileError``
(or its subclass ``UnsupportedModelError``) with a one-line message naming the file and the key or tensor:

1. ``_scan_layout`` walks the GGUF header with bounds checks before anything else reads it: magic, version,
   counts against the file size, every key/value length, every tensor's dims, type, byte size and offset
   (no overflow, no overlap, nothing past the end of the file). gguf-py's ``GGUFReader`` trusts these numbers
   (an absurd array length makes it loop for ever, a truncated file gives it short arrays), so it only sees a
   file whose layout has been checked.
2. ``GGUFReader`` parses the values and maps the tensors; its view of the layout is cross-checked with ours.
3. Hyper-parameters come from ``{arch}.*`` metadata keys (``_read_config``); tensors are found through the one
   name map below (``MODEL_TENSORS``, ``LAYER_TENSORS``) and checked against the config's shapes. Q8_0
   matrices stay where they are: views of the memory-mapped file, no copy (refspec/model.py); their scales
   are checked finite, the one pass over every page. Matrices stored in another type are dequantized and
   requantized to Q8_0 in memory with gguf-py's reference quantizer (byte-exact with ggml), and one note on
   stderr says so.
"""
from __future__ import annotations

import math
import mmap
import os
import re
import struct
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf import quants as ggml_quants

from refspec import checks
from refspec.errors import ModelFileError, UnsupportedModelError, UsageError
from refspec.metadata import REQUIRED, MetadataReader
from refspec.model import (ARCHITECTURES, HYBRID_ARCHITECTURES, Q8_0_BLOCK, QK8_0, LayerWeights, Model,
                           ModelConfig, ModelWeights, MtpWeights, Q8Matrix, RopeScaling)
from refspec.progress import ByteProgress, larger_than_memory, physical_memory

# ---------------------------------------------------------------------------------------------------------
# The tensor-name map: GGUF name -> refspec field, what it is, and its shape in ggml order (ne0 first) as
# ModelConfig attribute names. A matrix [ne0 = K in, ne1 = N out] becomes a Q8Matrix with q [N, K].
# `needs` says when the tensor belongs to the model: every condition must hold, each a ModelConfig bool
# attribute or, for a layer, ATTENTION / RECURRENT / NEXTN (the layer's kind). `optional` tensors may be
# absent (no output.weight means the head is tied to the token embedding).
# ---------------------------------------------------------------------------------------------------------
MATRIX, VECTOR = "matrix", "vector"
ATTENTION, RECURRENT, NEXTN = "attention layer", "recurrent layer", "nextn block"


class TensorSpec(NamedTuple):
    field: str  # attribute of ModelWeights / LayerWeights / MtpWeights
    kind: str  # MATRIX (-> Q8Matrix) or VECTOR (-> float32 array, reshaped to numpy order)
    shape: tuple[str, ...]  # ggml order, as ModelConfig attribute names
    needs: tuple[str, ...] = ()
    optional: bool = False


MODEL_TENSORS = {
    "token_embd.weight": TensorSpec("tok_embd", MATRIX, ("n_embd", "n_vocab")),
    "output_norm.weight": TensorSpec("output_norm", VECTOR, ("n_embd",)),
    "output.weight": TensorSpec("output", MATRIX, ("n_embd", "n_vocab"), optional=True),
    # llama (Llama 3.x): RoPE frequency factors; not a weight: read into ModelConfig.rope_scaling (_read_rope_freqs)
    "rope_freqs.weight": TensorSpec("rope_freqs", VECTOR, ("n_rot_pairs",), ("has_rope_freqs",)),
}

LAYER_TENSORS = {  # named "blk.{i}." + key in the file
    "attn_norm.weight": TensorSpec("attn_norm", VECTOR, ("n_embd",)),
    "attn_q.weight": TensorSpec("wq", MATRIX, ("n_embd", "n_q_proj"), (ATTENTION,)),
    "attn_k.weight": TensorSpec("wk", MATRIX, ("n_embd", "n_kv"), (ATTENTION,)),
    "attn_v.weight": TensorSpec("wv", MATRIX, ("n_embd", "n_kv"), (ATTENTION,)),
    "attn_output.weight": TensorSpec("wo", MATRIX, ("n_q", "n_embd"), (ATTENTION,)),
    "ffn_norm.weight": TensorSpec("ffn_norm", VECTOR, ("n_embd",), ("has_ffn_norm",)),
    "post_attention_norm.weight": TensorSpec("ffn_norm", VECTOR, ("n_embd",), ("has_post_attention_norm",)),
    "ffn_gate.weight": TensorSpec("w_gate", MATRIX, ("n_embd", "n_ff")),
    "ffn_up.weight": TensorSpec("w_up", MATRIX, ("n_embd", "n_ff")),
    "ffn_down.weight": TensorSpec("w_down", MATRIX, ("n_ff", "n_embd")),
    "attn_q.bias": TensorSpec("bq", VECTOR, ("n_q",), ("has_qkv_bias", ATTENTION)),  # qwen2
    "attn_k.bias": TensorSpec("bk", VECTOR, ("n_kv",), ("has_qkv_bias", ATTENTION)),
    "attn_v.bias": TensorSpec("bv", VECTOR, ("n_kv",), ("has_qkv_bias", ATTENTION)),
    "attn_q_norm.weight": TensorSpec("q_norm", VECTOR, ("head_dim",), ("has_qk_norm", ATTENTION)),  # qwen3(5)
    "attn_k_norm.weight": TensorSpec("k_norm", VECTOR, ("head_dim",), ("has_qk_norm", ATTENTION)),
    # qwen35 Gated DeltaNet layers
    "attn_qkv.weight": TensorSpec("w_qkv", MATRIX, ("n_embd", "ssm_conv_dim"), (RECURRENT,)),
    "attn_gate.weight": TensorSpec("w_z", MATRIX, ("n_embd", "ssm_value_dim"), (RECURRENT,)),
    "ssm_beta.weight": TensorSpec("w_beta", MATRIX, ("n_embd", "ssm_n_v_heads"), (RECURRENT,)),
    "ssm_alpha.weight": TensorSpec("w_alpha", MATRIX, ("n_embd", "ssm_n_v_heads"), (RECURRENT,)),
    "ssm_conv1d.weight": TensorSpec("ssm_conv1d", VECTOR, ("ssm_d_conv", "ssm_conv_dim"), (RECURRENT,)),
    "ssm_dt.bias": TensorSpec("ssm_dt", VECTOR, ("ssm_n_v_heads",), (RECURRENT,)),
    "ssm_a": TensorSpec("ssm_a", VECTOR, ("ssm_n_v_heads",), (RECURRENT,)),
    "ssm_norm.weight": TensorSpec("ssm_norm", VECTOR, ("ssm_d_state",), (RECURRENT,)),
    "ssm_out.weight": TensorSpec("ssm_out", MATRIX, ("ssm_value_dim", "n_embd"), (RECURRENT,)),
}

NEXTN_TENSORS = {  # the MTP block's own tensors, "blk.{n_layer}." + key; its decoder block is in LAYER_TENSORS
    "nextn.eh_proj.weight": TensorSpec("eh_proj", MATRIX, ("n_embd_2", "n_embd"), (NEXTN,)),
    "nextn.enorm.weight": TensorSpec("enorm", VECTOR, ("n_embd",), (NEXTN,)),
    "nextn.hnorm.weight": TensorSpec("hnorm", VECTOR, ("n_embd",), (NEXTN,)),
    "nextn.embed_tokens.weight": TensorSpec("embed", MATRIX, ("n_embd", "n_vocab"), (NEXTN,), optional=True),
    "nextn.shared_head_norm.weight": TensorSpec("head_norm", VECTOR, ("n_embd",), (NEXTN,), optional=True),
    "nextn.shared_head_head.weight": TensorSpec("head", MATRIX, ("n_embd", "n_vocab"), (NEXTN,), optional=True),
}
MAX_NEXTN = 1  # MTP blocks refspec runs (Qwen3.5/3.6 have one)

# Limits on what a plausible file holds. Anything beyond them is refused before it is allocated.
GGUF_VERSIONS = (2, 3)  # same layout; v1 used 32-bit counts
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_CONTEXT = 2**24
# RoPE inputs refspec computes tables for (SPEC.md, "RoPE"). Real models: base 1e4..1e7, factors 1..32, frequency
# factors 1..32. The limits keep angles where the table's float64 step decides almost every entry.
ROPE_BASE_RANGE = (1.0, 2.0**64)
ROPE_FACTOR_RANGE = (1.0, 1024.0)  # linear and YaRN context extension
ROPE_ATTN_FACTOR_RANGE = (2.0**-10, 64.0)
ROPE_FREQ_FACTOR_RANGE = (2.0**-10, 2.0**20)
ROPE_SCALING_TYPES = ("none", "linear", "yarn")
# Keys llama.cpp reads only for other architectures (it ignores them in llama, qwen2 and qwen3 files, while HF
# transformers would apply them): refused unless they hold the value both agree on.
ROPE_IGNORED_KEYS = {"rope.scaling.yarn_beta_fast": 32.0, "rope.scaling.yarn_beta_slow": 1.0,
                     "rope.scaling.yarn_log_multiplier": 0.0, "rope.scaling.yarn_attn_factor": 1.0,
                     "rope.scaling.alpha": 0.0}
# gguf-py's reader builds a Python object per array item, so a file of 100 MB of 1-byte array items would
# take it minutes: metadata items are capped (real models: ~150k for a 49k vocabulary, ~800k for a 262k one).
MAX_METADATA_ITEMS = 1 << 22  # array items over all keys
# Strings cost gguf-py's reader ~20 us and ~600 bytes each (numeric arrays are one view): string array items
# are capped over the file (llama-3's 128k tokens and 280k merges are 408k), and a string array other than
# the vocabulary's is small in real files (tags, languages), so a large one is refused before it is parsed.
MAX_STRING_ITEMS = 1 << 20
VOCAB_STRING_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")
MAX_OTHER_STRING_ITEMS = 1 << 16
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 20
HEADER_BYTES = 24  # magic, version, tensor count, kv count
MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, smallest value
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, one dim, type, offset
VECTOR_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
LINE_VALUES = 4096  # values per line handed to gguf-py's (de)quantizers (see _requantize)
_SCALE_BITS = np.dtype([("d", "<u2"), ("q", "i1", (QK8_0,))])  # Q8_0_BLOCK with the scale as raw bits
F16_EXPONENT = np.uint16(0x7C00)  # all ones: infinity or NaN
CHECK_BYTES = 64 << 20  # file bytes per scale check (bounds the temporaries)

_SCALAR_BYTES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}

# What gguf-py's reader or numpy may raise on a file it cannot make sense of.
_READER_ERRORS = (ValueError, IndexError, KeyError, OverflowError, struct.error, MemoryError,
                  UnicodeDecodeError, TypeError, AssertionError, NotImplementedError, OSError)


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load(path: str | os.PathLike, *, log: Callable[[str], None] = print_to_stderr) -> Model:
    """Read, validate and convert the GGUF model at ``path``. Raises ModelFileError (or its subclass
    UnsupportedModelError) for anything refspec cannot trust or run."""
    checks.callback("log", log)
    file = read_header(path)
    config = read_config(file)
    weights = _read_weights(file.name, config, file.tensors, log)
    return Model(config=config, weights=weights, metadata=file.metadata, path=file.name, files=file.files)


class GGUFHeader(NamedTuple):
    """A checked GGUF file's metadata and tensor infos, its weights not read (see ``read_header``)."""
    name: str
    fields: dict  # gguf-py ReaderField by key
    metadata: dict  # general.* and tokenizer.* keys as plain Python values
    tensors: dict  # gguf-py ReaderTensor by name (data memory-mapped, not read)
    files: tuple[str, ...] = ()  # every file of the model in order: (name,), or a split model's parts


def read_header(path: str | os.PathLike) -> GGUFHeader:
    """Steps 1 and 2: the layout check and gguf-py's reader; no tensor data is read. Raises ModelFileError.
    A split model (llama.cpp's gguf-split: NAME-00001-of-0000N.gguf, keys split.*) is read from its first
    part, as llama.cpp reads it: the metadata from that part, the tensors from every part, each part's layout
    checked as a file of its own."""
    name = model_path(path)
    reader = _open_reader(name, _scan_layout(name))
    fields = reader.fields
    metadata = {key: _field_value(name, field) for key, field in fields.items()
                if key.startswith(("general.", "tokenizer."))}
    tensors = {t.name: t for t in reader.tensors}
    files = (name,)
    count, total = _split_keys(name, fields, 0)
    if count > 1:
        files, tensors = _split_parts(name, count, total, tensors)
    return GGUFHeader(name, fields, metadata, tensors, files)


# llama.cpp's names of a split model's parts (llama_split_path): PREFIX-%05d-of-%05d.gguf, numbered from 1
_SPLIT_NAME = re.compile(r"(?P<prefix>.+)-(?P<no>[0-9]{5})-of-(?P<count>[0-9]{5})\.gguf")
MAX_SPLITS = 9999


def _split_keys(name: str, fields: dict, part: int) -> tuple[int, int | None]:
    """A file's split.count (1 when it has none) and split.tensors.count (None when absent), its split.no
    checked to be ``part`` (0: the file named to load, which must be a model's first part)."""
    keys = {key: _field_value(name, fields[key]) for key in ("split.count", "split.no", "split.tensors.count")
            if key in fields}
    md = MetadataReader(keys, where=f"{name}: ")
    count = md.integer("split.count", 1, lo=1, hi=MAX_SPLITS)
    number = md.integer("split.no", 0, lo=0, hi=count - 1)
    total = md.integer("split.tensors.count", None, lo=0, hi=MAX_TENSOR_COUNT * MAX_SPLITS)
    if number != part and part == 0:
        raise ModelFileError(f"{name}: part {number + 1} of a model split in {count} files; load its first "
                             f"part (llama.cpp's name: ...-00001-of-{count:05d}.gguf)")
    if number != part:
        raise ModelFileError(f"{name}: says it is part {number + 1} of its split model, its name part {part + 1}")
    return count, total


def _split_parts(name: str, count: int, total: int | None, tensors: dict) -> tuple[tuple[str, ...], dict]:
    """The other parts of the split model whose first part is ``name`` (``tensors``: its own; ``total``: its
    split.tensors.count): every part's path and every tensor."""
    directory, base = os.path.split(name)
    match = _SPLIT_NAME.fullmatch(base)
    if match is None or int(match["no"]) != 1 or int(match["count"]) != count:
        raise ModelFileError(f"{name}: the first part of a model split in {count} files, but not named as "
                             f"llama.cpp names one (PREFIX-00001-of-{count:05d}.gguf), so its other parts "
                             "cannot be found")
    files = [name]
    for part in range(1, count):
        part_name = os.path.join(directory, f"{match['prefix']}-{part + 1:05d}-of-{count:05d}.gguf")
        try:
            reader = _open_reader(part_name, _scan_layout(part_name))
        except ModelFileError as e:
            raise ModelFileError(f"part {part + 1} of {count} of the split model {name}: {e}") from e
        if _split_keys(part_name, reader.fields, part)[0] != count:
            raise ModelFileError(f"{part_name}: its split.count differs from the first part's ({count})")
        for tensor in reader.tensors:
            if tensor.name in tensors:
                raise ModelFileError(f"{part_name}: tensor {tensor.name} is in two parts of the split model")
            tensors[tensor.name] = tensor
        files.append(part_name)
    if total is not None and total != len(tensors):
        raise ModelFileError(f"{name}: split.tensors.count is {total}, the {count} parts hold {len(tensors)}")
    return tuple(files), tensors


def read_config(file: GGUFHeader) -> ModelConfig:
    """Step 3a on a header: the hyper-parameters. Raises ModelFileError or UnsupportedModelError."""
    return _read_config(file.name, file.fields, file.tensors, file.metadata)


def check_weights(file: GGUFHeader, config: ModelConfig) -> Counter:
    """Every tensor's name, shape and type checked against ``config`` without reading weights; returns how
    many matrices of each non-Q8_0 type loading would convert to Q8_0. Raises what loading would raise."""
    wanted = _wanted_tensors(config)
    for tensor_name in file.tensors:
        if tensor_name not in wanted:
            raise UnsupportedModelError(f"{file.name}: tensor {tensor_name} is not part of refspec's "
                                        f"{config.arch} model; refusing to ignore it")
    to_convert = Counter()
    for tensor_name, spec in wanted.items():
        tensor = file.tensors.get(tensor_name)
        if tensor is None:
            if not spec.optional:
                raise ModelFileError(f"{file.name}: tensor {tensor_name} is missing")
            continue
        _check_tensor(file.name, config, tensor_name, spec, tensor)
        if spec.kind == MATRIX and tensor.tensor_type != GGMLQuantizationType.Q8_0:
            _check_convertible(file.name, tensor)
            to_convert[tensor.tensor_type.name] += 1
    return to_convert


def _check_convertible(name: str, tensor) -> None:
    """gguf-py dequantizes this tensor's type (tried on one zero block)."""
    block_bytes = GGML_QUANT_SIZES[tensor.tensor_type][1]
    try:
        with np.errstate(all="ignore"):
            ggml_quants.dequantize(np.zeros((1, block_bytes), np.uint8), tensor.tensor_type)
    except NotImplementedError as e:
        raise UnsupportedModelError(f"{name}: tensor {tensor.name} has type {tensor.tensor_type.name}, which "
                                    "refspec cannot convert to Q8_0") from e


def model_path(path) -> str:
    """``path`` as a str, checked for what cannot name a file (refspec's errors rather than TypeError or
    ValueError from the OS layer)."""
    return checks.path_name(path, "model path")


def _open_regular_file(name: str):
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "config.json")):
        raise ModelFileError(f"{name}: is a directory (a Hugging Face model?), not a model file; {_CONVERT}")
    return checks.open_regular_file(name, "model file", ModelFileError)


_CONVERT = ("refspec reads GGUF files: llama.cpp's convert_hf_to_gguf.py --outtype q8_0 makes one from a Hugging "
            "Face model")


def _other_format_hint(name: str, head: bytes) -> str:
    """What to do with a model file of another format (safetensors, PyTorch), for the 'not a GGUF file' error."""
    if name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt")) or head[:2] == b"PK":  # PK: a PyTorch zip
        return f"; {_CONVERT}"
    return ""


# ---------------------------------------------------------------------------------------------------------
# Step 1: the layout check.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TensorLayout:
    name: str
    ggml_type: GGMLQuantizationType
    ne: tuple[int, ...]  # ggml order, ne0 first
    offset: int  # from the start of the data section
    n_bytes: int


@dataclass(frozen=True)
class _FileLayout:
    data_start: int  # absolute offset of the data section
    tensors: list[_TensorLayout]


class _Cursor:
    """Reads little-endian GGUF header fields from a buffer, refusing to step past its end."""

    def __init__(self, path: str, buf, size: int):
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {what}")

    def need(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.size - self.pos:
            raise self.fail(f"truncated: {what} at byte {self.pos} needs {n_bytes} bytes, the file has "
                            f"{self.size - self.pos} left")

    def unpack(self, fmt: str, what: str) -> int:
        n_bytes = struct.calcsize(fmt)
        self.need(n_bytes, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n_bytes
        return value

    def name(self, what: str) -> str:
        """A key or tensor name: non-empty printable UTF-8 (so that messages naming it stay on one line)."""
        n_bytes = self.unpack("<Q", f"length of {what}")
        self.need(n_bytes, what)
        raw = bytes(self.buf[self.pos:self.pos + n_bytes])
        self.pos += n_bytes
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not valid UTF-8 ({raw[:40]!r})") from e
        if not text or not text.isprintable():
            raise self.fail(f"{what} {text[:40]!r} is empty or holds control characters")
        return text

    def skip_strings(self, count: int, what: str) -> None:
        self.need(8 * count, what)  # each string is at least its 8-byte length
        buf, pos, end = self.buf, self.pos, self.size
        unpack_from = struct.unpack_from
        for i in range(count):
            if pos + 8 > end:
                raise self.fail(f"truncated: string {i} of {what} runs past the end of the file")
            pos += 8 + unpack_from("<Q", buf, pos)[0]
            if pos > end:
                raise self.fail(f"truncated: string {i} of {what} runs past the end of the file")
        self.pos = pos


def _scan_layout(name: str) -> _FileLayout:
    try:
        with _open_regular_file(name) as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(4)
            if magic != b"GGUF":
                raise ModelFileError(f"{name}: not a GGUF file (starts with {magic!r}, expected b'GGUF')"
                                     + _other_format_hint(name, magic + f.read(4)))
            if size < HEADER_BYTES:
                raise ModelFileError(f"{name}: truncated: {size} bytes is too small for a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _scan_header(_Cursor(name, buf, size))
    except OSError as e:
        raise ModelFileError(f"{name}: cannot read the model file ({e.strerror or e})") from e


def _scan_header(cur: _Cursor) -> _FileLayout:
    cur.pos = 4
    version = cur.unpack("<I", "version")
    if version not in GGUF_VERSIONS:
        if int.from_bytes(version.to_bytes(4, "little"), "big") in GGUF_VERSIONS:
            raise UnsupportedModelError(f"{cur.path}: big-endian GGUF files are not supported")
        raise UnsupportedModelError(f"{cur.path}: GGUF version {version} is not supported (only 2 and 3)")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "key/value count")
    room = cur.size - cur.pos
    if (n_kv > MAX_KV_COUNT or n_tensors > MAX_TENSOR_COUNT
            or n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES > room):
        raise cur.fail(f"absurd header: {n_tensors} tensors and {n_kv} key/value pairs cannot fit in "
                       f"{cur.size} bytes")
    alignment = _scan_metadata(cur, n_kv)
    tensors = [_scan_tensor_info(cur) for _ in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    _check_tensor_placement(cur, tensors, data_start, alignment)
    return _FileLayout(data_start=data_start, tensors=tensors)


def _scan_metadata(cur: _Cursor, n_kv: int) -> int:
    """Walks the key/value section; returns the data alignment (general.alignment, default 32)."""
    keys = set()
    alignment = 32
    items = strings = 0  # array items and string array items so far
    for _ in range(n_kv):
        key = cur.name("metadata key")
        if key in keys:
            raise cur.fail(f"metadata key {key} is repeated")
        keys.add(key)
        vtype = _value_type(cur, cur.unpack("<I", f"type of {key}"), key)
        if key == "general.alignment":
            if vtype != GGUFValueType.UINT32:
                raise cur.fail(f"general.alignment has type {vtype.name}, expected UINT32")
            alignment = cur.unpack("<I", key)
            if alignment == 0 or alignment & (alignment - 1):
                raise cur.fail(f"general.alignment {alignment} is not a power of two")
            continue
        n_items, n_strings = _skip_value(cur, vtype, key)
        items, strings = items + n_items, strings + n_strings
        if items > MAX_METADATA_ITEMS:
            raise cur.fail(f"absurd metadata: more than {MAX_METADATA_ITEMS} array items (at {key})")
        if strings > MAX_STRING_ITEMS:
            raise cur.fail(f"absurd metadata: more than {MAX_STRING_ITEMS} strings in arrays (at {key})")
    return alignment


def _value_type(cur: _Cursor, raw: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cur.fail(f"metadata {key}: unknown value type {raw}") from None


def _skip_value(cur: _Cursor, vtype: GGUFValueType, key: str) -> tuple[int, int]:
    """Steps over one value; returns its number of array items and of string array items (0, 0 for a
    scalar or a string)."""
    if vtype == GGUFValueType.STRING:
        n_bytes = cur.unpack("<Q", f"length of {key}")
        cur.need(n_bytes, key)
        cur.pos += n_bytes
        return 0, 0
    if vtype != GGUFValueType.ARRAY:
        cur.need(_SCALAR_BYTES[vtype], key)
        cur.pos += _SCALAR_BYTES[vtype]
        return 0, 0
    item_type = _value_type(cur, cur.unpack("<I", f"item type of {key}"), key)
    count = cur.unpack("<Q", f"length of {key}")
    if item_type == GGUFValueType.ARRAY:
        raise UnsupportedModelError(f"{cur.path}: metadata {key} is an array of arrays")
    if count > MAX_METADATA_ITEMS:
        raise cur.fail(f"absurd metadata: {key} claims {count} items")
    if item_type == GGUFValueType.STRING:
        if key not in VOCAB_STRING_ARRAYS and count > MAX_OTHER_STRING_ITEMS:
            raise cur.fail(f"absurd metadata: {key} holds {count} strings (more than {MAX_OTHER_STRING_ITEMS} "
                           "outside the vocabulary)")
        cur.skip_strings(count, key)
        return count, count
    cur.need(count * _SCALAR_BYTES[item_type], f"{key} ({count} items)")
    cur.pos += count * _SCALAR_BYTES[item_type]
    return count, 0


def _scan_tensor_info(cur: _Cursor) -> _TensorLayout:
    name = cur.name("tensor name")
    n_dims = cur.unpack("<I", f"n_dims of tensor {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {name}: n_dims {n_dims} is not in 1..{MAX_DIMS}")
    ne = tuple(cur.unpack("<Q", f"dims of tensor {name}") for _ in range(n_dims))
    raw_type = cur.unpack("<I", f"type of tensor {name}")
    offset = cur.unpack("<Q", f"offset of tensor {name}")
    if any(d == 0 or d >= 2**63 for d in ne):
        raise cur.fail(f"tensor {name}: dims {list(ne)} must all be in 1..2**63-1")
    try:
        ggml_type = GGMLQuantizationType(raw_type)
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    except (ValueError, KeyError):
        raise UnsupportedModelError(f"{cur.path}: tensor {name} has unknown ggml type {raw_type}") from None
    if ne[0] % block_size:
        raise cur.fail(f"tensor {name}: row length {ne[0]} is not a multiple of the {ggml_type.name} "
                       f"block size {block_size}")
    n_bytes = math.prod(ne) // block_size * type_size  # Python ints: no overflow, checked against the file
    return _TensorLayout(name, ggml_type, ne, offset, n_bytes)


def _check_tensor_placement(cur: _Cursor, tensors: list[_TensorLayout], data_start: int, alignment: int):
    names = set()
    for t in tensors:
        if t.name in names:
            raise cur.fail(f"tensor {t.name} appears twice")
        names.add(t.name)
        if t.offset % alignment:
            raise cur.fail(f"tensor {t.name}: offset {t.offset} is not a multiple of the alignment {alignment}")
        end = data_start + t.offset + t.n_bytes
        if end > cur.size:
            raise cur.fail(f"truncated: tensor {t.name} ({t.ggml_type.name} {list(t.ne)}, {t.n_bytes} bytes) "
                           f"ends at byte {end}, past the end of the file ({cur.size} bytes)")
    previous = None
    for t in sorted(tensors, key=lambda t: t.offset):
        if previous is not None and t.offset < previous.offset + previous.n_bytes:
            raise cur.fail(f"tensors {previous.name} and {t.name} overlap in the file")
        previous = t


# ---------------------------------------------------------------------------------------------------------
# Step 2: gguf-py's reader, on a file whose layout is known to be sound.
# ---------------------------------------------------------------------------------------------------------
class _PlainArrayReader(GGUFReader):
    """GGUFReader over a plain ndarray view of its memory map. np.memmap's per-slice bookkeeping makes
    the reader spend seconds on a 49k-token vocabulary; a plain view of the same pages reads identically."""

    @property
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, mapped: np.ndarray) -> None:
        self._plain_data = mapped.view(np.ndarray)


def _open_reader(name: str, layout: _FileLayout) -> GGUFReader:
    try:
        reader = _PlainArrayReader(name)
    except _READER_ERRORS as e:
        raise ModelFileError(f"{name}: gguf reader failed: {type(e).__name__}: {e}") from e
    mine = [(t.name, t.ggml_type, t.ne, layout.data_start + t.offset, t.n_bytes) for t in layout.tensors]
    theirs = [(t.name, t.tensor_type, tuple(int(d) for d in t.shape), t.data_offset, t.data.nbytes)
              for t in reader.tensors]
    if mine != theirs or reader.data_offset != layout.data_start:
        raise ModelFileError(f"{name}: gguf reader and refspec's header check disagree on the tensor layout")
    return reader


def _field_value(name: str, field):
    """A metadata value as plain Python: str, int, float, bool, or a list of one of them."""
    try:
        main = field.types[0]
        if main == GGUFValueType.STRING:
            return _utf8(name, field.name, field.parts[-1])
        if main != GGUFValueType.ARRAY:
            return field.parts[-1][0].item()
        if len(field.types) == 1:  # empty array
            return []
        if field.types[-1] == GGUFValueType.STRING:
            return [_utf8(name, field.name, field.parts[i]) for i in field.data]
        return np.concatenate([field.parts[i] for i in field.data]).tolist()
    except _READER_ERRORS as e:
        raise ModelFileError(f"{name}: metadata {field.name} cannot be read ({type(e).__name__}: {e})") from e


def _utf8(name: str, key: str, raw: np.ndarray) -> str:
    try:
        return raw.tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{name}: metadata {key} holds a string that is not valid UTF-8") from e


# ---------------------------------------------------------------------------------------------------------
# Metadata alone, without gguf-py's reader: it builds two NumPy views per string, which costs ~30 s for the
# 256k tokens and 253k merges of a Command-R vocabulary; this reads them in about a second.
# ---------------------------------------------------------------------------------------------------------
_ITEM_DTYPES = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.FLOAT64: "<f8", GGUFValueType.BOOL: "?",
}


def read_metadata(path: str | os.PathLike, prefixes: tuple[str, ...] = ("general.", "tokenizer.")) -> dict:
    """The metadata keys starting with one of ``prefixes``, as the same plain Python values ``load`` gives
    (``Model.metadata``), read straight from the file after the layout check of step 1 (so every length has
    been checked first). No tensor is read. Raises ModelFileError."""
    name = model_path(path)
    _scan_layout(name)
    try:
        with _open_regular_file(name) as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(name, buf, os.fstat(f.fileno()).st_size)
            cur.pos = HEADER_BYTES - 8
            metadata = {}
            for _ in range(cur.unpack("<Q", "key/value count")):
                key = cur.name("metadata key")
                vtype = _value_type(cur, cur.unpack("<I", f"type of {key}"), key)
                if key.startswith(prefixes):
                    metadata[key] = _decode_value(cur, vtype, key)
                else:
                    _skip_value(cur, vtype, key)
            return metadata
    except OSError as e:
        raise ModelFileError(f"{name}: cannot read the model file ({e.strerror or e})") from e


def _decode_value(cur: _Cursor, vtype: GGUFValueType, key: str):
    if vtype == GGUFValueType.STRING:
        return _decode_strings(cur, 1, key)[0]
    if vtype != GGUFValueType.ARRAY:
        return _decode_items(cur, vtype, 1, key)[0]
    item_type = _value_type(cur, cur.unpack("<I", f"item type of {key}"), key)
    count = cur.unpack("<Q", f"length of {key}")
    if item_type == GGUFValueType.STRING:
        return _decode_strings(cur, count, key)
    return _decode_items(cur, item_type, count, key)


def _decode_items(cur: _Cursor, item_type: GGUFValueType, count: int, key: str) -> list:
    dtype = np.dtype(_ITEM_DTYPES[item_type])
    cur.need(count * dtype.itemsize, key)
    values = np.frombuffer(cur.buf, dtype, count, cur.pos).tolist()
    cur.pos += count * dtype.itemsize
    return values


def _decode_strings(cur: _Cursor, count: int, key: str) -> list[str]:
    buf, pos, unpack_from = cur.buf, cur.pos, struct.unpack_from
    strings = []
    try:
        for _ in range(count):
            (n_bytes,) = unpack_from("<Q", buf, pos)
            strings.append(buf[pos + 8:pos + 8 + n_bytes].decode("utf-8"))
            pos += 8 + n_bytes
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{cur.path}: metadata {key} holds a string that is not valid UTF-8") from e
    except struct.error as e:  # only if the file shrank after the layout check
        raise ModelFileError(f"{cur.path}: truncated while reading metadata {key}") from e
    cur.pos = pos
    return strings


# ---------------------------------------------------------------------------------------------------------
# Step 3a: hyper-parameters from metadata.
# ---------------------------------------------------------------------------------------------------------
# Keys under {arch}. that refspec does not read. A key whose value is the neutral one listed here leaves the
# model as refspec runs it; any other unread key (logit_scale, attention.clamp_kqv, attention.sliding_window,
# expert_count, *_logit_softcapping, ...) changes the model's function, so the file is refused, as an unknown
# tensor is.
NEUTRAL_KEYS = {
    "expert_count": 0, "expert_used_count": 0,  # 0: a dense model
    "logit_scale": 1.0, "embedding_scale": 1.0, "residual_scale": 1.0,
    "attention.clamp_kqv": 0.0, "attention.sliding_window": 0, "attention.max_alibi_bias": 0.0,
    "attn_logit_softcapping": 0.0, "final_logit_softcapping": 0.0,  # 0: no soft-capping (llama.cpp's reading)
    "attention.causal": True, "use_parallel_residual": False,
    "tensor_data_layout": "Meta AI original pth",  # old llama converters' note on the Q/K row order (the usual)
}


def _read_config(name: str, fields, tensors, metadata) -> ModelConfig:
    md = MetadataReader(metadata, where=f"{name}: ")
    arch = md.string("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"{name}: architecture {arch!r} is not supported "
                                    f"(supported: {', '.join(ARCHITECTURES)})")
    md = MetadataReader({**metadata, **{key: _field_value(name, field) for key, field in fields.items()
                                        if key.startswith(arch + ".")}}, where=f"{name}: ")

    def integer(key, default=REQUIRED):
        return md.integer(f"{arch}.{key}", default)

    n_block = integer("block_count")  # with the nextn blocks, if any
    n_embd = integer("embedding_length")
    n_ff = integer("feed_forward_length")
    n_head = integer("attention.head_count")
    n_head_kv = integer("attention.head_count_kv", n_head)
    _check(name, n_block >= 1 and n_block <= len(tensors), f"{arch}.block_count {n_block} is not in "
           f"1..{len(tensors)} (the file's tensor count)")
    for key, value in (("embedding_length", n_embd), ("feed_forward_length", n_ff),
                       ("attention.head_count", n_head), ("attention.head_count_kv", n_head_kv)):
        _check(name, value >= 1, f"{arch}.{key} is {value}, must be at least 1")
    _check(name, n_head % n_head_kv == 0, f"{arch}.attention.head_count {n_head} is not a multiple of "
           f"head_count_kv {n_head_kv}")
    if fields.get(f"{arch}.attention.key_length") is None:
        _check(name, n_embd % n_head == 0, f"{arch}.embedding_length {n_embd} is not divisible by "
               f"head_count {n_head} (and attention.key_length is absent)")
    head_dim = integer("attention.key_length", n_embd // n_head)
    _check(name, head_dim >= 1, f"{arch}.attention.key_length is {head_dim}, must be at least 1")
    value_length = integer("attention.value_length", head_dim)
    if value_length != head_dim:
        raise UnsupportedModelError(f"{name}: {arch}.attention.value_length {value_length} differs from "
                                    f"key_length {head_dim}")
    n_rot = integer("rope.dimension_count", head_dim)
    _check(name, 0 < n_rot <= head_dim and n_rot % 2 == 0, f"{arch}.rope.dimension_count {n_rot} must be "
           f"even and in 2..head_dim ({head_dim})")
    n_ctx = integer("context_length")
    _check(name, 1 <= n_ctx <= MAX_CONTEXT, f"{arch}.context_length {n_ctx} is not in 1..{MAX_CONTEXT}")
    rope_base = _binary32(_finite_positive(name, md, f"{arch}.rope.freq_base", 10000.0))
    _in_range(name, f"{arch}.rope.freq_base", rope_base, ROPE_BASE_RANGE)
    rope_scaling = _read_rope_scaling(name, arch, md, n_ctx, rope_base)
    if arch == "llama" and "rope_freqs.weight" in tensors:
        rope_scaling = replace(rope_scaling, freq_factors=_read_rope_freqs(name, tensors["rope_freqs.weight"],
                                                                           n_rot))
    rms_eps = float(np.float32(_finite_positive(name, md, f"{arch}.attention.layer_norm_rms_epsilon")))
    _check(name, rms_eps > 0, f"{arch}.attention.layer_norm_rms_epsilon {rms_eps} must be finite and positive "
           "in binary32")
    n_vocab = integer("vocab_size", None)
    tokens = md.strings("tokenizer.ggml.tokens", None)
    if n_vocab is None:
        n_vocab = len(tokens) if tokens is not None else _embedding_rows(name, tensors)
    if tokens is not None:
        _check(name, len(tokens) == n_vocab, f"{arch}.vocab_size {n_vocab} disagrees with the "
               f"{len(tokens)} entries of tokenizer.ggml.tokens")
    _check(name, n_vocab >= 1, f"{arch}.vocab_size is {n_vocab}, must be at least 1")
    hybrid = _read_hybrid(name, md, arch, n_block, n_rot) if arch in HYBRID_ARCHITECTURES else {}
    n_layer = n_block - hybrid.get("n_nextn", 0)
    _refuse_unread_keys(name, arch, md)
    return ModelConfig(arch=arch, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                       n_head_kv=n_head_kv, head_dim=head_dim, n_rot=n_rot, rope_base=rope_base,
                       rms_eps=rms_eps, n_ctx=n_ctx, n_vocab=n_vocab, rope_scaling=rope_scaling,
                       **hybrid)


MAX_SSM_SIZE = 1 << 16  # DeltaNet head counts, head and kernel sizes beyond this are absurd
ROPE_SECTIONS = 4  # qwen35's multi-section RoPE: time, height, width, extra


def _read_hybrid(name: str, md: MetadataReader, arch: str, n_block: int, n_rot: int) -> dict:
    """qwen35's keys: the nextn block count, which layers are Gated DeltaNet, the DeltaNet sizes, and the
    RoPE sections (checked to give every rotated pair the text position)."""
    n_nextn = md.integer(f"{arch}.nextn_predict_layers", 0, lo=0, hi=n_block - 1)
    if n_nextn > MAX_NEXTN:
        raise UnsupportedModelError(f"{name}: {n_nextn} nextn (MTP) blocks; refspec runs at most {MAX_NEXTN}")
    n_layer = n_block - n_nextn
    sizes = {"ssm_d_conv": "ssm.conv_kernel", "ssm_d_state": "ssm.state_size",
             "ssm_n_k_heads": "ssm.group_count", "ssm_n_v_heads": "ssm.time_step_rank"}
    out = {"n_nextn": n_nextn}
    for attr, key in sizes.items():
        out[attr] = md.integer(f"{arch}.{key}", lo=1, hi=MAX_SSM_SIZE)
    _check(name, out["ssm_n_v_heads"] % out["ssm_n_k_heads"] == 0, f"{arch}.ssm.time_step_rank "
           f"{out['ssm_n_v_heads']} (value heads) is not a multiple of ssm.group_count {out['ssm_n_k_heads']}")
    inner = md.integer(f"{arch}.ssm.inner_size")
    if inner != out["ssm_n_v_heads"] * out["ssm_d_state"]:
        raise UnsupportedModelError(f"{name}: {arch}.ssm.inner_size {inner} is not time_step_rank x state_size "
                                    f"({out['ssm_n_v_heads']} x {out['ssm_d_state']}): value and key heads "
                                    "of different sizes are not supported")
    out["recurrent"] = _recurrent_layers(name, md, arch, n_layer, n_block)
    _check_rope_sections(name, arch, md.integers(f"{arch}.rope.dimension_sections"), n_rot)
    return out


def _recurrent_layers(name: str, md: MetadataReader, arch: str, n_layer: int, n_block: int) -> tuple[bool, ...]:
    """attention.recurrent_layers (one flag per block) if present, else every layer but each
    full_attention_interval-th (default 4); nextn blocks are always full attention."""
    key = f"{arch}.attention.recurrent_layers"
    flags = md.flags(key, None, length=n_block)
    interval = md.integer(f"{arch}.full_attention_interval", 4)  # read either way: the list wins
    if flags is not None:
        _check(name, not any(flags[n_layer:]), f"{key} marks a nextn block recurrent")
        return tuple(flags)
    _check(name, 1 <= interval <= n_block, f"{arch}.full_attention_interval {interval} is not in 1..{n_block}")
    return tuple(i < n_layer and (i + 1) % interval != 0 for i in range(n_block))


def _check_rope_sections(name: str, arch: str, sections, n_rot: int) -> None:
    """qwen35 rotates pair i with the position of section (i mod sum) taken in turn (time, height, width;
    the extra section gets position 0). For text, time = height = width = the token's position, so refspec
    runs plain NeoX RoPE; a file whose rotated pairs reach the extra section is refused."""
    key = f"{arch}.rope.dimension_sections"
    _check(name, isinstance(sections, list) and 1 <= len(sections) <= ROPE_SECTIONS
           and all(isinstance(v, int) and 0 <= v <= MAX_SSM_SIZE for v in sections),
           f"{key} must be 1..{ROPE_SECTIONS} non-negative integers, got {str(sections)[:60]}")
    sec = list(sections) + [0] * (ROPE_SECTIONS - len(sections))
    total = sum(sec)
    _check(name, total > 0, f"{key} {sections} are all zero")
    for pair in range(n_rot // 2):
        sector = pair % total
        text = any(sector % 3 == s and sector < 3 * sec[s] for s in range(3))  # interleaved, as ggml's IMROPE
        if not text:
            raise UnsupportedModelError(f"{name}: {key} {sections}: rotated pair {pair} uses the extra section "
                                        "(position 0 for text), which refspec does not implement")


def _finite_positive(name: str, md: MetadataReader, key: str, default=REQUIRED) -> float:
    value = md.number(key, default)
    _check(name, math.isfinite(value) and value > 0, f"{key} {value} must be finite and positive")
    return value


def _refuse_unread_keys(name: str, arch: str, md: MetadataReader) -> None:
    """Every {arch}.* key is read, or holds its neutral value (NEUTRAL_KEYS); anything else changes the model."""
    for key in md.unread(arch + "."):
        value = md.metadata[key]
        if not _is_neutral(value, NEUTRAL_KEYS.get(key[len(arch) + 1:], _NO_VALUE)):
            raise UnsupportedModelError(f"{name}: metadata {key} = {_short(value)} is not implemented by "
                                        f"refspec's {arch} model; refusing to ignore it")


_NO_VALUE = object()


def _is_neutral(value, neutral) -> bool:
    """Same kind (a BOOL is not the number 1) and equal value."""
    if isinstance(value, bool) or isinstance(neutral, bool) or isinstance(value, str) or isinstance(neutral, str):
        return type(value) is type(neutral) and value == neutral
    return isinstance(value, (int, float)) and isinstance(neutral, (int, float)) and value == neutral


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise ModelFileError(f"{name}: {message}")


def _binary32(value: float) -> float:
    """A metadata float as the binary32 value the spec uses (llama.cpp reads them as float too)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _in_range(name: str, key: str, value: float, limits: tuple[float, float]) -> None:
    if not limits[0] <= value <= limits[1]:
        raise UnsupportedModelError(f"{name}: {key} {value} is outside {limits[0]:g}..{limits[1]:g}, the range "
                                    "refspec computes RoPE tables for")


def _read_rope_scaling(name: str, arch: str, md: MetadataReader, n_ctx: int, base: float) -> RopeScaling:
    """The `{arch}.rope.scaling.*` keys as llama.cpp reads them for llama, qwen2 and qwen3 (SPEC.md, "RoPE"):
    the type (absent: linear when a factor is given, as llama.cpp), the factor (0 means none; the old key
    rope.scale_linear when rope.scaling.factor is absent), the attention factor and YaRN's original context."""
    def number(key, default):
        value = md.number(f"{arch}.{key}", default)
        return value if value is None else _binary32(value)

    kind = md.string(f"{arch}.rope.scaling.type", None)
    factor, linear = number("rope.scaling.factor", None), number("rope.scale_linear", None)
    if factor is not None and linear is not None and factor != linear:
        raise UnsupportedModelError(f"{name}: {arch}.rope.scaling.factor {factor} and rope.scale_linear "
                                    f"{linear} disagree")
    factor = next((f for f in (factor, linear) if f is not None), 0.0)
    _check(name, math.isfinite(factor) and factor >= 0, f"{arch}.rope.scaling.factor {factor} must be finite "
           "and not negative")
    factor = factor or 1.0  # 0: not set
    kind = kind if kind is not None else ("none" if factor == 1.0 else "linear")
    if kind not in ROPE_SCALING_TYPES:
        raise UnsupportedModelError(f"{name}: {arch}.rope.scaling.type {kind!r} is not supported (supported: "
                                    f"{', '.join(ROPE_SCALING_TYPES)})")
    if kind == "none" and factor != 1.0:
        raise UnsupportedModelError(f"{name}: {arch}.rope.scaling.type is 'none' but rope.scaling.factor is "
                                    f"{factor}; refspec does not guess which one is meant")
    _in_range(name, f"{arch}.rope.scaling.factor", factor, ROPE_FACTOR_RANGE)
    attn_factor = number("rope.scaling.attn_factor", 1.0)
    _in_range(name, f"{arch}.rope.scaling.attn_factor", attn_factor, ROPE_ATTN_FACTOR_RANGE)
    n_ctx_orig = md.integer(f"{arch}.rope.scaling.original_context_length", n_ctx)
    _check(name, 1 <= n_ctx_orig <= MAX_CONTEXT, f"{arch}.rope.scaling.original_context_length {n_ctx_orig} is "
           f"not in 1..{MAX_CONTEXT}")
    md.boolean(f"{arch}.rope.scaling.finetuned", False)  # a note about training; changes nothing
    for key, neutral in ROPE_IGNORED_KEYS.items():
        value = number(key, neutral)
        if value != neutral:
            raise UnsupportedModelError(f"{name}: {arch}.{key} is {value}; llama.cpp ignores it in {arch} files "
                                        "and HF applies it, so refspec refuses rather than pick one")
    ext_factor = number("rope.scaling.yarn_ext_factor", -1.0)
    if ext_factor not in (-1.0, 1.0 if kind == "yarn" else 0.0):  # -1: unset; YaRN mixes fully, others not
        raise UnsupportedModelError(f"{name}: {arch}.rope.scaling.yarn_ext_factor {ext_factor} is not "
                                    f"supported with {kind!r} scaling")
    if kind != "yarn":
        return RopeScaling(kind=kind, factor=factor, attn_factor=attn_factor)
    _check(name, base > 1.0, f"{arch}.rope.freq_base {base} must exceed 1 for YaRN")
    return RopeScaling(kind=kind, factor=factor, attn_factor=attn_factor, n_ctx_orig=n_ctx_orig)


def _read_rope_freqs(name: str, tensor, n_rot: int) -> tuple[float, ...]:
    """rope_freqs.weight (llama.cpp's name for Llama 3.x's per-pair frequency factors): n_rot/2 values, each
    dividing its pair's angle (SPEC.md, "RoPE")."""
    shape = tuple(int(d) for d in tensor.shape)
    _check(name, shape == (n_rot // 2,), f"tensor rope_freqs.weight has shape {list(shape)}, expected "
           f"[{n_rot // 2}] (rope.dimension_count / 2)")
    if tensor.tensor_type not in VECTOR_TYPES:
        raise UnsupportedModelError(f"{name}: tensor rope_freqs.weight is {tensor.tensor_type.name}; it must be "
                                    "F32, F16 or BF16")
    try:
        values = _vector(name, tensor)
    except _READER_ERRORS as e:
        raise ModelFileError(f"{name}: tensor rope_freqs.weight cannot be loaded ({type(e).__name__}: {e})") from e
    for value in values:
        _in_range(name, "rope_freqs.weight value", float(value), ROPE_FREQ_FACTOR_RANGE)
    return tuple(float(v) for v in values)


def _embedding_rows(name: str, tensors) -> int:
    embd = tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2:
        raise ModelFileError(f"{name}: no vocab_size, tokenizer.ggml.tokens or 2-D token_embd.weight")
    return int(embd.shape[1])


# ---------------------------------------------------------------------------------------------------------
# Step 3b: tensors through the name map; Q8_0 matrices as views of the file, others converted to Q8_0.
# ---------------------------------------------------------------------------------------------------------
def _read_weights(name: str, config: ModelConfig, tensors, log) -> ModelWeights:
    wanted = _wanted_tensors(config)
    converted = check_weights(GGUFHeader(name, {}, {}, tensors), config)
    progress = _load_progress(name, tensors, log)
    to_convert = {n for n, spec in wanted.items()
                  if spec.kind == MATRIX and n in tensors and tensors[n].tensor_type != GGMLQuantizationType.Q8_0}
    # converting an F16 8B model takes a minute or two: progress lines every 10 s of it (none when it is quick)
    conversion = ByteProgress(sum(int(tensors[n].n_bytes) for n in to_convert), "converting to Q8_0", log) \
        if to_convert and progress is None else None

    def take(tensor_name: str):
        spec, tensor = wanted[tensor_name], tensors[tensor_name]
        try:
            if spec.kind == MATRIX:
                value = _matrix(name, tensor)
            else:
                value = _vector(name, tensor).reshape(tuple(getattr(config, a) for a in reversed(spec.shape)))
        except _READER_ERRORS as e:
            raise ModelFileError(f"{name}: tensor {tensor_name} cannot be loaded ({type(e).__name__}: {e})") from e
        if progress is not None:
            progress.advance(int(tensor.n_bytes))
        elif conversion is not None and tensor_name in to_convert:
            conversion.advance(int(tensor.n_bytes))
        return value

    def fields_of(prefix: str, table: dict) -> dict:
        return {spec.field: take(prefix + key) for key, spec in table.items() if prefix + key in tensors}

    tok_embd = take("token_embd.weight")
    output = take("output.weight") if "output.weight" in tensors else tok_embd
    output_norm = take("output_norm.weight")
    layers = [LayerWeights(**fields_of(f"blk.{i}.", LAYER_TENSORS)) for i in range(config.n_block)]
    for lw in layers:
        if lw.ssm_a is not None and not (lw.ssm_a <= 0).all():
            raise ModelFileError(f"{name}: ssm_a holds positive values; the converter stores -exp(A_log) (< 0)")
    mtp = None
    if config.n_nextn:
        own = fields_of(f"blk.{config.n_layer}.", NEXTN_TENSORS)
        mtp = MtpWeights(**{"embed": tok_embd, "head_norm": output_norm, "head": output, **own})
    if converted:
        kinds = ", ".join(f"{n} {t}" if len(converted) > 1 else t for t, n in sorted(converted.items()))
        log(f"refspec: note: converted {sum(converted.values())} matrices ({kinds}) to Q8_0 at load")
    return ModelWeights(tok_embd=tok_embd, layers=layers, output_norm=output_norm, output=output, mtp=mtp)


def _load_progress(name: str, tensors, log) -> ByteProgress | None:
    """For a model larger than memory: a note that it runs from disk, and progress lines while loading reads
    every page once (the scale check)."""
    total = sum(int(t.n_bytes) for t in tensors.values())
    if not larger_than_memory(total):
        return None
    log(f"refspec: note: {name} ({total / 1e9:.1f} GB) is larger than this machine's memory "
        f"({physical_memory() / 1e9:.1f} GB): it runs from the mapped file, reading weights from disk on every "
        "pass (slow)")
    return ByteProgress(total, "loading (checking every Q8_0 scale)", log)


def _wanted_tensors(config: ModelConfig) -> dict[str, TensorSpec]:
    """Every tensor name this config's model has (optional ones included), with its spec."""
    def holds(condition: str, layer: int | None) -> bool:
        if condition == NEXTN:
            return layer is not None and layer >= config.n_layer
        if condition in (ATTENTION, RECURRENT):
            return layer is not None and config.is_recurrent(layer) == (condition == RECURRENT)
        return getattr(config, condition)

    def belongs(spec: TensorSpec, layer: int | None = None) -> bool:
        return all(holds(condition, layer) for condition in spec.needs)

    wanted = {key: spec for key, spec in MODEL_TENSORS.items() if belongs(spec)}
    for i in range(config.n_block):
        for table in (LAYER_TENSORS, NEXTN_TENSORS):
            wanted.update({f"blk.{i}.{key}": spec for key, spec in table.items() if belongs(spec, i)})
    return wanted


def _check_tensor(name: str, config: ModelConfig, tensor_name: str, spec: TensorSpec, tensor) -> None:
    shape = tuple(int(d) for d in tensor.shape)
    expected = tuple(getattr(config, attr) for attr in spec.shape)
    if shape != expected:
        described = ", ".join(f"{attr}={getattr(config, attr)}" for attr in spec.shape)
        raise ModelFileError(f"{name}: tensor {tensor_name} has shape {list(shape)}, metadata says "
                             f"[{described}] (ggml order)")
    if spec.kind == VECTOR and tensor.tensor_type not in VECTOR_TYPES:
        raise UnsupportedModelError(f"{name}: tensor {tensor_name} is {tensor.tensor_type.name}; norm weights "
                                    "and biases must be F32, F16 or BF16")
    if spec.kind == MATRIX and shape[0] % QK8_0:
        raise UnsupportedModelError(f"{name}: tensor {tensor_name} has rows of {shape[0]} values, not a "
                                    f"multiple of {QK8_0} (Q8_0 needs whole blocks)")


def _vector(name: str, tensor) -> np.ndarray:
    values = ggml_quants.dequantize(tensor.data, tensor.tensor_type)  # exact for F32, F16, BF16
    values = np.array(values, dtype=np.float32).reshape(-1)  # a copy: nothing keeps the file mapped
    if not np.isfinite(values).all():
        raise ModelFileError(f"{name}: tensor {tensor.name} holds non-finite values")
    return values


def _matrix(name: str, tensor) -> Q8Matrix:
    """A Q8_0 tensor as a view of the mapped file (no copy); any other type converted to Q8_0 blocks."""
    if tensor.tensor_type == GGMLQuantizationType.Q8_0:
        rows = tensor.data
    else:
        rows = _requantize(name, tensor)
    n = int(tensor.shape[1])
    matrix = Q8Matrix(blocks=rows.reshape(n, -1).view(Q8_0_BLOCK))
    if not _scales_finite(matrix.blocks):
        raise ModelFileError(f"{name}: tensor {tensor.name} has non-finite Q8_0 scales (values out of fp16 "
                             "range, infinities or NaNs)")
    return matrix


def _scales_finite(blocks: np.ndarray) -> bool:
    """Whether every fp16 scale is finite: exponent bits not all ones. Read as integers a slab of rows at a
    time (a strided pass over the mapped file, the only time loading touches every page)."""
    bits = blocks.view(_SCALE_BITS)["d"]
    step = max(1, CHECK_BYTES // max(1, blocks.strides[0]))
    return not any(np.any(bits[i : i + step] & F16_EXPONENT == F16_EXPONENT) for i in range(0, len(bits), step))


def _requantize(name: str, tensor) -> np.ndarray:
    """Any other type -> float32 -> Q8_0 blocks [N, K/32*34], with gguf-py's reference (de)quantizers.

    gguf-py works on 16 rows per numpy call. Blocks are independent, so joining whole rows into lines of
    about LINE_VALUES values gives the same bytes with fewer, larger calls (1.5x faster on the default model)."""
    k, n = (int(d) for d in tensor.shape)
    rows_per_line = max(1, LINE_VALUES // k)
    while n % rows_per_line:
        rows_per_line -= 1
    lines = tensor.data.reshape(n // rows_per_line, -1)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN -> int8 casts; caught by the scale check
            values = ggml_quants.dequantize(lines, tensor.tensor_type)
            return ggml_quants.quantize(values, GGMLQuantizationType.Q8_0).reshape(n, -1)
    except NotImplementedError as e:
        raise UnsupportedModelError(f"{name}: tensor {tensor.name} has type {tensor.tensor_type.name}, which "
                                    "refspec cannot convert to Q8_0") from e
