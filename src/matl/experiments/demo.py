"""The main job (``make demo``): FedAvg, median, Krum and MATL (Modes 0 and 1) on real MNIST under
sign flipping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matl.data import load_dataset
from matl.errors import ConfigError
from matl.sim import History, RoundRecord, Simulation, SimulationConfig

#: Real MNIST, 50 clients, Dirichlet α = 0.5, 20 rounds, 20 % sign-flipping clients; the trusted
#: data (MATL Mode 1's validation set) is 1 000 training samples, as in the trust benchmark.
DEMO_CONFIG: dict[str, Any] = {
    "dataset": "mnist",
    "model": "mlp",
    "partition": "dirichlet",
    "alpha": 0.5,
    "clients": 50,
    "rounds": 20,
    "local_steps": 10,
    "batch_size": 32,
    "lr": 0.05,
    "momentum": 0.9,
    "byzantine_fraction": 0.2,
    "attack": "sign_flip",
    "attack_params": {"scale": 4.0},
    "seed": 0,
    "root_samples": 1000,
}
#: The rules compared, by display name: the configuration keys each one sets.
DEMO_RULES: dict[str, dict[str, Any]] = {
    "fedavg": {"defense": "fedavg"},
    "median": {"defense": "median"},
    "krum": {"defense": "krum"},
    "matl-mode0": {"defense": "matl", "defense_params": {"mode": 0}},
    "matl-mode1": {"defense": "matl", "defense_params": {"mode": 1}},
}
DEMO_DEFENSES = tuple(DEMO_RULES)


def run_demo(
    out_dir: str | Path,
    *,
    defenses: tuple[str, ...] = DEMO_DEFENSES,
    overrides: dict[str, Any] | None = None,
    on_round: Callable[[str, RoundRecord], None] | None = None,
) -> dict[str, History]:
    """Run the demo for each defense of :data:`DEMO_RULES` named in ``defenses`` (sharing one
    loaded dataset); write each history under ``out_dir/<defense>/`` and return them."""
    unknown = [d for d in defenses if d not in DEMO_RULES]
    if unknown:
        raise ConfigError(f"demo: unknown defense(s) {unknown}; valid: {', '.join(DEMO_RULES)}")
    base = {**DEMO_CONFIG, **(overrides or {})}
    configs = {d: SimulationConfig.from_dict({**base, **DEMO_RULES[d]}) for d in defenses}
    first = next(iter(configs.values()))
    data = load_dataset(first.dataset, data_dir=first.data_dir, **first.dataset_options)
    out: dict[str, History] = {}
    for name, cfg in configs.items():
        callback = (lambda rec, n=name: on_round(n, rec)) if on_round else None
        history = Simulation(cfg, dataset=data).run(callback)
        history.write(Path(out_dir) / name)
        out[name] = history
    return out
