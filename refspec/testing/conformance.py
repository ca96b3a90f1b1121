"""`refspec check-backend MODULE:FACTORY`: a foreign backend against the spec, op by op and then whole models.

1. Every operation of the backend protocol (refspec/protocol.py) on the fixed inputs of
   refspec.testing.cases, compared with the spec bit for bit: one line per case, as llama.cpp's
   test-backend-ops prints them, `op(shape): OK` or `FAIL bitwise a/n | maxULP u | NMSE x`. An op that
   raises, or returns the wrong shape or dtype, is a FAIL with the reason; the run goes on. Then the fused
   operations forward.py calls (protocol.FUSED), each against FusedFromParts' composition of the spec's ops.
2. Tiny random models of the dense architectures, and of qwen35 where the backend has its methods
   (protocol.QWEN35: then its ops are checked in 1. too), through refspec/forward.py on the backend: every tap (llama.cpp's tensor names, in pass order) and the logits against refspec's CPU backend,
   batch invariance (R rows in one pass == R single-row passes), and speculative decoding == greedy decoding
   (ids and logits).
"""
from __future__ import annotations

import importlib
import sys
import tempfile
from dataclasses import dataclass, replace

import numpy as np

from refspec.errors import BackendError
from refspec.protocol import METHODS, missing_methods
from refspec.testing import cases as op_cases
from refspec.testing.bits import bits_equal_mask, first_difference, ulp_distance

TINY_MODELS = {  # odd head counts, GQA, partial RoPE, an ffn of 3 blocks: as tests/test_forward.py
    "llama": dict(n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=2),
    "qwen2": dict(n_layer=2, n_embd=96, n_ff=160, n_head=3, n_head_kv=1, head_dim=32),
    "qwen3": dict(n_layer=2, n_embd=64, n_ff=64, n_head=2, n_head_kv=2, head_dim=32, n_rot=16),
    # DeltaNet, gated attention, DeltaNet; 6 value heads over 2 key heads; an MTP block (its drafter is checked)
    "qwen35": dict(n_layer=3, n_embd=64, n_ff=96, n_head=2, n_head_kv=1, head_dim=32, ssm_n_v_heads=6,
                   full_attention_interval=2, n_nextn=1),
}
DENSE = ("llama", "qwen2", "qwen3")
# what foreign code may raise and a check reports: any error, and SystemExit (a backend module written as a script,
# an op calling sys.exit), which would otherwise end refspec with the backend's status, 0 included
FOREIGN_FAILURES = (Exception, SystemExit)
PROMPT = [5, 71, 9, 33, 2, 71, 9, 33, 2, 71, 9, 40]  # repeats, so the ngram drafter's guesses get accepted


@dataclass
class Check:
    name: str  # "q8_gemv(R=3, N=37, K=2240)" or "llama: batch invariance"
    ok: bool
    detail: str = ""  # "bitwise 111/111" or the failure

    def line(self) -> str:
        return f"{self.name}: {'OK' if self.ok else 'FAIL'}{' ' + self.detail if self.detail else ''}"


# ------------------------------------------------------------------------------------------------ loading
def load_factory(spec: str):
    """'package.module:factory' -> the callable (a class or a function returning a backend)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BackendError(f"give the backend as MODULE:FACTORY (e.g. mypkg.backend:make), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except FOREIGN_FAILURES as err:  # a foreign module may fail in any way while importing
        raise BackendError(f"cannot import {module_name}: {type(err).__name__}: {err}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BackendError(f"{module_name} has no callable {attr}")
    return factory


def as_backend(backend_or_factory):
    """A class, or a callable with none of the protocol's methods, is a factory; anything else is a backend,
    checked for what it lacks as a factory's result is (an instance is never called)."""
    x = backend_or_factory
    if isinstance(x, type) or (callable(x) and len(missing_methods(x)) == len(METHODS)):
        return make_backend(x)
    missing = missing_methods(x)
    if missing:
        raise BackendError(f"the backend lacks {', '.join(missing)} (refspec/protocol.py lists the methods)")
    return x


def make_backend(factory):
    try:
        be = factory()
    except FOREIGN_FAILURES as err:
        raise BackendError(f"the backend factory raised {type(err).__name__}: {err}") from err
    missing = missing_methods(be)
    if missing:
        raise BackendError(f"the backend lacks {', '.join(missing)} (refspec/protocol.py lists the methods)")
    return be


# --------------------------------------------------------------------------------------------- op checks
def check_ops(be, seed: int = op_cases.SEED) -> list[Check]:
    return list(iter_ops(be, seed))


def iter_ops(be, seed: int = op_cases.SEED):
    """The op checks, each yielded as it finishes."""
    rng = np.random.default_rng(seed)
    weights = op_cases.weights(rng)
    try:
        uploaded = be.upload_weights(weights)
    except FOREIGN_FAILURES as err:
        yield Check("upload_weights", False, f"raised {type(err).__name__}: {err}")
        return
    cases = op_cases.make_cases(weights, seed) + (op_cases.qwen35_cases(seed) if not qwen35_missing(be) else [])
    for case in cases:
        yield _check_op(be, uploaded, weights, case)


def qwen35_missing(be) -> list[str]:
    """The methods qwen35 models need (protocol.QWEN35, QWEN35_FUSED) that `be` lacks: where any, its qwen35 ops
    and model are not checked."""
    from refspec.protocol import QWEN35, QWEN35_FUSED

    return missing_methods(be, QWEN35 + QWEN35_FUSED)


def _check_op(be, uploaded, weights, case) -> Check:
    name = f"{case.op}({case.label})"
    missing = missing_methods(be, (case.op,))  # a fused operation (the protocol's methods were checked up front)
    if missing:
        return Check(name, False, f"missing: {missing[0]}; forward.py calls it; inherit "
                                  "refspec.backends.FusedFromParts for the composition of the basic operations")
    with np.errstate(all="ignore"):  # the edge cases overflow on purpose
        want = op_cases.reference_op(weights, case)  # first, and the backend gets copies: one that writes
        inputs = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in case.inputs.items()}
        try:  # into its inputs can neither change the reference nor the next case
            got = op_cases.run_op(be, uploaded, replace(case, inputs=inputs))
        except FOREIGN_FAILURES as err:
            return Check(name, False, f"raised {type(err).__name__}: {_one_line(err)}")
        return Check(name, *_verdict(got, want))


def _verdict(got: tuple, want: tuple) -> tuple[bool, str]:
    if len(got) != len(want):
        return False, f"returned {len(got)} arrays, expected {len(want)}"
    equal = total = max_ulp = nonfinite = 0
    err2 = ref2 = 0.0
    for g, w in zip(got, want):
        g = np.asarray(g)
        if g.shape != w.shape or g.dtype != w.dtype:
            return False, f"returned {g.dtype} {list(g.shape)}, expected {w.dtype} {list(w.shape)}"
        same = bits_equal_mask(g, w)
        equal, total = equal + int(same.sum()), total + same.size
        if not same.all():
            max_ulp = max(max_ulp, int(ulp_distance(g[~same], w[~same]).max()))
            finite = np.isfinite(w.astype(np.float64)) & np.isfinite(g.astype(np.float64))
            nonfinite += int(np.count_nonzero(np.isfinite(w.astype(np.float64)) & ~finite))
            err2 += float(np.sum((g[finite].astype(np.float64) - w[finite]) ** 2))
        ref2 += float(np.sum(np.where(np.isfinite(w.astype(np.float64)), w.astype(np.float64), 0) ** 2))
    nmse = err2 / ref2 if ref2 else (0.0 if err2 == 0 else float("inf"))
    detail = f"bitwise {equal}/{total}"
    if equal == total:
        return True, detail
    # elements finite on one side only: the NMSE leaves them out, so it alone would read 0 for an all-NaN output
    detail += f" | maxULP {max_ulp} | NMSE {nmse:.3g}"
    return False, detail + (f" | non-finite where the spec is finite {nonfinite}" if nonfinite else "")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:160]


# ------------------------------------------------------------------------------------------ model checks
def check_models(be, archs=None) -> list[Check]:
    return list(iter_models(be, archs))


def iter_models(be, archs=None):
    """The whole-model checks, each yielded as it finishes; archs: default every tiny model the backend can run
    (qwen35 where it has qwen35's methods)."""
    from refspec.backends import CpuBackend
    from refspec.forward import Transformer
    from refspec.gguf_model import load
    from refspec.synthetic import write_model

    if archs is None:
        archs = DENSE + (("qwen35",) if not qwen35_missing(be) else ())
    with tempfile.TemporaryDirectory(prefix="refspec-check-") as tmp:
        for arch in archs:
            model = load(write_model(f"{tmp}/{arch}.gguf", arch=arch, n_ctx=64, seed=7, **TINY_MODELS[arch]),
                         log=lambda message: None)
            label = f"{arch} ({model.config.n_layer} layers)"
            try:
                tf = Transformer(model, be)
            except FOREIGN_FAILURES as err:
                yield Check(f"{label}: load", False, f"raised {type(err).__name__}: {_one_line(err)}")
                continue
            reference = Transformer(model, CpuBackend())
            for what, check in (("taps and logits vs CPU", _taps_vs_cpu), ("batch invariance", _batch_invariance),
                                ("speculative == greedy", _speculative_is_greedy)):
                try:
                    problem = check(tf, reference)
                except FOREIGN_FAILURES as err:
                    problem = f"raised {type(err).__name__}: {_one_line(err)}"
                yield Check(f"{label}: {what}", problem is None, problem or "")


def _host_logits(tf, ids, pos0, cache, taps=None) -> np.ndarray:
    return np.asarray(tf.be.to_host(tf.forward(cache, ids, pos0, taps=taps)))


def _taps_vs_cpu(tf, reference) -> str | None:
    """The first tap, in pass order, whose bits differ from the CPU's (a mistake the logits may hide), else the
    logits' first difference."""
    got, want = {}, {}
    got["logits"] = _host_logits(tf, PROMPT, 0, tf.new_cache(len(PROMPT)),
                                 taps=lambda name, t: got.setdefault(name, np.array(tf.be.to_host(t), copy=True)))
    want["logits"] = reference.forward(reference.new_cache(len(PROMPT)), PROMPT, 0,
                                       taps=lambda name, t: want.setdefault(name, np.array(t, copy=True)))
    for name in want:  # in the order the CPU's pass handed them over, the logits last
        if name not in got:
            return f"no tap {name} came from the backend's pass"
        problem = first_difference(got[name], want[name], name)
        if problem:
            return problem
    return None


def _batch_invariance(tf, reference) -> str | None:
    many = _host_logits(tf, PROMPT, 0, tf.new_cache(len(PROMPT)))
    cache = tf.new_cache(len(PROMPT))
    for pos, token in enumerate(PROMPT):
        problem = first_difference(_host_logits(tf, [token], pos, cache)[0], many[pos], f"row {pos}")
        if problem:
            return problem
    return None


def _speculative_is_greedy(tf, reference) -> str | None:
    from refspec.generate import generate
    from refspec.speculative import make_drafter, speculative_generate

    greedy = generate(tf, PROMPT, 16, keep_logits=True)
    drafter = "mtp" if tf.weights.mtp is not None else "ngram"  # (qwen35's MTP block: concat, stack, its pass)
    spec = speculative_generate(tf, PROMPT, 16, drafter=make_drafter(drafter, tf), draft_max=4, keep_logits=True)
    if spec.ids != greedy.ids:
        first = next(i for i, (a, b) in enumerate(zip(spec.ids, greedy.ids + [None] * 99)) if a != b)
        return f"ids differ from token {first}: {spec.ids[first]} vs greedy's {greedy.ids[first]}"
    for i, (a, b) in enumerate(zip(spec.logits, greedy.logits)):
        problem = first_difference(np.asarray(a), np.asarray(b), f"logits of token {i}")
        if problem:
            return problem
    return None


# ------------------------------------------------------------------------------------------------ running
def check_backend(backend_or_factory, *, ops: bool = True, models: bool = True, on_result=None) -> list[Check]:
    """Every check on a backend (or a factory making one); `on_result(check)` sees each as it finishes."""
    be = as_backend(backend_or_factory)
    results = []
    for group in ((iter_ops,) if ops else ()) + ((iter_models,) if models else ()):
        for check in group(be):
            results.append(check)
            if on_result:
                on_result(check)
    return results


def add_arguments(p) -> None:
    p.add_argument("backend", metavar="MODULE:FACTORY",
                   help="a callable returning the backend, e.g. mypkg.backend:MyBackend (importable from here)")
    p.add_argument("--ops-only", action="store_true", help="skip the whole-model checks")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def run(args) -> int:
    import json

    if "" not in sys.path:
        sys.path.insert(0, "")  # MODULE may live in the current directory, as with `python -m`
    factory = load_factory(args.backend)
    printer = None if args.json else (lambda check: print(f"  {check.line()}", flush=True))
    be = as_backend(factory)
    results = check_backend(be, models=not args.ops_only, on_result=printer)
    failed = [c for c in results if not c.ok]
    lacking = qwen35_missing(be)
    if args.json:
        print(json.dumps({"checks": [vars(c) for c in results], "failed": len(failed), "pass": not failed,
                          "qwen35_checked": not lacking}))
    else:
        if lacking:
            print(f"  qwen35: not checked: the backend lacks {', '.join(lacking)} (refspec/protocol.py QWEN35)")
        print(f"{len(results) - len(failed)}/{len(results)} checks passed" + (": OK" if not failed else ": FAIL"))
    return 1 if failed else 0
