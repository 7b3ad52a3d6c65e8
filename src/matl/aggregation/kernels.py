r"""Compiled row kernels: one read of each update row for several results at once.

The trust engine's cost at scale is memory traffic: at :math:`n = 1000` clients and :math:`d =
10^5` parameters the float32 update matrix is 400 MB, and every pass over it costs about as much
as a row-norm pass (7–11 ms on the 2-core development host). PyTorch runs one operation per pass
and cannot keep a row in cache between operations, so the round's count sketch
(:mod:`matl.trust.sketch`: a signed multiply, a reduction and a scatter) cost 30–40 ms and the row
norms another 7–11 ms. The kernels here are compiled with Numba (Lam, Pitrou, Seibert 2015,
"Numba: a LLVM-based Python JIT compiler") and read each row once while it sits in the core's
cache:

* :func:`sketch_and_norms` — the round's count sketch and the float64 row norms together;
* :func:`sketch_norms_dots` — both, and every row's dot product with one vector (peer
  comparison's centre, :meth:`~matl.trust.peer.PeerSignal.prepare`), summed in stripes
  (:func:`striped_dots`);
* :func:`sketch_norms_gain` and :func:`float64_dots` — PoGQ's fast path: every row's dot
  product with the validation gradient, summed in float64 (see
  :meth:`~matl.trust.quality.PoGQSignal._fast`).

Rows are cut into the fixed chunks of :mod:`matl.aggregation.products` and the chunks run on its
thread pool (the kernels release the GIL), so a result does not depend on the thread count. Sums
within a row are accumulated in float64, but for two that add at most 32 terms in the input's
dtype first: the sketch's runs (as PyTorch's path does) and the lanes of :func:`striped_dots`. Compilation happens on the first call of each input dtype (about a second) and is
cached on disk.

Measured (best of 9, :math:`n = 1000, d = 10^5`, float32, 2 cores): sketch and norms together
15–17 ms against 36 + 11 ms for PyTorch's two passes; one dot product per row in the same pass adds
about 4 ms.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from matl.aggregation.products import map_chunks, parallel

#: LLVM's fast-math flags minus ``nnan`` and ``ninf``: sums may be reassociated (vectorised), but a
#: comparison with NaN keeps its meaning (a NaN product is never taken for a negative one).
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

__all__ = [
    "float64_dots",
    "kernel_dtype",
    "row_norms",
    "sketch_and_norms",
    "sketch_norms_dots",
    "sketch_norms_gain",
    "striped_dots",
]


def kernel_dtype(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x``: a 2-D CPU float32 or float64 tensor whose rows are
    contiguous (any other input takes the PyTorch path, which computes the same quantities up to
    rounding)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.ndim == 2
        and (x.shape[1] <= 1 or x.stride(1) == 1)
    )


@njit(nogil=True, fastmath=_FAST, cache=True)
def _norm(row: np.ndarray) -> float:  # pragma: no cover - compiled
    total = 0.0
    for j in range(row.shape[0]):
        v = np.float64(row[j])
        total += v * v
    return float(np.sqrt(total))


@njit(nogil=True, fastmath=_FAST, cache=True)
def _norm_rows(
    x: np.ndarray, norms: np.ndarray, start: int, stop: int
) -> None:  # pragma: no cover - compiled; exercised through row_norms
    for i in range(start, stop):
        norms[i] = _norm(x[i])


@njit(nogil=True, fastmath=_FAST, cache=True)
def _sketch_row(
    row: np.ndarray, signs: np.ndarray, buckets: np.ndarray, runs: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """``out += `` the count sketch of ``row`` (``runs``: scratch of one value per run)."""
    d = row.shape[0]
    m = buckets.shape[0]
    runs[:] = 0.0
    for a in range(0, d, m):
        b = min(a + m, d)
        part = row[a:b]
        sign = signs[a:b]
        for j in range(b - a):
            runs[j] += sign[j] * part[j]
    _scatter(runs, buckets, out)


@njit(nogil=True, fastmath=_FAST, cache=True)
def _scatter(
    runs: np.ndarray, buckets: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """``out[buckets[w]] += runs[w]`` for every run ``w``."""
    for w in range(buckets.shape[0]):
        out[buckets[w]] += runs[w]


@njit(nogil=True, fastmath=_FAST, cache=True)
def _lanes_total(lanes: np.ndarray) -> float:  # pragma: no cover - compiled
    """The float64 sum of the lanes of a striped dot product."""
    total = 0.0
    for w in range(lanes.shape[0]):
        total += np.float64(lanes[w])
    return total


@njit(nogil=True, fastmath=_FAST, cache=True)
def _striped_dot(
    row: np.ndarray, g: np.ndarray, lanes: np.ndarray
) -> float:  # pragma: no cover - compiled
    """``row · g`` summed in ``m = len(lanes)`` lanes of ``row``'s dtype — lane ``w`` over the
    coordinates ``j ≡ w (mod m)``, in order — and then the lanes in float64 (see
    :func:`striped_dots`)."""
    d = row.shape[0]
    m = lanes.shape[0]
    lanes[:] = 0.0
    for a in range(0, d, m):
        b = min(a + m, d)
        part = row[a:b]
        gain = g[a:b]
        for j in range(b - a):
            lanes[j] += gain[j] * part[j]
    return _lanes_total(lanes)


@njit(nogil=True, fastmath=_FAST, cache=True)
def _sketch_dot_row(
    row: np.ndarray,
    signs: np.ndarray,
    buckets: np.ndarray,
    g: np.ndarray,
    runs: np.ndarray,
    lanes: np.ndarray,
    out: np.ndarray,
) -> float:  # pragma: no cover - compiled
    """:func:`_sketch_row` and :func:`_striped_dot` (with ``m`` lanes, the sketch's run count)
    in one sweep of the row: the same operations in the same order as the two apart, so the
    same bits."""
    d = row.shape[0]
    m = buckets.shape[0]
    runs[:] = 0.0
    lanes[:] = 0.0
    for a in range(0, d, m):
        b = min(a + m, d)
        part = row[a:b]
        sign = signs[a:b]
        gain = g[a:b]
        for j in range(b - a):
            runs[j] += sign[j] * part[j]
            lanes[j] += gain[j] * part[j]
    _scatter(runs, buckets, out)
    return _lanes_total(lanes)


@njit(nogil=True, fastmath=_FAST, cache=True)
def _dot(row: np.ndarray, g: np.ndarray) -> float:  # pragma: no cover - compiled
    acc = 0.0
    for j in range(row.shape[0]):
        acc += np.float64(row[j]) * np.float64(g[j])
    return acc


@njit(nogil=True, fastmath=_FAST, cache=True)
def _sketch_rows(
    x: np.ndarray,
    signs: np.ndarray,
    buckets: np.ndarray,
    out: np.ndarray,
    norms: np.ndarray,
    start: int,
    stop: int,
) -> None:  # pragma: no cover - compiled; exercised through sketch_and_norms
    runs = np.empty(buckets.shape[0], dtype=x.dtype)
    for i in range(start, stop):
        norms[i] = _norm(x[i])
        _sketch_row(x[i], signs, buckets, runs, out[i])


@njit(nogil=True, fastmath=_FAST, cache=True)
def _sketch_dot_rows(
    x: np.ndarray,
    signs: np.ndarray,
    buckets: np.ndarray,
    g: np.ndarray,
    out: np.ndarray,
    norms: np.ndarray,
    dots: np.ndarray,
    start: int,
    stop: int,
) -> None:  # pragma: no cover - compiled; exercised through sketch_norms_dots
    """Rows ``start:stop`` of :func:`sketch_norms_dots`, each swept once (its own work buffers,
    so chunks may run on different threads)."""
    runs = np.empty(buckets.shape[0], dtype=x.dtype)
    lanes = np.empty(buckets.shape[0], dtype=x.dtype)
    for i in range(start, stop):
        norms[i] = _norm(x[i])
        dots[i] = _sketch_dot_row(x[i], signs, buckets, g, runs, lanes, out[i])


@njit(nogil=True, fastmath=_FAST, cache=True)
def _striped_dot_rows(
    x: np.ndarray, g: np.ndarray, m: int, dots: np.ndarray, start: int, stop: int
) -> None:  # pragma: no cover - compiled; exercised through striped_dots
    """Rows ``start:stop`` of :func:`striped_dots` (its own lanes, so chunks may run on
    different threads)."""
    lanes = np.empty(m, dtype=x.dtype)
    for i in range(start, stop):
        dots[i] = _striped_dot(x[i], g, lanes)


@njit(nogil=True, fastmath=_FAST, cache=True)
def _dot_rows(
    x: np.ndarray, g: np.ndarray, dots: np.ndarray, start: int, stop: int
) -> None:  # pragma: no cover - compiled; exercised through float64_dots
    for i in range(start, stop):
        dots[i] = _dot(x[i], g)


@njit(nogil=True, fastmath=_FAST, cache=True)
def _sketch_gain_rows(
    x: np.ndarray,
    signs: np.ndarray,
    buckets: np.ndarray,
    g: np.ndarray,
    out: np.ndarray,
    norms: np.ndarray,
    dots: np.ndarray,
    start: int,
    stop: int,
) -> None:  # pragma: no cover - compiled; exercised through sketch_norms_gain
    runs = np.empty(buckets.shape[0], dtype=x.dtype)
    for i in range(start, stop):
        row = x[i]
        norms[i] = _norm(row)
        _sketch_row(row, signs, buckets, runs, out[i])
        dots[i] = _dot(row, g)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


# The compiled loops index without bounds checks (a short vector is read past its end, a bucket out
# of range is written past the sketch's), so each wrapper checks its arguments first: O(1) apart
# from the bucket map's range, O(m) against the pass's O(nd).


def _check_rows(x: torch.Tensor) -> None:
    if not kernel_dtype(x):
        raise ValueError(
            "kernels: x must be a 2-D CPU float32 or float64 tensor with contiguous rows, got "
            f"shape {tuple(x.shape)}, {x.dtype} on {x.device.type}"
        )


def _check_vector(v: torch.Tensor, length: int, name: str) -> None:
    if v.ndim != 1 or v.shape[0] != length or v.device.type != "cpu":
        raise ValueError(
            f"kernels: {name} must be a CPU vector of length {length}, got shape "
            f"{tuple(v.shape)} on {v.device.type}"
        )


def _check_sketch(x: torch.Tensor, signs: torch.Tensor, buckets: torch.Tensor, k: int) -> None:
    """``x`` a kernel input of width ``d >= 1``, ``signs`` ``(d,)`` in ``x``'s dtype, ``buckets``
    a non-empty int64 vector with values in ``[0, k)``."""
    _check_rows(x)
    _check_vector(signs, x.shape[1], "signs")
    if signs.dtype != x.dtype:
        raise ValueError(f"kernels: signs must have x's dtype {x.dtype}, got {signs.dtype}")
    if int(k) < 1:
        raise ValueError(f"kernels: the sketch width k must be >= 1, got {k}")
    if x.shape[1] < 1:
        raise ValueError("kernels: the rows to sketch must have width >= 1, got 0")
    if (
        buckets.ndim != 1
        or buckets.numel() < 1
        or buckets.dtype != torch.int64
        or buckets.device.type != "cpu"
    ):
        raise ValueError(
            "kernels: buckets must be a non-empty int64 CPU vector, got shape "
            f"{tuple(buckets.shape)}, {buckets.dtype} on {buckets.device.type}"
        )
    if int(buckets.min()) < 0 or int(buckets.max()) >= int(k):
        raise ValueError(f"kernels: bucket indices must lie in [0, {k})")


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """``(n,)`` float64 Euclidean norms of the rows of ``x`` (summed in float64; the same loop as
    :func:`sketch_and_norms`, so the two give the same bits). ``x`` must satisfy
    :func:`kernel_dtype` (else :class:`ValueError`)."""
    _check_rows(x)
    n = x.shape[0]
    norms = np.empty(n, dtype=np.float64)
    xs = _numpy(x)

    def piece(start: int, stop: int) -> None:
        _norm_rows(xs, norms, start, stop)

    map_chunks(n, piece, split=parallel(x))
    return torch.from_numpy(norms)


def sketch_and_norms(
    x: torch.Tensor, signs: torch.Tensor, buckets: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(sketch (n, k) float64, norms (n,) float64)`` of the rows of ``x`` in one read.

    ``signs`` (``(d,)``, ``x``'s dtype) and ``buckets`` (``(m,)`` int64, values in ``[0, k)``)
    define the count sketch of :mod:`matl.trust.sketch`: coordinate :math:`j` belongs to run
    :math:`j \bmod m`, and run :math:`w` is added to bucket ``buckets[w]`` with its coordinates'
    signs. ``x`` must satisfy :func:`kernel_dtype`; wrong arguments raise :class:`ValueError`.
    """
    _check_sketch(x, signs, buckets, k)
    n, _ = x.shape
    out = np.zeros((n, k), dtype=np.float64)
    norms = np.empty(n, dtype=np.float64)
    xs, sg, bk = _numpy(x), _numpy(signs), _numpy(buckets)

    def piece(start: int, stop: int) -> None:
        _sketch_rows(xs, sg, bk, out, norms, start, stop)

    map_chunks(n, piece, split=parallel(x))
    return torch.from_numpy(out), torch.from_numpy(norms)


def striped_dots(x: torch.Tensor, g: torch.Tensor, m: int) -> torch.Tensor:
    r"""``(n,)`` float64: every row's dot product with ``g`` (``(d,)``, cast to ``x``'s dtype),
    summed in ``m`` lanes of ``x``'s dtype and then in float64.

    Lane :math:`w` holds :math:`\sum_{j \equiv w \ (\mathrm{mod}\ m)} g_j x_{ij}`, added in
    coordinate order; the row's product is the float64 sum of its lanes. With ``m`` the round
    sketch's run count each lane adds at most 32 terms, so for float32 rows the product is far
    more accurate than a float32 sum, though not a float64 one (measured at :math:`d = 10^5`: an
    error of 7e-9 to 5e-8 of the largest product, against 3–4e-6 for PyTorch's float32 ``mv``), and :func:`sketch_norms_dots` reads the same
    products, bit for bit, in the sketch's own pass. ``x`` must satisfy :func:`kernel_dtype`;
    wrong arguments raise :class:`ValueError`."""
    _check_rows(x)
    _check_vector(g, x.shape[1], "g")
    if int(m) < 1:
        raise ValueError(f"kernels: the lane count m must be >= 1, got {m}")
    n = x.shape[0]
    dots = np.empty(n, dtype=np.float64)
    xs, gs = _numpy(x), _numpy(g.detach().to(x.dtype).contiguous())

    def piece(start: int, stop: int) -> None:
        _striped_dot_rows(xs, gs, int(m), dots, start, stop)

    map_chunks(n, piece, split=parallel(x))
    return torch.from_numpy(dots)


def sketch_norms_dots(
    x: torch.Tensor, signs: torch.Tensor, buckets: torch.Tensor, k: int, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sketch, norms, dots)`` in one read of each row: :func:`sketch_and_norms` (the same
    bits) and :func:`striped_dots` with ``m = len(buckets)`` lanes (the same bits), the lanes
    added in the sketch's own sweep of the row. Measured (best of 9, :math:`n = 1000, d = 10^5`,
    float32, 2 cores): 20 ms against 15–17 ms for the sketch and norms alone and 8–12 ms for a
    separate product. Wrong arguments raise :class:`ValueError`, as :func:`sketch_and_norms`'s
    and :func:`striped_dots`'s do."""
    _check_sketch(x, signs, buckets, k)
    _check_vector(g, x.shape[1], "g")
    n, _ = x.shape
    out = np.zeros((n, k), dtype=np.float64)
    norms = np.empty(n, dtype=np.float64)
    dots = np.empty(n, dtype=np.float64)
    xs, sg, bk = _numpy(x), _numpy(signs), _numpy(buckets)
    gs = _numpy(g.detach().to(x.dtype).contiguous())

    def piece(start: int, stop: int) -> None:
        _sketch_dot_rows(xs, sg, bk, gs, out, norms, dots, start, stop)

    map_chunks(n, piece, split=parallel(x))
    return torch.from_numpy(out), torch.from_numpy(norms), torch.from_numpy(dots)


def sketch_norms_gain(
    x: torch.Tensor, signs: torch.Tensor, buckets: torch.Tensor, k: int, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sketch, norms, dots)`` in one read of each row: :func:`sketch_and_norms` (the same
    bits) and :func:`float64_dots` (the same bits). ``x`` must satisfy :func:`kernel_dtype`;
    ``g`` (``(d,)``) is cast to ``x``'s dtype; wrong arguments raise :class:`ValueError`."""
    _check_sketch(x, signs, buckets, k)
    _check_vector(g, x.shape[1], "g")
    n, _ = x.shape
    out = np.zeros((n, k), dtype=np.float64)
    norms = np.empty(n, dtype=np.float64)
    dots = np.empty(n, dtype=np.float64)
    xs, sg, bk = _numpy(x), _numpy(signs), _numpy(buckets)
    gs = _numpy(g.detach().to(x.dtype).contiguous())

    def piece(start: int, stop: int) -> None:
        _sketch_gain_rows(xs, sg, bk, gs, out, norms, dots, start, stop)

    map_chunks(n, piece, split=parallel(x))
    return torch.from_numpy(out), torch.from_numpy(norms), torch.from_numpy(dots)


def float64_dots(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    r"""``(n,)`` float64 :math:`u_i^\top g` of every row of ``x``, each summed in float64 (PoGQ's
    first-order gains), in one read of each row. ``x`` must satisfy :func:`kernel_dtype`; ``g``
    (``(d,)``) is cast to ``x``'s dtype; wrong shapes raise :class:`ValueError`."""
    _check_rows(x)
    _check_vector(g, x.shape[1], "g")
    n = x.shape[0]
    xs = _numpy(x)
    gs = _numpy(g.detach().to(x.dtype).contiguous())
    dots = np.empty(n, dtype=np.float64)

    def piece(start: int, stop: int) -> None:
        _dot_rows(xs, gs, dots, start, stop)

    map_chunks(n, piece, split=parallel(x))
    return torch.from_numpy(dots)
