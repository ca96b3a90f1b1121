"""`refspec compare`: statistics that are right on known differences, the first tensor where two runs part,
raw logits (.npy, llama-debug's .bin), exit statuses, and bad input as one line."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from refspec import compare, golden
from refspec.errors import GoldenFileError
from refspec.synthetic import write_model


def refspec(*args):
    return subprocess.run([sys.executable, "-m", "refspec.cli", *args], capture_output=True, text=True, timeout=300)


SHAPE = dict(arch="qwen2", n_ctx=64, n_layer=3, n_embd=64, n_ff=96, n_head=2, n_head_kv=1, head_dim=32)
IDS = [5, 17, 40, 3, 99, 8]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    model = write_model(d / "m.gguf", seed=5, **SHAPE)
    other_model = write_model(d / "other.gguf", seed=6, **SHAPE)
    ref = golden.dump(model, IDS, 4, layers=True, device="cpu")
    golden.save(ref, d / "ref.safetensors")
    golden.save(golden.dump(other_model, ref.token_ids.tolist(), 0, layers=True, device="cpu"), d / "other.safetensors")
    return d, ref


def perturbed(ref, name, index, ulps):
    """A copy of `ref` with one element of `name` moved by `ulps` units in the last place."""
    g = copy.deepcopy(ref)
    t = g.tensors[name]
    bits = t.view(np.int32)
    bits[index] += ulps
    return g


def test_a_file_against_itself_is_bitwise_equal(files):
    d, ref = files
    report = compare.compare_files(d / "ref.safetensors", d / "ref.safetensors")
    assert all(s["bitwise_equal"] == s["n"] and s["max_ulp"] == 0 and s["nmse"] == 0 for s in report["tensors"].values())
    assert report["first_bits_differ"] is None and report["first_over_nmse_threshold"] is None
    assert report["logits"]["top1_agree"] == 10 and report["logits"]["top5_overlap_min"] == 5
    assert compare.failures(report, bitwise=True, ulp_max=0, nmse_max=0) == []


def test_one_flipped_element_is_found_where_it_is(files, tmp_path):
    d, ref = files
    g = perturbed(ref, "ffn_out-1", (3, 7), 2)
    golden.save(g, tmp_path / "b.safetensors")
    report = compare.compare_files(d / "ref.safetensors", tmp_path / "b.safetensors")
    s = report["tensors"]["ffn_out-1"]
    assert s["bitwise_equal"] == s["n"] - 1 and s["max_ulp"] == 2
    a, b = ref.tensors["ffn_out-1"][3, 7], g.tensors["ffn_out-1"][3, 7]
    assert s["max_abs_err"] == abs(float(a) - float(b)) > 0
    assert s["nmse"] == pytest.approx((float(a) - float(b)) ** 2 / np.sum(ref.tensors["ffn_out-1"].astype(float) ** 2))
    assert report["first_bits_differ"] == "ffn_out-1"
    assert compare.failures(report, ulp_max=2) == [] and compare.failures(report, ulp_max=1) == ["ffn_out-1: max ULP 2 > 1"]
    assert len(compare.failures(report, bitwise=True)) == 1


def test_another_model_parts_at_the_first_layer_and_changes_tokens(files):
    d, ref = files
    report = compare.compare_files(d / "ref.safetensors", d / "other.safetensors")
    assert report["first_bits_differ"] == "attn_norm-0" == report["first_over_nmse_threshold"]
    lg = report["logits"]
    assert lg["top1_agree"] < lg["positions"] and lg["first_top1_difference"] == next(
        r["position"] for r in lg["per_position"] if r["top1_a"] != r["top1_b"])
    assert [r["top1_a"] for r in lg["per_position"]] == np.argmax(ref.logits, axis=1).tolist()


def test_raw_npy_logits_all_rows_or_the_last_prompt_row(files, tmp_path):
    d, ref = files
    np.save(tmp_path / "all.npy", ref.logits)
    report = compare.compare_files(d / "ref.safetensors", tmp_path / "all.npy")
    assert report["positions"] == list(range(10)) and report["first_bits_differ"] is None
    assert list(report["tensors"]) == ["result_output"]
    np.save(tmp_path / "one.npy", ref.logits[5] + np.float32(0.5))
    report = compare.compare_files(d / "ref.safetensors", tmp_path / "one.npy")
    assert report["positions"] == [5]  # the last prompt position, as llama-debug saves it
    assert report["tensors"]["result_output"]["bitwise_equal"] < ref.logits.shape[1]


def test_llama_debug_bin_with_its_token_file(files, tmp_path):
    d, ref = files
    ref.logits[2].tofile(tmp_path / "llamacpp-m.bin")  # llama-debug: the last prompt position's logits
    ref.token_ids[:3].astype("<i4").tofile(tmp_path / "llamacpp-m-tokens.bin")
    report = compare.compare_files(d / "ref.safetensors", tmp_path / "llamacpp-m.bin")
    assert report["positions"] == [2] and report["first_bits_differ"] is None
    np.array([5, 18, 40], "<i4").tofile(tmp_path / "llamacpp-m-tokens.bin")
    with pytest.raises(GoldenFileError, match="first at position 1: 17 vs 18"):
        compare.compare_files(d / "ref.safetensors", tmp_path / "llamacpp-m.bin")


def test_cli_exit_status_json_and_plot(files, tmp_path):
    d, ref = files
    a, b = str(d / "ref.safetensors"), str(d / "other.safetensors")
    proc = refspec("compare", a, a, "--bitwise")
    assert proc.returncode == 0 and "PASS" in proc.stdout and "first tensor whose bits differ: none" in proc.stdout
    proc = refspec("compare", a, b, "--json", "--plot", str(tmp_path / "p.png"), "--nmse-max", "1e-3")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["pass"] is False and out["failures"][0].startswith("attn_norm-0: NMSE")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert refspec("compare", a, b).returncode == 0  # no threshold given: a report, not a verdict


def test_ulp_distance_counts_representable_values():
    one = np.float32(1)
    assert compare.ulp_distance(one, np.nextafter(one, np.float32(2))) == 1
    tiny = np.float32(1e-45)  # the smallest subnormal
    assert compare.ulp_distance(-tiny, tiny) == 2 and compare.ulp_distance(np.float32(0), np.float32(-0.0)) == 0
    assert compare.ulp_distance(np.float32(np.inf), np.float32(3.4028235e38)) == 1


def _bad_inputs(d, tmp_path, ref):
    np.save(tmp_path / "f64.npy", ref.logits.astype(np.float64))
    np.save(tmp_path / "narrow.npy", ref.logits[:, :10])
    np.save(tmp_path / "many.npy", np.zeros((7, ref.logits.shape[1]), np.float32))
    (tmp_path / "odd.bin").write_bytes(b"\0" * 10)
    (tmp_path / "text.npy").write_text("hello")
    short = golden.Golden(ref.token_ids[:4], {k: v[:4] for k, v in ref.tensors.items()}, dict(ref.metadata))
    short.metadata["n_prompt"] = "4"
    golden.save(short, tmp_path / "short.safetensors")
    narrow = golden.Golden(ref.token_ids, dict(ref.tensors), dict(ref.metadata))
    narrow.tensors["kqv_out-1"] = narrow.tensors["kqv_out-1"][:, :32]
    golden.save(narrow, tmp_path / "narrow.safetensors")
    return [("f64.npy", "must be float32"), ("narrow.npy", "vocabulary has"), ("many.npy", "only 6 positions"),
            ("odd.bin", "whole number of rows"), ("text.npy", "not a readable .npy"),
            ("short.safetensors", "token ids differ"), ("narrow.safetensors", "tensor kqv_out-1: shapes differ"), ("missing.bin", "cannot read"),
            ("missing.safetensors", "cannot read the golden file (No such file or directory)")]


def test_cli_bad_input_is_one_line(files, tmp_path):
    d, ref = files
    for name, message in _bad_inputs(d, tmp_path, ref):
        proc = refspec("compare", str(d / "ref.safetensors"), str(tmp_path / name))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and proc.stdout == "", (name, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("refspec: error: ") and message in lines[0], (name, proc.stderr)
    proc = refspec("compare", str(d / "ref.safetensors"), str(d / "ref.safetensors"), "--nmse-max", "-1")
    assert proc.returncode == 1 and "--nmse-max must be" in proc.stderr


def test_cli_plot_paths_are_checked_before_comparing(files, tmp_path):
    """--plot names the file written: a directory (matplotlib wrote DIR.png beside it), an unknown extension (a
    traceback) or no extension (.png appended) is one line, and nothing is written."""
    d, _ = files
    ref = str(d / "ref.safetensors")
    (tmp_path / "plots").mkdir()
    for plot, message in ((tmp_path / "plots", "a directory"), (tmp_path / "p.txt", "must end in one of .avif"),
                          (tmp_path / "p", ".png"), (tmp_path / "no" / "p.png", "its directory does not exist")):
        proc = refspec("compare", ref, ref, "--plot", str(plot))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and message in lines[0], (plot, proc.stderr)
    assert [p.name for p in tmp_path.iterdir()] == ["plots"] and not list((tmp_path / "plots").iterdir())
