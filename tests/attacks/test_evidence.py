"""Evidence that every model-poisoning attack hurts an undefended (FedAvg) federation.

Each registered model attack runs on the quick synthetic task (10 clients, 6 rounds, 30 %
Byzantine, FedAvg) and must end at least :data:`MARGIN` accuracy below the attack-free run with the
same setup. Every attack needs an entry in :data:`CASES`, so a new one cannot skip this check.

Most attacks run in the default IID setup with their default parameters. Where an attack is by
design (near-)harmless there, the case picks the setting its paper documents as the damaging one,
and says why in ``why``. Two attacks are not about damage and are checked separately:
``nan_inf`` (the pipeline must reject it) and ``free_rider`` (it takes the model without
training; ``tests/attacks/test_free_rider.py`` checks what it sends and that MATL's entropy signal
sees it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from matl.attacks import ATTACKS, ModelAttack
from matl.data import Dataset, load_dataset
from matl.sim import History, Simulation, SimulationConfig

DATA_OPTIONS = {"samples": 3000, "test_samples": 500, "dim": 16, "classes": 4}
BASE: dict[str, Any] = {
    "dataset": "synthetic",
    "dataset_options": DATA_OPTIONS,
    "model": "mlp",
    "hidden": 16,
    "clients": 10,
    "rounds": 6,
    "local_steps": 5,
    "lr": 0.1,
    "partition": "iid",
    "defense": "fedavg",
}
#: Minimum drop of final test accuracy (absolute) an attack must cause. The clean run reaches
#: about 0.92 (IID); the weakest case below (ALIE) costs about 0.10, so the margin has 2x headroom.
MARGIN = 0.05
#: Label-skewed data (2 label-sorted shards per client): the honest updates disagree, which is the
#: room attacks that hide inside the honest spread need.
LABEL_SKEW: dict[str, Any] = {"partition": "shards", "shards_per_client": 2}


@dataclass(frozen=True)
class Case:
    params: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    why: str = "default parameters, IID"


CASES: dict[str, Case] = {
    "sign_flip": Case(),
    "collusion": Case(),
    "adaptive": Case(why="the simulator hands it the real defense (FedAvg) to search against"),
    "gaussian": Case(
        params={"mode": "pure"},
        why="additive noise at the honest spread (the default) is by design indistinguishable "
        "from honest variation; Blanchard et al.'s pure N(0, I) worker is the damaging setting",
    ),
    "scaling": Case(
        params={"factor": 100.0},
        why="boosting an honest update only overshoots: k=10 (3 attackers: a 3.7x step) is still "
        "stable on this task, k=100 diverges",
    ),
    "ipm": Case(
        params={"epsilon": 100.0},
        why="Xie et al.'s large-epsilon regime targets averaging; epsilon=0.1 targets "
        "Krum/median and barely moves a mean",
    ),
    "alie": Case(
        overrides=LABEL_SKEW,
        why="ALIE shifts by z_max=0.52 honest standard deviations; IID honest updates barely "
        "differ, so the shift only bites with heterogeneous clients",
    ),
    "min_max": Case(overrides=LABEL_SKEW, why="bounded by the honest spread, as ALIE"),
    "min_sum": Case(overrides=LABEL_SKEW, why="bounded by the honest spread, as ALIE"),
    "mimic": Case(
        overrides={"partition": "shards", "shards_per_client": 1},
        why="copying an honest client is harmless with IID data; with one label per client it "
        "over-weights one client's label (Karimireddy et al.'s heterogeneous setting)",
    ),
    "sleeper": Case(
        params={"honest_rounds": 2, "inner_params": {"scale": 2.0}},
        why="strikes after 2 of the 6 rounds, with sign flipping x2 so 4 rounds suffice",
    ),
}

#: Model attacks whose point is not damage (see the module docstring).
NOT_DAMAGE = {"nan_inf", "free_rider"}

MODEL_ATTACKS = sorted(
    name
    for name in ATTACKS.names()
    if isinstance(ATTACKS.factory(name), type) and issubclass(ATTACKS.factory(name), ModelAttack)
)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_dataset("synthetic", **DATA_OPTIONS)


@pytest.fixture(scope="module")
def clean_runs() -> dict[str, History]:
    """Attack-free histories, keyed by the overrides (computed once per setup)."""
    return {}


def _run(data: Dataset, **config: Any) -> tuple[Simulation, History]:
    sim = Simulation(SimulationConfig.from_dict({**BASE, **config}), dataset=data)
    return sim, sim.run()


def _clean(data: Dataset, cache: dict[str, History], overrides: dict[str, Any]) -> History:
    key = repr(sorted(overrides.items()))
    if key not in cache:
        cache[key] = _run(data, **overrides)[1]
    return cache[key]


def test_every_model_attack_has_a_case() -> None:
    missing = sorted(set(MODEL_ATTACKS) - set(CASES) - NOT_DAMAGE)
    assert not missing, f"add evidence cases for {missing} in {__file__}"


@pytest.mark.parametrize("name", [n for n in MODEL_ATTACKS if n not in NOT_DAMAGE])
def test_attack_hurts_fedavg(name: str, data: Dataset, clean_runs: dict[str, History]) -> None:
    case = CASES.get(name)
    if case is None:
        pytest.fail(f"attack {name!r} has no evidence case in {__file__}")
    clean = _clean(data, clean_runs, case.overrides)
    _, attacked = _run(
        data,
        byzantine_fraction=0.3,
        attack=name,
        attack_params=case.params,
        **case.overrides,
    )
    acc_clean, acc_attacked = clean.rounds[-1].accuracy, attacked.rounds[-1].accuracy
    assert acc_clean is not None and acc_attacked is not None
    assert acc_clean > 0.8, f"the clean baseline ({case.overrides}) should learn"
    assert acc_attacked < acc_clean - MARGIN, (
        f"{name} ({case.why}): accuracy {acc_attacked:.3f} vs clean {acc_clean:.3f}"
    )
    if name == "sleeper":  # honest while asleep: the first rounds match the clean run exactly
        honest_rounds = case.params["honest_rounds"]
        assert [r.accuracy for r in attacked.rounds[:honest_rounds]] == [
            r.accuracy for r in clean.rounds[:honest_rounds]
        ]
        assert attacked.rounds[honest_rounds].accuracy != clean.rounds[honest_rounds].accuracy


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_inf_is_rejected_every_round(
    value: str, data: Dataset, clean_runs: dict[str, History]
) -> None:
    sim, history = _run(
        data, byzantine_fraction=0.3, attack="nan_inf", attack_params={"value": value}
    )
    assert torch.isfinite(sim.final_params).all()
    for record in history.rounds:
        assert record.byzantine and sorted(record.rejected) == sorted(record.byzantine)
        assert set(record.rejected) <= set(record.flagged)
        weights = dict(zip(record.sampled, record.weights, strict=True))
        assert all(weights[c] == 0 for c in record.rejected)
        assert sum(record.weights) == pytest.approx(1.0)
    clean = _clean(data, clean_runs, {})
    final, reference = history.rounds[-1].accuracy, clean.rounds[-1].accuracy
    assert final is not None and reference is not None
    assert final > reference - MARGIN  # the 7 honest clients still train the model
