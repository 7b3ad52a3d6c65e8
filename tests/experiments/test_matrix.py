"""The matrix runner: expansion, validation, results, and resuming after a real kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from matl.errors import ConfigError
from matl.experiments.matrix import expand, load_matrix, parse_matrix, run_matrix

FIXED = {
    "dataset": "synthetic",
    "dataset_options": {"samples": 600, "test_samples": 200, "dim": 8, "classes": 3},
    "model": "logreg",
    "clients": 6,
    "rounds": 2,
    "local_steps": 2,
}


def _spec(**axes):
    return parse_matrix({"fixed": FIXED, "axes": axes})


def test_expand_crosses_axes_and_dedupes() -> None:
    spec = parse_matrix(
        {
            "fixed": FIXED,
            "axes": {"attack": ["none", "sign_flip"], "seed": [0, 1], "attack_params.scale": [2.0]},
            "exclude": [{"attack": "none"}],
            "include": [{"attack": "none", "seed": 0}, {"attack": "none", "seed": 0}],
        }
    )
    cells = expand(spec)
    assert len(cells) == 3
    assert {c.config["attack"] for c in cells} == {"none", "sign_flip"}
    assert all(
        c.config["attack_params"] == {"scale": 2.0} for c in cells if c.config["attack"] != "none"
    )
    assert len({c.key for c in cells}) == 3


def test_bad_matrices_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown matrix section"):
        parse_matrix({"fixd": {}})
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_matrix({"axes": {"seed": 3}})
    with pytest.raises(ConfigError, match=r"(?s)matrix cell .*unknown config key 'rondos'"):
        expand(_spec(rondos=[1]))
    with pytest.raises(ConfigError, match="does not exist"):
        load_matrix("no-such-file.toml")


def test_results_have_config_columns_and_metrics(tmp_path: Path) -> None:
    store = run_matrix(
        _spec(attack=["none", "sign_flip"], defense=["fedavg", "median"]), tmp_path, workers=1
    )
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == len(store.rows) == 4
    assert {
        "key",
        "dataset_options.dim",
        "attack",
        "defense",
        "final_accuracy",
        "detection_rate",
        "seconds_per_round",
    } <= set(rows[0])
    assert all((tmp_path / "runs" / r["key"] / "history.json").is_file() for r in rows)
    again = run_matrix(
        _spec(attack=["none", "sign_flip"], defense=["fedavg", "median"]), tmp_path, workers=1
    )
    assert len(again.rows) == 4  # nothing re-run


def test_bundles_and_grids_add_their_own_cells() -> None:
    spec = parse_matrix(
        {
            "fixed": FIXED,
            "axes": {
                "attack": ["sign_flip"],
                "defense": ["median", {"defense": "matl", "defense_params.mode": 0}],
            },
            "grid": [{"attack": ["none"], "byzantine_fraction": [0.0], "defense": ["fedavg"]}],
        }
    )
    cells = expand(spec)
    got = {
        (c.config["attack"], c.config["defense"], str(c.config["defense_params"])) for c in cells
    }
    assert got == {
        ("sign_flip", "median", "{}"),
        ("sign_flip", "matl", "{'mode': 0}"),
        ("none", "fedavg", "{}"),
    }
    with pytest.raises(ConfigError, match=r"\[\[grid\]\]"):
        parse_matrix({"grid": {"seed": [0]}})


def test_precondition_failures_are_recorded_not_fatal(tmp_path: Path) -> None:
    # bulyan needs n >= 4f + 3: 6 clients with 2 Byzantine (f = 2) cannot run it.
    spec = _spec(defense=["bulyan", "median"], byzantine_fraction=[0.34], attack=["sign_flip"])
    store = run_matrix(spec, tmp_path, workers=1)
    by_defense = {r["config"]["defense"]: r for r in store.rows}
    assert by_defense["bulyan"]["status"] == "precondition"
    assert "4f + 3" in by_defense["bulyan"]["error"] or "bulyan" in by_defense["bulyan"]["error"]
    assert by_defense["median"]["status"] == "ok"
    assert by_defense["median"]["metrics"]["peak_rss_mb"] > 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {r["status"] for r in rows} == {"ok", "precondition"}
    assert not (tmp_path / "runs" / by_defense["bulyan"]["key"]).exists()


def test_results_are_also_written_as_parquet(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is the optional parquet extra")
    run_matrix(_spec(defense=["fedavg", "median"]), tmp_path, workers=1)
    table = pq.read_table(tmp_path / "results.parquet")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert table.num_rows == len(rows) == 2
    assert set(table.column_names) == set(rows[0])
    assert str(table.schema.field("final_accuracy").type) == "double"
    assert sorted(table.column("defense").to_pylist()) == ["fedavg", "median"]


def test_paper_preset_covers_the_plan() -> None:
    cells = expand(load_matrix("paper"))
    configs = [c.config for c in cells]
    defenses = {(c["defense"], c["defense_params"].get("mode")) for c in configs}
    assert len(defenses) == 12  # ten baselines plus MATL Mode 0 and Mode 1
    assert {c["byzantine_fraction"] for c in configs} == {0.0, 0.2, 0.33, 0.4, 0.45, 0.5}
    assert {c["defense_params"].get("mode") for c in configs if c["byzantine_fraction"] == 0.5} == {
        1
    }
    assert {c["seed"] for c in configs} == {0, 1, 2}
    assert len({c["attack"] for c in configs}) == 15  # every attack plus "none"
    assert all(c["dataset"] == "mnist" for c in configs)


def test_parallel_workers(tmp_path: Path) -> None:
    store = run_matrix(_spec(seed=[0, 1, 2]), tmp_path, workers=2)
    assert sorted(r["config"]["seed"] for r in store.rows) == [0, 1, 2]


def test_quick_preset_expands() -> None:
    cells = expand(load_matrix("quick"))
    assert len(cells) >= 20


def _calibration_configs(name: str) -> list[Any]:
    """The validated configs of ``examples/<name>`` (every configuration builds its rule), each
    checked to be off the benchmark's seeds 0-2."""
    from matl.sim import SimulationConfig

    path = Path(__file__).resolve().parents[2] / "examples" / name
    configs = [SimulationConfig.model_validate(c.config) for c in expand(load_matrix(path))]
    assert all(cfg.seed >= 10 for cfg in configs)
    return configs


def test_trust_calibration_example_uses_only_calibration_seeds() -> None:
    """``examples/trust_calibration.toml``: 226 valid runs, none on the benchmark's seeds 0-2,
    with the tolerance and blemish settings of docs/trust.md."""
    configs = _calibration_configs("trust_calibration.toml")
    assert len(configs) == 226
    settings = set()
    for cfg in configs:
        pogq = cfg.defense_params["signal_params"]["pogq"]
        settings.add((pogq["consensus_tolerance"], pogq["consensus_blemish"]))
    assert settings == {(0.4, 1e9), (0.3, 1e9), (0.2, 1e9), (0.1, 1e9), (0.1, 0.5)}


def test_mode0_calibration_example_uses_only_calibration_seeds() -> None:
    """``examples/trust_calibration_mode0.toml``: 232 valid runs, none on the benchmark's seeds
    0-2, with the three arms of docs/trust.md's "Mode 0: a record of direction"."""
    configs = _calibration_configs("trust_calibration_mode0.toml")
    assert len(configs) == 232
    arms = {
        str(cfg.defense_params.get("signal_params", {}).get("peer"))
        for cfg in configs
        if cfg.defense == "matl"
    }
    assert arms == {"{'record': False}", "{'uncredited_shift': 0.0}", "None"}


def test_stop26_calibration_example_stays_off_the_held_out_seeds() -> None:
    """``examples/trust_calibration_stop26.toml``: 344 valid runs in two arms (the innovation
    test's quorum window 3 and the default), on none of the benchmark's seeds 0-2 and none of the
    held-out attack-free seeds the ``trust`` preset reports apart."""
    configs = _calibration_configs("trust_calibration_stop26.toml")
    assert len(configs) == 344
    arms = {str(cfg.defense_params.get("signal_params")) for cfg in configs}
    assert arms == {"{'tcdm': {'innovation': {'quorum_window': 3}}}", "None"}
    held_out = {
        c.config["seed"]
        for c in expand(load_matrix("trust"))
        if c.config["attack"] == "none" and c.config["seed"] > 2
    }
    assert held_out == set(range(100, 140))
    examples = Path(__file__).resolve().parents[2] / "examples"
    for path in examples.glob("trust_calibration*.toml"):
        seeds = {c.config["seed"] for c in expand(load_matrix(path))}
        assert not seeds & held_out, path.name


def test_stop27_calibration_examples_have_their_arms() -> None:
    """``examples/trust_calibration_stop27.toml`` (248 runs: without PoGQ's crowd quorum and with
    it at 0.08) and ``trust_calibration_stop27_innovation.toml`` (312 runs: the innovation test's
    early quorum at the default and at 0.12), off the benchmark's seeds (the held-out ones are
    checked for every calibration example above)."""
    configs = _calibration_configs("trust_calibration_stop27.toml")
    assert len(configs) == 248
    assert {cfg.defense_params.get("oracle_quorum") for cfg in configs} == {None, 0.08}
    configs = _calibration_configs("trust_calibration_stop27_innovation.toml")
    assert len(configs) == 312
    arms = {str(cfg.defense_params.get("signal_params")) for cfg in configs}
    assert arms == {"{'tcdm': {'innovation': {'early_quorum': 0.12}}}", "None"}


def test_stop28_calibration_examples_have_their_arms() -> None:
    """``examples/trust_calibration_stop28.toml`` (640 runs: stop 27's innovation test and three
    arms with the previous deviation rescaled to the round, each counting the quorum as stop 27
    did) and ``trust_calibration_stop28_quorum.toml`` (528 runs: the default, whose quorum counts
    against the round's scale, the same at a level of T, and stop 27's count), off the
    benchmark's seeds (the held-out ones are checked for every calibration example above)."""
    configs = _calibration_configs("trust_calibration_stop28.toml")
    assert len(configs) == 640
    arms = {str(cfg.defense_params.get("signal_params")) for cfg in configs}
    old = "{'tcdm': {'innovation': {'quorum_rescaled': False%s}}}"
    rescaled = ", 'rescale': True%s, 'early_margin': %s"
    assert arms == {
        old % "",
        old % (rescaled % (", 'rescale_reference': True", "0.0")),
        old % (rescaled % ("", "0.0")),
        old % (rescaled % ("", "-0.1")),
    }
    configs = _calibration_configs("trust_calibration_stop28_quorum.toml")
    assert len(configs) == 528
    arms = {str(cfg.defense_params.get("signal_params")) for cfg in configs}
    level = "{'tcdm': {'innovation': {'quorum_level': 1.0}}}"
    assert arms == {"None", old % "", level}


@pytest.mark.parametrize(
    ("name", "seeds"),
    [
        ("trust_fresh_seeds_stop27.toml", range(60, 100)),
        ("trust_fresh_seeds_stop28.toml", range(140, 180)),
    ],
)
def test_fresh_seeds_examples_are_off_every_other_seed(name: str, seeds: range) -> None:
    """``examples/trust_fresh_seeds_stop27.toml`` and ``…_stop28.toml``: 80 attack-free runs
    (Modes 0 and 1) each, on seeds 60-99 and 140-179, which no calibration example, no benchmark
    run and no other fresh-seed example uses."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    cells = expand(load_matrix(examples / name))
    assert len(cells) == 80
    fresh = {c.config["seed"] for c in cells}
    assert fresh == set(seeds)
    assert {c.config["attack"] for c in cells} == {"none"}
    used = {c.config["seed"] for c in expand(load_matrix("trust"))}
    others = [*examples.glob("trust_calibration*.toml"), *examples.glob("trust_fresh_seeds*.toml")]
    for path in others:
        if path.name != name:
            used |= {c.config["seed"] for c in expand(load_matrix(path))}
    assert not fresh & used


def test_committee_example_has_its_arms_and_its_committed_rows() -> None:
    """``examples/trust_committee.toml``: 216 valid runs (eight attacks at 45 % and attack-free, on
    the benchmark's seeds, with 200 or 1000 validation samples per validator) for four committees
    of five validators, every one of which builds its rule."""
    from matl.aggregation import get_rule
    from matl.sim import SimulationConfig

    root = Path(__file__).resolve().parents[2]
    cells = expand(load_matrix(root / "examples" / "trust_committee.toml"))
    assert len(cells) == 216
    arms = set()
    for cell in cells:
        cfg = SimulationConfig.model_validate(cell.config)
        rule = get_rule("matl", **cfg.defense_params)
        assert rule.validators == 5 and rule.mode == 1
        arms.add((rule.lying_validators, rule.lie))
        assert cfg.seed in (0, 1, 2) and cfg.root_samples in (1000, 5000)
        assert (cfg.attack == "none") == (cfg.byzantine_fraction == 0.0)
    assert arms == {(0, "invert"), (1, "invert"), (1, "random"), (2, "invert")}


@pytest.mark.parametrize(
    ("example", "rows_file", "count"),
    [
        ("trust_committee.toml", "committee.csv", 216),
        ("trust_free_riders.toml", "free_riders.csv", 60),
        ("trust_many_clients.toml", "many_clients.csv", 10),
        ("trust_fresh_seeds_stop27.toml", "fresh_seeds_stop27.csv", 80),
        ("trust_fresh_seeds_stop28.toml", "fresh_seeds_stop28.csv", 80),
    ],
)
def test_committed_rows_are_the_examples_runs(example: str, rows_file: str, count: int) -> None:
    """``docs/results/trust/<rows_file>`` holds one finished row for each run of
    ``examples/<example>`` and no other."""
    root = Path(__file__).resolve().parents[2]
    cells = expand(load_matrix(root / "examples" / example))
    assert len(cells) == count
    with (root / "docs" / "results" / "trust" / rows_file).open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["key"] for r in rows) == sorted(c.key for c in cells)
    assert all(r["status"] == "ok" for r in rows)


def test_resume_after_kill_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    matrix = tmp_path / "m.toml"
    seeds = list(range(8))
    matrix.write_text(
        "[fixed]\n"
        'dataset = "synthetic"\nmodel = "mlp"\nhidden = 64\nclients = 10\nrounds = 6\n'
        "dataset_options = { samples = 3000, test_samples = 500, dim = 64, classes = 5 }\n"
        f"[axes]\nseed = {seeds}\n"
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "matl", "matrix", str(matrix), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = [json.loads(line)["key"] for line in jsonl.read_text().splitlines() if line.strip()]
    assert 2 <= len(partial) < len(seeds), "kill the run mid-way"
    with jsonl.open("a") as fh:  # a line cut short by the kill must not poison the file
        fh.write('{"key": "trunc')
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    keys = [json.loads(line)["key"] for line in jsonl.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(seeds)
    assert set(partial) <= set(keys)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(int(r["seed"]) for r in rows) == seeds
