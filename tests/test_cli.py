"""The `refspec` command line, run as a user would run it (a subprocess), on a tiny synthetic model."""
import ast
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from refspec.synthetic import write_model
from conftest import one_line_error


def refspec(*args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_model(tmp_path_factory.mktemp("cli") / "tiny.gguf", arch="qwen2", n_ctx=64, seed=3))


def test_generate_json_is_one_object_on_stdout(model):
    proc = refspec("generate", "-m", model, "-p", "hello world", "-n", "6", "--json", "--device", "cpu")
    out = json.loads(proc.stdout)  # exactly one JSON document and nothing else
    assert set(out) == {"prompt_ids", "ids", "text", "stop_reason", "stats"}
    assert out["stop_reason"] in ("eog", "max_tokens")
    assert 1 <= len(out["ids"]) <= 6 and out["prompt_ids"]
    assert {"tokens_per_second", "n_tokens", "n_passes"} <= set(out["stats"])
    assert out["stats"]["n_tokens"] == len(out["ids"])


def test_no_graphs_gives_the_same_ids(model):
    """--no-graphs (which a failed graph capture's message points to) runs and changes no token."""
    args = ("generate", "-m", model, "-p", "abcabcabc", "-n", "8", "--json", "--draft", "ngram")
    assert json.loads(refspec(*args, "--no-graphs").stdout)["ids"] == json.loads(refspec(*args).stdout)["ids"]


@pytest.mark.parametrize("draft", ["ngram", "layerskip"])
def test_speculative_generate_gives_greedy_ids(model, draft):
    greedy = json.loads(refspec("generate", "-m", model, "-p", "abcabcabc", "-n", "12", "--json").stdout)
    spec = json.loads(refspec("generate", "-m", model, "-p", "abcabcabc", "-n", "12", "--json",
                              "--draft", draft, "--draft-max", "4").stdout)
    assert spec["ids"] == greedy["ids"] and spec["text"] == greedy["text"]
    assert {"n_drafted", "n_accepted", "n_passes", "tokens_per_second"} <= set(spec["stats"])


def test_speculative_report_counts_passes_by_drafts_accepted(model):
    args = ("generate", "-m", model, "-p", "abcabcabc", "-n", "12", "--draft", "layerskip", "--draft-max", "40")
    stats = json.loads(refspec(*args, "--json").stdout)["stats"]
    line = next(line for line in refspec(*args).stderr.splitlines() if "verify passes by drafts accepted" in line)
    passes = ast.literal_eval(line.split("verify passes by drafts accepted ")[1])
    assert passes == {n: c for n, c in enumerate(stats["accepted_histogram"]) if c} and all(passes.values())
    assert sum(n * c for n, c in passes.items()) == stats["n_accepted"]


def test_generate_streams_text_and_reports_on_stderr(model):
    proc = refspec("generate", "-m", model, "-p", "hello", "-n", "4")
    assert "tokens/s" in proc.stderr and "refspec:" in proc.stderr
    as_json = json.loads(refspec("generate", "-m", model, "-p", "hello", "-n", "4", "--json").stdout)
    assert proc.stdout == as_json["text"] + "\n"


def test_tokenize_json_and_special_tokens(model):
    out = json.loads(refspec("tokenize", "-m", model, "<|im_start|>ab", "--json").stdout)
    assert out["ids"][0] == 1 and len(out["ids"]) >= 2  # the control token is one id; no BOS added


def test_info_reads_metadata(model):
    info = json.loads(refspec("info", "-m", model, "--json").stdout)
    assert info["architecture"] == "qwen2" and info["n_layer"] == 2 and info["n_ctx"] == 64


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "argument -n/--n-predict/--predict: '0': -n must be a positive number of tokens"),
    (["-n", "1000"], "context length"),
    (["--device", "gpu"], ""),  # no GPU on CI: a clear DeviceError (where one exists, generation succeeds)
])
def test_bad_requests_give_one_line_errors(model, args, message):
    proc = refspec("generate", "-m", model, "-p", "hi", *args, check=False)
    if args[0] == "--device" and proc.returncode == 0:
        return
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("refspec: error: ") and message in lines[-1]
    assert "Traceback" not in proc.stderr


def test_bad_model_files_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    for path in (str(junk), str(tmp_path / "missing.gguf")):
        proc = refspec("info", "-m", path, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("refspec: error: ")


def test_help_explains_every_command():
    text = refspec("--help").stdout
    for command in ("generate", "tokenize", "info", "bench"):
        assert command in text
    gen = refspec("generate", "--help").stdout
    for option in ("--draft", "--draft-max", "--device", "--chat", "--json", "-n"):
        assert option in gen


def test_python_dash_m_refspec_is_the_command(model):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "refspec", *args], capture_output=True, text=True, timeout=300)

    assert run("--version").stdout.startswith("refspec ")
    assert json.loads(run("tokenize", "-m", model, "ab", "--json").stdout) == \
        json.loads(refspec("tokenize", "-m", model, "ab", "--json").stdout)
    bad = run("generate", "-m", model, "-n", "0", "-p", "x")
    assert bad.returncode == 1 and bad.stderr.startswith("refspec: error: ")


def test_synthetic_writes_a_model_info_reads(tmp_path):
    path = tmp_path / "made.gguf"
    proc = refspec("synthetic", str(path), "--arch", "qwen3", "--n-layer", "3", "--n-embd", "96", "--n-head", "3",
                   "--n-head-kv", "1", "--n-ff", "64")
    assert proc.stdout.strip() == str(path)
    info = json.loads(refspec("info", "-m", str(path), "--json").stdout)
    assert (info["architecture"], info["n_layer"], info["n_embd"], info["n_head"], info["n_head_kv"]) == ("qwen3", 3, 96, 3, 1)


@pytest.mark.parametrize("args, fragment", [
    (["generate", "-p", "x", "-f", "y"], "argument -f/--file: not allowed with argument -p/--prompt"),
    (["generate", "-p", "x", "-n", "-5"], "'-5': -n must be a positive number of tokens, or -1"),
    (["generate", "-p", "x", "-n", "-2"], "'-2': -n must be"),
    (["generate", "-p", "x", "-n", "2.5"], "'2.5' is not an integer"),
    (["generate", "-p", "x", "--draft-max", "1099511627776"], "--draft-max: '1099511627776' is not in 1..64"),
    (["generate", "-p", "x", "--draft-max", "0"], "--draft-max: '0' is not in 1..64"),
    (["generate", "-p", "x", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["info", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["bench"], "required: BENCH"),
    (["tokenize", "hi", "--add-bos", "--no-bos"], "argument --no-bos: not allowed with argument --add-bos"),
])
def test_command_line_errors_are_one_line_and_status_1(args, fragment):
    line = one_line_error(refspec(*args, check=False))
    assert fragment in line and "--help" in line


def test_bad_model_paths_are_refused_before_opening(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    for path, fragment in (("", "the model path is empty"), (str(tmp_path), "is a directory"),
                           (str(fifo), "is a FIFO"), ("/dev/zero", "is a character device")):
        assert fragment in one_line_error(refspec("info", "-m", path, check=False, timeout=60))


def test_synthetic_arguments_are_validated(tmp_path):
    cases = [(["--n-layer", "-1"], "n_layer"), (["--seed", "-1"], "seed"), (["--n-ctx", "0"], "n_ctx"),
             (["--eps", "nan"], "eps"), (["--rope-base", "-1"], "rope_base"), (["--n-head", "0"], "n_head")]
    for args, fragment in cases:
        assert fragment in one_line_error(refspec("synthetic", str(tmp_path / "m.gguf"), *args, check=False))
    assert not (tmp_path / "m.gguf").exists()
    assert "is a directory" in one_line_error(refspec("synthetic", str(tmp_path), check=False))
    assert "cannot write" in one_line_error(refspec("synthetic", str(tmp_path / "no" / "m.gguf"), check=False))
    assert "not a regular file" in one_line_error(refspec("synthetic", "/dev/null", check=False))


def test_synthetic_on_a_full_disk_leaves_no_partial_file(tmp_path):
    """A file-size limit makes write() fail as a full disk does (EFBIG instead of ENOSPC)."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    out = tmp_path / "m.gguf"
    proc = subprocess.run([sys.executable, "-m", "refspec.cli", "synthetic", str(out), "--n-embd", "256"],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size)
    assert "cannot write" in one_line_error(proc)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_refuses_a_model_larger_than_the_disk_before_writing(tmp_path):
    line = one_line_error(refspec("synthetic", str(tmp_path / "m.gguf"), "--n-embd", "65536", "--n-layer", "1000",
                                  check=False, timeout=60))
    assert "cannot write" in line and "GB free" in line
    assert list(tmp_path.iterdir()) == []


def test_sigterm_ends_a_write_cleanly(tmp_path):
    """SIGTERM (a job scheduler's stop, `timeout`) ends a command as Ctrl-C does: one line, status 143, and the
    model file it was writing removed."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "refspec.cli", "synthetic", str(tmp_path / "m.gguf"), "--n-embd",
                             "4096", "--n-ff", "14336", "--n-layer", "32"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".m.gguf.*.partial")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # (a no-op once it has ended)
    assert proc.returncode == 143 and stderr.strip().splitlines()[-1] == "refspec: terminated", stderr
    assert list(tmp_path.iterdir()) == []


def test_synthetic_rope_scaling_and_info(tmp_path):
    path = tmp_path / "yarn.gguf"
    refspec("synthetic", str(path), "--rope-scaling", "yarn", "--rope-factor", "8", "--rope-orig-ctx", "32")
    info = json.loads(refspec("info", "-m", str(path), "--json").stdout)
    assert info["rope_scaling"] == "yarn, factor 8, original context 32"
    for bad, fragment in ((["--rope-scaling", "ntk"], "'ntk' is not one of"),
                          (["--arch", "qwen2", "--rope-scaling", "llama3"], "for llama files, not qwen2"),
                          (["--rope-factor", "0.5"], "rope_factor must be"),
                          (["--rope-scaling", "yarn", "--rope-orig-ctx", "0"], "rope_orig_ctx must be")):
        assert fragment in one_line_error(refspec("synthetic", str(tmp_path / "bad.gguf"), *bad, check=False))


def test_bench_decode_arguments_are_one_line(model):
    for args, fragment in ((["--mma-min-rows", "0"], "--mma-min-rows must be in 1..16"),
                           (["--mma-min-weights", "-1"], "--mma-min-weights must be at least 0"),
                           (["--pass-rows", "1,x"], "--pass-rows: expected a comma-separated list"),
                           (["--pass-position", "0"], "--pass-position must be in 1.."),
                           (["--preset", "no-such-preset"], "unknown preset 'no-such-preset'")):
        line = one_line_error(refspec("bench", "decode", "-m", model, "--device", "cpu", "--quick", *args,
                                      check=False))
        assert fragment in line


@pytest.mark.parametrize("command", [("bench", "decode", "--preset", "llama-8b"), ("generate", "-p", "hi", "-n", "1"),
                                     ("dump", "-p", "hi", "-o", "golden.safetensors")])
def test_no_gpu_is_said_before_a_model_is_written_or_fetched(tmp_path, monkeypatch, command):
    """Asked for the GPU on a machine without one, `bench decode --preset`, `generate` and `dump` (the default
    model) fail at once, before they write a preset's model (8-34 GB) or fetch the default model into an empty
    cache."""
    from refspec.backends import make_backend
    from refspec.errors import DeviceError

    try:
        make_backend("gpu")
        pytest.skip("this machine has a GPU")
    except DeviceError:
        pass
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # (where dump would write)
    line = one_line_error(refspec(*command, "--device", "gpu", check=False, timeout=60))
    assert "no GPU found" in line
    assert not list(tmp_path.rglob("*"))  # the cache stayed empty, and nothing was written


def test_bench_cpu_on_a_tiny_model_and_json_out_paths(model, tmp_path):
    """A tiny model's decoding step rounds to 0.000 s: its rate is still a number (it was a TypeError); a --json-out
    whose directory is missing is refused before the run (it was a traceback after it)."""
    out = tmp_path / "cpu.json"
    refspec("bench", "cpu", "-m", model, "--prompt-tokens", "4", "--decode-tokens", "2", "--json-out", str(out))
    assert json.loads(out.read_text())["decode_tokens_per_second"] > 0
    for command in (("bench", "cpu", "-m", model), ("bench", "decode", "-m", model, "--device", "cpu", "--quick")):
        line = one_line_error(refspec(*command, "--json-out", str(tmp_path / "no" / "x.json"), check=False))
        assert "--json-out" in line and "its directory does not exist" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_bench_json_out_to_a_full_disk_names_the_file(model):
    """The system's words alone ("No space left on device") would not say which output failed. (The report is on
    stdout already: the JSON is written after it.)"""
    proc = refspec("bench", "cpu", "-m", model, "--prompt-tokens", "4", "--decode-tokens", "2", "--json-out",
                   "/dev/full", check=False)
    assert proc.returncode == 1 and "decoding step" in proc.stdout
    assert proc.stderr.splitlines() == ["refspec: error: cannot write --json-out /dev/full: No space left on device"]


def test_bench_decode_says_when_the_context_is_too_short_for_its_prompts(model):
    line = one_line_error(refspec("bench", "decode", "-m", model, "--device", "cpu", "--quick", check=False))
    assert "the model's context holds 64" in line  # (not --pass-position, which the CPU does not use)
    line = one_line_error(refspec("bench", "cpu", "-m", model, check=False))
    assert "--prompt-tokens 64 + --decode-tokens" in line and "exceed the model's context of 64 positions" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_to_a_full_disk_is_one_line(model):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "refspec.cli", "generate", "-m", model, "-p", "hi", "-n", "4",
                               "--device", "cpu"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "refspec: error: No space left on device"


def test_synthetic_names_an_unwritable_place_for_what_it_is(tmp_path):
    afile = tmp_path / "x.gguf"
    afile.write_bytes(b"")
    line = one_line_error(refspec("synthetic", str(afile / "sub.gguf"), check=False))
    assert line == f"refspec: error: cannot write {afile / 'sub.gguf'}: {afile} is not a directory"
    if os.path.isdir("/proc") and shutil.disk_usage("/proc").total == 0:
        line = one_line_error(refspec("synthetic", "/proc/x.gguf", check=False))
        assert line == "refspec: error: cannot write /proc/x.gguf: /proc is on a file system that holds no files"


@pytest.mark.parametrize("package", ["gguf", "tokenizers"])
def test_a_missing_required_package_is_one_line(package):
    """A broken installation (a package that pyproject's dependencies list, absent) gets one line naming it and exit 1,
    whichever command runs (every one builds the parser, which imports the model writer)."""
    code = (f"import sys; sys.modules[{package!r}] = None\n"  # (its import then raises ModuleNotFoundError)
            "from refspec.cli import main\nsys.exit(main(['generate', '--help']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = one_line_error(proc)
    assert line.startswith(f"refspec: error: the package '{package}' that refspec needs is not installed"), line


def test_other_missing_modules_keep_their_traceback():
    """A ModuleNotFoundError of no required package (an optional one's absence is its command's to explain; any
    other is a bug) is raised again, not turned into a line that hides where it came from."""
    from refspec.cli import _exit_status

    for name in ("refspec_no_such_module", "cupy", "pytest"):
        err = ModuleNotFoundError(f"No module named {name!r}", name=name)
        with pytest.raises(ModuleNotFoundError):
            _exit_status(err)
