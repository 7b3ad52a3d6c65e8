r"""A round's verdicts, stored by column and built per client only when read.

The trust engine gives every client of every round a :class:`~matl.trust.base.Verdict` with its
reasons — each signal's score against its informational cut, the composite against the round's
threshold, and the committee, cartel and quarantine checks — about seven
:class:`~matl.trust.base.Reason` records per client. Built eagerly as Python objects (and again as
dicts for ``AggregationResult.details``) that is about 14 000 small objects a round at
:math:`n = 1000`, which measured 25–30 ms a round (about one pass over :math:`10^8` update
entries) where most readers want only the flagged clients (the simulator keeps those) or none
(an aggregation call whose caller reads only the aggregate).

:class:`VerdictTable` keeps the same information as one list per column (built with one
``tolist()`` per tensor) and materialises a client's verdict on access. It is a read-only
``Sequence`` of verdict dicts — ``table[i]`` is exactly ``Verdict.as_dict()`` of client ``i`` in
row order — so code that iterates, indexes or takes ``len()`` of ``details["verdicts"]`` reads
what it always read; :meth:`VerdictTable.verdict` gives the named tuple and
:meth:`VerdictTable.untrusted` the dicts of the clients not trusted, without building the others.
``list(table)`` is the plain list of dicts (the table itself is not JSON-serialisable; it pickles).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, overload

import torch

from matl.trust.base import Reason, Verdict

__all__ = ["ReasonColumn", "VerdictTable"]


class ReasonColumn(NamedTuple):
    """One reason for every client of a round: ``signal``, per-client ``values``, a ``threshold``
    (one for all, or one per client) and whether each client ``passed`` (``None``: passed means
    ``value >= threshold``)."""

    signal: str
    values: Sequence[float]
    threshold: float | Sequence[float]
    passed: Sequence[bool] | None = None

    @classmethod
    def of(
        cls,
        signal: str,
        values: torch.Tensor,
        threshold: float,
        passed: torch.Tensor | None = None,
    ) -> ReasonColumn:
        """A column from ``(n,)`` tensors (values as float64 Python floats, one shared
        threshold)."""
        return cls(
            signal,
            values.to(torch.float64).tolist(),
            float(threshold),
            None if passed is None else passed.tolist(),
        )

    def reason(self, i: int) -> Reason:
        """Client ``i``'s :class:`~matl.trust.base.Reason`."""
        value = self.values[i]
        threshold = (
            self.threshold if isinstance(self.threshold, (int, float)) else self.threshold[i]
        )
        passed = value >= threshold if self.passed is None else bool(self.passed[i])
        return Reason(self.signal, value, float(threshold), passed)


class VerdictTable(Sequence[dict[str, Any]]):
    """A round's verdicts by column; ``table[i]`` is client ``i``'s ``Verdict.as_dict()``.

    Parameters
    ----------
    client_ids:
        The clients, in row order.
    scores:
        Each client's composite score.
    trusted:
        The final decision per client.
    columns:
        The reasons, in the order every verdict lists them.
    """

    __slots__ = ("_columns", "_ids", "_scores", "_trusted")

    def __init__(
        self,
        client_ids: Sequence[int],
        scores: Sequence[float],
        trusted: Sequence[bool],
        columns: Sequence[ReasonColumn] = (),
    ) -> None:
        n = len(client_ids)
        for name, seq in (("scores", scores), ("trusted", trusted)):
            if len(seq) != n:
                raise ValueError(f"verdict table: {len(seq)} {name} for {n} clients")
        for col in columns:
            lengths = [len(col.values)]
            if col.passed is not None:
                lengths.append(len(col.passed))
            if not isinstance(col.threshold, (int, float)):
                lengths.append(len(col.threshold))
            if any(length != n for length in lengths):
                raise ValueError(f"verdict table: column {col.signal!r} does not have {n} rows")
        self._ids = [int(c) for c in client_ids]
        self._scores = list(scores)
        self._trusted = [bool(t) for t in trusted]
        self._columns = tuple(columns)

    def verdict(self, i: int) -> Verdict:
        """Client ``i``'s :class:`~matl.trust.base.Verdict` (row ``i``; negative ``i`` counts from
        the end)."""
        i = range(len(self._ids))[i]  # bounds check and negative indices
        reasons = tuple(col.reason(i) for col in self._columns)
        return Verdict(self._ids[i], self._scores[i], self._trusted[i], reasons)

    def untrusted(self) -> list[dict[str, Any]]:
        """The verdict dicts of the clients not trusted, in row order."""
        return [self.verdict(i).as_dict() for i, t in enumerate(self._trusted) if not t]

    @property
    def signals(self) -> tuple[str, ...]:
        """The reasons' signal names, in order."""
        return tuple(col.signal for col in self._columns)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self.verdict(i).as_dict() for i in range(len(self._ids))[index]]
        return self.verdict(index).as_dict()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self._ids)):
            yield self.verdict(i).as_dict()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VerdictTable):
            return list(self) == list(other)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        flagged = sum(not t for t in self._trusted)
        return f"VerdictTable({len(self)} clients, {flagged} not trusted, reasons {self.signals})"
