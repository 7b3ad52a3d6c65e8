r"""A validator committee: several validators score the same updates; a client is trusted only with
a 2/3 quorum of reputation-weighted validator power, and validators that vote against a decided
verdict lose reputation.

Protocol (one round)
--------------------
There are :math:`V` validators. Validator :math:`v` holds its own validation shard and reports a
score vector :math:`s_v \in [0, 1]^n` (in MATL: the composite score with *its own* PoGQ, computed on
its shard). Its *votes* are derived from its report by the public threshold rule (the same
:class:`~matl.trust.composite.AdaptiveThreshold` everyone uses): :math:`b_{v,i} = 1` ("trusted")
iff client :math:`i` is not flagged on :math:`s_v`. Validator :math:`v` has reputation
:math:`R_v \in [0, 1]` (start 1) and power :math:`p_v = R_v` if :math:`R_v \ge` ``min_reputation``,
else 0; :math:`P = \sum_v p_v`. With quorum :math:`q = 2/3`:

.. math::

    \text{trusted}_i \iff \sum_v p_v\, b_{v,i} \ge q P, \qquad
    \text{rejected}_i \iff \sum_v p_v\, (1 - b_{v,i}) \ge q P .

A client with neither quorum is *undecided* and is **not** trusted (the safe default). The
committee's score for client :math:`i` is the power-weighted median of the reports
:math:`s_{v,i}` (robust while lying power is below 1/2).

Validator reputation changes only on *decided* clients: with :math:`a_v` the fraction of decided
clients on which :math:`v` voted with the decision,

.. math::

    R_v \leftarrow (1 - \rho) R_v + \rho\, a_v ,

(``learning_rate`` :math:`\rho`); with no decided client, nothing changes. A validator whose
reputation falls below ``min_reputation`` loses its power (and regains it if it climbs back).

Lying validators (simulation)
-----------------------------
``liars`` validators — the **last** ``liars`` indices, ``V − liars, …, V − 1`` — corrupt their
reports before voting (:meth:`Committee.corrupt`):

``lie="invert"``
    :math:`s_v \leftarrow 1 - s_v`: they vouch for the lowest-scoring (Byzantine) clients and
    against the honest ones — the strongest coordinated lie a score-reporting validator can tell.
``lie="random"``
    :math:`s_v \sim U(0, 1)^n`, seeded from ``(seed, round)``: noise rather than strategy.

What the committee guarantees
-----------------------------
Let :math:`\lambda` be the lying validators' share of the power :math:`P`.

* :math:`\lambda \le 1/3` (**the tolerance condition**; the quorum is inclusive, so exactly 1/3
  still works): the honest validators hold at least 2/3 of the power and — as long as they agree
  with each other (their shards are large enough to give the same verdicts) — every client is
  decided by them: honest clients are trusted, clients the honest validators flag are rejected.
  Liars vote against decided verdicts, so their :math:`a_v` is low and their power decays
  geometrically (``invert``: :math:`a_v \approx 0`, so :math:`R_v \approx (1-\rho)^t`, and they
  lose all power once below ``min_reputation``); ``random`` liars settle near
  :math:`a_v \approx 1/2`. Losing power only widens the honest margin.
* :math:`1/3 < \lambda < 2/3`: **safety holds, liveness does not.** No quorum forms on clients
  the two camps disagree about, so those are undecided and not trusted: inverting liars block
  honest clients (in the worst case nobody is trusted and the rule falls back, see
  :class:`~matl.trust.rule.MATLRule`), but they cannot get a client the honest validators flag
  trusted. Reputation does not move on undecided clients, so honest validators are not punished
  for the stalemate (and liars are not punished either: the stalemate persists).
* :math:`\lambda \ge 2/3`: the liars decide alone; nothing is guaranteed.

**The "45 % Byzantine clients" bound is conditional.** In Mode 1 trust is anchored on validation
data, not on a majority of clients: a Byzantine update is rejected because it does not improve the
validation loss, however many clients send it, so the fraction of Byzantine *clients* the engine
tolerates (45 % and beyond) is bounded by the oracle's power to separate useful from harmful updates
— **provided the oracle itself is honest**, i.e. with a committee, **the lying validators hold at
most 1/3 of the reputation-weighted validator power** (the honest validators at least 2/3: the
quorum is inclusive), and the honest validators' shards are representative of the task. In Mode 0 (peer comparison, no oracle) the tolerance is the honest
client majority the peer statistics need (< 50 % Byzantine).

Measured on the trust benchmark's setting (real MNIST, 50 clients, Dirichlet 0.5, 30 rounds, seeds
0–2, Mode 1 with five validators; ``examples/trust_committee.toml``, ``docs/trust.md``, "A committee
with lying validators"): at 45 % Byzantine clients, with 1 000 validation samples per validator,
the honest committee and one with one inverting liar met every target in all eight attacks
(detection ≥ 0.96, false-positive rate ≤ 0.017) and flagged nobody without an attack; one liar
sending noise missed the false-positive target in sign flip (0.026) and the sleeper (0.027); with
two inverting liars of five (2/5 of the power) the committee stalled, deciding nobody in most
rounds, and under five of the eight attacks the model did not train. With 200 samples per
validator the honest committee itself exceeded the false-positive target in sign flip (0.068):
the shards must be large enough for the honest validators to agree.

References
----------
Castro & Liskov, "Practical Byzantine Fault Tolerance", OSDI 1999 (a 2/3 quorum tolerates fewer
than a third of faulty replicas); Buchman, Kwon & Milosevic, "The latest gossip on BFT consensus",
2018 (Tendermint: the same quorum over voting power instead of replica counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from matl.errors import ConfigError
from matl.trust._util import round_generator

__all__ = ["Committee", "CommitteeDecision", "weighted_median"]

#: First random stream of the lying validators (:func:`~matl.trust._util.round_generator`), apart
#: from the signals' small stream numbers.
_STREAM_LIE = 0x11E0


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Column-wise weighted median of ``values`` ``(V, n)`` with weights ``(V,)`` (``>= 0``, sum
    > 0): for each column, the smallest value :math:`x` whose cumulative weight reaches half the
    total, :math:`\sum_{v: s_v \le x} p_v \ge P/2`."""
    order = torch.sort(values, dim=0)
    w = weights.to(values.dtype)[order.indices]
    cum = torch.cumsum(w, dim=0)
    half = w.sum(dim=0, keepdim=True) / 2
    idx = torch.searchsorted(cum.T.contiguous(), half.T.contiguous()).clamp(max=values.shape[0] - 1)
    return order.values.gather(0, idx.T).squeeze(0)


@dataclass(frozen=True)
class CommitteeDecision:
    """One round's committee outcome.

    Attributes
    ----------
    trusted, rejected:
        ``(n,)`` bool quorum decisions (undecided = neither).
    support:
        ``(n,)`` float64 share of the power voting "trusted", in ``[0, 1]``.
    score:
        ``(n,)`` float64 power-weighted median of the reports.
    votes:
        ``(V, n)`` bool "trusted" votes.
    power:
        ``(V,)`` float64 voting power this round (before this round's reputation update).
    agreement:
        ``(V,)`` float64 :math:`a_v` (NaN when no client was decided).
    """

    trusted: torch.Tensor
    rejected: torch.Tensor
    support: torch.Tensor
    score: torch.Tensor
    votes: torch.Tensor
    power: torch.Tensor
    agreement: torch.Tensor

    @property
    def decided(self) -> torch.Tensor:
        """``(n,)`` bool: a quorum formed either way."""
        return self.trusted | self.rejected


@dataclass(kw_only=True)
class Committee:
    """The validator committee (see the module docstring).

    Parameters
    ----------
    validators:
        Number of validators :math:`V \\ge 1`.
    liars:
        How many of them lie (the last ``liars`` indices), ``0 <= liars <= V``.
    lie:
        ``"invert"`` or ``"random"``.
    quorum:
        The power share a verdict needs, in ``(1/2, 1]`` (default 2/3).
    learning_rate:
        :math:`\\rho \\in (0, 1]`, the EMA rate of validator reputation.
    min_reputation:
        Validators below it have no power, in ``[0, 1)``.
    seed:
        Seed of the ``random`` liars.
    """

    validators: int = 1
    liars: int = 0
    lie: Literal["invert", "random"] = "invert"
    quorum: float = 2.0 / 3.0
    learning_rate: float = 0.3
    min_reputation: float = 0.1
    seed: int = 0
    _reputation: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        v = self.validators
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"committee validators must be an integer >= 1, got {v!r}")
        if isinstance(self.liars, bool) or not isinstance(self.liars, int) or not self.liars >= 0:
            raise ConfigError(f"committee liars must be an integer >= 0, got {self.liars!r}")
        if self.liars > v:
            raise ConfigError(f"committee liars ({self.liars}) exceed validators ({v})")
        if self.lie not in ("invert", "random"):
            raise ConfigError(f"committee lie must be 'invert' or 'random', got {self.lie!r}")
        _number("quorum", self.quorum, 0.5, 1.0, low_open=True)
        _number("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _number("min_reputation", self.min_reputation, 0.0, 1.0, high_open=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"committee seed must be an integer >= 0, got {self.seed!r}")
        self._reputation = torch.ones(v, dtype=torch.float64)

    @property
    def reputation(self) -> torch.Tensor:
        """``(V,)`` float64 validator reputations (a copy)."""
        return self._reputation.clone()

    @property
    def lying(self) -> torch.Tensor:
        """``(V,)`` bool: which validators lie."""
        mask = torch.zeros(self.validators, dtype=torch.bool)
        if self.liars:
            mask[self.validators - self.liars :] = True
        return mask

    def power(self) -> torch.Tensor:
        """``(V,)`` float64 voting power: reputation, 0 below ``min_reputation``."""
        r = self._reputation
        return torch.where(r >= self.min_reputation, r, torch.zeros_like(r))

    def corrupt(self, reports: torch.Tensor, rnd: int, stream: int = 0) -> torch.Tensor:
        """The reports as sent: the lying validators' rows inverted or randomised (a copy).

        ``reports`` is ``(V, n)`` in ``[0, 1]``: the composite reports the committee votes on
        (``stream`` 0) or anything else each validator sends, which a liar falsifies the same way
        (the trust engine sends each validator's PoGQ scores as stream 1 and its PoGQ exemptions,
        1 for "not exempt", as stream 2). A ``random`` liar draws each stream independently, from
        :func:`~matl.trust._util.round_generator` ``(seed, round, _STREAM_LIE + stream)``, apart
        from every signal's streams."""
        out = reports.to(torch.float64).clone()
        if not self.liars:
            return out
        rows = slice(self.validators - self.liars, self.validators)
        if self.lie == "invert":
            out[rows] = 1.0 - out[rows]
        else:
            g = round_generator(self.seed, int(rnd), _STREAM_LIE + int(stream))
            out[rows] = torch.rand(self.liars, out.shape[1], generator=g, dtype=torch.float64)
        return out

    def consensus(self, reports: torch.Tensor) -> torch.Tensor:
        """``(n,)`` the power-weighted median of ``reports`` ``(V, n)`` (robust while lying power
        is below 1/2); the plain median when no validator has power."""
        power = self.power()
        values = reports.to(torch.float64)
        if float(power.sum()) > 0:
            return weighted_median(values, power.to(values.device))
        return values.median(dim=0).values

    def floor(self, reports: torch.Tensor) -> torch.Tensor:
        r"""``(n,)`` the lowest value that validators holding more than :math:`1 - q` of the power
        report: for client :math:`i` the smallest :math:`x` with
        :math:`\sum_{v:\, s_{v,i} \le x} p_v > (1 - q) P`.

        It is the most suspicious view that no coalition within the tolerance condition can
        fabricate or hide. Liars holding at most :math:`1 - q` of the power (1/3) cannot pull it
        below the lowest honest report, since their reports alone never exceed :math:`1 - q` of
        the power. They cannot lift it above the lowest value that honest validators holding
        more than :math:`1 - q` of the power report either, since those honest reports alone
        exceed it. With one or two validators of equal power it is the minimum; with three to
        five, the second lowest. When no validator has power, it is the minimum."""
        values = reports.to(torch.float64)
        power = self.power().to(values.device)
        total = float(power.sum())
        if total <= 0:
            return values.min(dim=0).values
        order = torch.sort(values, dim=0)
        share = torch.cumsum(power[order.indices], dim=0) / total
        beyond = share > (1.0 - self.quorum) + 1e-12
        idx = beyond.to(torch.int64).argmax(dim=0, keepdim=True)
        return order.values.gather(0, idx).squeeze(0)

    def vote(
        self, reports: torch.Tensor, flag: Callable[[torch.Tensor], torch.Tensor]
    ) -> CommitteeDecision:
        """Derive each validator's votes from its (already corrupted) ``reports`` ``(V, n)`` with
        the public rule ``flag`` (``(n,)`` scores → ``(n,)`` bool flagged), tally them, and update
        the validators' reputations on the decided clients."""
        if reports.ndim != 2 or reports.shape[0] != self.validators:
            raise ValueError(
                f"committee of {self.validators} needs ({self.validators}, n) reports, "
                f"got {tuple(reports.shape)}"
            )
        reports = reports.to(torch.float64)
        votes = torch.stack([~flag(row).to(torch.bool) for row in reports])
        power = self.power()
        total = float(power.sum())
        score = self.consensus(reports)
        if total > 0:
            support = (power.to(votes.device) @ votes.to(torch.float64)) / total
        else:  # every validator discredited: nobody can be trusted
            support = torch.zeros(reports.shape[1], dtype=torch.float64)
        eps = 1e-12
        trusted = (support >= self.quorum - eps) & (total > 0)
        rejected = ((1.0 - support) >= self.quorum - eps) & (total > 0)
        decided = trusted | rejected
        agreement = torch.full((self.validators,), math.nan, dtype=torch.float64)
        if bool(decided.any()):
            agree = (votes[:, decided] == trusted[decided]).to(torch.float64).mean(dim=1)
            agreement = agree
            rho = self.learning_rate
            self._reputation = ((1 - rho) * self._reputation + rho * agree).clamp(0.0, 1.0)
        return CommitteeDecision(
            trusted=trusted,
            rejected=rejected,
            support=support,
            score=score,
            votes=votes,
            power=power,
            agreement=agreement,
        )

    def state_dict(self) -> dict[str, Any]:
        """``{"reputation": [R_0, …, R_{V-1}]}``."""
        return {"reputation": self._reputation.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the validator count must match)."""
        unknown = set(state) - {"reputation"}
        if unknown:
            raise ValueError(f"committee state has unknown keys {sorted(unknown)}")
        rep = torch.as_tensor(state["reputation"], dtype=torch.float64).flatten()
        if rep.numel() != self.validators:
            raise ValueError(
                f"committee state has {rep.numel()} validator reputations, expected "
                f"{self.validators}"
            )
        self._reputation = rep.clone()

    def reset(self) -> None:
        """Every validator back to reputation 1."""
        self._reputation = torch.ones(self.validators, dtype=torch.float64)


def _number(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        assert isinstance(value, (int, float))
        ok = (low < value if low_open else low <= value) and (
            value < high if high_open else value <= high
        )
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"committee {name} must be in {lo}{low}, {high}{hi}, got {value!r}")
