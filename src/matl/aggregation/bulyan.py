"""Bulyan (El Mhamdi et al. 2018): a Krum-based selection, then a coordinate-wise trimmed mean
around the median."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

from matl.aggregation.base import AggregationResult, AggregationRule, RoundContext
from matl.aggregation.distances import pairwise_sq_distances
from matl.aggregation.order_stats import (
    FloatArray,
    Workspace,
    host_array,
    map_column_ranges,
    midpoint,
    slice_sums,
)
from matl.aggregation.registry import register_rule
from matl.errors import ConfigError

__all__ = ["Bulyan", "bulyan_select", "closest_to_median_mean"]

_SELECTIONS = ("krum", "multi_krum")
#: Threads for sorting the rows of a large distance matrix.
_MAX_SORT_WORKERS = 8

#: A running Krum score is re-summed exactly once its accumulated rounding error bound exceeds
#: this fraction of its value.
_RESUM_RELATIVE_ERROR = 2.0**-30


def bulyan_select(
    dist: torch.Tensor, f: int, theta: int, selection: str = "krum"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bulyan's selection phase on a matrix of pairwise squared distances.

    ``selection="krum"`` (the paper's): ``theta`` rounds, each computing Krum over the updates not
    yet selected and moving the winner to the selection. In a round with ``r`` updates left, the
    Krum score of an update is the sum of its squared distances to its ``r − f − 2`` nearest
    remaining others, floored at one neighbour (the floor only matters in the last two rounds when
    ``f <= 1``); ties go to the lowest index.

    ``selection="multi_krum"``: the ``theta`` lowest Krum scores over all ``n`` updates, computed
    once (a cheaper, non-recursive variant some implementations use; not the paper's).

    The distances are computed once by the caller and only masked here: every row is sorted once,
    and a round updates each remaining row's score by the one term it loses, so the whole phase
    costs ``O(n² log n)`` plus ``O(n)`` per round. Scores are accumulated in float64; a score whose
    accumulated rounding error could exceed ``2^-30`` of its value is re-summed exactly.

    Parameters
    ----------
    dist:
        ``(n, n)`` symmetric squared distances (not modified).
    f:
        Number of Byzantine clients tolerated; ``n − f − 2 >= 1`` is required.
    theta:
        Number of updates to select, ``1 <= theta <= n``.
    selection:
        ``"krum"`` or ``"multi_krum"`` (see above).

    Returns
    -------
    (selected, scores):
        ``selected`` the ``(theta,)`` int64 indices in the order they were selected; ``scores``
        the ``(n,)`` float64 Krum scores over all ``n`` updates (the first round's).
    """
    n = dist.shape[0]
    k = n - f - 2
    if k < 1 or not 1 <= theta <= n:
        raise ValueError(
            "bulyan_select needs n - f - 2 >= 1 and 1 <= theta <= n, "
            f"got n={n}, f={f}, theta={theta}"
        )
    if selection not in _SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; expected one of {_SELECTIONS}")
    device = dist.device
    with torch.no_grad():
        d64 = dist.detach().to(device="cpu", dtype=torch.float64, copy=True).numpy()
    np.fill_diagonal(d64, np.inf)  # a row is not its own neighbour
    # Each row's neighbours by increasing distance; self (at inf) comes last.
    recursive = selection == "krum"
    order, near, at_by_col = _neighbour_order(d64, by_column=recursive)
    scores = near[:, :k].sum(axis=1)
    if not recursive:
        chosen = np.argsort(scores, kind="stable")[:theta]
    else:
        chosen = _recursive_krum(d64, order, near, at_by_col, scores, f, theta)
    return (
        torch.from_numpy(chosen.astype(np.int64)).to(device),
        torch.from_numpy(scores).to(device),
    )


def _neighbour_order(
    d64: NDArray[np.float64], *, by_column: bool = False
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.intp]]:
    """``(order, near, at_by_col)``: each row's columns by increasing distance and the distances
    in that order, both ``(n, n)`` and C-contiguous. The row itself (distance ``inf``) sorts last;
    the last column is never used as a neighbour.

    With ``by_column`` (for :func:`_recursive_krum`), also ``at_by_col[j, i]``, where ``j`` sits
    in row ``i``'s order as an index into the flat view of ``order`` (``i * n + position``),
    C-contiguous so that a round reads one row; otherwise it is empty. (The distances by column
    are the rows of the symmetric ``d64`` itself.)

    The order among equal distances is left to NumPy's default (vectorised, unstable) argsort,
    about twice as fast as a stable one: Krum scores, and hence the rounds' winners, depend only
    on the sorted distances, which equal neighbours do not change.
    """
    n = d64.shape[0]
    order = np.empty((n, n), dtype=np.intp)
    near = np.empty_like(d64)
    size = n if by_column else 0
    at_by_col = np.empty((size, size), dtype=np.intp)
    positions = np.arange(n)

    def rows(span: slice) -> None:
        order[span] = np.argsort(d64[span], axis=1)
        near[span] = np.take_along_axis(d64[span], order[span], axis=1)
        if by_column:
            first = positions[span, None] * n
            at_by_col[order[span], positions[span, None]] = first + positions

    # Rows are independent: large matrices are sorted in row blocks on a thread pool (NumPy
    # releases the GIL while sorting); each block writes its own columns of ``at_by_col``.
    workers = min(_MAX_SORT_WORKERS, torch.get_num_threads()) if n * n >= 1 << 18 else 1
    spans = [slice(i * n // workers, (i + 1) * n // workers) for i in range(workers)]
    if workers == 1:
        rows(spans[0])
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(rows, spans))
    return order, near, at_by_col


def _recursive_krum(
    d64: NDArray[np.float64],
    order: NDArray[np.intp],
    near: NDArray[np.float64],
    at_by_col: NDArray[np.intp],
    scores: NDArray[np.float64],
    f: int,
    theta: int,
) -> NDArray[np.int64]:
    """The recursive-Krum rounds of :func:`bulyan_select` (NumPy: a sequential loop over small
    vectors, where per-operation overhead matters more than throughput, so the loop reads
    contiguous rows, gathers from flat arrays and updates its vectors in place)."""
    n = d64.shape[0]
    k = n - f - 2
    rows = np.arange(n)
    row_start = rows * n  # row i of order / near in their flat views
    order_flat = order.reshape(-1)
    near_flat = near.reshape(-1)
    alive = np.ones(n, dtype=bool)
    dead = np.zeros(n, dtype=bool)
    # at[i]: flat index of the k-th nearest remaining neighbour of i (row_start[i] + its
    # position); score[i] sums the remaining neighbours up to and including it, error[i] bounds
    # its accumulated rounding.
    at = row_start + (k - 1)
    score = scores.copy()
    eps = float(np.finfo(np.float64).eps)
    error = score * (k * eps)
    span = np.arange(n - 1)[None, :]
    inf = np.inf
    removed = np.zeros(n)  # 0 for the remaining rows, inf once selected
    current = np.empty(n)
    scratch = np.empty(n)
    flags = np.empty(n, dtype=bool)
    mask = np.empty(n, dtype=bool)

    def exact_scores(idx: NDArray[np.intp], k: int) -> NDArray[np.float64]:
        # The k remaining neighbours up to the pointer, summed in increasing order: rows with
        # equal distances give bit-equal sums.
        keep = (span <= (at[idx] - row_start[idx])[:, None]) & alive[order[idx, : n - 1]]
        result: NDArray[np.float64] = near[idx, : n - 1][keep].reshape(-1, k).sum(axis=1)
        return result

    selected = np.empty(theta, dtype=np.int64)
    for step in range(theta):
        remaining = n - step
        k = remaining - f - 2
        if k >= 1:
            current = np.add(score, removed, out=current)  # inf for the rows already selected
            if step:
                # A running score whose rounding error could exceed 2^-30 of it is re-summed
                # exactly (the rows already selected have an infinite `current`).
                drift = np.greater(
                    error, np.multiply(current, _RESUM_RELATIVE_ERROR, out=scratch), out=mask
                )
                if np.count_nonzero(drift):
                    inexact = drift.nonzero()[0]
                    score[inexact] = current[inexact] = exact_scores(inexact, k)
                    error[inexact] = score[inexact] * (k * eps)
            # Every row whose true score could be the minimum, given the error bounds, is
            # re-summed exactly, so exact ties still go to the lowest index.
            upper = np.add(current, error, out=scratch)
            lowest = int(upper.argmin())
            bound = upper[lowest] * (1.0 + 4.0 * eps)
            possible = np.less_equal(np.subtract(current, error, out=scratch), bound, out=mask)
            if possible[lowest] and np.count_nonzero(possible) == 1:
                # The usual case: the only possible minimum is the lowest upper bound.
                candidates = rows[lowest : lowest + 1]
            else:
                candidates = possible.nonzero()[0]
            if candidates.size > 1:
                winner = int(candidates[np.argmin(exact_scores(candidates, k))])
            elif candidates.size == 1:  # the only possible minimum
                winner = int(candidates[0])
            else:  # no finite bound: every remaining score is infinite
                winner = int(current.argmin())
        elif remaining > 1:  # floor at one neighbour: the nearest remaining other
            nearest = np.where(alive[None, :], d64, inf).min(axis=1)
            winner = int(np.argmin(np.where(alive, nearest, inf)))
        else:  # a single update left
            winner = int(np.flatnonzero(alive)[0])
        selected[step] = winner
        alive[winner] = False
        dead[winner] = True
        removed[winner] = inf
        if step == theta - 1 or k - 1 < 1:
            continue
        # The round removes `winner` and lowers k by one. For a remaining row i:
        # * winner before the k-th neighbour: the score loses d(i, winner), the pointer stays;
        # * otherwise (it was the k-th or beyond): the score loses the k-th distance and the
        #   pointer moves back to the previous remaining neighbour.
        after = np.greater_equal(at_by_col[winner], at, out=flags)
        lost = np.where(after, near_flat.take(at), d64[winner])  # d64 is symmetric
        score -= lost
        error += np.multiply(np.abs(score, out=scratch), eps, out=scratch)
        after &= alive
        idx = after.nonzero()[0]
        if idx.size:
            ptr = at.take(idx) - 1
            while True:
                gone = dead.take(order_flat.take(ptr))
                if not np.count_nonzero(gone):
                    break
                ptr -= gone
            at[idx] = ptr
    return selected


def closest_to_median_mean(
    updates: torch.Tensor, rows: torch.Tensor, beta: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bulyan's aggregation phase: per coordinate, the mean of the ``beta`` values of the rows
    ``rows`` closest to their median.

    For each coordinate *k*, with :math:`m_k` the median of :math:`\\{u_{ik} : i \\in` ``rows``
    :math:`\\}` and :math:`r_k` the ``beta``-th smallest distance :math:`|u_{ik} - m_k|` (as
    rounded in the input's dtype), the values strictly closer than :math:`r_k` are kept, and the
    values exactly at distance :math:`r_k` share the remaining places equally (each weighted by
    places left / values at that distance), so the result does not depend on the order of the
    rows. The values used all lie within :math:`[m_k - r_k, m_k + r_k]`; nothing is subtracted.

    Algorithm: the columns are processed in blocks of a few thousand columns on a thread pool
    (:func:`~matl.aggregation.order_stats.map_column_ranges`). In each block of ``c`` columns:

    1. The selected rows are gathered (``(θ, c)``, row-major as in the input) and copied
       transposed, one row per coordinate, and every such row is sorted (NumPy's vectorised
       sort). This is most of the cost: ``O(c θ log θ)``, about 1 ns per value for θ = 80 or
       800 float32 values on an AVX-512 core, against about 0.5 ns per value for the gather and
       for the transposing copy each.
    2. Along a sorted row :math:`s_0 \\le \\dots \\le s_{θ-1}` the distance to the median falls and
       then rises, so the ``beta`` closest values fill a window :math:`s_l, \\dots, s_{l+β-1}` with
       ``l <= θ − β``, found by :func:`_closest_window` with a binary search over ``l``:
       ``⌈log₂(θ − β + 2)⌉`` vectorised steps that each read two values per coordinate. No
       array of distances is formed and nothing is selected twice.
    3. The window is unique (a single set of ``beta`` values within :math:`r_k`) unless a value
       next to it is as close. For a unique window the values used are exactly those in
       :math:`[s_l, s_{l+β-1}]`, so two comparisons over the gathered block give the 0/1
       indicator of the values used, whose row sums (population counts) are the credits. The
       sum of the window is read straight from the sorted row (one contiguous slice per
       coordinate, summed in sorted order) for ``θ >= 256``; for shorter rows, where many short
       slices cost more, it is the indicator's dot product with the values.
    4. The few coordinates whose window is not unique (ties at the radius, or NaN distances
       from an infinite median) are redone with the shared weights from their distances.

    The whole phase costs ``O(d θ log θ)``: one sort per coordinate and a constant number of
    vectorised passes over the ``θ × d`` selected values.

    Parameters
    ----------
    updates:
        ``(n, d)`` floating tensor (not modified).
    rows:
        ``(θ,)`` indices of the selected rows (any order, no repeats).
    beta:
        Number of values averaged per coordinate, ``1 <= beta <= θ``.

    Returns
    -------
    (mean, credit):
        ``mean`` ``(d,)`` in the input dtype; ``credit`` ``(len(rows),)`` float64, the number of
        coordinates (fractional at ties) in which each selected row's value was used; it sums to
        ``beta * d``.
    """
    d = updates.shape[1]
    theta = int(rows.numel())
    if not 1 <= beta <= theta:
        raise ValueError(f"closest_to_median_mean needs 1 <= beta <= {theta}, got {beta}")
    x = host_array(updates)
    picked = rows.detach().cpu().numpy()
    out = np.empty(d, dtype=x.dtype)
    sum_sorted = theta >= _SORTED_SUM_MIN

    def block(start: int, stop: int, ws: Workspace) -> NDArray[np.float64]:
        values = x[picked, start:stop]  # (θ, c), the selected rows of the block
        srt = ws.get("sorted", values.shape[::-1], x.dtype)
        np.copyto(srt, values.T)
        srt.sort(axis=1)
        window = _closest_window(srt, beta)
        # Coordinates whose beta closest values are exactly the window [lo, hi]; the others get
        # lo = NaN, so that no value counts as used, and are redone below.
        simple = window.unique
        lo = np.where(simple, window.lo, np.nan)
        # used[i, k]: whether row i's value is among coordinate k's beta closest (lo <= x <= hi),
        # in a buffer whose rows are padded with False to whole 8-byte words, so that the "and"
        # of the two comparisons and the row counts (_row_counts) run on words.
        c = stop - start
        shape = (theta, c + (-c % 8))
        padded = ws.get("used", shape, np.bool_)
        below = ws.get("below", shape, np.bool_)
        padded[:, c:] = False
        used = np.greater_equal(values, lo, out=padded[:, :c])
        np.less_equal(values, window.hi, out=below[:, :c])
        np.bitwise_and(padded.view(np.uint64), below.view(np.uint64), out=padded.view(np.uint64))
        credit = _row_counts(padded)
        if sum_sorted:
            total = _window_sums(srt, window.first, beta)
        else:
            total = _masked_column_sums(values, used, simple)
        out[start:stop] = total / beta
        tied = np.flatnonzero(~simple)
        if tied.size:
            sub = values[:, tied].T
            weight = _shared_weights(sub, window.median[tied], window.radius[tied], beta)
            out[start + tied] = ((weight * sub.astype(np.float64)).sum(axis=1) / beta).astype(
                x.dtype
            )
            credit += weight.sum(axis=0)
        return credit

    # Blocks of at least _MIN_BLOCK_COLUMNS columns, so that the per-coordinate vector steps of
    # the window search stay long, and of an odd number of columns: a power-of-two row stride
    # would map a column of the block onto a few cache sets (twice the time, measured).
    width = max(_TILE_ELEMENTS // theta, _MIN_BLOCK_COLUMNS) | 1
    credit = np.sum(map_column_ranges(theta, d, block, tile_elements=width * theta), axis=0)
    return (
        torch.from_numpy(out).to(device=updates.device, dtype=updates.dtype),
        torch.from_numpy(credit).to(device=updates.device),
    )


#: From this many selected values per coordinate on, the window sums are read from the sorted
#: rows (a few long slices per block); below it, from the 0/1 indicator of the values used (one
#: vectorised product per block, cheaper than many short slices).
_SORTED_SUM_MIN = 256
#: ``numpy.bitwise_count`` (NumPy >= 2), or None.
_bitwise_count: Any = getattr(np, "bitwise_count", None)
#: Target number of selected values per block of :func:`closest_to_median_mean` (2 MiB of
#: float32), and the fewest columns per block (unless ``d`` is smaller): with θ = 800, blocks of
#: 2049 columns took 10% less time than blocks of 655 (fewer, longer steps in the window search).
_TILE_ELEMENTS = 1 << 19
_MIN_BLOCK_COLUMNS = 2048
#: Rows per partial sum of :func:`_masked_column_sums` (partial sums are added in float64).
_SUM_ROWS = 128


class _Window(NamedTuple):
    """Per coordinate (each ``(c,)``): the median, the window ``[lo, hi]`` of the ``beta`` values
    closest to it (``lo = s[first]``, ``hi = s[first + beta − 1]`` in the sorted row ``s``), the
    ``beta``-th smallest distance ``radius`` and whether that window is the only set of ``beta``
    values within ``radius``."""

    median: FloatArray
    lo: FloatArray
    hi: FloatArray
    radius: FloatArray
    first: NDArray[np.intp]
    unique: NDArray[np.bool_]


def _closest_window(srt: FloatArray, beta: int) -> _Window:
    """The ``beta`` values closest to the median in each sorted row of ``srt`` (``(c, θ)``).

    With the median ``m`` and a sorted row ``s``, let ``L_l = m − s[l]`` and
    ``R_l = s[l + β − 1] − m`` (rounded in the row's dtype) for ``l`` in ``[0, θ − β]``. ``L`` is
    non-increasing and ``R`` non-decreasing in ``l``, and ``R_l >= −L_l``, so the window cost
    ``max(|s[l] − m|, |s[l + β − 1] − m|)`` equals ``L_l`` while ``R_l < L_l`` and ``R_l`` from
    the first ``l0`` with ``R_l >= L_l`` on. Its minimum, the ``beta``-th smallest distance, is
    therefore ``min(L_{l0 − 1}, R_{l0})`` (the first window on ties), and ``l0`` is found by a
    branch-free binary search: ``⌈log₂(θ − β + 2)⌉`` steps, each reading two values per row.

    The window is unique unless the value just before or just after it is as close (the
    distance falls and then rises along the row, so no value further out can be).
    """
    c, theta = srt.shape
    spare = theta - beta
    flat = srt.reshape(-1)
    base = np.arange(c, dtype=np.intp) * theta  # row starts in the flat view
    lower, upper = (theta - 1) // 2, theta // 2
    median = flat[base + lower]
    if upper != lower:
        median = midpoint(median, flat[base + upper])
    # l0 lies in [at - base, at - base + size - 1]; a probe at p = at - base + half asks whether
    # l0 >= p, i.e. whether R_{p-1} < L_{p-1}.
    at = base.copy()
    size = spare + 2
    while size > 1:
        half = size // 2
        size -= half
        probe = at + (half - 1)
        left = np.subtract(median, flat.take(probe))
        right = np.subtract(flat.take(probe + (beta - 1)), median)
        at += (right < left) * half
    l0 = at - base
    before = np.subtract(median, flat.take(np.maximum(at - 1, base)))  # L_{l0 - 1}
    after = np.subtract(flat.take(np.minimum(at, base + spare) + (beta - 1)), median)  # R_{l0}
    back = (l0 >= 1) & ((l0 > spare) | (before <= after))
    first = l0 - back
    radius = np.where(back, before, after)
    start = base + first
    lo = flat.take(start)
    hi = flat.take(start + (beta - 1))
    out_left = np.abs(np.subtract(flat.take(np.maximum(start - 1, base)), median))
    out_right = np.abs(np.subtract(flat.take(np.minimum(start + beta, base + theta - 1)), median))
    unique = ((first == 0) | (out_left > radius)) & ((first == spare) | (out_right > radius))
    return _Window(median, lo, hi, radius, first, unique)


def _row_counts(flags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """The number of ``True`` entries in each row of the C-contiguous ``flags``, whose rows are a
    whole number of 8-byte words: a population count of each word (with NumPy >= 2), then one
    row sum over 8 times fewer entries."""
    if _bitwise_count is not None:
        words = _bitwise_count(flags.view(np.uint64))
    else:  # pragma: no cover - NumPy < 2
        words = flags.view(np.uint8)
    counts: NDArray[np.float64] = np.add.reduce(words, axis=1, dtype=np.int32).astype(np.float64)
    return counts


def _window_sums(srt: FloatArray, first: NDArray[np.intp], beta: int) -> FloatArray:
    """``sum(srt[k, first[k] : first[k] + beta])`` for every row ``k``, each in sorted order."""
    c, theta = srt.shape
    start = np.arange(c, dtype=np.intp) * theta + first
    return slice_sums(srt.reshape(-1), start, start + beta)


def _masked_column_sums(
    values: FloatArray, used: NDArray[np.bool_], simple: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """``Σ_i values[i, k]`` over the rows ``i`` with ``used[i, k]``, for the columns ``simple``.

    One product-sum per block of :data:`_SUM_ROWS` rows, added in float64. An infinite value
    left out gives ``inf · 0 = NaN``; such (rare) columns are summed again without it.
    """
    theta, c = values.shape
    total = np.zeros(c, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        for i in range(0, theta, _SUM_ROWS):
            total += np.einsum("ij,ij->j", values[i : i + _SUM_ROWS], used[i : i + _SUM_ROWS])
    lost = np.flatnonzero(np.isnan(total) & simple)
    if lost.size:
        total[lost] = np.where(used[:, lost], values[:, lost], 0).sum(axis=0, dtype=np.float64)
    return total


def _shared_weights(
    sub: FloatArray, median: FloatArray, radius: FloatArray, beta: int
) -> NDArray[np.float64]:
    """``(t, θ)`` weights of the values ``sub`` (one row per coordinate) at ties: 1 strictly
    within ``radius`` of ``median``, and the places left shared equally by the values exactly at
    ``radius``."""
    gap = np.abs(sub - median[:, None])
    r = radius[:, None]
    inside = gap < r
    edge = gap == r
    n_inside = inside.sum(axis=1, keepdims=True)
    n_edge = edge.sum(axis=1, keepdims=True)
    weight: NDArray[np.float64] = inside + edge * ((beta - n_inside) / n_edge)
    return weight


@register_rule
@dataclass(frozen=True, kw_only=True)
class Bulyan(AggregationRule):
    r"""Bulyan: a Krum-based selection of :math:`\theta = n - 2f` updates, then a coordinate-wise
    mean of the :math:`\beta = \theta - 2f` values closest to the median.

    1. **Selection.** With ``selection="krum"`` (El Mhamdi et al.'s algorithm), repeat
       :math:`\theta` times: compute Krum over the updates not yet selected (Blanchard's score, the
       sum of squared distances to the :math:`r - f - 2` nearest of the :math:`r` remaining
       updates, floored at one neighbour) and move the winner into the selection :math:`S`.
       ``selection="multi_krum"`` instead takes the :math:`\theta` lowest Krum scores over all
       :math:`n` updates at once (a cheaper, non-recursive variant; not the paper's).
    2. **Aggregation.** For each coordinate *k*, with :math:`m_k` the median of
       :math:`\{u_{ik}\}_{i \in S}`,

       .. math::

           \bar{u}_k = \frac{1}{\beta} \sum_{i \in B_k} u_{ik},

       where :math:`B_k` holds the :math:`\beta` selected values closest to :math:`m_k` (values
       tied at the :math:`\beta`-th distance share the remaining places equally).

    Cost: one pairwise-distance matrix product (computed once; each selection round only
    updates running scores, see :func:`bulyan_select`), ``O(n² log n)`` for the selection, and
    one sort of the :math:`\theta` selected values per coordinate for the aggregation (see
    :func:`closest_to_median_mean`).

    Precondition: :math:`n \ge 4f + 3`; otherwise :class:`~matl.errors.PreconditionError`.

    Parameters
    ----------
    f:
        Number of Byzantine clients tolerated (an integer ``>= 0``).
    selection:
        ``"krum"`` (default, the paper's recursive Krum) or ``"multi_krum"`` (one-shot).

    Returns
    -------
    AggregationResult
        ``aggregate`` the coordinate-wise mean above (input dtype). ``weights[i]`` the share of
        coordinates in which client *i*'s value was averaged, normalised to sum to 1 (0 for the
        clients not selected). ``flagged`` the :math:`2f` clients not selected in phase 1.
        ``scores`` the Krum scores over all :math:`n` clients (phase 1's first round).

    Raises
    ------
    ConfigError
        ``f`` is not an integer ``>= 0`` or ``selection`` is unknown.
    PreconditionError
        ``n < 4f + 3``.

    References
    ----------
    El Mhamdi, Guerraoui, Rouault. "The Hidden Vulnerability of Distributed Learning in
    Byzantium." ICML 2018.
    """

    name: ClassVar[str] = "bulyan"
    precondition: ClassVar[str] = "n >= 4f + 3"
    reference: ClassVar[str] = (
        "El Mhamdi et al., The Hidden Vulnerability of Distributed Learning in Byzantium, ICML 2018"
    )

    f: int
    selection: Literal["krum", "multi_krum"] = "krum"

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise ConfigError(f"bulyan: f must be an integer >= 0, got {self.f!r}")
        if self.selection not in _SELECTIONS:
            raise ConfigError(
                f"bulyan: selection must be one of {', '.join(_SELECTIONS)}, got {self.selection!r}"
            )

    def check_precondition(self, n: int) -> None:
        if n < 4 * self.f + 3:
            raise self.precondition_error(n, self.f)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        theta = n - 2 * self.f
        beta = theta - 2 * self.f
        dist = pairwise_sq_distances(updates)
        selected, scores = bulyan_select(dist, self.f, theta, self.selection)
        # Aggregate over the selected rows in index order (the result does not depend on it).
        rows = torch.sort(selected).values
        mean, credit = closest_to_median_mean(updates, rows, beta)
        weights = torch.zeros(n, dtype=torch.float64, device=updates.device)
        weights[rows] = credit / credit.sum()
        flagged = torch.ones(n, dtype=torch.bool, device=updates.device)
        flagged[rows] = False
        return AggregationResult(
            aggregate=mean,
            weights=weights.to(dtype=updates.dtype),
            flagged=flagged,
            scores=scores.to(dtype=updates.dtype),
        )
