"""Memory synchronization domains around the kernel boundaries (device machine; a tool, not a test). The timeline of
2026-12-05 (tests/results/timeline_llama8b_2026_12_05_h200.jsonl) has a GEMV's wait let go 1.2-2.2 us after its
first block starts even where the small kernel before it had little left to do, and the small kernels' spans
(RMSNorm+quantize 3.9 us at one row for well under a microsecond of its own arithmetic) are mostly such waits.
The guess: a kernel's completion flushes its writes with a fence that, on sm_90, waits for every memory operation
in flight in its synchronization domain, and the next GEMV has megabytes of weight loads in flight by then (it
loads them before its wait). Launched in the other domain (CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN, "remote"), the
GEMVs' loads would not be waited for. This times whole passes (graph replays, position 64) with chosen kernels
launched in the remote domain, variants in turn, each pass captured anew, and compares each variant's logits with
production's, at the timed ids and at others (a read of stale activations would show there):

    python3 tests/probe_sync_domain.py PRESET ROWS,... REPEATS ROUNDS JSON_OUT

Variants: main; gemv_remote (every GEMV in the remote domain); small_remote (every other kernel there); all_remote
(every kernel: the same as main but for the domain's number, a control).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import time

import numpy as np

from refspec.gpu_launch import (CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, DependentLaunch, _dims,
                                _LaunchAttribute, _LaunchConfig, error_name)

from graph_timing import time_widths, variant_probe

CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN = 10  # cuda.h, CUlaunchAttributeID
CU_DEVICE_ATTRIBUTE_MEM_SYNC_DOMAIN_COUNT = 126  # cuda.h, CUdevice_attribute

preset, widths, repeats, rounds, out_path, be, tf = variant_probe(sys.argv)
POSITION = 64
vocab = tf.config.n_vocab


class DomainLaunch(DependentLaunch):
    """DependentLaunch with each kernel's domain chosen by remote(key) (key: GpuBackend._functions' key)."""

    def __init__(self, cupy):
        super().__init__(cupy)
        self.remote = lambda key: False
        self._attrs = (_LaunchAttribute * 2)()
        self._attrs[0].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        self._attrs[0].value[0] = 1
        self._attrs[1].id = CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN

    def launch(self, fn, grid, block, args, shared_mem: int = 0) -> None:
        key = next(k for k, f in be._functions.items() if f.fn.ptr == fn.ptr)
        self._attrs[1].value[0] = 1 if self.remote(key) else 0  # CU_LAUNCH_MEM_SYNC_DOMAIN_REMOTE / _DEFAULT
        values = [self._argument(a) for a in args]
        params = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        config = _LaunchConfig(grid=(ctypes.c_uint * 3)(*_dims(grid)), block=(ctypes.c_uint * 3)(*_dims(block)),
                               shared_mem=int(shared_mem), stream=self.cp.cuda.get_current_stream().ptr,
                               attrs=ctypes.cast(self._attrs, ctypes.POINTER(_LaunchAttribute)), num_attrs=2)
        status = self._launch(ctypes.byref(config), fn.ptr, params, None)
        if status:
            raise RuntimeError(f"kernel launch failed: {error_name(self._error_name, status)}")


launcher = DomainLaunch(be.cp)
be._launcher = launcher
count = be.cp.cuda.runtime.deviceGetAttribute(CU_DEVICE_ATTRIBUTE_MEM_SYNC_DOMAIN_COUNT, 0)
print(f"memory synchronization domains: {count}", flush=True)


def gemv(key) -> bool:
    return key[0] == "q8_gemv"


VARIANTS = {
    "main": lambda key: False,
    "gemv_remote": gemv,
    "small_remote": lambda key: not gemv(key),
    "all_remote": lambda key: True,
}
CHECK_IDS = {rows: [(11 * i + 5) % vocab for i in range(rows)] for rows in widths}  # ids not timed

report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "preset": preset, "position": POSITION,
          "repeats": repeats, "gpu": be.cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
          "domains": count, "runs": []}
digests, other_digests = {}, {}


def digest(logits) -> str:
    return hashlib.sha256(np.ascontiguousarray(be.to_host(logits)).view(np.uint8)).hexdigest()


for r in range(rounds):
    for name, remote in VARIANTS.items():
        launcher.remote = remote
        cache = tf.new_cache(POSITION + max(widths) + 8)
        cache.graphs.clear()
        tf.forward(cache, [1] * POSITION, 0)
        run = {"variant": name, "round": r, "ms": {}}
        time_widths(tf, cache, widths, POSITION, repeats, digests, run)  # the timed ids' bits
        for rows in widths:
            other = digest(tf.forward(cache, CHECK_IDS[rows], POSITION))
            run["same_bits_other_%d" % rows] = other_digests.setdefault(rows, other) == other
        report["runs"].append(run)
        print(f"round {r} {name:13s} " + "  ".join(f"{rows} rows {ms:.4f} ms" for rows, ms in run["ms"].items())
              + ("" if all(v for key, v in run.items() if key.startswith("same_bits")) else "  BITS DIFFER"), flush=True)
with open(out_path, "w") as f:
    json.dump(report, f, indent=1)
sys.exit(0 if all(v for run in report["runs"] for key, v in run.items() if key.startswith("same_bits")) else 1)
