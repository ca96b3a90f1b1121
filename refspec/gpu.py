"""The GPU backend: the operations of refspec/spec.py as the raw kernels of kernels_raw/, through CuPy.

Each kernel source (kernels_raw/<stem>.hip, the twin of spec.<stem>) is compiled at run time once per process
through CuPy: NVRTC on NVIDIA GPUs, hiprtc on AMD GPUs (cupy-rocm-5-0), with floating-point contraction off,
IEEE division and square root, and subnormals kept (COMPILE_OPTIONS; GpuBackend._load_module says why not
RawModule). Compiled modules are also cached on disk. The wrappers below own the grid arithmetic and
check what the kernels assume; every result is the spec's, bit for bit, whatever the number of rows
(tests/test_gpu_kernels.py, tests/test_gpu_model.py).

Weights are uploaded once (upload_weights): a Q8Matrix becomes device int8 quants [N, K] and fp16 scales
[N, K/32], the same aligned layout as refspec.model.Q8Matrix; norms and biases become float32 arrays.
Operations take and return CuPy arrays, queue their kernels on the current stream and never wait for the
GPU, except argmax and to_host, which bring results to the host.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import re
import tempfile
from dataclasses import dataclass, replace

import numpy as np

from refspec import checks, spec
from refspec.errors import DeviceError, UsageError
from refspec.gpu_launch import DependentLaunch, Kernel
from refspec.gpu_mappings import (ATTN_BOUNDS, ATTN_HEADS, ATTN_HEADS_PER, ATTN_MAX_DIM,
                                  ATTN_SCORE_THREADS, ATTN_SLICES, ATTN_SPLIT_CACHE, ATTN_THREAD_CHOICES,
                                  ATTN_VALUES_COL_PARTS, ATTN_VALUES_MAX_THREADS_HIP, ATTN_VALUES_ROWS,
                                  GEMV_CONFIGS, GEMV_EVEN_MIN_K, GEMV_FEW_BLOCKS,
                                  GEMV_FEW_BLOCKS_MIN_K, GEMV_MAX_ROWS, GEMV_MMA, GEMV_MMA_MIN_ROWS,
                                  GEMV_MMA_MIN_WEIGHTS, GEMV_MMA_NARROW, GEMV_MMA_NARROW_MIN_K, GEMV_MMA_RESIDENT,
                                  GEMV_MMA_STREAM_WAVES, GEMV_MMA_TALL, GEMV_MMA_TALL_LONG_MIN_K,
                                  GEMV_MMA_TALL_LONG_ROWS, GEMV_MMA_TWO_STREAMS, GEMV_MMA_TWO_STREAMS_16,
                                  GEMV_SHORT_ROWS, GEMV_SHORT_ROWS_K, SM_THREADS, AttnPlan, GemvConfig,
                                  attention_heads_max_threads, attention_units, gemv_mma, production_gemv_names)
from refspec.model import QK8_0, LayerWeights, ModelWeights, MtpWeights, Q8Matrix

F32 = np.float32

# Compiler options: no FMA contraction, IEEE division and sqrt, subnormals kept (NVRTC's defaults but for
# --fmad, spelled out so that nobody has to know that). hiprtc takes clang's options.
COMPILE_OPTIONS = {
    "cuda": ("--std=c++17", "--fmad=false", "--ftz=false", "--prec-div=true", "--prec-sqrt=true"),
    "hip": ("-std=c++17", "-ffp-contract=off", "-fno-gpu-flush-denormals-to-zero",
            "-fhip-fp32-correctly-rounded-divide-sqrt"),
}

NGRAM_THREADS = 256  # RS_NGRAM_THREADS (kernels_raw/ngram.hip)
NGRAM_MAX_N, NGRAM_MAX_K = 8, 16  # RS_NGRAM_MAX_N, RS_NGRAM_MAX_K: the longest n-gram, the most guesses a pass
NGRAM_MAX_STOP = 16  # RS_NGRAM_MAX_STOP: end-of-generation ids speculative_next knows
ARGMAX_THREADS, ARGMAX_PER_THREAD = 256, 8  # RS_ARGMAX_THREADS, RS_ARGMAX_PER_THREAD in argmax.hip
ARGMAX_MAX_PARTS = ARGMAX_THREADS  # argmax_final combines at most one part per thread


# Dynamic shared memory rmsnorm_q8 stages a row in: the 48 KB any GPU grants a block without opting in, less
# room for the kernel's own static shared variables (16 bytes on sm_90), which count against the same 48 KB.
RMSNORM_Q8_SHARED_BYTES = 47 * 1024
RMSNORM_Q8_PER_GROUP = 4  # RS_RMSNORM_Q8_PER_GROUP: Q8_0 blocks of a row a group of rmsnorm_q8 takes, at most
# Threads per block of rmsnorm_q8, at most (RS_RMSNORM_Q8_MAX_THREADS; fewer where a row has fewer Q8_0 blocks than
# its groups take). It follows the output and down projections (with the residual add), so its blocks, like
# silu_mul_q8's below, start as those GEMVs' leave, and the GEMV after it starts beside them: fewer, larger blocks
# (a row in 4 parts of 256 threads instead of 8 of 128 for rows of 4096) make the passes faster at every width. H200,
# 2026-12-04, passes at position 64 (graph replay, variants in turn; tests/profile_small_blocks.py,
# tests/results/rmsnorm_blocks_{llama8b,qwen32b}_h200.json), 128 / 256 / 512 threads, ms at 1 / 8 / 16 rows:
# llama-8b 2.368-2.369 / 2.760-2.762 / 3.273-3.277, 2.328-2.329 / 2.739-2.741 / 3.233-3.236, 2.321-2.323 /
# 2.744-2.745 / 3.224-3.227; qwen2.5-32b 8.833-8.842 / 10.246-10.252 / 12.924-12.943, 8.801-8.805 / 10.194-10.196 /
# 12.849-12.852, 8.781-8.783 / 10.235 / 12.832-12.847. 256 is the fastest at 8 rows, 512 at 1 and 16 by less
# than 256 gains over 128 there. With 4 loads a thread in flight instead of 16 (40 registers instead of 82) the
# 8- and 16-row passes were slower, by 0.04-0.05 and 0.13-0.14 ms
# (tests/results/rmsnorm_stage4_tried_llama8b_h200.json).
RMSNORM_Q8_THREADS = 256
# Threads per block of silu_mul_q8 (up to RS_SILU_Q8_MAX_THREADS; a group of 32 a Q8_0 block of a row). It follows
# the gate/up GEMV, which fills the multiprocessors at 3-16 rows, so its blocks start only as that GEMV's leave:
# fewer, larger blocks start sooner, the arithmetic the same. H200, 2026-12-04, the llama-8b pass at position 64
# (graph replay, variants in turn, three times; tests/results/small_blocks_llama8b_h200.json), 128 -> 512 threads:
# 1 / 8 / 16 rows 2.371-2.374 / 2.788-2.791 / 3.329-3.336 -> 2.373-2.375 / 2.771-2.773 / 3.307-3.308 ms; 1024
# threads: 2.379-2.382 / 2.768-2.769 / 3.306-3.307. rope_kv, after the Q/K/V GEMV, gained nothing from blocks of 4
# (row, head) slots (2.772 / 3.306 at 8 / 16 rows beside 2.772 / 3.307). Four Q8_0 blocks a group of 32 lanes
# instead (fewer blocks, a longer chain a thread) was slower: 2.393 / 2.810 / 3.339 -> 2.436-2.440 / 2.891 /
# 3.427-3.434 (tests/results/silu_four_blocks_a_group_tried_h200.json).
SILU_Q8_THREADS = 512
GRID_Y_MAX = 65535  # the most blocks a launch's grid may have along y (CUDA and HIP)


def silu_mul_q8_grid(rows: int, n: int) -> tuple[tuple[int, int], int]:
    """silu_mul_q8's grid (rows, parts of a row) and threads a block for `rows` rows of n values (n // 32 >= 1
    Q8_0 blocks); a row of more blocks than GRID_Y_MAX parts hold is refused (DeviceError), not launched."""
    nb = n // QK8_0
    threads = min(SILU_Q8_THREADS, QK8_0 * nb)  # groups of 32 lanes, a Q8_0 block each
    parts = -(-nb // (threads // QK8_0))
    if parts > GRID_Y_MAX:
        raise DeviceError(f"silu_mul_q8: rows of {n} values are more than the GPU kernel takes "
                          f"({GRID_Y_MAX * SILU_Q8_THREADS} at most)")
    return (rows, parts), threads


def kernel_dir() -> pathlib.Path:
    """Where the kernel sources are: kernels_raw/ beside the package (a source checkout) or inside it."""
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here / "kernels_raw", here.parent / "kernels_raw"):
        if (candidate / "portable.h").is_file():
            return candidate
    raise DeviceError(f"the kernel sources (kernels_raw/) are not found beside {here}")


def kernel_source(stem: str) -> str:
    """kernels_raw/<stem>.hip with its local #include "..." lines replaced by the headers' text (each once),
    so that the compiler needs no include path and the kernel cache's key covers every header."""
    directory = kernel_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (directory / name).read_text()
        return re.sub(r'^#include "([^"]+)"\s*$', lambda m: expand(m.group(1)), text, flags=re.MULTILINE)

    return expand(f"{stem}.hip")


def kernel_cache_dir() -> pathlib.Path:
    """Compiled kernels: $XDG_CACHE_HOME/refspec/kernels (or ~/.cache/refspec/kernels)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "refspec" / "kernels"


def kernel_cache_name(stem: str, options: tuple, name_expressions: tuple, toolchain: tuple) -> str:
    """The file stem under kernel_cache_dir() of kernels_raw/<stem>.hip compiled with `options` for these template
    instances by `toolchain` (GpuBackend._toolchain): keyed by all of them and the expanded source."""
    key = hashlib.sha256(repr((kernel_source(stem), options, name_expressions, toolchain)).encode()).hexdigest()
    return f"{stem}-{key[:32]}"


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Best effort: a cache that cannot be written only costs a compile next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
            f.write(data)
        os.replace(f.name, path)
    except OSError:
        pass


def gpu_available() -> bool:
    """True when CuPy is importable and sees at least one GPU. Never raises."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 (no CuPy, no driver, no device: all mean "no GPU")
        return False


def _check_q8(w: Q8Matrix) -> None:
    n, k = w.shape  # (not w.q: a matrix stored as GGUF blocks makes its quants contiguous on each access)
    if k % QK8_0 or w.d.shape != (n, k // QK8_0):
        raise DeviceError(f"a Q8_0 matrix of shape {w.shape} with scales {w.d.shape} is malformed")


def _q8_bytes(w: Q8Matrix) -> int:
    """Device bytes of a Q8Matrix: int8 quants and fp16 scales."""
    n, k = w.shape
    return n * k + 2 * n * (k // QK8_0)


@dataclass
class GpuQ8:
    """A Q8Matrix on the device: int8 quants q [N, K] and fp16 scales d [N, K/32] (the aligned layout).
    Matrices that read the same input (Q, K, V; gate, up; qwen35's qkv, z, beta, alpha) are uploaded as one
    stack: each is then rows start .. stop-1 of `stack`, a view, and one GEMV launch over the stack computes
    all of them."""

    q: object
    d: object
    stack: "GpuQ8 | None" = None
    start: int = 0
    stop: int = 0
    bias_rows: object = None  # a stack with biases (qwen2's Q/K/V): them, repeated, float32 [GEMV_MAX_ROWS, N]
    bias: object = None  # a part of such a stack: its bias, a view of the stack's bias_rows[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)


class GpuBackend:
    """refspec's operations on a GPU through CuPy (module docstring). `poison`, when given, is a byte
    written over every output buffer before its kernel runs: tests use it to show that every element of
    every output is written."""

    name = "gpu"
    NGRAM_MAX_N = NGRAM_MAX_N  # the longest n-gram kernels_raw/ngram.hip drafts from (refspec.speculative)

    def __init__(self, poison: int | None = None, mma_min_rows: int | None = GEMV_MMA_MIN_ROWS,
                 overlap: bool | None = None, mma_min_weights: int = GEMV_MMA_MIN_WEIGHTS, short_rows: bool = True,
                 resident_activations: bool = True, even_blocks: bool = True):
        if mma_min_rows is not None:
            mma_min_rows = checks.integer("mma_min_rows", mma_min_rows, 1, GEMV_MAX_ROWS)
        mma_min_weights = checks.integer("mma_min_weights", mma_min_weights, 0)
        try:
            import cupy
        except ImportError as err:
            raise DeviceError(f"the GPU backend needs CuPy: {err}") from err
        if not gpu_available():
            raise DeviceError("CuPy sees no GPU")
        self.cp = cupy
        self.platform = "hip" if cupy.cuda.runtime.is_hip else "cuda"
        # NVIDIA compute capability as a number (90 for sm_90), read once: GEMV launches consult it; 0 on HIP
        self._capability = int(cupy.cuda.Device().compute_capability) if self.platform == "cuda" else 0
        self._multiprocessors = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["multiProcessorCount"]
        self.poison = poison
        # GEMVs of at least this many rows use q8_gemv_mma where the GPU has integer tensor cores (same bits)
        self.mma_min_rows = mma_min_rows
        self.mma_min_weights = mma_min_weights  # ... of matrices of at least this many weights
        self.short_rows = bool(short_rows)  # one-row GEMVs of short rows may take GEMV_SHORT_ROWS (False: to compare)
        # one- and two-row GEMVs of long rows in one wave hold each multiprocessor to an even share of blocks
        # (False: to compare; GEMV_EVEN_MIN_K)
        self.even_blocks = bool(even_blocks)
        self._even_shared_bytes: dict[tuple, int] = {}
        # tensor-core GEMVs whose blocks stream tiles keep their activations resident (False: to compare)
        self.resident_activations = bool(resident_activations)
        self._modules: dict[tuple, object] = {}
        self._functions: dict[tuple, object] = {}
        self._gemv_groups: dict[str, tuple[str, ...]] = {}
        self._mma_configs: dict[tuple, GemvConfig] = {}  # _mma_config's answers (an eager pass asks each launch)
        self._held: list | None = None  # while a pass is captured: every array it allocates (see hold)
        self._live = None  # while a chained speculative pass is captured: its live-row count (see live_rows)
        # Kernels launched so that each may start while the one before it finishes (refspec/gpu_launch.py;
        # same bits): by default wherever the GPU can (NVIDIA sm_90+); overlap=False launches them plainly.
        self._launcher = None
        self.overlap = self.overlap_available if overlap is None else overlap

    @property
    def mma_available(self) -> bool:
        """Whether kernels_raw/q8_gemv.hip's q8_gemv_mma can run: integer tensor cores (NVIDIA sm_80+)."""
        return self._capability >= 80

    @property
    def overlap_available(self) -> bool:
        """Whether kernels can be launched to overlap their boundaries (programmatic dependent launch,
        refspec/gpu_launch.py): NVIDIA sm_90 and newer."""
        return self._capability >= 90

    @property
    def overlap(self) -> bool:
        """Whether this backend launches its kernels overlapped (GpuBackend(overlap=...)); settable before
        the passes that should use it (a captured graph keeps the launches it was recorded with)."""
        return self._launcher is not None

    @overlap.setter
    def overlap(self, on: bool) -> None:
        if on and not self.overlap_available:
            raise DeviceError("overlapped kernel launches need an NVIDIA GPU of compute capability 9.0 or newer")
        if on and self._launcher is None:
            self._launcher = DependentLaunch(self.cp)
        elif not on:
            self._launcher = None

    @property
    def graphs_available(self) -> bool:
        """Whether passes can be captured as graphs (refspec/gpu_graphs.py): CuPy captures on CUDA only."""
        return self.platform == "cuda"

    # ---- kernels
    def function(self, stem: str, name: str, name_expressions: tuple[str, ...] = ()):
        """The compiled kernel `name` of kernels_raw/<stem>.hip (a template instance if name_expressions are
        given); each source is compiled once per process (per set of template instances)."""
        key = (stem, name)
        fn = self._functions.get(key)
        if fn is None:
            module_key = (stem, name_expressions)
            if module_key not in self._modules:
                self._modules[module_key] = self._load_module(stem, name_expressions)
            module, mapping = self._modules[module_key]
            try:
                fn = Kernel(module.get_function(mapping.get(name, name)), self)
            except Exception as err:
                raise DeviceError(f"kernel {name} of kernels_raw/{stem}.hip cannot be loaded: {err}") from err
            self._functions[key] = fn
        return fn

    def _load_module(self, stem: str, name_expressions: tuple[str, ...]):
        """Compile (or take from the disk cache) and load one kernel source.

        CuPy's RawModule appends its own flush-to-zero option (-ftz=true, -fcuda-flush-denormals-to-zero)
        after the caller's options, which would flush subnormals and break the spec. So the source goes to
        NVRTC / hiprtc through CuPy's compile_using_nvrtc, which passes our options unchanged, and the binary
        is cached here under $XDG_CACHE_HOME/refspec/kernels, keyed by source, options and toolchain."""
        source = kernel_source(stem)
        options = COMPILE_OPTIONS[self.platform]
        path = kernel_cache_dir() / kernel_cache_name(stem, options, name_expressions, self._toolchain())
        binary = mapping = None
        try:
            binary = path.with_suffix(".bin").read_bytes()
            mapping = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            binary = None
        if binary is None:
            from cupy.cuda import compiler

            try:
                binary, mapping = compiler.compile_using_nvrtc(
                    source, options, filename=f"{stem}.cu", name_expressions=list(name_expressions) or None
                )
            except Exception as err:  # CuPy's CompileException carries the compiler's log
                lines = [ln for ln in str(err).splitlines() if "error" in ln] or str(err).splitlines() or [repr(err)]
                raise DeviceError(f"kernels_raw/{stem}.hip failed to compile: {lines[0].strip()}") from err
            mapping = dict(mapping or {})
            _write_atomically(path.with_suffix(".json"), json.dumps(mapping).encode())
            _write_atomically(path.with_suffix(".bin"), binary)
        module = self.cp.cuda.function.Module()
        try:
            module.load(binary)
        except Exception as err:
            raise DeviceError(f"kernels_raw/{stem}.hip compiled but cannot be loaded: {err}") from err
        return module, mapping

    def _toolchain(self) -> tuple:
        cp = self.cp
        return (self.platform, cp.__version__, tuple(cp.cuda.nvrtc.getVersion()),
                cp.cuda.Device().compute_capability)

    def gemv_module(self, names) -> None:
        """Compile these GEMV instances (GemvConfig.name) together, in one module (a benchmark compiles its
        variants so; the production instances are one module too)."""
        group = tuple(sorted(set(names)))
        for name in group:
            self._gemv_groups.setdefault(name, group)

    def _gemv_function(self, config: GemvConfig, rows: int):
        if not self._gemv_groups:
            self.gemv_module(production_gemv_names(self.platform == "cuda",
                                                   self.mma_min_rows if self.mma_available else None))
        name = config.name(rows)
        return self.function("q8_gemv", name, self._gemv_groups.get(name, (name,)))

    def _resident(self, config: GemvConfig, rows: int = 1) -> int:
        """How many thread blocks of a dp4a GEMV of `rows` rows in `config` the GPU holds at once (CUDA)."""
        return self._gemv_function(config, rows).resident_blocks(config.threads(), 0) * self._multiprocessors

    @staticmethod
    def _blocks(n: int, threads: int) -> int:
        return max(1, -(-n // threads))

    # ---- memory
    def asarray(self, a):
        return self.cp.asarray(a)

    def to_host(self, a) -> np.ndarray:
        return self.cp.asnumpy(a) if isinstance(a, self.cp.ndarray) else np.asarray(a)

    def zeros(self, shape):
        return self.cp.zeros(shape, F32)

    def synchronize(self):
        self.cp.cuda.get_current_stream().synchronize()

    def hold(self, held: list | None) -> None:
        """While a pass is captured as a graph (refspec/gpu_graphs.py), every array the operations allocate
        is appended to `held`, which the graph keeps: the memory a graph replays into must never return to
        CuPy's pool, where something else could take it. None ends that."""
        self._held = held

    def live_rows(self, live) -> None:
        """While a chained pass of R rows is captured (refspec/gpu_graphs.py: speculative_steps, greedy_steps),
        `live`, a device int32 [1] that the step ending each replay writes for the next: the kernels that can
        then compute only its first live[0] rows (kernels_raw/portable.h, rs_live_rows: the dp4a GEMVs, the
        RMSNorm and SiLU quantizers, RoPE with the KV write, attention, argmax). They read it before they wait
        for the kernel ahead of them, so it must be written before the pass starts (by an earlier graph
        replay or a copy), never by a kernel of the pass. Those rows' bits are the same; the other rows'
        outputs are left as they were (the pass never reads them). None ends that."""
        self._live = live

    def _live_arg(self):
        """The `live` argument of a launch (a null pointer outside live_rows)."""
        return 0 if self._live is None else self._live

    def _new(self, shape, dtype=F32):
        out = self.cp.empty(shape, dtype)
        if self._held is not None:
            self._held.append(out)
        return out

    def _empty(self, shape, dtype=F32):
        out = self._new(shape, dtype)
        if self.poison is not None:
            out.view(np.uint8).fill(self.poison)
        return out

    def _input(self, a, dtype=F32):
        """A C-contiguous device array of `dtype` whose data is 16-byte aligned (the kernels load 16 bytes)."""
        if (isinstance(a, self.cp.ndarray) and a.dtype == dtype and a.flags.c_contiguous
                and a.data.ptr % 16 == 0):
            return a  # the common case, checked cheaply: launches are what a decoding step costs
        out = self._new(np.shape(a), dtype)
        out[...] = self.cp.asarray(a, dtype=dtype)
        return out

    def _rows(self, a, dtype=F32):
        """(array, row stride in elements) for a device array whose rows (first axis) are contiguous and
        16-byte aligned but may lie apart, such as a column slice of a stacked GEMV's output; others are
        copied first."""
        if (isinstance(a, self.cp.ndarray) and a.dtype == dtype and a.ndim >= 1 and a.size
                and a[0].flags.c_contiguous and a.data.ptr % 16 == 0 and a.strides[0] % 16 == 0):
            return a, a.strides[0] // a.itemsize
        a = self._input(a, dtype)
        return a, (a[0].size if a.ndim and len(a) else 0)

    def pass_input(self, ids, pos0: int):
        """Token ids [R] and the first position on the device, as one int32 array [pos0, ids...] sent by one
        copy: (ids view, pos view). The operations read positions from device memory, so that a captured
        pass serves every position."""
        host = np.empty(1 + len(ids), np.int32)
        host[0], host[1:] = pos0, ids
        buf = self.cp.asarray(host)
        return buf[1:], buf[:1]

    def _pos(self, pos):
        """The first position as a device int32 [1] array (an int is sent; a device array is used as is)."""
        if isinstance(pos, self.cp.ndarray):
            return pos
        if int(pos) < 0:
            raise UsageError(f"positions start at 0, got {pos}")
        return self.cp.asarray(np.array([pos], np.int32))

    def upload_weights(self, weights: ModelWeights) -> ModelWeights:
        """Every weight on the device, Q/K/V, gate/up and DeltaNet's qkv/z/beta/alpha as stacks (GpuQ8);
        refused before anything is uploaded when the device lacks the memory."""
        self.check_fits(weights)
        uploaded: dict[int, object] = {}
        for lw in weights.layers:
            for group in ((lw.wq, lw.wk, lw.wv), (lw.w_gate, lw.w_up), (lw.w_qkv, lw.w_z, lw.w_beta, lw.w_alpha)):
                if all(isinstance(w, Q8Matrix) for w in group):  # (a DeltaNet layer has no Q/K/V, others no qkv/z/b/a)
                    parts = self.upload_stack(group)
                    for source, matrix in parts:
                        uploaded[id(source)] = matrix
                    if group[0] is lw.wq and lw.bq is not None:
                        for source, bias in zip((lw.bq, lw.bk, lw.bv), self.upload_stack_biases(
                                [m for _, m in parts], (lw.bq, lw.bk, lw.bv))):
                            uploaded[id(source)] = bias

        def up(value):
            if id(value) in uploaded:  # (a tied head shares the embedding's copy)
                return uploaded[id(value)]
            if isinstance(value, Q8Matrix):
                uploaded[id(value)] = self.upload_q8(value)
                return uploaded[id(value)]
            return None if value is None else self._input(value)

        layers = [LayerWeights(**{f: up(v) for f, v in vars(lw).items()}) for lw in weights.layers]
        mtp = MtpWeights(**{f: up(v) for f, v in vars(weights.mtp).items()}) if weights.mtp else None
        return ModelWeights(up(weights.tok_embd), layers, up(weights.output_norm), up(weights.output), mtp=mtp)

    def check_fits(self, weights: ModelWeights, reserve: int = 1 << 30) -> None:
        """DeviceError unless the weights fit the device's free memory with `reserve` bytes to spare (for
        the KV cache and activations, which the caller sizes)."""
        seen, need = set(), 0
        mtp = list(vars(weights.mtp).values()) if weights.mtp else []
        for w in [weights.tok_embd, weights.output, weights.output_norm] + mtp + [
                v for lw in weights.layers for v in vars(lw).values()]:
            if w is not None and id(w) not in seen:
                seen.add(id(w))
                need += _q8_bytes(w) if isinstance(w, Q8Matrix) else np.asarray(w).nbytes
        for lw in weights.layers:  # Q/K/V biases are held repeated over GEMV_MAX_ROWS rows (upload_stack_biases)
            need += sum(np.asarray(b).nbytes * (GEMV_MAX_ROWS - 1) for b in (lw.bq, lw.bk, lw.bv) if b is not None)
        free, total = self.cp.cuda.runtime.memGetInfo()
        if need + reserve > free:
            raise DeviceError(
                f"the model needs {need / 1e9:.2f} GB of GPU memory (+{reserve / 1e9:.1f} GB for the cache and "
                f"activations), but {free / 1e9:.2f} GB of {total / 1e9:.2f} GB are free; use --device cpu")

    def upload_stack(self, ws) -> list[tuple[Q8Matrix, GpuQ8]]:
        """Q8Matrices with the same K as one device stack [sum N, K]: (each matrix, its row view)."""
        for w in ws:
            _check_q8(w)
        k = ws[0].shape[1]
        if any(w.shape[1] != k for w in ws):
            return [(w, self.upload_q8(w)) for w in ws]
        n = sum(w.shape[0] for w in ws)
        stack = GpuQ8(q=self.cp.empty((n, k), np.int8), d=self.cp.empty((n, k // QK8_0), np.float16))
        stack.stack, stack.start, stack.stop = stack, 0, n
        parts, start = [], 0
        for w in ws:
            stop = start + w.shape[0]
            stack.q[start:stop].set(np.ascontiguousarray(w.q, dtype=np.int8))
            stack.d[start:stop].set(np.ascontiguousarray(w.d, dtype=np.float16))
            parts.append((w, GpuQ8(stack.q[start:stop], stack.d[start:stop], stack, start, stop)))
            start = stop
        return parts

    def upload_stack_biases(self, parts: list[GpuQ8], biases) -> list:
        """The biases of a stack's parts (qwen2's bq, bk, bv), each a float32 vector as long as its part:
        uploaded as the stack's bias_rows, repeated over GEMV_MAX_ROWS rows, which q8_gemv_many_bias's one
        launch adds in the GEMV's epilogue as it adds a residual. Returns each part's bias (part.bias), or
        the biases uploaded apart where the parts are not one stack."""
        biases = [np.asarray(b, dtype=np.float32) for b in biases]
        stack = parts[0].stack
        if (stack is None or any(p.stack is not stack for p in parts)
                or [b.shape for b in biases] != [(p.stop - p.start,) for p in parts]):
            return [self._input(b) for b in biases]
        stack.bias_rows = self.cp.asarray(np.tile(np.concatenate(biases), (GEMV_MAX_ROWS, 1)))
        for p in parts:
            p.bias = stack.bias_rows[0, p.start : p.stop]
        return [p.bias for p in parts]

    def upload_q8(self, w: Q8Matrix) -> GpuQ8:
        _check_q8(w)
        q = self.cp.asarray(np.ascontiguousarray(w.q, dtype=np.int8))
        d = self.cp.asarray(np.ascontiguousarray(w.d, dtype=np.float16))
        return GpuQ8(q=q, d=d)

    # ---- operations (each is its spec twin; the fused ones are the twins of the compositions that
    #      refspec.backends.CpuBackend spells out)
    def embed(self, w: GpuQ8, ids):
        """Rows of the embedding for token ids: a host sequence (checked here) or a device int32 array
        (pass_input's, checked by the caller: refspec/forward.py)."""
        n_vocab, n_embd = w.shape
        if not isinstance(ids, self.cp.ndarray):
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if ids.size and (ids.min() < 0 or ids.max() >= n_vocab):
                raise UsageError(f"token ids must be in 0..{n_vocab - 1}")
            ids = self.cp.asarray(ids.astype(np.int32))
        out = self._empty((len(ids), n_embd))
        if len(ids):
            threads = 256
            self.function("embed", "embed")(
                (self._blocks(n_embd, threads), len(ids)), (threads,), (w.q, w.d, ids, np.int32(n_embd), out),
            )
        return out

    def add(self, x, y):
        """x + y, y repeated over x's rows; x's rows may lie apart (a view of a stacked GEMV's output)."""
        y = self._input(y)
        if getattr(x, "ndim", 0) >= 2:
            x, stride = self._rows(x)
            row = math.prod(x.shape[1:])
        else:
            x = self._input(x)
            row = stride = max(x.size, 1)
        if y.size == 0 or x.size % y.size or x.shape[x.ndim - y.ndim:] != y.shape:
            raise ValueError(f"add: cannot add {y.shape} to each row of {x.shape}")
        out = self._empty(x.shape)
        if x.size:
            threads = 256
            self.function("add", "add")(
                (self._blocks(x.size, threads),), (threads,),
                (x, np.int64(stride), np.int32(row), y, np.int32(x.size), np.int32(y.size), out),
            )
        return out

    def rmsnorm(self, x, w, eps):
        """spec.rmsnorm over the last axis; x [R, heads, n] may be a view whose heads lie apart (qwen35's
        queries between their gates, keys in the stacked Q/K/V output): read in place."""
        x, x_stride, heads, head_stride = self._strided_heads(x)
        w = self._input(w)
        n = x.shape[-1] if x.ndim else 1
        rows = x.size // n if n else 0
        out = self._empty(x.shape)
        if rows:
            groups = 4  # RS_RMSNORM_THREADS / 32
            self.function("rmsnorm", "rmsnorm")(
                (self._blocks(rows, groups),), (32 * groups,),
                (x, np.int64(x_stride), np.int32(heads), np.int64(head_stride), w, F32(eps), np.int32(rows),
                 np.int32(n), out))
        return out

    def _strided_heads(self, x):
        """(array, floats between R-rows, heads, floats between heads) for a float32 device array
        [R, heads, n] whose values within a head are contiguous (any view of that kind is read in place);
        anything else is made contiguous rows of n (heads = 1)."""
        cp = self.cp
        if (isinstance(x, cp.ndarray) and x.dtype == F32 and x.ndim == 3 and x.size
                and x.strides[2] == x.itemsize and x.strides[0] % x.itemsize == 0 and x.strides[1] % x.itemsize == 0
                and x.strides[0] >= 0 and x.strides[1] >= 0):
            return x, x.strides[0] // x.itemsize, x.shape[1], x.strides[1] // x.itemsize
        x = self._input(x)
        n = x.shape[-1] if x.ndim else 1
        return x, n, 1, n

    def _q8_outputs(self, rows: int, k: int):
        if k % QK8_0:
            raise ValueError(f"quantize_q8_0: rows of {k} values are not whole blocks of {QK8_0}")
        return self._empty((rows, k), np.int8), self._empty((rows, k // QK8_0), np.float16)

    def quantize_q8(self, x):
        x = self._input(x)
        rows, k = x.shape
        xq, xd = self._q8_outputs(rows, k)
        n_blocks = rows * (k // QK8_0)
        if n_blocks:
            threads = 128  # RS_QUANTIZE_THREADS
            self.function("quantize_q8_0", "quantize_q8_0")(
                (self._blocks(n_blocks, threads),), (threads,), (x, np.int32(rows), np.int32(k), xq, xd)
            )
        return xq, xd

    def rmsnorm_q8(self, x, w, eps):
        x, w = self._input(x), self._input(w)
        rows, k = x.shape
        xq, xd = self._q8_outputs(rows, k)
        if rows and k:
            staged = 4 * k <= RMSNORM_Q8_SHARED_BYTES  # the row staged in shared memory (see the kernel)
            nb = k // QK8_0  # a group of 32 lanes takes up to RMSNORM_Q8_PER_GROUP of them a part
            threads = min(RMSNORM_Q8_THREADS, QK8_0 * self._blocks(nb, RMSNORM_Q8_PER_GROUP))
            parts = self._blocks(nb, threads // QK8_0 * RMSNORM_Q8_PER_GROUP)  # thread blocks per row
            self.function("quantize_q8_0", "rmsnorm_q8" if staged else "rmsnorm_q8_wide")(
                (rows * parts,), (threads,),
                (x, w, F32(eps), np.int32(k), np.int32(parts), xq, xd, self._live_arg()),
                shared_mem=4 * k if staged else 0)
        return xq, xd

    def silu_mul_q8(self, gate, up):
        """quantize_q8(silu_mul(gate, up)) in one launch; gate and up may be views of one stacked output."""
        (gate, g_stride), (up, u_stride) = self._rows(gate), self._rows(up)
        if gate.shape != up.shape or gate.ndim != 2 or g_stride != u_stride or g_stride % 4:
            gate, up = self._input(gate), self._input(up)
            g_stride = gate.shape[1] if gate.ndim == 2 else 0
            if gate.shape != up.shape or gate.ndim != 2:
                raise ValueError(f"silu_mul_q8: gate {gate.shape} and up {up.shape} differ")
        rows, n = gate.shape
        xq, xd = self._q8_outputs(rows, n)
        if rows and n // QK8_0:
            grid, threads = silu_mul_q8_grid(rows, n)
            self.function("quantize_q8_0", "silu_mul_q8")(
                grid, (threads,),
                (gate, up, np.int64(g_stride), np.int32(rows), np.int32(n), xq, xd, self._live_arg()),
            )
        return xq, xd

    def q8_gemv(self, w: GpuQ8, xq, xd, base=None, *, biased: bool = False):
        """W8A8 GEMV [R, K] -> [R, N]; with `base` [R, N], base + the product (spec.add in the epilogue);
        biased: w.bias_rows + the product instead, its bias added to every row (q8_gemv_many_bias)."""
        xq, xd = self._input(xq, np.int8), self._input(xd, np.float16)
        rows, k = xq.shape
        n = w.shape[0]
        if w.shape[1] != k or xd.shape != (rows, k // QK8_0):
            raise ValueError(f"q8_gemv: weights {w.shape}, activations {xq.shape} and scales {xd.shape} disagree")
        if base is not None:
            base = self._input(base)
            if base.shape != (rows, n):
                raise ValueError(f"q8_gemv: the residual {base.shape} is not [{rows}, {n}]")
        if biased and (base is not None or w.bias_rows is None):
            raise ValueError("q8_gemv: biased takes a stack uploaded with its biases, and no residual")
        if self._live is not None and rows > GEMV_MAX_ROWS:
            raise ValueError(f"q8_gemv: live rows need one launch: at most {GEMV_MAX_ROWS} rows, got {rows}")
        y = self._empty((rows, n))
        for r0 in range(0, rows, GEMV_MAX_ROWS):
            part = min(GEMV_MAX_ROWS, rows - r0)
            add = w.bias_rows[:part] if biased else None if base is None else base[r0 : r0 + part]
            self.launch_gemv(self.gemv_config(part, k, n), w, xq[r0 : r0 + part], xd[r0 : r0 + part],
                             y[r0 : r0 + part], add)
        return y

    def gemv_config(self, rows: int, k: int, n: int) -> GemvConfig:
        """The GEMV configuration q8_gemv launches for `rows` <= GEMV_MAX_ROWS rows of length k against an [n, k]
        matrix: the tensor-core kernel from mma_min_rows rows and mma_min_weights weights where it can run,
        else GEMV_FEW_BLOCKS[rows] for long rows of a matrix too short to fill the GPU, GEMV_SHORT_ROWS for one
        row of a short one, GEMV_CONFIGS[rows] held to even blocks a multiprocessor (GEMV_EVEN_MIN_K) for one or
        two long rows where its grid is one wave and shared memory can hold it there (_even_shared), else
        GEMV_CONFIGS[rows]."""
        if (self.mma_min_rows is not None and rows >= self.mma_min_rows and n * k >= self.mma_min_weights
                and self.mma_available and GEMV_MMA.takes(k)):
            return self._mma_config(rows, n, k)
        if (rows == 1 and GEMV_SHORT_ROWS_K[0] <= k <= GEMV_SHORT_ROWS_K[1] and self.platform == "cuda"
                and self.short_rows):
            usual, blocks = GEMV_CONFIGS[1], self._blocks(n, GEMV_CONFIGS[1].weight_rows_per_block())
            if blocks <= self._resident(GEMV_SHORT_ROWS[3]):
                return GEMV_SHORT_ROWS[3]
            if blocks > self._resident(usual) and blocks <= self._resident(GEMV_SHORT_ROWS[2]):
                return GEMV_SHORT_ROWS[2]
        if (rows in GEMV_FEW_BLOCKS and k >= GEMV_FEW_BLOCKS_MIN_K
                and self._blocks(n, GEMV_CONFIGS[rows].weight_rows_per_block()) < self._multiprocessors):
            return GEMV_FEW_BLOCKS[rows]
        if rows <= 2 and k >= GEMV_EVEN_MIN_K and self.platform == "cuda" and self.even_blocks:
            usual, even = GEMV_CONFIGS[rows], replace(GEMV_CONFIGS[rows], even=True)
            blocks = self._blocks(n, usual.weight_rows_per_block())
            # shared memory that holds a multiprocessor to fewer blocks than fit (so the grid is one wave, not
            # already even); one block a multiprocessor needs none
            if (blocks > self._multiprocessors
                    and self._even_shared(self._gemv_function(usual, rows), even, rows, blocks) > 0):
                return even
        return GEMV_CONFIGS[rows]

    def _mma_config(self, rows: int, n: int, k: int) -> GemvConfig:
        """gemv_mma(rows), except for 9-16 rows of a matrix whose tall tiles are more than the GPU holds at once
        and at most GEMV_MMA_STREAM_WAVES times that (see GEMV_MMA_TALL): GEMV_MMA (but not for rows of
        GEMV_MMA_TALL_LONG_MIN_K or more at GEMV_MMA_TALL_LONG_ROWS rows). Then GEMV_MMA, where its
        blocks take two tiles or more (_mma_grid), with its activations resident, if their slots fit without
        costing a stream of tiles: GEMV_MMA_TWO_STREAMS up to 8 rows, else GEMV_MMA_RESIDENT. But first, where
        GEMV_MMA_TALL's tiles (9-16 rows) are more than the GPU holds at once, GEMV_MMA_TWO_STREAMS_16 with
        resident activations, if its slots fit and it holds twice the tall tile's streams (the same weight rows
        in flight). Last, in place of GEMV_MMA at 3-8 rows, GEMV_MMA_NARROW for rows of GEMV_MMA_NARROW_MIN_K or
        more where its tiles are at most GEMV_MMA_STREAM_WAVES waves. Worked out once per shape."""
        key = (rows, n, k, self.resident_activations)
        if key not in self._mma_configs:
            self._mma_configs[key] = self._choose_mma_config(rows, n, k)
        return self._mma_configs[key]

    def _choose_mma_config(self, rows: int, n: int, k: int) -> GemvConfig:
        def capacity(config: GemvConfig) -> tuple[int, int]:  # streams at once: of one tile a block, and streaming
            _, _, wave, slots = self._mma_capacity(self._gemv_function(config, rows), config, rows, k)
            return wave, slots

        def fits(config: GemvConfig) -> bool:  # a resident mapping whose slots fit
            return self.resident_activations and self.gemv_fits(config, rows, k)

        config = gemv_mma(rows)
        tiles = self._blocks(n, config.weight_rows_per_block())
        wave, slots = capacity(config)
        two = GEMV_MMA_TWO_STREAMS_16
        if config == GEMV_MMA_TALL and tiles > wave and slots == wave and fits(two) and capacity(two)[1] >= 2 * slots:
            return two
        long_rows = k >= GEMV_MMA_TALL_LONG_MIN_K and rows in GEMV_MMA_TALL_LONG_ROWS
        if config == GEMV_MMA_TALL and wave < tiles <= GEMV_MMA_STREAM_WAVES * wave and not long_rows:
            config = GEMV_MMA
            tiles = self._blocks(n, config.weight_rows_per_block())
            wave, slots = capacity(config)
        if config == GEMV_MMA and tiles > wave and slots == wave:
            for resident in ((GEMV_MMA_TWO_STREAMS,) if rows <= 8 else ()) + (GEMV_MMA_RESIDENT,):
                if fits(resident) and capacity(resident)[1] == slots:
                    return resident
        # (else a block a tile, or no slots to spare: nothing to keep)
        if config == GEMV_MMA and rows <= 8 and k >= GEMV_MMA_NARROW_MIN_K and tiles <= GEMV_MMA_STREAM_WAVES * wave:
            return GEMV_MMA_NARROW
        return config

    def gemv_fits(self, config: GemvConfig, rows: int, k: int) -> bool:
        """Whether `config` can run rows of length k on this GPU: its shared memory (a resident GEMV's slots grow
        with k) within what a block may opt in to."""
        nbytes = config.shared_bytes(rows, k)
        return nbytes == 0 or nbytes <= self._gemv_function(config, rows).shared_limit()

    def q8_gemv_add(self, x, w: GpuQ8, xq, xd):
        """x + w @ (xq, xd): the residual add in the GEMV's epilogue."""
        return self.q8_gemv(w, xq, xd, base=x)

    def q8_gemv_many(self, ws, xq, xd):
        """GEMVs of several matrices over the same activation rows: one launch when they are the parts of
        one uploaded stack, in order (their outputs are then column views of one [R, sum N] array)."""
        if self._whole_stack(ws):
            y = self.q8_gemv(ws[0].stack, xq, xd)
            return [y[:, w.start : w.stop] for w in ws]
        return [self.q8_gemv(w, xq, xd) for w in ws]

    def q8_gemv_many_bias(self, ws, biases, xq, xd):
        """q8_gemv_many, each output plus its bias: one launch, the adds in the GEMV's epilogue (bias + sum,
        spec.add's one rounding), when the matrices are one uploaded stack and the biases those uploaded with
        it (upload_stack_biases); else the GEMVs, then an add each."""
        if self._whole_stack(ws) and all(w.bias is not None and b is w.bias for w, b in zip(ws, biases)):
            y = self.q8_gemv(ws[0].stack, xq, xd, biased=True)
            return [y[:, w.start : w.stop] for w in ws]
        if len(biases) != len(ws):
            raise ValueError(f"q8_gemv_many_bias: {len(ws)} matrices, {len(biases)} biases")
        return [self.add(y, b) for y, b in zip(self.q8_gemv_many(ws, xq, xd), biases)]

    @staticmethod
    def _whole_stack(ws) -> bool:
        """Whether ws are every part of one uploaded stack, in order."""
        stack = ws[0].stack
        return stack is not None and all(w.stack is stack for w in ws) and [w.start for w in ws] == [
            0] + [w.stop for w in ws[:-1]] and ws[-1].stop == stack.stop

    def launch_gemv(self, config: GemvConfig, w: GpuQ8, xq, xd, y, base=None, max_blocks: int | None = None):
        """One launch of the GEMV in `config` over xq.shape[0] <= GEMV_MAX_ROWS rows, writing y (contiguous
        rows of a C-contiguous array), or base + the product when base (same shape as y) is given.
        refspec.bench_gemv and the tests call it with every variant. q8_gemv_mma's blocks each take every
        blocks-th tile of 16*MT weight rows: as many blocks as the GPU holds at once (at most max_blocks, which
        the tests use to give a block many tiles), so that a block's weight stream runs on from tile to tile."""
        rows, k = xq.shape
        n = w.shape[0]
        if max_blocks is not None:
            max_blocks = checks.integer("max_blocks", max_blocks, 1)
        if n == 0 or rows == 0:
            return
        if not config.takes(k):
            raise ValueError(f"{config.kernel}: K = {k} is not a multiple of 64 (its scales are copied in pairs)")
        blocks = self._blocks(n, config.weight_rows_per_block())
        kernel = self._gemv_function(config, rows)
        shared = 0  # only q8_gemv_mma has dynamic shared memory (_mma_grid opts in to what it picks)
        if config.kernel == "q8_gemv_mma":
            blocks, shared = self._mma_grid(kernel, config, rows, k, blocks, max_blocks)
        elif config.even and self.platform == "cuda":  # (HIP: no occupancy calculator; the hardware places them)
            shared = self._even_shared(kernel, config, rows, blocks)
        args = (w.q, w.d, xq, xd, y, np.int32(n), np.int32(k), np.int32(rows), 0 if base is None else base)
        if config.kernel != "q8_gemv_mma":  # (the tensor-core GEMV computes every row)
            args += (self._live_arg(),)
        kernel((blocks,), (config.threads(),), args, shared_mem=shared)

    def _even_shared(self, kernel, config: GemvConfig, rows: int, blocks: int) -> int:
        """Dynamic shared memory (bytes; the kernel uses none) that lets a multiprocessor hold at most
        ceil(blocks / multiprocessors) of the grid's blocks (GemvConfig.even, GEMV_EVEN_MIN_K): the least whole
        KiB that does, or 0 where none up to what a launch may ask without opting in does (an opt-in would ask
        the largest shared-memory carveout for every launch of the kernel, the cache of its activations the
        smaller). CUDA."""
        per = -(-blocks // self._multiprocessors)
        key = (config.name(rows), per)
        if key not in self._even_shared_bytes:
            shared, limit = 0, kernel.shared_allowed
            while shared <= limit and kernel.resident_blocks(config.threads(), shared) > per:
                shared += 1024
            self._even_shared_bytes[key] = shared if shared <= limit else 0
        return self._even_shared_bytes[key]

    def _mma_grid(self, kernel, config: GemvConfig, rows: int, k: int, tiles: int, max_blocks: int | None):
        """q8_gemv_mma's blocks and shared memory: a block for each tile where the GPU holds them all at once;
        else, where the tree's own memory costs no block a multiprocessor, blocks that each stream their
        tiles' weights without a gap: as many as the GPU holds for more tiles than GEMV_MMA_STREAM_WAVES times
        that, or for blocks of two streams (config.groups 2: a block a multiprocessor, which the kernel deals
        tiles b, b + blocks, ..., so that no multiprocessor reads more than one tile above another's), else half
        as many as the tiles, two each (at most max_blocks, with which the tests give a block many tiles). Two
        tiles a block instead of a second wave of blocks: 6144 x 4096 at 8 rows (384 tiles, 264 blocks at once)
        10.85 -> 9.49 us (H200, 2026-12-02). Every slot for blocks of two streams instead of half as many streams
        as tiles: 5120 x 5120 at 8 / 16 rows (320 tiles: 80 multiprocessors reading 4 tiles, 52 idle, against 2-3
        tiles on each of 132) 10.24 / 13.69 -> 9.03 / 12.31 us, 6144 x 4096 9.33 / 12.09 -> 9.10 / 10.94
        (H200, 2026-12-04, tests/results/balanced_streams_h200.json). All of this counts streams of tiles, of
        which a block runs config.groups."""
        one_tile, streamed, wave, slots = self._mma_capacity(kernel, config, rows, k)
        if max_blocks is not None and max_blocks < tiles:
            streams, shared = min(max_blocks, slots), streamed
        elif tiles > wave and slots == wave:
            if config.groups > 1 or tiles > GEMV_MMA_STREAM_WAVES * slots:
                streams = slots
            else:
                streams = -(-tiles // GEMV_MMA_STREAM_WAVES)
            shared = streamed
        else:
            streams, shared = tiles, one_tile
        return -(-streams // config.groups), shared

    def _mma_capacity(self, kernel, config: GemvConfig, rows: int, k: int) -> tuple[int, int, int, int]:
        """q8_gemv_mma's dynamic shared memory for blocks of one tile and for blocks that stream, both opted in
        (first: the occupancy the driver reports, which the kernel keeps, depends on the opt-in), and how many
        streams of tiles of each the GPU holds at once (config.groups a block)."""
        one_tile, streamed = config.shared_bytes(rows, k, one_tile=True), config.shared_bytes(rows, k)
        for nbytes in (one_tile, streamed):
            kernel.allow_shared(nbytes)
        threads, streams = config.threads(), self._multiprocessors * config.groups
        wave = kernel.resident_blocks(threads, one_tile) * streams
        return one_tile, streamed, wave, kernel.resident_blocks(threads, streamed) * streams

    def rope(self, x, pos, cos, sin, neox):
        x, cos, sin = self._input(x), self._input(cos), self._input(sin)
        rows, heads, dim = x.shape
        half = cos.shape[1]
        self._check_positions("rope", pos, rows, cos.shape[0])
        if 2 * half > dim:
            raise ValueError(f"rope: {2 * half} rotated dims exceed the head's {dim}")
        out = self._empty(x.shape)
        if x.size:
            threads = 256
            self.function("rope", "rope")(
                (self._blocks(x.size, threads),), (threads,),
                (x, cos, sin, self._pos(pos), np.int32(rows), np.int32(heads), np.int32(dim), np.int32(half),
                 np.int32(bool(neox)), out),
            )
        return out

    @staticmethod
    def _check_positions(op: str, pos, rows: int, limit: int) -> None:
        """For a host position: pos .. pos+rows-1 must lie in 0 .. limit-1. A device position was checked
        by refspec/forward.py before the pass."""
        if isinstance(pos, (int, np.integer)) and (pos < 0 or pos + rows > limit):
            raise ValueError(f"{op}: positions {pos}..{pos + rows - 1} are outside 0..{limit - 1}")

    def kv_write(self, k_cache, v_cache, k, v, pos):
        k, v = self._input(k), self._input(v)
        rows, kv_heads, dim = k.shape
        n_pos = k_cache.shape[1]
        if k_cache.shape != (kv_heads, n_pos, dim) or v_cache.shape != k_cache.shape or v.shape != k.shape:
            raise ValueError(f"kv_write: rows {k.shape} do not fit the cache {k_cache.shape}")
        self._check_positions("kv_write", pos, rows, n_pos)
        if not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous):
            raise ValueError("kv_write: the caches must be C-contiguous device arrays")
        if k.size:
            threads = 256
            self.function("kv_write", "kv_write")(
                (self._blocks(k.size, threads),), (threads,),
                (k_cache, v_cache, k, v, self._pos(pos), np.int32(rows), np.int32(kv_heads), np.int32(dim),
                 np.int32(n_pos)),
            )

    def rope_kv(self, q, k, v, k_cache, v_cache, pos, cos, sin, neox):
        """Rotate q and k, store the rotated k and v in the cache at pos ..: returns the rotated q. One launch
        (kernels_raw/rope.hip rope_kv); q, k, v may be views of the stacked Q/K/V GEMV output."""
        cos, sin = self._input(cos), self._input(sin)
        rows, heads, dim = q.shape
        _, kv_heads, _ = k.shape
        n_pos = k_cache.shape[1]
        half = cos.shape[1]
        if (k.shape != (rows, kv_heads, dim) or v.shape != k.shape or k_cache.shape != (kv_heads, n_pos, dim)
                or v_cache.shape != k_cache.shape or 2 * half > dim or cos.shape[0] < n_pos):
            raise ValueError(f"rope_kv: q {q.shape}, k {k.shape}, v {v.shape}, cache {k_cache.shape} and table "
                             f"{cos.shape} disagree")
        if not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous):
            raise ValueError("rope_kv: the caches must be C-contiguous device arrays")
        self._check_positions("rope_kv", pos, rows, n_pos)
        (q, q_stride), (k, k_stride), (v, v_stride) = (self._rows(a) for a in (q, k, v))
        out = self._empty((rows, heads, dim))
        if rows:
            self.function("rope", "rope_kv")(
                (rows, heads + kv_heads), (128,),  # RS_ROPE_KV_THREADS
                (q, np.int64(q_stride), k, np.int64(k_stride), v, np.int64(v_stride), cos, sin, self._pos(pos),
                 np.int32(heads), np.int32(kv_heads), np.int32(dim), np.int32(half), np.int32(bool(neox)),
                 np.int32(n_pos), out, k_cache, v_cache, self._live_arg()),
            )
        return out

    def attention(self, q, k_cache, v_cache, pos):
        return self._attention(q, k_cache, v_cache, pos, quantize=False)[0]

    def attention_q8(self, q, k_cache, v_cache, pos):
        """quantize_q8(attention(...) as [R, H*D]) in one launch when D is a multiple of 32."""
        if q.shape[-1] % QK8_0:
            out = self.attention(q, k_cache, v_cache, pos)
            return self.quantize_q8(out.reshape(out.shape[0], -1))
        return self._attention(q, k_cache, v_cache, pos, quantize=True)[1:]

    def _attention(self, q, k_cache, v_cache, pos, quantize: bool):
        q, k_cache, v_cache = self._input(q), self._input(k_cache), self._input(v_cache)
        rows, heads, dim = q.shape
        kv_heads, cache_len, _ = k_cache.shape
        if (not kv_heads or heads % kv_heads or dim > ATTN_MAX_DIM or v_cache.shape != k_cache.shape
                or k_cache.shape[2] != dim):
            raise ValueError(f"attention: q {q.shape} and cache {k_cache.shape} disagree")
        self._check_positions("attention", pos, rows, cache_len)
        scale = F32(1) / np.sqrt(F32(dim))  # as spec.attention computes it
        max_chunks = -(-cache_len // spec.ATTN_CHUNK)
        e_buf = self._new((rows * heads, cache_len), F32)
        part_buf = self._new((rows * heads, max_chunks, dim + 1), F32)
        out = self._empty(q.shape)
        xq, xd = self._q8_outputs(rows, heads * dim) if quantize else (None, None)
        if not (rows and heads):
            return out, xq, xd
        plan = self.attention_plan(rows, heads, kv_heads, cache_len)
        bound = next(b for b in ATTN_BOUNDS if b >= dim)
        outputs = (out, 0 if xq is None else xq, 0 if xd is None else xd, self._live_arg())
        if plan.kernel == "spread":
            per = plan.per
            units = attention_units(rows, heads, kv_heads, per)
            threads = self.attention_threads(units)
            rg = self.attention_values_rows(rows, units * max_chunks)  # rows a unit, of both kernels
            if rg > 1:  # units of rg rows, unpaired, their own threads rule
                units = attention_units(-(-rows // rg), heads, kv_heads, per)
                threads = self.attention_values_threads(units * max_chunks)
            slice_len = self.attention_slice(units, cache_len)
            slices, first = -(-cache_len // slice_len), self._pos(pos)
            slice_blocks = self.attention_spread(units, slices)
            max_buf = self._new((rows * heads, slices), F32)
            arrivals = self._new((units,), np.int32)
            name = f"attention_scores<{bound}, {rg}>"
            self.function("attention", name, (name,))(
                (units * slice_blocks,), (ATTN_SCORE_THREADS,),
                (q, k_cache, v_cache, first, np.int32(rows), np.int32(heads), np.int32(kv_heads), np.int32(per),
                 np.int32(dim), np.int32(cache_len), F32(scale), np.int32(slice_len), np.int32(slice_blocks), e_buf,
                 max_buf, arrivals, self._live_arg()))
            if self.platform == "hip":
                threads = min(threads, ATTN_VALUES_MAX_THREADS_HIP)
            paired = rg == 1 and self.attention_values_paired(units * max_chunks, threads)
            col_parts = 1 if paired else self.attention_values_col_parts(units * max_chunks)
            name = f"attention_values<{threads}, {'true' if paired else 'false'}, {rg}>"
            self.function("attention", name, (name,))(
                (units * max_chunks * col_parts,), (threads,),
                (v_cache, first, np.int32(rows), np.int32(heads), np.int32(kv_heads), np.int32(per), np.int32(dim),
                 np.int32(cache_len), np.int32(slice_len), e_buf, max_buf, part_buf, arrivals) + outputs
                + (np.int32(col_parts),))
        elif plan.kernel == "attention_heads":
            units = attention_units(rows, heads, kv_heads, plan.per)
            threads = min(self.attention_threads(units), attention_heads_max_threads(bound, self.platform == "hip"))
            name = f"attention_heads<{bound}, {threads}, {plan.per}>"
            self.function("attention", name, (name,))(
                (units,), (threads,),
                (q, k_cache, v_cache, self._pos(pos), np.int32(rows), np.int32(heads), np.int32(kv_heads),
                 np.int32(plan.per), np.int32(dim), np.int32(cache_len), F32(scale), e_buf, part_buf) + outputs)
        else:
            threads = self.attention_threads(rows * heads)
            name = f"attention<{bound}, {threads}>"
            self.function("attention", name, (name,))(
                (rows * heads,), (threads,),
                (q, k_cache, v_cache, self._pos(pos), np.int32(rows), np.int32(heads), np.int32(kv_heads),
                 np.int32(dim), np.int32(cache_len), F32(scale), e_buf, part_buf) + outputs)
        return out, xq, xd

    def attention_threads(self, blocks: int) -> int:
        """Threads per block of the attention kernel for a launch of `blocks` blocks: the most of
        ATTN_THREAD_CHOICES that runs them all at once, a multiprocessor taking 512 / threads blocks (the
        kernels' launch bounds), else the fewest. Any choice gives the same bits."""
        for threads in ATTN_THREAD_CHOICES:
            if blocks <= self._multiprocessors * (ATTN_THREAD_CHOICES[0] // threads):
                return threads
        return ATTN_THREAD_CHOICES[-1]

    def attention_values_rows(self, rows: int, blocks: int) -> int:
        """Rows a unit of attention_values and attention_scores takes (their RG) in a launch of `rows` rows whose
        units of one row would take `blocks` blocks of attention_values: one while those fit the multiprocessors
        once, else ATTN_VALUES_ROWS (at most `rows`). Any choice gives the same bits."""
        return 1 if blocks <= self._multiprocessors else max(1, min(ATTN_VALUES_ROWS, rows))

    def attention_values_threads(self, blocks: int) -> int:
        """Threads a block of attention_values in units of rows (attention_values_rows > 1) for a launch of `blocks`
        blocks: 512 or 256 where that runs them in one wave; else 128 only where the last wave of its blocks (four a
        multiprocessor) is at least 7/8 full; else 512 where that takes at most three waves; else 256. A 128-thread
        block's 4 groups take 8 of a chunk's 32 items (of 4 columns) each in turn, so a launch of them whose last
        wave is mostly empty costs more than larger blocks in more waves; the rule before (128 wherever 256 took
        more than one wave) lost most there. Any choice gives the same bits. H200, 2026-12-04, whole passes, this
        rule against the one before, in turn, twice, same logits bits
        (tests/results/attention_values_threads_2026_12_04_h200.json), ms: llama-8b at 2100 positions (9 chunks),
        8 / 16 rows 4.957-4.975 / 6.223 -> 4.414-4.425 / 6.102; at 3000 (12 chunks) 5.284-5.288 / 7.454-7.455 ->
        5.040-5.045 / 6.924-6.925; qwen2.5-32b at 2100 16.111-16.132 / 22.309-22.316 -> 15.694-15.721 /
        21.892-21.897. Chains of 32 over 3-16 chunks (tests/profile_attention_threads.py) put the best thread
        count where this rule does, or within 2.3 %."""
        threads, most, smallest = self.attention_threads(blocks), ATTN_THREAD_CHOICES[0], ATTN_THREAD_CHOICES[-1]
        wave = self._multiprocessors * (most // smallest)  # blocks of the smallest a wave
        if threads != smallest or (blocks % wave or wave) * 8 >= 7 * wave:
            return threads
        return most if blocks <= 3 * self._multiprocessors else ATTN_THREAD_CHOICES[1]

    def attention_values_col_parts(self, blocks: int) -> int:
        """Blocks per (unit, chunk) of attention_values, each taking that part of the columns, for a launch of
        `blocks` (unit, chunk) pairs: the most of ATTN_VALUES_COL_PARTS whose blocks fit the multiprocessors once,
        else one. Any choice gives the same bits (a column's sums are its own)."""
        return max([p for p in ATTN_VALUES_COL_PARTS if blocks * p <= self._multiprocessors], default=1)

    def attention_values_paired(self, blocks: int, threads: int) -> bool:
        """Whether attention_values runs its launch of `blocks` blocks of `threads` threads as the kernel that
        takes twice as many blocks a multiprocessor (fewer registers, fewer loads in flight; NVIDIA only): where
        the other would take more than two waves. Either gives the same bits. H200, 2026-12-04, llama-8b's shape
        (a chain of 32, us a launch; tests/results/attention_values_paired_h200.txt): 8 rows over 1000 / 4000
        positions (2.4 / 7.8 waves) 38.0 / 129.5 -> 31.9 / 109.0 paired, 16 rows 69.7 / 247.3 -> 58.9 / 200.6; one
        row over 1000 (1.2 waves) 18.2 -> 22.4, over 4000 (one wave) 20.2 -> 24.9."""
        return self.platform != "hip" and blocks > 2 * self._multiprocessors * (ATTN_THREAD_CHOICES[0] // threads)

    def attention_plan(self, rows: int, heads: int, kv_heads: int, cache_len: int) -> AttnPlan:
        """How attention over a cache of cache_len positions for `rows` rows of `heads` query heads (`kv_heads`
        kv heads) runs; any plan gives the same bits. A captured pass serves every position of its cache, so
        the plan follows the cache's length. Up to ATTN_SPLIT_CACHE positions, one kernel: a block per (row,
        head) while those blocks fit the multiprocessors one each; else, with grouped query heads, a block per
        (row, kv head) taking 2, 3 or 4 of its query heads (ATTN_HEADS_PER), the fewest that fit so (each key
        and value loaded once for them); else a block per (row, head) again while they fit twice; else blocks
        of 2, 3 or 4 query heads again, the fewest that fit the multiprocessors two each (attention_threads then
        gives them 256 threads). Beyond that, two kernels spread over positions, ATTN_HEADS query heads a block (one
        a block, for few pairs up to 2048 positions before 2026-12-04, ran slower at every length timed then: one
        row, a chain of 32, us a launch, H200, tests/results/attention_values_paired_h200.txt: llama-8b's shape
        at 600 / 800 / 1000 / 1400 positions 16.2 / 16.8 / 18.4 / 28.6 -> 14.7 / 15.1 / 15.1 / 16.0,
        qwen2.5-32b's at 600 / 1000 16.9 / 27.4 -> 15.5 / 15.8).
        Measured on the H200 (tests/results/profile_attention_heads_h200.json: 32 heads of 128, 8 kv heads, a chain
        of 32, us a launch; 2026-12-02): at 64 / 160 / 400 positions, one row: a block per head 6.6 / 9.6 /
        18.2, spread with one head a block 9.2 / 10.7 / 13.9; 8 rows: a block per head 10.5 / 16.1 / 32.6, two
        heads a block 9.7 / 13.4 / 26.6; 16 rows: spread with four heads a block 17.0 / 23.6 / 47.3, a block of
        four heads 13.1 / 18.7 / 37.8. Two blocks a multiprocessor: qwen2.5-32b (40 heads, 8 kv heads) at 9-16
        rows, where no block of heads fits once, ran spread (ATTN_HEADS); the pass at position 64 (graph replay,
        in turn, twice; H200, 2026-12-04, tests/results/attention_two_a_sm_qwen32b_h200.json), ms, spread ->
        two heads a block (216-264 blocks) at 9 / 10 / 11 rows 13.03 / 12.57 / 12.64 -> 12.48 / 12.01 / 12.10,
        three (192-256) at 12 / 13 / 16 rows 12.66 / 13.29 / 13.63 -> 12.24 / 12.87 / 13.15; those were the best
        of the plans timed at each (a block per (row, head): 12.58 / 12.15 / 12.27 / 12.38 / 13.01 / 13.44)."""
        pairs, sms = rows * heads, self._multiprocessors
        if cache_len <= ATTN_SPLIT_CACHE:
            pers = [per for per in ATTN_HEADS_PER if heads > kv_heads]  # query heads a block, fewest first
            for once in (True, False):  # the blocks fit the multiprocessors once each, else twice
                if pairs <= sms or (not once and pairs < 2 * sms):
                    return AttnPlan("attention")
                for per in pers:
                    if attention_units(rows, heads, kv_heads, per) <= (1 if once else 2) * sms:
                        return AttnPlan("attention_heads", per)
        return AttnPlan("spread", ATTN_HEADS)

    def attention_slice(self, units: int, cache_len: int) -> int:
        """Positions per slice of attention_scores for `units` units over a cache of cache_len positions: the
        longest of ATTN_SLICES whose units x slices reach one and a half times the multiprocessors' count (each
        slice pays its end once, and one block a multiprocessor leaves its key loads' latency bare: one row of
        llama-8b over 4100 positions on an H200, 136 slices of 256 took 21.0 us, 264 of 128 18.7), else the
        shortest. Any slice gives the same bits: every score is computed as before, and a slice's max is exact
        in any grouping."""
        return next((s for s in ATTN_SLICES if 2 * units * -(-cache_len // s) >= 3 * self._multiprocessors),
                    ATTN_SLICES[-1])

    def attention_spread(self, units: int, slices: int) -> int:
        """Blocks per unit (row, kv head, some of its query heads) of attention_scores for a launch of
        `units` units over a cache of `slices` slices: enough to fill every multiprocessor once, each block
        taking every slice_blocks-th slice after its first. Any spread gives the same bits."""
        return min(slices, -(-self._multiprocessors * SM_THREADS // (ATTN_SCORE_THREADS * units)))

    def silu_mul(self, gate, up):
        gate, up = self._input(gate), self._input(up)
        if gate.shape != up.shape:
            raise ValueError(f"silu_mul: gate {gate.shape} and up {up.shape} differ")
        out = self._empty(gate.shape)
        if gate.size:
            threads = 256
            self.function("silu_mul", "silu_mul")(
                (self._blocks(gate.size, threads),), (threads,), (gate, up, np.int32(gate.size), out)
            )
        return out

    def argmax_rows(self, logits):
        """(ids, finite) of each row, as spec.argmax_rows; one small transfer to the host."""
        if not isinstance(logits, self.cp.ndarray):  # already on the host: the spec itself
            return spec.argmax_rows(logits)
        result = self.cp.asnumpy(self.argmax_device(logits))
        return result[:, 0].astype(np.int64), result[:, 1] == 0

    def pass_conditions(self, one: int, many: int, live, rows: int) -> None:
        """Set the conditions of a captured pass's IF nodes from its live-row count (kernels_raw/graph_conditions.hip,
        refspec/gpu_conditional.py): `one` to count == 1, `many` to count > 1."""
        self.function("graph_conditions", "pass_conditions")(
            (1,), (1,), (np.uint64(one), np.uint64(many), live, np.int32(rows)))

    def pass_branch(self, branch: int, live, rows: int) -> None:
        """Set the value of a captured pass's SWITCH node from its live-row count: min(count, 2)."""
        self.function("graph_conditions", "pass_branch")((1,), (1,), (np.uint64(branch), live, np.int32(rows)))

    def argmax_device(self, logits, result=None):
        """argmax_rows on the device: int32 [R, 2], (id, 1 if the row holds NaN or infinity else 0), into
        `result` when given (a captured pass keeps its own)."""
        logits = self._input(logits)
        rows, n = logits.shape
        if result is None:
            result = self.cp.empty((rows, 2), np.int32)
        if rows:  # (a row of no values gets index -1: its one part holds nothing)
            parts = min(ARGMAX_MAX_PARTS, self._blocks(n, ARGMAX_THREADS * ARGMAX_PER_THREAD))
            value = self._new((rows, parts), F32)
            index, bad = self._new((rows, parts), np.int32), self._new((rows, parts), np.int32)
            self.function("argmax", "argmax_part")(
                (rows * parts,), (ARGMAX_THREADS,), (logits, np.int32(n), np.int32(parts), value, index, bad,
                                                     self._live_arg()))
            self.function("argmax", "argmax_final")(
                (rows,), (ARGMAX_THREADS,), (value, index, bad, np.int32(parts), result, self._live_arg()))
        return result

    def greedy_next(self, result, inputs, live=None, stop=None):
        """inputs (position, id) [2] of a one-row pass <- (position + 1, result[0, 0]): the next greedy step.
        With `live` (device int32 [1], the rows the next step computes: GpuBackend.live_rows) and `stop`
        (stop_buffer's layout; its limit is not used): live <- 0 once the id is one of stop's ids or live was 0."""
        if (live is None) != (stop is None):
            raise ValueError("greedy_next: live and stop come together")
        null = 0  # a null pointer (as _live_arg passes one)
        self.function("argmax", "greedy_next")((1,), (1,), (result, inputs, null if live is None else live,
                                                            null if stop is None else stop))

    def speculative_next(self, inputs, chosen, ctx, drafted, record, stop, width: int, n_pos: int, ngram) -> None:
        """After a captured verify pass of `width` rows (refspec/gpu_graphs.py, speculative_steps): its
        tokens by the accept rule into `record` and `ctx`, and the next pass's input and guesses (NgramDrafter's
        rule with ngram = (max_n, min_n, unigram_max)) into `inputs` and `drafted`, with no rows to compute
        when the pass ended the run (`stop`: stop_buffer's layout); kernels_raw/ngram.hip's speculative_next
        says each buffer's layout."""
        max_n, min_n, unigram_max = ngram
        self.function("ngram", "speculative_next")(
            (1,), (NGRAM_THREADS,), (inputs, chosen, ctx, drafted, record, stop, np.int32(width), np.int32(n_pos),
                                     np.int32(max_n), np.int32(min_n), np.int32(unigram_max)))

    @staticmethod
    def stop_buffer(limit: int | None, eog_ids) -> np.ndarray:
        """speculative_next's `stop`, int32 [2 + NGRAM_MAX_STOP]: a run's context limit (None: none), how
        many of its end-of-generation ids the step knows, those ids. Past NGRAM_MAX_STOP ids the step knows
        the first ones: it may then miss an end the host sees (and compute a pass for nothing), never see
        one the host does not."""
        ids = sorted({int(t) for t in eog_ids})[:NGRAM_MAX_STOP]
        out = np.zeros(2 + NGRAM_MAX_STOP, np.int32)
        out[0] = np.iinfo(np.int32).max if limit is None else min(int(limit), np.iinfo(np.int32).max)
        out[1] = len(ids)
        out[2 : 2 + len(ids)] = ids
        return out

    def ngram_propose(self, context, k: int, max_n: int = 4, min_n: int = 1, unigram_max: int = 7) -> list[int]:
        """NgramDrafter(max_n, min_n, unigram_max).propose(context, k) as kernels_raw/ngram.hip computes it on
        the device (a scan of the context instead of the drafter's index): for tests."""
        context = np.asarray(context, np.int32)
        if not (1 <= min_n <= max_n <= NGRAM_MAX_N and 0 <= k <= NGRAM_MAX_K and len(context)):
            raise ValueError(f"ngram_propose: k = {k}, n = {min_n}..{max_n} outside 0..{NGRAM_MAX_K}, "
                             f"1..{NGRAM_MAX_N}, or an empty context")
        out = self.cp.zeros(1 + k, np.int32)
        self.function("ngram", "ngram_propose")(
            (1,), (NGRAM_THREADS,), (self.cp.asarray(context), np.int32(len(context)), np.int32(k), np.int32(max_n),
                                     np.int32(min_n), np.int32(unigram_max), out))
        out = self.to_host(out)
        return [int(t) for t in out[1 : 1 + out[0]]]

    def argmax(self, logits):
        return spec.checked_ids(*self.argmax_rows(logits))

    # ---- qwen35: gated attention and Gated DeltaNet (kernels_raw/deltanet.hip; twins in refspec.spec)
    def silu(self, x):
        return self._elementwise("silu", (self._input(x),))

    def sigmoid_gate(self, a, gate):
        a, gate = self._input(a), self._input(gate)
        if a.shape != gate.shape:
            raise ValueError(f"sigmoid_gate: {a.shape} and {gate.shape} differ")
        return self._elementwise("sigmoid_gate", (a, gate))

    def _elementwise(self, name: str, inputs: tuple):
        out = self._empty(inputs[0].shape)
        n = inputs[0].size
        if n:
            threads = 256  # RS_ELEMENTWISE_THREADS
            self.function("deltanet", name)((self._blocks(n, threads),), (threads,), (*inputs, np.int64(n), out))
        return out

    def deltanet_gates(self, alpha, b, dt_bias, a):
        """(decay, beta) [R, Hv] from the alpha and beta projections (spec.deltanet_gates)."""
        alpha, b, dt_bias, a = (self._input(t) for t in (alpha, b, dt_bias, a))
        heads = dt_bias.size
        if alpha.shape != b.shape or alpha.shape[-1] != heads or a.size != heads:
            raise ValueError(f"deltanet_gates: alpha {alpha.shape}, b {b.shape}, dt {dt_bias.shape}, a {a.shape}")
        decay, beta = self._empty(alpha.shape), self._empty(alpha.shape)
        if alpha.size:
            threads = 256
            self.function("deltanet", "deltanet_gates")(
                (self._blocks(alpha.size, threads),), (threads,),
                (alpha, b, dt_bias, a, np.int32(heads), np.int64(alpha.size), decay, beta))
        return decay, beta

    def _head_rows(self, x):
        """(array, floats between R-rows, heads, n) for x [R, heads, n] or [R, n] whose R-rows may lie apart
        (views into a stacked GEMV's or the conv's output); other shapes as contiguous rows of n."""
        if getattr(x, "ndim", 0) in (2, 3):
            x, stride = self._rows(x)
            return x, stride, (x.shape[1] if x.ndim == 3 else 1), x.shape[-1]
        x = self._input(x)
        n = x.shape[-1] if x.ndim else 1
        return x, n, 1, n

    def l2norm(self, x, eps):
        """spec.l2norm over the last axis; x [R, heads, n] may be a view whose R-rows lie apart (qwen35's q
        and k heads in the conv's output)."""
        x, stride, heads, n = self._head_rows(x)
        rows = x.size // n if n else 0
        out = self._empty(x.shape)
        if rows:
            groups = 4  # RS_DELTANET_THREADS / 32
            self.function("deltanet", "l2norm")(
                (self._blocks(rows, groups),), (32 * groups,),
                (x, np.int64(stride), np.int32(heads), F32(eps), np.int64(rows), np.int32(n), out))
        return out

    def gated_rmsnorm(self, x, w, z, eps):
        """spec.gated_rmsnorm over the last axis; z may be a view whose R-rows lie apart (a stacked GEMV's)."""
        return self._gated_rmsnorm(x, w, z, eps, quantize=False)

    def gated_rmsnorm_q8(self, x, w, z, eps):
        """quantize_q8(gated_rmsnorm(x, w, z, eps) as [R, ...]) in one launch when the rows normed are whole
        blocks of 32 (FusedFromParts.gated_rmsnorm_q8)."""
        if x.shape[-1] % QK8_0:
            y = self.gated_rmsnorm(x, w, z, eps)
            return self.quantize_q8(y.reshape(y.shape[0], -1))
        return self._gated_rmsnorm(x, w, z, eps, quantize=True)

    def _gated_rmsnorm(self, x, w, z, eps, quantize: bool):
        x, w = self._input(x), self._input(w)
        if tuple(z.shape) != x.shape or w.shape != x.shape[-1:] or x.ndim < 1:
            raise ValueError(f"gated_rmsnorm: x {x.shape}, w {w.shape}, z {z.shape}")
        n = x.shape[-1]
        if x.ndim == 3:
            z, z_stride, heads, _ = self._head_rows(z)
        else:
            z, z_stride, heads = self._input(z), n, 1
        rows = x.size // n if n else 0
        out = xq = xd = None
        if quantize:
            xq, xd = self._q8_outputs(x.shape[0], x.size // max(x.shape[0], 1))
        else:
            out = self._empty(x.shape)
        if rows:
            groups = 4
            self.function("deltanet", "gated_rmsnorm")(
                (self._blocks(rows, groups),), (32 * groups,),
                (x, w, z, np.int64(z_stride), np.int32(heads), F32(eps), np.int64(rows), np.int32(n),
                 0 if out is None else out, 0 if xq is None else xq, 0 if xd is None else xd))
        return (xq, xd) if quantize else out

    def concat(self, a, b):
        a, b = self._input(a), self._input(b)
        out = self._empty(a.shape[:-1] + (a.shape[-1] + b.shape[-1],))  # held while a pass is captured
        return self.cp.concatenate([a, b], axis=-1, out=out)

    def stack(self, rows):
        return self.cp.stack([self.cp.asarray(r, dtype=F32) for r in rows])

    def split_query_gate(self, qg, n_head, head_dim):
        """[R, H*2*D] (per head: D query values, then D gate values) -> queries, gates [R, H, D]: views, which
        rmsnorm and sigmoid_gate_q8 read in place (other operations copy them first)."""
        qg, _ = self._rows(qg)  # rows of contiguous values (a column view of the stacked Q/K/V output)
        qg = qg.reshape(qg.shape[0], n_head, 2, head_dim)  # splits each row: a view
        return qg[:, :, 0], qg[:, :, 1]

    def sigmoid_gate_q8(self, a, gate):
        """quantize_q8(sigmoid_gate(a, gate) as [R, H*D]) in one launch; gate may be split_query_gate's view
        (FusedFromParts.sigmoid_gate_q8)."""
        a = self._input(a)
        if tuple(gate.shape) != a.shape or a.ndim != 3:
            raise ValueError(f"sigmoid_gate_q8: a {a.shape} and gate {gate.shape} differ")
        gate, g_stride, _, g_head_stride = self._strided_heads(gate)
        rows, heads, dim = a.shape
        xq, xd = self._q8_outputs(rows, heads * dim)
        n_blocks = a.size // QK8_0
        if n_blocks:
            groups = 4  # RS_DELTANET_THREADS / 32
            self.function("deltanet", "sigmoid_gate_q8")(
                (self._blocks(n_blocks, groups),), (32 * groups,),
                (a, gate, np.int64(g_stride), np.int64(g_head_stride), np.int32(dim), np.int32(heads * dim),
                 np.int64(n_blocks), xq, xd))
        return xq, xd

    def conv1d_causal(self, x, w, ring, pos):
        """spec.conv1d_causal for rows at positions pos .. (an int or pass_input's device position): the
        state before them from the ring, each row's state into its slot (spec.ring_slots; the kernel finds
        the slots from the device position)."""
        return self._conv1d(x, w, ring, pos, apply_silu=False)

    def conv1d_silu(self, x, w, ring, pos):
        """silu(conv1d_causal(...)) in one launch (FusedFromParts.conv1d_silu)."""
        return self._conv1d(x, w, ring, pos, apply_silu=True)

    def _conv1d(self, x, w, ring, pos, apply_silu: bool):
        x, stride = self._rows(x)
        w = self._input(w)
        rows, channels = x.shape
        taps = w.shape[1]
        n_states = ring.shape[0]
        if w.shape[0] != channels or ring.shape[1:] != (channels, taps - 1) or not ring.flags.c_contiguous:
            raise ValueError(f"conv1d_causal: x {x.shape}, w {w.shape}, ring {ring.shape}")
        pos = self._pos(pos)
        src, src_slots = ring, n_states
        if rows >= n_states and ring[0].size:  # a row's slot is the one read: read a copy (see the kernel)
            src, src_slots = self._new(ring.shape[1:]), 1
            self.function("deltanet", "ring_read")(
                (self._blocks(src.size, 256),), (256,), (ring, pos, np.int32(n_states), np.int64(src.size), src))
        y = self._empty((rows, channels))
        if rows and channels:
            groups = 4
            self.function("deltanet", "conv1d_causal")(
                (self._blocks(rows * channels, groups),), (32 * groups,),
                (x, np.int64(stride), src, np.int32(src_slots), w, np.int32(rows), np.int32(channels),
                 np.int32(taps), np.int32(apply_silu), y, ring, pos, np.int32(n_states)))
        return y

    def delta_rule(self, q, k, v, decay, beta, ring, pos):
        """spec.delta_rule for rows at positions pos .. (an int or pass_input's device position): the state
        before them from the ring, each row's state into its slot (spec.ring_slots, found by the kernel).
        q, k, v may be views whose R-rows lie apart (into the conv's output)."""
        return self._delta_rule(q, k, v, decay, beta, None, None, ring, pos)

    def gated_delta_rule(self, q, k, v, alpha, b, dt_bias, a, ring, pos):
        """delta_rule(q, k, v, *deltanet_gates(alpha, b, dt_bias, a), ring, pos) in one launch
        (FusedFromParts.gated_delta_rule); alpha and b may be column views of a stacked GEMV's output."""
        dt_bias, a = self._input(dt_bias), self._input(a)
        if dt_bias.shape != (v.shape[1],) or a.shape != dt_bias.shape:
            raise ValueError(f"gated_delta_rule: dt {dt_bias.shape} and a {a.shape} for {v.shape[1]} heads")
        return self._delta_rule(q, k, v, alpha, b, dt_bias, a, ring, pos)

    def _delta_rule(self, q, k, v, g1, g2, dt, a, ring, pos):
        (q, q_stride), (k, k_stride), (v, v_stride) = (self._rows(t) for t in (q, k, v))
        (g1, g1_stride), (g2, g2_stride) = self._rows(g1), self._rows(g2)
        rows, n_v, dim = v.shape
        n_k = k.shape[1]
        if (q.shape != k.shape or k.shape != (rows, n_k, dim) or n_v % n_k or g1.shape != (rows, n_v)
                or g2.shape != (rows, n_v) or ring.shape[1:] != (n_v, dim, dim) or not ring.flags.c_contiguous):
            raise ValueError(f"delta_rule: q {q.shape}, k {k.shape}, v {v.shape}, gates {g1.shape}, ring {ring.shape}")
        if dim > 256:  # RS_DELTA_MAX_DK: the state row a group holds in registers
            raise DeviceError(f"delta_rule: head size {dim} is above the kernel's 256")
        pos = self._pos(pos)
        out = self._empty(v.shape)
        if rows:
            groups = 4
            self.function("deltanet", "delta_rule")(
                (self._blocks(n_v * dim, groups),), (32 * groups,),
                (q, np.int64(q_stride), k, np.int64(k_stride), v, np.int64(v_stride), g1, np.int64(g1_stride),
                 g2, np.int64(g2_stride), 0 if dt is None else dt, 0 if a is None else a, np.int32(rows),
                 np.int32(n_k), np.int32(n_v), np.int32(dim), ring, pos, np.int32(ring.shape[0]), out))
        return out
