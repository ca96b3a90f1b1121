"""The tensor-core GEMV's host-side rules (GpuBackend._mma_config, _mma_grid) with a stand-in kernel, on any
machine: which mapping a row count and matrix take, and how many blocks a launch gets."""
import pytest

from refspec.gpu import GEMV_MMA, GEMV_MMA_STREAM_WAVES, GEMV_MMA_TALL, GpuBackend

SMS = 132


class StandInKernel:
    """resident_blocks answers `fit` blocks a multiprocessor for one-tile shared memory, `streamed_fit` for the
    streaming size (the larger); it records the calls, and refuses an occupancy question before the opt-in."""

    def __init__(self, fit: int, streamed_fit: int | None = None):
        self.fit, self.streamed_fit, self.allowed, self.calls = fit, streamed_fit or fit, 0, []

    def allow_shared(self, nbytes):
        self.calls.append(("allow", nbytes))
        self.allowed = max(self.allowed, nbytes)

    def resident_blocks(self, threads, shared):
        self.calls.append(("resident", shared))
        assert shared <= self.allowed or shared <= 48 * 1024, "occupancy asked before the opt-in"
        return self.fit if shared == min(s for op, s in self.calls if op == "allow") else self.streamed_fit


def backend(kernel) -> GpuBackend:
    be = object.__new__(GpuBackend)
    be._multiprocessors = SMS
    be._gemv_function = lambda config, rows: kernel
    return be


@pytest.mark.parametrize("rows", range(1, 17))
def test_mma_config_takes_tall_tiles_where_they_fit_at_once_or_stream(rows):
    kernel = StandInKernel(fit=1)
    be = backend(kernel)
    tall = 2 * 16  # weight rows of a tall tile
    for tiles, expected in ((1, GEMV_MMA_TALL), (SMS, GEMV_MMA_TALL), (SMS + 1, GEMV_MMA),
                            (GEMV_MMA_STREAM_WAVES * SMS, GEMV_MMA), (GEMV_MMA_STREAM_WAVES * SMS + 1, GEMV_MMA_TALL)):
        got = be._mma_config(rows, tiles * tall)
        assert got == (GEMV_MMA if rows <= 8 else expected), (rows, tiles)
    if rows > 8:
        assert kernel.calls[0] == ("allow", GEMV_MMA_TALL.shared_bytes(rows, one_tile=True))


def test_mma_grid_blocks():
    be = backend(None)
    rows, config = 8, GEMV_MMA
    one_tile, streamed = config.shared_bytes(rows, one_tile=True), config.shared_bytes(rows)
    both = StandInKernel(fit=2)  # the streaming size fits as often as a tile's: blocks may stream
    assert be._mma_grid(both, config, rows, 2 * SMS, None) == (2 * SMS, one_tile)  # one wave: a block a tile
    assert be._mma_grid(both, config, rows, 384, None) == (192, streamed)  # 1-2 waves: two tiles a block
    assert be._mma_grid(both, config, rows, 2 * SMS + 1, None) == (SMS + 1, streamed)
    assert be._mma_grid(both, config, rows, 4 * SMS, None) == (2 * SMS, streamed)  # 2 waves exactly
    assert be._mma_grid(both, config, rows, 4 * SMS + 1, None) == (2 * SMS, streamed)  # more: as many as fit
    assert be._mma_grid(both, config, rows, 5, 3) == (3, streamed)  # the tests' cap
    fewer = StandInKernel(fit=2, streamed_fit=1)  # streaming would cost a block a multiprocessor: never
    assert be._mma_grid(fewer, config, rows, 10 * SMS, None) == (10 * SMS, one_tile)
