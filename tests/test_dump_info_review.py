"""`refspec dump` and `refspec info` where they used to mislead: -o naming the model (or --ids-from's file),
the padding token id, the chat template info shows against the one generate uses, --kv-cache with refspec's
own engine, and -o on a file system that holds no files. Run as a user would (a subprocess), on a tiny
synthetic model."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue

from refspec.chat_template import CHATML_TEMPLATE
from refspec.model_info import describe
from refspec.synthetic import CHAT_TEMPLATE, rewrite_gguf, write_model
from conftest import one_line_error


def refspec(*args):
    return subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True, timeout=300)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_model(tmp_path_factory.mktemp("review") / "tiny.gguf", arch="qwen2", n_layer=1, n_ctx=64,
                           seed=3))


# --- 1. dump -o never replaces what the run reads ---------------------------------------------------------
def test_dump_refuses_to_write_over_the_model(model, tmp_path):
    copy = tmp_path / "m.gguf"
    shutil.copy(model, copy)
    before = sha256(copy)
    os.link(copy, tmp_path / "hard.gguf")
    os.symlink(copy, tmp_path / "soft.gguf")
    for output in (str(copy), "./m.gguf", "hard.gguf", "soft.gguf"):
        proc = subprocess.run([sys.executable, "-m", "refspec.cli", "dump", "-m", str(copy), "-o", output, "-p", "hi",
                               "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert one_line_error(proc) == f"refspec: error: -o {output} is the model file itself; name another output file"
        assert sha256(copy) == before


def test_dump_refuses_to_write_over_its_ids_from_file(model, tmp_path):
    first = str(tmp_path / "g.safetensors")
    assert refspec("dump", "-m", model, "-p", "hi", "-o", first, "--device", "cpu").returncode == 0
    before = sha256(first)
    line = one_line_error(refspec("dump", "-m", model, "--ids-from", first, "-o", first, "--device", "cpu"))
    assert line == f"refspec: error: -o {first} is the --ids-from file itself; name another output file"
    assert sha256(first) == before


# --- 2. info shows the padding token id --------------------------------------------------------------------
def test_info_shows_the_padding_token_id(model, tmp_path):
    padded = tmp_path / "pad.gguf"
    rewrite_gguf(model, padded, metadata={"tokenizer.ggml.padding_token_id": 7})  # the standard key (gguf-py's)
    assert describe(padded)["pad_id"] == 7
    assert json.loads(refspec("info", "-m", str(padded), "--json").stdout)["pad_id"] == 7
    assert "pad_id: 7 " in refspec("info", "-m", str(padded)).stdout  # (then the token's text)


# --- 3. info --template says what generate --chat does ------------------------------------------------------
def chat_prompt_ids(path) -> list[int]:
    proc = refspec("generate", "-m", str(path), "--chat", "-p", "hi", "-n", "1", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["prompt_ids"]


def test_an_empty_template_is_chatml_for_info_and_generate(model, tmp_path):
    empty, chatml = tmp_path / "empty.gguf", tmp_path / "chatml.gguf"
    rewrite_gguf(model, empty, metadata={"tokenizer.chat_template": ""})
    rewrite_gguf(model, chatml, metadata={"tokenizer.chat_template": CHATML_TEMPLATE})
    assert CHAT_TEMPLATE != CHATML_TEMPLATE  # (so that the file's own template and ChatML can be told apart)
    proc = refspec("info", "-m", str(empty), "--template")
    assert proc.returncode == 0 and proc.stdout == CHATML_TEMPLATE + "\n" and "ChatML" in proc.stderr
    assert json.loads(refspec("info", "-m", str(empty), "--json").stdout)["chat_template"] is False
    assert chat_prompt_ids(empty) == chat_prompt_ids(chatml)  # generate --chat: ChatML too
    assert refspec("info", "-m", model, "--template").stdout == CHAT_TEMPLATE + "\n"


@pytest.mark.parametrize("value, kind", [
    (GGUFValue(7, GGUFValueType.INT32), "an integer"),
    (GGUFValue(["a", "b"], GGUFValueType.ARRAY, GGUFValueType.STRING), "an array of strings"),
])
def test_a_template_that_is_not_text_is_refused_by_info_as_by_generate(model, tmp_path, value, kind):
    odd = tmp_path / "odd.gguf"
    rewrite_gguf(model, odd, metadata={"tokenizer.chat_template": value})
    info = one_line_error(refspec("info", "-m", str(odd), "--template"))
    generate = one_line_error(refspec("generate", "-m", str(odd), "--chat", "-p", "hi", "-n", "1", "--device", "cpu"))
    assert info == generate == f"refspec: error: metadata tokenizer.chat_template is {kind}, expected a string"


# --- 4. dump: --kv-cache with refspec's engine, -o where no file can be --------------------------------------
def test_kv_cache_with_refspecs_engine_is_noted_as_ignored(model, tmp_path):
    note = ("refspec: note: --kv-cache f32 ignored: it sets the KV cache type of --engine llama.cpp; refspec's own "
            "engine keeps K and V in float32 (refspec/SPEC.md)")
    proc = refspec("dump", "-m", model, "-p", "hi", "-o", str(tmp_path / "g.safetensors"), "--device", "cpu",
                   "--kv-cache", "f32")
    assert proc.returncode == 0 and note in proc.stderr.splitlines(), proc.stderr
    plain = refspec("dump", "-m", model, "-p", "hi", "-o", str(tmp_path / "h.safetensors"), "--device", "cpu")
    assert plain.returncode == 0 and "--kv-cache" not in plain.stderr


@pytest.mark.skipif(not (os.path.isdir("/proc") and shutil.disk_usage("/proc").total == 0),
                    reason="needs /proc, a file system that holds no files")
def test_dump_to_a_file_system_that_holds_no_files_is_one_line(model):
    line = one_line_error(refspec("dump", "-m", model, "-p", "hi", "-o", "/proc/g.safetensors", "--device", "cpu"))
    assert line == "refspec: error: cannot write /proc/g.safetensors: /proc is on a file system that holds no files"


def test_device_with_llamacpps_engine_is_noted_as_ignored(model, tmp_path):
    """The note comes before llama.cpp is imported or the model loads: it is there whether or not llama-cpp-python
    is installed."""
    proc = refspec("dump", "-m", model, "-p", "hi", "-o", str(tmp_path / "g.safetensors"), "--engine", "llama.cpp",
                   "--device", "gpu")
    assert ("refspec: note: --device gpu ignored: --engine llama.cpp runs on the CPU (n_gpu_layers 0)"
            in proc.stderr.splitlines()), proc.stderr
    plain = refspec("dump", "-m", model, "-p", "hi", "-o", str(tmp_path / "h.safetensors"), "--engine", "llama.cpp")
    assert "--device" not in plain.stderr
