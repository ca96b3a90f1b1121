"""Greedy decoding: the plain loop that speculative decoding (refspec/speculative.py) must reproduce."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from refspec import checks
from refspec.errors import ContextLengthError, UsageError
from refspec.forward import KVCache, Transformer
from refspec.spec import token_of

PROMPT_CHUNK = 64  # prompt rows per forward pass; any size gives the same bits (batch invariance)


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # generated ids, an end-of-generation id included
    logits: list[np.ndarray] = field(default_factory=list)  # the row of logits that chose each id
    stats: dict = field(default_factory=dict)
    stop_reason: str = ""  # "eog", "max_tokens" or "context"


def plan_context(tf: Transformer, n_prompt: int, n_predict: int) -> tuple[int, int]:
    """Check the request against the context length; return (positions to allocate, tokens to generate).
    n_predict = -1 means: until an end-of-generation token or the context is full."""
    n_predict = checks.n_predict(n_predict)
    n_ctx = tf.config.n_ctx
    if n_prompt == 0:
        raise UsageError("the prompt is empty: give at least one token")
    if n_prompt >= n_ctx:
        raise ContextLengthError(f"the prompt has {n_prompt} tokens; the model's context holds {n_ctx}")
    if n_predict < 0:
        return n_ctx, n_ctx - n_prompt
    if n_prompt + n_predict > n_ctx:
        raise ContextLengthError(
            f"{n_prompt} prompt tokens + {n_predict} new tokens exceed the context length {n_ctx}; "
            f"ask for at most {n_ctx - n_prompt} new tokens"
        )
    return n_prompt + n_predict, n_predict


def model_eog_ids(tf: Transformer) -> frozenset[int]:
    """The ids that end generation for this model, by llama.cpp's rules (empty when the file has no vocabulary)."""
    from refspec.tokenizer import end_of_generation_ids

    return end_of_generation_ids(tf.metadata)


def prefill(tf: Transformer, cache: KVCache, prompt_ids: list[int], chunk: int = PROMPT_CHUNK, on_hidden=None,
            on_prompt=None):
    """Run the prompt through the model in chunks; return the logits of its last position, [1, V], where
    the backend keeps them. on_hidden(pos0, hidden), if given, receives each chunk's final-normed hidden
    rows (the MTP drafter reads them); on_prompt(done, total) the prompt tokens run after each chunk (on a
    GPU, queued: the passes run asynchronously)."""
    logits = None
    for start in range(0, len(prompt_ids), chunk):
        if on_hidden is None:
            logits = tf.forward(cache, prompt_ids[start : start + chunk], start)
        else:
            logits, hidden = tf.forward(cache, prompt_ids[start : start + chunk], start, hidden=True)
            on_hidden(start, hidden)
        if on_prompt is not None:
            on_prompt(min(start + chunk, len(prompt_ids)), len(prompt_ids))
    return logits[-1:]


def generate(
    tf: Transformer,
    prompt_ids: list[int],
    n_predict: int,
    *,
    eog_ids=None,
    on_token=None,
    keep_logits: bool = False,
    on_prompt=None,
) -> GenerationResult:
    """Greedy decoding: each new token is the argmax (lowest index on ties) of the logits of the last one.
    Generation stops after an end-of-generation id (``eog_ids``; None, the default: the model's own, as its
    tokenizer metadata names them; ``()`` never stops early), after ``n_predict`` tokens (-1: none), or when
    the context is full. `on_token(id)` is called as each token is chosen (for streaming), `on_prompt(done,
    total)` after each chunk of the prompt's pass (for progress on long prompts)."""
    prompt_ids = check_request(tf, prompt_ids, on_token, keep_logits, on_prompt)
    with quiet_numerics():
        return _generate(tf, prompt_ids, n_predict, eog_ids, on_token, keep_logits, on_prompt)


def check_request(tf: Transformer, prompt_ids, on_token, keep_logits, on_prompt=None) -> list[int]:
    """The arguments both decoding loops share, checked; returns the prompt as a list of ints."""
    if not isinstance(tf, Transformer):
        raise UsageError(f"tf must be a refspec.forward.Transformer, not {type(tf).__name__}")
    checks.callback("on_token", on_token)
    checks.callback("on_prompt", on_prompt)
    checks.flag("keep_logits", keep_logits)
    return checks.token_ids("prompt_ids", prompt_ids, tf.config.n_vocab, allow_empty=True, ordered=True)


def checked_eog_ids(tf: Transformer, eog_ids) -> frozenset[int]:
    return frozenset(checks.token_ids("eog_ids", eog_ids, tf.config.n_vocab, allow_empty=True))


def quiet_numerics():
    """NaN or infinity in the logits ends decoding with one NumericsError (spec.token_of); the NumPy
    RuntimeWarnings printed on the way there (overflow in a GEMV, invalid value in a norm) would only add
    lines before it."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")


def _generate(tf, prompt_ids, n_predict, eog_ids, on_token, keep_logits, on_prompt) -> GenerationResult:
    eog_ids = model_eog_ids(tf) if eog_ids is None else checked_eog_ids(tf, eog_ids)
    n_alloc, budget = plan_context(tf, len(prompt_ids), n_predict)
    result = GenerationResult(prompt_ids=list(prompt_ids))
    cache = tf.new_cache(n_alloc, n_states=2)  # (qwen35) a step's state slot is not the one it reads: no copy
    t0 = time.perf_counter()
    rows = prefill(tf, cache, result.prompt_ids, on_prompt=on_prompt)  # [1, V]
    tf.be.synchronize()  # the prompt's passes run asynchronously on a GPU: their time is the prompt's
    t1 = time.perf_counter()
    n_passes = 0
    chained = tf.graphs is not None and not keep_logits
    steps = None  # with graphs: the steps after the first, queued one ahead (PassGraphs.greedy_steps)
    chosen = tf.be.argmax_rows(rows)
    try:
        while True:
            token = token_of(*chosen, 0)
            result.ids.append(token)
            if keep_logits:
                result.logits.append(tf.be.to_host(rows[0]))
            if on_token is not None:
                on_token(token)
            if token in eog_ids:
                result.stop_reason = "eog"
                break
            if len(result.ids) >= budget:
                result.stop_reason = "max_tokens" if n_predict >= 0 else "context"
                break
            pos = len(result.prompt_ids) + len(result.ids) - 1
            if chained:
                if steps is None:
                    steps = tf.graphs.greedy_steps(cache, token, pos, budget - len(result.ids), eog_ids)
                chosen = next(steps)
            else:
                rows = tf.forward(cache, [token], pos)  # [1, V]
                chosen = tf.be.argmax_rows(rows)
            n_passes += 1
    finally:
        if steps is not None:
            steps.close()  # waits for a step queued past the last token kept
    t2 = time.perf_counter()
    result.stats = decode_stats(len(result.prompt_ids), len(result.ids), n_passes, t1 - t0, t2 - t1)
    return result


def decode_stats(n_prompt: int, n_tokens: int, n_passes: int, t_prompt: float, t_decode: float) -> dict:
    """The statistics every decoding loop reports. The first token comes from the prompt's pass; tokens per
    second count the tokens after it over the time from the end of the prompt to the last token."""
    return {
        "n_prompt_tokens": n_prompt,
        "n_tokens": n_tokens,
        "n_passes": n_passes,
        "prompt_seconds": round(t_prompt, 6),
        "decode_seconds": round(t_decode, 6),
        "prompt_tokens_per_second": round(n_prompt / t_prompt, 3) if t_prompt > 0 else None,
        "tokens_per_second": round((n_tokens - 1) / t_decode, 3) if n_tokens > 1 and t_decode > 0 else None,
    }
