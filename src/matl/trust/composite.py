r"""The composite trust score and its adaptive, no-attack-guarded threshold.

Combination
-----------
Each signal :math:`k` gives every client :math:`i` a score :math:`s_{k,i} \in [0, 1]` (higher is
more trustworthy). The composite score is the normalised weighted sum

.. math::

    c_i = \frac{\sum_k w_k\, s_{k,i}}{\sum_k w_k}, \qquad w_k \ge 0,

so :math:`c_i \in [0, 1]`. The default weights are :data:`DEFAULT_WEIGHTS`
(``pogq 0.4, tcdm 0.3, entropy 0.3``); Mode 0 has no validation oracle and puts the peer score in
PoGQ's place (:func:`mode_weights`). A signal with weight 0 is ignored (it need not be computed).

Threshold
---------
:class:`AdaptiveThreshold` turns the round's composite scores into a cut :math:`t` (a client is
flagged iff :math:`c_i < t`), adapting to the round's score distribution:

``method="cluster"`` (default) — a two-cluster split that does **not** assume an honest
majority. Sort the scores and pick the split (low cluster :math:`L`, high cluster :math:`H`)
maximising Otsu's between-class criterion :math:`|L|\,|H|\,(\mu_H - \mu_L)^2`. The split is
*accepted* only when it is a real separation:

.. math::

    \text{gap} = \mu_H - \mu_L \ge \texttt{min\_gap}
    \quad\text{and}\quad
    \text{gap} \ge k\,\sigma_w, \qquad
    \sigma_w^2 = \tfrac1n\Bigl(\textstyle\sum_{i \in L}(c_i - \mu_L)^2
    + \sum_{i \in H}(c_i - \mu_H)^2\Bigr).

Then :math:`t_{\text{adaptive}} = (\max L + \min H) / 2`. The low cluster is flagged even when it
is the larger one: in Mode 1 the scores are anchored on validation data, so a high score means a
useful update whoever holds the majority.

``method="mad"`` — the classical robust rule, valid only with an honest majority:
:math:`t_{\text{adaptive}} = m - \max(k\,\hat\sigma, \texttt{min\_gap})` with :math:`m` the median,
:math:`\hat\sigma = 1.4826\,\mathrm{MAD}` the normal-consistent median absolute deviation. It is
"accepted" when some score falls below it.

**No-attack guard.** Honest-only rounds must flag nobody (false-positive rate 0 without an
attacker). The guard is a set of conditions, each of which alone stops a flag:

1. *Scores closer together than* ``min_gap`` *are never split.* ``cluster``: the Otsu gap
   :math:`\mu_H - \mu_L` cannot exceed the range of the scores, and a split needs
   :math:`\text{gap} \ge \texttt{min\_gap}`. ``mad``: a flagged score lies more than
   ``min_gap`` below the median.
2. *A unimodal spread is not split* (``cluster``): the gap must also reach ``k`` within-cluster
   standard deviations. Otsu's split of one Gaussian gives a gap of about :math:`2.7\,\sigma_w`
   (large :math:`n`), below the default :math:`k = 3`; small rounds fluctuate more, and there
   conditions 1 and 3 carry the guard.
3. *Absolute safe score*: a client scoring at least ``safe_score`` is never flagged,
   :math:`t \le \texttt{safe\_score}`. With the default weights a client failing any one signal
   completely scores at most :math:`1 - 0.3 = 0.7` (``1 − 0.4 = 0.6`` for the anchoring signal),
   below the default 0.75, while honest composite scores sit near 1.

4. *No attack signature, no cut* (``signature``, off in the class, 0.1 in
   :class:`~matl.trust.rule.MATLRule`): the adaptive cut is used only in a round where some
   client fails some signal outright — its score on a weighted signal is at most ``signature``,
   or the signal marks it as failing (``raw[FAILED]``: members of a tight group, whose community
   score is 0.2 for three members) — the caller passes the round's lowest score,
   :func:`lowest_signal_score`, to :meth:`AdaptiveThreshold.decide`. An
   attack leaves that mark: a detected sign flipper or boosted update scores 0 on PoGQ, a noisy
   client 0 on TCDM's innovation test, a sybil group 0.02–0.2 on community diversity. The honest
   clients the cut used to flag in attack-free rounds are mild outliers on one signal: on the
   MNIST calibration seeds they scored 0.20–0.36 on PoGQ with TCDM and entropy at 1, a composite
   of 0.68–0.745 that the cut alone cannot tell from a sign flipper's (``docs/trust.md``,
   "An attack signature").

   ``signature_scope="signal"`` narrows the guard to the clients it concerns: pass the
   per-signal scores (:func:`signal_lows`) and a client below the cut is flagged only if it
   scores below ``safe_score`` on a signal that carries the signature (some client at most
   ``signature`` on it). An honest client that is weak on PoGQ alone (composite 0.72) sits in
   the low cluster of a round whose noisy attackers fail TCDM (0.7) and was cut with them; it is
   now spared (:attr:`ThresholdDecision.excused`), while in a round where some attacker fails
   PoGQ it is judged as before — there its score is a sign flipper's.

When the split is rejected the adaptive cut is dropped (:math:`t_{\text{adaptive}} = 0`). These
are properties of the threshold; the signals must keep honest scores apart from attackers' — see
:class:`~matl.trust.rule.MATLRule` for the measured calibration.

An optional ``hard_floor`` flags any score below it even without separation (default 0: off).
The final cut is

.. math::

    t = \min\bigl(\max(t_{\text{adaptive}}, \texttt{hard\_floor}),\ \texttt{safe\_score}\bigr),
    \qquad \text{flagged}_i \iff c_i < t .

References
----------
Otsu, "A Threshold Selection Method from Gray-Level Histograms", IEEE Trans. SMC 1979 (the
between-class criterion of the ``cluster`` split); Hampel, "The Influence Curve and its Role in
Robust Estimation", JASA 1974, and Rousseeuw & Croux, JASA 1993 (the median and the
normal-consistent MAD of the ``mad`` rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from matl.errors import ConfigError
from matl.trust.base import FAILED, SignalResult
from matl.trust.verdicts import ReasonColumn, VerdictTable

__all__ = [
    "DEFAULT_WEIGHTS",
    "AdaptiveThreshold",
    "ThresholdDecision",
    "carries_signature",
    "check_weights",
    "combine",
    "lowest_signal_score",
    "mode_weights",
    "signal_lows",
    "signal_reasons",
    "verdicts",
]

#: The default composite weights (Mode 1): ``score = 0.4·PoGQ + 0.3·TCDM + 0.3·Entropy``.
DEFAULT_WEIGHTS: dict[str, float] = {"pogq": 0.4, "tcdm": 0.3, "entropy": 0.3}


def mode_weights(mode: int) -> dict[str, float]:
    """The default weights of ``mode``: :data:`DEFAULT_WEIGHTS`, with ``peer`` in PoGQ's place for
    Mode 0."""
    if mode == 0:
        return {"peer": 0.4, "tcdm": 0.3, "entropy": 0.3}
    return dict(DEFAULT_WEIGHTS)


def check_weights(weights: Mapping[str, float], allowed: Sequence[str] | None = None) -> None:
    """Raise :class:`ConfigError` unless the weights are finite, ``>= 0``, have a positive sum and
    (with ``allowed``) name only known signals."""
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(f"composite weights must be a non-empty mapping, got {weights!r}")
    for name, w in weights.items():
        if allowed is not None and name not in allowed:
            raise ConfigError(
                f"composite weight for unknown signal {name!r}; valid: {', '.join(allowed)}"
            )
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
            raise ConfigError(f"composite weight {name!r} must be a finite number >= 0, got {w!r}")
    if not sum(weights.values()) > 0:
        raise ConfigError(f"composite weights must have a positive sum, got {dict(weights)}")


def combine(
    signals: Mapping[str, SignalResult | torch.Tensor], weights: Mapping[str, float]
) -> torch.Tensor:
    r"""The composite score :math:`c = \sum_k w_k s_k / \sum_k w_k` (float64, in ``[0, 1]``).

    Parameters
    ----------
    signals:
        Signal name → its :class:`SignalResult` (or directly its ``(n,)`` scores).
    weights:
        Signal name → weight :math:`w_k \ge 0`; every name with a positive weight must be in
        ``signals``.

    Raises
    ------
    ConfigError
        Bad weights, a weighted signal missing, or scores of different lengths.
    """
    check_weights(weights)
    total = float(sum(weights.values()))
    out: torch.Tensor | None = None
    for name, w in weights.items():
        if w == 0:
            continue
        if name not in signals:
            raise ConfigError(
                f"composite: signal {name!r} has weight {w} but was not computed; "
                f"have: {', '.join(sorted(signals)) or '(none)'}"
            )
        value = signals[name]
        scores = _scores(value).to(torch.float64)
        if out is not None and scores.shape != out.shape:
            raise ConfigError(
                f"composite: signal {name!r} scored {tuple(scores.shape)} clients, "
                f"others {tuple(out.shape)}"
            )
        term = scores * (w / total)
        out = term if out is None else out + term
    assert out is not None  # a positive total means some weight is positive
    return out.clamp(0.0, 1.0)


@dataclass(frozen=True)
class ThresholdDecision:
    """The outcome of :meth:`AdaptiveThreshold.decide` for one round.

    Attributes
    ----------
    threshold:
        The final cut :math:`t`; ``flagged = scores < threshold``.
    flagged:
        ``(n,)`` bool.
    separated:
        Whether the scores showed a real separation (the adaptive cut was used).
    gap, spread:
        ``cluster``: the Otsu gap :math:`\\mu_H - \\mu_L` and the within-cluster standard deviation
        :math:`\\sigma_w`; ``mad``: the median minus the lowest score, and :math:`\\hat\\sigma`.
    adaptive:
        The adaptive cut before the guards (0 when not separated or not signed).
    signed:
        Whether the round showed an attack signature (always ``True`` when the threshold has no
        ``signature`` or the caller gave no lowest signal score).
    excused:
        ``(n,)`` bool: the clients below the cut that the signal-scoped guard spares (not low on
        any signal that carries the round's attack signature); all ``False`` with the round
        scope.
    """

    threshold: float
    flagged: torch.Tensor
    separated: bool
    gap: float
    spread: float
    adaptive: float
    signed: bool = True
    excused: torch.Tensor | None = None

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields (no per-client tensor), for logs and audit details."""
        return {
            "threshold": self.threshold,
            "separated": self.separated,
            "gap": self.gap,
            "spread": self.spread,
            "adaptive": self.adaptive,
            "signed": self.signed,
            "n_flagged": int(self.flagged.sum()),
            "n_excused": 0 if self.excused is None else int(self.excused.sum()),
        }


@dataclass(frozen=True, kw_only=True)
class AdaptiveThreshold:
    """Per-round adaptive cut on composite scores with a no-attack guard (see the module docstring).

    Parameters
    ----------
    method:
        ``"cluster"`` (two-cluster Otsu split, no majority assumption) or ``"mad"`` (median −
        k·MAD, honest majority assumed).
    k:
        ``cluster``: the minimum gap in within-cluster standard deviations; ``mad``: the number of
        robust standard deviations below the median. ``> 0``.
    min_gap:
        The minimum absolute separation (score units) before anyone is flagged, in ``[0, 1]``.
    safe_score:
        Scores ``>= safe_score`` are never flagged, in ``(0, 1]`` (default 0.75).
    hard_floor:
        Scores ``< hard_floor`` are always flagged, in ``[0, safe_score]`` (0 = off).
    signature:
        The attack signature of guard 4, in ``[0, 1]``, or ``None`` (off, default).
    signature_scope:
        ``"round"`` (default) or ``"signal"``: see guard 4 in the module docstring.
    levels:
        ``cluster`` only: how many nested splits (default 1). After an accepted split with cut
        :math:`t_1 <` ``safe_score`` the split is sought again among the scores :math:`\\ge t_1`,
        and so on; each accepted one raises the cut. Two low clusters — e.g. switching sleepers
        that fail PoGQ too (composite ≈ 0.3) and those failing only TCDM (≈ 0.7) — are then both
        cut, where one split cuts only the lowest. Measured (``docs/trust.md``, "Nested
        splits"): Mode 1 sleeper detection +0.02–0.05, false-positive rates up to +0.008; Mode 0
        only more false positives. Not the engine's default.
    own_signature_cut:
        With per-signal ``lowest`` (default ``False``; the engine's default is ``True``): in a
        round whose adaptive cut applies, a client that carries the signature itself (at most
        ``signature`` on some signal) is cut whenever its score is below ``safe_score``, wherever
        the split fell. This is guard 3's premise made a rule — a client failing one signal
        completely scores at most 0.7 with the default weights — for rounds with two low
        clusters, where the split cuts only the lowest.
    """

    METHODS: ClassVar[tuple[str, ...]] = ("cluster", "mad")

    method: Literal["cluster", "mad"] = "cluster"
    k: float = 3.0
    min_gap: float = 0.15
    safe_score: float = 0.75
    hard_floor: float = 0.0
    signature: float | None = None
    signature_scope: Literal["round", "signal"] = "round"
    levels: int = 1
    own_signature_cut: bool = False

    def __post_init__(self) -> None:
        if self.method not in self.METHODS:
            raise ConfigError(
                f"threshold method must be one of {', '.join(self.METHODS)}, got {self.method!r}"
            )
        _check_number("k", self.k, 0.0, math.inf, low_open=True)
        _check_number("min_gap", self.min_gap, 0.0, 1.0)
        _check_number("safe_score", self.safe_score, 0.0, 1.0, low_open=True)
        _check_number("hard_floor", self.hard_floor, 0.0, self.safe_score)
        if self.signature is not None:
            _check_number("signature", self.signature, 0.0, 1.0)
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise ConfigError(f"threshold levels must be an integer >= 1, got {self.levels!r}")
        if not isinstance(self.own_signature_cut, bool):
            raise ConfigError(
                f"threshold own_signature_cut must be a bool, got {self.own_signature_cut!r}"
            )
        if self.signature_scope not in ("round", "signal"):
            raise ConfigError(
                f"threshold signature_scope must be 'round' or 'signal', got {self.signature_scope!r}"
            )

    def decide(
        self,
        scores: torch.Tensor,
        lowest: float | Mapping[str, torch.Tensor] | None = None,
        marked: torch.Tensor | None = None,
    ) -> ThresholdDecision:
        """The round's cut and flags for the ``(n,)`` ``scores``. ``lowest`` (for guard 4;
        ``None``: not checked) is the round's lowest score on any weighted signal, or per signal
        each client's score (:func:`signal_lows`; needed for ``signature_scope="signal"``).
        ``marked`` (``(n,)`` bool, signal scope only): the clients that have carried an attack
        signature themselves, this round or before; the cut spares the others."""
        s = scores.detach().to(torch.float64).flatten()
        if self.method == "cluster":
            separated, gap, spread, adaptive = _cluster_cut(s, self.k, self.min_gap)
            for _ in range(self.levels - 1):
                if not separated or adaptive >= self.safe_score:
                    break
                above = s[s >= adaptive]
                ok, g2, sp2, cut2 = _cluster_cut(above, self.k, self.min_gap)
                if not ok:
                    break
                gap, spread, adaptive = g2, sp2, cut2
        else:
            separated, gap, spread, adaptive = _mad_cut(s, self.k, self.min_gap)
        exposed: torch.Tensor | None = None
        own: torch.Tensor | None = None
        if self.signature is None or lowest is None:
            signed = True
        elif isinstance(lowest, Mapping):
            carriers = [
                v for v in lowest.values() if v.numel() and float(v.min()) <= self.signature
            ]
            signed = bool(carriers)
            if carriers and self.own_signature_cut:
                own = carries_signature(lowest, self.signature)
            if carriers and self.signature_scope == "signal":
                exposed = torch.stack(carriers).min(dim=0).values < self.safe_score
                if marked is not None:
                    exposed &= marked.to(torch.bool).flatten()
        else:
            signed = lowest <= self.signature
        if not (separated and signed):
            adaptive = 0.0
        t = min(max(adaptive, self.hard_floor), self.safe_score)
        below = s < t
        flagged = below
        if exposed is not None:
            flagged = below & (exposed | (s < min(self.hard_floor, self.safe_score)))
        if own is not None and adaptive > 0:
            flagged = flagged | (own & (s < self.safe_score))
        return ThresholdDecision(
            threshold=t,
            flagged=flagged,
            separated=separated,
            gap=gap,
            spread=spread,
            adaptive=adaptive,
            signed=signed,
            excused=below & ~flagged,
        )


def signal_lows(
    signals: Mapping[str, SignalResult | torch.Tensor], weights: Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """Each weighted signal's per-client scores (float64), a client the signal marks as failing
    outright (``raw[FAILED]``) counting as 0: what guard 4 of :class:`AdaptiveThreshold` compares
    with its ``signature``."""
    out: dict[str, torch.Tensor] = {}
    for name, value in signals.items():
        scores = _scores(value)
        if weights.get(name, 0) <= 0 or not scores.numel():
            continue
        mine = scores.detach().to(torch.float64).flatten()
        failed = value.raw.get(FAILED) if isinstance(value, SignalResult) else None
        if failed is not None:
            mine = torch.where(failed.flatten().to(torch.bool), 0.0, mine)
        out[name] = mine
    return out


def carries_signature(lowest: Mapping[str, torch.Tensor], signature: float) -> torch.Tensor | None:
    """``(n,)`` bool: the clients at most ``signature`` on some signal of ``lowest``
    (:func:`signal_lows`); ``None`` if no signal has scores."""
    lows = [v for v in lowest.values() if v.numel()]
    return torch.stack(lows).min(dim=0).values <= signature if lows else None


def lowest_signal_score(
    signals: Mapping[str, SignalResult | torch.Tensor], weights: Mapping[str, float]
) -> float:
    """The round's lowest score on any signal with a positive weight (``inf`` if none), a client
    that a signal marks as failing outright (``raw[FAILED]``) counting as 0."""
    lows = signal_lows(signals, weights)
    return min((float(v.min()) for v in lows.values()), default=math.inf)


def _scores(value: SignalResult | torch.Tensor) -> torch.Tensor:
    return value.scores if isinstance(value, SignalResult) else value


def _cluster_cut(s: torch.Tensor, k: float, min_gap: float) -> tuple[bool, float, float, float]:
    n = s.numel()
    if n < 2:
        return False, 0.0, 0.0, 0.0
    v = torch.sort(s).values
    c1 = torch.cumsum(v, 0)
    c2 = torch.cumsum(v * v, 0)
    tot1, tot2 = c1[-1], c2[-1]
    j = torch.arange(1, n, dtype=torch.float64)
    mu_l = c1[:-1] / j
    mu_h = (tot1 - c1[:-1]) / (n - j)
    crit = j * (n - j) * (mu_h - mu_l) ** 2
    best = int(torch.argmax(crit))  # first maximiser
    size_l = best + 1
    m_l, m_h = float(mu_l[best]), float(mu_h[best])
    # Within-cluster sums of squares from the running sums (clamped against rounding).
    ss_l = max(float(c2[best]) - size_l * m_l * m_l, 0.0)
    ss_h = max(float(tot2 - c2[best]) - (n - size_l) * m_h * m_h, 0.0)
    gap = m_h - m_l
    spread = math.sqrt((ss_l + ss_h) / n)
    separated = gap > 0 and gap >= min_gap and gap >= k * spread
    cut = (float(v[size_l - 1]) + float(v[size_l])) / 2
    return separated, gap, spread, cut


def _mad_cut(s: torch.Tensor, k: float, min_gap: float) -> tuple[bool, float, float, float]:
    if s.numel() == 0:
        return False, 0.0, 0.0, 0.0
    med = float(torch.quantile(s, 0.5))
    sigma = 1.4826 * float(torch.quantile((s - med).abs(), 0.5))
    cut = med - max(k * sigma, min_gap)
    gap = med - float(s.min())
    return bool((s < cut).any()), gap, sigma, cut


def _check_number(
    name: str, value: object, low: float, high: float, *, low_open: bool = False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        assert isinstance(value, (int, float))
        ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"threshold {name} must be in {bracket}{low}, {high}], got {value!r}")


def signal_reasons(
    signals: Mapping[str, SignalResult | torch.Tensor],
    weights: Mapping[str, float],
    threshold: AdaptiveThreshold,
) -> dict[str, tuple[torch.Tensor, float]]:
    """Per-signal evidence: each weighted signal's scores and the cut the same adaptive rule puts
    on them alone (informational: the decision is taken on the composite)."""
    out: dict[str, tuple[torch.Tensor, float]] = {}
    for name, w in weights.items():
        if w == 0 or name not in signals:
            continue
        value = signals[name]
        scores = _scores(value).to(torch.float64)
        out[name] = (scores, threshold.decide(scores).threshold)
    return out


def verdicts(
    client_ids: Sequence[int],
    composite: torch.Tensor,
    decision: ThresholdDecision,
    evidence: Mapping[str, tuple[torch.Tensor, float]] | None = None,
    extra: Sequence[ReasonColumn] = (),
    trusted: Sequence[bool] | None = None,
) -> VerdictTable:
    """The round's verdicts, one per client, as a :class:`~matl.trust.verdicts.VerdictTable`.

    Reasons, in order: each signal in ``evidence`` (its score against its own informational cut),
    then ``composite`` (score against ``decision.threshold``), then the ``extra`` columns (reasons
    added later in the pipeline, e.g. committee, cartel or quarantine). ``trusted`` is the final
    decision (default: not flagged by ``decision``).
    """
    rows = composite.to(torch.float64).tolist()
    flagged = decision.flagged.tolist()
    final = [not f for f in flagged] if trusted is None else list(trusted)
    columns = [ReasonColumn.of(name, scores, t) for name, (scores, t) in (evidence or {}).items()]
    columns.append(
        ReasonColumn("composite", rows, float(decision.threshold), [not f for f in flagged])
    )
    columns.extend(extra)
    return VerdictTable(client_ids, rows, final, columns)
