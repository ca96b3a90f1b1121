"""Models read where they lie: Q8_0 matrices are views of the memory-mapped file, the CPU backend's compiled
GEMV over the map (the default) gives the bits of the float32 copy run by BLAS (resident_bytes), and a model of
a few hundred MB runs in little more memory than its file."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refspec.backends import CpuBackend
from refspec.errors import ModelFileError
from refspec.forward import Transformer
from refspec.gguf_model import load
from refspec.model import Q8_0_BLOCK, Q8Matrix
from refspec.synthetic import write_model

from bits import assert_bits_equal

SHAPES = {  # odd widths: tasks and slabs that end mid-way, a 5-block ffn, GQA
    "llama": dict(n_layer=2, n_embd=96, n_ff=160, n_head=3, n_head_kv=1, n_vocab=333),
    "qwen2": dict(n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=2, n_vocab=301),
    "qwen3": dict(n_layer=2, n_embd=64, n_ff=64, n_head=2, n_head_kv=2, head_dim=32, n_rot=16, n_vocab=290),
}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    return {arch: write_model(tmp / f"{arch}.gguf", arch=arch, n_ctx=64, seed=11, tie_embeddings=arch != "qwen2",
                              **shape) for arch, shape in SHAPES.items()}


def streamed_backend(threads: int, task_work: int) -> CpuBackend:
    be = CpuBackend(threads=threads, resident_bytes=0)
    be.TASK_WORK = task_work  # small: many column ranges, partial last ones
    return be


@settings(max_examples=12, deadline=None)
@given(arch=st.sampled_from(sorted(SHAPES)), rows=st.integers(1, 9), threads=st.integers(1, 3),
       task_work=st.integers(1, 1 << 16))
def test_streamed_forward_equals_resident_forward(model_files, arch, rows, threads, task_work):
    """The compiled GEMV over the mapped file (streamed) gives the bits of the float32 copy run by BLAS
    (resident): two independent ways of computing spec.q8_gemv, compared over whole passes."""
    model = load(model_files[arch], log=lambda message: None)
    resident = Transformer(model, CpuBackend(resident_bytes=1 << 40))
    streamed = Transformer(model, streamed_backend(threads, task_work))
    assert resident.weights.layers[0].wq.stack.wf is not None  # really a float32 copy
    assert streamed.weights.layers[0].wq.stack.wf is None  # really streamed
    ids = list(np.random.default_rng(rows).integers(0, model.config.n_vocab, rows + 3))
    caches = resident.new_cache(16), streamed.new_cache(16)
    for tf, cache in zip((resident, streamed), caches):
        tf.forward(cache, ids[:3], 0)  # the positions before the rows
    want = resident.forward(caches[0], ids[3:], 3)
    got = streamed.forward(caches[1], ids[3:], 3)
    assert_bits_equal(got, want, f"{arch}: streamed vs resident logits, {rows} rows")


def test_q8_0_matrices_are_views_of_the_file(model_files):
    model = load(model_files["llama"], log=lambda message: None)
    w = model.weights.layers[1].w_down
    assert isinstance(w, Q8Matrix) and w.blocks.dtype == Q8_0_BLOCK
    assert w.blocks.base is not None and not w.blocks.flags.owndata and not w.blocks.flags.writeable
    assert w.q_blocks.shape == (w.shape[0], w.shape[1] // 32, 32) and w.d.shape == (w.shape[0], w.shape[1] // 32)
    split = Q8Matrix(w.q, np.ascontiguousarray(w.d))  # the same matrix built from separate arrays
    assert_bits_equal(split.dequantize(), w.dequantize(), "split vs block storage")


def test_a_file_that_cannot_be_mapped_is_one_error(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")  # mmap refuses an empty file
    for path in (tmp_path, empty):  # a directory: nothing to map
        with pytest.raises(ModelFileError) as caught:
            load(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# The measurement runs in a fresh interpreter, so that its peak resident size is this model's alone: the
# interpreter and its libraries (~35 MB) are measured before loading and set aside.
MEASURE = textwrap.dedent("""
    import json, resource, sys
    from refspec.backends import CpuBackend
    from refspec.forward import Transformer
    from refspec.gguf_model import load
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    before = peak()
    model = load(sys.argv[1])
    tf = Transformer(model, CpuBackend(resident_bytes=0))
    cache = tf.new_cache(16)
    tf.forward(cache, list(range(8)), 0)
    tf.forward(cache, [3], 8)
    print(json.dumps({"before": before, "peak": peak()}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux")
def test_peak_memory_of_a_mapped_model_is_close_to_its_file_size(tmp_path):
    # ~550 MB: 34 layers of width 1024 (feed-forward 4096), all Q8_0; a small vocabulary, so that the
    # tokenizer's Python strings do not count as weights.
    path = write_model(tmp_path / "m.gguf", arch="llama", n_layer=34, n_embd=1024, n_ff=4096, n_head=16,
                       n_head_kv=4, n_vocab=8192, n_ctx=64, seed=1)
    size = path.stat().st_size
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rss = json.loads(out.stdout)
    used = rss["peak"] - rss["before"]
    assert used <= 1.15 * size, f"loading and two passes took {used / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


def test_bench_cpu_reports_load_memory_and_speed(model_files, tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "refspec.cli", "bench", "cpu", "-m", str(model_files["qwen3"]),
                          "--prompt-tokens", "5", "--decode-tokens", "2", "--json-out", str(out), "-t", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["prompt_tokens"] == 5 and len(report["decode_step_seconds"]) == 2 and report["threads"] == 1
    assert report["peak_rss_bytes"] > report["file_bytes"] > 0 and report["load_seconds"] >= 0
    assert report["machine"]["cpu_cores"] >= 1 and "peak memory" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "refspec.cli", "bench", "cpu", "-m", str(tmp_path / "missing.gguf")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.count("refspec: error:") == 1 and "Traceback" not in bad.stderr
