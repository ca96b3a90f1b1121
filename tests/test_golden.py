"""Golden files (`refspec dump`): what they hold, that it is what the forward pass computes, and that
anything else is refused with one line."""
import hashlib
import os
import stat
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from refspec import golden
from refspec.backends import CpuBackend
from refspec.errors import GoldenFileError, UsageError
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.spec import SPEC_VERSION
from refspec.synthetic import write_model

from bits import assert_bits_equal


def refspec(*args):
    return subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("golden") / "tiny.gguf", arch="llama", n_ctx=80, seed=11,
                       n_layer=3, n_embd=64, n_ff=96, n_head=4, n_head_kv=2)


@pytest.fixture(scope="module")
def full_dump(model_path):
    return golden.dump(model_path, [3, 40, 7, 99, 12], 6, layers=True, device="cpu")


def test_dump_rows_are_what_single_steps_compute_and_greedy_chose(model_path, full_dump):
    tf = Transformer(load(model_path, log=lambda m: None), CpuBackend())
    ids = full_dump.token_ids.tolist()
    assert len(ids) == 11 and ids[:5] == [3, 40, 7, 99, 12] and full_dump.n_prompt == 5
    cache = tf.new_cache(len(ids))
    for pos, token in enumerate(ids):
        assert_bits_equal(full_dump.logits[pos], tf.forward(cache, [token], pos)[0], f"position {pos}")
    for pos in range(4, len(ids) - 1):  # each generated token is the argmax of the row before it
        assert ids[pos + 1] == int(np.argmax(full_dump.logits[pos]))


def test_dump_names_every_layer_tensor_in_forward_order(full_dump):
    assert list(full_dump.tensors) == golden.tensor_names(3)
    for name, t in full_dump.tensors.items():
        assert t.dtype == np.float32 and t.shape[0] == 11, name
    assert full_dump.tensors["kqv_out-1"].shape == (11, 64) and full_dump.logits.shape[1] > 256


def test_file_round_trip_keeps_bits_and_metadata(model_path, full_dump, tmp_path):
    path = tmp_path / "g.safetensors"
    size = golden.save(full_dump, path)
    back = golden.load(path)
    assert size == path.stat().st_size
    assert back.token_ids.tolist() == full_dump.token_ids.tolist()
    for name in full_dump.tensors:
        assert_bits_equal(back.tensors[name], full_dump.tensors[name], name)
    meta = back.metadata
    assert meta["model_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert meta["spec_version"] == SPEC_VERSION and meta["engine"] == "refspec" and meta["format"] == golden.FORMAT
    assert meta["n_prompt"] == "5" and meta["n_layer"] == "3" and meta["arch"] == "llama"


def test_cli_dump_ids_and_ids_from_give_the_same_bits(model_path, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    proc = refspec("dump", "-m", str(model_path), "--ids", "3,40,7", "-n", "4", "-o", str(a), "--device", "cpu",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["positions"] == 7 and summary["n_prompt"] == 3 and summary["tensors"] == 1
    proc = refspec("dump", "-m", str(model_path), "--ids-from", str(a), "-o", str(b), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    ga, gb = golden.load(a), golden.load(b)
    assert gb.token_ids.tolist() == ga.token_ids.tolist() and gb.n_prompt == 3
    assert_bits_equal(gb.logits, ga.logits, "teacher-forced logits")


@pytest.mark.parametrize("args, message", [
    (["--ids", "3,x"], "token id 'x' is not an integer"),
    (["--ids", "3,100000"], "token id 100000 is outside the vocabulary"),
    (["--ids", ","], "no token ids given"),
    (["--ids", "3", "-n", "-2"], "-n must be"),
    (["--ids", "3", "-n", "500"], "context"),
    (["--ids", "3", "-o", "/nonexistent/dir/g.safetensors"], "cannot write"),
    (["--ids-from", "/nonexistent.safetensors"], "cannot read the golden file (No such file or directory)"),
])
def test_cli_dump_bad_input_is_one_line(model_path, tmp_path, args, message):
    if "-o" not in args:
        args = args + ["-o", str(tmp_path / "out.safetensors")]
    proc = refspec("dump", "-m", str(model_path), "--device", "cpu", *args)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refspec: error: ") and message in lines[0], proc.stderr


def _write(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


GOOD_META = {"format": golden.FORMAT, "format_version": golden.FORMAT_VERSION, "n_prompt": "2"}
IDS = np.array([1, 2, 3], np.int32)
LOGITS = np.zeros((3, 10), np.float32)


@pytest.mark.parametrize("tensors, metadata, message", [
    ({"token_ids": IDS, "result_output": LOGITS}, {}, "not a golden file"),
    ({"token_ids": IDS}, GOOD_META, "needs the tensors"),
    ({"token_ids": IDS.astype(np.int64), "result_output": LOGITS}, GOOD_META, "int32 vector"),
    ({"token_ids": IDS, "result_output": LOGITS[:2]}, GOOD_META, "one row per token"),
    ({"token_ids": IDS, "result_output": LOGITS.astype(np.float16)}, GOOD_META, "must be float32"),
    ({"token_ids": IDS, "result_output": LOGITS}, {**GOOD_META, "n_prompt": "9"}, "n_prompt"),
])
def test_files_that_are_not_golden_are_refused(tmp_path, tensors, metadata, message):
    path = _write(tmp_path / "x.safetensors", tensors, metadata)
    with pytest.raises(GoldenFileError, match=message):
        golden.load(path)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 8 + b"{}",
                                     (2**60).to_bytes(8, "little") + b"{}"])
def test_garbage_is_refused(tmp_path, content):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(GoldenFileError, match="not a readable safetensors"):
        golden.load(path)


def test_parse_ids_accepts_common_spellings():
    from refspec.prompt_input import parse_ids

    assert parse_ids("1,2, 3", 4) == parse_ids("[1, 2, 3]", 4) == parse_ids("1 2 3", 4) == [1, 2, 3]
    for bad, message in (("1.5", "'1.5' is not an integer"), ("1,4", "4 is outside the vocabulary (0..3)"),
                         (" ", "no token ids"), ("[]", "no token ids"), (" ,", "no token ids"), (",1", "an empty token id between commas"),
                         ("1,,2", "an empty token id"), ("1,2,", "an empty token id"),
                         ("[[1]]", "'[1]' is not an integer"), ("1 [2]", "'[2]' is not an integer")):
        with pytest.raises(UsageError, match=re.escape(message)):
            parse_ids(bad, 4)


def test_a_failed_save_leaves_no_partial_file_and_the_old_one_intact(tmp_path, full_dump, monkeypatch):
    import safetensors.numpy

    path = tmp_path / "g.safetensors"
    golden.save(full_dump, path)
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # some of it, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    with pytest.raises(UsageError, match="cannot write .*No space left on device"):
        golden.save(full_dump, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors"] and path.read_bytes() == before
    monkeypatch.undo()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # (not /dev/null: run as root, a regression would replace the machine's /dev/null)
    with pytest.raises(UsageError, match="exists and is not a regular file"):
        golden.save(full_dump, fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_dump_refuses_a_path_that_is_not_a_regular_file_before_running(tmp_path, model_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = refspec("dump", "-m", str(model_path), "-p", "hi", "-o", str(fifo), "--device", "cpu")
    assert proc.returncode == 1 and proc.stderr.strip() == f"refspec: error: cannot write {fifo}: it exists and is " \
                                                           "not a regular file"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_reading_a_fifo_or_device_as_a_golden_file_is_one_line_not_a_hang(tmp_path, model_path):
    """safetensors opened a FIFO and waited for a writer inside Rust, where no SIGTERM reached it: `refspec
    compare fifo fifo` could only be killed. Now anything but a regular file is refused before it is opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args, what in ((["compare", str(fifo), str(fifo)], f"{fifo}: is a FIFO, not a golden file"),
                       (["dump", "-m", str(model_path), "--ids-from", str(fifo), "-o", str(tmp_path / "g")],
                        f"{fifo}: is a FIFO, not a golden file"),
                       (["compare", "/dev/zero", str(fifo)], "/dev/zero: is a character device, not a golden file"),
                       (["compare", str(tmp_path), str(fifo)], f"{tmp_path}: is a directory, not a golden file")):
        proc = subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 1 and proc.stderr.strip() == f"refspec: error: {what}", proc.stderr
    with pytest.raises(GoldenFileError, match="is a FIFO"):
        golden.load(fifo)


def test_dump_takes_prompts_as_generate_does(tmp_path, model_path):
    """-f FILE, -p - and --chat (with -sys) give the ids generate runs for the same arguments."""
    def dumped(*args, stdin=None):
        out = tmp_path / "g.safetensors"
        proc = subprocess.run([sys.executable, "-m", "refspec.cli", "dump", "-m", str(model_path), *args, "-o",
                               str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300, input=stdin)
        assert proc.returncode == 0, proc.stderr
        return golden.load(out).token_ids.tolist()

    def generated(*args):
        proc = subprocess.run([sys.executable, "-m", "refspec.cli", "generate", "-m", str(model_path), *args, "-n", "1",
                               "--json", "--device", "cpu"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["prompt_ids"]

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("two words", encoding="utf-8")
    assert dumped("-f", str(prompt)) == dumped("-p", "two words") == dumped("-p", "-", stdin="two words")
    chat = dumped("--chat", "-p", "two words", "-sys", "be brief")
    assert chat == generated("--chat", "-p", "two words", "-sys", "be brief") != dumped("-p", "two words")
    for args, message in ((["--chat", "--ids", "1,2"], "--chat takes the prompt as text"),
                          (["-p", "x", "-sys", "y"], "-sys/--system-prompt needs --chat")):
        proc = refspec("dump", "-m", str(model_path), *args, "-o", str(tmp_path / "x.safetensors"))
        assert proc.returncode == 1 and message in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_dump_reports_progress_through_both_passes(model_path):
    seen = []
    golden.dump(model_path, list(range(3, 60)), 4, device="cpu", on_progress=lambda *a: seen.append(a))
    # the prompt's pass in generate's 64-row chunks, then the teacher-forced pass over all 61 positions
    assert seen[0] == (57, 57) and seen[-1] == (61, 61) and all(done <= total for done, total in seen)
    with pytest.raises(UsageError, match="on_progress must be callable"):
        golden.dump(model_path, [1, 2], 0, device="cpu", on_progress="yes")
