"""Every kernel of kernels_raw/ compiles for AMD gfx906 (Debian's hipcc) and NVIDIA sm_90 (nvcc), with the
options the GPU backend uses at run time, and the machine code is what the design says: the GEMV uses the
int8 dot-product instruction v_dot4_i32_i8, no kernel touches scratch memory (register spills or register
arrays gone to memory), and no float multiply is fused into an add where the spec rounds twice. No GPU needed:
CI runs this. A test skips when its tool is missing, unless CI=true, where a missing tool is a failure."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from refspec.gpu import COMPILE_OPTIONS, kernel_dir, kernel_source
from refspec.gpu_mappings import (ATTN_BOUNDS, ATTN_HEADS_PER, ATTN_THREAD_CHOICES, ATTN_VALUES_MAX_THREADS_HIP,
                                  ATTN_VALUES_ROWS,
                                  GEMV_CONFIGS, GEMV_MAX_ROWS, GEMV_MMA, GEMV_MMA_MIN_ROWS, GEMV_MMA_TALL,
                                  attention_heads_max_threads, gemv_variants, production_gemv_names)

KERNELS = sorted(p.stem for p in kernel_dir().glob("*.hip"))
GEMV_ARGS = ("const signed char*, const unsigned short*, const signed char*, const unsigned short*, float*, "
             "int, int, int, const float*")  # q8_gemv_mma's; q8_gemv and q8_gemv_staged take `live` too
LIVE_GEMV_ARGS = GEMV_ARGS + ", const int*"
SCORES_ARGS = ("const float*, const float*, const float*, const int*, int, int, int, int, int, int, float, int, int, "
               "float*, float*, int*, const int*")
VALUES_ARGS = ("const float*, const int*, int, int, int, int, int, int, int, const float*, const float*, float*, "
               "int*, float*, signed char*, unsigned short*, const int*, int")
HEADS_ARGS = ("const float*, const float*, const float*, const int*, int, int, int, int, int, int, float, float*, "
              "float*, float*, signed char*, unsigned short*, const int*")
ATTENTION_ARGS = ("const float*, const float*, const float*, const int*, int, int, int, int, int, float, float*, "
                  "float*, float*, signed char*, unsigned short*, const int*")


def values_threads(nvidia: bool) -> list[int]:
    """The attention_values instances the backend launches: every thread count on NVIDIA, up to 256 on HIP."""
    return [t for t in ATTN_THREAD_CHOICES if nvidia or t <= ATTN_VALUES_MAX_THREADS_HIP]


def values_paired(nvidia: bool) -> list[str]:
    """attention_values' PAIRED instances the backend launches: both on NVIDIA, unpaired on HIP."""
    return ["false", "true"] if nvidia else ["false"]


def heads_instances(nvidia: bool) -> list[tuple[int, int, int]]:
    """The attention_heads instances the backend launches: (MAXD, threads, query heads a block)."""
    return [(b, t, per) for b in ATTN_BOUNDS for t in ATTN_THREAD_CHOICES for per in ATTN_HEADS_PER
            if t <= attention_heads_max_threads(b, hip=not nvidia)]


UNIT_ROWS = sorted({1, ATTN_VALUES_ROWS})  # rows a unit of attention_scores and attention_values, as launched


def values_instances(nvidia: bool) -> list[tuple[int, str, int]]:
    """The attention_values instances the backend launches: (threads, PAIRED, rows a unit); units of several rows
    only unpaired."""
    return [(t, paired, rg) for t in values_threads(nvidia) for rg in UNIT_ROWS
            for paired in values_paired(nvidia) if rg == 1 or paired == "false"]


def attention_instances(nvidia: bool) -> int:
    return (len(ATTN_BOUNDS) * (len(ATTN_THREAD_CHOICES) + len(UNIT_ROWS)) + len(values_instances(nvidia))
            + len(heads_instances(nvidia)))


NO_DIVISION = ("q8_gemv", "add", "rope", "embed", "kv_write")  # kernels whose float code must hold no FMA at all


def tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{names[0]} is not installed (CI needs it: see .ci/run)")
    pytest.skip(f"{names[0]} is not installed")


def gemv_instances(variants: bool) -> list[str]:
    """Every GEMV the backend launches; with `variants`, also the benchmark's variants for 1 and 16 rows (those
    are tuned and timed on NVIDIA GPUs only, so only the production ones must fit gfx906's registers)."""
    # with `variants` (sm_90): also the short-row and tensor-core GEMVs the backend launches on NVIDIA
    names = set(production_gemv_names(cuda=variants, mma_min_rows=GEMV_MMA_MIN_ROWS))
    if variants:
        names |= {c.name(r) for r in (1, 16) for c in gemv_variants(r)}
    return sorted(names)


def source_file(tmp_path, stem: str, variants: bool):
    """The kernel's source; for the GEMV and attention templates, a file that instantiates them."""
    if stem == "attention":
        path = tmp_path / "attention_instances.hip"
        path.write_text('#include "attention.hip"\n' + "".join(
            f"template __global__ void attention<{b}, {t}>({ATTENTION_ARGS});\n"
            for b in ATTN_BOUNDS for t in ATTN_THREAD_CHOICES) + "".join(
            f"template __global__ void attention_scores<{b}, {rg}>({SCORES_ARGS});\n" for b in ATTN_BOUNDS
            for rg in UNIT_ROWS) + "".join(
            f"template __global__ void attention_heads<{b}, {t}, {per}>({HEADS_ARGS});\n"
            for b, t, per in heads_instances(variants)) + "".join(
            f"template __global__ void attention_values<{t}, {paired}, {rg}>({VALUES_ARGS});\n"
            for t, paired, rg in values_instances(variants)))
        return path
    if stem != "q8_gemv":
        return kernel_dir() / f"{stem}.hip"
    lines = ['#include "q8_gemv.hip"']
    for name in gemv_instances(variants):
        lines.append(f"template __global__ void {name}({GEMV_ARGS if 'mma' in name else LIVE_GEMV_ARGS});")
    path = tmp_path / "q8_gemv_instances.hip"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(cmd, **kw) -> str:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def functions(disassembly: str) -> dict[str, str]:
    """llvm-objdump output split into {symbol: its instructions}."""
    parts = re.split(r"^[0-9a-f]+ <([^>]+)>:\s*$", disassembly, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("stem", KERNELS)
def test_gfx906(tmp_path, stem):
    hipcc = tool("hipcc")
    bundler = tool("clang-offload-bundler-15", "clang-offload-bundler")
    objdump = tool("llvm-objdump-15", "llvm-objdump")
    readelf = tool("llvm-readelf-15", "llvm-readelf")
    bundle, elf = tmp_path / f"{stem}.co", tmp_path / f"{stem}.gfx906.elf"
    env = dict(os.environ, HIP_PLATFORM="amd")
    run([hipcc, "--offload-arch=gfx906", "--genco", "-O3", *COMPILE_OPTIONS["hip"], "-I", str(kernel_dir()),
         "-x", "hip", str(source_file(tmp_path, stem, variants=False)), "-o", str(bundle)], env=env)
    run([bundler, "--unbundle", "--type=o", f"--input={bundle}", "--targets=hipv4-amdgcn-amd-amdhsa--gfx906",
         f"--output={elf}"])
    notes = run([readelf, "--notes", str(elf)])
    names = re.findall(r"^\s+\.name:\s+(\S+)", notes, flags=re.MULTILINE)
    scratch = [int(v) for v in re.findall(r"\.private_segment_fixed_size:\s+(\d+)", notes)]
    spills = [int(v) for v in re.findall(r"\.vgpr_spill_count:\s+(\d+)", notes)]  # SGPRs spill to VGPR lanes
    assert names and len(scratch) == len(names), notes
    assert not any(scratch), f"{stem}: scratch memory per kernel {dict(zip(names, scratch))}"
    assert not any(spills), f"{stem}: register spills {spills}"
    code = functions(run([objdump, "-d", "--mcpu=gfx906", str(elf)]))
    for name, body in code.items():
        assert not re.search(r"\b(scratch_|buffer_store|buffer_load)", body), f"{name} uses scratch memory"
        if stem in NO_DIVISION:
            fused = re.findall(r"\bv_(fma|mac|mad|fmac)_f32\b", body)
            assert not fused, f"{name}: fused multiply-add {fused[:3]} where the spec rounds twice"
    if stem == "q8_gemv":
        gemvs = [n for n in code if "q8_gemv" in n]
        assert len(gemvs) == len(gemv_instances(variants=False))
        for name in gemvs:
            assert "v_dot4_i32_i8" in code[name], f"{name} does not use v_dot4_i32_i8"
    if stem == "attention":
        assert len([n for n in code if "attention" in n]) == attention_instances(nvidia=False)
    if stem in ("rmsnorm", "attention", "silu_mul"):  # IEEE division: the full div_scale/div_fixup sequence
        dividing = {n: body for n, body in code.items() if "attention_scores" not in n}  # (scores only multiply)
        assert all("v_div_fixup_f32" in body for body in dividing.values()), f"{stem}: no IEEE division"


@pytest.mark.parametrize("stem", KERNELS)
def test_sm90(tmp_path, stem):
    nvcc = tool("nvcc")
    src = source_file(tmp_path, stem, variants=True)
    options = [o.replace("--std=", "-std=") for o in COMPILE_OPTIONS["cuda"]]
    common = [nvcc, "-arch=sm_90", *options, "-I", str(kernel_dir()), "-x", "cu", str(src)]
    report = run([*common, "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / f"{stem}.cubin")])
    frames = [int(v) for v in re.findall(r"(\d+) bytes stack frame", report)]
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert frames and not any(frames) and not any(spills), f"{stem}: local memory used:\n{report}"
    if stem == "attention":
        assert len(re.findall(r"Compiling entry function '\w*attention", report)) == attention_instances(nvidia=True)
    if stem in NO_DIVISION:
        ptx = tmp_path / f"{stem}.ptx"
        run([*common, "-ptx", "-o", str(ptx)])
        fused = re.findall(r"\b(fma\.rn\.f32|mad\.f32|mad\.rn\.f32)\b", ptx.read_text())
        assert not fused, f"{stem}: fused multiply-add in PTX"


def test_timeline_probe_instruments_every_kernel(tmp_path):
    """tests/probe_timeline.py rewrites rs_kernel_begin() and rs_kernel_begin_early() in every source (a ValueError
    where portable.h no longer defines them as it expects), and a rewritten source compiles for sm_90 (the probe
    itself runs on the device only)."""
    from probe_timeline import instrument

    for stem in KERNELS:
        assert instrument(kernel_source(stem)).count("rs_timeline_open()") == 3, stem  # defined, then used twice
    with pytest.raises(ValueError):
        instrument(kernel_source("rmsnorm").replace("rs_kernel_begin_early() {", "rs_kernel_begin_early(void) {"))
    src = tmp_path / "quantize_q8_0_timeline.cu"  # both waits: rmsnorm_q8 the usual one, silu_mul_q8 the early one
    src.write_text(instrument(kernel_source("quantize_q8_0")))
    options = [o.replace("--std=", "-std=") for o in COMPILE_OPTIONS["cuda"]]
    run([tool("nvcc"), "-arch=sm_90", *options, "-x", "cu", str(src), "-cubin", "-o", str(tmp_path / "q.cubin")])


def test_timeline_probe_marks_inside_rmsnorm(tmp_path, monkeypatch):
    """With MARKS=1 the probe also marks three points of rmsnorm_q8 (its row staged, inv known, its stores issued),
    each once, and the source still compiles for sm_90; a source that no longer has the marked lines is a ValueError,
    not a probe that silently marks nothing. Without MARKS nothing is marked."""
    from probe_timeline import instrument

    source = kernel_source("quantize_q8_0")
    assert "rs_timeline_mark(" not in instrument(source).split("RS_DEVICE void rs_timeline_mark(int j)")[1]
    monkeypatch.setenv("MARKS", "1")
    marked = instrument(source)
    assert [marked.count(f"rs_timeline_mark({j});") for j in range(3)] == [1, 1, 1]
    assert "rs_timeline_mark(0);" not in instrument(kernel_source("rope"))  # nothing to mark there
    with pytest.raises(ValueError):
        instrument(source.replace("  const float inv = inv_shared;\n", "  const float inv = inv_shared;  \n"))
    src = tmp_path / "quantize_q8_0_marks.cu"
    src.write_text(marked)
    options = [o.replace("--std=", "-std=") for o in COMPILE_OPTIONS["cuda"]]
    run([tool("nvcc"), "-arch=sm_90", *options, "-x", "cu", str(src), "-cubin", "-o", str(tmp_path / "q.cubin")])


def test_which_row_lengths_each_gemv_takes():
    """The dp4a kernels take any K that is a multiple of 32; the tensor-core one only K/32 even (the backend
    and `bench gemv` send it nothing else)."""
    assert all(c.takes(k) for c in GEMV_CONFIGS.values() for k in (32, 96, 576, 4096))
    assert [GEMV_MMA.takes(k) for k in (32, 64, 96, 576, 4096, 3616)] == [False, True, False, True, True, False]


def test_mma_shared_memory_sizes_agree(tmp_path):
    """The dynamic shared memory the backend gives q8_gemv_mma (GemvConfig.shared_bytes, for blocks that stream
    many tiles or one) is what the kernel uses (RsMmaShared<...>::bytes, one_tile): a host program built by
    nvcc prints the kernel's numbers for every tensor-core mapping, row count and (resident activations) rows
    of 1-5 rounds, without a GPU. Too little would let the kernel write past its memory."""
    nvcc = tool("nvcc")
    mma = (c for r in (1, 16) for c in gemv_variants(r) if c.kernel == "q8_gemv_mma")
    configs = sorted({GEMV_MMA, GEMV_MMA_TALL, *mma}, key=str)
    cases = [(c, rows, k) for c in configs for rows in range(1, GEMV_MAX_ROWS + 1)
             for k in ((64, 1024, 1088, 3584, 5120) if c.resident else (4096,))]
    lines = ['#include <cstdio>', '#include "q8_gemv.hip"', "int main() {"]
    for c, rows, k in cases:
        shared = f"RsMmaShared<{rows}, {c.nr}, {c.split}, {c.occ}, {str(c.resident).lower()}, {c.groups}>"
        rounds = -(-k // 1024)
        lines.append(f'  std::printf("%d %d\\n", {shared}::bytes({rounds}), {shared}::one_tile({rounds}));')
    lines += ["  return 0;", "}"]
    src = tmp_path / "mma_shared.cu"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "mma_shared"
    options = [o.replace("--std=", "-std=") for o in COMPILE_OPTIONS["cuda"]]
    run([nvcc, "-arch=sm_90", *options, "-I", str(kernel_dir()), "-o", str(exe), str(src)])
    printed = [int(v) for v in run([str(exe)]).split()]
    assert printed == [v for c, rows, k in cases
                       for v in (c.shared_bytes(rows, k), c.shared_bytes(rows, k, one_tile=True))]
    assert any(c.resident for c, _, _ in cases) and any(not c.resident for c, _, _ in cases)
    fixed = [v for (c, _, _), v in zip(cases, printed[::2]) if not c.resident]  # (resident: the backend checks)
    assert max(fixed) <= 227 * 1024  # what an sm_90 block may opt in to


# ---- the HIP square root (portable.h, rs_sqrt_round), checked here in NumPy: its result from any estimate
# within a few ulp is the correctly rounded sqrt (the CUDA build uses __fsqrt_rn, so no GPU here runs it).
def sqrt_round(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    xd = x.astype(np.float64)
    s = s.copy()
    for _ in range(4):
        bits = s.view(np.int32)
        up, down = (bits + 1).view(np.float32), (bits - 1).view(np.float32)
        hi = (s.astype(np.float64) + up.astype(np.float64)) * 0.5
        lo = (s.astype(np.float64) + down.astype(np.float64)) * 0.5
        s = np.where(hi * hi <= xd, up, np.where(lo * lo >= xd, down, s))
    return s


def test_hip_sqrt_rounding_is_exact():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        np.exp2(rng.uniform(-100, 127, 200000)),  # the range rs_sqrt_round handles directly
        np.exp2(rng.integers(-99, 127, 2000)).astype(np.float64) * (1 + rng.integers(-3, 4, 2000) * 2.0**-23),
        rng.integers(1, 2**24, 20000).astype(np.float64) ** 2,  # perfect squares
    ]).astype(np.float32)
    x = x[np.isfinite(x) & (x >= 2.0**-100)]
    exact = np.sqrt(x)
    for offset in range(-3, 4):
        start = (exact.view(np.int32) + offset).view(np.float32)
        np.testing.assert_array_equal(sqrt_round(x, start).view(np.int32), exact.view(np.int32))


# ------------------------------------------------------------------ overlapped launches (gpu_launch.py)
# What a kernel may do before rs_kernel_begin() (portable.h): declare locals computed from its arguments and
# thread indices, place its GEMV group, load its first weight blocks (rmsnorm_q8: the norm's weights), and
# (attention) point at its kv head's cache and prefetch its old positions into L2 (a hint that reads no value).
# Anything else there (a load of something an earlier kernel writes, any store) could race with the kernel before it.
BEFORE_BEGIN = (
    r"(extern )?__shared__ [^=]+",
    r"const (int|long long|bool) \w+ = [^\[\]]+",
    r"(int|long long) \w+(, \w+)*",
    r"rs_gemv_place<[^>]+>\([^\[\]]*\)",
    r"RsWeightBlocks<NR> ring\[DEPTH\]",
    r"rs_gemv_first_blocks<NR, DEPTH>\(ring, wq, wd, row0, n, k\)",  # weights only
    r"constexpr int \w+ = [^\[\]]+",
    r"using Shared = RsMmaShared<RP, NR, MT, STAGES, RES, GROUPS>",
    r"using Stage = typename Shared::Stage",
    r"unsigned char\* const (pipe|x_slots) = [^\[\]]+",
    r"RsMmaCopier<LPW, MT, RP, RES> copier\(wq, wd, xq, xd, [^\[\]]*\)",  # addresses only
    r"const unsigned (pipe|x_slots)_address = \(unsigned\)__cvta_generic_to_shared\((pipe|x_slots)\)",
    r"copier\.template first_weights<STAGES>\(pipe_address, total, wq, wd, [^\[\]]*\)",  # weights only
    r"float wv\[RS_RMSNORM_Q8_PER_GROUP\]",
    r"rs_rmsnorm_q8_weights\(w, k, part, parts, wv\)",  # the norm's weights only
    r"const float\* (kc|vc) = (k|v)_cache \+ \(long long\)kv_head \* cache_len \* dim",
    r"rs_attention_prefetch\(kc, vc, pos, [^\[\]]*\)",
    r"const RsAttnUnit u\(unit, heads, kv_heads, per\)",
    r"const float\* (kc|vc) = (k|v)_cache \+ \(long long\)u\.kv_head \* cache_len \* dim",
    # the live-row count: written before a pass starts, never by its kernels (portable.h, rs_live_rows)
    r"rows = rs_live_rows\(live, rows\)",
    r"if \((\(int\)blockIdx\.x|row0?|u\.row) >= rs_live_rows\(live, [^\[\]]*\)\) return",
)


BEGIN = re.compile(r"rs_kernel_begin(_early)?\(\);")  # the wait (portable.h), either way of letting the next kernel go


def kernel_begins(source: str):
    """(name, source without comments, the index of its body's "{", the match of its wait or None) for each
    __global__ function of a source; a wait past the next kernel's start is not its own."""
    source = re.sub(r"//[^\n]*", "", source)
    for m in re.finditer(r"__global__", source):
        body = source.index("{", m.end())
        name = re.findall(r"(\w+)\s*\(", source[m.end() : body])[-1]  # after __launch_bounds__(...)
        found = BEGIN.search(source, body)
        nxt = source.find("__global__", body)
        yield name, source, body, None if found is None or 0 <= nxt < found.start() else found


def kernels_before_begin(source: str) -> dict[str, list[str] | None]:
    """For each __global__ function of a source: the statements before its rs_kernel_begin() or
    rs_kernel_begin_early() (comments dropped), or None if it never calls either."""
    return {name: None if found is None else [s.strip() for s in text[body + 1 : found.start()].split(";") if s.strip()]
            for name, text, body, found in kernel_begins(source)}


def unsafe_before_begin(source: str) -> list[str]:
    problems = []
    for name, before in kernels_before_begin(source).items():
        if before is None:
            problems.append(f"{name}: no rs_kernel_begin()")
            continue
        for statement in before:
            if not any(re.fullmatch(p, " ".join(statement.split())) for p in BEFORE_BEGIN):
                problems.append(f"{name}: {statement!r} before rs_kernel_begin()")
    return problems


@pytest.mark.parametrize("stem", KERNELS)
def test_every_kernel_waits_for_the_kernel_before_it(stem):
    """Every kernel begins with rs_kernel_begin(), and before it touches nothing an earlier kernel writes."""
    source = (kernel_dir() / f"{stem}.hip").read_text()
    assert kernels_before_begin(source), f"{stem}.hip: no kernel found"
    assert unsafe_before_begin(source) == []


def test_the_begin_check_finds_races():
    ok = "__global__ void f(int* y, int n) {\n  const int i = blockIdx.x;\n  rs_kernel_begin();\n  y[i] = n;\n}\n"
    assert unsafe_before_begin(ok) == []
    early = ok.replace("rs_kernel_begin();", "rs_kernel_begin_early();")
    assert unsafe_before_begin(early) == []
    assert unsafe_before_begin(early.replace("  const int i = blockIdx.x;", "  y[0] = n;")) == \
        ["f: 'y[0] = n' before rs_kernel_begin()"]
    assert unsafe_before_begin(ok.replace("  rs_kernel_begin();\n", "")) == ["f: no rs_kernel_begin()"]
    early_store = ok.replace("  rs_kernel_begin();\n  y[i] = n;", "  y[i] = n;\n  rs_kernel_begin();")
    assert unsafe_before_begin(early_store) == ["f: 'y[i] = n' before rs_kernel_begin()"]
    early_load = ok.replace("blockIdx.x;", "y[0];")
    assert len(unsafe_before_begin(early_load)) == 1


def test_only_the_measured_kernels_let_the_next_one_go_early():
    """rs_kernel_begin_early (portable.h) is where whole passes measured faster with it: silu_mul_q8 and rope_kv
    (tests/results/early_launch_2026_12_04_h200.json); every other kernel lets the next go after its wait."""
    early = {name for stem in KERNELS for name, _, _, found in kernel_begins((kernel_dir() / f"{stem}.hip").read_text())
             if found and found.group(1)}
    assert early == {"silu_mul_q8", "rope_kv"}


def kernel_define(stem: str, name: str) -> int:
    """The value of `#define name value` in kernels_raw/<stem>.hip."""
    found = re.search(rf"^#define {name} (\d+)", (kernel_dir() / f"{stem}.hip").read_text(), re.M)
    assert found, f"{stem}.hip has no #define {name}"
    return int(found.group(1))


def test_step_kernels_and_the_backend_agree_on_their_buffers():
    """The limits the step kernels are compiled with are the ones refspec/gpu.py sizes and checks their
    buffers by: the stop buffer (GpuBackend.stop_buffer) that speculative_next and greedy_next both read, the
    drafting's n-gram and guess limits, the ngram kernels' block."""
    from refspec.gpu import NGRAM_MAX_K, NGRAM_MAX_N, NGRAM_MAX_STOP, NGRAM_THREADS

    assert kernel_define("ngram", "RS_NGRAM_MAX_STOP") == kernel_define("argmax", "RS_GREEDY_MAX_STOP") == NGRAM_MAX_STOP
    assert kernel_define("ngram", "RS_NGRAM_MAX_N") == NGRAM_MAX_N
    assert kernel_define("ngram", "RS_NGRAM_MAX_K") == NGRAM_MAX_K
    assert kernel_define("ngram", "RS_NGRAM_THREADS") == NGRAM_THREADS


def test_small_kernels_blocks_are_within_their_bounds():
    """The blocks of silu_mul_q8 and rmsnorm_q8 (refspec.gpu.SILU_Q8_THREADS, RMSNORM_Q8_THREADS: groups of 32
    lanes) are within their launch bounds (RS_SILU_Q8_MAX_THREADS, RS_RMSNORM_Q8_MAX_THREADS): a larger block
    would not launch at all; and both sides take the same Q8_0 blocks a group of rmsnorm_q8."""
    from refspec.gpu import RMSNORM_Q8_PER_GROUP, RMSNORM_Q8_THREADS, SILU_Q8_THREADS

    bounds = ((SILU_Q8_THREADS, "RS_SILU_Q8_MAX_THREADS"), (RMSNORM_Q8_THREADS, "RS_RMSNORM_Q8_MAX_THREADS"))
    for threads, bound in bounds:
        assert threads % 32 == 0 and 32 <= threads <= kernel_define("quantize_q8_0", bound)
    assert kernel_define("quantize_q8_0", "RS_RMSNORM_Q8_PER_GROUP") == RMSNORM_Q8_PER_GROUP
