"""Progress lines for work that reads more bytes than this machine holds in memory: a model larger than memory
runs from its memory-mapped file, so loading it and every forward pass read the weights from disk again, and
take minutes. Lines go to the `log` callable (stderr in the CLI), at most one per `seconds`."""
from __future__ import annotations

import os
import time


def physical_memory() -> int:
    """Bytes of RAM (a very large number where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def larger_than_memory(n_bytes: int) -> bool:
    """Whether n_bytes of weights will not stay in the page cache (80 %: the rest of the system needs some)."""
    return n_bytes > 0.8 * physical_memory()


class ByteProgress:
    """`advance(n)` after each n bytes of a job of `total` bytes per round (a load is one round, decoding one
    round per forward pass); a line says the bytes done, the rate and how far the current round is."""

    def __init__(self, total: int, label: str, log, seconds: float = 10.0):
        self.total, self.label, self.log, self.seconds = max(1, total), label, log, seconds
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, n_bytes: int) -> None:
        self.done += n_bytes
        now = time.monotonic()
        if now - self.last < self.seconds:
            return
        self.last = now
        rounds, in_round = divmod(self.done - 1, self.total)  # a round's last byte ends it: 100 %, not 0 %
        where = f"{100 * (in_round + 1) / self.total:.0f} % of {self.total / 1e9:.1f} GB"
        if rounds:
            where = f"round {rounds + 1}, {where}"
        self.log(f"refspec: {self.label}: {where}; {self.done / 1e9:.1f} GB in {now - self.start:.0f} s "
                 f"({self.done / 1e9 / (now - self.start):.2f} GB/s)")
