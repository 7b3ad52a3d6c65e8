"""Krum (Blanchard et al. 2017): select the update closest to its nearest neighbours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from matl.aggregation.base import AggregationResult, AggregationRule, RoundContext
from matl.aggregation.distances import pairwise_sq_distances
from matl.aggregation.order_stats import sort_rows
from matl.aggregation.registry import register_rule
from matl.errors import ConfigError

__all__ = ["Krum", "krum_scores"]


def krum_scores(updates: torch.Tensor, f: int) -> torch.Tensor:
    """Blanchard's Krum score of every row: the sum of squared distances to its ``n − f − 2``
    nearest other rows.

    Parameters
    ----------
    updates:
        ``(n, d)`` floating tensor with ``n − f − 2 ≥ 1``.
    f:
        Number of Byzantine clients tolerated.

    Returns
    -------
    torch.Tensor
        ``(n,)`` scores in the input dtype.
    """
    n = updates.shape[0]
    k = n - f - 2
    if k < 1:
        raise ValueError(f"krum_scores needs n - f - 2 >= 1, got n={n}, f={f}")
    dist = pairwise_sq_distances(updates)
    dist.fill_diagonal_(float("inf"))  # a row is not its own neighbour
    # Each row sorted ascending (NumPy's vectorised sort on CPU, several times faster than
    # torch.sort on these rows; the same values, so the same sums).
    nearest = sort_rows(dist)[:, :k]
    return nearest.sum(dim=1)


@register_rule
@dataclass(frozen=True, kw_only=True)
class Krum(AggregationRule):
    r"""Krum: the update whose ``n − f − 2`` nearest neighbours are closest.

    For each client *i* let :math:`N_i` be the :math:`n - f - 2` updates nearest to :math:`u_i`
    (other than :math:`u_i` itself) in Euclidean distance. The Krum score is

    .. math::

        s(i) = \sum_{j \in N_i} \lVert u_i - u_j \rVert^2 ,

    and Krum returns :math:`u_{i^*}` with :math:`i^* = \arg\min_i s(i)` (ties go to the lowest
    index). The neighbour count :math:`n - f - 2` is Blanchard et al.'s definition, pinned by a
    test; other libraries differ (ByzFL sums over the :math:`n - f - 1` nearest), which can select
    a different update.

    Precondition: :math:`n \ge 2f + 3` (Blanchard et al.'s :math:`2f + 2 < n`); otherwise
    :class:`~matl.errors.PreconditionError`.

    Parameters
    ----------
    f:
        Number of Byzantine clients tolerated (an integer ``>= 0``).

    Returns
    -------
    AggregationResult
        ``aggregate`` a copy of the selected update (input dtype); ``weights`` one-hot on the
        selected client; ``scores`` the Krum scores :math:`s(i)` (lower is more central);
        ``flagged`` the ``f`` updates Krum ranks as most outlying (the ``f`` highest scores, ties
        going to the higher index, so the selected client is never flagged). ``flagged`` is a
        diagnostic: Krum uses only the selected update, as ``weights`` says.

    Raises
    ------
    ConfigError
        ``f`` is not an integer ``>= 0``.
    PreconditionError
        ``n < 2f + 3``.

    References
    ----------
    Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent." NeurIPS 2017.
    """

    name: ClassVar[str] = "krum"
    precondition: ClassVar[str] = "n >= 2f + 3"
    reference: ClassVar[str] = (
        "Blanchard et al., Machine Learning with Adversaries: Byzantine Tolerant Gradient "
        "Descent, NeurIPS 2017"
    )

    f: int

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise ConfigError(f"krum: f must be an integer >= 0, got {self.f!r}")

    def check_precondition(self, n: int) -> None:
        if n < 2 * self.f + 3:
            raise self.precondition_error(n, self.f)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        scores = krum_scores(updates, self.f)
        # Stable ascending order: ties keep index order, so the first entry is the lowest-index
        # minimiser and the last f entries are the highest scores (higher index on ties).
        order = torch.sort(scores, stable=True).indices
        selected = int(order[0])
        weights = torch.zeros(n, dtype=updates.dtype, device=updates.device)
        weights[selected] = 1.0
        flagged = torch.zeros(n, dtype=torch.bool, device=updates.device)
        if self.f > 0:
            flagged[order[n - self.f :]] = True
        return AggregationResult(
            aggregate=updates[selected].clone(),
            weights=weights,
            flagged=flagged,
            scores=scores,
        )
