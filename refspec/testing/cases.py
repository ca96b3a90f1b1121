"""Fixed inputs for every operation of the backend protocol (refspec/protocol.py), chosen so that a backend
which orders a sum differently, chunks attention differently, fuses a multiply-add or calls libm's exp gives
different bits (tests/test_check_backend.py shows each of those mistakes caught), plus the edges of the
spec: zeros, -0.0, rounding ties, subnormals, values near overflow, sizes that are not multiples of 32 or of
a tile. Deterministic (a fixed seed), so a report can be reproduced; the hypothesis strategies in
refspec.testing.strategies draw more.

Each case is (op, label, inputs); `run_op` calls the backend and `reference_op` the spec (refspec.spec) on the
same inputs, both returning host arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refspec import spec
from refspec.model import QK8_0, LayerWeights, ModelWeights, Q8Matrix

F32 = np.float32
SEED = 20261201
EPS = 1e-5


@dataclass
class Case:
    op: str  # the backend method
    label: str  # shapes and parameters, for the report
    inputs: dict


# ------------------------------------------------------------------------------------------- generators
def edge_activations(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """float32 values mostly normal(0, scale), with exact zeros, -0.0, subnormals, tiny and large values
    sprinkled in (about 1 in 16 each)."""
    x = (rng.standard_normal(shape) * scale).astype(F32)
    pick = rng.integers(0, 16, size=shape)
    x[pick == 0] = 0.0
    x[pick == 1] = -0.0
    x[pick == 2] = F32(1e-40) * rng.choice(F32([-1, 1]), size=int(np.count_nonzero(pick == 2)))  # subnormal
    x[pick == 3] *= F32(1e-30)
    x[pick == 4] *= F32(1e4)
    return x


def quantize_edge_rows() -> np.ndarray:
    """Rows of Q8_0 blocks at the quantizer's edges: exact ties (x * inv = k + 0.5, rounded away from zero),
    an all-zero block, a block whose scale 1/d overflows (amax below ~1.5e-36), a subnormal block, a block
    with an fp16-overflowing scale, and -0.0."""
    ties = np.arange(QK8_0, dtype=F32) - F32(15.5)  # with amax 127 below: d = 1, inv = 1, every value a tie
    ties[0] = F32(127)
    zeros = np.zeros(QK8_0, F32)
    tiny = np.full(QK8_0, F32(1e-37)) * np.linspace(-1, 1, QK8_0, dtype=F32)
    subnormal = np.full(QK8_0, F32(3e-39)) * np.linspace(1, -1, QK8_0, dtype=F32)
    huge = np.full(QK8_0, F32(1e7)) * np.linspace(-1, 1, QK8_0, dtype=F32)  # d = 78740 > fp16 max: inf
    neg_zero = np.full(QK8_0, F32(-0.0))
    neg_zero[5] = F32(-2.5)
    return np.stack([np.concatenate([ties, zeros, tiny]), np.concatenate([subnormal, huge, neg_zero])])


def q8_matrix(rng: np.random.Generator, n: int, k: int) -> Q8Matrix:
    """Random Q8_0 weights with the edges: quants -127, 0 and 127 in every row, some zero scales, some
    subnormal fp16 scales, a few large ones."""
    q = rng.integers(-127, 128, size=(n, k), dtype=np.int16).astype(np.int8)
    q[:, 0], q[:, 1], q[:, 2] = -127, 127, 0
    d = (rng.uniform(0.5, 1.5, size=(n, k // QK8_0)) * 0.02).astype(np.float16)
    pick = rng.integers(0, 16, size=d.shape)
    d[pick == 0] = 0
    d[pick == 1] = np.float16(6e-8)  # fp16 subnormal
    d[pick == 2] = np.float16(30.0)
    return Q8Matrix(q, d)


def weights(rng: np.random.Generator) -> ModelWeights:
    """One layer's worth of matrices for the GEMV cases: Q/K/V and gate/up stacked by CpuBackend."""
    k_wide, k_ffn, k_down = 70 * QK8_0, 3 * QK8_0, 25 * QK8_0  # 70 blocks: more than 32 lanes; 25: fewer
    layer = LayerWeights(
        attn_norm=np.ones(k_wide, F32), wq=q8_matrix(rng, 40, k_wide), wk=q8_matrix(rng, 8, k_wide),
        wv=q8_matrix(rng, 8, k_wide), wo=q8_matrix(rng, 37, k_wide), ffn_norm=np.ones(k_ffn, F32),
        w_gate=q8_matrix(rng, 24, k_ffn), w_up=q8_matrix(rng, 24, k_ffn), w_down=q8_matrix(rng, 21, k_down))
    embd = q8_matrix(rng, 50, k_ffn)
    output = q8_matrix(rng, 23, k_ffn)
    # qwen2's Q/K/V biases (drawn last: the matrices stay as they were), uploaded with the weights as forward.py's
    # are, so that a backend's fused bias epilogue (the GPU's) is what q8_gemv_many_bias's case runs
    layer.bq, layer.bk, layer.bv = (edge_activations(rng, (m.shape[0],)) for m in (layer.wq, layer.wk, layer.wv))
    return ModelWeights(tok_embd=embd, layers=[layer], output_norm=np.ones(k_ffn, F32), output=output)


# ------------------------------------------------------------------------------------------------ cases
def make_cases(w: ModelWeights, seed: int = SEED) -> list[Case]:
    rng = np.random.default_rng(seed)
    lw = w.layers[0]
    k_wide = lw.wo.shape[1]
    cases = [Case("embed", "ids=7, E=96", {"ids": np.array([0, 49, 7, 7, 13, 1, 30])})]
    for shape in ((3, 200), (2, 3, 32), (1, k_wide)):
        cases.append(Case("rmsnorm", "x".join(map(str, shape)),
                          {"x": edge_activations(rng, shape), "w": rng.uniform(0.5, 1.5, shape[-1]).astype(F32)}))
    cases.append(Case("rmsnorm", "3x96 large", {"x": edge_activations(rng, (3, 96), 1e17), "w": np.ones(96, F32)}))
    cases.append(Case("rmsnorm_q8", f"3x{k_wide}", {"x": edge_activations(rng, (3, k_wide)),
                                                   "w": rng.uniform(0.5, 1.5, k_wide).astype(F32)}))
    # many rows: a reordered sum of squares (a pairwise np.mean, torch.mean) changes about one row in seven, so a
    # few rows miss it often (their own generator: the other cases' inputs stay as they were)
    many = np.random.default_rng(seed + 1)
    cases.append(Case("rmsnorm", "64x200 rows", {"x": edge_activations(many, (64, 200)),
                                                 "w": many.uniform(0.5, 1.5, 200).astype(F32)}))
    cases.append(Case("rmsnorm_q8", f"64x{k_wide} rows", {"x": edge_activations(many, (64, k_wide)),
                                                         "w": many.uniform(0.5, 1.5, k_wide).astype(F32)}))
    cases.append(Case("quantize_q8", "2x96 edges", {"x": quantize_edge_rows()}))
    cases.append(Case("quantize_q8", f"5x{k_wide}", {"x": edge_activations(rng, (5, k_wide), 3.0)}))
    for name, rows in (("wo", 3), ("w_down", 1), ("output", 2)):
        m = lw.wo if name == "wo" else lw.w_down if name == "w_down" else w.output
        xq, xd = spec.quantize_q8_0(edge_activations(rng, (rows, m.shape[1])))
        cases.append(Case("q8_gemv", f"R={rows}, N={m.shape[0]}, K={m.shape[1]}", {"w": name, "xq": xq, "xd": xd}))
    for names, rows in ((("wq", "wk", "wv"), 5), (("w_gate", "w_up"), 2)):
        k = getattr(lw, names[0]).shape[1]
        xq, xd = spec.quantize_q8_0(edge_activations(rng, (rows, k)))
        cases.append(Case("q8_gemv_many", f"{'+'.join(names)}, R={rows}, K={k}", {"ws": names, "xq": xq, "xd": xd}))
    x = edge_activations(rng, (3, 96))
    cases.append(Case("add", "3x96 + 96", {"x": x, "y": edge_activations(rng, (96,))}))
    big = np.full((2, 40), F32(3e38)) * rng.choice(F32([-1, 1]), size=(2, 40))
    cases.append(Case("add", "2x40 overflow, -0.0", {"x": big, "y": np.where(big > 0, big, F32(-0.0))}))
    gate = np.concatenate([np.linspace(-30, 30, 1200, dtype=F32), F32([-100, 100, 0, -0.0, 88.5, -87.5, 1e-40])])
    cases.append(Case("silu_mul", f"2x{len(gate) // 2 + 1}", {
        "gate": np.resize(gate, (2, len(gate) // 2 + 1)), "up": edge_activations(rng, (2, len(gate) // 2 + 1))}))
    for neox, n_rot, dim in ((False, 32, 32), (True, 32, 32), (True, 16, 32)):
        cos, sin = spec.rope_table(16, n_rot, 10000.0)
        cases.append(Case("rope", f"3x4x{dim}, n_rot={n_rot}, {'neox' if neox else 'pairs'}", {
            "x": edge_activations(rng, (3, 4, dim), 2.0), "pos0": 9, "cos": cos, "sin": sin, "neox": neox}))
    cases.append(Case("kv_write", "3x2x16 at 4 into 2x10x16", {
        "k": edge_activations(rng, (3, 2, 16)), "v": edge_activations(rng, (3, 2, 16)), "pos0": 4, "n_pos": 10}))
    for rows, n_pos, heads in ((7, 7, (4, 2)), (3, 300, (4, 2)), (2, 700, (3, 1))):
        h, g = heads
        cases.append(Case("attention", f"R={rows}, H={h}, G={g}, D=16, T={n_pos}", {
            "q": (rng.standard_normal((rows, h, 16)) * 3).astype(F32),
            "k": rng.standard_normal((g, n_pos, 16)).astype(F32),
            "v": edge_activations(rng, (g, n_pos, 16)), "pos0": n_pos - rows}))
    logits = rng.standard_normal((4, 33)).astype(F32)
    logits[1, [3, 20]] = logits[1].max() + 1  # a tie: the lower index wins
    logits[2, 7] = np.nan
    logits[3, 0] = -np.inf
    cases.append(Case("argmax_rows", "4x33, a tie, NaN, -inf", {"logits": logits}))
    return cases + fused_cases(w, seed)


def fused_cases(w: ModelWeights, seed: int = SEED) -> list[Case]:
    """The fused operations forward.py calls on the dense architectures (protocol.FUSED), each against the
    composition refspec.backends.FusedFromParts defines, on the spec's functions. Positions go through the
    backend's own pass_input, as in forward.py. Their own generator: the other cases' inputs stay as they were."""
    rng = np.random.default_rng(seed + 2)
    lw = w.layers[0]
    cases = [Case("pass_input", "ids=6 at 11, then embed", {"ids": [3, 0, 49, 3, 17, 1], "pos0": 11})]
    for name, rows in (("wo", 3), ("w_down", 1)):
        m = getattr(lw, name)
        xq, xd = spec.quantize_q8_0(edge_activations(rng, (rows, m.shape[1])))
        cases.append(Case("q8_gemv_add", f"R={rows}, N={m.shape[0]}, K={m.shape[1]}", {
            "x": edge_activations(rng, (rows, m.shape[0])), "w": name, "xq": xq, "xd": xd}))
    names = ("wq", "wk", "wv")
    xq, xd = spec.quantize_q8_0(edge_activations(rng, (4, lw.wq.shape[1])))
    cases.append(Case("q8_gemv_many_bias", f"{'+'.join(names)}, R=4, K={lw.wq.shape[1]}", {
        "ws": names, "biases": ("bq", "bk", "bv"), "xq": xq, "xd": xd}))
    # silu(32) is exactly 32 (exp(-32) vanishes next to 1), so gate 32 and up = tie / 32 put every product of
    # the first block on a rounding tie of the quantizer (as quantize_edge_rows): rounding half to even fails
    ties = quantize_edge_rows()[0, :QK8_0]
    gate = np.concatenate([np.full(QK8_0, F32(32)), np.linspace(-30, 30, 4 * QK8_0, dtype=F32)])
    up = np.concatenate([ties / F32(32), edge_activations(rng, (4 * QK8_0,))])
    cases.append(Case("silu_mul_q8", f"2x{len(gate)}, ties", {
        "gate": np.stack([gate, gate[::-1]]), "up": np.stack([up, edge_activations(rng, (len(up),))])}))
    for rows, heads, dim, n_rot, neox in ((3, (4, 2), 32, 32, False), (2, (3, 1), 64, 32, True)):
        h, g = heads
        cos, sin = spec.rope_table(16, n_rot, 10000.0)
        cases.append(Case("rope_kv", f"R={rows}, H={h}, G={g}, D={dim}, n_rot={n_rot}, {'neox' if neox else 'pairs'}"
                          f" at 9 into T=16", {
            "q": edge_activations(rng, (rows, h, dim), 2.0), "k": edge_activations(rng, (rows, g, dim), 2.0),
            "v": edge_activations(rng, (rows, g, dim)), "pos0": 9, "n_pos": 16, "cos": cos, "sin": sin,
            "neox": neox}))
    for rows, n_pos, heads, dim in ((3, 300, (4, 2), 32), (2, 700, (3, 1), 64), (1, 40, (2, 2), 16)):
        h, g = heads
        cases.append(Case("attention_q8", f"R={rows}, H={h}, G={g}, D={dim}, T={n_pos}", {
            "q": (rng.standard_normal((rows, h, dim)) * 3).astype(F32),
            "k": rng.standard_normal((g, n_pos, dim)).astype(F32),
            "v": edge_activations(rng, (g, n_pos, dim)), "pos0": n_pos - rows}))
    return cases


def qwen35_cases(seed: int = SEED) -> list[Case]:
    """qwen35's operations (protocol.QWEN35, then QWEN35_FUSED), on their own generator. The recurrent ones
    (conv1d_causal, delta_rule) read the state before their rows from a ring of slots and write each row's state
    into its slot (spec.ring_slots): at position 0 (zeros, no slot read) and past it with rows wrapping the ring,
    more rows than slots among them (a slot written before it is read)."""
    rng = np.random.default_rng(seed + 3)
    cases = [Case("split_query_gate", "R=3, H=4, D=32", {"qg": edge_activations(rng, (3, 4 * 2 * 32)), "n_head": 4,
                                                          "head_dim": 32})]
    wide = np.concatenate([np.linspace(-30, 30, 1200, dtype=F32),
                           F32([-100, 100, 0, -0.0, 88.5, -87.5, 1e-40, 17, -17, 20, -104, 89])])  # exp's edges
    cases.append(Case("silu", f"2x{len(wide) // 2}", {"x": wide.reshape(2, -1)}))
    gate = np.resize(wide, (3, 4, 32))
    cases.append(Case("sigmoid_gate", "3x4x32", {"a": edge_activations(rng, (3, 4, 32), 3.0), "gate": gate}))
    many = np.random.default_rng(seed + 4)  # many rows: a reordered sum of squares fails in a few of them
    cases.append(Case("l2norm", "64x4x32 rows", {"x": edge_activations(many, (64, 4, 32)), "eps": 1e-6}))
    cases.append(Case("gated_rmsnorm", "64x4x32 rows", {
        "x": edge_activations(many, (64, 4, 32)), "w": many.uniform(0.5, 1.5, 32).astype(F32),
        "z": edge_activations(many, (64, 4, 32), 3.0), "eps": 1e-6}))
    heads = 6
    alpha = np.concatenate([edge_activations(rng, (4, heads), 4.0), F32([[25, -25, 19.9, 20.1, 0, -0.0]])])
    cases.append(Case("deltanet_gates", f"R=5, Hv={heads}", {
        "alpha": alpha, "b": edge_activations(rng, (5, heads), 4.0), "dt_bias": rng.uniform(-1, 1, heads).astype(F32),
        "a": -rng.uniform(0.05, 8, heads).astype(F32)}))
    for op in ("conv1d_causal", "conv1d_silu"):
        for rows, pos0 in ((3, 0), (5, 6)):
            cases.append(Case(op, f"R={rows} at {pos0}, C=96, K=4, ring of 4", {
                "x": edge_activations(rng, (rows, 96), 2.0), "w": rng.standard_normal((96, 4)).astype(F32),
                "ring": rng.standard_normal((4, 96, 3)).astype(F32), "pos0": pos0}))
    for op in ("delta_rule", "gated_delta_rule"):
        for rows, pos0 in ((1, 0), (4, 5)):
            q, k = (spec.l2norm(rng.standard_normal((rows, 2, 32)).astype(F32), 1e-6) for _ in range(2))
            alpha, b = (rng.standard_normal((rows, 4)).astype(F32) * 2 for _ in range(2))
            dt_bias, a = rng.uniform(-1, 1, 4).astype(F32), -rng.uniform(0.05, 8, 4).astype(F32)
            inputs = {"q": q, "k": k, "v": edge_activations(rng, (rows, 4, 32)), "pos0": pos0,
                      "ring": (rng.standard_normal((3, 4, 32, 32)) * 0.1).astype(F32)}
            if op == "delta_rule":
                inputs["decay"], inputs["beta"] = spec.deltanet_gates(alpha, b, dt_bias, a)
            else:
                inputs.update(alpha=alpha, b=b, dt_bias=dt_bias, a=a)
            cases.append(Case(op, f"R={rows} at {pos0}, Hk=2, Hv=4, D=32, ring of 3", inputs))
    cases.append(Case("concat", "3x40 | 3x24", {"a": edge_activations(rng, (3, 40)), "b": edge_activations(rng, (3, 24))}))
    cases.append(Case("stack", "3 rows of 40", {"rows": [edge_activations(rng, (40,)) for _ in range(3)]}))
    # sigmoid(32) is exactly 1 (exp(-32) vanishes next to 1): gate 32 puts the first block on the quantizer's ties
    ties = np.resize(quantize_edge_rows()[0, :QK8_0], (3, 4, 32))
    gate = np.resize(wide, (3, 4, 32)).copy()
    gate[0, 0] = 32
    cases.append(Case("sigmoid_gate_q8", "3x4x32, ties", {"a": ties * np.where(gate == 32, F32(1), F32(0.37)),
                                                          "gate": gate}))
    cases.append(Case("gated_rmsnorm_q8", "5x4x32", {
        "x": edge_activations(rng, (5, 4, 32)), "w": rng.uniform(0.5, 1.5, 32).astype(F32),
        "z": edge_activations(rng, (5, 4, 32), 3.0), "eps": 1e-6}))
    return cases


# ---------------------------------------------------------------------------------------------- running
def run_op(be, uploaded: ModelWeights, case: Case) -> tuple:
    """The case on backend `be` (weights already uploaded) -> host arrays."""
    i, a, host = case.inputs, be.asarray, be.to_host
    lw = uploaded.layers[0]
    if case.op == "embed":
        return (host(be.embed(uploaded.tok_embd, i["ids"])),)
    if case.op == "rmsnorm":
        return (host(be.rmsnorm(a(i["x"]), a(i["w"]), EPS)),)
    if case.op in ("rmsnorm_q8", "quantize_q8"):
        out = be.rmsnorm_q8(a(i["x"]), a(i["w"]), EPS) if case.op == "rmsnorm_q8" else be.quantize_q8(a(i["x"]))
        return tuple(host(t) for t in _pair(out, case.op))
    if case.op == "q8_gemv":
        m = uploaded.output if i["w"] == "output" else getattr(lw, i["w"])
        return (host(be.q8_gemv(m, a(i["xq"]), a(i["xd"]))),)
    if case.op == "q8_gemv_many":
        return tuple(host(t) for t in be.q8_gemv_many([getattr(lw, n) for n in i["ws"]], a(i["xq"]), a(i["xd"])))
    if case.op == "add":
        return (host(be.add(a(i["x"]), a(i["y"]))),)
    if case.op == "silu_mul":
        return (host(be.silu_mul(a(i["gate"]), a(i["up"]))),)
    if case.op == "rope":
        return (host(be.rope(a(i["x"]), i["pos0"], a(i["cos"]), a(i["sin"]), i["neox"])),)
    if case.op == "kv_write":
        shape = (i["k"].shape[1], i["n_pos"], i["k"].shape[2])
        kc, vc = be.zeros(shape), be.zeros(shape)
        be.kv_write(kc, vc, a(i["k"]), a(i["v"]), i["pos0"])
        return host(kc), host(vc)
    if case.op == "attention":
        return (host(be.attention(a(i["q"]), a(i["k"]), a(i["v"]), i["pos0"])),)
    if case.op == "argmax_rows":
        ids, finite = _pair(be.argmax_rows(a(i["logits"])), case.op)
        ids, finite = np.asarray(host(ids)), np.asarray(host(finite))
        finite = finite.astype(bool)  # any integer and boolean types will do here
        if not np.issubdtype(ids.dtype, np.integer):  # float ids would be truncated by the astype below
            raise TypeError(f"argmax_rows returned ids of {ids.dtype}, expected an integer type")
        return np.where(finite, ids.astype(np.int64), -1), finite  # a non-finite row chooses no token
    if case.op == "pass_input":
        ids, _ = be.pass_input(list(i["ids"]), i["pos0"])
        return (host(be.embed(uploaded.tok_embd, ids)),)
    if case.op == "q8_gemv_add":
        return (host(be.q8_gemv_add(a(i["x"]), getattr(lw, i["w"]), a(i["xq"]), a(i["xd"]))),)
    if case.op == "q8_gemv_many_bias":
        ys = be.q8_gemv_many_bias([getattr(lw, n) for n in i["ws"]], [getattr(lw, b) for b in i["biases"]],
                                  a(i["xq"]), a(i["xd"]))
        return tuple(host(y) for y in ys)
    if case.op == "silu_mul_q8":
        return tuple(host(t) for t in _pair(be.silu_mul_q8(a(i["gate"]), a(i["up"])), case.op))
    if case.op == "rope_kv":
        pos = _position(be, len(i["q"]), i["pos0"])
        shape = (i["k"].shape[1], i["n_pos"], i["k"].shape[2])
        kc, vc = be.zeros(shape), be.zeros(shape)
        q = be.rope_kv(a(i["q"]), a(i["k"]), a(i["v"]), kc, vc, pos, a(i["cos"]), a(i["sin"]), i["neox"])
        return host(q), host(kc), host(vc)
    if case.op == "attention_q8":
        pos = _position(be, len(i["q"]), i["pos0"])
        return tuple(host(t) for t in _pair(be.attention_q8(a(i["q"]), a(i["k"]), a(i["v"]), pos), case.op))
    if case.op == "split_query_gate":
        return tuple(host(t) for t in _pair(be.split_query_gate(a(i["qg"]), i["n_head"], i["head_dim"]), case.op))
    if case.op == "silu":
        return (host(be.silu(a(i["x"]))),)
    if case.op in ("sigmoid_gate", "sigmoid_gate_q8"):
        out = getattr(be, case.op)(a(i["a"]), a(i["gate"]))
        return (host(out),) if case.op == "sigmoid_gate" else tuple(host(t) for t in _pair(out, case.op))
    if case.op == "l2norm":
        return (host(be.l2norm(a(i["x"]), i["eps"])),)
    if case.op in ("gated_rmsnorm", "gated_rmsnorm_q8"):
        out = getattr(be, case.op)(a(i["x"]), a(i["w"]), a(i["z"]), i["eps"])
        return (host(out),) if case.op == "gated_rmsnorm" else tuple(host(t) for t in _pair(out, case.op))
    if case.op == "deltanet_gates":
        return tuple(host(t) for t in _pair(be.deltanet_gates(a(i["alpha"]), a(i["b"]), a(i["dt_bias"]), a(i["a"])),
                                            case.op))
    if case.op in ("conv1d_causal", "conv1d_silu", "delta_rule", "gated_delta_rule"):
        pos = _position(be, len(i["x"] if "x" in i else i["v"]), i["pos0"])
        ring = a(i["ring"])
        if case.op.startswith("conv1d"):
            y = getattr(be, case.op)(a(i["x"]), a(i["w"]), ring, pos)
        elif case.op == "delta_rule":
            y = be.delta_rule(a(i["q"]), a(i["k"]), a(i["v"]), a(i["decay"]), a(i["beta"]), ring, pos)
        else:
            y = be.gated_delta_rule(a(i["q"]), a(i["k"]), a(i["v"]), a(i["alpha"]), a(i["b"]), a(i["dt_bias"]),
                                    a(i["a"]), ring, pos)
        return host(y), host(ring)  # the output and every slot of the ring after it
    if case.op == "concat":
        return (host(be.concat(a(i["a"]), a(i["b"]))),)
    if case.op == "stack":
        return (host(be.stack([a(r) for r in i["rows"]])),)
    raise ValueError(f"no case runner for {case.op}")


def reference_op(w: ModelWeights, case: Case) -> tuple:
    """What the spec gives for the case (refspec.spec, the definition)."""
    i, lw = case.inputs, w.layers[0]
    if case.op == "embed":
        return (spec.embed(w.tok_embd, i["ids"]),)
    if case.op == "rmsnorm":
        return (spec.rmsnorm(i["x"], i["w"], EPS),)
    if case.op == "rmsnorm_q8":
        return spec.quantize_q8_0(spec.rmsnorm(i["x"], i["w"], EPS))
    if case.op == "quantize_q8":
        return spec.quantize_q8_0(i["x"])
    if case.op == "q8_gemv":
        return (spec.q8_gemv(w.output if i["w"] == "output" else getattr(lw, i["w"]), i["xq"], i["xd"]),)
    if case.op == "q8_gemv_many":
        return tuple(spec.q8_gemv(getattr(lw, n), i["xq"], i["xd"]) for n in i["ws"])
    if case.op == "add":
        return (spec.add(i["x"], i["y"]),)
    if case.op == "silu_mul":
        return (spec.silu_mul(i["gate"], i["up"]),)
    if case.op == "rope":
        return (spec.rope(i["x"], i["pos0"], i["cos"], i["sin"], i["neox"]),)
    if case.op == "kv_write":
        kc, vc = (np.zeros((i["k"].shape[1], i["n_pos"], i["k"].shape[2]), F32) for _ in range(2))
        rows = i["k"].shape[0]
        kc[:, i["pos0"] : i["pos0"] + rows] = i["k"].transpose(1, 0, 2)
        vc[:, i["pos0"] : i["pos0"] + rows] = i["v"].transpose(1, 0, 2)
        return kc, vc
    if case.op == "attention":
        return (spec.attention(i["q"], i["k"], i["v"], i["pos0"]),)
    if case.op == "argmax_rows":
        ids, finite = spec.argmax_rows(i["logits"])
        # A row with NaN or infinity chooses no token (spec.checked_ids raises): its index is not compared.
        return np.where(finite, ids.astype(np.int64), -1), finite.astype(bool)
    # the fused operations: FusedFromParts' compositions, of the spec's functions
    if case.op == "pass_input":
        return (spec.embed(w.tok_embd, np.asarray(i["ids"])),)
    if case.op == "q8_gemv_add":
        return (spec.add(i["x"], spec.q8_gemv(getattr(lw, i["w"]), i["xq"], i["xd"])),)
    if case.op == "q8_gemv_many_bias":
        return tuple(spec.add(spec.q8_gemv(getattr(lw, n), i["xq"], i["xd"]), getattr(lw, b))
                     for n, b in zip(i["ws"], i["biases"]))
    if case.op == "silu_mul_q8":
        return spec.quantize_q8_0(spec.silu_mul(i["gate"], i["up"]))
    if case.op == "rope_kv":
        k = spec.rope(i["k"], i["pos0"], i["cos"], i["sin"], i["neox"])
        kc, vc = reference_op(w, Case("kv_write", "", {"k": k, "v": i["v"], "pos0": i["pos0"], "n_pos": i["n_pos"]}))
        return spec.rope(i["q"], i["pos0"], i["cos"], i["sin"], i["neox"]), kc, vc
    if case.op == "attention_q8":
        out = spec.attention(i["q"], i["k"], i["v"], i["pos0"])
        return spec.quantize_q8_0(out.reshape(out.shape[0], -1))
    return _reference_qwen35(case)


def _reference_qwen35(case: Case) -> tuple:
    """qwen35's operations: their spec twins (the recurrent ones through CpuBackend's ring bookkeeping, the spec's
    steps with spec.ring_slots) and FusedFromParts' compositions of them."""
    from refspec.backends import CpuBackend

    i = case.inputs
    if case.op == "split_query_gate":
        qg = i["qg"].reshape(len(i["qg"]), i["n_head"], 2, i["head_dim"])
        return np.ascontiguousarray(qg[:, :, 0]), np.ascontiguousarray(qg[:, :, 1])
    if case.op == "silu":
        return (spec.silu(i["x"]),)
    if case.op == "sigmoid_gate":
        return (spec.sigmoid_gate(i["a"], i["gate"]),)
    if case.op == "sigmoid_gate_q8":
        y = spec.sigmoid_gate(i["a"], i["gate"])
        return spec.quantize_q8_0(y.reshape(len(y), -1))
    if case.op == "l2norm":
        return (spec.l2norm(i["x"], i["eps"]),)
    if case.op == "gated_rmsnorm":
        return (spec.gated_rmsnorm(i["x"], i["w"], i["z"], i["eps"]),)
    if case.op == "gated_rmsnorm_q8":
        y = spec.gated_rmsnorm(i["x"], i["w"], i["z"], i["eps"])
        return spec.quantize_q8_0(y.reshape(len(y), -1))
    if case.op == "deltanet_gates":
        return spec.deltanet_gates(i["alpha"], i["b"], i["dt_bias"], i["a"])
    if case.op in ("conv1d_causal", "conv1d_silu"):
        ring = i["ring"].copy()
        y = CpuBackend.conv1d_causal(i["x"], i["w"], ring, i["pos0"])
        return (spec.silu(y) if case.op == "conv1d_silu" else y), ring
    if case.op in ("delta_rule", "gated_delta_rule"):
        ring = i["ring"].copy()
        gates = (i["decay"], i["beta"]) if case.op == "delta_rule" else spec.deltanet_gates(
            i["alpha"], i["b"], i["dt_bias"], i["a"])
        return CpuBackend.delta_rule(i["q"], i["k"], i["v"], *gates, ring, i["pos0"]), ring
    if case.op == "concat":
        return (np.concatenate([i["a"], i["b"]], axis=-1),)
    if case.op == "stack":
        return (np.stack(i["rows"]),)
    raise ValueError(f"no reference for {case.op}")


def _position(be, rows: int, pos0: int):
    """The first position of `rows` rows as the backend's operations take it in forward.py: from its pass_input."""
    return be.pass_input([0] * rows, pos0)[1]


def _pair(out, op: str) -> tuple:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"{op} must return a pair of arrays, got {type(out).__name__}")
    return tuple(out)
