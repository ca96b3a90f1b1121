"""Split models (llama.cpp's gguf-split: NAME-00001-of-0000N.gguf with split.* keys): loaded from the first part
as llama.cpp loads them, the same bits as the whole file, and every inconsistency among the parts one error."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from refspec import golden
from refspec.backends import CpuBackend
from refspec.errors import ModelFileError
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.model_info import describe
from refspec.synthetic import write_model

from bits import assert_bits_equal


def write_gguf(path, arch, fields: dict, tensors, *, keys=None, **writer_options) -> None:
    """A GGUF at `path` with gguf-py's writer: `fields` (gguf-py ReaderFields by key, copied as they are), then
    `keys` ({key: (value, GGUFValueType)}, None to leave a key out), then `tensors` (ReaderTensors).
    `arch` None: no general.architecture (a later part of a split model has none)."""
    writer = GGUFWriter(str(path), arch or "llama", **writer_options)
    if arch is None:
        writer.kv_data[0].pop("general.architecture", None)
    keys = keys or {}
    for key, field in fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture" and key not in keys:
            sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    for key, (value, vtype) in keys.items():
        if value is not None:
            writer.add_key_value(key, value, vtype)
    for tensor in tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_split(src, directory, max_tensors: int, *, prefix: str = "m", part_keys=None) -> list:
    """The GGUF `src` as gguf-py's writer splits it (at most `max_tensors` tensors a part), into `directory`;
    part_keys {part: {key: (value, type)}} overrides keys of a part (0-based) after the writer's. Returns the
    parts' paths in order."""
    reader = GGUFReader(src)
    write_gguf(os.path.join(directory, f"{prefix}.gguf"), reader.fields["general.architecture"].contents(),
               reader.fields, reader.tensors, split_max_tensors=max_tensors)
    parts = sorted(str(p) for p in directory.glob(f"{prefix}-*-of-*.gguf"))
    for part, keys in (part_keys or {}).items():
        rewrite(parts[part], keys=keys)
    return parts


def rewrite(path, *, keys=None, more_tensors=()) -> None:
    """The GGUF at `path` rewritten in place with `keys` set and `more_tensors` appended."""
    reader = GGUFReader(path)
    arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else None
    write_gguf(str(path) + ".tmp", arch, reader.fields, list(reader.tensors) + list(more_tensors), keys=keys)
    os.replace(str(path) + ".tmp", path)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    return str(write_model(tmp_path_factory.mktemp("split") / "whole.gguf", arch="qwen2", n_layer=3, n_ctx=64,
                           seed=5))


@pytest.fixture(scope="module")
def parts(whole, tmp_path_factory):
    return write_split(whole, tmp_path_factory.mktemp("parts"), 12)


def refspec(*args):
    return subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True, timeout=300)


def test_the_writer_split_the_model_as_gguf_split_does(whole, parts):
    assert len(parts) >= 3 and [p.rsplit("-", 3)[-3:] for p in parts][0] == ["00001", "of", f"{len(parts):05d}.gguf"]
    later = GGUFReader(parts[1]).fields
    assert "general.architecture" not in later and later["split.no"].contents() == 1  # only split keys there


def test_a_split_model_computes_the_bits_of_the_whole_file(whole, parts):
    one, split = load(whole, log=lambda m: None), load(parts[0], log=lambda m: None)
    assert split.files == tuple(parts) and one.files == (whole,) and split.config == one.config
    ids = [5, 17, 3, 99, 41, 8]
    a, b = (Transformer(m, CpuBackend()) for m in (one, split))
    assert_bits_equal(a.forward(a.new_cache(8), ids, 0), b.forward(b.new_cache(8), ids, 0), "logits")
    out = json.loads(refspec("generate", "-m", parts[0], "-p", "abc", "-n", "5", "--json", "--device", "cpu").stdout)
    assert out["ids"] == json.loads(refspec("generate", "-m", whole, "-p", "abc", "-n", "5", "--json",
                                            "--device", "cpu").stdout)["ids"]


def test_info_and_golden_files_count_every_part(whole, parts, tmp_path):
    info = describe(parts[0])
    assert info["files"] == len(parts) and "files" not in describe(whole)
    assert info["file_bytes"] == sum(os.path.getsize(p) for p in parts)
    assert info["n_tensors"] == describe(whole)["n_tensors"] and info["refspec_would"].startswith("load as is")
    dumped = golden.dump(parts[0], [1, 2, 3], 1, device="cpu")
    digest = hashlib.sha256(b"".join(open(p, "rb").read() for p in parts)).hexdigest()
    assert dumped.metadata["model_sha256"] == digest


def test_llama_cpp_reads_the_same_split_model(whole, parts):
    pytest.importorskip("llama_cpp")
    from refspec import llamacpp

    split, one = llamacpp.dump(parts[0], [1, 2, 3], 2), llamacpp.dump(whole, [1, 2, 3], 2)
    assert_bits_equal(split.tensors["result_output"], one.tensors["result_output"], "llama.cpp logits")


def copy_parts(parts, directory, **renames) -> list:
    out = []
    for part in parts:
        target = directory / renames.get(os.path.basename(part), os.path.basename(part))
        shutil.copy(part, target)
        out.append(str(target))
    return out


def test_a_later_part_or_a_renamed_first_part_is_one_error(parts, tmp_path):
    with pytest.raises(ModelFileError, match=r"part 2 of a model split in \d+ files; load its first part"):
        load(parts[1])
    first = os.path.basename(parts[0])
    renamed = copy_parts(parts, tmp_path, **{first: "model.gguf"})
    with pytest.raises(ModelFileError, match="not named as llama.cpp names one"):
        load(str(tmp_path / "model.gguf"))
    assert len(renamed) == len(parts)


def test_a_missing_part_is_named(parts, tmp_path):
    copied = copy_parts(parts, tmp_path)
    os.remove(copied[-1])
    proc = refspec("generate", "-m", copied[0], "-p", "hi", "--device", "cpu")
    count = len(parts)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"refspec: error: part {count} of {count} of the split model {copied[0]}: {copied[-1]}: cannot read the "
        "model file (No such file or directory)")


U16, I32 = GGUFValueType.UINT16, GGUFValueType.INT32


@pytest.mark.parametrize("part_keys, fragment", [
    ({1: {"split.no": (2, U16)}}, "says it is part 3 of its split model, its name part 2"),
    ({1: {"split.count": (9, U16)}}, "its split.count differs from the first part's"),
    ({0: {"split.tensors.count": (7, I32)}}, "split.tensors.count is 7"),
    ({0: {"split.count": (0, U16)}}, "split.count is 0"),
    ({0: {"split.count": ("3", GGUFValueType.STRING)}}, "split.count"),
    ({0: {"split.count": (70000, GGUFValueType.UINT32)}}, "split.count is 70000"),
])
def test_parts_that_disagree_are_refused(whole, tmp_path, part_keys, fragment):
    parts = write_split(whole, tmp_path, 12, part_keys=part_keys)
    with pytest.raises(ModelFileError) as info:
        load(parts[0], log=lambda m: None)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_tensor_in_two_parts_is_refused(whole, tmp_path):
    parts = write_split(whole, tmp_path, 12)
    repeated = GGUFReader(parts[1]).tensors[0]
    rewrite(parts[0], more_tensors=[repeated])
    with pytest.raises(ModelFileError, match=f"tensor {repeated.name} is in two parts of the split model"):
        load(parts[0], log=lambda m: None)
