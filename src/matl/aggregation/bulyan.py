"""Bulyan (El Mhamdi et al. 2018): a Krum-based selection, then a coordinate-wise trimmed mean
around the median."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from matl.aggregation.base import AggregationResult, AggregationRule, RoundContext
from matl.aggregation.distances import pairwise_sq_distances
from matl.aggregation.order_stats import (
    FloatArray,
    OrderStats,
    Workspace,
    column_runs,
    host_array,
    map_column_ranges,
    midpoint,
    run_layout,
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
    order, near = _neighbour_order(d64)
    scores = near[:, :k].sum(axis=1)
    if selection == "multi_krum":
        chosen = np.argsort(scores, kind="stable")[:theta]
    else:
        chosen = _recursive_krum(d64, order, near, scores, f, theta)
    return (
        torch.from_numpy(chosen.astype(np.int64)).to(device),
        torch.from_numpy(scores).to(device),
    )


def _neighbour_order(
    d64: NDArray[np.float64],
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """``(order, near)``: each row's columns by increasing distance and the distances in that
    order, both ``(n, n)`` and C-contiguous. The row itself (distance ``inf``) sorts last; the
    last column is never used as a neighbour.

    The order among equal distances is left to NumPy's default (vectorised, unstable) argsort,
    about twice as fast as a stable one: Krum scores, and hence the rounds' winners, depend only
    on the sorted distances, which equal neighbours do not change.
    """
    n = d64.shape[0]
    order = np.empty((n, n), dtype=np.intp)
    near = np.empty_like(d64)

    def rows(span: slice) -> None:
        order[span] = np.argsort(d64[span], axis=1)
        near[span] = np.take_along_axis(d64[span], order[span], axis=1)

    # Rows are independent: large matrices are sorted in row blocks on a thread pool (NumPy
    # releases the GIL while sorting).
    workers = min(_MAX_SORT_WORKERS, torch.get_num_threads()) if n * n >= 1 << 18 else 1
    spans = [slice(i * n // workers, (i + 1) * n // workers) for i in range(workers)]
    if workers == 1:
        rows(spans[0])
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(rows, spans))
    return order, near


def _recursive_krum(
    d64: NDArray[np.float64],
    order: NDArray[np.intp],
    near: NDArray[np.float64],
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
    # position_by_col[j, i]: where j sits in row i's neighbour order (the unused last column:
    # n - 1), stored by j so that a round reads one contiguous row; likewise d64 by column.
    position_by_col = np.empty((n, n), dtype=np.intp)
    position_by_col[order, rows[:, None]] = np.arange(n)
    d64_by_col = np.ascontiguousarray(d64.T)
    alive = np.ones(n, dtype=bool)
    # pointer[i]: position of the k-th nearest remaining neighbour of i; score[i] sums the
    # remaining neighbours up to and including it, error[i] bounds its accumulated rounding.
    pointer = np.full(n, k - 1, dtype=np.intp)
    score = scores.copy()
    eps = float(np.finfo(np.float64).eps)
    error = score * (k * eps)
    span = np.arange(n - 1)[None, :]
    inf = np.inf
    removed = np.zeros(n)  # 0 for the remaining rows, inf once selected
    current = np.empty(n)
    scratch = np.empty(n)

    def exact_scores(idx: NDArray[np.intp], k: int) -> NDArray[np.float64]:
        # The k remaining neighbours up to the pointer, summed in increasing order: rows with
        # equal distances give bit-equal sums.
        keep = (span <= pointer[idx, None]) & alive[order[idx, : n - 1]]
        result: NDArray[np.float64] = near[idx, : n - 1][keep].reshape(-1, k).sum(axis=1)
        return result

    selected = np.empty(theta, dtype=np.int64)
    for step in range(theta):
        remaining = n - step
        k = remaining - f - 2
        if k >= 1:
            current = np.add(score, removed, out=current)  # inf for the rows already selected
            # Every row whose true score could be the minimum, given the error bounds, is
            # re-summed exactly, so exact ties still go to the lowest index.
            bound = np.add(current, error, out=scratch).min() * (1.0 + 4.0 * eps)
            candidates = np.flatnonzero(np.subtract(current, error, out=scratch) <= bound)
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
        removed[winner] = inf
        if step == theta - 1 or k - 1 < 1:
            continue
        # The round removes `winner` and lowers k by one. For a remaining row i:
        # * winner before the k-th neighbour: the score loses d(i, winner), the pointer stays;
        # * otherwise (it was the k-th or beyond): the score loses the k-th distance and the
        #   pointer moves back to the previous remaining neighbour.
        before = position_by_col[winner] < pointer
        lost = near_flat.take(row_start + pointer)
        np.copyto(lost, d64_by_col[winner], where=before)
        score -= lost
        error += np.multiply(np.abs(score, out=scratch), eps, out=scratch)
        before |= ~alive
        idx = np.flatnonzero(~before)
        if idx.size:
            ptr = pointer[idx] - 1
            start = row_start[idx]
            while True:
                dead = ~alive[order_flat.take(start + ptr)]
                if not dead.any():
                    break
                ptr -= dead
            pointer[idx] = ptr
        inexact = np.flatnonzero(
            alive & (error > np.multiply(score, _RESUM_RELATIVE_ERROR, out=scratch))
        )
        if inexact.size:
            score[inexact] = exact_scores(inexact, k - 1)
            error[inexact] = score[inexact] * ((k - 1) * eps)
    return selected


def closest_to_median_mean(
    updates: torch.Tensor, rows: torch.Tensor, beta: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bulyan's aggregation phase: per coordinate, the mean of the ``beta`` values of the rows
    ``rows`` closest to their median.

    For each coordinate *k*, with :math:`m_k` the median of :math:`\\{u_{ik} : i \\in` ``rows``
    :math:`\\}` and :math:`r_k` the ``beta``-th smallest distance :math:`|u_{ik} - m_k|`, the values
    strictly closer than :math:`r_k` are kept, and the values exactly at distance :math:`r_k`
    share the remaining places equally (each weighted by places left / values at that distance),
    so the result does not depend on the order of the rows. The values used all lie within
    :math:`[m_k - r_k, m_k + r_k]`; nothing is subtracted.

    Algorithm: the columns are processed in cache-sized blocks on a thread pool
    (:func:`~matl.aggregation.order_stats.map_column_ranges`). Each block of the selected rows is
    copied transposed, one row per coordinate, into the run layout of
    :func:`~matl.aggregation.order_stats.column_runs`, and a sorted copy gives the median
    (:class:`~matl.aggregation.order_stats.OrderStats`); the distances to it are formed in the
    same layout.

    * One run per coordinate (``theta`` values of at most 2 KiB, or more than 4 KiB): the
      ``beta`` closest values fill a window of the sorted values, :math:`r_k` is the smallest
      window's wider end, and the window is summed straight from the sorted values.
    * Two runs (2–4 KiB, e.g. ``512 < theta <= 1024`` float32 values): :math:`r_k` and the next
      distance are selected from a sorted copy of the distances (so no row is ever merged or
      sorted past NumPy's in-register sorting network), and the values within :math:`r_k` are
      summed by one dot product per coordinate with their 0/1 indicator.

    The ``beta`` closest values are unique unless the distance after :math:`r_k` equals it (or a
    value next to the window is as close); those few coordinates are redone with the shared
    weights. Credits come from the same indicator, in the unsorted layout.

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
    mids = [theta // 2] if theta % 2 == 1 else [theta // 2 - 1, theta // 2]
    layout = run_layout(theta, x.dtype.itemsize)

    def block(start: int, stop: int, ws: Workspace) -> NDArray[np.float64]:
        c = stop - start
        shape = (c, *layout)
        # The selected values, one row per coordinate (NaN in the filler slot, if any: its
        # distance is NaN too, which sorts last and is never <= a radius).
        values = column_runs(x[picked, start:stop], np.nan, out=ws.get("values", shape, x.dtype))
        srt = ws.get("sorted", shape, x.dtype)
        srt[...] = values
        med = OrderStats(srt, theta).select(mids)
        med = med[0] if len(mids) == 1 else midpoint(med[0], med[1])
        dist = np.subtract(values, med[:, None, None], out=ws.get("dist", shape, x.dtype))
        np.abs(dist, out=dist)
        flat_values = values.reshape(c, -1)[:, :theta]
        flat_dist = dist.reshape(c, -1)[:, :theta]
        if layout[0] == 1:
            # One sorted run: the beta closest values fill a window of it, found directly, and
            # are summed straight from the sorted values.
            radius, first, unique = _closest_window(srt[:, 0], med, beta, ws)
        else:
            # Two runs: the radius is the beta-th smallest distance, selected from a sorted
            # copy of the distances. The beta closest values are unique unless the next
            # distance equals it.
            srt[...] = dist
            radius, *beyond = OrderStats(srt, theta).select(
                [beta - 1, beta] if beta < theta else [beta - 1]
            )
            unique = beyond[0] > radius if beyond else np.ones(c, dtype=bool)
        # used[k, i] = 1 where row i's value is among coordinate k's beta closest (as 0/1 in the
        # values' dtype). Coordinates with values tied at the radius get a radius of -1 here
        # (distances are >= 0) and are redone below with the places at the radius shared.
        tied = np.flatnonzero(~unique)
        used = ws.get("used", (c, theta), x.dtype)
        np.less_equal(flat_dist, np.where(unique, radius, -1)[:, None], out=used, casting="unsafe")
        if layout[0] == 1:
            row_start = np.arange(c, dtype=np.intp) * theta + first
            total = slice_sums(srt.reshape(-1), row_start, row_start + beta)
        else:
            # One dot product per coordinate; an infinite value left out gives inf * 0 = NaN
            # there, so such (rare) coordinates are summed again without it.
            with np.errstate(invalid="ignore"):
                total = np.matmul(flat_values[:, None, :], used[:, :, None])[:, 0, 0]
            lost = np.flatnonzero(np.isnan(total))
            if lost.size:
                total[lost] = np.where(used[lost] > 0, flat_values[lost], 0).sum(axis=1)
        out[start:stop] = total / beta
        credit: NDArray[np.float64] = used.sum(axis=0).astype(np.float64)
        if tied.size:
            sub = flat_values[tied].astype(np.float64)
            gap = flat_dist[tied]
            r = radius[tied, None]
            inside = gap < r
            edge = gap == r
            n_inside = inside.sum(axis=1, keepdims=True)
            n_edge = edge.sum(axis=1, keepdims=True)
            weight = inside + edge * ((beta - n_inside) / n_edge)
            out[start + tied] = ((weight * sub).sum(axis=1) / beta).astype(x.dtype)
            credit += weight.sum(axis=0)
        return credit

    credit = np.sum(map_column_ranges(theta, d, block), axis=0)
    return (
        torch.from_numpy(out).to(device=updates.device, dtype=updates.dtype),
        torch.from_numpy(credit).to(device=updates.device),
    )


def _closest_window(
    row: FloatArray, med: FloatArray, beta: int, ws: Workspace
) -> tuple[FloatArray, NDArray[np.intp], NDArray[np.bool_]]:
    """The ``beta`` values of each sorted row of ``row`` (``(c, θ)``) closest to ``med``.

    ``|x − m|`` (as rounded in the row's dtype) falls and then rises along a sorted row, so the
    ``beta`` closest values fill a window ``row[l : l + beta]``, ``l <= θ − beta``, and the
    ``beta``-th smallest distance is the smallest window's wider end (the first such window is
    taken).

    Returns
    -------
    (radius, first, unique):
        ``radius`` the ``beta``-th smallest distance; ``first`` the start of the first window
        achieving it; ``unique`` whether that window is the only set of ``beta`` values within
        ``radius`` (neither value next to it is as close).
    """
    c, theta = row.shape
    spare = theta - beta
    gap = np.subtract(row, med[:, None], out=ws.get("gap", row.shape, row.dtype))
    np.abs(gap, out=gap)
    cost = ws.get("cost", (c, spare + 1), row.dtype)
    np.maximum(gap[:, : spare + 1], gap[:, beta - 1 :], out=cost)
    first = cost.argmin(axis=1)
    lines = np.arange(c)
    radius: FloatArray = cost[lines, first]
    unique = np.ones(c, dtype=bool)
    unique &= (first == 0) | (gap[lines, np.maximum(first - 1, 0)] > radius)
    unique &= (first == spare) | (gap[lines, np.minimum(first + beta, theta - 1)] > radius)
    return radius, first, unique


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

    The pairwise distances are computed once; each selection round only masks them (see
    :func:`bulyan_select`).

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
