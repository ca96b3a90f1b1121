"""Where a forward pass's time goes on the GPU, kernel by kernel, boundaries included (device machine; a tool, not
a test). The question it answers: of a pass's time, how much does each kernel cost in place, from the moment it
may start its work (the kernel before it has finished: its wait let it go) to the moment the kernel after it may?
`ncu` times kernels one at a time, without the overlap of programmatic dependent launch, and the ablations of
tests/profile_ablate.py only say what a pass costs without one kind of kernel; Nsight Systems does not run on the
device machine.

Every kernel of kernels_raw/ calls rs_kernel_begin() (or rs_kernel_begin_early()) once, before any work that
depends on the kernel before it. In a build for this probe (`instrument`: the sources as compiled for the backend,
with those two functions rewritten; nothing else changes, and production's cached kernels are not touched) thread 0
of block 0 of every kernel reads %globaltimer when it starts and again when its wait lets it go, and writes both
to a buffer in launch order (one atomic add before its wait, two stores after). Every kernel waits for the whole
kernel before it, so the release times are in launch order and kernel i's time in place is release(i+1) -
release(i); start(i) - release(i-1) says how early it was on the multiprocessors.

    python3 tests/probe_timeline.py PRESET ROWS,... [REPLAYS] [JSON_OUT]

PRESET: a `refspec bench decode --preset` name (its synthetic model, written once) or a .gguf path. The pass is at
position $POSITION (default 64), as tests/pass_times.py runs it, replayed as its graph REPLAYS times (default 20);
per kernel the median over the replays. The kernels' names come from the same pass run eagerly (the graph is that
pass captured); the probe says so where the counts differ. Also the pass's time in the production build and in
this one with the notes off and on (back-to-back replays), which says how much the notes themselves cost. With
MARKS=1, rmsnorm_q8's block 0 also notes three points inside it (its row staged, inv known, its stores issued): a
kernel's "marks_us", us after its release. With BLOCKS=1, thread 0 of every block notes its start, release, %smid and
%gridid too (block_starts: each kernel's "each_block"; a summary by kernel pair). Output: a table per width on
stdout, and one JSON object appended to JSON_OUT (default timeline.jsonl).
"""
from __future__ import annotations

import re

CAPACITY = 1 << 14  # kernels noted per replay, at most (a llama-8b pass: ~230)
BLOCK_CAPACITY = 1 << 18  # blocks noted per replay with BLOCKS=1, at most (a llama-8b pass of 16 rows: ~50000)

_HELPERS = """
// ---- tests/probe_timeline.py: block 0 of every kernel notes its start and the release of its wait
extern "C" {
__device__ unsigned long long* rs_timeline;  // [0] notes taken, [1] capacity, then (start, release) pairs
__device__ unsigned long long* rs_timeline_marks;  // [capacity][4]: rs_timeline_mark(j)'s times, by note
__device__ unsigned long long* rs_timeline_blocks;  // BLOCKS=1: [0] taken, [1] capacity, then 4 words a block
}
__shared__ unsigned long long rs_timeline_slot;  // block 0's note (thread 0 writes and reads it)
struct RsTimelineNote {
  unsigned long long slot, start, capacity;
  bool on, block_on;  // block 0's note; this block's (thread 0 of every block, BLOCKS=1)
};
RS_DEVICE unsigned long long rs_timeline_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
RS_DEVICE RsTimelineNote rs_timeline_open() {
  const bool thread0 = (threadIdx.x | threadIdx.y | threadIdx.z) == 0;
  RsTimelineNote n{0, 0, 0, rs_timeline != nullptr && thread0 && (blockIdx.x | blockIdx.y | blockIdx.z) == 0,
                   thread0 && rs_timeline_blocks != nullptr};
  if (n.on || n.block_on) n.start = rs_timeline_now();
  if (n.on) {
    n.capacity = rs_timeline[1];
    n.slot = atomicAdd(rs_timeline, 1ULL);
    rs_timeline_slot = n.slot;
  }
  return n;
}
// Thread 0 of block 0 notes the time it reaches mark j of its kernel (MARKS=1: inside rmsnorm_q8, see MARKS).
RS_DEVICE void rs_timeline_mark(int j) {
  if (rs_timeline != nullptr && rs_timeline_marks != nullptr &&
      (blockIdx.x | blockIdx.y | blockIdx.z | threadIdx.x | threadIdx.y | threadIdx.z) == 0 &&
      rs_timeline_slot < rs_timeline[1])
    rs_timeline_marks[4 * rs_timeline_slot + j] = rs_timeline_now();
}
// Every block's note (BLOCKS=1): the launch's %gridid, (%smid << 32) | linear block index, start, release.
RS_DEVICE void rs_timeline_close(const RsTimelineNote& n) {
  const unsigned long long now = rs_timeline_now();
  if (n.on && n.slot < n.capacity) {
    rs_timeline[2 + 2 * n.slot] = n.start;
    rs_timeline[3 + 2 * n.slot] = now;
  }
  if (n.block_on) {
    const unsigned long long slot = atomicAdd(rs_timeline_blocks, 1ULL);
    if (slot < rs_timeline_blocks[1]) {
      unsigned long long grid;
      unsigned sm;
      asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
      const unsigned long long block =
          blockIdx.x + (unsigned long long)gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
      unsigned long long* e = rs_timeline_blocks + 2 + 4 * slot;
      e[0] = grid;
      e[1] = ((unsigned long long)sm << 32) | block;
      e[2] = n.start;
      e[3] = now;
    }
  }
}
"""
_BEGIN = re.compile(r"(RS_DEVICE void rs_kernel_begin(?:_early)?\(\) \{\n)(.*?\n)(\})", re.DOTALL)


def instrument(source: str) -> str:
    """A kernel source (portable.h expanded, as refspec.gpu.kernel_source gives it) whose rs_kernel_begin() and
    rs_kernel_begin_early() note block 0's start and release in the probe's buffer (`rs_timeline`, null: no
    notes). Raises ValueError where the source does not define both as portable.h does today."""
    found = _BEGIN.findall(source)
    if len(found) != 2:
        raise ValueError(f"expected rs_kernel_begin and rs_kernel_begin_early once each, found {len(found)}")
    first = _BEGIN.search(source).start()
    body = _BEGIN.sub(r"\1  const RsTimelineNote rs_note = rs_timeline_open();\n\2  rs_timeline_close(rs_note);\n\3",
                      source[first:])
    return source[:first] + _HELPERS + _marked(body)


# MARKS=1: rmsnorm_q8's block 0 also notes when its row is staged (mark 0), when inv is known (1) and when thread 0
# has issued its quantized blocks' stores (2), so that its span divides into its own steps and the boundary after.
_MARKS = (("  __syncthreads();\n  rs_rmsnorm_q8_part((const float*)rs_row4",
           "  __syncthreads();\n  rs_timeline_mark(0);\n  rs_rmsnorm_q8_part((const float*)rs_row4"),
          ("  const float inv = inv_shared;\n", "  const float inv = inv_shared;\n  rs_timeline_mark(1);\n"),
          ("  rs_quantize_blocks_lanes<RS_RMSNORM_Q8_PER_GROUP>(v, q, d, here);\n}",
           "  rs_quantize_blocks_lanes<RS_RMSNORM_Q8_PER_GROUP>(v, q, d, here);\n  rs_timeline_mark(2);\n}"))


def _marked(body: str) -> str:
    import os

    if os.environ.get("MARKS") != "1" or "rmsnorm_q8(" not in body:
        return body
    for old, new in _MARKS:
        if body.count(old) != 1:
            raise ValueError(f"MARKS: expected one {old!r} in quantize_q8_0.hip")
        body = body.replace(old, new)
    return body


def _kind(name: str) -> str:
    return name.split("<")[0]


def in_place(notes, names):
    """Per kernel, the medians over replays of its start and release (us from the first kernel's release) and of its
    span (the next kernel's release - its own; None for the last), and the spans summed by kind (the name up to its
    template arguments); with marks, each kernel's medians of them (us after its release) where every replay took them.
    `notes`: one int64 array [kernels, 2 + marks] of (start, release, marks...) ns a replay (a mark 0 where not
    taken), in any order; `names`: the eager pass's launches (name, grid, block), used where their count is the notes'."""
    import statistics

    import numpy as np

    notes = [n[np.argsort(n[:, 1], kind="stable")] for n in notes]  # release order is launch order
    count = min(len(n) for n in notes)
    t0 = [n[0, 1] for n in notes]
    kernels = []
    for i in range(count):
        start = statistics.median(float(n[i, 0] - t) for n, t in zip(notes, t0))
        release = statistics.median(float(n[i, 1] - t) for n, t in zip(notes, t0))
        span = statistics.median(float(n[i + 1, 1] - n[i, 1]) for n in notes) if i + 1 < count else None
        name, grid, block = names[i] if len(names) == count else ("?", [], [])
        kernels.append({"name": name, "grid": grid, "block": block, "start_us": round(start / 1e3, 3),
                        "release_us": round(release / 1e3, 3), "span_us": None if span is None else round(span / 1e3, 3)})
        marks = [statistics.median(float(n[i, j] - n[i, 1]) for n in notes) for j in range(2, notes[0].shape[1])
                 if all(n[i, j] > 0 for n in notes)]
        if marks:  # (MARKS=1) us after its release
            kernels[-1]["marks_us"] = [round(m / 1e3, 3) for m in marks]
    by_kind: dict[str, dict] = {}
    for k in kernels:
        if k["span_us"] is not None:
            entry = by_kind.setdefault(_kind(k["name"]), {"count": 0, "total_us": 0.0})
            entry["count"] += 1
            entry["total_us"] = round(entry["total_us"] + k["span_us"], 3)
    return kernels, by_kind


def block_starts(blocks, count: int):
    """BLOCKS=1: per kernel (launch order, `count` of them), the medians over replays of its blocks' starts (first,
    median, last; us after the release of the kernel before it), of its blocks' release spread (last - first, us),
    and its blocks and multiprocessors. `blocks`: one int64 array [notes, 4] a replay of (gridid, smid << 32 | block,
    start, release) ns. A launch is placed by its block 0's release (launch order); the first kernel has no
    kernel before it and gets None."""
    import statistics

    import numpy as np

    per_replay = []
    for b in blocks:
        grids = {}
        for g in np.unique(b[:, 0]):
            rows = b[b[:, 0] == g]
            zero = rows[(rows[:, 1] & 0xFFFFFFFF) == 0]
            if len(zero):
                grids[int(zero[0, 3])] = rows
        per_replay.append([grids[r] for r in sorted(grids)])
    count = min(count, *(len(r) for r in per_replay))
    out = [None]
    for i in range(1, count):
        stats = []
        for launches in per_replay:
            prev = launches[i - 1][(launches[i - 1][:, 1] & 0xFFFFFFFF) == 0][0, 3]
            rows = launches[i]
            starts = np.sort(rows[:, 2] - prev) / 1e3
            spread = (rows[:, 3].max() - rows[:, 3].min()) / 1e3
            stats.append((float(starts[0]), float(np.median(starts)), float(starts[-1]), float(spread), len(rows),
                          len(np.unique(rows[:, 1] >> 32))))
        med = [round(statistics.median(s[j] for s in stats), 3) for j in range(4)]
        out.append({"start_us": med[:3], "release_spread_us": med[3], "blocks": stats[0][4], "sms": stats[0][5]})
    return out


def main(argv: list[str]) -> None:
    import ctypes
    import gc
    import json
    import os

    import numpy as np

    import refspec.gpu as gpu
    from refspec.bench_decode import preset_model_path
    from refspec.forward import Transformer
    from refspec.gguf_model import load
    from refspec.gpu_launch import Kernel, _driver_function

    from graph_timing import pass_seconds

    preset, widths = argv[1], [int(r) for r in argv[2].split(",")]
    replays = int(argv[3]) if len(argv) > 3 else 20
    out_path = argv[4] if len(argv) > 4 else "timeline.jsonl"
    position = int(os.environ.get("POSITION", "64"))
    model = load(preset if preset.endswith(".gguf") else preset_model_path(preset, print), log=lambda m: None)

    def ids_of(rows):
        return [(7 * i + 3) % model.config.n_vocab for i in range(rows)]

    def pass_ms(tf):
        cache = tf.new_cache(position + max(widths) + 8)
        tf.forward(cache, [1] * position, 0)
        return {rows: round(1e3 * pass_seconds(tf, cache, ids_of(rows), position, 50), 4) for rows in widths}

    production = Transformer(model, gpu.GpuBackend())  # the production build first, before the sources are rewritten
    production_ms = pass_ms(production)
    del production
    gc.collect()  # (a Transformer and its graphs hold each other): its weights leave the GPU before the next's arrive

    production_source = gpu.kernel_source
    gpu.kernel_source = lambda stem: instrument(production_source(stem))
    labels, launches, recording = {}, [], [False]
    plain_function, plain_call = gpu.GpuBackend.function, Kernel.__call__

    def function(self, stem, name, name_expressions=()):
        fn = plain_function(self, stem, name, name_expressions)
        labels[id(fn)] = name
        return fn

    def call(self, grid, block, args, shared_mem=0):
        if recording[0]:
            launches.append((labels.get(id(self), "?"), list(np.atleast_1d(grid).tolist()),
                             list(np.atleast_1d(block).tolist())))
        return plain_call(self, grid, block, args, shared_mem)

    gpu.GpuBackend.function, Kernel.__call__ = function, call
    be = gpu.GpuBackend()
    cp = be.cp
    device = cp.cuda.Device()
    tf = Transformer(model, be)
    built_ms = pass_ms(tf)  # the rewritten build with the notes off (this loads every module the passes use)

    buf = cp.zeros(2 + 2 * CAPACITY, dtype=cp.uint64)
    buf[1] = CAPACITY
    marking = os.environ.get("MARKS") == "1"
    marks = cp.zeros(4 * CAPACITY, dtype=cp.uint64) if marking else None  # (None: no marks, as for the blocks)
    each_block = os.environ.get("BLOCKS") == "1"
    blocks_buf = cp.zeros(2 + 4 * BLOCK_CAPACITY, dtype=cp.uint64) if each_block else None  # (None: no block notes)
    if each_block:
        blocks_buf[1] = BLOCK_CAPACITY
    get_global = _driver_function("cuModuleGetGlobal_v2", "the timeline probe")
    get_global.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                           ctypes.c_char_p]
    copy_in = _driver_function("cuMemcpyHtoD_v2", "the timeline probe")
    copy_in.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
    address, marks_address = ctypes.c_uint64(buf.data.ptr), ctypes.c_uint64(marks.data.ptr if marking else 0)
    blocks_address = ctypes.c_uint64(blocks_buf.data.ptr if each_block else 0)

    def notes_on():  # every loaded module's rs_timeline -> buf (modules load lazily: again before each width)
        for module, _ in be._modules.values():
            for symbol, value in ((b"rs_timeline", address), (b"rs_timeline_marks", marks_address),
                                  (b"rs_timeline_blocks", blocks_address)):
                where, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
                if get_global(ctypes.byref(where), ctypes.byref(size), ctypes.c_void_p(module.ptr), symbol) == 0:
                    copy_in(where.value, ctypes.byref(value), 8)

    notes_on()
    timeline_ms = pass_ms(tf)  # with the notes (past the capacity they still take their atomic add, not the stores)
    gpu_name = cp.cuda.runtime.getDeviceProperties(device.id)["name"]
    record = {"preset": preset, "position": position, "replays": replays,
              "gpu": gpu_name.decode() if isinstance(gpu_name, bytes) else gpu_name, "production_ms": production_ms,
              "built_ms": built_ms, "timeline_ms": timeline_ms, "widths": {}}
    for rows in widths:
        cache = tf.new_cache(position + rows + 8)
        tf.forward(cache, [1] * position, 0)
        graphs, tf.graphs = tf.graphs, None  # the same pass launch by launch (one copy of the weights on the GPU),
        device.synchronize()                 # its kernels' names in launch order; it writes the same bits
        launches.clear()
        recording[0] = True
        tf.forward(cache, ids_of(rows), position)
        device.synchronize()
        recording[0] = False
        names = list(launches)
        tf.graphs = graphs
        for _ in range(3):
            tf.forward(cache, ids_of(rows), position)  # captured, then replayed
        notes_on()
        notes, blocks = [], []
        for _ in range(replays):
            device.synchronize()  # (the reset runs on CuPy's stream, the replay on the graph's: the whole device)
            buf[0] = 0
            if each_block:
                blocks_buf[0] = 0
            if marking:
                marks.fill(0)
            device.synchronize()
            tf.forward(cache, ids_of(rows), position)
            device.synchronize()
            host = cp.asnumpy(buf)
            taken = int(min(host[0], CAPACITY))
            note = host[2 : 2 + 2 * taken].reshape(taken, 2)
            if marking:
                note = np.concatenate([note, cp.asnumpy(marks)[: 4 * taken].reshape(taken, 4)], axis=1)
            notes.append(note.astype(np.int64))
            if each_block:
                host = cp.asnumpy(blocks_buf)
                taken = int(min(host[0], BLOCK_CAPACITY))
                blocks.append(host[2 : 2 + 4 * taken].reshape(taken, 4).astype(np.int64))
        counts = sorted({len(n) for n in notes})
        kernels, by_kind = in_place(notes, names)
        if each_block:
            for k, b in zip(kernels, block_starts(blocks, len(kernels))):
                k["each_block"] = b
        record["widths"][rows] = {
            "notes_per_replay": counts, "eager_launches": len(names), "names_matched": len(names) == len(kernels),
            "kernels": kernels, "by_kind_us": by_kind,
            "first_to_last_release_us": kernels[-1]["release_us"] if kernels else None,
        }
        print(f"rows={rows}: {len(kernels)} kernels noted a replay ({counts}), {len(names)} launched eagerly"
              f"{'' if len(names) == len(kernels) else ' (names not matched)'}; pass {production_ms[rows]:.4f} ms "
              f"production, {built_ms[rows]:.4f} rewritten, {timeline_ms[rows]:.4f} with the notes")
        for kind, entry in sorted(by_kind.items(), key=lambda kv: -kv[1]["total_us"]):
            n, total = entry["count"], entry["total_us"]
            print(f"  {kind:24s} {n:5d} x {total / n:8.3f} us = {total / 1e3:7.4f} ms")
        if each_block:  # (BLOCKS=1) by the kernel before and the kernel, with its grid: the means of the medians
            pairs: dict[str, list] = {}
            for before, k in zip(kernels, kernels[1:]):
                if k.get("each_block"):
                    key = f"{_kind(before['name'])} -> {k['name']} {k['grid']}x{k['block']}"
                    pairs.setdefault(key, []).append(k["each_block"])
            print("  blocks' starts, us after the release of the kernel before (first / median / last), spread of "
                  "their releases, blocks on multiprocessors:")
            for key, bs in sorted(pairs.items()):
                mean = [round(sum(b["start_us"][j] for b in bs) / len(bs), 2) for j in range(3)]
                spread = round(sum(b["release_spread_us"] for b in bs) / len(bs), 2)
                print(f"    {key} (x{len(bs)}): {mean[0]} / {mean[1]} / {mean[2]}, {spread}; "
                      f"{bs[0]['blocks']} on {bs[0]['sms']}")
    with open(out_path, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    import sys

    main(sys.argv)
