r"""RB-BFT client reputation: slow to earn, quick to lose, with quarantine and release.

Every client :math:`i` carries a reputation :math:`r_i \in [0, 1]`, starting at ``r0`` the first
time it is seen. After each round it took part in, with composite score :math:`c_i` and
violation indicator :math:`v_i` (it was flagged this round):

.. math::

    r_i \leftarrow
    \begin{cases}
        (1 - \alpha)\, r_i + \alpha\, c_i & v_i = 0 \quad\text{(clean round: EMA towards the score)}\\
        (1 - \beta)\, r_i & v_i = 1 \quad\text{(violation: decay towards 0)}
    \end{cases}

with ``gain`` :math:`\alpha` and ``penalty`` :math:`\beta \ge \alpha` (validated), so one violation
undoes more than one clean round earns: from :math:`r = 0.5` with :math:`\alpha = 0.2, \beta = 0.5`
a violation drops to 0.25, and a client scoring 0.8 needs about four clean rounds to climb back.

**Quarantine.** The last ``window`` participations are remembered as violation flags. A client
with at least ``max_violations`` violations among them is *quarantined* (``window =
max_violations`` means consecutive violations). A quarantined client gets aggregation weight 0 but
is still scored every round; after ``release_after`` consecutive clean rounds it is *released*:
its violation memory is cleared and it competes again with the (low) reputation it has rebuilt.
With ``release_per_violation`` :math:`\rho > 0` the release takes
:math:`\max(\texttt{release\_after}, \lceil \rho\, V_i \rceil)` clean rounds, :math:`V_i` the
client's violations so far: a long record needs a long good behaviour (off by default; the trust
engine uses 0.5).

**Held clients.** With ``hold_after_switches`` :math:`H` (off by default; the trust engine uses
2) the book also counts each client's consecutive *switches* — participations in which the caller
reports that its update turned away from its own history (the trust engine passes TCDM's temporal
test, :math:`z_i > z_0`, or a consistency below ``switch_reversal``), and whether the current
run of switches holds a *failed* one (the caller's flag ``switch_failed``; the trust engine's: the temporal score itself at most the attack
signature, :math:`z_i \\ge z_0 + 2.15`, or the update turned against the history, consistency
below ``switch_reversal``, default −0.2). A client with :math:`H` switches in a row, one of them
failed, is *held*: quarantined, and never released by clean rounds, only by
:meth:`ReputationBook.release`. An isolated switch is
noise; a switch that persists is a change of behaviour — a sleeper that starts attacking after an
honest phase, whose new updates may look harmless to every per-round signal once its history has
caught up. On the MNIST calibration runs (seeds 10–19 attack-free, 10–11 with sleepers) every
sleeper switched for 3–6 rounds in a row at :math:`z` 4.5–9.7 in its first two, while the honest
clients' runs of switches were 1–3 rounds long at :math:`z \\le 3.9` (``docs/trust.md``, "Holding
a client that switched"). The price: an honest client whose data changes abruptly for
:math:`H` rounds in a row, one of them sharply, is held too.

**Marks.** The book also counts, per client, the rounds in which it carried an attack signature
itself (:meth:`ReputationBook.marks`, passed to :meth:`ReputationBook.update` by the trust engine:
some weighted signal at most ``attack_signature``); the threshold cuts only marked clients.
Statuses are evaluated after this round's update, so the round that completes a quarantine already
has weight 0 and the round that completes a release already counts.

**Weights.** For the clients the trust engine trusts this round and that are not quarantined, the
aggregation weight is proportional to :math:`r_i\, c_i` (see :meth:`ReputationBook.weights`).

State (:meth:`ReputationBook.state_dict`): per client id its reputation, violation memory,
quarantine flag, clean streak and counters. Clients absent from a round are left unchanged.

The book keeps these as columns (one row per client ever seen, the violation memory as a
``(clients, window)`` table whose last column is the latest participation) and updates a round's
clients with a few vectorised operations: the same IEEE arithmetic as a loop over clients (each
client's update reads only its own row), without a Python step per client — which cost about
6 ms a round at :math:`n = 1000`.

References
----------
Kang et al., "Incentive Mechanism for Reliable Federated Learning: A Joint Optimization Approach to
Combining Reputation and Contract Theory", IEEE Internet of Things Journal 2019 (per-client
reputation in federated learning); Kamvar, Schlosser & Garcia-Molina, "The EigenTrust Algorithm for
Reputation Management in P2P Networks", WWW 2003 (reputation earned by behaviour, used as weight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from matl.errors import ConfigError
from matl.trust._util import assign_rows, check_number, grow

__all__ = ["ClientReputation", "ReputationBook", "ReputationUpdate"]


@dataclass
class ClientReputation:
    """One client's reputation state."""

    reputation: float
    recent: list[bool] = field(default_factory=list)
    quarantined: bool = False
    clean_streak: int = 0
    rounds: int = 0
    violations: int = 0
    quarantines: int = 0
    marks: int = 0
    switch_streak: int = 0
    switch_failed: bool = False
    held: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "reputation": self.reputation,
            "recent": list(self.recent),
            "quarantined": self.quarantined,
            "clean_streak": self.clean_streak,
            "rounds": self.rounds,
            "violations": self.violations,
            "quarantines": self.quarantines,
            "marks": self.marks,
            "switch_streak": self.switch_streak,
            "switch_failed": self.switch_failed,
            "held": self.held,
        }


@dataclass(frozen=True)
class ReputationUpdate:
    """The reputation book after one round, in the round's row order.

    Attributes
    ----------
    reputation:
        ``(n,)`` float64 :math:`r_i` after the update.
    quarantined:
        ``(n,)`` bool: quarantined after the update (weight 0).
    newly_quarantined, released:
        ``(n,)`` bool: entered / left quarantine this round.
    recent_violations:
        ``(n,)`` int64: violations within the client's window after the update.
    switch_streak:
        ``(n,)`` int64: consecutive participations with a switch, up to this one.
    held:
        ``(n,)`` bool: held (quarantined until :meth:`ReputationBook.release`).
    """

    reputation: torch.Tensor
    quarantined: torch.Tensor
    newly_quarantined: torch.Tensor
    released: torch.Tensor
    recent_violations: torch.Tensor
    switch_streak: torch.Tensor
    held: torch.Tensor


@dataclass(kw_only=True)
class ReputationBook:
    """Per-client reputations (see the module docstring for the dynamics).

    Parameters
    ----------
    r0:
        Reputation of a new client, in ``[0, 1]``.
    gain:
        :math:`\\alpha \\in (0, 1]`, the EMA rate of a clean round.
    penalty:
        :math:`\\beta \\in [\\alpha, 1]`, the decay of a violation.
    max_violations:
        Violations within ``window`` participations that quarantine a client (``>= 1``).
    window:
        Participations remembered (``>= max_violations``; ``None`` = ``max_violations``, i.e.
        consecutive violations).
    release_after:
        Consecutive clean rounds that release a quarantined client (``>= 1``).
    release_per_violation:
        :math:`\\rho \\ge 0`: the release takes at least :math:`\\lceil \\rho V_i \\rceil`
        clean rounds, :math:`V_i` the client's violations so far (0 = off).
    hold_after_switches:
        :math:`H \\ge 1`: a client reported as switching in :math:`H` consecutive participations,
        one of them failed, is held (see the module docstring); ``None`` (default) = never.
    """

    r0: float = 0.5
    gain: float = 0.2
    penalty: float = 0.5
    max_violations: int = 3
    window: int | None = 5
    release_after: int = 3
    release_per_violation: float = 0.0
    hold_after_switches: int | None = None
    _book: _Columns = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _unit("r0", self.r0, low_open=False)
        _unit("gain", self.gain, low_open=True)
        _unit("penalty", self.penalty, low_open=True)
        if self.penalty < self.gain:
            raise ConfigError(
                f"reputation penalty ({self.penalty}) must be >= gain ({self.gain}): violations "
                "must push reputation down at least as fast as clean rounds raise it"
            )
        _count("max_violations", self.max_violations)
        _count("release_after", self.release_after)
        check_number("reputation", "release_per_violation", self.release_per_violation, low=0)
        if self.hold_after_switches is not None:
            _count("hold_after_switches", self.hold_after_switches)
        if self.window is not None:
            _count("window", self.window)
            if self.window < self.max_violations:
                raise ConfigError(
                    f"reputation window ({self.window}) must be >= max_violations "
                    f"({self.max_violations})"
                )
        self._book = _Columns.empty(self.memory)

    @property
    def memory(self) -> int:
        """Number of participations remembered for quarantine decisions."""
        return self.max_violations if self.window is None else self.window

    def get(self, client_id: int) -> ClientReputation:
        """The state of ``client_id`` (a fresh ``r0`` state, not stored, if it is unknown)."""
        row = self._book.index.get(int(client_id))
        if row is None:
            return ClientReputation(float(self.r0))
        return self._book.client(row)

    def reputation(self, client_ids: Sequence[int]) -> torch.Tensor:
        """``(n,)`` float64 current reputations (``r0`` for unknown clients)."""
        return self._book.lookup(client_ids, "reputation", float(self.r0))

    def marks(self, client_ids: Sequence[int]) -> torch.Tensor:
        """``(n,)`` int64: the rounds in which each client carried an attack signature itself
        (0 for unknown clients; see :meth:`update`)."""
        return self._book.lookup(client_ids, "marks", 0)

    def update(
        self,
        client_ids: Sequence[int],
        scores: torch.Tensor,
        violations: torch.Tensor,
        marked: torch.Tensor | None = None,
        switched: torch.Tensor | None = None,
        switch_failed: torch.Tensor | None = None,
    ) -> ReputationUpdate:
        """Apply one round: ``scores`` are the ``(n,)`` composite scores, ``violations`` the
        ``(n,)`` bool flags (see the module docstring), ``marked`` the ``(n,)`` bool clients that
        carried an attack signature themselves this round (counted in :meth:`marks`),
        ``switched`` the ``(n,)`` bool clients whose update turned away from their own history
        (counted in a row) and ``switch_failed`` those of them whose switch failed outright
        (``None``: every switch counts as failed; see "Held clients")."""
        n = len(client_ids)
        if scores.shape != (n,) or violations.shape != (n,):
            raise ValueError(
                f"reputation update needs ({n},) scores and violations, got "
                f"{tuple(scores.shape)} and {tuple(violations.shape)}"
            )
        if len(set(client_ids)) != n:
            raise ValueError(f"repeated client ids in one round: {list(client_ids)}")
        c = scores.detach().to(torch.float64).clamp(0.0, 1.0)
        bad = violations.detach().to(torch.bool)
        book = self._book
        rows = book.rows([int(cid) for cid in client_ids], float(self.r0))
        was_quarantined = book.quarantined[rows]
        book.rounds[rows] += 1
        r = book.reputation[rows]
        r = torch.where(bad, (1.0 - self.penalty) * r, (1.0 - self.gain) * r + self.gain * c)
        book.reputation[rows] = r.clamp(0.0, 1.0)
        book.violations[rows] += bad.to(torch.int64)
        if marked is not None:
            if marked.shape != (n,):
                raise ValueError(f"reputation update needs ({n},) marks, got {tuple(marked.shape)}")
            book.marks[rows] += marked.detach().to(torch.int64)
        if switched is not None:
            if switched.shape != (n,):
                raise ValueError(
                    f"reputation update needs ({n},) switches, got {tuple(switched.shape)}"
                )
            turned = switched.detach().to(torch.bool)
            failed = turned
            if switch_failed is not None:
                if switch_failed.shape != (n,):
                    raise ValueError(
                        f"reputation update needs ({n},) failed switches, got "
                        f"{tuple(switch_failed.shape)}"
                    )
                failed = turned & switch_failed.detach().to(torch.bool)
            book.switch_streak[rows] = torch.where(turned, book.switch_streak[rows] + 1, 0)
            book.switch_failed[rows] = turned & (book.switch_failed[rows] | failed)
        hold = self.hold_after_switches
        held = book.held[rows]
        if hold is not None:
            held = held | (book.switch_failed[rows] & (book.switch_streak[rows] >= hold))
        book.held[rows] = held
        streak = torch.where(bad, 0, book.clean_streak[rows] + 1)
        book.clean_streak[rows] = streak
        # The violation memory: shift left, the latest participation enters on the right.
        recent = torch.cat([book.recent[rows, 1:], bad.unsqueeze(1)], dim=1)
        length = (book.length[rows] + 1).clamp(max=self.memory)
        needed = torch.clamp(
            torch.ceil(self.release_per_violation * book.violations[rows].to(torch.float64)),
            min=float(self.release_after),
        )
        released = was_quarantined & ~held & (streak.to(torch.float64) >= needed)
        recent[released] = False
        length = torch.where(released, 0, length)
        count = recent.sum(dim=1)
        entered = ~was_quarantined & ((count >= self.max_violations) | held)
        quarantined = (was_quarantined & ~released) | entered
        book.recent[rows] = recent
        book.length[rows] = length
        book.quarantined[rows] = quarantined
        book.quarantines[rows] += entered.to(torch.int64)
        return ReputationUpdate(
            reputation=book.reputation[rows].clone(),
            quarantined=quarantined,
            newly_quarantined=entered,
            released=released,
            recent_violations=count.to(torch.int64),
            switch_streak=book.switch_streak[rows].clone(),
            held=held.clone(),
        )

    def held(self, client_ids: Sequence[int]) -> torch.Tensor:
        """``(n,)`` bool: which of ``client_ids`` are held (False for unknown clients)."""
        return self._book.lookup(client_ids, "held", False)

    def release(self, client_ids: Sequence[int]) -> None:
        """Release ``client_ids`` by hand (an operator's decision; unknown ids are ignored): they
        leave quarantine and the hold, and their violation memory and switch count start afresh;
        reputation and the lifetime counters are kept."""
        book = self._book
        known = [book.index[int(c)] for c in client_ids if int(c) in book.index]
        if not known:
            return
        rows = torch.tensor(known, dtype=torch.int64)
        book.held[rows] = False
        book.quarantined[rows] = False
        book.recent[rows] = False
        book.length[rows] = 0
        book.switch_streak[rows] = 0
        book.switch_failed[rows] = False
        book.clean_streak[rows] = 0

    @staticmethod
    def weights(
        reputation: torch.Tensor, scores: torch.Tensor, eligible: torch.Tensor
    ) -> torch.Tensor:
        r"""Unnormalised aggregation weights :math:`r_i c_i` for ``eligible`` clients, 0 otherwise
        (float64)."""
        raw = reputation.to(torch.float64) * scores.to(torch.float64).clamp(0.0, 1.0)
        return torch.where(eligible, raw, torch.zeros_like(raw))

    def state_dict(self) -> dict[str, Any]:
        """``{"clients": {id: {...}}}`` (plain Python values)."""
        book = self._book
        return {"clients": {cid: book.client(row).as_dict() for cid, row in book.index.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (ids may be ints or their string forms, as after JSON)."""
        unknown = set(state) - {"clients"}
        if unknown:
            raise ValueError(f"reputation state has unknown keys {sorted(unknown)}")
        clients = {
            int(cid): ClientReputation(
                reputation=float(st["reputation"]),
                recent=[bool(b) for b in st["recent"]],
                quarantined=bool(st["quarantined"]),
                clean_streak=int(st["clean_streak"]),
                rounds=int(st["rounds"]),
                violations=int(st["violations"]),
                quarantines=int(st["quarantines"]),
                marks=int(st.get("marks", 0)),
                switch_streak=int(st.get("switch_streak", 0)),
                switch_failed=bool(st.get("switch_failed", False)),
                held=bool(st.get("held", False)),
            )
            for cid, st in state.get("clients", {}).items()
        }
        for cid, rec in clients.items():
            if len(rec.recent) > self.memory:
                raise ValueError(
                    f"reputation state of client {cid} remembers {len(rec.recent)} "
                    f"participations, this book keeps {self.memory}"
                )
        self._book = _Columns.of(clients, self.memory)

    def reset(self) -> None:
        """Forget every client."""
        self._book = _Columns.empty(self.memory)


#: The integer counters of :class:`ClientReputation`, one column each in :class:`_Columns`.
_INT_COLUMNS = ("clean_streak", "rounds", "violations", "quarantines", "marks", "switch_streak")


@dataclass
class _Columns:
    """Every known client's state, one row per client id (``index``: id → row)."""

    index: dict[int, int]
    reputation: torch.Tensor  # (N,) float64
    recent: torch.Tensor  # (N, memory) bool; the last ``length`` columns are the memory
    length: torch.Tensor  # (N,) int64
    quarantined: torch.Tensor  # (N,) bool
    clean_streak: torch.Tensor  # (N,) int64
    rounds: torch.Tensor  # (N,) int64
    violations: torch.Tensor  # (N,) int64
    quarantines: torch.Tensor  # (N,) int64
    marks: torch.Tensor  # (N,) int64
    switch_streak: torch.Tensor  # (N,) int64
    switch_failed: torch.Tensor  # (N,) bool: the current run of switches holds a failed one
    held: torch.Tensor  # (N,) bool

    @property
    def size(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls, memory: int) -> _Columns:
        return cls.of({}, memory)

    @classmethod
    def of(cls, clients: dict[int, ClientReputation], memory: int) -> _Columns:
        """Columns holding ``clients`` (rows in their order)."""
        recent = torch.zeros(len(clients), memory, dtype=torch.bool)
        for row, rec in enumerate(clients.values()):
            if rec.recent:
                recent[row, memory - len(rec.recent) :] = torch.tensor(rec.recent)
        ints = {
            name: torch.tensor([getattr(rec, name) for rec in clients.values()], dtype=torch.int64)
            for name in _INT_COLUMNS
        }
        return cls(
            index={cid: row for row, cid in enumerate(clients)},
            reputation=torch.tensor(
                [rec.reputation for rec in clients.values()], dtype=torch.float64
            ),
            recent=recent,
            length=torch.tensor([len(rec.recent) for rec in clients.values()], dtype=torch.int64),
            quarantined=torch.tensor(
                [rec.quarantined for rec in clients.values()], dtype=torch.bool
            ),
            held=torch.tensor([rec.held for rec in clients.values()], dtype=torch.bool),
            switch_failed=torch.tensor(
                [rec.switch_failed for rec in clients.values()], dtype=torch.bool
            ),
            **ints,
        )

    def rows(self, client_ids: list[int], r0: float) -> torch.Tensor:
        """The rows of ``client_ids``, adding new clients (reputation ``r0``) at the end."""
        before = len(self.index)
        rows, _ = assign_rows(self.index, client_ids)
        size = len(self.index)
        if size > before:
            self.reputation = grow(self.reputation, size, r0)
            self.recent = grow(self.recent, size, False)
            self.quarantined = grow(self.quarantined, size, False)
            self.held = grow(self.held, size, False)
            self.switch_failed = grow(self.switch_failed, size, False)
            for name in ("length", *_INT_COLUMNS):
                setattr(self, name, grow(getattr(self, name), size, 0))
        return rows

    def lookup(self, client_ids: Sequence[int], column: str, default: float) -> torch.Tensor:
        """Column ``column`` for ``client_ids`` (``default`` for unknown clients), a copy."""
        values: torch.Tensor = getattr(self, column)
        rows = torch.tensor([self.index.get(int(c), -1) for c in client_ids], dtype=torch.int64)
        out = torch.full((len(rows),), default, dtype=values.dtype)
        known = rows >= 0
        out[known] = values[rows[known]]
        return out

    def client(self, row: int) -> ClientReputation:
        """Row ``row`` as a :class:`ClientReputation` (a copy)."""
        length = int(self.length[row])
        memory = self.recent.shape[1]
        return ClientReputation(
            reputation=float(self.reputation[row]),
            recent=[bool(b) for b in self.recent[row, memory - length :].tolist()]
            if length
            else [],
            quarantined=bool(self.quarantined[row]),
            clean_streak=int(self.clean_streak[row]),
            rounds=int(self.rounds[row]),
            violations=int(self.violations[row]),
            quarantines=int(self.quarantines[row]),
            marks=int(self.marks[row]),
            switch_streak=int(self.switch_streak[row]),
            switch_failed=bool(self.switch_failed[row]),
            held=bool(self.held[row]),
        )


def _unit(name: str, value: object, *, low_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        assert isinstance(value, (int, float))
        ok = (value > 0 if low_open else value >= 0) and value <= 1 and math.isfinite(value)
    if not ok:
        raise ConfigError(
            f"reputation {name} must be in {'(' if low_open else '['}0, 1], got {value!r}"
        )


def _count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"reputation {name} must be an integer >= 1, got {value!r}")
