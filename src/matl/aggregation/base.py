"""The aggregation contract: :class:`RoundContext`, :class:`AggregationResult` and
:class:`AggregationRule`.

A rule is a small frozen, validated configuration object that is called on an ``(n, d)`` tensor of
client updates (one row per client) and returns an :class:`AggregationResult`. The base class
validates the input once (shape, dtype, finiteness, the rule's precondition on ``n`` and ``f``)
before the rule's own maths runs, so no rule can average a NaN in, and no rule re-implements the
checks. Rules never mutate their input.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from matl.aggregation.memo import round_norms
from matl.errors import InvalidUpdateError, PreconditionError


@dataclass(frozen=True)
class RoundContext:
    """What some rules need beyond the updates themselves.

    Attributes
    ----------
    client_ids:
        Ids of the clients whose updates are the rows, in row order.
    round:
        The round number (0-based).
    global_params:
        The global model's flat parameter vector θ the updates are deltas from.
    sample_counts:
        Each client's *declared* number of training samples (never trusted blindly: a client can
        lie).
    validation:
        A trusted batch ``(x, y)`` held by the server (Mode 1 validation / FLTrust root data), raw
        inputs as the dataset gives them (``model.prepare_inputs`` not applied).
    model:
        The model specification (a :class:`matl.models.BatchedModel`) that interprets
        ``global_params``.
    training:
        The clients' local-training hyper-parameters (a :class:`matl.models.LocalTrainingConfig`), so
        a rule that trains on the server's data (FLTrust) can use the same ones.
    extra:
        Free-form extras for rules that need more; keys are documented by the rule that reads them.
    """

    client_ids: tuple[int, ...] | None = None
    round: int = 0
    global_params: torch.Tensor | None = None
    sample_counts: torch.Tensor | None = None
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    model: Any = None
    training: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregationResult:
    """The outcome of one aggregation.

    Attributes
    ----------
    aggregate:
        ``(d,)`` tensor, same dtype as the input updates.
    weights:
        ``(n,)`` non-negative weights summing to 1: how much each client contributed (a selection
        rule puts ``1/k`` on the ``k`` chosen clients).
    flagged:
        ``(n,)`` bool: clients this rule treated as Byzantine this round.
    scores:
        ``(n,)`` float per-client score (Krum score, trust, …) or ``None`` where the rule has none.
    details:
        Optional rule-specific audit data (JSON-ready), e.g. the MATL trust engine's per-client
        verdicts with their reasons under ``"verdicts"``; ``None`` for rules without any.
    """

    aggregate: torch.Tensor
    weights: torch.Tensor
    flagged: torch.Tensor
    scores: torch.Tensor | None = None
    details: dict[str, Any] | None = None


def finite_row_mask(updates: torch.Tensor) -> torch.Tensor:
    """``(n,)`` bool: which rows of ``updates`` hold only finite values.

    Fast path: a row containing NaN or ±Inf has a non-finite Euclidean norm, so rows whose norm is
    finite are finite — one reduction at the cost of a mean instead of an ``(n, d)`` boolean mask.
    The norms are the round's shared ones (:func:`matl.aggregation.memo.round_norms`), which the
    trust engine's signals read again without another pass. Rows whose norm is not finite (a
    non-finite entry, or finite values whose norm overflows the dtype) are checked exactly.
    """
    mask = torch.isfinite(round_norms(updates))
    if not bool(mask.all()):
        suspects = torch.nonzero(~mask).flatten()
        mask[suspects] = torch.isfinite(updates[suspects]).all(dim=1)
    return mask


def check_updates(updates: torch.Tensor, ctx: RoundContext | None = None) -> None:
    """Reject malformed updates with a clear :class:`InvalidUpdateError`.

    Checks that ``updates`` is a 2-D floating tensor with at least one row, that every entry is
    finite (naming the offending rows), and that its width matches ``ctx.global_params`` and its
    height matches ``ctx.client_ids`` when the context gives them.
    """
    if not isinstance(updates, torch.Tensor):
        raise InvalidUpdateError(f"updates must be a torch.Tensor, got {type(updates).__name__}")
    if updates.ndim != 2:
        raise InvalidUpdateError(
            f"updates must be a 2-D (n_clients, d) tensor, got shape {tuple(updates.shape)}"
        )
    if updates.shape[0] == 0 or updates.shape[1] == 0:
        raise InvalidUpdateError(f"updates must be non-empty, got shape {tuple(updates.shape)}")
    if not updates.is_floating_point():
        raise InvalidUpdateError(f"updates must be floating point, got {updates.dtype}")
    finite_rows = finite_row_mask(updates)
    if not bool(finite_rows.all()):
        bad = torch.nonzero(~finite_rows).flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        raise InvalidUpdateError(
            f"updates contain NaN or Inf in {len(bad)} row(s): {shown}; "
            "reject these clients before aggregating"
        )
    if ctx is not None:
        if ctx.global_params is not None and ctx.global_params.numel() != updates.shape[1]:
            raise InvalidUpdateError(
                f"updates have d={updates.shape[1]} but the global model has "
                f"{ctx.global_params.numel()} parameters"
            )
        if ctx.client_ids is not None and len(ctx.client_ids) != updates.shape[0]:
            raise InvalidUpdateError(
                f"{updates.shape[0]} updates but {len(ctx.client_ids)} client ids in the context"
            )


@dataclass(frozen=True, kw_only=True)
class AggregationRule(ABC):
    """Base class of every aggregation rule.

    Subclasses are frozen keyword-only dataclasses (their fields are the rule's configuration),
    set :attr:`name` and :attr:`precondition`, override :meth:`check_precondition` when the rule
    has one, and implement :meth:`aggregate`. Calling the rule validates the input first.
    """

    name: ClassVar[str] = ""
    #: Human-readable precondition, shown by ``matl rules`` (e.g. ``"n >= 2f + 3"``).
    precondition: ClassVar[str] = "n >= 1"
    #: One line naming the paper, shown by ``matl rules``.
    reference: ClassVar[str] = ""

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> AggregationResult:
        check_updates(updates, ctx)
        self.check_precondition(updates.shape[0])
        return self.aggregate(updates, ctx)

    def check_precondition(self, n: int) -> None:  # noqa: B027 (optional hook)
        """Raise :class:`PreconditionError` when the rule cannot run on ``n`` clients."""

    def precondition_error(self, n: int, f: int) -> PreconditionError:
        """A :class:`PreconditionError` naming this rule, ``n``, ``f`` and the condition."""
        return PreconditionError(f"{self.name} needs {self.precondition}, got n={n}, f={f}")

    @abstractmethod
    def aggregate(self, updates: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        """The rule's maths on validated updates. Must not mutate ``updates``."""

    def params(self) -> dict[str, Any]:
        """The rule's configuration as a plain dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    # Stateful rules (centered clipping, FoolsGold, …) keep their state in a field declared with
    # ``field(default_factory=..., init=False, repr=False, compare=False)`` and override these three.
    def state_dict(self) -> dict[str, Any]:
        """The rule's state across rounds (empty for stateless rules)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        if state:
            raise ValueError(f"{self.name} is stateless but got state keys {sorted(state)}")

    def reset(self) -> None:  # noqa: B027 - optional hook, a no-op for stateless rules
        """Forget all state (start of a new training run)."""
