"""Coordinate-wise median (Yin et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from matl.aggregation.base import AggregationResult, AggregationRule, RoundContext
from matl.aggregation.order_stats import (
    FloatArray,
    OrderStats,
    Workspace,
    host_array,
    map_column_ranges,
    midpoint,
)
from matl.aggregation.registry import register_rule

__all__ = ["Median", "coordinate_median"]


def coordinate_median(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise median of the rows of ``updates`` and the rows it drew from.

    For odd ``n`` the median of a coordinate is the order statistic of rank ``(n + 1) / 2``; for
    even ``n`` it is the mean of the two middle order statistics (ranks ``n/2`` and ``n/2 + 1``).

    Algorithm: the columns are processed in cache-sized blocks on a thread pool
    (:func:`~matl.aggregation.order_stats.map_column_ranges`). Each block is copied transposed
    into sorted runs and only the middle ranks and their neighbours are selected from them
    (:class:`~matl.aggregation.order_stats.OrderStats`), which for ``n <= 1024`` float32 (or
    ``n <= 512`` float64) values keeps every sort inside NumPy's in-register sorting network. The credit of each row is then
    counted in one comparison pass over the block in its original row-major layout.

    The blocks run on up to ``torch.get_num_threads()`` worker threads (NumPy releases the GIL in
    the sorts and the large passes). Tensors off the CPU, or in half precision, are processed in
    host memory (half precision widened exactly to float32) and the results come back in the input
    dtype and device.

    Returns
    -------
    (median, weights):
        ``median`` is ``(d,)`` in the input dtype. ``weights`` is ``(n,)`` float64: the fraction
        of coordinates in which each row supplied a middle order statistic, each of the two
        middles counting ``1/2`` when ``n`` is even, so the weights sum to 1. When several rows
        hold the value of a middle order statistic, they share its credit equally, which keeps
        the weights invariant under permutations of the rows.
    """
    n, d = updates.shape
    x = host_array(updates)
    values = np.empty(d, dtype=x.dtype)
    mids = [n // 2] if n % 2 == 1 else [n // 2 - 1, n // 2]
    # The middle ranks and their neighbours: a neighbour equal to a middle value is a tie.
    ranks = sorted({r + s for r in mids for s in (-1, 0, 1) if 0 <= r + s < n})

    def block(start: int, stop: int, ws: Workspace) -> FloatArray:
        cols = x[:, start:stop]
        picked = dict(zip(ranks, OrderStats.of_columns(cols, ws).select(ranks), strict=True))
        chosen = [picked[r] for r in mids]
        values[start:stop] = chosen[0] if len(chosen) == 1 else midpoint(*chosen)
        tied = np.zeros(stop - start, dtype=bool)
        for r in mids:
            for s in (r - 1, r + 1):
                if s in picked:
                    tied |= picked[s] == picked[r]
        return _shared_credit(cols, chosen, tied, ws)

    credit = np.sum(map_column_ranges(n, d, block), axis=0) / d
    return (
        torch.from_numpy(values).to(device=updates.device, dtype=updates.dtype),
        torch.from_numpy(credit).to(device=updates.device),
    )


def _shared_credit(
    cols: FloatArray, chosen: list[FloatArray], tied: FloatArray, ws: Workspace
) -> FloatArray:
    """``(n,)`` float64 credit of each row of the ``(n, c)`` block ``cols`` for holding the values
    ``chosen`` (one ``(c,)`` array per middle, each worth ``1 / len(chosen)`` per coordinate).

    Where no other row holds a chosen value (``tied`` false) its single holder gets the whole
    share: the chosen values are masked to NaN in the tied columns, so one equality pass over the
    block counts the untied ones. The tied columns (few, on real-valued data) are redone with the
    share split equally between the rows holding the value.
    """
    share = 1.0 / len(chosen)
    masked = [np.where(tied, np.nan, v) for v in chosen]
    equal = np.equal(cols, masked[0], out=ws.get("equal", cols.shape, bool))
    for v in masked[1:]:
        equal |= np.equal(cols, v, out=ws.get("equal_next", cols.shape, bool))
    credit = equal.sum(axis=1, dtype=np.int32) * share
    if tied.any():
        sub = cols[:, tied]
        for v in chosen:
            holders = sub == v[tied]
            credit += share * (holders / holders.sum(axis=0)).sum(axis=1)
    result: FloatArray = credit
    return result


@register_rule
@dataclass(frozen=True, kw_only=True)
class Median(AggregationRule):
    r"""Coordinate-wise median.

    .. math::

        \bar{u}_k = \operatorname{median}\{u_{1k}, \dots, u_{nk}\}, \qquad k = 1, \dots, d,

    where, for even :math:`n`, the median is the mean of the two middle order statistics
    :math:`\tfrac12\,(u_{(n/2)k} + u_{(n/2+1)k})`.

    Each coordinate of the result lies between the smallest and largest honest value of that
    coordinate as long as fewer than half the clients are Byzantine (:math:`f < n/2`); the rule has
    no parameter ``f``, so this is a guarantee to check against the deployment, not a precondition
    it can test.

    Returns
    -------
    AggregationResult
        ``aggregate`` the coordinate-wise median (input dtype). ``weights[i]`` is the fraction of
        coordinates in which client *i*'s value was a selected middle order statistic (each of the
        two middles counts ``1/2`` for even :math:`n`), so the weights sum to 1; rows holding equal
        values share that value's credit equally. ``flagged`` all ``False`` (the median discards
        values per coordinate, not clients); ``scores`` ``None``.

    References
    ----------
    Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates." ICML 2018.
    """

    name: ClassVar[str] = "median"
    precondition: ClassVar[str] = "n >= 1"
    reference: ClassVar[str] = (
        "Yin et al., Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates, "
        "ICML 2018"
    )

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        values, weights = coordinate_median(updates)
        return AggregationResult(
            aggregate=values,
            weights=weights.to(dtype=updates.dtype),
            flagged=torch.zeros(n, dtype=torch.bool, device=updates.device),
            scores=None,
        )
