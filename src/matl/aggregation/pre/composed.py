"""A rule composed with pre-aggregators: ``rule ∘ pre_k ∘ … ∘ pre_1``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from matl.aggregation.base import AggregationResult, AggregationRule, RoundContext
from matl.aggregation.pre.base import PreAggregator, PreSpec, build_preaggregators
from matl.errors import ConfigError, PreconditionError
from matl.rng import keyed_generator

__all__ = ["Composed", "compose", "mixed_context", "round_generator"]

#: Tags the pre-aggregation random stream so it never coincides with another use of the seed.
_STREAM_TAG = 0x707265  # "pre"


def round_generator(seed: int, rnd: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded from ``(seed, rnd)`` with NumPy's ``SeedSequence``."""
    if rnd < 0:
        raise ValueError(f"round must be >= 0 to derive a generator, got {rnd}")
    return keyed_generator(seed, _STREAM_TAG, rnd)


def mixed_context(ctx: RoundContext | None, mixing: torch.Tensor) -> RoundContext | None:
    """The context handed on with rows mixed by ``mixing`` (``(n', n)``).

    * ``client_ids`` is kept when ``n' = n`` and every row *j* still contains client *j*'s own
      update (``M_jj > 0``: clipping, NNM); otherwise it becomes ``None`` (a bucket is no client).
    * ``sample_counts`` becomes :math:`P c` where :math:`P` is :math:`M` with each row scaled to
      sum to 1: a row's count is the mixing-weighted mean of its clients' counts.
    * Everything else (round, global parameters, validation data, model, extras) is unchanged.
    """
    if ctx is None:
        return None
    n_out, n_in = mixing.shape
    keep_ids = n_out == n_in and bool((torch.diagonal(mixing) > 0).all())
    counts = ctx.sample_counts
    if counts is not None:
        rows = mixing.cpu()
        totals = rows.sum(dim=1, keepdim=True)
        share = rows / torch.where(totals > 0, totals, torch.ones_like(totals))
        mixed = share @ counts.detach().to(device="cpu", dtype=torch.float64)
        dtype = counts.dtype if counts.is_floating_point() else torch.float64
        counts = mixed.to(dtype=dtype, device=counts.device)
    return dataclasses.replace(
        ctx, client_ids=ctx.client_ids if keep_ids else None, sample_counts=counts
    )


@dataclass(frozen=True, kw_only=True, repr=False)
class Composed(AggregationRule):
    r"""An aggregation rule applied after pre-aggregators: ``rule ∘ pre_k ∘ … ∘ pre_1``.

    Build it with ``get_rule(name, pre=[...], pre_seed=...)``. Calling it validates the updates
    (shape, finiteness, context) once, applies the pre-aggregators in order, each returning
    transformed rows and a mixing matrix, runs the wrapped rule on the final :math:`n'` rows, and
    maps the result back to the :math:`n` original clients with the total mixing matrix
    :math:`M = M_k \cdots M_1` (:math:`n' \times n`, non-negative, float64):

    * ``aggregate`` is the wrapped rule's aggregate.
    * ``weights`` :math:`= M^\top w / \mathbf 1^\top M^\top w`, where :math:`w` are the wrapped
      rule's weights over the mixed rows. For a rule that is linear given its weights,
      :math:`\sum_j w_j \tilde u_j = \sum_i (M^\top w)_i u_i`, so :math:`M^\top w` is each client's
      exact coefficient in the aggregate; the normalisation (only needed when clipping shrank rows)
      turns it into each client's share, summing to 1.
    * ``flagged[i]`` is ``True`` exactly when **all** of client *i*'s mass goes to flagged mixed
      rows: every row *j* with :math:`M_{ji} > 0` was flagged by the wrapped rule (vacuously true
      when column *i* of :math:`M` is zero, i.e. the pre-aggregation discarded client *i*
      entirely; no built-in pre-aggregator does). A client that also feeds an unflagged row is not
      flagged, so NNM, which mixes every client into several rows, rarely flags anyone.
    * ``scores`` are the wrapped rule's scores when each mixed row is a rescaled copy of the
      client in the same position (:math:`M` diagonal: clipping only); otherwise ``None``, since a
      score of a mixture is no client's score.

    The pre-aggregators' and the wrapped rule's preconditions are checked up front on the row
    counts each one sees, so a :class:`PreconditionError` names the wrapped rule and the reduced
    :math:`n'` (bucketing turns :math:`n` rows into :math:`\lceil n/s \rceil`).

    The wrapped rule gets the context transformed by :func:`mixed_context`. A pre-aggregator with
    an ``f`` field left at ``None`` (NNM) takes the wrapped rule's ``f`` when it has one. Randomised
    pre-aggregators (bucketing) draw from a :class:`torch.Generator` derived from
    ``(seed, ctx.round)`` (round 0 without a context), so a round's result is reproducible.
    State (``state_dict``, ``load_state_dict``, ``reset``) is the wrapped rule's.

    Parameters
    ----------
    pre:
        The pre-aggregators, applied first to last (at least one).
    rule:
        The wrapped aggregation rule.
    seed:
        Seed of the per-round generator (an integer ``>= 0``).

    References
    ----------
    Allouah et al. "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity."
    AISTATS 2023 (composition of a pre-aggregator with a robust rule).
    """

    name: ClassVar[str] = "composed"
    reference: ClassVar[str] = "Allouah et al., Fixing by Mixing, AISTATS 2023"

    pre: tuple[PreAggregator, ...]
    rule: AggregationRule
    seed: int = 0

    def __post_init__(self) -> None:
        pre = tuple(self.pre) if isinstance(self.pre, (list, tuple)) else None
        if not pre or not all(isinstance(p, PreAggregator) for p in pre):
            raise ConfigError(
                f"composed: pre must be a non-empty sequence of PreAggregator, got {self.pre!r}"
            )
        if not isinstance(self.rule, AggregationRule):
            raise ConfigError(
                f"composed: rule must be an AggregationRule, got {type(self.rule).__name__}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"composed: seed must be an integer >= 0, got {self.seed!r}")
        rule_f = getattr(self.rule, "f", None)
        if isinstance(rule_f, int) and not isinstance(rule_f, bool):
            pre = tuple(_with_f(p, rule_f) for p in pre)
        object.__setattr__(self, "pre", pre)

    def check_precondition(self, n: int) -> None:
        m = n
        for p in self.pre:
            p.check_precondition(m)
            m = p.output_size(m)
        try:
            self.rule.check_precondition(m)
        except PreconditionError as exc:
            if m == n:
                raise
            chain = "∘".join(p.label() for p in reversed(self.pre))
            raise PreconditionError(f"{exc} (after {chain} reduced n={n} to n'={m})") from None

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        rng = None
        if any(p.randomized for p in self.pre):
            rng = round_generator(self.seed, ctx.round if ctx is not None else 0)
        rows, rows_ctx = updates, ctx
        total = torch.eye(n, dtype=torch.float64, device=updates.device)
        for p in self.pre:
            mixed = p(rows, rows_ctx, rng)
            rows_ctx = mixed_context(rows_ctx, mixed.mixing)
            rows, total = mixed.updates, mixed.mixing @ total
        res = self.rule(rows, rows_ctx)

        coeff = total.T @ res.weights.to(dtype=torch.float64, device=updates.device)
        mass = float(coeff.sum())
        if mass > 0 and np.isfinite(mass):
            weights = coeff / mass
        else:  # every row was scaled to zero: nothing to attribute
            weights = torch.full_like(coeff, 1.0 / n)
        feeds_clean = (total > 0) & ~res.flagged.to(device=updates.device)[:, None]
        flagged = ~feeds_clean.any(dim=0)
        scores = None
        if res.scores is not None and total.shape[0] == n:
            off_diagonal = total - torch.diag(torch.diagonal(total))
            if not bool(off_diagonal.any()):
                scores = res.scores
        return AggregationResult(
            aggregate=res.aggregate,
            weights=weights.to(updates.dtype),
            flagged=flagged,
            scores=scores,
        )

    def params(self) -> dict[str, Any]:
        """The wrapped rule's params plus ``pre`` and ``pre_seed``, so that
        ``get_rule(c.rule.name, **c.params()) == c``."""
        return {**self.rule.params(), "pre": [p.spec() for p in self.pre], "pre_seed": self.seed}

    def label(self) -> str:
        """``rule∘pre_k∘…∘pre_1``, e.g. ``krum(f=2)∘nnm(f=2)∘clip(tau=1.0)``."""
        shown = ", ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
            for k, v in self.rule.params().items()
        )
        parts = [f"{self.rule.name}({shown})" if shown else self.rule.name]
        parts += [p.label() for p in reversed(self.pre)]
        text = "∘".join(parts)
        if any(p.randomized for p in self.pre):
            text += f" [seed={self.seed}]"
        return text

    def __repr__(self) -> str:
        return self.label()

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)

    def reset(self) -> None:
        self.rule.reset()


def _with_f(p: PreAggregator, f: int) -> PreAggregator:
    fields = {fl.name for fl in dataclasses.fields(p)}
    if "f" in fields and getattr(p, "f", None) is None:
        return dataclasses.replace(p, f=f)  # type: ignore[call-arg]
    return p


def compose(
    rule: AggregationRule, pre: PreSpec | Iterable[PreSpec], *, seed: int = 0
) -> AggregationRule:
    """``rule`` preceded by the pre-aggregators ``pre`` (see :func:`build_preaggregators`);
    ``rule`` itself when ``pre`` is empty."""
    built = build_preaggregators(pre)
    if not built:
        return rule
    return Composed(pre=built, rule=rule, seed=seed)
