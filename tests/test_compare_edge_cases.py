"""Edge cases of `refspec compare` and golden files: empty logits are one error line, NaN and inf never read as a
max abs error of 0, golden files get the mode a new file gets, and a golden file of another format_version is
refused by name."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from refspec import compare, golden
from refspec.errors import GoldenFileError
from refspec.synthetic import write_model


def refspec(*args):
    return subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A golden file of a tiny model: 3 prompt positions and 1 generated."""
    d = tmp_path_factory.mktemp("edge")
    model = write_model(d / "m.gguf", arch="llama", n_ctx=64, seed=3, n_layer=1, n_embd=32, n_ff=64, n_head=2,
                        n_head_kv=1)
    ref = golden.dump(model, [5, 17, 40], 1, device="cpu")
    golden.save(ref, d / "ref.safetensors")
    return d / "ref.safetensors", ref


# ---------------------------------------------------------------------------------------------- 1: empty
@pytest.mark.parametrize("shape", [(0, "V"), (0,), (3, 0)])
def test_empty_raw_logits_are_one_line(reference, tmp_path, shape):
    path, ref = reference
    shape = tuple(ref.logits.shape[1] if n == "V" else n for n in shape)  # "V": the vocabulary
    np.save(tmp_path / "e.npy", np.zeros(shape, np.float32))
    proc = refspec("compare", str(path), str(tmp_path / "e.npy"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"refspec: error: {tmp_path / 'e.npy'}: no logits (shape {list(shape)})"]


def test_a_golden_file_without_logits_is_refused(tmp_path):
    path = tmp_path / "g.safetensors"
    save_file({"token_ids": np.array([1, 2, 3], np.int32), "result_output": np.zeros((3, 0), np.float32)},
              str(path), metadata={"format": golden.FORMAT, "format_version": golden.FORMAT_VERSION})
    with pytest.raises(GoldenFileError, match=r"g\.safetensors: no logits \(shape \[3, 0\]\)"):
        golden.load(path)


# ------------------------------------------------------------------------------------------ 2: NaN, inf
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("a_value, b_value, expected", [
    (None, np.nan, "nan"), (np.nan, None, "nan"), (None, np.inf, "inf"), (-np.inf, None, "inf"),
    (np.nan, np.nan, "nan"), (np.inf, np.inf, "nan"),
])
def test_a_non_finite_value_is_never_a_max_abs_error_of_0(a_value, b_value, expected):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = a.copy()
    if a_value is not None:
        a[1, 2] = a_value
    if b_value is not None:
        b[1, 2] = b_value
    s = compare.tensor_stats(a, b)
    assert str(s["max_abs_err"]) == expected
    assert (s["nonfinite_a"], s["nonfinite_b"]) == (int(a_value is not None), int(b_value is not None))


@pytest.mark.filterwarnings("error")
def test_finite_sides_count_no_non_finite_values():
    a = np.ones((2, 3), np.float32)
    s = compare.tensor_stats(a, a + np.float32(0.5))
    assert s["max_abs_err"] == 0.5 and s["nonfinite_a"] == s["nonfinite_b"] == 0


def _nan_logits(tmp_path, ref, how):
    b = ref.logits.copy()
    if how == "one":
        b[2, 7] = np.nan
    else:
        b[:] = np.nan
    np.save(tmp_path / "b.npy", b)
    return b.size, int(np.count_nonzero(np.isnan(b)))


@pytest.mark.parametrize("how", ["one", "all"])
def test_cli_reports_nan_in_b_in_the_table_and_the_json(reference, tmp_path, how):
    path, ref = reference
    n, n_nan = _nan_logits(tmp_path, ref, how)
    proc = refspec("compare", str(path), str(tmp_path / "b.npy"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("result_output "))
    assert row.split()[-2:] == ["nan", "nan"]  # NMSE, max abs err
    assert f"result_output: non-finite values (NaN or inf): A 0, B {n_nan} of {n}" in proc.stdout
    proc = refspec("compare", str(path), str(tmp_path / "b.npy"), "--json")
    s = json.loads(proc.stdout)["tensors"]["result_output"]
    assert s["max_abs_err"] == s["nmse"] == "nan" and (s["nonfinite_a"], s["nonfinite_b"]) == (0, n_nan)
    proc = refspec("compare", str(path), str(tmp_path / "b.npy"), "--nmse-max", "1")
    assert proc.returncode == 1 and "FAIL result_output: NMSE nan > 1" in proc.stdout


# ----------------------------------------------------------------------------------------------- 3: mode
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"])
def test_saved_golden_files_get_the_mode_of_a_new_file(reference, tmp_path, umask, mode):
    _, ref = reference
    old = os.umask(umask)
    try:
        golden.save(ref, tmp_path / "g.safetensors")
        assert os.umask(umask) == umask  # save put the umask back
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "g.safetensors").st_mode) == mode


def test_cli_dump_writes_0644_under_umask_022(reference, tmp_path):
    out = tmp_path / "g.safetensors"
    model = reference[0].parent / "m.gguf"
    proc = subprocess.run([sys.executable, "-m", "refspec.cli", "dump", "-m", str(model), "--ids", "5,17",
                           "-o", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644


# ------------------------------------------------------------------------------------- 4: format_version
def test_files_of_the_current_writer_record_and_pass_the_format_version(reference):
    path, _ = reference
    assert golden.load(path).metadata["format_version"] == golden.FORMAT_VERSION


@pytest.mark.parametrize("version, found", [("2", "of format_version '2'"), ("", "of format_version ''"),
                                            (None, "without format_version")])
def test_another_format_version_is_refused_by_name(reference, tmp_path, version, found):
    _, ref = reference
    metadata = {k: v for k, v in ref.metadata.items() if k != "format_version"}
    if version is not None:
        metadata["format_version"] = version
    path = tmp_path / "g.safetensors"
    save_file({"token_ids": ref.token_ids, **ref.tensors}, str(path), metadata=metadata)
    message = (f"{path}: a golden file {found}; this refspec reads format_version "
               f"'{golden.FORMAT_VERSION}' only")
    with pytest.raises(GoldenFileError) as err:
        golden.load(path)
    assert str(err.value) == message
    proc = refspec("compare", str(path), str(path))
    assert proc.returncode == 1 and proc.stderr.splitlines() == [f"refspec: error: {message}"]
