"""Detection and convergence metrics of one simulation run.

Detection is scored over *client-rounds*: every time a client is sampled it is one trial, positive
when the client is Byzantine. With ``F`` the set of flagged client-rounds and ``B`` the Byzantine
ones,

.. math::

    \\mathrm{TPR} = |F ∩ B| / |B|,\\qquad \\mathrm{FPR} = |F \\setminus B| / |\\bar B|,\\qquad
    \\mathrm{precision} = |F ∩ B| / |F|.

``active_detection_rate`` is the TPR over the client-rounds in which the Byzantine client actually
attacked (``RoundRecord.attacking``): a sleeper agent's honest phase is left out, since before the
switch there is nothing to detect. For every other attack it equals ``detection_rate``.

A rate whose denominator is empty is ``None`` (e.g. TPR with no Byzantine client sampled), never a
made-up 0 or 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from matl.sim.history import PHASES, History


@dataclass(frozen=True)
class RunMetrics:
    """Per-run metrics (see the module docstring for the definitions)."""

    final_accuracy: float | None
    best_accuracy: float | None
    detection_rate: float | None
    active_detection_rate: float | None
    false_positive_rate: float | None
    precision: float | None
    rounds_to_target: int | None
    final_asr: float | None
    seconds: float
    seconds_per_round: float
    train_s_per_round: float
    attack_s_per_round: float
    defense_s_per_round: float
    eval_s_per_round: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def detection_counts(history: History) -> tuple[int, int, int, int]:
    """``(true positives, false positives, Byzantine client-rounds, honest client-rounds)``."""
    tp = fp = pos = neg = 0
    for r in history.rounds:
        byz = set(r.byzantine)
        flagged = set(r.flagged)
        pos += len(byz)
        neg += len(r.sampled) - len(byz)
        tp += len(flagged & byz)
        fp += len(flagged - byz)
    return tp, fp, pos, neg


def active_detection_counts(history: History) -> tuple[int, int]:
    """``(true positives, attacking client-rounds)`` over the rounds' ``attacking`` clients (all
    Byzantine clients when a record has no ``attacking`` field)."""
    tp = pos = 0
    for r in history.rounds:
        attacking = set(r.byzantine if r.attacking is None else r.attacking)
        pos += len(attacking)
        tp += len(attacking & set(r.flagged))
    return tp, pos


def rounds_to_target(history: History, target: float) -> int | None:
    """1-based number of rounds until the test accuracy first reaches ``target`` (``None`` if never)."""
    for r in history.rounds:
        if r.accuracy is not None and r.accuracy >= target:
            return r.round + 1
    return None


def run_metrics(history: History, *, target_accuracy: float = 0.9) -> RunMetrics:
    """All per-run metrics of ``history``."""
    tp, fp, pos, neg = detection_counts(history)
    accs = [r.accuracy for r in history.rounds if r.accuracy is not None]
    asrs = [r.asr for r in history.rounds if getattr(r, "asr", None) is not None]
    n = max(1, len(history.rounds))
    phase = {p: sum(r.timing.get(p, 0.0) for r in history.rounds) / n for p in PHASES}
    return RunMetrics(
        final_accuracy=accs[-1] if accs else None,
        best_accuracy=max(accs) if accs else None,
        detection_rate=_ratio(tp, pos),
        active_detection_rate=_ratio(*active_detection_counts(history)),
        false_positive_rate=_ratio(fp, neg),
        precision=_ratio(tp, tp + fp),
        rounds_to_target=rounds_to_target(history, target_accuracy),
        final_asr=asrs[-1] if asrs else None,
        seconds=history.seconds,
        seconds_per_round=history.seconds / n,
        train_s_per_round=phase["train"],
        attack_s_per_round=phase["attack"],
        defense_s_per_round=phase["defense"],
        eval_s_per_round=phase["eval"],
    )
