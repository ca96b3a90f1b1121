"""The timeline probe's arithmetic (tests/probe_timeline.py, a device tool): notes in any order become kernels in
launch order, each costing the next kernel's release minus its own, medians over replays, summed by kind."""
import numpy as np

from probe_timeline import block_starts, in_place

NAMES = [("rmsnorm_q8", [4], [256]), ("q8_gemv<1, 2, 1, 1, 1>", [768], [128]), ("q8_gemv<1, 2, 1, 1, 3>", [512], [128])]


def replay(t0, starts, releases, order):
    notes = np.array(list(zip(starts, releases)), dtype=np.int64) + t0
    return notes[order]


def test_spans_are_release_to_release_in_launch_order():
    notes = [replay(10_000, [0, 500, 2_000], [1_000, 3_000, 9_000], [2, 0, 1]),  # as the atomic adds ordered them
             replay(50_000, [0, 700, 2_500], [1_000, 3_400, 9_000], [1, 2, 0]),
             replay(90_000, [0, 600, 2_400], [1_000, 3_200, 9_200], [0, 1, 2])]
    kernels, by_kind = in_place(notes, NAMES)
    assert [k["name"] for k in kernels] == [n for n, _, _ in NAMES]
    assert [k["release_us"] for k in kernels] == [0.0, 2.2, 8.0]  # medians of 2.0 / 2.4 / 2.2 and 8.0 / 8.0 / 8.2
    assert [k["start_us"] for k in kernels] == [-1.0, -0.4, 1.4]
    assert [k["span_us"] for k in kernels] == [2.2, 6.0, None]  # medians of 2.0 / 2.4 / 2.2 and 6.0 / 5.6 / 6.0
    assert by_kind == {"rmsnorm_q8": {"count": 1, "total_us": 2.2}, "q8_gemv": {"count": 1, "total_us": 6.0}}


def test_names_are_left_out_where_the_counts_differ():
    notes = [replay(0, [0, 1, 2], [10, 20, 30], [0, 1, 2])]
    kernels, by_kind = in_place(notes, NAMES[:2])
    assert [k["name"] for k in kernels] == ["?"] * 3
    assert by_kind == {"?": {"count": 2, "total_us": 0.02}}


def test_marks_follow_their_note_and_count_from_its_release():
    """MARKS=1 columns ride with their note through the sort; a mark is reported (us after the kernel's release,
    median over replays) only where every replay took it (0: not taken)."""
    def with_marks(notes, marks):
        return np.concatenate([notes, np.array(marks, dtype=np.int64)], axis=1)

    first = replay(0, [0, 500, 2_000], [1_000, 3_000, 9_000], [0, 1, 2])
    second = replay(100_000, [0, 500, 2_000], [1_000, 3_400, 9_000], [2, 1, 0])
    notes = [with_marks(first, [[1_500, 2_000, 2_600, 0], [0] * 4, [0] * 4]),
             with_marks(second, [[0] * 4, [0] * 4, [101_700, 102_200, 102_800, 0]])]  # the rmsnorm's row is last here
    kernels, _ = in_place(notes, NAMES)
    assert kernels[0]["marks_us"] == [0.6, 1.1, 1.7]  # medians of 0.5 / 0.7, 1.0 / 1.2, 1.6 / 1.8
    assert "marks_us" not in kernels[1] and "marks_us" not in kernels[2]
    notes[1][2, 3] = 0  # one replay without mark 1
    kernels, _ = in_place(notes, NAMES)
    assert kernels[0]["marks_us"] == [0.6, 1.7]


def blocks_of(grid, sm_block_start_release):
    return [[grid, (sm << 32) | block, start, release] for sm, block, start, release in sm_block_start_release]


def test_block_starts_count_from_the_kernel_before_and_follow_block_zero():
    """BLOCKS=1 notes (in any order; %gridid values say nothing of it) become kernels in the order of their block
    0's release; each kernel's blocks' first / median / last start count from the release of the kernel before (its
    block 0's), with the spread of its releases and its blocks and multiprocessors; medians over replays."""
    first = np.array(blocks_of(70, [(3, 0, 1_500, 3_000), (4, 1, 2_500, 3_000)])  # the third kernel
                     + blocks_of(20, [(1, 1, 600, 1_000), (0, 0, 500, 1_000), (1, 2, 700, 1_100)])
                     + blocks_of(90, [(5, 0, 100, 200), (5, 1, 150, 200)]), dtype=np.int64)
    second = first.copy()
    second[:, 2:] += 50_000
    second[1, 2] += 200  # the third kernel's block 1 starts later in this replay
    out = block_starts([first, second[::-1]], 3)
    assert out[0] is None  # no kernel before the first
    assert out[1] == {"start_us": [0.3, 0.4, 0.5], "release_spread_us": 0.1, "blocks": 3, "sms": 2}
    assert out[2] == {"start_us": [0.5, 1.05, 1.6], "release_spread_us": 0.0, "blocks": 2, "sms": 2}
    assert len(block_starts([first, second], 2)) == 2
