"""`refspec synthetic` and `write_model` after review: numbers are checked against the loader's own ranges as the
binary32 values the file holds (never a traceback, never a file the loader then refuses), an option that cannot
apply is an error rather than ignored, "-" is not an output, and NumPy scalars are accepted."""
import subprocess
import sys

import numpy as np
import pytest

import refspec
from refspec.errors import UsageError
from refspec.synthetic import write_model

TINY = dict(n_layer=1, n_embd=32, n_ff=32, n_head=1, n_head_kv=1, n_ctx=64)  # Q8_0 needs multiples of 32
TINY_FLAGS = ["--n-layer", "1", "--n-embd", "32", "--n-ff", "32", "--n-head", "1", "--n-head-kv", "1",
              "--n-ctx", "64"]


def synthetic(cwd, *args):
    return subprocess.run([sys.executable, "-m", "refspec.cli", "synthetic", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


RANGE = "the loader's range for"
CLI_ERRORS = {  # flags after the output s.gguf: the one line on stderr
    "rope-base overflows": (["--rope-base", "1e300"], "rope_base must be a number in 1..1.84467e+19 "
                            f"({RANGE} rope.freq_base), got 1e+300 (inf in binary32)"),
    "eps overflows": (["--eps", "1e300"], "eps must be a number in 1.4013e-45..3.40282e+38 "
                      f"({RANGE} attention.layer_norm_rms_epsilon), got 1e+300 (inf in binary32)"),
    "attn-factor overflows": (["--rope-attn-factor", "1e39"], "rope_attn_factor must be a number in "
                              f"0.000976562..64 ({RANGE} rope.scaling.attn_factor), got 1e+39 (inf in binary32)"),
    "linear factor overflows": (["--rope-scaling", "linear", "--rope-factor", "1e39"], "rope_factor must be a "
                                f"number in 1..1024 ({RANGE} rope.scaling.factor), got 1e+39 (inf in binary32)"),
    "rope-base too small": (["--rope-base", "1e-40"], "rope_base must be a number in 1..1.84467e+19 "
                            f"({RANGE} rope.freq_base), got 1e-40"),
    "rope-base too large": (["--rope-base", "3e38"], "rope_base must be a number in 1..1.84467e+19 "
                            f"({RANGE} rope.freq_base), got 3e+38"),
    "yarn factor too large": (["--rope-scaling", "yarn", "--rope-factor", "2000"], "rope_factor must be a number "
                              f"in 1..1024 ({RANGE} rope.scaling.factor), got 2000.0"),
    "attn-factor too large": (["--rope-attn-factor", "1e30"], "rope_attn_factor must be a number in "
                              f"0.000976562..64 ({RANGE} rope.scaling.attn_factor), got 1e+30"),
    "llama3 factor too large": (["--rope-scaling", "llama3", "--rope-factor", "1e300"], "rope_factor must be a "
                                f"number in 1..1.04858e+06 ({RANGE} rope_freqs.weight values), got 1e+300 (inf in "
                                "binary32)"),
    "yarn with base 1": (["--rope-scaling", "yarn", "--rope-base", "1"], "rope_base must exceed 1 for "
                         "rope_scaling 'yarn' (the loader's rule), got 1.0"),
    "factor without scaling": (["--rope-factor", "8"], "rope_factor (a RoPE scaling factor) needs rope_scaling "
                               "linear, yarn or llama3"),
    "factor 4 without scaling": (["--rope-factor", "4"], "rope_factor (a RoPE scaling factor) needs rope_scaling "
                                 "linear, yarn or llama3"),
    "orig-ctx without scaling": (["--rope-orig-ctx", "32"], "rope_orig_ctx (the original context of RoPE scaling) "
                                 "needs rope_scaling yarn or llama3"),
    "orig-ctx with linear": (["--rope-scaling", "linear", "--rope-orig-ctx", "32"], "rope_orig_ctx (the original "
                             "context of RoPE scaling) needs rope_scaling yarn or llama3"),
    "ssm-d-state on llama": (["--ssm-d-state", "8"], "ssm_d_state (a Gated DeltaNet size) needs arch qwen35"),
    "ssm-n-v-heads on qwen3": (["--arch", "qwen3", "--ssm-n-v-heads", "4"], "ssm_n_v_heads (a Gated DeltaNet "
                               "size) needs arch qwen35"),
    "interval on llama": (["--full-attention-interval", "2"], "full_attention_interval (a hybrid layer pattern) "
                          "needs arch qwen35"),
    "vocab without tokenizer": (["--no-tokenizer", "--vocab", "spm"], "vocab (the tokenizer's kind) needs "
                                "tokenizer=True"),
}


@pytest.mark.parametrize("flags, line", CLI_ERRORS.values(), ids=CLI_ERRORS.keys())
def test_cli_refuses_with_one_line_and_writes_nothing(tmp_path, flags, line):
    proc = synthetic(tmp_path, "s.gguf", *TINY_FLAGS, *flags)
    assert (proc.returncode, proc.stderr, proc.stdout) == (1, f"refspec: error: {line}\n", "")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_standard_output(tmp_path):
    proc = synthetic(tmp_path, "-", *TINY_FLAGS)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == ("refspec: error: output path '-': a GGUF cannot be written to standard output; give a "
                           "file name (./- for a file named '-')\n")
    assert list(tmp_path.iterdir()) == []


def _f32_after(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def _f32_before(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(-np.inf)))


F32_MAX, F32_TINY = float(np.finfo(np.float32).max), float(np.finfo(np.float32).smallest_subnormal)
# (write_model arguments but the bounded one, its name, values accepted, values refused, what the loader read)
BOUNDS = {
    "rope_base": ({}, "rope_base", [1.0, 2.0**64, 2.0**64 * (1 + 2**-30)],  # the last is 2**64 in binary32
                  [_f32_before(1.0), _f32_after(2.0**64)], lambda c: c.rope_base),
    "eps": ({}, "eps", [F32_TINY, F32_MAX], [F32_TINY / 4, F32_MAX * (1 + 2**-23)], lambda c: c.rms_eps),
    "linear factor": (dict(rope_scaling="linear"), "rope_factor", [1.0, 1024.0], [_f32_before(1.0),
                      _f32_after(1024.0)], lambda c: c.rope_scaling.factor),
    "yarn factor": (dict(rope_scaling="yarn"), "rope_factor", [1.0, 1024.0], [_f32_before(1.0),
                    _f32_after(1024.0)], lambda c: c.rope_scaling.factor),
    "llama3 factor": (dict(rope_scaling="llama3"), "rope_factor", [1.0, 2.0**20],
                      [_f32_before(1.0), _f32_after(2.0**20)], lambda c: max(c.rope_scaling.freq_factors)),
    "attn factor": ({}, "rope_attn_factor", [2.0**-10, 64.0], [_f32_before(2.0**-10), _f32_after(64.0)],
                    lambda c: c.rope_scaling.attn_factor),
    "yarn base": (dict(rope_scaling="yarn"), "rope_base", [_f32_after(1.0)], [1.0], lambda c: c.rope_base),
}


@pytest.mark.parametrize("fixed, name, accepted, refused, read", BOUNDS.values(), ids=BOUNDS.keys())
def test_every_accepted_boundary_loads_and_the_next_value_out_is_refused(tmp_path, fixed, name, accepted, refused,
                                                                         read):
    for i, value in enumerate(accepted):
        path = write_model(tmp_path / f"ok{i}.gguf", **TINY, **fixed, **{name: value})
        config = refspec.load(path, log=lambda line: None).config
        assert read(config) == float(np.float32(value)), (name, value)
    for value in refused:
        with pytest.raises(UsageError, match=f"^{name} must "):
            write_model(tmp_path / "bad.gguf", **TINY, **fixed, **{name: value})
    assert not (tmp_path / "bad.gguf").exists()


def test_options_that_cannot_apply_are_refused_and_defaults_still_work(tmp_path):
    out = tmp_path / "m.gguf"
    for kwargs, message in ((dict(rope_factor=4.0), "rope_factor (a RoPE scaling factor) needs rope_scaling linear, "
                             "yarn or llama3"),
                            (dict(rope_orig_ctx=16), "rope_orig_ctx (the original context of RoPE scaling) needs "
                             "rope_scaling yarn or llama3"),
                            (dict(ssm_d_conv=4), "ssm_d_conv (a Gated DeltaNet size) needs arch qwen35"),
                            (dict(ssm_n_k_heads=2), "ssm_n_k_heads (a Gated DeltaNet size) needs arch qwen35"),
                            (dict(vocab="bpe", tokenizer=False), "vocab (the tokenizer's kind) needs tokenizer=True")):
        with pytest.raises(UsageError) as info:
            write_model(out, **TINY, **kwargs)
        assert str(info.value) == message
    assert not out.exists()
    qwen35 = refspec.load(write_model(out, arch="qwen35", **TINY, head_dim=32), log=lambda line: None).config
    assert (qwen35.ssm_d_conv, qwen35.ssm_d_state, qwen35.ssm_n_k_heads, qwen35.ssm_n_v_heads) == (4, 16, 2, 4)
    yarn = refspec.load(write_model(out, rope_scaling="yarn", **TINY), log=lambda line: None).config
    assert (yarn.rope_scaling.factor, yarn.rope_scaling.n_ctx_orig) == (4.0, 16)


def test_numpy_scalars_are_accepted_and_give_the_same_file(tmp_path):
    plain = write_model(tmp_path / "plain.gguf", seed=2, rope_base=10000.0, eps=1e-6, n_layer=1, rope_scaling="yarn",
                        rope_factor=2.0, rope_orig_ctx=32, rope_attn_factor=0.5)
    numpy = write_model(tmp_path / "numpy.gguf", seed=np.int64(2), rope_base=np.float32(1e4), eps=np.float64(1e-6),
                        n_layer=np.int32(1), rope_scaling="yarn", rope_factor=np.float16(2.0),
                        rope_orig_ctx=np.uint16(32), rope_attn_factor=np.float32(0.5))
    assert numpy.read_bytes() == plain.read_bytes()
    for kwargs, message in ((dict(seed=2.0), "seed must be an integer, not float 2.0"),
                            (dict(rope_base=True), "rope_base must be a real number, not bool True"),
                            (dict(eps="1e-5"), "eps must be a real number, not str '1e-5'"),
                            (dict(rope_attn_factor=np.True_), "rope_attn_factor must be a real number, not bool "
                             "np.True_")):
        with pytest.raises(UsageError) as info:
            write_model(tmp_path / "bad.gguf", **kwargs)
        assert str(info.value) == message
