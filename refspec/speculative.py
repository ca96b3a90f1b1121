"""Self-speculative decoding whose output is bitwise the output of greedy decoding (refspec/generate.py).

A drafter guesses the next few tokens cheaply; one forward pass over the last token and the k guesses (k+1
rows at positions pos .. pos+k) checks them all at once. Because every operation of refspec/spec.py gives a
row the same bits however many rows share its pass (batch invariance), row j of that pass is bitwise the row
greedy decoding computes after the same tokens: accepting a guess exactly when it equals that row's argmax
reproduces greedy token for token and logit for logit, whatever the drafter proposes.

Drafters here load no second model:
  * ``NoDrafter`` ('none'): proposes nothing, so every pass has one row: plain greedy decoding.
  * ``NgramDrafter`` ('ngram'): prompt lookup: what followed an earlier occurrence of the context's trailing
    n-gram (of those followed by its most common next token, the first). Strong when the answer copies from
    the input (editing code, rewriting a list).
  * ``LayerSkipDrafter`` ('layerskip'): the model's own layers less a third in the middle, then its final
    norm and head.
  * ``MtpDrafter`` ('mtp'): the model's own multi-token-prediction block (qwen35 files with a nextn block),
    applied recursively.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence, Set

import numpy as np

from refspec import checks
from refspec.errors import UsageError
from refspec.forward import KVCache, Transformer
from refspec.generate import (GenerationResult, check_request, checked_eog_ids, decode_stats, model_eog_ids,
                              plan_context, prefill, quiet_numerics)
from refspec.spec import token_of

DRAFTERS = ("none", "ngram", "layerskip", "mtp")
MAX_DRAFT = 64  # most guesses per verify pass: a pass of k+1 rows holds k+1 rows of logits
# Guesses per verify pass unless asked otherwise: a pass of 8 rows. On a GPU a GEMV of up to 8 rows costs
# one tile of the tensor-core kernel (9 rows take two): on the H200 the default model's `ngram` ran 1.60x
# greedy with 7 guesses against 1.52x with 8 (2026-12-01, commit aa68957; numbers of the kernels of then).
DRAFT_MAX = 7
# The longest n-gram NgramDrafter indexes: each new token indexes max_n n-grams, tuples of up to max_n ids, so
# its index grows as max_n squared per token (the GPU's step, kernels_raw/ngram.hip, takes n-grams of up to 8).
NGRAM_MAX_N = 64


# ------------------------------------------------------------------------------------------------ drafters
class Drafter:
    """What `speculative_generate` asks of a drafter. Correctness never depends on the drafter: a drafter
    that proposes nonsense only makes decoding slower."""

    name = "drafter"
    cheap = True  # guesses cost next to nothing (no model pass): on a GPU, guess as many as allowed
    needs_hidden = False  # wants the model's final-normed hidden rows of every pass (`target_pass`)

    def begin(self, cache: KVCache) -> None:
        """Called once per generation with the cache the verify passes use (before the prompt runs)."""

    def target_pass(self, pos0: int, hidden) -> None:
        """With needs_hidden: the hidden rows [R, E] of a pass of the model over positions pos0..pos0+R-1
        (prompt chunks and verify passes, rejected rows included)."""

    def propose(self, context: list[int], k: int) -> list[int]:
        """Up to k guesses of the tokens that follow `context` (the prompt and every token emitted so far)."""
        raise NotImplementedError

    def accepted(self, n_proposed: int, n_accepted: int) -> None:
        """How many of the last proposal's tokens the verify pass accepted (a drafter may learn from it)."""


class NoDrafter(Drafter):
    """Proposes nothing: each pass verifies no guesses and yields one token, as greedy decoding does."""

    name = "none"

    def propose(self, context: list[int], k: int) -> list[int]:
        return []


class NgramDrafter(Drafter):
    """Prompt-lookup decoding: take the context's trailing n-gram, n from `max_n` down to `min_n`; of the tokens
    that followed its earlier occurrences take the most common (ties: the one that followed it first), and
    propose the k tokens that followed the n-gram where that token first followed it. A match of one token
    (n = 1) proposes at most `unigram_max` tokens.

    Why the first occurrence: an answer that copies from the prompt copies text that comes before every other
    occurrence; later ones are mostly in the answer itself, where it has already departed from the source (a
    renamed function, a reformatted line), or in the chat template. Why the cap: one matching token is weak
    evidence (replayed at 15 guesses on the eleven prompts below, 3 of 163 proposals from one had more than 7
    accepted), and every guess costs a row of the verify pass. Replayed offline on the default model's greedy outputs
    (tests/replay_ngram.py, each pass costed as measured on the H200), at 7 guesses a pass: the four copy
    prompts take 89 verify passes instead of 93 with the latest occurrence (2.27 tokens a pass instead of 2.17;
    1.88x greedy instead of 1.80x, drafting not counted), seven other chat prompts (three copying, four writing
    freely) 382 instead of 392; the best occurrence every pass, chosen in hindsight, would take 86. At 15
    guesses the cap gains 3.5 % on the copy prompts and 3.7 % on the others.

    The copy may run into the present (an LZ77-style overlapping copy): when the occurrence starts p < k
    tokens back, guesses beyond the end of the context repeat the guesses before them, so a run with
    period p keeps its period instead of being cut at p guesses.

    A proposal costs O(max_n + k), not a scan of the context: the drafter keeps an index, each n-gram to its
    proposal (the start of the first occurrence of its most common next token, that token, and how often it
    followed) and each other (n-gram, next token) pair to its count and first start, and extends it with the
    tokens a context has beyond the last one it saw (a context that does not extend it is indexed afresh). A
    next token whose count passes the proposal's, or equals it having followed the n-gram first, becomes the
    proposal. During decoding each context is the last one plus the tokens just accepted, so every token is
    indexed once."""

    name = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 1, unigram_max: int = 7):
        max_n = checks.integer("max_n", max_n, 1, NGRAM_MAX_N)
        min_n = checks.integer("min_n", min_n, 1)
        if min_n > max_n:
            raise UsageError(f"n-gram sizes must satisfy 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.unigram_max = checks.integer("unigram_max", unigram_max, 0)
        self._ids: list[int] = []  # the context indexed so far
        self._best: dict[tuple, list[int]] = {}  # n-gram -> its proposal's [start, count, token]
        self._count: dict[tuple, tuple[int, int]] = {}  # (n-gram, another next token) -> (count, first start)

    def begin(self, cache: KVCache) -> None:
        self._ids, self._count, self._best = [], {}, {}

    def _index(self, context: list[int]) -> list[int]:
        """Bring the index up to `context`: every n-gram of context[:-1] (each followed by a token)."""
        if isinstance(context, (str, bytes)) or not isinstance(context, Sequence):
            raise UsageError(f"context must be a sequence of token ids, not {type(context).__name__}")
        ids, seen = self._ids, len(self._ids)
        fresh = len(context) < seen or context[:seen] != ids  # not a continuation of what was indexed
        if fresh:
            seen = 0
        # every new token is checked before the index changes: a refused context leaves it as it was
        new = [t if type(t) is int and t >= 0 else checks.integer(f"context[{i}]", t, 0)
               for i, t in enumerate(context[seen:], seen)]
        if fresh:
            ids, self._count, self._best = [], {}, {}
        ids.extend(new)
        self._ids = ids
        # n-grams ids[e-n:e], each followed by ids[e]; those with e <= seen - 1 are indexed already
        best, count, min_n, max_n = self._best, self._count, self.min_n, self.max_n
        for e in range(max(seen, 1), len(ids)):
            token, longest = ids[e], tuple(ids[max(0, e - max_n) : e])
            for n in range(min_n, len(longest) + 1):
                gram = longest[-n:]
                b = best.get(gram)
                if b is None:
                    best[gram] = [e - n, 1, token]
                elif b[2] == token:  # (most n-grams: seen once, or followed by one token)
                    b[1] += 1
                else:
                    c, start = count.get((gram, token), (0, e - n))
                    if c + 1 > b[1] or (c + 1 == b[1] and start < b[0]):  # it becomes the proposal
                        count[gram, b[2]] = b[1], b[0]
                        best[gram] = [start, c + 1, token]
                    else:
                        count[gram, token] = c + 1, start
        return ids

    def propose(self, context: list[int], k: int) -> list[int]:
        k = checked_k(k)
        ids = self._index(context)
        for n in range(min(self.max_n, len(ids) - 1), self.min_n - 1, -1):
            proposal = self._best.get(tuple(ids[len(ids) - n :]))
            if proposal is not None:
                k = min(k, self.unigram_max) if n == 1 else k
                start = proposal[0] + n
                copy = ids[start : start + k]  # what followed it, up to the present
                period = len(ids) - start
                while len(copy) < k:  # the copy overlaps its own guesses
                    copy.append(copy[-period])
                return copy
        return []


class LayerSkipDrafter(Drafter):
    """Drafts greedily with a subset of the model's own layers, then its final norm and LM head (the same
    weights: nothing extra is loaded). By default it skips the block of layers L//6 .. L//2-1 (a third of the
    model, just after its first sixth) and runs the rest in order; `layers` may name another subset.

    Why that subset: the last layers turn the hidden state into something the LM head can read, so an
    early exit guesses badly on a model not trained for it; the middle is the most redundant. Measured on
    SmolLM2-135M-Instruct (30 layers), four copy-heavy chat prompts, the share of first guesses greedy
    accepts (teacher-forced, 131-173 positions): first 15 layers 6 %, every other layer 5 %, first 24 42 %,
    layers 0-3 + 18-29 (16) 54 %, 0-5 + 18-29 (18) 62 %, 0-4 + 15-29 (20, the default) 79 %,
    0-6 + 15-29 (22) 82 %. A guess costs about |subset|/L of a one-row step.

    The drafter runs its rows in the verify pass's cache; why that is safe (for any subset):
      * positions before pos (the newest token's) hold the full model's keys and values in every layer; the
        drafter only reads them. It writes positions pos .. pos+k-1 (the newest token and its first k-1
        guesses) in the layers it runs. Layers before the first skipped one see exactly the full model's
        input, so what they write is bitwise the full model's for those tokens; later layers see a
        draft-quality input and write draft-quality keys and values;
      * the verify pass then writes positions pos .. pos+k in *every* layer, each layer's write coming before
        that layer's attention reads, so no verify row reads a drafter's write;
      * positions of rejected guesses are overwritten by a later pass before any row attends to them, as
        every pass writes its own positions first (the cache is indexed by absolute position: no rollback).
    """

    name = "layerskip"
    cheap = False  # each guess is a pass through most of the model

    def __init__(self, tf: Transformer, layers=None):
        check_transformer(tf, self.name)
        n_layer = tf.config.n_layer
        self.tf = tf
        if layers is None:
            skipped = range(n_layer // 6, n_layer // 2)
            layers = [i for i in range(n_layer) if i not in skipped]
        self.layers = checks.layer_subset(layers, n_layer)
        self.cache = None

    def begin(self, cache: KVCache) -> None:
        self.cache = cache

    def propose(self, context: list[int], k: int) -> list[int]:
        k = checked_k(k)
        pos, token = len(context) - 1, context[-1]  # the last token is not yet in the cache
        drafts = []
        for i in range(k):
            _, (ids, finite) = self.tf.forward(self.cache, [token], pos + i, layers=self.layers, argmax=True)
            if not finite[0]:  # a truncated model may overflow where the full one does not: stop guessing
                break
            token = int(ids[0])
            drafts.append(token)
        return drafts


class MtpDrafter(Drafter):
    """Drafts with the model's multi-token-prediction ("nextn") block: from the token t at position p and
    the model's final-normed hidden row h of position p-1, the block (eh_proj of the normed pair, one gated
    full-attention block with its own keys and values, the head norm and the LM head) predicts the token
    after t. Applied recursively, its own hidden row standing in for the model's, it guesses k tokens.

    Its keys and values live in the cache's nextn block, indexed by absolute position like the model's:
    position q holds what the block computed from (token q, the model's h of q-1). Before drafting from the
    newest token at p, it runs the positions it has not run with the model's true hidden rows (the accepted
    guesses of the last verify pass, or the whole prompt) together with p itself in one pass of the block; the
    recursive steps then write draft-quality entries at p+1.., which the next proposal overwrites from p'+1
    before anything reads them (each pass writes its positions before attending)."""

    name = "mtp"
    cheap = False  # each guess is a pass of one block and the LM head
    needs_hidden = True

    def __init__(self, tf: Transformer):
        check_transformer(tf, self.name)
        if tf.config.n_nextn == 0 or tf.weights.mtp is None:
            raise UsageError(f"the {tf.config.arch} model has no MTP (nextn) block, which --draft mtp needs")
        self.tf = tf
        self.cache, self.hidden, self.n_done = None, {}, 0

    def begin(self, cache: KVCache) -> None:
        self.cache, self.hidden, self.n_done = cache, {}, 0  # n_done: positions run with true inputs

    def target_pass(self, pos0: int, hidden) -> None:
        for r in range(hidden.shape[0]):
            self.hidden[pos0 + r] = hidden[r]

    def propose(self, context: list[int], k: int) -> list[int]:
        k = checked_k(k)
        tf, pos = self.tf, len(context) - 1  # the newest token, at pos, is not yet in the cache
        zeros = tf.be.zeros((tf.config.n_embd,))
        rows = range(self.n_done, pos + 1)
        h_before = tf.be.stack([self.hidden[q - 1] if q else zeros for q in rows])  # [n, E]
        (_, h), (ids, finite) = tf.forward(self.cache, context[self.n_done : pos + 1], self.n_done,
                                           mtp_from=h_before, argmax=True)
        self.n_done = pos + 1
        self.hidden = {q: row for q, row in self.hidden.items() if q >= pos}  # the next proposal needs h of pos..
        drafts = []
        for i in range(k):
            if not finite[0]:
                break
            drafts.append(int(ids[0]))
            if i + 1 < k:  # logits [1, V] and h [1, E] of the guess just made, and the argmax of the logits
                (_, h), (ids, finite) = tf.forward(self.cache, drafts[-1:], pos + 1 + i, mtp_from=h, argmax=True)
        return drafts


def checked_k(k) -> int:
    """A proposal's k: guesses of one verify pass, 0..MAX_DRAFT (never a list of a billion guesses)."""
    return checks.integer("k", k, 0, MAX_DRAFT)


def check_transformer(tf, drafter: str) -> None:
    """UsageError unless `tf` is a Transformer: a drafter that runs the model's layers drafts on its cache."""
    if not isinstance(tf, Transformer):
        raise UsageError(f"the {drafter} drafter needs a Transformer (refspec.Transformer(model, backend)), got "
                         f"{type(tf).__name__}")


def make_drafter(name: str, tf: Transformer) -> Drafter:
    """'none', 'ngram', 'layerskip' or 'mtp' with their default settings."""
    if name == "none":
        return NoDrafter()
    if name == "ngram":
        return NgramDrafter()
    if name == "layerskip":
        return LayerSkipDrafter(tf)
    if name == "mtp":
        return MtpDrafter(tf)
    raise UsageError(f"unknown drafter {name!r}: choose one of {', '.join(DRAFTERS)}")


# ------------------------------------------------------------------------------------------- the loop
def checked_guesses(drafter: Drafter, proposal, k: int, n_vocab: int) -> list[int]:
    """The first k of a drafter's proposal, checked as prompt ids are: a sequence in order (a generator too: only
    k are taken; not a set) of integers in 0..n_vocab-1, bools and floats refused. A drafter may propose fewer,
    or more."""
    name = f"drafter {drafter.name!r}: its guesses"
    if isinstance(proposal, Iterable) and not isinstance(proposal, (str, bytes, Set, Mapping)):
        proposal = list(itertools.islice(proposal, k))
    return checks.token_ids(name, proposal, n_vocab, allow_empty=True, ordered=True)


CHAIN_SLACK = 2  # cache positions a chained run needs past the budget, in passes (one is queued past the one read)


def chained_ngram(tf: Transformer, drafter: Drafter, draft_max: int, adaptive: bool, keep_logits: bool,
                  n_alloc: int) -> bool:
    """Whether the verify passes run chained on the device (refspec/gpu_graphs.py, speculative_steps): with
    captured passes on a GPU backend that has the step (kernels_raw/ngram.hip), the drafter NgramDrafter
    itself (a subclass may propose otherwise) with n-grams the kernel takes, k fixed (not adaptive) at 1 to 15
    guesses, no logits kept, no recurrent layers (their state is checked on the host before each pass), and
    room in the model's context for the passes queued past the last token."""
    graphs = getattr(tf, "graphs", None)
    return (graphs is not None and hasattr(tf.be, "speculative_next") and type(drafter) is NgramDrafter
            and drafter.max_n <= tf.be.NGRAM_MAX_N and not adaptive and not keep_logits
            and 1 <= draft_max < graphs.max_rows and not tf.recurrent_layers()
            and n_alloc + CHAIN_SLACK * (draft_max + 1) <= tf.config.n_ctx)


def speculative_generate(
    tf: Transformer,
    prompt_ids: list[int],
    n_predict: int,
    *,
    drafter: Drafter,
    draft_max: int = DRAFT_MAX,
    adaptive: bool | None = None,
    eog_ids=None,
    on_token=None,
    keep_logits: bool = False,
    chain: bool = True,
    on_prompt=None,
) -> GenerationResult:
    """Greedy decoding, several tokens per forward pass: the result (ids, the logits row that chose each id,
    stop reason) is bitwise that of `generate(tf, prompt_ids, n_predict, eog_ids=...)`.

    Each pass runs the newest token and k guesses d_1..d_k as k+1 rows at positions pos .. pos+k. Row j has
    seen the tokens up to d_j, so while d_1..d_j were all right it is the row greedy decoding would compute
    next, and its argmax is greedy's next token. Accept rule: walk the rows in order, emit each row's argmax;
    continue while that argmax equals the next guess; the first mismatch (or the last row) ends the pass, its
    token being the one greedy chose instead of the guess (or the one beyond every guess). A pass yields 1 to
    k+1 tokens.

    Draft length. Adaptive: start at k = draft_max // 2 (at least 1); a proposal of k tokens accepted whole
    grows k by 1, a proposal with a rejected token shrinks it by 1, within [1, draft_max]; a shorter proposal
    accepted whole leaves k as is. Not adaptive: k = draft_max. Either way k is further capped so a pass can
    neither yield more tokens than the budget has left nor run past the cache. adaptive=None (the default)
    adapts unless both rows and guesses are cheap: on a GPU a pass of up to 17 rows costs about what one row
    costs (the weights are read once), so with a cheap drafter (ngram) every pass guesses draft_max tokens;
    on the CPU every extra row costs time, and a layer-skip guess costs most of a step anywhere.

    Chained passes (chain=True, the default, where chained_ngram allows: the ngram drafter on a GPU with
    captured passes). After the prompt's pass each verify pass's graph also takes its tokens by the accept
    rule and proposes the next guesses by NgramDrafter's rule, on the device (kernels_raw/ngram.hip), so the
    host queues passes back to back and reads each pass's tokens while the next ones run: no pass waits for
    Python. Every pass then has draft_max + 1 rows (rows after the guesses are verified and never accepted);
    tokens a last pass yields past the budget are not kept. Same tokens; chain=False runs the loop on the host.

    on_token and on_prompt are generate's (streaming each token; progress through the prompt's pass).
    """
    prompt_ids = check_request(tf, prompt_ids, on_token, keep_logits, on_prompt)
    if not isinstance(drafter, Drafter):
        raise UsageError(f"drafter must be a refspec.speculative.Drafter, not {type(drafter).__name__}")
    if isinstance(drafter, (LayerSkipDrafter, MtpDrafter)) and drafter.tf is not tf:
        raise UsageError("the drafter was made for another Transformer: make_drafter(name, tf) with the one that "
                         "verifies (it drafts on that one's cache)")
    draft_max = checks.integer("draft_max", draft_max, 0, MAX_DRAFT)
    if adaptive is not None:
        checks.flag("adaptive", adaptive)
    checks.flag("chain", chain)
    with quiet_numerics():
        return _speculative_generate(tf, prompt_ids, n_predict, drafter, draft_max, adaptive, eog_ids, on_token,
                                     keep_logits, chain, on_prompt)


def _speculative_generate(tf, prompt_ids, n_predict, drafter, draft_max, adaptive, eog_ids, on_token,
                          keep_logits, chain, on_prompt) -> GenerationResult:
    eog_ids = model_eog_ids(tf) if eog_ids is None else checked_eog_ids(tf, eog_ids)  # as generate()
    if adaptive is None:
        adaptive = tf.be.name == "cpu" or not drafter.cheap
    n_alloc, budget = plan_context(tf, len(prompt_ids), n_predict)
    result = GenerationResult(prompt_ids=list(prompt_ids))
    n_prompt, n_vocab = len(result.prompt_ids), tf.config.n_vocab
    # The verify passes chained on the device (see chained_ngram): their cache needs room for the passes queued
    # past the last token kept.
    chained = chain and chained_ngram(tf, drafter, draft_max, adaptive, keep_logits, n_alloc)
    # a pass resumes inside the last one's k+1 rows; one slot more and no row's slot is the one a pass reads
    # (qwen35 on a GPU: the conv1d then reads its state in place, kernels_raw/deltanet.hip)
    # (capped at new_cache's bound, n_pos + 1: a ring of n_pos slots holds the state after every position)
    n_pos = n_alloc + CHAIN_SLACK * (draft_max + 1) if chained else n_alloc
    cache = tf.new_cache(n_pos, n_states=min(draft_max + 2, n_pos + 1))
    drafter.begin(cache)
    on_hidden = drafter.target_pass if drafter.needs_hidden else None
    k_min = min(1, draft_max)
    k = max(k_min, draft_max // 2) if adaptive else draft_max
    histogram = [0] * (draft_max + 1)  # histogram[a]: verify passes that accepted a guesses
    n_passes = n_drafted = n_accepted = 0
    single_ms, verify_ms, draft_seconds = [], [], 0.0

    def take(ids, finite, drafts) -> int:
        """1. Accept. Each row gets the spec's argmax (lowest index on ties; NaN/inf raise) on its own, and
        only while greedy would have computed it: rows after a rejected guess are never looked at. Returns
        the guesses accepted."""
        n_ok = 0
        for j in range(len(ids)):
            token = token_of(ids, finite, j)
            result.ids.append(token)
            if keep_logits:
                result.logits.append(tf.be.to_host(rows[j]).copy())  # rejected rows need not be kept
            if on_token is not None:
                on_token(token)
            right = j < len(drafts) and token == drafts[j]
            n_ok += right
            if token in eog_ids:  # an end-of-generation token ends it even inside an accepted run
                result.stop_reason = "eog"
            elif len(result.ids) >= budget:
                result.stop_reason = "max_tokens" if n_predict >= 0 else "context"
            if result.stop_reason or not right:
                break
        return n_ok

    def count(n_drafts: int, n_ok: int) -> None:
        nonlocal n_accepted, k
        histogram[n_ok] += 1
        n_accepted += n_ok
        drafter.accepted(n_drafts, n_ok)
        if adaptive and n_drafts == k and n_ok == k:
            k = min(k + 1, draft_max)
        elif adaptive and n_ok < n_drafts:
            k = max(k_min, k - 1)

    t0 = time.perf_counter()
    rows = prefill(tf, cache, result.prompt_ids, on_hidden=on_hidden, on_prompt=on_prompt)  # [1, V]: the first token
    chosen = tf.be.argmax_rows(rows)
    drafts: list[int] = []  # the guesses `rows` verified: rows[j] saw drafts[:j]
    t1 = time.perf_counter()
    while True:
        n_ok = take(*chosen, drafts)
        if n_passes:  # the prompt's pass verified nothing
            count(len(drafts), n_ok)
        if result.stop_reason:
            break

        # 2. Draft. The newest token sits at `pos`, not yet in the cache. Cap the guesses so the pass yields
        #    at most the tokens still allowed (k+1 <= budget left) and its positions pos..pos+k fit the cache
        #    (implied by the first cap as plan_context sizes the cache, kept because it is what forward needs).
        pos = n_prompt + len(result.ids) - 1
        k_pass = min(k, budget - len(result.ids) - 1, n_alloc - 1 - pos)
        if chained and k_pass:
            # 2'-3'. From here every pass is chained on the device: each pass's graph takes its tokens by the
            #     accept rule and proposes the next guesses by the drafter's rule (kernels_raw/ngram.hip), so
            #     the host reads a pass's tokens while the next one runs (refspec/gpu_graphs.py,
            #     speculative_steps); the first pass's guesses are proposed there too (drafts None: no host
            #     time). Its passes are those of this loop with k = draft_max every pass, but for the cap at
            #     the end: tokens past the budget are computed and not kept.
            t_pass = time.perf_counter()
            passes = tf.graphs.speculative_steps(cache, result.prompt_ids + result.ids, None, draft_max + 1,
                                                 (drafter.max_n, drafter.min_n, drafter.unigram_max),
                                                 limit=n_prompt + budget, eog_ids=eog_ids)
            try:
                for ids, finite, guessed in passes:
                    n_passes += 1
                    n_drafted += guessed
                    guesses = [int(t) for t in ids[: len(ids) - 1]]  # its tokens but the last were guesses
                    count(guessed, take(ids, finite, guesses))
                    if result.stop_reason:
                        break
            finally:
                passes.close()  # the passes queued after the last one read end before anything else runs
            verify_ms.append(1e3 * (time.perf_counter() - t_pass) / max(1, n_passes))
            break

        t_draft = time.perf_counter()
        proposal = drafter.propose(result.prompt_ids + result.ids, k_pass) if k_pass else []
        drafts = checked_guesses(drafter, proposal, k_pass, n_vocab)
        draft_seconds += time.perf_counter() - t_draft
        n_drafted += len(drafts)

        # 3. Verify: one pass over the newest token and the guesses. How many rows it has (set by the drafter
        #    and k) changes no row's bits: batch invariance, which is what makes the accept rule exact. Its
        #    keys and values overwrite whatever a drafter or a rejected guess left at pos..pos+k.
        #    The argmax of every row comes back with it (one small transfer, after the pass has ended).
        t_pass = time.perf_counter()
        if on_hidden is None:
            rows, chosen = tf.forward(cache, [result.ids[-1]] + drafts, pos, argmax=True)  # [k+1, V] stays
        else:
            (rows, hidden), chosen = tf.forward(cache, [result.ids[-1]] + drafts, pos, hidden=True, argmax=True)
            on_hidden(pos, hidden)  # the final-normed hidden rows [k+1, E]
        (verify_ms if drafts else single_ms).append(1e3 * (time.perf_counter() - t_pass))
        n_passes += 1
    t2 = time.perf_counter()

    result.stats = decode_stats(n_prompt, len(result.ids), n_passes, t1 - t0, t2 - t1)
    result.stats.update(
        drafter=drafter.name,
        draft_max=draft_max,
        adaptive=adaptive,
        n_drafted=n_drafted,
        n_accepted=n_accepted,
        acceptance_rate=round(n_accepted / n_drafted, 4) if n_drafted else None,
        # tokens after the first (which the prompt's pass yields) per decoding pass
        mean_tokens_per_pass=round((len(result.ids) - 1) / n_passes, 4) if n_passes else None,
        accepted_histogram=histogram,
        verify_ms_mean=round(float(np.mean(verify_ms)), 3) if verify_ms else None,  # passes with guesses
        single_step_ms=round(float(np.mean(single_ms)), 3) if single_ms else None,  # one-row passes
        draft_seconds=round(draft_seconds, 6),
        chained=chained,  # passes chained on the device (verify_ms_mean: their mean time, queued back to back)
    )
    return result
