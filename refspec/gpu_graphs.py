"""Captured forward passes: each width the decoder uses (1 .. GRAPH_MAX_ROWS rows, per layer subset) is
recorded once as a CUDA graph through CuPy's stream capture and replayed at every later step.

What changes between steps, the token ids and the first position, lives in a small device array that one
host-to-device copy fills before each replay; the kernels read the position from there (refspec/forward.py's
`run` takes ids and position as `be.pass_input` gives them, on every backend), so one graph serves every
position. The captured pass is refspec/forward.py's `run` itself: the eager path (Transformer(...,
graphs=False), `--no-graphs`) runs the same code launch by launch.

Memory. Everything a pass allocates while it is captured is held by its graph (GpuBackend.hold), so the
memory the graph replays into never returns to CuPy's pool, where a later allocation could take it. A graph
writes one KV cache, so it is kept on that cache (KVCache.graphs) and dies with it.

CuPy offers stream capture on CUDA only; on ROCm the backend says graphs_available = False and the eager path
runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refspec.errors import DeviceError

GRAPH_MAX_ROWS = 16  # passes of more rows (long prompt chunks) run eagerly: their launches are amortised


@dataclass
class PassGraph:
    graph: object  # cupy.cuda.graph.Graph
    inputs: object  # device int32 [1 + rows]: the first position, then the token ids
    staging: np.ndarray  # host int32 [1 + rows], copied into `inputs` before each replay
    logits: object  # device float32 [rows, V], rewritten by every replay
    held: list  # every array the captured pass allocated


class PassGraphs:
    """The captured passes of one Transformer (refspec/forward.py), replayed on one stream."""

    def __init__(self, tf, max_rows: int = GRAPH_MAX_ROWS):
        self.tf, self.be, self.max_rows = tf, tf.be, max_rows
        # Capture needs a stream of its own; a blocking one, so that work on the null stream (eager passes,
        # argmax) and replays stay ordered without explicit waits.
        self.stream = self.be.cp.cuda.Stream(non_blocking=False)
        self.captured = 0  # graphs recorded (a statistic)

    def replay(self, cache, ids, pos0: int, layers=None):
        """Logits [R, V] of the pass, from its graph (recorded on first use: that call runs eagerly)."""
        key = (len(ids), None if layers is None else tuple(layers))
        g = cache.graphs.get(key)
        if g is None:
            return self._record(cache, ids, pos0, layers, key)
        g.staging[0] = pos0
        g.staging[1:] = ids
        with self.stream:
            g.inputs.set(g.staging)  # pageable memory: the host copy is taken before set() returns
            g.graph.launch()
        return g.logits

    def _record(self, cache, ids, pos0: int, layers, key):
        be, rows = self.be, len(ids)
        staging = np.empty(1 + rows, np.int32)
        staging[0], staging[1:] = pos0, ids
        inputs = be.cp.empty(1 + rows, np.int32)
        held = [inputs]
        with self.stream:
            inputs.set(staging)
            # This step runs eagerly: its logits are the result, and every kernel it needs gets compiled
            # (compiling cannot happen inside a capture). The captured copy writes the same cache rows with
            # the same bits when it is replayed.
            logits = self.tf.run(cache, inputs[1:], inputs[:1], rows, layers)
            be.hold(held)
            try:
                self.stream.begin_capture()
                try:
                    out = self.tf.run(cache, inputs[1:], inputs[:1], rows, layers)
                finally:
                    graph = self.stream.end_capture()
            except DeviceError:
                raise
            except Exception as err:  # CUDA's capture errors name what broke it
                raise DeviceError(f"capturing a pass of {rows} rows as a CUDA graph failed ({err}); "
                                  "run with --no-graphs") from err
            finally:
                be.hold(None)
        cache.graphs[key] = PassGraph(graph, inputs, staging, out, held)
        self.captured += 1
        return logits
