r"""A client's record on a direction test over rounds: its running value, credit and blemish.

Two signals judge a client's direction against a reference — PoGQ against the validated consensus
(:mod:`matl.trust.quality`), peer comparison against the round's robust centre
(:mod:`matl.trust.peer`) — and both face the same problem late in federated training on non-IID
data: the reference stops telling the honest from the reversed. Early in training the clients'
updates share a direction and a sign-flipped update points plainly against it; later every honest
update is mostly its own client's pull, nearly orthogonal to the others, and one round's cosine
says little. What a client did while the test could still tell is therefore kept:

* **credit** — the best running value :math:`v_i` (in units of the round's typical value) since
  the client was last forgotten; a client whose credit has reached ``credit_level`` is
  *credited*, and stays *vouched for* (``vouched``) even across a forget;
* **blemish** — the lowest :math:`v_i` before the client was ever vouched for; at or below
  ``-blemish_level`` the client is *blemished* until it is next forgotten, a later credit
  notwithstanding.

The trust engine forgets a client when its temporal consistency shows a switch of behaviour
(:meth:`matl.trust.rule.MATLRule`, ``restart_on_switch``): its credit and blemish go, whether it
was ever vouched for stays. So a sleeper's honest phase does not vouch for its attack, and a
client that mends its ways starts a new record — but a client vouched for once is never blemished
afterwards.

:func:`mark_standing` is the credit-and-blemish step both signals use; :class:`DirectionRecord` adds
the running value and the per-client tables, for a signal with no other state (peer comparison).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from matl.trust._util import (
    assign_rows,
    check_number,
    check_state_keys,
    fold_running_mean,
    grow,
    running_value,
    state_client_ids,
)

__all__ = ["DirectionRecord", "mark_standing"]

#: The per-client rows of :meth:`DirectionRecord.state_dict`.
_ROWS = ("mean", "weight", "credit", "low", "vouched")


def mark_standing(
    credit: torch.Tensor,
    low: torch.Tensor,
    vouched: torch.Tensor,
    rows: torch.Tensor,
    now: torch.Tensor | None,
    credit_level: float | None,
    blemish_level: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Fold this round's running values ``now`` (``None``: no value this round) into the
    records at ``rows``, in place; return ``(credited, blemished)``, two ``(len(rows),)`` bools.

    ``credit`` keeps each client's best value since it was last forgotten, ``vouched`` (0 or 1)
    whether it was ever credited (credit :math:`\ge` ``credit_level``) and ``low`` (:math:`\le 0`)
    its lowest value before that. A client is blemished when ``low <= -blemish_level``.
    ``credit_level=None``: nobody is credited (so every client that falls that low is
    blemished); ``blemish_level=None``: nobody is blemished.
    """
    if now is not None:
        credit[rows] = torch.maximum(credit[rows], now)
    if credit_level is None:
        credited = torch.zeros(rows.shape[0], dtype=torch.bool)
    else:
        credited = credit[rows] >= credit_level
        vouched[rows] = torch.where(credited, 1.0, vouched[rows])
    if now is not None:  # the record before any credit
        fresh = vouched[rows] == 0
        low[rows] = torch.where(fresh, torch.minimum(low[rows], now), low[rows])
    if blemish_level is None:
        return credited, torch.zeros(rows.shape[0], dtype=torch.bool)
    return credited, low[rows] <= -blemish_level


def _empty() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.float64)


@dataclass(kw_only=True)
class DirectionRecord:
    r"""Per-client running value of a direction test, with :func:`mark_standing`'s credit and
    blemish.

    Each round a client's value :math:`x_i` (its cosine to the reference over the round's typical
    cosine, clipped to :math:`\pm` ``clip``) is folded into a bias-corrected moving average
    :math:`v_i` (:func:`matl.trust._util.fold_running_mean`: memory ``memory``, ``harm_memory``
    for values below the running one); the credit and blemish are kept on :math:`v_i`.

    Parameters
    ----------
    name:
        The owning signal's name, for error messages.
    memory, harm_memory:
        In ``[0, 1)``; ``harm_memory`` is capped at ``memory``.
    clip:
        :math:`|x_i|` bound, ``> 0``.
    credit_level:
        Running value that credits (vouches for) a client, ``> 0``.
    blemish_level:
        A client whose running value fell to ``-blemish_level`` before it was vouched for is
        blemished, ``>= 0``; ``None``: nobody is.
    """

    name: str
    memory: float = 0.9
    harm_memory: float = 0.8
    clip: float = 3.0
    credit_level: float = 0.5
    blemish_level: float | None = 0.5
    index: dict[int, int] = field(default_factory=dict)
    mean: torch.Tensor = field(default_factory=_empty)
    weight: torch.Tensor = field(default_factory=_empty)
    credit: torch.Tensor = field(default_factory=_empty)
    low: torch.Tensor = field(default_factory=_empty)
    vouched: torch.Tensor = field(default_factory=_empty)

    def __post_init__(self) -> None:
        nm = self.name
        check_number(nm, "record_memory", self.memory, low=0.0, high=1.0, high_open=True)
        check_number(nm, "record_harm_memory", self.harm_memory, low=0.0, high=1.0, high_open=True)
        check_number(nm, "clip", self.clip, low=0.0, low_open=True)
        check_number(nm, "credit", self.credit_level, low=0.0, low_open=True)
        if self.blemish_level is not None:
            check_number(nm, "blemish", self.blemish_level, low=0.0)

    def update(
        self, keys: Sequence[int], x: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fold the round's values ``x`` (``(n,)``; ``None``: the test had no reference this
        round) for the clients ``keys``; return their running values (0 for a client never
        observed), and whether each is credited and blemished."""
        rows, _ = assign_rows(self.index, keys)
        size = len(self.index)
        self.mean, self.weight = grow(self.mean, size, 0.0), grow(self.weight, size, 0.0)
        self.credit, self.low = grow(self.credit, size, 0.0), grow(self.low, size, 0.0)
        self.vouched = grow(self.vouched, size, 0.0)
        if x is not None:
            value = x.to(torch.float64).clamp(-self.clip, self.clip)
            fold_running_mean(
                self.mean, self.weight, rows, value, self.memory, min(self.harm_memory, self.memory)
            )
        observed = self.weight[rows] > 0
        running = running_value(self.mean, self.weight, rows, 0.0)
        now = torch.where(observed, running, 0.0) if x is not None else None
        credited, blemished = mark_standing(
            self.credit, self.low, self.vouched, rows, now, self.credit_level, self.blemish_level
        )
        return running, credited, blemished

    def forget(self, client_ids: Sequence[int]) -> None:
        """Drop the running value, credit and blemish of ``client_ids`` (unknown ids are
        ignored); whether each was ever vouched for stays."""
        rows = [self.index[c] for c in client_ids if c in self.index]
        if rows:
            idx = torch.tensor(rows, dtype=torch.long)
            for t in (self.mean, self.weight, self.credit, self.low):
                t[idx] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """``{"client_ids", "mean", "weight", "credit", "low", "vouched"}`` (copies): the ids in
        row order, the biased moving average and its bias correction, the best running value
        since the last forget, the lowest before the client was vouched for (at most 0) and
        whether it was (0 or 1)."""
        state: dict[str, Any] = {"client_ids": list(self.index)}
        for key in _ROWS:
            state[key] = getattr(self, key).clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the empty state restores nobody)."""
        if not state:
            self.reset()
            return
        nm = self.name
        check_state_keys(nm, state, {"client_ids", *_ROWS})
        ids = state_client_ids(nm, state["client_ids"])
        rows = {k: torch.as_tensor(state[k], dtype=torch.float64).clone() for k in _ROWS}
        if any(v.shape != (len(ids),) for v in rows.values()):
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in rows.items())
            raise ValueError(f"{nm}: state has {len(ids)} client ids but shapes {shapes}")
        if not all(bool(torch.isfinite(v).all()) for v in rows.values()):
            raise ValueError(f"{nm}: state record must be finite")
        w = rows["weight"]
        if not bool(((w >= 0) & (w <= 1) & (rows["mean"].abs() <= self.clip * w + 1e-12)).all()):
            raise ValueError(f"{nm}: state weight must be in [0, 1] with |mean| <= clip * weight")
        if not bool((rows["low"] <= 0).all()):
            raise ValueError(f"{nm}: state low must be <= 0")
        if not bool(((rows["vouched"] == 0) | (rows["vouched"] == 1)).all()):
            raise ValueError(f"{nm}: state vouched must be 0 or 1")
        self.index = {c: i for i, c in enumerate(ids)}
        for key in _ROWS:
            setattr(self, key, rows[key])

    def reset(self) -> None:
        """Forget every client."""
        self.index = {}
        for key in _ROWS:
            setattr(self, key, _empty())
