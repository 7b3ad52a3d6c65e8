"""Split matrix–vector products (matl.aggregation.products): the same values as one PyTorch call,
bit for bit the same whatever the thread count, and the single call below the size threshold."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import torch

from matl.aggregation import products
from matl.aggregation.products import (
    CHUNKS,
    chunk_bounds,
    map_chunks,
    parallel,
    row_dots,
    weighted_sum,
)


@pytest.fixture
def always_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split every CPU product, however small (the threshold is a speed setting only)."""
    monkeypatch.setattr(products, "PARALLEL_MIN_ELEMENTS", 0)


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("total", [0, 1, 3, 4, 5, 17, 1000])
def test_chunk_bounds_cover_the_range_in_order(total: int) -> None:
    bounds = chunk_bounds(total)
    covered = [i for a, b in bounds for i in range(a, b)]
    assert covered == list(range(total))
    assert len(bounds) == min(CHUNKS, total)
    sizes = [b - a for a, b in bounds]
    assert not sizes or max(sizes) - min(sizes) <= 1


def test_chunk_bounds_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="parts"):
        chunk_bounds(10, 0)
    with pytest.raises(ValueError, match="total"):
        chunk_bounds(-1)


def test_small_products_are_the_single_call() -> None:
    g = torch.Generator().manual_seed(0)
    x, v, w = torch.randn(7, 5, generator=g), torch.randn(5, generator=g), torch.randn(7)
    assert not parallel(x)
    assert torch.equal(row_dots(x, v), x @ v)
    assert torch.equal(weighted_sum(w, x), w @ x)


@pytest.mark.usefixtures("always_split")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_products_match_one_call(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 301, generator=g, dtype=dtype)
    v, w = torch.randn(301, generator=g, dtype=dtype), torch.randn(37, generator=g, dtype=dtype)
    assert parallel(x)
    dots, total = row_dots(x, v), weighted_sum(w, x)
    assert dots.dtype == dtype and dots.shape == (37,)
    assert total.dtype == dtype and total.shape == (301,)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(dots, x @ v, rtol=tol, atol=tol)
    assert torch.allclose(total, w @ x, rtol=tol, atol=tol)


@pytest.mark.usefixtures("always_split", "threads")
def test_split_results_do_not_depend_on_the_thread_count() -> None:
    g = torch.Generator().manual_seed(2)
    x, v, w = torch.randn(64, 999, generator=g), torch.randn(999, generator=g), torch.rand(64)
    torch.set_num_threads(1)
    one = (row_dots(x, v), weighted_sum(w, x))
    torch.set_num_threads(2)
    two = (row_dots(x, v), weighted_sum(w, x))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("split", [False, True])
def test_map_chunks_returns_results_in_chunk_order(split: bool) -> None:
    torch.set_num_threads(2)
    seen = map_chunks(10, lambda a, b: (a, b, torch.is_grad_enabled()), split=split)
    expected = chunk_bounds(10) if split else [(0, 10)]
    assert [(a, b) for a, b, _ in seen] == expected
    assert not any(grad for _, _, grad in seen)


def test_inputs_are_not_modified_and_gradients_are_not_tracked(always_split: None) -> None:
    x = torch.randn(9, 13, requires_grad=True)
    v, w = torch.randn(13), torch.randn(9)
    before = x.detach().clone()
    assert not row_dots(x, v).requires_grad
    assert not weighted_sum(w, x).requires_grad
    assert torch.equal(x.detach(), before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.usefixtures("always_split", "threads")
def test_a_forked_child_builds_its_own_pool() -> None:
    torch.set_num_threads(2)
    x, v = torch.randn(16, 8), torch.randn(8)
    expected = row_dots(x, v)  # the parent's pool now exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's worker threads do not exist here
        signal.alarm(30)  # a child waiting on the parent's dead pool is killed, not left hanging
        ok = torch.equal(row_dots(x, v), expected)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
