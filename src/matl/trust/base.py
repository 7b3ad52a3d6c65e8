"""Shared types of the trust engine: signal results and verdicts.

Every *signal* maps a round's updates to a per-client score in ``[0, 1]`` — **higher means more
trustworthy** — plus the raw values it was computed from, so a verdict can cite them. Stateful
signals (temporal consistency, entropy, reputation, cartels) remember clients by id across rounds
and expose ``state_dict()`` / ``load_state_dict()`` / ``reset()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from matl.aggregation.base import RoundContext

#: Key of :attr:`SignalResult.raw`'s optional ``(n,)`` bool mask of clients failing outright.
FAILED = "failed"


@dataclass(frozen=True)
class SignalResult:
    """One signal's output for one round.

    Attributes
    ----------
    scores:
        ``(n,)`` float64 in ``[0, 1]``; higher is more trustworthy.
    raw:
        Named ``(n,)`` tensors of the raw quantities behind the scores (e.g. ``cosine``,
        ``norm_ratio``), for audit. The optional bool entry :data:`FAILED` marks clients that
        fail the signal outright whatever their score (the community test's group members):
        the threshold's attack-signature guard counts them as a score of 0.
    """

    scores: torch.Tensor
    raw: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Signal(Protocol):
    """A trust signal: ``signal(updates, ctx) -> SignalResult``."""

    name: str

    def __call__(self, updates: torch.Tensor, ctx: RoundContext) -> SignalResult: ...


class Reason(NamedTuple):
    """Why a verdict went the way it did: one signal's value against its threshold.

    An immutable named tuple (a round builds several per client, so construction is kept cheap).
    """

    signal: str
    value: float
    threshold: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "value": self.value,
            "threshold": self.threshold,
            "passed": self.passed,
        }


class Verdict(NamedTuple):
    """The trust engine's decision about one client in one round (an immutable named tuple)."""

    client_id: int
    score: float
    trusted: bool
    reasons: tuple[Reason, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "score": self.score,
            "trusted": self.trusted,
            "reasons": [r.as_dict() for r in self.reasons],
        }


def client_keys(n: int, ctx: RoundContext | None) -> list[int]:
    """The ids naming the rows (``ctx.client_ids``, or the row indices when there are none)."""
    if ctx is not None and ctx.client_ids is not None:
        return [int(c) for c in ctx.client_ids]
    return list(range(n))
