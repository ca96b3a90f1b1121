"""The transformer forward pass: one readable module for every backend and architecture.

`forward` takes R token ids at consecutive positions pos0 .. pos0+R-1 and returns R rows of logits. Prompt
chunks, single decoding steps and speculative verification all come through here. The operations (`be.*`)
are those of refspec/spec.py; a backend (refspec/backends.py) runs them on the CPU or the GPU and must give
the same bits. Shape comments use R rows, H query heads, G kv heads, D head dim, E embedding, F ffn, V vocab.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from refspec.errors import ContextLengthError, UsageError
from refspec.model import Model
from refspec.spec import rope_table


@dataclass
class KVCache:
    """Keys and values of every layer, indexed by absolute position: k[i], v[i] are [G, n_pos, D], and the
    RoPE table for those positions: rope_cos, rope_sin [n_pos, n_rot/2]. Rows written for positions that are
    later rejected are simply overwritten by the next pass."""

    k: list
    v: list
    n_pos: int  # positions the cache holds
    rope_cos: object  # [n_pos, n_rot/2] on the backend (spec.rope_table)
    rope_sin: object
    graphs: dict = field(default_factory=dict, repr=False)  # captured passes that write this cache


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
        self.config = model.config
        self.metadata = model.metadata  # general.* and tokenizer.* keys: generate() finds the end-of-generation ids here
        self.be = backend
        available = bool(getattr(backend, "graphs_available", False))
        if graphs and not available:
            raise UsageError(f"the {backend.name} backend cannot capture passes as graphs")
        self.weights = backend.upload_weights(model.weights)
        self.graphs = None
        self._cache_pool: list[_CacheSlot] = []
        if available if graphs is None else graphs:
            from refspec.gpu_graphs import PassGraphs

            self.graphs = PassGraphs(self)

    CACHE_POOL = 4  # cache storages kept for reuse with graphs (each with its captured passes)

    def new_cache(self, n_pos: int | None = None) -> KVCache:
        """A zeroed KV cache and the RoPE table for positions 0 .. n_pos-1 (at most the model's context
        length). With graphs, the storage of a cache of the same size that nobody holds any more is reused,
        with the passes captured for it: a decoding loop that makes a new cache per request records its
        graphs once."""
        cfg = self.config
        n_pos = cfg.n_ctx if n_pos is None else min(n_pos, cfg.n_ctx)
        if self.graphs is None:
            return self._new_cache(n_pos)
        for slot in self._cache_pool:
            if slot.cache.n_pos == n_pos and slot.owner() is None:
                for a in slot.cache.k + slot.cache.v:
                    a.fill(0)
                self._cache_pool.remove(slot)  # to the end: the pool drops the least recently used first
                break
        else:
            free = [s for s in self._cache_pool if s.owner() is None]
            if len(self._cache_pool) >= self.CACHE_POOL and free:
                self._cache_pool.remove(free[0])
            slot = _CacheSlot(self._new_cache(n_pos), lambda: None)
        c = slot.cache
        cache = KVCache(c.k, c.v, c.n_pos, c.rope_cos, c.rope_sin, c.graphs)
        slot.owner = weakref.ref(cache)
        self._cache_pool.append(slot)
        return cache

    def _new_cache(self, n_pos: int) -> KVCache:
        cfg = self.config
        shape = (cfg.n_head_kv, n_pos, cfg.head_dim)
        cos, sin = rope_table(n_pos, cfg.n_rot, cfg.rope_base, cfg.rope_scaling)  # [n_pos, n_rot/2] each
        return KVCache(
            k=[self.be.zeros(shape) for _ in range(cfg.n_layer)],
            v=[self.be.zeros(shape) for _ in range(cfg.n_layer)],
            n_pos=n_pos,
            rope_cos=self.be.asarray(cos),
            rope_sin=self.be.asarray(sin),
        )

    def forward(self, cache: KVCache, ids, pos0: int, layers=None, taps=None):
        """Logits [R, V] for token ids [R] at positions pos0 .. pos0+R-1. `layers` picks a subset of the
        layers (in order) for drafting; None runs them all. `taps(name, tensor)`, when given, receives the
        intermediate tensors [R, ...] as the backend holds them, under llama.cpp's graph names (`attn_norm-3`,
        ..., `result_output`; refspec/golden.py lists them); the normed ones and the outputs that fused
        operations do not keep are recomputed. With graphs (GPU) and no taps, passes of up to
        graphs.max_rows rows replay a captured `run`; their logits stay valid until the next pass of the same
        width on the same cache (copy them to keep them longer)."""
        cfg = self.config
        rows = len(ids)
        if rows == 0 or any(not 0 <= int(t) < cfg.n_vocab for t in ids):
            raise UsageError(f"token ids must be 1 or more integers in 0..{cfg.n_vocab - 1}, got {list(ids)[:8]}")
        if pos0 + rows > cache.n_pos:
            raise ContextLengthError(
                f"positions {pos0}..{pos0 + rows - 1} exceed the context of {cache.n_pos} positions"
            )
        if self.graphs is not None and rows <= self.graphs.max_rows and not taps:
            return self.graphs.replay(cache, ids, pos0, layers)
        ids, pos = self.be.pass_input(ids, pos0)
        return self.run(cache, ids, pos, rows, layers, taps)

    def run(self, cache: KVCache, ids, pos, rows: int, layers=None, taps=None):
        """The pass itself, on token ids and a first position as be.pass_input gives them (on a GPU both in
        device memory, so that a captured run serves every position)."""
        cfg, be, w = self.config, self.be, self.weights
        eps = cfg.rms_eps
        x = be.embed(w.tok_embd, ids)  # [R] -> [R, E]
        for i in range(cfg.n_layer) if layers is None else layers:
            lw = w.layers[i]
            if taps:
                taps(f"attn_norm-{i}", be.rmsnorm(x, lw.attn_norm, eps))
            # attention block
            hq, hd = be.rmsnorm_q8(x, lw.attn_norm, eps)  # [R, E] -> int8 [R, E], f16 [R, E/32]
            q, k, v = be.q8_gemv_many((lw.wq, lw.wk, lw.wv), hq, hd)  # -> [R, H*D], [R, G*D], [R, G*D]
            if cfg.has_qkv_bias:
                q, k, v = be.add(q, lw.bq), be.add(k, lw.bk), be.add(v, lw.bv)
            q = q.reshape(rows, cfg.n_head, cfg.head_dim)  # [R, H*D] -> [R, H, D]
            k = k.reshape(rows, cfg.n_head_kv, cfg.head_dim)  # [R, G*D] -> [R, G, D]
            v = v.reshape(rows, cfg.n_head_kv, cfg.head_dim)  # [R, G*D] -> [R, G, D]
            if cfg.has_qk_norm:
                q = be.rmsnorm(q, lw.q_norm, eps)  # per head, over D
                k = be.rmsnorm(k, lw.k_norm, eps)
            # q and k rotated; cache[:, pos:pos+R, :] = rotated k, v
            q = be.rope_kv(q, k, v, cache.k[i], cache.v[i], pos, cache.rope_cos, cache.rope_sin, cfg.rope_neox)
            aq, ad = be.attention_q8(q, cache.k[i], cache.v[i], pos)  # [R, H, D] -> int8 [R, H*D], f16
            x = be.q8_gemv_add(x, lw.wo, aq, ad)  # x + wo @ a: [R, H*D] -> [R, E]
            if taps:
                a = be.attention(q, cache.k[i], cache.v[i], pos)  # [R, H, D], as attention_q8 computed it
                _tap(taps, i, kqv_out=a.reshape(rows, cfg.n_q), attn_out=be.q8_gemv(lw.wo, aq, ad), ffn_inp=x,
                     ffn_norm=be.rmsnorm(x, lw.ffn_norm, eps))
            # feed-forward block
            hq, hd = be.rmsnorm_q8(x, lw.ffn_norm, eps)  # [R, E]
            gate, up = be.q8_gemv_many((lw.w_gate, lw.w_up), hq, hd)  # -> [R, F], [R, F]
            mq, md = be.silu_mul_q8(gate, up)  # silu(gate) * up, quantized: [R, F]
            x = be.q8_gemv_add(x, lw.w_down, mq, md)  # x + w_down @ m: [R, F] -> [R, E]
            if taps:
                _tap(taps, i, ffn_out=be.q8_gemv(lw.w_down, mq, md), l_out=x)
        hq, hd = be.rmsnorm_q8(x, w.output_norm, eps)  # [R, E]
        logits = be.q8_gemv(w.output, hq, hd)  # [R, E] -> [R, V]
        if taps:
            _tap(taps, None, result_norm=be.rmsnorm(x, w.output_norm, eps), result_output=logits)
        return logits


def _tap(taps, layer: int | None, **tensors) -> None:
    """Hand tensors to `taps` under llama.cpp's names: `{name}-{layer}` inside a layer, `name` after them."""
    for name, tensor in tensors.items():
        taps(name if layer is None else f"{name}-{layer}", tensor)
