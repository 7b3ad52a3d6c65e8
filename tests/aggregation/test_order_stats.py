"""Tests for :mod:`matl.aggregation.order_stats`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from matl.aggregation.order_stats import (
    OrderStats,
    Workspace,
    column_ranks,
    column_runs,
    host_array,
    map_column_ranges,
    midpoint,
    run_layout,
    sort_rows,
)

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16])
def test_sort_rows(dtype: torch.dtype) -> None:
    tile = torch.tensor([[3.0, -1.0, 2.0], [0.0, 0.0, -5.0]], dtype=dtype)
    srt = sort_rows(tile)
    assert srt.dtype == dtype
    assert torch.equal(srt, torch.sort(tile, dim=1).values)
    assert torch.equal(tile, torch.tensor([[3.0, -1.0, 2.0], [0.0, 0.0, -5.0]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 7, 250, 513, 1000])
def test_column_ranks_are_the_order_statistics(dtype: torch.dtype, m: int) -> None:
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m + 5, 37, generator=gen, dtype=dtype)
    x[:, 3] = 1.5  # a column of ties
    rows = torch.randperm(m + 5, generator=gen)[:m]
    ranks = sorted({0, (m - 1) // 2, m // 2, m - 1})
    got = column_ranks(x, ranks, rows=rows)
    expected = torch.sort(x[rows], dim=0).values[ranks].numpy()
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected)
    whole = column_ranks(x, [0, m + 4])
    assert np.array_equal(whole, torch.stack([x.min(dim=0).values, x.max(dim=0).values]).numpy())


def test_column_ranks_threaded_blocks_equal_torch() -> None:
    # Above the parallel threshold the blocks run on a thread pool; the result is the same.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 70_000, generator=gen)
    assert np.array_equal(column_ranks(x, [31])[0], torch.kthvalue(x, 32, dim=0).values.numpy())


def test_column_ranks_rejects_ranks_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        column_ranks(torch.zeros(3, 4), [3])
    with pytest.raises(ValueError, match="outside"):
        column_ranks(torch.zeros(3, 4), [0], rows=torch.tensor([], dtype=torch.int64))


# Row counts around the run-layout thresholds: one run up to 2 KiB per row (512 float32 / 256
# float64 values), two runs up to 4 KiB, one long run beyond.
SIZES = [1, 2, 3, 7, 100, 255, 256, 257, 511, 512, 513, 514, 999, 1000, 1023, 1024, 1025]


def _columns(m: int, dtype: torch.dtype, ties: bool, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + m)
    x = torch.randn(m, 29, generator=gen, dtype=dtype)
    return torch.round(x * 2) if ties else x  # rounding: many equal values per column


def test_run_layout() -> None:
    assert run_layout(512, 4) == (1, 512)
    assert run_layout(513, 4) == (2, 257)
    assert run_layout(1000, 4) == (2, 500)
    assert run_layout(1024, 4) == (2, 512)
    assert run_layout(1025, 4) == (1, 1025)
    assert run_layout(256, 8) == (1, 256)
    assert run_layout(257, 8) == (2, 129)
    assert run_layout(1000, 8) == (1, 1000)


def test_column_runs_layout_and_filler() -> None:
    block = np.arange(2 * 1001, dtype=np.float32).reshape(1001, 2)  # 1001 rows: runs of 501, 500
    runs = column_runs(block, fill=-7.0)
    assert runs.shape == (2, 2, 501)
    assert runs.flags.c_contiguous
    np.testing.assert_array_equal(runs[0].reshape(-1)[:1001], block[:, 0])
    np.testing.assert_array_equal(runs[1].reshape(-1)[:1001], block[:, 1])
    assert runs[0, 1, 500] == -7.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("m", SIZES)
def test_selected_ranks_are_the_sorted_values(m: int, dtype: torch.dtype, ties: bool) -> None:
    x = _columns(m, dtype, ties)
    block = x.numpy()
    before = block.copy()
    stats = OrderStats.of_columns(block)
    ranks = list(range(m))
    expected = torch.sort(x, dim=0).values.numpy()
    np.testing.assert_array_equal(stats.select(ranks), expected)
    np.testing.assert_array_equal(block, before)  # the input is not modified
    # the median as torch.median gives it (the lower middle for even m) and np.partition's kth
    lower = stats.select([(m - 1) // 2])[0]
    np.testing.assert_array_equal(lower, torch.median(x, dim=0).values.numpy())
    kth = m // 3
    np.testing.assert_array_equal(stats.select([kth])[0], np.partition(block, kth, axis=0)[kth])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [5, 300, 600, 1000, 1100])
def test_sum_of_ranks_sums_only_the_ranks(m: int, dtype: torch.dtype) -> None:
    x = _columns(m, dtype, ties=True)
    x[0] = 1e30  # huge values outside the ranks leave no trace
    x[1] = -1e30
    stats = OrderStats.of_columns(x.numpy())
    srt = torch.sort(x.double(), dim=0).values
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for lo, hi in [(2, m - 2), (m // 3, m - m // 3), (m // 2, m // 2 + 1), (3, 3)]:
        total = stats.sum_of_ranks(lo, hi)
        assert total.dtype == x.numpy().dtype
        np.testing.assert_allclose(total, srt[lo:hi].sum(dim=0).numpy(), rtol=tol, atol=tol)


def test_order_stats_reject_bad_ranks() -> None:
    stats = OrderStats.of_columns(np.zeros((600, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="ranks must lie in"):
        stats.select([600])
    with pytest.raises(ValueError, match="lo <= hi"):
        stats.sum_of_ranks(5, 4)
    with pytest.raises(ValueError, match="do not lay out"):
        OrderStats(np.zeros((3, 1, 600), dtype=np.float32), 600)


def test_midpoint_stays_between_and_survives_overflow() -> None:
    big = np.finfo(np.float32).max
    lo = np.array([1.0, -big, big, 0.1], dtype=np.float32)
    hi = np.array([2.0, big, big, 0.3], dtype=np.float32)
    got = midpoint(lo, hi)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got[:3], np.array([1.5, 0.0, big], dtype=np.float32))
    assert got[3] == (lo[3] + hi[3]) * np.float32(0.5)
    assert bool(np.all((lo <= got) & (got <= hi)))


def test_workspace_reuses_buffers() -> None:
    ws = Workspace()
    a = ws.get("a", (4, 5), np.float32)
    b = ws.get("a", (3, 5), np.float32)  # smaller: the same memory
    assert np.shares_memory(a, b)
    assert b.shape == (3, 5) and b.flags.c_contiguous
    c = ws.get("a", (3, 5), np.float64)  # another dtype: a new buffer
    assert not np.shares_memory(a, c)


@pytest.mark.parametrize("d", [1, 23, 70_000])
def test_column_ranges_cover_every_column_once_in_order(d: int) -> None:
    # 70 000 columns of 64 rows: above the threaded-path threshold, blocks on a thread pool.
    seen: list[tuple[int, int]] = []
    results = map_column_ranges(
        64, d, lambda start, stop, ws: (seen.append((start, stop)), start)[1]
    )
    assert results == sorted(results)
    spans = sorted(seen)
    assert spans[0][0] == 0 and spans[-1][1] == d
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_host_array_shares_cpu_memory_and_widens_half() -> None:
    x = torch.randn(3, 4)
    assert np.shares_memory(host_array(x), x.numpy())
    half = host_array(x.to(torch.float16))
    assert half.dtype == np.float32
    np.testing.assert_array_equal(half, x.to(torch.float16).float().numpy())
