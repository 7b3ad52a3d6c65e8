"""Coordinate-wise trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
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
)
from matl.aggregation.registry import register_rule
from matl.errors import ConfigError

__all__ = ["TrimmedMean", "trimmed_mean"]


def trimmed_mean(updates: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise mean after dropping the ``f`` smallest and ``f`` largest values.

    The mean is taken over the kept order statistics ``u_{(f+1)k}, …, u_{(n−f)k}`` themselves.
    Nothing is subtracted, so the result carries only the rounding of a plain mean of values that
    all lie between the kept extremes, however large the trimmed values are (the "sum minus the
    trimmed sums" shortcut would cancel catastrophically against a huge outlier).

    Algorithm: the columns are processed in cache-sized blocks on a thread pool
    (:func:`~matl.aggregation.order_stats.map_column_ranges`). Each block is copied transposed
    into sorted runs (:class:`~matl.aggregation.order_stats.OrderStats`: one run per coordinate,
    or two when a coordinate's values take 2–4 KiB, e.g. ``512 < n <= 1024`` float32 values, so
    that every sort stays inside NumPy's in-register sorting network). The four boundary ranks ``f − 1, f, n − f − 1, n − f`` are
    selected from the runs; the kept values, one contiguous slice of each sorted run, are summed
    in sorted order (pairwise) run by run; and the rows trimmed in each coordinate are counted in
    one comparison pass over the block in its original row-major layout.

    The blocks run on up to ``torch.get_num_threads()`` worker threads (NumPy releases the GIL in
    the sorts and the large passes). Tensors off the CPU, or in half precision, are processed in
    host memory (half precision widened exactly to float32) and the results come back in the input
    dtype and device.

    Parameters
    ----------
    updates:
        ``(n, d)`` floating tensor with ``n >= 2f + 1``. Not modified.
    f:
        Values trimmed at each end of every coordinate.

    Returns
    -------
    (mean, trimmed):
        ``mean`` is ``(d,)`` in the input dtype. ``trimmed`` is ``(n,)`` float64: for each row,
        the number of coordinates in which its value was trimmed. Where several rows hold the
        value at the trimming boundary and only some of those copies are trimmed, each of them is
        counted with the same fraction (trimmed copies / equal copies), so ``trimmed`` does not
        depend on the row order and sums to ``2 f d``.
    """
    n, d = updates.shape
    if f < 0 or n < 2 * f + 1:
        raise ValueError(f"trimmed_mean needs 0 <= f and n >= 2f + 1, got n={n}, f={f}")
    if f == 0:
        return updates.mean(dim=0), torch.zeros(n, dtype=torch.float64, device=updates.device)
    x = host_array(updates)
    out = np.empty(d, dtype=x.dtype)

    def block(start: int, stop: int, ws: Workspace) -> FloatArray:
        cols = x[:, start:stop]
        stats = OrderStats.of_columns(cols, ws)
        below, lo, hi, above = stats.select([f - 1, f, n - f - 1, n - f])
        # (the splits between the runs found for the selection are reused for the sum)
        out[start:stop] = stats.sum_of_ranks(f, n - f) / (n - 2 * f)
        # Strictly outside [lo, hi]: trimmed whatever the ties.
        outside = np.less(cols, lo, out=ws.get("outside", cols.shape, bool))
        outside |= np.greater(cols, hi, out=ws.get("above", cols.shape, bool))
        counts: FloatArray = outside.sum(axis=1, dtype=np.int32).astype(np.float64)
        # Columns where a trimmed value equals a kept boundary value: share the trimming.
        tied = (below == lo) | (above == hi)
        if tied.any():
            counts += _tied_trimming(cols[:, tied], lo[tied], hi[tied], f)
        return counts

    trimmed = np.sum(map_column_ranges(n, d, block), axis=0)
    return (
        torch.from_numpy(out).to(device=updates.device, dtype=updates.dtype),
        torch.from_numpy(trimmed).to(device=updates.device),
    )


def _tied_trimming(cols: FloatArray, lo: FloatArray, hi: FloatArray, f: int) -> FloatArray:
    """Trimmed share of the rows holding the boundary values ``lo``/``hi`` (``(n, c)`` block)."""
    n = cols.shape[0]
    at_lo = cols == lo
    at_hi = cols == hi
    n_below = (cols < lo).sum(axis=0)
    n_above = (cols > hi).sum(axis=0)
    n_lo = at_lo.sum(axis=0)
    n_hi = at_hi.sum(axis=0)
    same = lo == hi
    # Of the copies of lo, f - n_below are trimmed (ranks up to f); likewise at hi. When lo == hi
    # the single group keeps n - 2f of its copies.
    frac_lo = np.where(same, (n_lo - (n - 2 * f)) / n_lo, (f - n_below) / n_lo)
    frac_hi = np.where(same, 0.0, (f - n_above) / n_hi)
    share: FloatArray = at_lo.astype(np.float64) @ frac_lo + at_hi.astype(np.float64) @ frac_hi
    return share


def _trim_count(f: int | None, beta: float | None, n: int) -> int:
    if f is not None:
        return f
    assert beta is not None
    # floor(beta * n) with beta read as the decimal it was written as (0.29 * 100 = 29, not the
    # 28.999… that binary floating point gives).
    return math.floor(Fraction(repr(float(beta))) * n)


@register_rule
@dataclass(frozen=True, kw_only=True)
class TrimmedMean(AggregationRule):
    r"""Coordinate-wise trimmed mean.

    For each coordinate *k*, sort the values :math:`u_{(1)k} \le \dots \le u_{(n)k}`, drop the
    :math:`t` smallest and the :math:`t` largest, and average the rest:

    .. math::

        \bar{u}_k = \frac{1}{n - 2t} \sum_{j = t + 1}^{n - t} u_{(j)k} .

    The number trimmed per side is given either directly or as a fraction (exactly one of the two):

    * ``f`` — an integer, :math:`t = f` (the number of Byzantine clients tolerated);
    * ``beta`` — a fraction in :math:`[0, 0.5)`, :math:`t = \lfloor \beta n \rfloor` (Yin et al.'s
      :math:`\beta`; ``beta`` is read as the decimal it was written as, so ``beta=0.29`` with
      :math:`n = 100` trims 29).

    Each coordinate of the result lies between the smallest and largest honest value of that
    coordinate whenever at most :math:`t` clients are Byzantine. The mean is taken over the kept
    order statistics themselves (no subtraction of the trimmed values), so it is as accurate as a
    plain mean of values between the kept extremes, whatever the magnitude of the trimmed ones.

    Precondition: :math:`n \ge 2f + 1` (at least one value survives the trimming); otherwise
    :class:`~matl.errors.PreconditionError`. With ``beta`` it always holds.

    Parameters
    ----------
    f:
        Values trimmed per side, an integer ``>= 0``; or ``None`` when ``beta`` is given.
    beta:
        Fraction trimmed per side, in ``[0, 0.5)``; or ``None`` when ``f`` is given.

    Returns
    -------
    AggregationResult
        ``aggregate`` the trimmed mean (input dtype). ``weights[i]`` the fraction of coordinates in
        which client *i*'s value was kept, normalised to sum to 1 (:math:`(d - T_i) / (d(n - 2t))`
        with :math:`T_i` the number of coordinates where it was trimmed; rows tied at a trimming
        boundary share the trimming equally). ``flagged`` the clients trimmed in more than half of
        the coordinates (:math:`T_i > d/2`), which catches updates that are extreme almost
        everywhere without flagging the honest ones that are extreme in a few coordinates. Each
        client is trimmed in a fraction :math:`2t/n` of the coordinates on average, so the flag
        is informative only for :math:`t < n/4`; with heavier trimming typical honest clients
        cross the threshold too.
        ``scores`` the trimmed fraction :math:`T_i / d` (input dtype).

    Raises
    ------
    ConfigError
        Both or neither of ``f`` and ``beta`` given, ``f`` not an integer ``>= 0``, or ``beta``
        not a number in ``[0, 0.5)``.
    PreconditionError
        ``n < 2f + 1``.

    References
    ----------
    Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates." ICML 2018.
    """

    name: ClassVar[str] = "trimmed_mean"
    precondition: ClassVar[str] = "n >= 2f + 1"
    reference: ClassVar[str] = (
        "Yin et al., Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates, "
        "ICML 2018"
    )

    f: int | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if (self.f is None) == (self.beta is None):
            raise ConfigError(
                "trimmed_mean: give exactly one of f (values trimmed per side) and beta "
                f"(fraction trimmed per side), got f={self.f!r}, beta={self.beta!r}"
            )
        if self.f is not None and (
            isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0
        ):
            raise ConfigError(f"trimmed_mean: f must be an integer >= 0, got {self.f!r}")
        beta = self.beta
        if beta is not None and (
            isinstance(beta, bool)
            or not isinstance(beta, (int, float))
            or not math.isfinite(beta)
            or not 0 <= beta < 0.5
        ):
            raise ConfigError(f"trimmed_mean: beta must be a number in [0, 0.5), got {beta!r}")

    def trim_count(self, n: int) -> int:
        """Values trimmed per side of every coordinate with ``n`` clients."""
        return _trim_count(self.f, self.beta, n)

    def check_precondition(self, n: int) -> None:
        t = self.trim_count(n)
        if n < 2 * t + 1:
            raise self.precondition_error(n, t)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n, d = updates.shape
        t = self.trim_count(n)
        mean, trimmed = trimmed_mean(updates, t)
        kept = (d - trimmed) / (d * (n - 2 * t))
        return AggregationResult(
            aggregate=mean,
            weights=kept.to(device=updates.device, dtype=updates.dtype),
            flagged=trimmed > d / 2,
            scores=(trimmed / d).to(dtype=updates.dtype),
        )
