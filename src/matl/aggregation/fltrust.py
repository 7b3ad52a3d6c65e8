"""FLTrust (Cao, Fang, Liu, Gong 2021): trust each update by its direction relative to an update the
server computes on its own small trusted dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from matl.aggregation.base import AggregationResult, AggregationRule, RoundContext
from matl.aggregation.registry import register_rule
from matl.errors import ConfigError, InvalidUpdateError
from matl.models.base import BatchedModel
from matl.models.train import ClientData, LocalTrainingConfig, local_train
from matl.rng import keyed_generator

__all__ = ["FLTrust", "fltrust_combine", "round_generator"]


def round_generator(seed: int, rnd: int) -> torch.Generator:
    """A ``torch.Generator`` for round ``rnd`` derived from ``seed`` (NumPy ``SeedSequence`` of
    ``(seed, rnd)``, so nearby seeds and rounds give unrelated streams)."""
    return keyed_generator(seed, rnd)


def fltrust_combine(
    updates: torch.Tensor, server_update: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""FLTrust's combination of the client updates given the server update :math:`g_0`.

    Parameters
    ----------
    updates:
        ``(n, d)`` client updates (not modified).
    server_update:
        ``(d,)`` server update :math:`g_0`, same dtype and device as ``updates``.

    Returns
    -------
    (aggregate, trust, weights):
        ``aggregate`` :math:`\sum_i TS_i \bar g_i / \sum_j TS_j` with
        :math:`\bar g_i = \frac{\lVert g_0 \rVert}{\lVert g_i \rVert} g_i` (input dtype; zero when
        every :math:`TS_i = 0`); ``trust`` :math:`TS_i = \mathrm{ReLU}(\cos(g_i, g_0))` (float64,
        0 where either vector is zero); ``weights`` :math:`TS_i / \sum_j TS_j` (float64; uniform
        ``1/n`` when every :math:`TS_i = 0`).
    """
    n = updates.shape[0]
    g0_norm = torch.linalg.vector_norm(server_update).to(torch.float64)
    norms = torch.linalg.vector_norm(updates, dim=1).to(torch.float64)
    dots = (updates @ server_update).to(torch.float64)
    denom = norms * g0_norm
    nonzero = denom > 0
    cosine = torch.where(nonzero, dots / torch.where(nonzero, denom, 1.0), 0.0)
    trust = cosine.clamp(min=0.0, max=1.0)  # ReLU; the upper clamp only absorbs rounding
    total = trust.sum()
    if not bool(total > 0):
        zeros = torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
        uniform = torch.full((n,), 1.0 / n, dtype=torch.float64, device=updates.device)
        return zeros, trust, uniform
    weights = trust / total
    # Rescaling ḡ_i = (‖g0‖ / ‖g_i‖) g_i folded into the coefficients: trust > 0 implies ‖g_i‖ > 0.
    scale = torch.where(trust > 0, g0_norm / torch.where(trust > 0, norms, 1.0), 0.0)
    coefficients = (weights * scale).to(dtype=updates.dtype)
    return coefficients @ updates, trust, weights


@register_rule
@dataclass(frozen=True, kw_only=True)
class FLTrust(AggregationRule):
    r"""FLTrust: weight each update by its cosine similarity to the server's own update, after
    rescaling it to the server update's norm.

    The server holds a small clean *root* dataset. Each round it trains the current global model
    on it exactly as a client would and takes the delta :math:`g_0` (the *server update*). With
    client updates (deltas) :math:`g_1, \dots, g_n`:

    .. math::

        TS_i = \mathrm{ReLU}\bigl(\cos(g_i, g_0)\bigr), \qquad
        \bar g_i = \frac{\lVert g_0 \rVert}{\lVert g_i \rVert}\, g_i, \qquad
        g = \frac{1}{\sum_j TS_j} \sum_{i=1}^{n} TS_i\, \bar g_i .

    An update pointing away from :math:`g_0` gets trust 0, and rescaling to :math:`\lVert g_0
    \rVert` stops a trusted client from gaining influence through a large norm. The cosine of a
    zero vector is taken as 0. If every :math:`TS_i = 0` the aggregate is the zero vector (the
    round leaves the model unchanged).

    The server update comes from, in order:

    1. ``ctx.extra["server_update"]``: a precomputed ``(d,)`` delta, used as is (for callers that
       train the server model themselves, or tests);
    2. otherwise, training: :func:`matl.models.local_train` runs the clients' own local SGD
       (``ctx.training``, a :class:`~matl.models.LocalTrainingConfig`) on the root data
       ``ctx.validation`` (raw inputs, cast to the parameters' dtype) from
       ``ctx.global_params`` with the architecture ``ctx.model``, as in the paper (the server
       uses the clients' learning rate, batch size and number of local iterations). Its shuffles
       come from a ``torch.Generator`` seeded from ``(seed, ctx.round)``, so a run is
       reproducible and each round draws fresh batches.

    Parameters
    ----------
    seed:
        Seed of the server's local training (an integer ``>= 0``, default ``0``).

    Returns
    -------
    AggregationResult
        ``aggregate`` :math:`g` (input dtype). ``scores`` the trust :math:`TS_i`. ``weights``
        :math:`TS_i / \sum_j TS_j`, each client's share of :math:`g` (all rescaled updates have
        the same norm). ``flagged`` the clients with :math:`TS_i = 0`. When every
        :math:`TS_i = 0`, ``weights`` are uniform ``1/n`` only to keep them summing to 1: nothing
        was averaged (the aggregate is zero) and every client is flagged.

    Raises
    ------
    ConfigError
        ``seed`` is not an integer ``>= 0``; or no ``server_update`` is given and the context lacks
        what training needs (the message names the missing fields: ``validation``, ``model``,
        ``global_params``, ``training``), or these do not fit together.
    InvalidUpdateError
        ``ctx.extra["server_update"]`` is not a finite floating ``(d,)`` tensor.

    References
    ----------
    Cao, Fang, Liu, Gong. "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping." NDSS 2021.
    """

    name: ClassVar[str] = "fltrust"
    precondition: ClassVar[str] = "n >= 1"
    reference: ClassVar[str] = (
        "Cao et al., FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping, "
        "NDSS 2021"
    )

    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"fltrust: seed must be an integer >= 0, got {self.seed!r}")

    def server_update(self, ctx: RoundContext | None) -> torch.Tensor:
        """The server update :math:`g_0` for this round: ``ctx.extra["server_update"]`` if given,
        otherwise the delta of local training on the root data (see the class docstring)."""
        if ctx is not None and "server_update" in ctx.extra:
            g0 = ctx.extra["server_update"]
            if not isinstance(g0, torch.Tensor):
                raise InvalidUpdateError(
                    "fltrust: ctx.extra['server_update'] must be a torch.Tensor, "
                    f"got {type(g0).__name__}"
                )
            return g0
        missing = [
            name
            for name in ("validation", "model", "global_params", "training")
            if ctx is None or getattr(ctx, name) is None
        ]
        if missing:
            raise ConfigError(
                "fltrust needs the server update: give ctx.extra['server_update'] or a context "
                f"with root data and the model to train on it; missing: {', '.join(missing)}"
            )
        assert ctx is not None and ctx.validation is not None and ctx.global_params is not None
        model, training, theta = ctx.model, ctx.training, ctx.global_params
        if not isinstance(model, BatchedModel):
            raise ConfigError(
                f"fltrust: ctx.model must be a matl.models.BatchedModel, got {type(model).__name__}"
            )
        if not isinstance(training, LocalTrainingConfig):
            raise ConfigError(
                "fltrust: ctx.training must be a matl.models.LocalTrainingConfig, "
                f"got {type(training).__name__}"
            )
        if theta.ndim != 1 or theta.numel() != model.num_params or not theta.is_floating_point():
            raise ConfigError(
                f"fltrust: ctx.global_params must be a floating ({model.num_params},) vector for "
                f"model {model.name!r}, got {theta.dtype} {tuple(theta.shape)}"
            )
        x, y = ctx.validation
        if len(y) == 0 or len(x) != len(y):
            raise ConfigError(
                f"fltrust: the root data ctx.validation needs matching non-empty inputs and "
                f"labels, got {len(x)} inputs and {len(y)} labels"
            )
        if x.is_floating_point():
            x = x.to(theta.dtype)
        data = ClientData.build(model, x, y, [torch.arange(len(y))])
        generator = round_generator(self.seed, ctx.round)
        delta = local_train(
            model, theta, data, torch.zeros(1, dtype=torch.int64), training, generator
        )
        return delta[0]

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        d = updates.shape[1]
        g0 = self.server_update(ctx)
        if g0.ndim != 1 or g0.numel() != d or not g0.is_floating_point():
            raise InvalidUpdateError(
                f"fltrust: the server update must be a floating ({d},) tensor, "
                f"got {g0.dtype} {tuple(g0.shape)}"
            )
        if not bool(torch.isfinite(g0).all()):
            raise InvalidUpdateError("fltrust: the server update contains NaN or Inf")
        g0 = g0.to(dtype=updates.dtype, device=updates.device)
        aggregate, trust, weights = fltrust_combine(updates, g0)
        return AggregationResult(
            aggregate=aggregate,
            weights=weights.to(dtype=updates.dtype),
            flagged=trust == 0,
            scores=trust.to(dtype=updates.dtype),
        )
