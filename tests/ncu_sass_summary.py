"""What a kernel's instructions are, from ncu's source page (a tool, not a test; runs anywhere, no GPU): the CSV of
`ncu -i REPORT --page source --csv --print-source sass` (or cuda,sass; plain or .gz) holds every SASS instruction
with the times it executed and its warp stall samples. Prints the instructions executed by opcode (the share of all,
and of the stall samples), then the hot stretches: runs of instructions executed the same number of times (a loop's
body, a block's tail), the longest first, with their opcode mix. For a kernel bound by its issue slots (ncu's
"Issue Slots Busy" high, memory low), this says which instructions to remove:

    python3 tests/ncu_sass_summary.py SOURCE.csv[.gz] [TOP]

(tests/results/ncu_attention_scores_r8_pos4000_h200.txt was read off it.)
"""
from __future__ import annotations

import collections
import csv
import gzip
import sys


def opcode(source: str) -> str:
    """The instruction's opcode without its modifiers or predicate: "@!P1 LDG.E.CONSTANT R1, ..." -> "LDG"."""
    words = source.split()
    if not words:
        return ""
    return (words[1] if words[0].startswith("@") and len(words) > 1 else words[0]).split(".")[0]


def read(path: str) -> list[tuple[str, int, int]]:
    """(opcode, times executed, stall samples) of each SASS instruction in the CSV, in address order."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    start = next(i for i, row in enumerate(rows) if "Address" in row and "Source" in row)
    header = rows[start]
    source, executed = header.index("Source"), header.index("Instructions Executed")
    stalls = header.index("Warp Stall Sampling (All Samples)")
    out = []
    for row in rows[start + 1 :]:
        if len(row) <= max(source, executed, stalls) or not row[executed].strip().isdigit():
            continue
        out.append((opcode(row[source]), int(row[executed]), int(row[stalls] or 0)))
    return out


def main() -> None:
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 16
    code = read(path)
    total = sum(n for _, n, _ in code) or 1
    samples = sum(s for _, _, s in code) or 1
    by_op, stall_by_op = collections.Counter(), collections.Counter()
    for op, n, s in code:
        by_op[op] += n
        stall_by_op[op] += s
    print(f"{len(code)} instructions in the code, {total} executed, {samples} stall samples")
    for op, n in by_op.most_common(top):
        share, stalled = 100 * n / total, 100 * stall_by_op[op] / samples
        print(f"  {op:10s} {n:12d} {share:5.1f} % of executed, {stalled:5.1f} % of stalls")
    stretches = collections.defaultdict(collections.Counter)  # times executed -> opcodes of the instructions
    for op, n, _ in code:
        if n:
            stretches[n][op] += 1
    print("instructions executed the same number of times (a loop body, a tail), most executed first:")
    for n, ops in sorted(stretches.items(), key=lambda item: -item[0] * sum(item[1].values()))[:6]:
        count = sum(ops.values())
        mix = ", ".join(f"{op} {k}" for op, k in ops.most_common(8))
        print(f"  {count:5d} instructions x {n} times ({100 * n * count / total:4.1f} % of executed): {mix}")


if __name__ == "__main__":
    main()
