"""`refspec compare A B`: where two runs of a model agree, bit for bit or by how much, and where they part.

A is the reference: a golden file (refspec/golden.py). B is a golden file of the same token ids, or raw
float32 logits: `.npy` ([V] or [R, V]), or `.bin` as llama.cpp's `llama-debug --save-logits` writes them
(float32 values, little-endian, V per row, no header; the token ids beside it in `<stem>-tokens.bin` as int32).

Per tensor both files hold: elements bitwise equal, max and median ULP distance, NMSE = sum (a-b)^2 / sum a^2 (float64,
A as reference, llama.cpp test-backend-ops' measure), max absolute error (nan or inf when either side holds a NaN or
an infinity) and how many non-finite values each side holds. For the logits, per position: the
top-1 token of each, how many of the top 5 they share, NMSE and max ULP. Then the first tensor, in forward
order, whose bits differ and the first whose NMSE exceeds a threshold: where two runs part.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from refspec import checks, golden
from refspec.errors import GoldenFileError, UsageError
from refspec.testing.bits import ulp_distance

DEFAULT_NMSE_THRESHOLD = 1e-7  # test-backend-ops' default per-op threshold; where the report says runs part
TOP_K = 5


@dataclass
class Rows:
    """What B provides: tensors [R, ...] whose rows are A's positions `positions`."""

    tensors: dict
    positions: np.ndarray
    metadata: dict
    token_ids: np.ndarray | None


# ------------------------------------------------------------------------------------------------- input
def load_other(path, reference: golden.Golden) -> Rows:
    """B as rows of A's positions: a golden file (its token ids must equal A's), or raw logits."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        return _raw_rows(path, _read_npy(path), reference, token_ids=None)
    if suffix == ".bin":
        ids_path = path[: -len(".bin")] + "-tokens.bin"
        token_ids = _read_bin(ids_path, np.int32, 1) if os.path.exists(ids_path) else None
        return _raw_rows(path, _read_bin(path, np.float32, reference.logits.shape[1]), reference, token_ids)
    other = golden.load(path)
    ids_a, ids_b = reference.token_ids, other.token_ids
    if len(ids_a) != len(ids_b) or not np.array_equal(ids_a, ids_b):
        raise GoldenFileError(f"{path}: token ids differ from the reference's ({_first_difference(ids_a, ids_b)}); "
                              f"run it on the same tokens with `refspec dump --ids-from REFERENCE`")
    return Rows(other.tensors, np.arange(len(ids_b)), other.metadata, ids_b)


def _read_npy(path: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise GoldenFileError(f"{path}: not a readable .npy file ({golden._one_line(err)})") from err
    if a.dtype != np.float32 or a.ndim not in (1, 2):
        raise GoldenFileError(f"{path}: raw logits must be float32 [V] or [R, V], got {a.dtype} {list(a.shape)}")
    if a.size == 0:  # [0], [0, V] or [R, 0]: nothing to compare (and no row length to reshape by)
        raise GoldenFileError(f"{path}: no logits (shape {list(a.shape)})")
    return a.reshape(-1, a.shape[-1])


def _read_bin(path: str, dtype, row: int) -> np.ndarray:
    try:
        size = os.path.getsize(path)
        if size == 0 or size % (np.dtype(dtype).itemsize * row):
            raise GoldenFileError(f"{path}: {size} bytes is not a whole number of rows of {row} "
                                  f"{np.dtype(dtype).name} values")
        return np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(-1, row)
    except OSError as err:
        raise GoldenFileError(f"{path}: cannot read it ({err.strerror or err})") from err


def _raw_rows(path: str, logits: np.ndarray, reference: golden.Golden, token_ids) -> Rows:
    """Place R rows of raw logits on A's positions: with a token-id file, the rows end at its last token
    (llama-debug saves the last prompt position); else all T positions when R == T, or else the rows end at
    A's last prompt position."""
    n_rows, width = logits.shape
    n_pos, vocab = reference.logits.shape
    if width != vocab:
        raise GoldenFileError(f"{path}: rows of {width} logits, but the reference's vocabulary has {vocab}")
    if token_ids is not None:
        token_ids = token_ids.reshape(-1)
        if len(token_ids) > n_pos or not np.array_equal(token_ids, reference.token_ids[: len(token_ids)]):
            raise GoldenFileError(f"{path}: its token ids ({path[:-4]}-tokens.bin) are not the reference's first "
                                  f"ones ({_first_difference(reference.token_ids, token_ids)})")
        end = len(token_ids)
    else:
        end = n_pos if n_rows == n_pos else reference.n_prompt
    if n_rows > end:
        raise GoldenFileError(f"{path}: {n_rows} rows of logits, but only {end} positions to compare them with")
    return Rows({golden.LOGITS: logits}, np.arange(end - n_rows, end), {"engine": "raw logits"}, token_ids)


def _first_difference(a, b) -> str:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    if len(diff):
        i = int(diff[0])
        return f"first at position {i}: {int(a[i])} vs {int(b[i])}"
    return f"{len(a)} vs {len(b)} tokens"


# -------------------------------------------------------------------------------------------- statistics
def nmse(a: np.ndarray, b: np.ndarray) -> float:
    """sum (a-b)^2 / sum a^2 in float64 (a is the reference); 0 for equal arrays, inf when a is all zeros,
    nan or inf when either holds a NaN or an infinity."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, inf**2: the nan or inf is the answer
        err = float(np.sum((a64 - b64) ** 2))
        ref = float(np.sum(a64**2))
    if err == 0:
        return 0.0
    return err / ref if ref else math.inf


def tensor_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """Bitwise equal elements (both NaN counts as equal), ULP distances, NMSE, max absolute error (nan or inf
    when either side holds a NaN or an infinity: never a 0 that hides them) and each side's non-finite count."""
    if a.shape != b.shape:
        raise GoldenFileError(f"shapes differ: {list(a.shape)} vs {list(b.shape)}")
    same = a.view(np.uint32) == b.view(np.uint32)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore", over="ignore"):
        abs_err = np.abs(a.astype(np.float64) - b.astype(np.float64))
        max_abs_err = float(np.max(abs_err, initial=0.0))  # np.max, not nanmax: a NaN makes it nan
    ulps = ulp_distance(a, b)[~both_nan]
    return {"shape": list(a.shape), "n": int(a.size), "bitwise_equal": int(np.count_nonzero(same | both_nan)),
            "max_ulp": int(ulps.max(initial=0)), "median_ulp": float(np.median(ulps)) if ulps.size else 0.0,
            "nmse": nmse(a, b), "max_abs_err": max_abs_err,
            "nonfinite_a": int(a.size - np.count_nonzero(np.isfinite(a))),
            "nonfinite_b": int(b.size - np.count_nonzero(np.isfinite(b)))}


def logits_stats(a: np.ndarray, b: np.ndarray, positions: np.ndarray) -> dict:
    """Per position: top-1 of each, shared top-5 entries, NMSE, max ULP."""
    top1_a, top1_b = np.argmax(a, axis=-1), np.argmax(b, axis=-1)
    k = min(TOP_K, a.shape[1])
    top_a, top_b = np.argpartition(-a, k - 1, axis=-1)[:, :k], np.argpartition(-b, k - 1, axis=-1)[:, :k]
    rows = []
    for r, pos in enumerate(positions):
        rows.append({"position": int(pos), "top1_a": int(top1_a[r]), "top1_b": int(top1_b[r]),
                     "top5_overlap": len(set(top_a[r].tolist()) & set(top_b[r].tolist())),
                     "nmse": nmse(a[r], b[r]), "max_ulp": int(ulp_distance(a[r], b[r]).max())})
    differ = [row["position"] for row in rows if row["top1_a"] != row["top1_b"]]
    return {"positions": len(rows), "top1_agree": len(rows) - len(differ),
            "first_top1_difference": differ[0] if differ else None,
            "top5_overlap_mean": float(np.mean([row["top5_overlap"] for row in rows])),
            "top5_overlap_min": min(row["top5_overlap"] for row in rows), "per_position": rows}


def _check_threshold(nmse_threshold) -> None:
    if isinstance(nmse_threshold, bool) or not isinstance(nmse_threshold, (int, float)) or not nmse_threshold >= 0:
        raise UsageError(f"nmse_threshold must be 0 or more, got {nmse_threshold!r}")  # (NaN too)


def compare(a: golden.Golden, b: Rows, nmse_threshold: float = DEFAULT_NMSE_THRESHOLD) -> dict:
    """The comparison report (a dict, JSON-ready) of reference `a` and `b`."""
    _check_threshold(nmse_threshold)
    names = [name for name in a.tensors if name in b.tensors]  # A's forward order
    stats = {}
    for name in names:
        try:
            stats[name] = tensor_stats(a.tensors[name][b.positions], b.tensors[name])
        except GoldenFileError as err:
            raise GoldenFileError(f"tensor {name}: {err}") from None
    first_bits = next((n for n in names if stats[n]["bitwise_equal"] < stats[n]["n"]), None)
    first_nmse = next((n for n in names if not stats[n]["nmse"] <= nmse_threshold), None)
    return {
        "a": {k: a.metadata.get(k) for k in ("engine", "engine_version", "spec_version", "model_sha256")},
        "b": {k: b.metadata.get(k) for k in ("engine", "engine_version", "spec_version", "model_sha256")},
        "same_model_file": a.metadata.get("model_sha256") == b.metadata.get("model_sha256"),
        "positions": b.positions.tolist(),
        "tensors": stats,
        "only_in_a": [n for n in a.tensors if n not in b.tensors],
        "only_in_b": [n for n in b.tensors if n not in a.tensors],
        "logits": logits_stats(a.logits[b.positions], b.tensors[golden.LOGITS], b.positions),
        "nmse_threshold": nmse_threshold,
        "first_bits_differ": first_bits,
        "first_over_nmse_threshold": first_nmse,
    }


def compare_files(path_a, path_b, nmse_threshold: float = DEFAULT_NMSE_THRESHOLD) -> dict:
    _check_threshold(nmse_threshold)  # before the files are read
    reference = golden.load(path_a)
    report = compare(reference, load_other(path_b, reference), nmse_threshold)
    report["a"]["path"], report["b"]["path"] = os.fspath(path_a), os.fspath(path_b)
    return report


def failures(report: dict, *, nmse_max: float | None = None, ulp_max: int | None = None,
             bitwise: bool = False) -> list[str]:
    """The thresholds a report breaks (empty: it passes); one line each, naming the first tensor."""
    out = []
    for name, s in report["tensors"].items():
        if bitwise and s["bitwise_equal"] < s["n"]:
            out.append(f"{name}: {s['n'] - s['bitwise_equal']} of {s['n']} elements differ in their bits")
        if ulp_max is not None and s["max_ulp"] > ulp_max:
            out.append(f"{name}: max ULP {s['max_ulp']} > {ulp_max}")
        if nmse_max is not None and not s["nmse"] <= nmse_max:
            out.append(f"{name}: NMSE {s['nmse']:.3g} > {nmse_max:g}")
    return out


# ------------------------------------------------------------------------------------------------ output
def format_report(report: dict) -> str:
    lines = [f"A: {_who(report['a'])}", f"B: {_who(report['b'])}"]
    if not report["same_model_file"]:
        lines.append("note: the files do not record the same model file (sha256)")
    lines.append(f"{'tensor':<16} {'shape':>12} {'bitwise equal':>17} {'max ULP':>11} {'median ULP':>10} "
                 f"{'NMSE':>10} {'max abs err':>12}")
    for name, s in report["tensors"].items():
        lines.append(f"{name:<16} {'x'.join(map(str, s['shape'])):>12} {s['bitwise_equal']:>8}/{s['n']:<8} "
                     f"{s['max_ulp']:>11} {s['median_ulp']:>10g} {s['nmse']:>10.3g} {s['max_abs_err']:>12.4g}")
    for name, s in report["tensors"].items():
        if s["nonfinite_a"] or s["nonfinite_b"]:
            lines.append(f"{name}: non-finite values (NaN or inf): A {s['nonfinite_a']}, B {s['nonfinite_b']} "
                         f"of {s['n']}")
    lg = report["logits"]
    first = lg["first_top1_difference"]
    lines.append(f"logits: top-1 agrees at {lg['top1_agree']}/{lg['positions']} positions"
                 f"{'' if first is None else f' (first difference at position {first})'}; "
                 f"top-5 overlap mean {lg['top5_overlap_mean']:.2f}, min {lg['top5_overlap_min']}")
    lines.append(f"first tensor whose bits differ: {report['first_bits_differ'] or 'none'}; first over NMSE "
                 f"{report['nmse_threshold']:g}: {report['first_over_nmse_threshold'] or 'none'}")
    return "\n".join(lines)


def _who(side: dict) -> str:
    detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in side.items()
                       if v and k in ("engine_version", "spec_version"))
    sha = side.get("model_sha256")
    return f"{side.get('path', '')} ({side.get('engine')}{', ' + detail if detail else ''}" \
           f"{', model ' + sha[:12] if sha else ''})"


def plot(report: dict, fig=None):
    """NMSE per tensor in forward order (left) and per position of the logits (right), log scale; exact zeros
    drawn at the bottom of the axis. Returns a matplotlib Figure (no pyplot: safe in scripts and notebooks)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("plots need matplotlib: pip install matplotlib") from None
    fig = fig or Figure(figsize=(11, 4), layout="constrained")
    ax_t, ax_p = fig.subplots(1, 2)
    names = list(report["tensors"])
    _log_points(ax_t, range(len(names)), [report["tensors"][n]["nmse"] for n in names], "o-")
    step = max(1, len(names) // 12)
    ax_t.set_xticks(range(0, len(names), step), names[::step], rotation=60, ha="right", fontsize=7)
    ax_t.set_title("NMSE per tensor (forward order)")
    rows = report["logits"]["per_position"]
    positions = [r["position"] for r in rows]
    _log_points(ax_p, positions, [r["nmse"] for r in rows], ".-")
    wrong = [r for r in rows if r["top1_a"] != r["top1_b"]]
    if wrong:
        ax_p.plot([r["position"] for r in wrong], [max(r["nmse"], _floor(rows)) for r in wrong], "rx",
                  label="top-1 differs")
        ax_p.legend()
    ax_p.set_xlabel("position")
    ax_p.set_title("NMSE of the logits per position")
    return fig


def _floor(rows) -> float:
    values = [r["nmse"] for r in rows if r["nmse"] > 0 and math.isfinite(r["nmse"])]
    return min(values) / 10 if values else 1e-20


def _log_points(ax, xs, values, style) -> None:
    floor = _floor([{"nmse": v} for v in values])
    ax.plot(list(xs), [v if v > 0 else floor for v in values], style)
    ax.set_yscale("log")
    ax.set_ylabel(f"NMSE (0 drawn at {floor:.0e})" if 0 in values else "NMSE")


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- command
def add_arguments(p) -> None:
    p.add_argument("a", metavar="A", help="reference golden file (refspec dump)")
    p.add_argument("b", metavar="B", help="golden file of the same token ids, or raw float32 logits (.npy, or "
                   ".bin as llama-debug --save-logits writes them, with its -tokens.bin beside it)")
    p.add_argument("--nmse-max", type=float, metavar="X", help="fail (exit 1) when a tensor's NMSE exceeds X")
    p.add_argument("--ulp-max", type=int, metavar="N", help="fail when a tensor's max ULP distance exceeds N")
    p.add_argument("--bitwise", action="store_true", help="fail unless every tensor is bitwise equal")
    p.add_argument("--json", action="store_true", help="print one JSON object (the report, failures included)")
    p.add_argument("--plot", metavar="FILE.png", help="draw NMSE per tensor and per position into FILE.png")


def check_plot_path(path: str) -> None:
    """UsageError unless `path` names a file matplotlib writes as given: not a directory (matplotlib would write
    DIR.png beside it), in a directory that exists, with an extension of a format it knows (else: its exception, or
    .png appended). Checked before the comparison runs."""
    checks.output_file(path, "--plot")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("plots need matplotlib: pip install matplotlib") from None
    formats = sorted(Figure().canvas.get_supported_filetypes())
    if os.path.splitext(path)[1].lower().lstrip(".") not in formats:
        raise UsageError(f"--plot {path}: the file name must end in one of " + ", ".join(f".{f}" for f in formats))


def run(args) -> int:
    for flag, value in (("--nmse-max", args.nmse_max), ("--ulp-max", args.ulp_max)):
        if value is not None and not value >= 0:
            raise UsageError(f"{flag} must be 0 or more, got {value}")
    if args.plot:
        check_plot_path(args.plot)
    threshold = args.nmse_max if args.nmse_max is not None else DEFAULT_NMSE_THRESHOLD
    report = compare_files(args.a, args.b, threshold)
    failed = failures(report, nmse_max=args.nmse_max, ulp_max=args.ulp_max, bitwise=args.bitwise)
    if args.plot:
        try:
            plot(report).savefig(args.plot, dpi=110)
        except OSError as err:
            raise UsageError(f"cannot write {args.plot}: {err.strerror or err}") from err
    if args.json:
        print(json.dumps(_json_ready({**report, "failures": failed, "pass": not failed})))
    else:
        print(format_report(report))
        for line in failed[:20]:
            print(f"FAIL {line}")
        if len(failed) > 20:
            print(f"FAIL ... and {len(failed) - 20} more")
        print("PASS" if not failed else f"FAIL: {len(failed)} threshold(s) broken")
    return 1 if failed else 0
