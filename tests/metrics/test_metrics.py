"""Metrics on hand-made histories."""

from __future__ import annotations

import math

import pytest

from matl.metrics import detection_counts, mean_ci, rounds_to_target, run_metrics, t_quantile_975
from matl.sim import History, RoundRecord


def _round(i, acc, sampled, byz, flagged, asr=None) -> RoundRecord:
    return RoundRecord(
        round=i,
        accuracy=acc,
        loss=None,
        sampled=sampled,
        byzantine=byz,
        flagged=flagged,
        rejected=[],
        weights=[1 / len(sampled)] * len(sampled),
        scores=None,
        aggregate_norm=1.0,
        timing={"train": 1.0, "attack": 0.5, "defense": 0.25, "eval": 0.25},
        asr=asr,
    )


def _history() -> History:
    return History(
        config={},
        byzantine_clients=[0, 1],
        client_sizes=[1] * 5,
        seconds=6.0,
        rounds=[
            _round(0, 0.5, [0, 1, 2, 3, 4], [0, 1], [0, 2]),  # TP 1, FP 1
            _round(1, None, [0, 2, 3], [0], [0]),  # TP 1
            _round(2, 0.95, [1, 2, 3, 4], [1], [], asr=0.3),  # FN 1
        ],
    )


def test_detection_counts_and_rates() -> None:
    h = _history()
    assert detection_counts(h) == (2, 1, 4, 8)
    m = run_metrics(h, target_accuracy=0.9)
    assert m.detection_rate == 0.5
    assert m.false_positive_rate == 1 / 8
    assert m.precision == 2 / 3
    assert m.final_accuracy == 0.95
    assert m.best_accuracy == 0.95
    assert m.rounds_to_target == 3
    assert m.final_asr == 0.3
    assert m.seconds_per_round == 2.0
    assert m.train_s_per_round == 1.0


def test_undefined_rates_are_none_not_zero() -> None:
    h = History(
        config={},
        byzantine_clients=[],
        client_sizes=[1, 1],
        rounds=[_round(0, 0.8, [0, 1], [], [])],
    )
    m = run_metrics(h)
    assert m.detection_rate is None
    assert m.precision is None
    assert m.false_positive_rate == 0.0
    assert rounds_to_target(h, 0.9) is None


def test_mean_ci() -> None:
    assert mean_ci([]) is None
    assert mean_ci([None]) is None
    single = mean_ci([0.5])
    assert single is not None and single.half_width is None
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci is not None
    assert ci.mean == 2.0
    assert ci.half_width == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert t_quantile_975(1000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_active_detection_rate_leaves_out_rounds_without_attack() -> None:
    h = _history()
    # Without `attacking` (old histories) every Byzantine client-round counts.
    assert run_metrics(h).active_detection_rate == run_metrics(h).detection_rate == 0.5
    h.rounds[2].attacking = []  # the missed round was a sleeper's honest round
    h.rounds[0].attacking = [0, 1]
    h.rounds[1].attacking = [0]
    m = run_metrics(h)
    assert m.active_detection_rate == 2 / 3
    assert m.detection_rate == 0.5


def test_sleeper_simulation_records_its_honest_phase() -> None:
    from matl.sim import Simulation

    h = Simulation(
        {
            "dataset": "synthetic",
            "clients": 10,
            "rounds": 4,
            "byzantine_fraction": 0.2,
            "attack": "sleeper",
            "attack_params": {"honest_rounds": 2},
        }
    ).run()
    assert [len(r.attacking or []) for r in h.rounds] == [0, 0, 2, 2]
    assert all(len(r.byzantine) == 2 for r in h.rounds)
