"""The transformer forward pass: one readable module for every backend and architecture.

`forward` takes R token ids at consecutive positions pos0 .. pos0+R-1 and returns R rows of logits. Prompt
chunks, single decoding steps and speculative verification all come through here. The operations (`be.*`)
are those of refspec/spec.py; a backend (refspec/backends.py) runs them on the CPU or the GPU and must give
the same bits. Shape comments use R rows, H query heads, G kv heads, D head dim, E embedding, F ffn, V vocab.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from refspec import checks
from refspec.errors import ContextLengthError, DeviceError, UsageError
from refspec.model import Model
from refspec.spec import rope_table


@dataclass
class KVCache:
    """Keys and values of every layer, indexed by absolute position: k[i], v[i] are [G, n_pos, D], and the
    RoPE table for those positions: rope_cos, rope_sin [n_pos, n_rot/2]. Rows written for positions that are
    later rejected are simply overwritten by the next pass.

    Gated DeltaNet layers (qwen35) have no keys and values (k[i] is None) but a recurrent state, which
    belongs to a position too: the state after position p sits in slot p % n_states of a ring (conv[i]:
    the conv1d's last inputs [n_states, conv_dim, d_conv-1]; ssm[i]: [n_states, Hv, Dv, Dk]). A pass over
    positions pos0.. reads the state after pos0-1 and writes the state after each of its rows, so a decoder
    resumes after any row of its last pass (the last accepted guess) without recomputing anything, provided
    no pass has more than n_states rows past the one it resumes after."""

    k: list
    v: list
    n_pos: int  # positions the cache may use (with graphs its storage may hold more: new_cache)
    rope_cos: object  # [n_pos, n_rot/2] on the backend (spec.rope_table)
    rope_sin: object
    graphs: dict = field(default_factory=dict, repr=False)  # captured passes that write this cache
    n_states: int = 1  # recurrent-state slots per DeltaNet layer
    conv: list = field(default_factory=list)
    ssm: list = field(default_factory=list)
    state_pos: list = field(default_factory=list)  # per DeltaNet layer: the position each slot's state follows
    started: bool = False  # whether a pass from position 0 has run (forward refuses later positions before it)
    maker: object = field(default=None, repr=False, compare=False)  # the Transformer's tag (forward checks it)


@dataclass(eq=False)
class _CacheSlot:
    """Device storage of a KV cache and the passes captured for it; `owner` is the KVCache using it now."""

    cache: KVCache  # the storage, as the first cache that had it
    owner: object  # a weakref.ref to the KVCache using it now (dead while the slot is free)


class Transformer:
    """A model bound to a backend: weights uploaded once. Each cache carries the RoPE table for its own
    positions, so memory follows the positions used, not the context length the file claims."""

    def __init__(self, model: Model, backend, *, graphs: bool | None = None):
        """graphs: replay captured passes (CUDA graphs, refspec/gpu_graphs.py) for passes of up to 16 rows;
        None means yes where the backend offers them (backend.graphs_available)."""
        if not isinstance(model, Model) or not hasattr(backend, "upload_weights"):
            raise UsageError("Transformer(model, backend) takes a Model (refspec.load) and a backend (make_backend)")
        if graphs is not None:
            checks.flag("graphs", graphs)
        self.config = model.config
        self.metadata = model.metadata  # general.* and tokenizer.* keys: generate() finds the end-of-generation ids here
        self.be = backend
        if any(self.config.recurrent) and not hasattr(backend, "delta_rule"):
            raise DeviceError(f"the {backend.name} backend cannot run {self.config.arch}'s Gated DeltaNet layers yet")
        available = bool(getattr(backend, "graphs_available", False))
        if graphs and not available:
            raise UsageError(f"the {backend.name} backend cannot capture passes as graphs")
        self.weights = backend.upload_weights(model.weights)
        self.graphs = None
        self._cache_pool: list[_CacheSlot] = []
        self._cache_tag = object()  # in every cache new_cache makes: forward refuses another Transformer's cache
        if available if graphs is None else graphs:
            from refspec.gpu_graphs import PassGraphs

            self.graphs = PassGraphs(self)

    CACHE_POOL = 4  # cache storages kept for reuse with graphs (each with its captured passes)
    CACHE_ROUND = 256  # with graphs, cache storage comes in multiples of this many positions (see new_cache)

    def new_cache(self, n_pos: int | None = None, n_states: int = 1) -> KVCache:
        """A zeroed KV cache and the RoPE table for positions 0 .. n_pos-1 (at most the model's context
        length), for every block (nextn blocks included). With graphs, the storage of a cache of the same
        size that nobody holds any more is reused, with the passes captured for it: a decoding loop that makes
        a new cache per request records its graphs once. Storage sizes are rounded up to CACHE_ROUND
        positions so that requests of similar lengths share it (the cache still ends at n_pos: forward
        refuses positions past it). n_states: recurrent-state slots of each Gated DeltaNet layer, at least
        the rows of any pass a decoder may resume inside of, and at most n_pos + 1 (n_pos slots hold the
        state after every position already: more would be memory that holds nothing)."""
        n_pos = None if n_pos is None else checks.integer("n_pos", n_pos, 1)
        cfg = self.config
        n_pos = cfg.n_ctx if n_pos is None else min(n_pos, cfg.n_ctx)
        n_states = checks.integer("n_states", n_states)
        if not 1 <= n_states <= n_pos + 1:
            raise UsageError(f"n_states is {n_states}, must be in 1..{n_pos + 1}: recurrent-state slots of a cache of "
                             f"{n_pos} positions ({n_pos} hold the state after every position)")
        if self.graphs is None:
            return self._new_cache(n_pos, n_states)
        size = min(cfg.n_ctx, -(-n_pos // self.CACHE_ROUND) * self.CACHE_ROUND)  # positions of the storage
        for slot in self._cache_pool:
            if (slot.cache.n_pos, slot.cache.n_states) == (size, n_states) and slot.owner() is None:
                for a in slot.cache.k + slot.cache.v + slot.cache.conv + slot.cache.ssm:
                    if a is not None:  # (a DeltaNet layer has no K, V; an attention layer no rings)
                        a.fill(0)
                self._cache_pool.remove(slot)  # to the end: the pool drops the least recently used first
                break
        else:
            free = [s for s in self._cache_pool if s.owner() is None]
            if len(self._cache_pool) >= self.CACHE_POOL and free:
                self._cache_pool.remove(free[0])
            slot = _CacheSlot(self._new_cache(size, n_states), lambda: None)
        c = slot.cache
        cache = KVCache(c.k, c.v, n_pos, c.rope_cos, c.rope_sin, c.graphs, c.n_states, c.conv, c.ssm,
                        [None if held is None else [None] * n_states for held in c.state_pos], maker=self._cache_tag)
        slot.owner = weakref.ref(cache)
        self._cache_pool.append(slot)
        return cache

    def _new_cache(self, n_pos: int, n_states: int = 1) -> KVCache:
        cfg, be = self.config, self.be
        shape = (cfg.n_head_kv, n_pos, cfg.head_dim)
        cos, sin = rope_table(n_pos, cfg.n_rot, cfg.rope_base, cfg.rope_scaling)  # [n_pos, n_rot/2] each
        blocks = range(cfg.n_block)
        conv_shape = (n_states, cfg.ssm_conv_dim, cfg.ssm_d_conv - 1)
        ssm_shape = (n_states, cfg.ssm_n_v_heads, cfg.ssm_d_state, cfg.ssm_d_state)
        return KVCache(
            k=[None if cfg.is_recurrent(i) else be.zeros(shape) for i in blocks],
            v=[None if cfg.is_recurrent(i) else be.zeros(shape) for i in blocks],
            n_pos=n_pos,
            rope_cos=be.asarray(cos),
            rope_sin=be.asarray(sin),
            n_states=n_states,
            conv=[be.zeros(conv_shape) if cfg.is_recurrent(i) else None for i in blocks],
            ssm=[be.zeros(ssm_shape) if cfg.is_recurrent(i) else None for i in blocks],
            state_pos=[[None] * n_states if cfg.is_recurrent(i) else None for i in blocks],
            maker=self._cache_tag,
        )

    def forward(self, cache: KVCache, ids, pos0: int, layers=None, taps=None, *, hidden: bool = False,
                mtp_from=None, argmax: bool = False):
        """Logits [R, V] for token ids [R] at positions pos0 .. pos0+R-1. `layers` picks a subset of the
        layers (in order) for drafting; None runs them all. `taps(name, tensor)`, when given, receives the
        intermediate tensors [R, ...] as the backend holds them, under llama.cpp's graph names (`attn_norm-3`,
        ..., `result_output`; refspec/golden.py lists them); the normed ones and the outputs that fused
        operations do not keep are recomputed. With graphs (GPU) and no taps, passes of up to
        graphs.max_rows rows replay a captured `run`; their logits stay valid until the next pass of the same
        width on the same cache (copy them to keep them longer).

        hidden=True also returns the final-normed hidden rows [R, E] the LM head read: (logits, hidden).
        mtp_from (qwen35 with a nextn block): run the MTP block instead of the model: row r's input is
        token ids[r] with the hidden row mtp_from[r] of the position before (see `mtp_input`); only the last
        row goes through the head, so it returns (logits [1, V], hidden [1, E]) of that row. Both kinds of
        pass replay graphs too; the hidden rows returned are the caller's to keep.

        argmax=True also returns each row's argmax as be.argmax_rows gives it, on the host, after the pass:
        (out, (ids, finite)), `out` being what the call returns without it. A captured pass computes it in
        its graph and brings it back in one small transfer, so a decoder reads its tokens with no launch.

        A pass at pos0 > 0 on a cache that has not run a pass from position 0 raises UsageError: its rows would
        attend to keys and values nobody wrote (the cache is zeros there). Later gaps are the caller's to avoid.

        DeltaNet layers (qwen35) read the state after pos0-1 from the cache's ring: a pass whose state is no
        longer held raises UsageError before anything runs (check_states)."""
        cfg = self.config
        if not isinstance(cache, KVCache):
            raise UsageError(f"cache must be a KVCache from new_cache(), not {type(cache).__name__}")
        if cache.maker is not self._cache_tag:
            raise UsageError("this cache was made by another Transformer's new_cache(): its shapes, device and "
                             "captured passes belong to that one; make one with this Transformer's new_cache()")
        ids = checks.token_ids("ids", ids, cfg.n_vocab, ordered=True)  # integers (not floats, bools) in the vocabulary
        pos0 = checks.integer("pos0", pos0, 0)  # a negative position would index from the end
        layers = None if layers is None else checks.layer_subset(layers, cfg.n_layer)
        checks.callback("taps", taps)
        checks.flag("argmax", argmax)
        checks.flag("hidden", hidden)
        rows = len(ids)
        if pos0 + rows > cache.n_pos:
            raise ContextLengthError(
                f"positions {pos0}..{pos0 + rows - 1} exceed the context of {cache.n_pos} positions"
            )
        if mtp_from is not None and self.weights.mtp is None:
            raise UsageError("the model has no MTP (nextn) block")
        if mtp_from is not None and tuple(getattr(mtp_from, "shape", ())) != (rows, cfg.n_embd):
            raise UsageError(f"mtp_from must be the hidden rows [{rows}, {cfg.n_embd}] before the ids, "
                             f"not {getattr(mtp_from, 'shape', type(mtp_from).__name__)}")
        recurrent = self.recurrent_layers(layers, mtp_from is not None)
        check_states(cache, recurrent, pos0)  # on the host, before the pass: a captured pass cannot raise
        if pos0 > 0 and not cache.started:  # its rows would attend to keys and values nobody wrote
            raise UsageError(f"positions 0..{pos0 - 1} of this cache never ran: run the tokens before position "
                             f"{pos0} first, from position 0")
        if self.graphs is not None and rows <= self.graphs.max_rows and not taps:
            out = self.graphs.replay(cache, ids, pos0, layers, hidden=hidden, mtp_from=mtp_from, argmax=argmax)
        else:
            ids, pos = self.be.pass_input(ids, pos0)
            out = self.run(cache, ids, pos, rows, layers, taps, hidden=hidden, mtp_from=mtp_from)
            if argmax:
                out = out, self.be.argmax_rows(out[0] if isinstance(out, tuple) else out)
        note_states(cache, recurrent, pos0, rows)
        cache.started = True
        return out

    def recurrent_layers(self, layers=None, mtp: bool = False) -> list[int]:
        """The DeltaNet layers a pass over `layers` (None: all; mtp: the MTP block instead) runs."""
        cfg = self.config
        run = range(cfg.n_layer, cfg.n_block) if mtp else range(cfg.n_layer) if layers is None else layers
        return [i for i in run if cfg.is_recurrent(i)]

    def run(self, cache: KVCache, ids, pos, rows: int, layers=None, taps=None, *, hidden=False, mtp_from=None):
        """The pass itself, on token ids and a first position as be.pass_input gives them (on a GPU both in
        device memory, so that a captured run serves every position: the DeltaNet kernels find their state
        slots from it too). It checks nothing: forward() does, and keeps the state bookkeeping."""
        cfg, be, w = self.config, self.be, self.weights
        eps = cfg.rms_eps
        if mtp_from is None:
            x = be.embed(w.tok_embd, ids)  # [R] -> [R, E]
        else:
            x = self.mtp_input(ids, mtp_from)  # [R], [R, E] -> [R, E]
            layers = range(cfg.n_layer, cfg.n_block)
        for i in range(cfg.n_layer) if layers is None else layers:
            lw = w.layers[i]
            if taps:
                taps(f"attn_norm-{i}", be.rmsnorm(x, lw.attn_norm, eps))
            if cfg.is_recurrent(i):  # qwen35: a Gated DeltaNet block instead of attention
                oq, od = self.deltanet(cache, i, x, pos, taps)  # [R, E] -> int8 [R, Hv*Dv], f16
                if taps:
                    taps(f"attn_out-{i}", be.q8_gemv(lw.ssm_out, oq, od))
                x = be.q8_gemv_add(x, lw.ssm_out, oq, od)  # x + ssm_out @ o: [R, Hv*Dv] -> [R, E]
                if taps:
                    _tap(taps, i, ffn_inp=x, ffn_norm=be.rmsnorm(x, lw.ffn_norm, eps))
            else:
                # attention block
                hq, hd = be.rmsnorm_q8(x, lw.attn_norm, eps)  # [R, E] -> int8 [R, E], f16 [R, E/32]
                if cfg.has_qkv_bias:  # qwen2: q + bq, k + bk, v + bv
                    q, k, v = be.q8_gemv_many_bias((lw.wq, lw.wk, lw.wv), (lw.bq, lw.bk, lw.bv), hq, hd)
                else:
                    q, k, v = be.q8_gemv_many((lw.wq, lw.wk, lw.wv), hq, hd)  # -> [R, H*D], [R, G*D], [R, G*D]
                if cfg.has_attn_gate:  # qwen35: each head's query is followed by its output gate
                    q, gate = be.split_query_gate(q, cfg.n_head, cfg.head_dim)  # [R, 2*H*D] -> [R, H, D] x 2
                q = q.reshape(rows, cfg.n_head, cfg.head_dim)  # [R, H*D] -> [R, H, D]
                k = k.reshape(rows, cfg.n_head_kv, cfg.head_dim)  # [R, G*D] -> [R, G, D]
                v = v.reshape(rows, cfg.n_head_kv, cfg.head_dim)  # [R, G*D] -> [R, G, D]
                if cfg.has_qk_norm:
                    q = be.rmsnorm(q, lw.q_norm, eps)  # per head, over D
                    k = be.rmsnorm(k, lw.k_norm, eps)
                # q and k rotated; cache[:, pos:pos+R, :] = rotated k, v
                q = be.rope_kv(q, k, v, cache.k[i], cache.v[i], pos, cache.rope_cos, cache.rope_sin, cfg.rope_neox)
                if cfg.has_attn_gate:  # a * sigmoid(gate), quantized: [R, H, D] -> int8 [R, H*D], f16
                    aq, ad = be.sigmoid_gate_q8(be.attention(q, cache.k[i], cache.v[i], pos), gate)
                else:
                    aq, ad = be.attention_q8(q, cache.k[i], cache.v[i], pos)  # [R, H, D] -> int8 [R, H*D], f16
                x = be.q8_gemv_add(x, lw.wo, aq, ad)  # x + wo @ a: [R, H*D] -> [R, E]
                if taps:
                    a = be.attention(q, cache.k[i], cache.v[i], pos)  # [R, H, D], as attention_q8 computed it
                    if cfg.has_attn_gate:
                        a = be.sigmoid_gate(a, gate)
                    _tap(taps, i, kqv_out=a.reshape(rows, cfg.n_q), attn_out=be.q8_gemv(lw.wo, aq, ad), ffn_inp=x,
                         ffn_norm=be.rmsnorm(x, lw.ffn_norm, eps))
            # feed-forward block
            hq, hd = be.rmsnorm_q8(x, lw.ffn_norm, eps)  # [R, E]
            gate, up = be.q8_gemv_many((lw.w_gate, lw.w_up), hq, hd)  # -> [R, F], [R, F]
            mq, md = be.silu_mul_q8(gate, up)  # silu(gate) * up, quantized: [R, F]
            x = be.q8_gemv_add(x, lw.w_down, mq, md)  # x + w_down @ m: [R, F] -> [R, E]
            if taps:
                _tap(taps, i, ffn_out=be.q8_gemv(lw.w_down, mq, md), l_out=x)
        norm, head = (w.output_norm, w.output) if mtp_from is None else (w.mtp.head_norm, w.mtp.head)
        if mtp_from is not None:
            x = x[-1:]  # only the last row drafts a token  # [R, E] -> [1, E]
        keep = hidden or mtp_from is not None
        if keep:
            h = be.rmsnorm(x, norm, eps)  # [R, E]: the same bits as inside rmsnorm_q8
            hq, hd = be.quantize_q8(h)
        else:
            hq, hd = be.rmsnorm_q8(x, norm, eps)  # [R, E]
        logits = be.q8_gemv(head, hq, hd)  # [R, E] -> [R, V]
        if taps:
            _tap(taps, None, result_norm=be.rmsnorm(x, norm, eps), result_output=logits)
        return (logits, h) if keep else logits

    def deltanet(self, cache: KVCache, i: int, x, pos, taps=None):
        """The Gated DeltaNet block of layer i (qwen35) over rows at positions pos..: its gated-normed output
        [R, Hv*Dv], quantized for the output projection (which `run` fuses with the residual add, as for
        attention). SPEC.md, "Hybrid models (qwen35)", gives each op. `taps` receives the gated-normed output
        as kqv_out-i (the input of the output projection, as in attention)."""
        cfg, be, lw = self.config, self.be, self.weights.layers[i]
        rows, heads, dim, n_k = x.shape[0], cfg.ssm_n_v_heads, cfg.ssm_d_state, cfg.ssm_n_k_heads
        eps = cfg.rms_eps
        hq, hd = be.rmsnorm_q8(x, lw.attn_norm, eps)  # [R, E]
        qkv, z, b, a = be.q8_gemv_many((lw.w_qkv, lw.w_z, lw.w_beta, lw.w_alpha), hq, hd)
        # -> [R, 2*Hk*Dk + Hv*Dv], [R, Hv*Dv], [R, Hv], [R, Hv]
        # the state before pos from its ring slot, each row's state into its own (spec.ring_slots)
        qkv = be.conv1d_silu(qkv, lw.ssm_conv1d, cache.conv[i], pos)  # silu(conv1d(qkv)): [R, conv_dim]
        # the conv's channels are every head's q, then k, then v: q and k heads normed together (per head)
        qk = be.l2norm(qkv[:, : 2 * cfg.ssm_key_dim].reshape(rows, 2 * n_k, dim), eps)  # [R, 2*Hk, Dk]
        q, k = qk[:, :n_k], qk[:, n_k:]  # [R, Hk, Dk] each
        v = qkv[:, 2 * cfg.ssm_key_dim :].reshape(rows, heads, dim)  # [R, Hv, Dv]
        # decay = exp(softplus(a + dt) * A), beta = sigmoid(b), then the delta rule
        o = be.gated_delta_rule(q, k, v, a, b, lw.ssm_dt, lw.ssm_a, cache.ssm[i], pos)  # [R, Hv, Dv]
        z = z.reshape(rows, heads, dim)
        if taps:
            _tap(taps, i, kqv_out=be.gated_rmsnorm(o, lw.ssm_norm, z, eps).reshape(rows, heads * dim))
        return be.gated_rmsnorm_q8(o, lw.ssm_norm, z, eps)  # gated RMSNorm, quantized: [R, Hv*Dv]

    def mtp_input(self, ids, hidden):
        """The MTP block's input: eh_proj(concat(RMSNorm(embed(t)), RMSNorm(h))) [R, E], where token t sits
        at position p and h is the model's final-normed hidden row of position p-1 (zeros for p = 0)."""
        cfg, be, m = self.config, self.be, self.weights.mtp
        if m is None:
            raise UsageError("the model has no MTP (nextn) block")
        e = be.rmsnorm(be.embed(m.embed, ids), m.enorm, cfg.rms_eps)  # [R] -> [R, E]
        h = be.rmsnorm(hidden, m.hnorm, cfg.rms_eps)  # [R, E]
        xq, xd = be.quantize_q8(be.concat(e, h))  # [R, 2E]
        return be.q8_gemv(m.eh_proj, xq, xd)  # [R, 2E] -> [R, E]


def check_states(cache: KVCache, layers, pos0: int) -> None:
    """Raises UsageError unless each of these DeltaNet layers holds the state after position pos0-1 (the
    state a pass from pos0 continues): a pass ran more than n_states rows past it, or the positions before
    pos0 were never run (in these layers)."""
    if pos0 == 0:
        return  # the state before position 0 is zeros
    slot = (pos0 - 1) % cache.n_states  # spec.ring_slots
    for i in layers:
        held = cache.state_pos[i][slot]
        if held != pos0 - 1:
            raise UsageError(f"layer {i}: the recurrent state after position {pos0 - 1} is no longer held "
                             f"(the cache keeps {cache.n_states} states; slot holds {held})")


def note_states(cache: KVCache, layers, pos0: int, rows: int) -> None:
    """Record that a pass over positions pos0 .. pos0+rows-1 left each row's state in its slot of these
    layers' rings (the last n_states rows survive)."""
    n = cache.n_states
    for i in layers:
        for p in range(pos0 + max(0, rows - n), pos0 + rows):
            cache.state_pos[i][p % n] = p


def _tap(taps, layer: int | None, **tensors) -> None:
    """Hand tensors to `taps` under llama.cpp's names: `{name}-{layer}` inside a layer, `name` after them."""
    for name, tensor in tensors.items():
        taps(name if layer is None else f"{name}-{layer}", tensor)
