r"""The MATL trust engine as an aggregation rule: ``get_rule("matl", mode=1)``.

One round, for updates :math:`u_1, \dots, u_n` (deltas from the global model):

1. **Signals.** The mode's anchoring signal — ``peer`` (Mode 0,
   :class:`~matl.trust.peer.PeerSignal`) or ``pogq`` (Mode 1, :class:`~matl.trust.quality.PoGQSignal`
   on ``ctx.validation``) — plus ``tcdm`` (:class:`~matl.trust.tcdm.TCDM`) and ``entropy``
   (:class:`~matl.trust.entropy.EntropySignal`); each gives scores in ``[0, 1]``. Only signals with
   a positive weight are computed.
2. **Composite.** :math:`c_i = \sum_k w_k s_{k,i} / \sum_k w_k`
   (:func:`~matl.trust.composite.combine`; default weights ``0.4 / 0.3 / 0.3``).
3. **Verdict.** The adaptive, no-attack-guarded threshold
   (:class:`~matl.trust.composite.AdaptiveThreshold`) flags :math:`c_i < t`; its adaptive cut
   applies only in a round with an attack signature (some client at most ``attack_signature``
   on some weighted signal; on PoGQ, in Mode 1, only several clients together or an exempt one:
   ``oracle_quorum``), and cuts only clients that are low on a signal carrying that
   signature (``attack_signature_scope="signal"``) and carry it themselves, now or in earlier
   rounds (``attack_signature_memory``); in a round it cuts, a client failing a signal outright
   is cut below ``safe_score`` (``own_signature_cut``). In Mode 1 PoGQ's own verdict (the same
   threshold on PoGQ's scores) applies beside it (``oracle_verdict``). With a committee
   (``validators > 1`` or ``lying_validators > 0``), each validator computes the composite with
   its own PoGQ on its shard of ``ctx.validation`` (rows ``v::V``; Mode 0 validators share the
   peer score), the liars corrupt theirs, every report is thresholded, and a client is trusted
   only with a 2/3 quorum of reputation-weighted validator power (:mod:`matl.trust.committee`);
   :math:`c_i` is then the power-weighted median of the reports. Each validator also sends its
   PoGQ scores and exemptions, which a liar corrupts the same way; the guard reads their
   :meth:`~matl.trust.committee.Committee.floor` (the lowest value validators holding more than
   1/3 of the power report) and PoGQ's own verdict their power-weighted median.
4. **Cartels.** :class:`~matl.trust.cartel.CartelDetector` finds groups whose updates stayed
   near-identical for several rounds; members are flagged and their weight is multiplied by
   ``cartel_weight``.
5. **Reputation.** :class:`~matl.trust.reputation.ReputationBook` updates each client's
   :math:`r_i` (a violation = not trusted, or in a cartel) and quarantines repeat offenders; a
   client whose temporal test fails in ``switch_hold`` consecutive rounds (or whose update turns
   against its own history, consistency below ``switch_reversal``), once outright (a temporal
   score at most ``attack_signature``, or such a reversal), is held in quarantine until released
   by hand.
6. **Weights.** Eligible clients are those trusted and not quarantined; their weight is

   .. math::

       w_i \propto r_i\, c_i\, m_i, \qquad m_i = \texttt{cartel\_weight} \text{ if } i
       \text{ is in a cartel, else } 1,

   normalised to sum 1 over the eligible clients (uniform over them if every :math:`r_i c_i m_i`
   is 0). The aggregate is :math:`\sum_i w_i u_i`.

**Nobody eligible** (every client flagged or quarantined, e.g. a committee stalemate):
``fallback="skip"`` (default) returns the zero aggregate — the round leaves the model unchanged —
with nominal uniform weights ``1/n`` and every client flagged; ``fallback="median"`` returns the
coordinate-wise median of all updates (liveness over safety), again with uniform weights and every
client flagged.

**Measured calibration** (synthetic Gaussian task, MLP and logistic regression, 12 and 30 clients,
8 rounds × 4 seeds per setting; measured with the earlier memoryless PoGQ, not re-run since PoGQ
keeps running evidence): without any attack Mode 0 flagged nobody on IID and
Dirichlet(0.5) partitions, and Mode 1 nobody on IID partitions. With 30 % sign flippers (scale 4)
both modes flagged all of them and no honest client on IID data, and kept the attack-free
accuracy. Copies of one honest client (``mimic``) flag that client too: it is indistinguishable
from its copies. On real MNIST under Dirichlet(0.5) Mode 1 does flag honest clients whose updates
raise the validation loss round after round (see :class:`~matl.trust.quality.PoGQSignal` for the
numbers, and ``docs/trust.md`` for the measured trust benchmark).

Result: ``scores`` are the composite scores :math:`c_i`; ``flagged`` = not eligible or in a cartel;
``details`` holds ``verdicts`` (a :class:`~matl.trust.verdicts.VerdictTable`: a sequence of one
:class:`~matl.trust.base.Verdict` dict per client, built when read, with its
reasons: each signal's score against its own informational cut, the decisive composite score
against :math:`t`, the committee support against the quorum, cartel membership, quarantine), the
threshold's ``decision``, ``reputation``, ``quarantined`` and ``cartels`` (client ids), and the
committee's ``validator_reputation`` and ``support``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from matl.aggregation.base import AggregationResult, AggregationRule, RoundContext
from matl.aggregation.products import weighted_sum
from matl.aggregation.registry import register_rule
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust._util import check_number, quorum_count
from matl.trust.base import SignalResult, client_keys
from matl.trust.cartel import CartelDetector, CartelReport
from matl.trust.committee import Committee, CommitteeDecision
from matl.trust.composite import (
    AdaptiveThreshold,
    ThresholdDecision,
    carries_signature,
    check_weights,
    combine,
    mode_weights,
    signal_lows,
    signal_reasons,
    verdicts,
)
from matl.trust.modes import check_mode
from matl.trust.reputation import ReputationBook, ReputationUpdate
from matl.trust.sketch import round_sketch
from matl.trust.verdicts import ReasonColumn, VerdictTable

__all__ = ["DEFAULT_SIGNAL_PARAMS", "SIGNALS", "MATLRule", "build_signal"]

#: MATL's own defaults for its signals' parameters, merged under ``signal_params``. The peer
#: signal's distance term starts penalising at ``distance_z0 = 8`` robust z-scores instead of the
#: signal's stand-alone 3: in honest IID rounds the clients' distances to the median are so alike
#: that the MAD is tiny and an ordinary client reaches z = 5–8 (measured on the synthetic task:
#: about one round in ten had such a client; the composite then flagged it). Attacks that the
#: distance term alone catches sit at z ≥ 20; sign flips and boosts are caught by the direction and
#: length terms anyway.
#: PoGQ's consensus credit (``consensus_credit`` 0.5): a client whose running consensus cosine
#: once reached half the typical cosine is judged with the wider ``credited_tolerance`` 0.8 — an
#: honest rare-label client drifts slowly from +1 to −0.2…−0.45 late in training, while sign and
#: label flippers point against the consensus from their first round (``docs/trust.md``, "A
#: credit for a good record"). A client without the credit is judged with the tighter
#: ``consensus_tolerance`` 0.1 instead of the signal's stand-alone 0.4: its consensus score falls
#: to 0 at a running cosine of −0.1 typical cosines (calibration seeds 10–19: label and sign flip
#: detection up, the false-positive rate unchanged; "A tighter tolerance for the uncredited").
#: And a client whose running consensus fell to −0.5 typical cosines before it was ever credited
#: is blemished (``consensus_blemish`` 0.5): its consensus score stays 0 whatever its evidence,
#: until a switch forgets it — a rare-label sign flipper whose flipped updates come to help the
#: validation loss late in training ("A blemish for a bad start").
#: Peer comparison keeps the same kind of record of direction (``record``, ``blemish`` 0.5,
#: ``uncredited_shift`` 0.5): a client whose running cosine to the median once reached half the
#: typical cosine is judged on that running value, one that has not is judged half a typical
#: cosine more strictly, and one whose running value fell to −0.5 before it was ever credited is
#: not trusted until a switch forgets it — late in training on non-IID data an honest update's
#: cosine to the others' median is about 0, so a sign flipper can only be told apart in its first
#: rounds, and a single late cosine says little about an honest client (docs/trust.md, "Mode 0:
#: a record of direction").
DEFAULT_SIGNAL_PARAMS: dict[str, dict[str, Any]] = {
    "peer": {"distance_z0": 8.0, "record": True, "blemish": 0.5, "uncredited_shift": 0.5},
    "pogq": {"consensus_credit": 0.5, "consensus_tolerance": 0.1, "consensus_blemish": 0.5},
}

#: Signal name → (module, class) of its implementation.
SIGNALS: dict[str, tuple[str, str]] = {
    "peer": ("matl.trust.peer", "PeerSignal"),
    "pogq": ("matl.trust.quality", "PoGQSignal"),
    "tcdm": ("matl.trust.tcdm", "TCDM"),
    "entropy": ("matl.trust.entropy", "EntropySignal"),
}


def build_signal(name: str, params: dict[str, Any] | None = None) -> Any:
    """Build the signal ``name`` (see :data:`SIGNALS`) with keyword ``params``."""
    import importlib

    if name not in SIGNALS:
        raise ConfigError(f"matl: unknown signal {name!r}; valid: {', '.join(SIGNALS)}")
    module, cls_name = SIGNALS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        return cls(**(params or {}))
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"matl: bad parameters for signal {name!r}: {exc}") from exc


@dataclass
class _Engine:
    """The mutable parts of a :class:`MATLRule` (its state across rounds)."""

    signals: dict[str, Any]
    validator_signals: list[Any]
    reputation: ReputationBook
    cartel: CartelDetector | None
    committee: Committee | None
    #: Rounds aggregated so far: the round number of a call without a context (not saved: after a
    #: restart such calls count from 0 again, which only reseeds their random row subsamples).
    rounds: int = 0


@register_rule
@dataclass(frozen=True, kw_only=True)
class MATLRule(AggregationRule):
    r"""The MATL trust engine (Modes 0 and 1): signals → composite → adaptive threshold →
    committee → cartels → reputation → weighted mean. See the module docstring for the maths.

    Parameters
    ----------
    mode:
        ``0`` (peer comparison) or ``1`` (PoGQ oracle, needs ``ctx.validation``, ``ctx.model``,
        ``ctx.global_params``). ``2`` and ``3`` raise :class:`ConfigError` (not implemented yet).
    weights:
        Composite weights by signal name (default :func:`~matl.trust.composite.mode_weights`:
        ``{pogq|peer: 0.4, tcdm: 0.3, entropy: 0.3}``); Mode 0 accepts ``peer``, ``tcdm``,
        ``entropy``; Mode 1 also ``pogq``.
    signal_params:
        Keyword arguments per signal name, merged over :data:`DEFAULT_SIGNAL_PARAMS`, e.g.
        ``{"pogq": {"path": "exact"}}``. PoGQ judges each client on its running validation
        evidence (``memory``, ``harm_tolerance``) and on its running cosine to the round's
        validated consensus (``consensus_fraction``, ``consensus_tolerance``); see
        :class:`~matl.trust.quality.PoGQSignal` for the measured trade-off under non-IID data.
    threshold, k, min_gap, safe_score, hard_floor, threshold_levels:
        The :class:`~matl.trust.composite.AdaptiveThreshold` (``threshold`` is its method,
        ``threshold_levels`` its ``levels``: nested splits, default 1).
    own_signature_cut:
        The threshold's ``own_signature_cut`` (default ``True`` here): in a round the threshold
        cuts, a client at most ``attack_signature`` on some signal is cut while its composite is
        below ``safe_score``, even above the split. In a sleeper's switching round the sleepers
        failing PoGQ as well (composite ≈ 0.3) and those failing only TCDM (≈ 0.7) form two low
        clusters and the split took only the first. Calibration (seeds 10/11): sleeper 20 % 0.924 /
        0.904 → 0.936 / 0.948, 45 % 0.891 / 0.816 → 0.927 / 0.836 (false-positive rates +0 to
        +0.005); every other Mode 1 run unchanged; ``docs/trust.md`` ("Failing a signal outright").
    attack_signature:
        The threshold's ``signature`` (default 0.1; ``None`` turns the guard off): the adaptive
        cut applies only in a round where some client scores at most this on some weighted signal
        (with a committee, on the shared signals or on the floor of the validators' PoGQ
        scores, :meth:`~matl.trust.committee.Committee.floor`; PoGQ only as the
        ``oracle_quorum`` allows), a client a signal
        marks as failing outright counting as 0 (TCDM's community test marks the members of a
        tight group: three or more near-identical updates). On the calibration
        seeds (10–14) it took Mode 1's attack-free false-positive rate from 0.004 / 0.003 / 0.001 /
        0.006 / 0.035 to 0 / 0 / 0.001 / 0.003 / 0.015 and left every attacked run tested
        unchanged but label flip at 45 % (detection 0.976 → 0.964); ``docs/trust.md`` ("An attack
        signature") has the table and Mode 0's numbers.
    attack_signature_scope:
        ``"signal"`` (default): the cut flags a client only if it scores below ``safe_score`` on
        a signal that carries the round's signature (some client at most ``attack_signature`` on
        it, or marked as failing), so an honest client that is merely weak on PoGQ is not cut
        in a round whose attackers fail TCDM. ``"round"``: any client below the cut in a signed
        round (the behaviour before). With a committee the validators vote with the round
        scope (they vote on composite reports) and a rejection of a client the signal
        scope spares is overturned. On the calibration seeds (10/11) it took Mode 1's
        false-positive rate under Gaussian noise at 20 % from 0.017 / 0.013 to 0.001 / 0.003
        and under ALIE at 20 % from 0.020 / 0.005 to 0.005 / 0 with detection unchanged;
        ``docs/trust.md`` ("An attack signature, signal by signal").
    attack_signature_memory:
        With the signal scope, the cut flags only clients that carry the signature themselves
        this round (some weighted signal at most ``attack_signature``) or did so in at least
        this many earlier rounds (default 2; the reputation book counts them, ``marks``; 0 turns
        the memory off). An honest client that is a mild outlier round after round (PoGQ
        0.2–0.4, never 0) is no longer cut with the sign flippers; a flipper caught at 0 in its
        first rounds stays eligible when it later scores 0.3. On the calibration seeds (10/11,
        with ``release_per_violation`` 0.5) Mode 1's false-positive rate under sign flip went
        from 0.018 / 0.007 / 0.033 / 0.032 to 0.011 / 0.002 / 0.019 / 0.017 (20 % s10, s11,
        45 % s10, s11); ``docs/trust.md`` ("Marks and a longer release").
    r0, reputation_gain, reputation_penalty, max_violations, violation_window, release_after:
        The :class:`~matl.trust.reputation.ReputationBook` (``r0``, ``gain``, ``penalty``,
        ``max_violations``, ``window``, ``release_after``).
    oracle_verdict:
        Mode 1 (default ``True``): PoGQ's own verdict is applied beside the composite's — the
        same threshold (split, guards, signal scope, marks) on PoGQ's scores alone, with PoGQ
        alone carrying the signature (as the ``oracle_quorum`` allows) — and a client either
        flags is not trusted (reason ``oracle``). The composite's cut is capped at
        ``safe_score`` in composite units, so a client at PoGQ 0.4 with TCDM and entropy at 1
        (composite 0.76) could never be cut by it, although PoGQ alone tells it from the honest
        clients; on the benchmark PoGQ alone detected sign flip at 0.95–0.97 where the
        composite reached 0.91–0.94. Calibration
        (seeds 10/11): sign flip 45 % 0.958 / 0.935 → 0.985 / 0.958, sleeper 20 % 0.844 / 0.844
        → 0.924 / 0.904, false-positive rates up to +0.008; ``docs/trust.md`` ("PoGQ's own
        verdict"). With a committee it reads the power-weighted median of the validators' PoGQ.
    oracle_quorum:
        Mode 1 (default 0.08; 0 = off): PoGQ carries the attack signature in a round only when at
        least :math:`\lceil q n\rceil` of the round's :math:`n` clients fail it (score at most
        ``attack_signature``; 4 of 50), or when one that fails it is exempt — beyond PoGQ's norm
        guard (:math:`\gamma(\rho_i) < 1`) or blemished (it pointed against the validated
        consensus before it was ever credited) — which makes PoGQ carry it for the whole round.
        Otherwise PoGQ's low scores still lower those clients' composites (so their aggregation
        weights and reputations), but they mark nobody, and neither the cut nor PoGQ's own
        verdict applies on PoGQ's account (a positive ``hard_floor`` still does). :math:`n`
        counts the round's participants: in rounds of at most 12 clients (under client sampling
        too) the quorum is one client, no gate at all. With a committee a client is exempt when
        validators holding more than 1/3 of the power exempt it (so no liar within the tolerance
        condition decides it). ``details["pogq_signature"]`` records a
        round in which someone failed PoGQ (``failing``, ``needed``, ``exempt``, ``carried``).
        Honest non-IID clients that keep raising the validation loss fail PoGQ one or two at a
        time, late in training; the attackers PoGQ catches fail it together, and a lone sign
        flipper is blemished from its first round. On calibration seeds 20–59 (attack-free) the
        false-positive rate was 0 on 39 of 40 seeds (26 without the quorum); no detection rate
        changed at 20–45 % but label flip's on seed 12 at 20 % (0.977 → 0.967); the price is that
        fewer than :math:`\lceil q n\rceil` attackers at an honest norm and without a blemish pass
        PoGQ's cut (label flip with 2 of 50: 1.000 → 0.933, the first two rounds;
        ``docs/trust.md``, "A crowd quorum on PoGQ's signature").
    release_per_violation:
        The book's ``release_per_violation`` (default 0.5 here, off in the book): a quarantined
        client needs ``max(release_after, ceil(0.5 · its violations))`` clean rounds to be
        released, so a sign flipper caught for 14 rounds is not back after three rounds in
        which its flipped update happened to help (sign flip 20 % s10/s11 detection 0.953 /
        0.957 → 0.993 / 0.983 with the memory above).
    cartel:
        Detect cartels (default ``True``).
    cartel_tau, cartel_min_rounds, cartel_min_size, cartel_dim:
        The :class:`~matl.trust.cartel.CartelDetector` (``tau``, ``min_rounds``, ``min_size``,
        ``dim``).
    cartel_weight:
        Weight multiplier of cartel members, in ``[0, 1]``.
    validators, lying_validators, lie, quorum, validator_lr, min_validator_reputation:
        The :class:`~matl.trust.committee.Committee` (``validators``, ``liars``, ``lie``,
        ``quorum``, ``learning_rate``, ``min_reputation``); used when ``validators > 1`` or
        ``lying_validators > 0``.
    fallback:
        What to return when nobody is eligible: ``"skip"`` (zero aggregate) or ``"median"``.
    restart_on_switch:
        When TCDM is in use, a client whose temporal consistency fails this round
        (:math:`z_i > z_0`: its update turned away from its own history) loses its PoGQ history
        before PoGQ scores it, so that evidence earned before a switch does not vouch for the
        client after it (default ``True``). Without it a sleeper that flips after honest rounds
        keeps a passing PoGQ score for several rounds while its running values catch up. On the
        calibration seeds (10 and 11, 45 % sleepers) sleeper detection went from 0.69 to 0.79;
        the other calibration runs were unchanged but for noise (``docs/trust.md``). PoGQ's
        consensus credit goes with the history, and so does peer comparison's record of direction
        (its credit and blemish).
    switch_hold:
        A client whose temporal consistency fails in this many consecutive participations
        (default 2; ``None`` = never), in one of them outright (temporal score at most
        ``attack_signature``), is *held*: quarantined until released by hand
        (:meth:`~matl.trust.reputation.ReputationBook.release`), however clean its later rounds
        look (reason ``switch``; ``details["held"]``). A sleeper's flipped updates can look
        harmless to every signal a few rounds after its switch; its switch, though, lasts several
        rounds, while an honest client's stands alone (see "Held clients" in
        :mod:`matl.trust.reputation`). Requires TCDM.
    switch_reversal:
        A client with a history whose temporal consistency :math:`\cos(u_i, h_i)` is below this
        value (default −0.2: the update turned clearly *against* its own history; ``None`` = off)
        counts, for the hold, as switched whatever its z-score, and the switch as failed outright.
        When 45 % of the clients switch at once the robust z-scores of the switchers shrink
        (3.6–5.1 against 5.7–8.8 at 20 % on the MNIST calibration seeds; 2.4–3.0 in the second
        round of the switch on seed 16, which broke the streak) and their temporal scores stay
        above ``attack_signature``, while their consistency is −0.84 to −0.30; the lowest honest
        consistency over 40 136 honest client-rounds of the full engine was +0.108
        (``docs/trust.md``, "Holding a client that switched"). Why a margin below 0 (stop 25
        used 0): with TCDM as the only signal under scaling the early model is corrupted and
        honest consistencies of −0.07 to −0.01 occurred in round 2; at 0 they were held for the
        rest of the run (false-positive rate up to 0.068 on calibration seeds 10–19); at −0.2
        those runs' rates were 0.002–0.010, and no other calibration run changed
        (``docs/trust.md``, "Holding a client that switched"). PoGQ's restart
        (``restart_on_switch``) still follows :math:`z_i > z_0` only.
    seed:
        Seed of the cartel sketch and of randomising liars.

    References
    ----------
    Blanchard et al. 2017 and Yin et al. 2018 motivate the robust statistics of Mode 0; Cao et al.
    2021 (FLTrust) the validation-anchored trust of Mode 1; Fung et al. 2020 (FoolsGold) the
    sybil/cartel similarity signal; Castro & Liskov 1999 (PBFT) the 2/3 quorum of the committee.
    The module docstrings of :mod:`matl.trust` give the exact maths used here.
    """

    name: ClassVar[str] = "matl"
    precondition: ClassVar[str] = "n >= 1"
    reference: ClassVar[str] = (
        "MATL trust engine: PoGQ/peer + TCDM + entropy composite, adaptive threshold, RB-BFT "
        "reputation and committee, cartel detection"
    )

    mode: int = 1
    weights: dict[str, float] | None = None
    signal_params: dict[str, dict[str, Any]] | None = None
    threshold: Literal["cluster", "mad"] = "cluster"
    k: float = 3.0
    min_gap: float = 0.15
    safe_score: float = 0.75
    hard_floor: float = 0.0
    attack_signature: float | None = 0.1
    attack_signature_scope: Literal["round", "signal"] = "signal"
    attack_signature_memory: int = 2
    threshold_levels: int = 1
    own_signature_cut: bool = True
    oracle_verdict: bool = True
    oracle_quorum: float = 0.08
    r0: float = 0.5
    reputation_gain: float = 0.2
    reputation_penalty: float = 0.5
    max_violations: int = 3
    violation_window: int | None = 5
    release_after: int = 3
    release_per_violation: float = 0.5
    cartel: bool = True
    cartel_tau: float = 0.99
    cartel_min_rounds: int = 3
    cartel_min_size: int = 3
    cartel_dim: int = 1024
    cartel_weight: float = 0.1
    validators: int = 1
    lying_validators: int = 0
    lie: Literal["invert", "random"] = "invert"
    quorum: float = 2.0 / 3.0
    validator_lr: float = 0.3
    min_validator_reputation: float = 0.1
    fallback: Literal["skip", "median"] = "skip"
    restart_on_switch: bool = True
    switch_hold: int | None = 2
    switch_reversal: float | None = -0.2
    seed: int = 0
    _engine: _Engine = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"matl: seed must be an integer >= 0, got {self.seed!r}")
        if self.fallback not in ("skip", "median"):
            raise ConfigError(f"matl: fallback must be 'skip' or 'median', got {self.fallback!r}")
        for flag in ("cartel", "restart_on_switch", "oracle_verdict", "own_signature_cut"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"matl: {flag} must be a bool, got {getattr(self, flag)!r}")
        check_number("matl", "attack_signature_memory", self.attack_signature_memory, low=0,
                     integer=True)  # fmt: skip
        check_number("matl", "oracle_quorum", self.oracle_quorum, low=0.0, high=1.0)
        if self.switch_hold is not None:
            check_number("matl", "switch_hold", self.switch_hold, low=1, integer=True)
        if self.switch_reversal is not None:
            check_number("matl", "switch_reversal", self.switch_reversal, low=-1.0, high=1.0)
        cw = self.cartel_weight
        if isinstance(cw, bool) or not isinstance(cw, (int, float)) or not 0 <= cw <= 1:
            raise ConfigError(f"matl: cartel_weight must be in [0, 1], got {cw!r}")
        allowed = (
            ("peer", "tcdm", "entropy") if self.mode == 0 else ("pogq", "peer", "tcdm", "entropy")
        )
        if self.weights is not None and not isinstance(self.weights, Mapping):
            raise ConfigError(
                "matl: weights must map signal names to numbers, e.g. "
                f"{dict(mode_weights(self.mode))}, got {self.weights!r}"
            )
        check_weights(self.resolved_weights(), allowed)
        params = self.signal_params or {}
        if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
            raise ConfigError(f"matl: signal_params must map signal names to dicts, got {params!r}")
        unknown = sorted(set(params) - set(SIGNALS))
        if unknown:
            raise ConfigError(
                f"matl: signal_params for unknown signal(s) {', '.join(unknown)}; "
                f"valid: {', '.join(SIGNALS)}"
            )
        # Building the components validates their parameters now (ConfigError on bad ones).
        self.threshold_rule()
        object.__setattr__(self, "_engine", self._build_engine())

    # ----------------------------------------------------------------------------- components
    def resolved_weights(self) -> dict[str, float]:
        """The composite weights in use (``weights`` or the mode's defaults)."""
        return dict(self.weights) if self.weights is not None else mode_weights(self.mode)

    def threshold_rule(self) -> AdaptiveThreshold:
        """The configured :class:`AdaptiveThreshold`."""
        return AdaptiveThreshold(
            method=self.threshold,
            k=self.k,
            min_gap=self.min_gap,
            safe_score=self.safe_score,
            hard_floor=self.hard_floor,
            signature=self.attack_signature,
            signature_scope=self.attack_signature_scope,
            levels=self.threshold_levels,
            own_signature_cut=self.own_signature_cut,
        )

    @property
    def uses_committee(self) -> bool:
        """Whether verdicts go through a validator committee."""
        return self.validators > 1 or self.lying_validators > 0

    def _per_validator_primary(self) -> bool:
        return self.uses_committee and self.mode == 1 and self.resolved_weights().get("pogq", 0) > 0

    def resolved_signal_params(self) -> dict[str, dict[str, Any]]:
        """Each signal's keyword arguments: :data:`DEFAULT_SIGNAL_PARAMS` updated by
        ``signal_params`` (per signal, key by key)."""
        out = {name: dict(p) for name, p in DEFAULT_SIGNAL_PARAMS.items()}
        for name, p in (self.signal_params or {}).items():
            out.setdefault(name, {}).update(p)
        return out

    def _build_engine(self) -> _Engine:
        params = self.resolved_signal_params()
        active = [name for name, w in self.resolved_weights().items() if w > 0]
        signals = {name: build_signal(name, params.get(name)) for name in active}
        validator_signals: list[Any] = []
        committee = None
        if self.uses_committee:
            committee = Committee(
                validators=self.validators,
                liars=self.lying_validators,
                lie=self.lie,
                quorum=self.quorum,
                learning_rate=self.validator_lr,
                min_reputation=self.min_validator_reputation,
                seed=self.seed,
            )
            if self._per_validator_primary():
                signals.pop("pogq")
                validator_signals = [
                    build_signal("pogq", params.get("pogq")) for _ in range(self.validators)
                ]
        reputation = ReputationBook(
            r0=self.r0,
            gain=self.reputation_gain,
            penalty=self.reputation_penalty,
            max_violations=self.max_violations,
            window=self.violation_window,
            release_after=self.release_after,
            release_per_violation=self.release_per_violation,
            hold_after_switches=self.switch_hold,
        )
        cartel = (
            CartelDetector(
                tau=self.cartel_tau,
                min_rounds=self.cartel_min_rounds,
                min_size=self.cartel_min_size,
                dim=self.cartel_dim,
                seed=self.seed,
            )
            if self.cartel
            else None
        )
        return _Engine(signals, validator_signals, reputation, cartel, committee)

    # ------------------------------------------------------------------------------ the round
    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> AggregationResult:
        """Validate and aggregate, as every rule does, after computing the round's shared sketch:
        its one read of the updates also gives the row norms the input check reads
        (:func:`matl.aggregation.kernels.sketch_and_norms`), so the check costs no pass of its
        own, and, on PoGQ's fast path, PoGQ's products (:meth:`PoGQSignal.prepare`), or in
        Mode 0 peer comparison's products with its centre (:meth:`PeerSignal.prepare`). A
        malformed input is left to the check."""
        if ctx is None and isinstance(updates, torch.Tensor) and updates.ndim == 2:
            # A call without a context is the engine's next round (its random row subsamples are
            # drawn afresh), with the row indices as client ids.
            ctx = RoundContext(client_ids=tuple(range(updates.shape[0])), round=self._engine.rounds)
        temporal = getattr(self._engine.signals.get("tcdm"), "temporal", None)
        if (
            temporal is not None
            and isinstance(updates, torch.Tensor)
            and updates.ndim == 2
            and updates.numel() > 0
            and updates.is_floating_point()
        ):
            k, seed = temporal.sketch_dim, temporal.seed
            pogq = self._engine.signals.get("pogq")
            peer = self._engine.signals.get("peer")
            if pogq is not None:
                primed = k is not None and pogq.prepare(updates, ctx, k, seed)
            else:
                primed = k is not None and peer is not None and peer.prepare(updates, ctx, k, seed)
            if not primed:
                round_sketch(updates, k, seed=seed)
        try:
            return super().__call__(updates, ctx)
        finally:  # a read-ahead serves one call: none is kept past a round, even a failed one
            for signal in self._engine.signals.values():
                discard = getattr(signal, "discard_primed", None)
                if discard is not None:
                    discard()

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        ids = client_keys(n, ctx)
        if len(set(ids)) != n:
            raise InvalidUpdateError(f"matl: repeated client ids in one round: {ids}")
        eng = self._engine
        rctx = ctx if ctx is not None else RoundContext(client_ids=tuple(ids), round=eng.rounds)
        eng.rounds += 1
        weights = self.resolved_weights()
        rule = self.threshold_rule()

        results = self._signal_results(updates, rctx, ids)
        lowest = signal_lows(results, weights)
        committee_decision: CommitteeDecision | None = None
        primaries: torch.Tensor | None = None
        pogq_consensus: torch.Tensor | None = None
        exempt = _exempt(results["pogq"]) if "pogq" in results else None
        if eng.committee is not None:
            reports, primaries, own_exempt = self._validator_reports(
                updates, rctx, results, weights
            )
            # Each validator sends its PoGQ scores and exemptions too, and a liar falsifies them
            # as it does its report; the rule reads the floor no coalition within the tolerance
            # condition can fabricate or hide (Committee.floor).
            if primaries is not None:
                primaries = eng.committee.corrupt(primaries, rctx.round, stream=1)
                own = eng.committee.floor(primaries)
                lowest["pogq"] = torch.minimum(lowest["pogq"], own) if "pogq" in lowest else own
                # with the round's power, before the vote moves the validators' reputations
                pogq_consensus = eng.committee.consensus(primaries)
            if own_exempt is not None:
                kept = eng.committee.corrupt((~own_exempt).to(torch.float64), rctx.round, stream=2)
                own_exempt = eng.committee.floor(kept) < 0.5
                exempt = own_exempt if exempt is None else exempt | own_exempt
        lowest, pogq_signature = self._apply_oracle_quorum(lowest, exempt)
        own_mark, marked = self._marks(lowest, ids)
        if eng.committee is not None:
            sent = eng.committee.corrupt(reports, rctx.round)
            # Validators vote on composite reports, so with the round's guard; a rejection the
            # signal-scoped guard would have spared (on the shared evidence and the floor of the
            # validators' PoGQ) is overturned. Undecided clients stay untrusted.
            low = min((float(v.min()) for v in lowest.values()), default=math.inf)
            committee_decision = eng.committee.vote(sent, lambda s: rule.decide(s, low).flagged)
            composite = committee_decision.score
            decision = rule.decide(composite, lowest, marked)
            trusted = committee_decision.trusted
            if decision.excused is not None:
                trusted = trusted | (decision.excused & committee_decision.rejected)
            evidence_signals: dict[str, SignalResult | torch.Tensor] = dict(results)
            if pogq_consensus is not None:
                evidence_signals["pogq"] = pogq_consensus
        else:
            composite = combine(results, weights)
            decision = rule.decide(composite, lowest, marked)
            trusted = ~decision.flagged
            evidence_signals = dict(results)
        oracle = self._oracle_verdict(evidence_signals, weights, lowest, marked, rule)
        if oracle is not None:
            trusted = trusted & ~oracle.flagged
        blemished = _raw_flag(results, "peer", "blemished")
        if blemished is not None:
            trusted = trusted & ~blemished

        report = eng.cartel.update(updates, ids) if eng.cartel is not None else None
        in_cartel = report.member if report is not None else torch.zeros(n, dtype=torch.bool)
        violation = ~trusted | in_cartel
        switched, switch_failed = self._switch_flags(results)
        rep = eng.reputation.update(
            ids,
            composite,
            violation,
            marked=own_mark,
            switched=switched,
            switch_failed=switch_failed,
        )
        eligible = trusted & ~rep.quarantined
        flagged = ~eligible | in_cartel

        multiplier = torch.where(in_cartel, float(self.cartel_weight), 1.0).to(torch.float64)
        raw = ReputationBook.weights(rep.reputation, composite, eligible) * multiplier
        fallback = not bool(eligible.any())
        if fallback:
            w = torch.full((n,), 1.0 / n, dtype=torch.float64)
            flagged = torch.ones(n, dtype=torch.bool)
            if self.fallback == "median":
                aggregate = updates.median(dim=0).values.clone()
            else:
                aggregate = updates.new_zeros(updates.shape[1])
        else:
            total = raw.sum()
            w = raw / total if bool(total > 0) else eligible.to(torch.float64) / eligible.sum()
            aggregate = weighted_sum(w.to(dtype=updates.dtype, device=updates.device), updates)

        evidence = signal_reasons(evidence_signals, weights, rule)
        round_verdicts = self._verdicts(
            ids,
            composite,
            decision,
            evidence,
            committee_decision,
            report,
            rep,
            flagged,
            oracle,
            evidence_signals,
            results,
        )
        details: dict[str, Any] = {
            "mode": self.mode,
            "verdicts": round_verdicts,
            "decision": decision.as_dict(),
            "reputation": rep.reputation.tolist(),
            "quarantined": [c for c, q in zip(ids, rep.quarantined.tolist(), strict=True) if q],
            "held": [c for c, h in zip(ids, rep.held.tolist(), strict=True) if h],
            "cartels": report.cartels if report is not None else [],
            "fallback": fallback,
        }
        if pogq_signature is not None:
            details["pogq_signature"] = pogq_signature
        if committee_decision is not None and eng.committee is not None:
            details["validator_reputation"] = eng.committee.reputation.tolist()
            details["support"] = committee_decision.support.tolist()
        return AggregationResult(
            aggregate=aggregate,
            weights=w.to(dtype=updates.dtype, device=updates.device),
            flagged=flagged,
            scores=composite.to(updates.dtype),
            details=details,
        )

    def _oracle_verdict(
        self,
        signals: dict[str, SignalResult | torch.Tensor],
        weights: dict[str, float],
        lowest: dict[str, torch.Tensor],
        marked: torch.Tensor | None,
        rule: AdaptiveThreshold,
    ) -> ThresholdDecision | None:
        """PoGQ's own verdict (``oracle_verdict``): the same threshold on PoGQ's scores alone,
        with PoGQ alone carrying the signature; ``None`` when it does not apply (Mode 0, PoGQ
        unweighted or the only weighted signal)."""
        if not self.oracle_verdict or weights.get("pogq", 0) <= 0 or "pogq" not in signals:
            return None
        if sum(1 for w in weights.values() if w > 0) < 2:
            return None
        value = signals["pogq"]
        scores = value.scores if isinstance(value, SignalResult) else value
        lows = {"pogq": lowest["pogq"]} if "pogq" in lowest else {}
        return rule.decide(scores.to(torch.float64), lows, marked)

    def _apply_oracle_quorum(
        self, lowest: dict[str, torch.Tensor], exempt: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        r"""``(lowest, record)``: ``lowest`` without PoGQ when PoGQ's failures this round are too
        few to carry the attack signature (``oracle_quorum``) — fewer than :math:`\lceil q n\rceil`
        of the round's :math:`n` clients at most ``attack_signature`` on PoGQ, none of them
        ``exempt`` (:func:`_exempt`) — and, when the quorum applies and someone fails PoGQ, the
        round's ``record`` for ``details["pogq_signature"]``: ``failing``, ``needed``,
        ``exempt`` (the failing clients exempt from the count) and ``carried``."""
        pogq = lowest.get("pogq")
        if pogq is None or not self.oracle_quorum or self.attack_signature is None:
            return lowest, None
        failing = pogq <= self.attack_signature
        count = int(failing.sum())
        if not count:
            return lowest, None
        needed = quorum_count(self.oracle_quorum, pogq.numel())
        spared = int((failing & exempt).sum()) if exempt is not None else 0
        carried = count >= needed or spared > 0
        record = {"failing": count, "needed": needed, "exempt": spared, "carried": carried}
        if carried:
            return lowest, record
        return {name: v for name, v in lowest.items() if name != "pogq"}, record

    def _marks(
        self, lowest: dict[str, torch.Tensor], ids: list[int]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(own, marked)``: the clients carrying an attack signature themselves this round
        (lowest weighted signal score at most ``attack_signature``), and those that have carried
        one this round or in an earlier one (``None`` when not used)."""
        own = (
            None
            if self.attack_signature is None
            else carries_signature(lowest, self.attack_signature)
        )
        if own is None:
            return None, None
        if not self.attack_signature_memory:
            return own, None
        return own, own | (self._engine.reputation.marks(ids) >= self.attack_signature_memory)

    def _signal_results(
        self, updates: torch.Tensor, ctx: RoundContext, ids: list[int]
    ) -> dict[str, SignalResult]:
        """Every signal's result, TCDM's first: with ``restart_on_switch``, the clients whose
        temporal consistency fails this round (:math:`z_i > z_0`, a switch of behaviour) lose
        their PoGQ history and peer record before those score them (see :meth:`PoGQSignal.forget`
        and :meth:`PeerSignal.forget`)."""
        eng = self._engine
        results: dict[str, SignalResult] = {}
        tcdm = eng.signals.get("tcdm")
        if tcdm is not None:
            results["tcdm"] = tcdm(updates, ctx)
            records = [s for s in eng.signals.values() if hasattr(s, "forget")]
            records += eng.validator_signals
            if self.restart_on_switch and records:
                switched = self._switches(results)
                assert switched is not None
                gone = [c for c, s in zip(ids, switched.tolist(), strict=True) if s]
                for sig in records:
                    sig.forget(gone)
        for name, sig in eng.signals.items():
            if name not in results:
                results[name] = sig(updates, ctx)
        return results

    def _switches(self, results: dict[str, SignalResult]) -> torch.Tensor | None:
        """``(n,)`` bool: the clients whose temporal consistency fails this round (:math:`z_i >
        z_0`, their update turned away from their own history; ``None`` without TCDM)."""
        tcdm = self._engine.signals.get("tcdm")
        if tcdm is None or "tcdm" not in results:
            return None
        switched: torch.Tensor = results["tcdm"].raw["consistency_z"] > tcdm.temporal.z0
        return switched

    def _switch_flags(
        self, results: dict[str, SignalResult]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The switches the hold counts — :meth:`_switches`, and the reversals: consistency below
        ``switch_reversal`` with a history — and, of them, those that failed outright: temporal
        score at most ``attack_signature``, or a reversal (every switch without a signature)."""
        switched = self._switches(results)
        if switched is None:
            return None, None
        raw = results["tcdm"].raw
        reversed_ = torch.zeros_like(switched)
        if self.switch_reversal is not None:
            reversed_ = (raw["consistency"] < self.switch_reversal) & (raw["has_history"] > 0)
            switched = switched | reversed_
        if self.attack_signature is None:
            return switched, None
        failed: torch.Tensor = (raw["temporal"] <= self.attack_signature) | reversed_
        return switched, failed

    def _validator_reports(
        self,
        updates: torch.Tensor,
        ctx: RoundContext,
        shared: dict[str, SignalResult],
        weights: dict[str, float],
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        r"""``(V, n)`` honest composite reports (before any lie) and, when each validator runs its
        own PoGQ, the ``(V, n)`` PoGQ scores and the ``(V, n)`` clients whose PoGQ failure each
        validator exempts from the ``oracle_quorum`` (:func:`_exempt`), also before any lie."""
        eng = self._engine
        if not eng.validator_signals:
            report = combine(shared, weights)
            return report.unsqueeze(0).expand(self.validators, -1).clone(), None, None
        if ctx.validation is None:
            raise ConfigError("matl mode 1 needs ctx.validation (the validators' trusted data)")
        x, y = ctx.validation
        if len(y) < self.validators:
            raise ConfigError(
                f"matl: {self.validators} validators need at least as many validation samples, "
                f"got {len(y)}"
            )
        reports, primaries, exempt = [], [], []
        for v, sig in enumerate(eng.validator_signals):
            shard = dataclasses.replace(
                ctx, validation=(x[v :: self.validators], y[v :: self.validators])
            )
            res = sig(updates, shard)
            primaries.append(res.scores.to(torch.float64))
            reports.append(combine({**shared, "pogq": res}, weights))
            exempt.append(_exempt(res))
        return torch.stack(reports), torch.stack(primaries), torch.stack(exempt)

    def _verdicts(
        self,
        ids: list[int],
        composite: torch.Tensor,
        decision: ThresholdDecision,
        evidence: dict[str, tuple[torch.Tensor, float]],
        committee: CommitteeDecision | None,
        cartel: CartelReport | None,
        rep: ReputationUpdate,
        flagged: torch.Tensor,
        oracle: ThresholdDecision | None = None,
        signals: dict[str, SignalResult | torch.Tensor] | None = None,
        results: dict[str, SignalResult] | None = None,
    ) -> VerdictTable:
        """Verdicts with the composite's reasons plus ``oracle`` (PoGQ against its own cut, when
        the oracle verdict applies), ``committee`` (support against the quorum), ``cartel``
        (cartel size against ``cartel_min_size``) and ``quarantine`` (recent violations against
        ``max_violations``), and ``blemish`` (peer comparison's running direction against
        ``-blemish``, when the peer signal keeps a record with a blemish)."""
        extra: list[ReasonColumn] = []
        if oracle is not None and signals is not None:
            value = signals["pogq"]
            scores = value.scores if isinstance(value, SignalResult) else value
            extra.append(ReasonColumn.of("oracle", scores, oracle.threshold, ~oracle.flagged))
        blemished = _raw_flag(results, "peer", "blemished") if results is not None else None
        if blemished is not None and results is not None:
            level = self._engine.signals["peer"].blemish
            running = results["peer"].raw["running_direction"]
            extra.append(ReasonColumn.of("blemish", running, -level, ~blemished))
        if committee is not None:
            extra.append(
                ReasonColumn.of("committee", committee.support, self.quorum, committee.trusted)
            )
        if cartel is not None:
            extra.append(
                ReasonColumn.of("cartel", cartel.size, self.cartel_min_size, ~cartel.member)
            )
        extra.append(
            ReasonColumn.of(
                "quarantine", rep.recent_violations, self.max_violations, ~rep.quarantined
            )
        )
        if self.switch_hold is not None:
            extra.append(ReasonColumn.of("switch", rep.switch_streak, self.switch_hold, ~rep.held))
        return verdicts(ids, composite, decision, evidence, extra, (~flagged).tolist())

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Every stateful part: ``signals`` (by name), ``validator_signals`` (per validator),
        ``reputation``, ``cartel``, ``committee``."""
        eng = self._engine
        return {
            "signals": {name: _state(sig) for name, sig in eng.signals.items()},
            "validator_signals": [_state(sig) for sig in eng.validator_signals],
            "reputation": eng.reputation.state_dict(),
            "cartel": eng.cartel.state_dict() if eng.cartel is not None else {},
            "committee": eng.committee.state_dict() if eng.committee is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the configuration must match)."""
        eng = self._engine
        unknown = set(state) - {"signals", "validator_signals", "reputation", "cartel", "committee"}
        if unknown:
            raise ValueError(f"matl state has unknown keys {sorted(unknown)}")
        signals = state.get("signals", {})
        if set(signals) != set(eng.signals):
            raise ValueError(
                f"matl state has signals {sorted(signals)}, this rule computes {sorted(eng.signals)}"
            )
        validator_states = state.get("validator_signals", [])
        if len(validator_states) != len(eng.validator_signals):
            raise ValueError(
                f"matl state has {len(validator_states)} validator signals, expected "
                f"{len(eng.validator_signals)}"
            )
        for name, sig in eng.signals.items():
            _load(sig, signals[name])
        for sig, st in zip(eng.validator_signals, validator_states, strict=True):
            _load(sig, st)
        eng.reputation.load_state_dict(state.get("reputation", {}))
        if eng.cartel is not None:
            eng.cartel.load_state_dict(state.get("cartel", {}))
        if eng.committee is not None and state.get("committee"):
            eng.committee.load_state_dict(state["committee"])

    def held(self, client_ids: Sequence[int]) -> list[int]:
        """The clients among ``client_ids`` that are held (see ``switch_hold``)."""
        flags = self._engine.reputation.held(client_ids)
        return [c for c, h in zip(client_ids, flags.tolist(), strict=True) if h]

    def release(self, client_ids: Sequence[int]) -> None:
        """Release held or quarantined clients by hand (an operator's decision; see
        :meth:`~matl.trust.reputation.ReputationBook.release`); unknown ids are ignored."""
        self._engine.reputation.release(client_ids)

    def reset(self) -> None:
        """Forget all state: signals, reputations, cartel counts, validator reputations."""
        eng = self._engine
        for sig in [*eng.signals.values(), *eng.validator_signals]:
            if hasattr(sig, "reset"):
                sig.reset()
        eng.reputation.reset()
        if eng.cartel is not None:
            eng.cartel.reset()
        if eng.committee is not None:
            eng.committee.reset()
        eng.rounds = 0


def _raw_flag(results: dict[str, SignalResult], signal: str, key: str) -> torch.Tensor | None:
    """``results[signal].raw[key]`` as an ``(n,)`` bool, or ``None`` when it is not there."""
    res = results.get(signal)
    if res is None or key not in res.raw:
        return None
    return res.raw[key] > 0


def _exempt(pogq: SignalResult) -> torch.Tensor:
    r"""``(n,)`` bool: the clients exempt from the ``oracle_quorum`` — one of them failing PoGQ
    makes PoGQ carry the attack signature for the whole round, whatever the count: a norm ratio
    beyond PoGQ's norm guard (:math:`\gamma(\rho_i) < 1`; the aggregate does not bound norms, so
    such an update must not pass on the count) or a blemish (it pointed against the validated
    consensus before it was ever credited, as a sign flipper does from its first round)."""
    raw = pogq.raw
    exempt: torch.Tensor = raw["guard"] < 1
    if "blemished" in raw:
        exempt = exempt | (raw["blemished"] > 0)
    return exempt


def _state(sig: Any) -> dict[str, Any]:
    return dict(sig.state_dict()) if hasattr(sig, "state_dict") else {}


def _load(sig: Any, state: dict[str, Any]) -> None:
    if hasattr(sig, "load_state_dict"):
        sig.load_state_dict(state)
    elif state:
        raise ValueError(f"signal {type(sig).__name__} is stateless but got state {sorted(state)}")
