"""The `matl` command line, invoked in-process through Typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from matl.cli import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_run_without_config_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "run",
            "--set",
            "dataset=synthetic",
            "--set",
            "rounds=3",
            "--set",
            "clients=5",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3
    assert summary["config"]["clients"] == 5
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert len(json.loads((out / "history.json").read_text())["rounds"]) == 3
    assert (out / "history.csv").read_text().startswith("round,accuracy,loss")


def test_run_with_example_config_and_nested_override(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "run",
            str(EXAMPLES / "quick.toml"),
            "--set",
            "rounds=2",
            "--set",
            "attack_params.scale=2.0",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "summary.json").read_text())["config"]
    assert config["attack_params"] == {"scale": 2.0}
    assert config["defense"] == "median"


def test_unknown_key_and_bad_value_are_rejected(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--set", "roundz=3", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown config key 'roundz'" in result.output
    assert "valid keys: dataset" in result.output
    result = runner.invoke(app, ["run", "--set", "defense=magic", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown defense 'magic'" in result.output
    assert not (tmp_path / "summary.json").exists()


def test_rules_and_attacks_listings() -> None:
    result = runner.invoke(app, ["rules"])
    assert result.exit_code == 0
    assert "krum" in result.output
    assert "2f + 3" in result.output
    result = runner.invoke(app, ["attacks"])
    assert result.exit_code == 0
    assert "sign_flip" in result.output
    assert "omniscient" in result.output


def test_bench_sim_writes_tables(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["bench", "sim", "--clients", "4", "--repeats", "1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "bench_sim.csv").read_text().splitlines()
    assert rows[0].startswith("clients,batched_s")
    assert len(rows) == 2
    assert "matmul peak" in (tmp_path / "bench_sim.md").read_text()


def test_bench_aggregation_ratios(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "aggregation",
            "--shape",
            "12,50",
            "--rule",
            "median",
            "--rule",
            "krum",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "bench_aggregation.csv").read_text().splitlines()
    assert rows[0] == "rule,n,d,seconds,ratio_to_mean,note"
    assert [r.split(",")[0] for r in rows[1:]] == ["mean", "pairwise_distances", "median", "krum"]
    assert float(rows[1].split(",")[4]) == 1.0
    bad = runner.invoke(app, ["bench", "aggregation", "--shape", "12x50"])
    assert bad.exit_code == 2
    assert "--shape expects n,d" in bad.output


def test_table_pivots_matrix_results(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text(
        "attack,defense,seed,final_accuracy\n"
        "sign_flip,fedavg,0,0.2\nsign_flip,fedavg,1,0.4\nsign_flip,median,0,0.9\n"
        "none,fedavg,0,0.95\n"
    )
    result = runner.invoke(app, ["table", str(tmp_path), "--index", "attack"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "| attack | fedavg | median |"
    assert lines[2].startswith("| sign_flip | 0.300 ± 1.271 | 0.900 |")
    assert lines[3] == "| none | 0.950 | – |"
    bad = runner.invoke(app, ["table", str(tmp_path), "--index", "attack", "--value", "nope"])
    assert bad.exit_code == 2
    assert "unknown column(s) nope" in bad.output


def test_bench_rounds_table(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "rounds",
            "--clients",
            "6",
            "--rounds",
            "2",
            "--target",
            "0.5",
            "--set",
            "dataset=synthetic",
            "--set",
            "model=logreg",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "bench_rounds.csv").read_text().splitlines()
    assert rows[0].startswith("defense,clients,round_s,ratio_to_fedavg,detection_latency_s")
    assert [r.split(",")[0] for r in rows[1:]] == ["fedavg", "matl mode 0", "matl mode 1"]
    assert float(rows[1].split(",")[3]) == 1.0
    assert float(rows[2].split(",")[-1]) > 0  # MATL keeps per-client state


def test_matrix_records_precondition_cells_and_reports_them(tmp_path: Path) -> None:
    spec = tmp_path / "m.toml"
    spec.write_text(
        "[fixed]\n"
        'dataset = "synthetic"\n'
        "dataset_options = { samples = 300, test_samples = 100, dim = 6, classes = 3 }\n"
        'model = "logreg"\nclients = 6\nrounds = 2\nlocal_steps = 2\n'
        'attack = "sign_flip"\nbyzantine_fraction = 0.34\n'
        "[axes]\n"
        'defense = ["bulyan", "median"]\n'
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["matrix", str(spec), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "2 runs in" in result.output  # the precondition cell did not stop the matrix
    statuses = {json.loads(line)["status"] for line in (out / "results.jsonl").open()}
    assert statuses == {"ok", "precondition"}
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
