"""End-to-end simulations on the synthetic task (fast) and real MNIST (slow)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from matl.attacks import AttackContext, ModelAttack
from matl.data import load_dataset
from matl.errors import PreconditionError
from matl.sim import History, Simulation, SimulationConfig

BASE = {
    "dataset": "synthetic",
    "dataset_options": {"samples": 3000, "test_samples": 500, "dim": 16, "classes": 4},
    "model": "mlp",
    "hidden": 16,
    "clients": 10,
    "rounds": 6,
    "local_steps": 5,
    "lr": 0.1,
}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", samples=3000, test_samples=500, dim=16, classes=4)


def _run(data, **overrides) -> tuple[Simulation, History]:
    sim = Simulation(SimulationConfig.from_dict({**BASE, **overrides}), dataset=data)
    return sim, sim.run()


def _without_timing(history: History) -> list[dict]:
    rounds = []
    for r in history.rounds:
        d = asdict(r)
        d.pop("timing")
        rounds.append(d)
    return rounds


def test_history_records_every_round(data) -> None:
    _, h = _run(data, byzantine_fraction=0.3, attack="sign_flip", eval_every=2, sample_fraction=0.8)
    assert len(h.rounds) == 6
    assert [r.accuracy is not None for r in h.rounds] == [False, True, False, True, False, True]
    assert len(h.byzantine_clients) == 3
    for r in h.rounds:
        assert len(r.sampled) == 8
        assert set(r.byzantine) == set(r.sampled) & set(h.byzantine_clients)
        assert sum(r.weights) == pytest.approx(1.0)
        assert set(r.timing) == {"train", "attack", "defense", "eval"}
    s = h.summary()
    assert s["final_accuracy"] == h.rounds[-1].accuracy
    assert s["best_accuracy"] == max(r.accuracy for r in h.rounds if r.accuracy is not None)


def test_learns_without_attack(data) -> None:
    _, h = _run(data)
    assert h.rounds[-1].accuracy > 0.8


def test_same_seed_is_bit_identical_and_seeds_differ(data) -> None:
    kw = {"byzantine_fraction": 0.2, "attack": "gaussian", "sample_fraction": 0.7, "momentum": 0.9}
    sim_a, a = _run(data, **kw)
    sim_b, b = _run(data, **kw)
    assert _without_timing(a) == _without_timing(b)
    assert torch.equal(sim_a.final_params, sim_b.final_params)
    _, c = _run(data, seed=1, **kw)
    assert _without_timing(a) != _without_timing(c)


def test_train_chunk_is_only_a_speed_knob(data) -> None:
    a = _run(data, train_chunk=1)[0].final_params
    b = _run(data, train_chunk=10)[0].final_params
    torch.testing.assert_close(a, b)


def test_sign_flip_hurts_fedavg_and_median_resists(data) -> None:
    attack = {"byzantine_fraction": 0.3, "attack": "sign_flip", "attack_params": {"scale": 4.0}}
    clean = _run(data)[1].rounds[-1].accuracy
    fedavg = _run(data, **attack)[1].rounds[-1].accuracy
    median = _run(data, defense="median", **attack)[1].rounds[-1].accuracy
    assert fedavg < clean - 0.2
    assert median > fedavg + 0.2


@dataclass(frozen=True, kw_only=True)
class _NaNAttack(ModelAttack):
    name: ClassVar[str] = "test_nan"

    def craft(self, honest, n_byzantine, ctx: AttackContext, rng):
        return torch.full((n_byzantine, honest.shape[1]), float("nan"), dtype=honest.dtype)


def test_non_finite_updates_are_rejected_not_averaged(data) -> None:
    sim = Simulation(
        SimulationConfig.from_dict({**BASE, "byzantine_fraction": 0.3, "attack": "sign_flip"}),
        dataset=data,
    )
    sim.attack = _NaNAttack()
    h = sim.run()
    assert torch.isfinite(sim.final_params).all()
    for r in h.rounds:
        assert sorted(r.rejected) == sorted(r.byzantine)
        assert set(r.rejected) <= set(r.flagged)
        weights = dict(zip(r.sampled, r.weights, strict=True))
        assert all(weights[c] == 0 for c in r.rejected)
    assert h.rounds[-1].accuracy > 0.8


def test_precondition_checked_before_running(data) -> None:
    with pytest.raises(PreconditionError, match=r"krum needs n >= 2f \+ 3, got n=10, f=4"):
        Simulation(
            SimulationConfig.from_dict({**BASE, "defense": "krum", "defense_f": 4}), dataset=data
        )


def test_write_outputs(data, tmp_path: Path) -> None:
    _, h = _run(data, rounds=3)
    paths = h.write(tmp_path)
    record = json.loads(paths["history_json"].read_text())
    assert len(record["rounds"]) == 3
    assert History.from_dict(record).rounds == h.rounds
    summary = json.loads(paths["summary_json"].read_text())
    assert {"final_accuracy", "best_accuracy", "rounds", "seconds", "config"} <= set(summary)
    assert summary["config"]["dataset"] == "synthetic"
    rows = list(csv.DictReader(paths["history_csv"].open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert float(rows[-1]["accuracy"]) == pytest.approx(h.rounds[-1].accuracy)


def test_local_epochs_and_logreg(data) -> None:
    _, h = _run(data, model="logreg", local_epochs=1, batch_size=64, rounds=3)
    assert h.rounds[-1].accuracy > 0.6


@pytest.mark.slow
def test_real_mnist_demo_setting_learns_and_median_beats_fedavg(tmp_path: Path) -> None:
    from matl.experiments.demo import run_demo

    histories = run_demo(tmp_path, overrides={"rounds": 10})
    assert (tmp_path / "median" / "summary.json").is_file()
    acc = {k: h.rounds[-1].accuracy for k, h in histories.items()}
    assert acc["median"] > 0.8
    assert acc["krum"] > 0.7
    assert acc["fedavg"] < acc["median"]
    assert acc["matl-mode1"] > acc["median"]  # validated trust beats the median here


def test_demo_rejects_an_unknown_defense(tmp_path: Path) -> None:
    from matl.errors import ConfigError
    from matl.experiments.demo import run_demo

    with pytest.raises(ConfigError, match="unknown defense"):
        run_demo(tmp_path, defenses=("fedavg", "nope"))


def test_rejections_lower_f_so_krum_keeps_its_precondition(data) -> None:
    sim = Simulation(
        SimulationConfig.from_dict(
            {**BASE, "byzantine_fraction": 0.3, "attack": "nan_inf", "defense": "krum"}
        ),
        dataset=data,
    )
    h = sim.run()  # 10 clients, f = 3: without the adjustment n = 7 < 2f + 3 = 9
    assert torch.isfinite(sim.final_params).all()
    assert all(sorted(r.rejected) == sorted(r.byzantine) for r in h.rounds)
    assert all(sum(w > 0 for w in r.weights) == 1 for r in h.rounds)  # Krum selected one
    assert h.rounds[-1].accuracy > 0.5
