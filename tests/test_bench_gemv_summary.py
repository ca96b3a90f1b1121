"""`refspec bench gemv`'s verdict on the issue's targets (no GPU: the summary of a report): each shape's line
says whether it met them and which it missed, the one-row bandwidth target counts only for large matrices, and
the first line is the overall verdict."""
from __future__ import annotations

from refspec.bench_gemv import TARGETS, _summary


def entry(n: int, k: int, rows: int, us: float, fraction: float = 0.5) -> dict:
    return {"n": n, "k": k, "rows": rows, "seconds": us * 1e-6, "production": True,
            "bytes": n * k * 34 // 32, "fraction_of_read": fraction}


def report(*entries: dict) -> dict:
    return {"results": list(entries) + [dict(entries[0], production=False, seconds=1.0)]}  # a variant: not judged


def test_each_shape_gets_its_own_verdict():
    small = (4096, 4096)  # 17.8 MB: its one-row bandwidth is no target
    big = (152064, 3584)  # 579 MB
    assert small[0] * small[1] < TARGETS["min_matrix_bytes"] < big[0] * big[1]
    s = _summary(report(entry(*small, 1, 5.0, 0.70), entry(*small, 8, 6.0), entry(*small, 16, 6.4),
                        entry(*big, 1, 136.0, 0.93), entry(*big, 8, 140.0), entry(*big, 16, 160.0)))
    assert not s["met"]
    assert s["shapes"] == [{"n": 4096, "k": 4096, "met": False, "missed": ["R=8"]},
                           {"n": 152064, "k": 3584, "met": True, "missed": []}]
    assert s["lines"][0] == "targets NOT met (met on 1 of 2 shapes):"
    assert s["lines"][1].endswith("R=8 1.20x (target 1.10x); R=16 1.28x (target 1.30x): missed (R=8)")
    assert "not a target" in s["lines"][1] and "not a target" not in s["lines"][2]
    assert s["lines"][2].endswith(": met")


def test_a_large_matrix_below_the_bandwidth_target_misses_it():
    s = _summary(report(entry(152064, 3584, 1, 136.0, 0.91), entry(152064, 3584, 8, 136.0),
                        entry(152064, 3584, 16, 136.0)))
    assert s["shapes"][0]["missed"] == ["R=1"] and not s["met"]
    s = _summary(report(entry(152064, 3584, 1, 136.0, 0.92), entry(152064, 3584, 16, 136.0 * 1.29)))
    assert s["met"] and s["lines"][0] == "targets met:"
