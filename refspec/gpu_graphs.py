"""Captured forward passes: each width the decoder uses (1 .. GRAPH_MAX_ROWS rows, per layer subset) is
recorded once as a CUDA graph through CuPy's stream capture and replayed at every later step.

What changes between steps, the token ids and the first position, lives in a small device array that one
host-to-device copy fills before each replay; the kernels read the position from there (refspec/forward.py's
`run` takes ids and position as `be.pass_input` gives them, on every backend), so one graph serves every
position. Gated DeltaNet layers (qwen35) find their recurrent-state slots from that position too (the
kernels compute them; forward() checks on the host, before the replay, that the state a pass continues is
still held). The captured pass is refspec/forward.py's `run` itself: the eager path (Transformer(...,
graphs=False), `--no-graphs`) runs the same code launch by launch.

Memory. Everything a pass allocates while it is captured is held by its graph (GpuBackend.hold), so the
memory the graph replays into never returns to CuPy's pool, where a later allocation could take it. A graph
writes one KV cache, so it is kept on that cache (KVCache.graphs) and dies with it.

Greedy decoding (`greedy_steps`) captures more: the pass of one row, its argmax, and the next step's input
(the chosen id, the position + 1) written on the device by the graph itself. The host then queues step k+1
before it reads step k's token, so the GPU never waits for Python between tokens; the host reads each
token one step behind and stops the chain at an end-of-generation id or the budget (a step queued past
that is computed and thrown away: it writes only cache rows beyond the last token kept, and the recurrent
state of its position, which the cache's bookkeeping then records).

Speculative decoding with the ngram drafter (`speculative_steps`) chains its verify passes the same way: a
pass of draft_max+1 rows, its argmax, and kernels_raw/ngram.hip's step (the accept rule, then the next
guesses), which also writes how many rows the next pass computes: its kernels skip the rows past its guesses
(GpuBackend.live_rows), so a pass that guesses nothing costs about what a one-row pass does. Where the driver
offers conditional graph nodes (refspec/gpu_conditional.py) the pass is captured behind them: a pass that
guesses nothing runs the one-row pass, a pass queued past a run's end runs no forward pass at all.

CuPy offers stream capture on CUDA only; on ROCm the backend says graphs_available = False and the eager path
runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refspec.errors import DeviceError
from refspec.forward import check_states, note_states
from refspec.gpu_conditional import conditional_capture

GRAPH_MAX_ROWS = 16  # passes of more rows (long prompt chunks) run eagerly: their launches are amortised


@dataclass
class PassGraph:
    graph: object  # cupy.cuda.graph.Graph
    inputs: object  # device int32 [1 + rows]: the first position, then the token ids
    staging: np.ndarray  # pinned host int32 [1 + rows], copied into `inputs` before each replay
    staged: object  # cupy.cuda.Event recorded after that copy: staging is free again once it has passed
    hidden_in: object  # device float32 [rows, E]: an MTP pass's hidden rows (mtp_from), copied in; else None
    out: object  # logits [rows, V], or (logits, hidden rows) for hidden / MTP passes: rewritten by every replay
    held: list  # every array the captured pass allocated
    chosen: object = None  # with argmax: device int32 [rows, 2], each row's (argmax id, NaN-or-infinity flag)
    chosen_host: np.ndarray | None = None  # with argmax: pinned host int32 [rows, 2], copied from `chosen`


@dataclass
class GreedyGraph:
    graph: object  # cupy.cuda.graph.Graph: pass of one row + argmax + greedy_next
    state: object  # device int32 [3 + 2 + NGRAM_MAX_STOP]: inputs, live, then the run's stop buffer
    inputs: object  # state[:2]: the position, the token id (advanced by the graph itself)
    live: object  # state[2:3]: the rows the step computes (1, then 0 past the run's end), or None (qwen35)
    result: object  # device int32 [1, 2]: the argmax id and its NaN-or-infinity flag
    host: np.ndarray  # pinned host int32 [2, 2]: the results of two queued steps
    done: list  # two cupy.cuda.Event: recorded after each slot's copy
    held: list  # every array the captured pass allocated


@dataclass
class SpeculativeGraph:
    graph: object  # cupy.cuda.graph.Graph: a verify pass of `width` rows + argmax + speculative_next
    inputs: object  # device int32 [1 + width]: the pass's first position and ids (rewritten by the graph)
    drafted: object  # device int32 [2]: how many of its ids after the first are guesses (the rest fill the width),
    #                  and that + 1: the rows its kernels compute (GpuBackend.live_rows)
    ctx: object  # device int32 [n_pos + width]: the token at each position of the context
    result: object  # device int32 [2 + 2 * width]: the pass's record, its tokens (kernels_raw/ngram.hip)
    stop: object  # device int32 [2 + NGRAM_MAX_STOP]: what ends the run (GpuBackend.stop_buffer)
    chosen: object  # device int32 [width, 2]: each row's argmax and NaN-or-infinity flag
    host: np.ndarray  # pinned host int32 [2, 2 + 2 * width]: the records of two queued passes
    staging: np.ndarray  # pinned host int32 [n_pos + 2 * width + 7 + NGRAM_MAX_STOP]: a context, the first input,
    #                      drafted, stop, a first row's (id, flag)
    done: list  # two cupy.cuda.Event: recorded after each slot's copy
    held: list  # every array the captured pass allocated


class PassGraphs:
    """The captured passes of one Transformer (refspec/forward.py), replayed on one stream."""

    def __init__(self, tf, max_rows: int = GRAPH_MAX_ROWS):
        self.tf, self.be, self.max_rows = tf, tf.be, max_rows
        # Capture needs a stream of its own; a blocking one, so that work on the null stream (eager passes,
        # argmax) and replays stay ordered without explicit waits.
        self.stream = self.be.cp.cuda.Stream(non_blocking=False)
        self.captured = 0  # graphs recorded (a statistic)
        # Chained passes capture their forward pass behind conditional nodes where the driver can
        # (refspec/gpu_conditional.py); None: captured as one body computing its live rows.
        self.conditional = conditional_capture(self.be.cp, self.be.platform)

    def replay(self, cache, ids, pos0: int, layers=None, *, hidden: bool = False, mtp_from=None,
               argmax: bool = False):
        """The pass's result, as Transformer.run returns it, from its graph (recorded on first use: that call
        runs eagerly). A graph per width, layer subset and kind of pass (logits; logits and hidden rows; the
        MTP block, whose hidden rows mtp_from are copied into the graph's input first), with or without the
        argmax of its logits. Hidden rows come back as a copy, so that a drafter may keep them; the logits are
        the graph's until its next replay. argmax=True: (result, (ids, finite)) as Transformer.forward says,
        after the pass has ended."""
        mode = "mtp" if mtp_from is not None else "hidden" if hidden else "logits"
        key = (len(ids), None if layers is None or mode == "mtp" else tuple(layers), mode, argmax)
        g = cache.graphs.get(key)
        with self.stream:
            if g is None:
                result, g = self._record(cache, ids, pos0, layers, mtp_from, key)
            else:
                self._stage(g, pos0, ids)
                if g.hidden_in is not None:
                    g.hidden_in[...] = self.be.cp.asarray(mtp_from, dtype=np.float32)
                g.graph.launch()
                result = g.out if mode == "logits" else (g.out[0], g.out[1].copy())
            if not argmax:
                return result
            self._copy(g.chosen_host, g.chosen)
            self.stream.synchronize()
            return result, (g.chosen_host[:, 0].astype(np.int64), g.chosen_host[:, 1] == 0)

    def _stage(self, g: PassGraph, pos0: int, ids) -> None:
        """Queue the copy of (pos0, ids) into the graph's inputs: from pinned memory, asynchronously, once the
        previous replay's copy has read the staging buffer."""
        g.staged.synchronize()
        g.staging[0] = pos0
        g.staging[1:] = ids
        self._copy(g.inputs, g.staging)
        g.staged.record(self.stream)

    def _copy(self, dst, src) -> None:
        """Queue a copy on the stream between pinned host memory (a NumPy array) and the device (a CuPy
        array), either way: asynchronous, so the host array must stay as it is until the copy has run."""
        runtime = self.be.cp.cuda.runtime
        if isinstance(src, np.ndarray):
            runtime.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes, runtime.memcpyHostToDevice,
                                self.stream.ptr)
        else:
            runtime.memcpyAsync(dst.ctypes.data, src.data.ptr, dst.nbytes, runtime.memcpyDeviceToHost,
                                self.stream.ptr)

    def _pinned(self, shape, held: list) -> np.ndarray:
        """A host int32 array of `shape` in pinned memory (what asynchronous copies need); `held` keeps it."""
        count = int(np.prod(shape))
        memory = self.be.cp.cuda.alloc_pinned_memory(4 * count)
        held.append(memory)
        return np.frombuffer(memory, np.int32, count).reshape(shape)

    def _record(self, cache, ids, pos0: int, layers, mtp_from, key):
        """(the pass's result, its PassGraph): the pass runs eagerly, then is captured."""
        be, rows, mode, argmax = self.be, len(ids), key[2], key[3]
        inputs = be.cp.empty(1 + rows, np.int32)
        hidden_in = chosen = chosen_host = None
        held = [inputs]
        staging = self._pinned((1 + rows,), held)
        staging[0], staging[1:] = pos0, ids
        if mode == "mtp":
            hidden_in = be.cp.empty((rows, self.tf.config.n_embd), np.float32)
            held.append(hidden_in)
        if argmax:
            chosen = be.cp.empty((rows, 2), np.int32)
            chosen_host = self._pinned((rows, 2), held)
            held.append(chosen)
        inputs.set(staging)  # on the stream: `staged`, recorded after the capture, waits for it too
        if hidden_in is not None:
            hidden_in[...] = be.cp.asarray(mtp_from, dtype=np.float32)

        def run():
            out = self.tf.run(cache, inputs[1:], inputs[:1], rows, layers, hidden=mode == "hidden",
                              mtp_from=hidden_in)
            if argmax:
                be.argmax_device(out if mode == "logits" else out[0], chosen)
            return out

        result, graph, out = self._capture(run, held, f"a pass of {rows} rows")
        staged = be.cp.cuda.Event(block=False, disable_timing=True)
        staged.record(self.stream)
        g = cache.graphs[key] = PassGraph(graph, inputs, staging, staged, hidden_in, out, held, chosen, chosen_host)
        self.captured += 1
        return result, g

    def _capture(self, step, held: list, what: str, captured=None):
        """(step's result, the graph, the captured step's result): `step` runs once eagerly on the stream (its
        result is the caller's, and every kernel it needs gets compiled: compiling cannot happen inside a
        capture), then is captured (or `captured`, the same work behind conditional nodes, whose kernels the
        caller has compiled). The captured copy writes the same cache rows (and state slots) with the same bits
        when it is replayed; everything it allocates is appended to `held`."""
        result = step()
        self.be.hold(held)
        try:
            self.stream.begin_capture()
            try:
                out = (captured or step)()
            finally:
                graph = self.stream.end_capture()
        except DeviceError:
            raise
        except Exception as err:  # CUDA's capture errors name what broke it
            raise DeviceError(f"capturing {what} as a CUDA graph failed ({err}); run with --no-graphs") from err
        finally:
            self.be.hold(None)
        return result, graph, out

    # ---- greedy decoding, one step ahead of the host
    def greedy_steps(self, cache, token: int, pos: int, n_steps: int, eog_ids=()):
        """Yield (ids [1], finite [1]) for n_steps greedy steps, as spec.argmax_rows of the logits of the
        pass of `token` at `pos`, then of the token each step chose at the next position: the same passes
        and argmax kernel as forward() + argmax_rows, with one step always queued ahead of the host. A caller
        that stops at one of `eog_ids` leaves the step queued after it computing nothing (greedy_next; not on
        qwen35, whose steps also write recurrent state)."""
        if n_steps <= 0:
            return
        recurrent = self.tf.recurrent_layers()
        check_states(cache, recurrent, pos)  # (qwen35) the state the first step continues is held
        state = np.concatenate([[pos, token, 1], self.be.stop_buffer(None, eog_ids)]).astype(np.int32)
        g = cache.graphs.get("greedy")
        launched = 1  # steps queued: each writes its position's cache rows and recurrent state

        def queue(step: int):
            nonlocal launched
            launched += 1
            return self._queue_step(g, step)

        with self.stream:
            if g is None:
                g = self._record_greedy(cache, state, live=not recurrent)  # runs the first step eagerly
                queued = [self._copy_result(g, 0)]
            else:
                g.state.set(state)
                queued = [self._queue_step(g, 0)]
            try:
                for i in range(n_steps):
                    if i + 1 < n_steps and len(queued) < 2:
                        queued.append(queue(i + 1))
                    slot, done = queued.pop(0)
                    done.synchronize()
                    ids, flags = g.host[slot, :1].astype(np.int64), g.host[slot, 1:] == 0
                    yield ids, flags
                    # The caller wants more: the step after next takes the slot just read. Queued only now, so
                    # that a caller who stops here (an end-of-generation token) leaves one step to wait for,
                    # not two; the step queued before this one keeps the GPU busy meanwhile.
                    if i + 2 < n_steps:
                        queued.append(queue(i + 2))
            finally:
                self.stream.synchronize()  # a step queued past the last one kept ends before anything else runs
                note_states(cache, recurrent, pos, launched)  # what every step run left in the rings

    def _queue_step(self, g, step: int):
        g.graph.launch()
        return self._copy_result(g, step)

    def _copy_result(self, g, step: int):
        """The step's result (a greedy step's id and flag, a speculative pass's record) to its pinned host
        slot, after the step's kernels on the stream."""
        slot = step % 2
        self._copy(g.host[slot], g.result)
        done = g.done[slot]  # free again: the host has read the slot's last step before reusing the slot
        done.record(self.stream)
        return slot, done

    def _record_greedy(self, cache, state: np.ndarray, live: bool) -> GreedyGraph:
        """Run one greedy step eagerly (compiling what it needs), then capture the same step as a graph. live:
        its kernels compute the rows state[2] says (GpuBackend.live_rows), and greedy_next sets it to 0 past
        the run's end."""
        be, cp = self.be, self.be.cp
        state = cp.asarray(state)
        inputs, count, stop = state[:2], state[2:3] if live else None, state[3:] if live else None
        result = cp.zeros((1, 2), np.int32)
        held = [state, result]
        host = self._pinned((2, 2), held)

        def step():
            be.live_rows(count)
            try:
                logits = self.tf.run(cache, inputs[1:], inputs[:1], 1)
                be.argmax_device(logits, result)
            finally:
                be.live_rows(None)
            be.greedy_next(result, inputs, count, stop)

        _, graph, _ = self._capture(step, held, "a greedy step")
        done = [cp.cuda.Event(block=False, disable_timing=True) for _ in range(2)]
        g = cache.graphs["greedy"] = GreedyGraph(graph, state, inputs, count, result, host, done, held)
        self.captured += 1
        return g

    # ---- speculative decoding with the ngram drafter, one pass ahead of the host
    def speculative_steps(self, cache, context: list[int], drafts: list[int], width: int, ngram: tuple,
                          limit: int | None = None, eog_ids=()):
        """Yield (ids, finite, guesses) for each verify pass of `width` rows: the tokens it yields by the
        accept rule of refspec/speculative.py (its accepted guesses, then the token after them), the
        NaN-or-infinity flags of those rows, and how many guesses it verified. The first pass verifies `drafts`
        after the context's last token (at position len(context) - 1); each pass's graph then takes its tokens
        into the context on the device and proposes the next pass's guesses by NgramDrafter's rule (ngram =
        max_n, min_n, unigram_max: kernels_raw/ngram.hip), so the host queues pass k+1 before it reads pass
        k's tokens, as greedy_steps does. A pass has `width` rows whatever it guesses (the rows after the
        guesses are verified and never accepted). The caller stops reading when it has the tokens it needs;
        it and the pass queued after it (pass k+2 is queued only when pass k+1 is asked for) write cache rows
        up to 2 * width positions past the last token kept, which the cache should hold
        (refspec.speculative.CHAIN_SLACK); a pass that would not fit is moved to the cache's end, where no
        token kept lies. `limit` (the context length at which the caller stops: its prompt plus its budget) and
        `eog_ids` (the ids that stop it) let the device see the run end as the caller will: the pass queued
        after the one that ends it then computes nothing (GpuBackend.live_rows). `drafts` None: the device
        proposes the first pass's guesses too (speculative_next run once, as though a pass had just yielded
        the context's last token), so the host drafts nothing."""
        key = ("speculative", width, tuple(ngram))
        stop = self.be.stop_buffer(limit, eog_ids)
        g = cache.graphs.get(key)
        with self.stream:
            if g is None:
                g = self._record_speculative(cache, context, drafts, width, ngram, stop, key)  # runs the first pass
                queued = [self._copy_result(g, 0)]
            else:
                self._stage_speculative(g, context, drafts, stop, ngram)
                queued = [self._queue_step(g, 0)]
            try:
                step = 0
                while True:
                    if len(queued) < 2:
                        queued.append(self._queue_step(g, step + 1))
                    slot, done = queued.pop(0)
                    done.synchronize()
                    record = g.host[slot]
                    count = int(record[0])
                    ids, flags = record[2 : 2 + 2 * count : 2].astype(np.int64), record[3 : 3 + 2 * count : 2] == 0
                    guesses = int(record[1])
                    yield ids, flags, guesses
                    # as in greedy_steps: the pass after next takes the slot just read, once the caller wants more
                    queued.append(self._queue_step(g, step + 2))
                    step += 1
            finally:
                self.stream.synchronize()  # a pass queued past the last one read ends before anything else runs

    def _stage_speculative(self, g: SpeculativeGraph, context: list[int], drafts: list[int] | None, stop,
                           ngram: tuple) -> None:
        """Copy the context, the first pass's input (its position, the last token, the guesses padded to the
        width with that token), the number of guesses and the rows to compute (that + 1), and `stop` to the
        device, from pinned memory, on the stream. drafts None: instead, the input of a pass that verified
        nothing and yielded the context's last token (row 0 of `chosen`), and speculative_next after it, which
        writes the first pass's input with the guesses it proposes."""
        n, width = len(context), g.inputs.shape[0] - 1
        staged = g.staging
        staged[:n] = context
        first = staged[n : n + 1 + width]
        if drafts is None:  # the pass before: at n - 2 (its ids are never read), no guesses; it chose context[-1]
            first[:] = n - 2, *[context[-1]] * width
            staged[n + 1 + width : n + 3 + width] = 0, 1
        else:
            first[0], first[1] = n - 1, context[-1]
            first[2:] = list(drafts) + [context[-1]] * (width - 1 - len(drafts))
            staged[n + 1 + width : n + 3 + width] = len(drafts), len(drafts) + 1
        at = n + 3 + width
        staged[at : at + len(stop)] = stop
        copies = [(g.ctx, 0, n), (g.inputs, n, 1 + width), (g.drafted, n + 1 + width, 2), (g.stop, at, len(stop))]
        if drafts is None:  # the pass before chose the context's last token, finite
            staged[at + len(stop) : at + len(stop) + 2] = context[-1], 0
            copies.append((g.chosen, at + len(stop), 2))
        runtime = self.be.cp.cuda.runtime
        for dst, start, count in copies:
            runtime.memcpyAsync(dst.data.ptr, staged.ctypes.data + 4 * start, 4 * count, runtime.memcpyHostToDevice,
                                self.stream.ptr)
        if drafts is None:  # (on the current stream: the caller's `with self.stream`)
            self.be.speculative_next(g.inputs, g.chosen, g.ctx, g.drafted, g.result, g.stop, width,
                                     g.ctx.shape[0] - width, ngram)

    def _record_speculative(self, cache, context, drafts, width: int, ngram, stop, key) -> SpeculativeGraph:
        """Run the first pass eagerly (compiling what it needs), then capture the same pass as a graph."""
        be, cp = self.be, self.be.cp
        n_pos = cache.n_pos
        inputs, drafted = cp.empty(1 + width, np.int32), cp.empty(2, np.int32)
        ctx, record = cp.zeros(n_pos + width, np.int32), cp.zeros(2 + 2 * width, np.int32)
        chosen, stop_dev = cp.empty((width, 2), np.int32), cp.empty(len(stop), np.int32)
        held = [inputs, drafted, ctx, record, chosen, stop_dev]
        host = self._pinned((2, 2 + 2 * width), held)
        staging = self._pinned((n_pos + 2 * width + 5 + len(stop),), held)
        done = [cp.cuda.Event(block=False, disable_timing=True) for _ in range(2)]
        g = SpeculativeGraph(None, inputs, drafted, ctx, record, stop_dev, chosen, host, staging, done, held)
        self._stage_speculative(g, context, drafts, stop, ngram)

        def forward_argmax(rows: int):
            # the rows past the guesses are skipped by the kernels that can (their tokens are never accepted)
            be.live_rows(drafted[1:] if rows > 1 else None)
            try:
                logits = self.tf.run(cache, inputs[1 : 1 + rows], inputs[:1], rows)
                be.argmax_device(logits, chosen[:rows])
            finally:
                be.live_rows(None)

        def step():
            forward_argmax(width)
            be.speculative_next(inputs, chosen, ctx, drafted, record, stop_dev, width, n_pos, ngram)

        def branched():
            # One of two bodies, by the rows the step before asked for: the one-row pass (row 0's operations are
            # the same in both), all `width` rows computing their live ones, or neither (past the run's end).
            bodies = [lambda: forward_argmax(1), lambda: forward_argmax(width)]
            if self.conditional.switch:  # one SWITCH node on min(rows, 2)
                (branch,) = self.conditional.handles(self.stream, 1)
                be.pass_branch(branch, drafted[1:], width)
                self.conditional.switch_node(self.stream, branch, [None, *bodies])
            else:  # an IF node each (drivers before CUDA 12.8)
                one, many = self.conditional.handles(self.stream, 2)
                be.pass_conditions(one, many, drafted[1:], width)
                self.conditional.if_node(self.stream, one, bodies[0])
                self.conditional.if_node(self.stream, many, bodies[1])
            be.speculative_next(inputs, chosen, ctx, drafted, record, stop_dev, width, n_pos, ngram)

        if self.conditional is not None:  # what the conditional capture runs, compiled before it
            be.function("graph_conditions", "pass_branch" if self.conditional.switch else "pass_conditions")
            forward_argmax(1)
        _, g.graph, _ = self._capture(step, held, f"a speculative pass of {width} rows",
                                      branched if self.conditional is not None else None)
        cache.graphs[key] = g
        self.captured += 1
        return g
