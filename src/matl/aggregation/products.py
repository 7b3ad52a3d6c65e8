r"""Matrix–vector products over a round's ``(n, d)`` update matrix, split over the CPU cores.

Two products recur in the trust engine: the dot product of every update with one direction,
:math:`(X v)_i = u_i^\top v` (PoGQ's first-order gain, the consensus cosines, the peer signal's
projection on the centre), and a weighted sum of the updates, :math:`w^\top X = \sum_i w_i u_i`
(the consensus direction, the aggregate itself). PyTorch computes both with one BLAS
matrix–vector call, which runs on **one** thread on CPU: at :math:`n = 1000`, :math:`d = 10^5`
float32 (400 MB) it took 15–16 ms on the 2-core development host, where a reduction over the same
matrix that uses both cores (``torch.linalg.vector_norm(x, dim=1)``) took 7 ms.

Here a large product is cut into :data:`CHUNKS` fixed contiguous pieces — row blocks for
:math:`Xv` (each row's dot product is computed whole within one piece), column blocks for
:math:`w^\top X` (each output coordinate is one piece's sum over all rows) — and the pieces run
on a small shared thread pool (PyTorch releases the GIL inside its kernels), at most
:func:`torch.get_num_threads` at a time. Measured on that host (best of 9 calls):
8.5–12 ms for either product against 15–16 ms for the single call, depending on the load of the
shared host.
:func:`map_chunks` gives the same split to callers that fuse several products over a row block
(PoGQ's fast path).

The split depends only on the shape, never on the thread count, so a result is the same bit for
bit whether the pieces ran side by side or (with one thread) one after another; it may differ from
the single call in the last bits, as any change of BLAS kernel may. Below
:data:`PARALLEL_MIN_ELEMENTS` entries (16 MiB of float32) and off the CPU, the product is the
single PyTorch call, unchanged: a matrix that fits the cache gains nothing from the hand-off
(measured, ``x @ v`` against the split: 3.8 M entries 0.27 against 0.48 ms; 7.6 M entries 1.19
against 0.87 ms; 15 M entries 2.6 against 1.75 ms).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import TypeVar

import torch

__all__ = [
    "CHUNKS",
    "PARALLEL_MIN_ELEMENTS",
    "chunk_bounds",
    "map_chunks",
    "parallel",
    "row_dots",
    "weighted_sum",
]

R = TypeVar("R")

#: Number of pieces a large product is cut into (fixed, so results do not depend on the cores).
CHUNKS = 4
#: Products over fewer entries than this run as one PyTorch call.
PARALLEL_MIN_ELEMENTS = 1 << 22


def chunk_bounds(total: int, parts: int = CHUNKS) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(total)`` with sizes that
    differ by at most one (fewer, non-empty ones when ``total < parts``)."""
    if total < 0 or parts < 1:
        raise ValueError(f"chunk_bounds needs total >= 0 and parts >= 1, got {total}, {parts}")
    parts = max(1, min(parts, total))
    edges = [(i * total) // parts for i in range(parts + 1)]
    return [(a, b) for a, b in pairwise(edges) if b > a]


def parallel(x: torch.Tensor) -> bool:
    """Whether products over ``x`` are split into chunks: a CPU tensor of at least
    :data:`PARALLEL_MIN_ELEMENTS` entries (whatever the thread count, so that the result does
    not depend on it; with one thread the chunks simply run one after another)."""
    return x.device.type == "cpu" and x.numel() >= PARALLEL_MIN_ELEMENTS


def map_chunks(total: int, fn: Callable[[int, int], R], *, split: bool) -> list[R]:
    """``[fn(start, stop) for each chunk]`` in chunk order: over :func:`chunk_bounds` ``(total)``
    when ``split`` (on a thread pool when PyTorch has more than one thread, else one after
    another), else one call ``fn(0, total)``. ``fn`` must write only to
    its own range of any shared output; it runs under ``torch.no_grad``."""

    def call(bounds: tuple[int, int]) -> R:
        with torch.no_grad():
            return fn(*bounds)

    if not split or total < 2:
        return [call((0, total))]
    chunks = chunk_bounds(total)
    if torch.get_num_threads() < 2:
        return [call(bounds) for bounds in chunks]
    return list(_pool().map(call, chunks))


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The shared worker pool, sized ``min(torch.get_num_threads(), CHUNKS)`` (rebuilt when the
    thread setting changes, and after a fork: a child must not reuse its parent's threads)."""
    global _POOL, _POOL_SIZE
    size = max(1, min(torch.get_num_threads(), CHUNKS))
    with _POOL_LOCK:
        if _POOL is None or size != _POOL_SIZE:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=size, thread_name_prefix="matl-products")
            _POOL_SIZE = size
        return _POOL


def _forget_pool() -> None:
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def row_dots(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x @ v``: the ``(n,)`` dot products of the rows of the ``(n, d)`` ``x`` with the ``(d,)``
    ``v`` (same dtype), in ``x``'s dtype, split by rows (see the module docstring)."""
    x, v = x.detach(), v.detach()
    if not parallel(x):
        with torch.no_grad():
            return x @ v
    out = torch.empty(x.shape[0], dtype=torch.result_type(x, v))

    def piece(start: int, stop: int) -> None:
        torch.mv(x[start:stop], v, out=out[start:stop])

    map_chunks(x.shape[0], piece, split=True)
    return out


def weighted_sum(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""``w @ x``: :math:`\sum_i w_i x_i` for the ``(n,)`` weights ``w`` and ``(n, d)`` ``x``
    (same dtype), in ``x``'s dtype, split by columns (see the module docstring)."""
    w, x = w.detach(), x.detach()
    if not parallel(x):
        with torch.no_grad():
            return w @ x
    out = torch.empty(x.shape[1], dtype=torch.result_type(w, x))

    def piece(start: int, stop: int) -> None:
        torch.mv(x[:, start:stop].T, w, out=out[start:stop])

    map_chunks(x.shape[1], piece, split=True)
    return out
