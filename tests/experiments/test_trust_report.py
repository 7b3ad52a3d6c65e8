"""The trust benchmark report on hand-made result rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from matl.cli import app
from matl.experiments.trust_report import trust_report, variant


def _row(defense: str, attack: str, frac: float, seed: int, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "status": "ok",
        "defense": defense,
        "attack": attack,
        "byzantine_fraction": frac,
        "seed": seed,
        "defense_params.mode": "",
        "defense_params.weights.pogq": "",
        "defense_params.weights.peer": "",
        "final_accuracy": 0.95,
        "active_detection_rate": 1.0,
        "false_positive_rate": 0.0,
    }
    row.update(kw)
    return row


def test_variant_labels() -> None:
    assert variant(_row("krum", "none", 0, 0)) == "krum"
    assert variant(_row("matl", "none", 0, 0, **{"defense_params.mode": "1"})) == "MATL Mode 1"
    assert variant(_row("matl", "none", 0, 0, **{"defense_params.mode": 0})) == "MATL Mode 0"
    alone = _row("matl", "none", 0, 0, **{"defense_params.weights.pogq": "1.0"})
    assert variant(alone) == "PoGQ alone"


def test_variant_labels_a_composite_that_drops_a_default_signal() -> None:
    """Weights that keep some of the mode's default signals at their default weights and drop the
    rest are an ablation of the composite, not the composite itself."""

    def matl(mode: int, **weights: str) -> dict[str, Any]:
        params = {f"defense_params.weights.{k}": v for k, v in weights.items()}
        return _row("matl", "none", 0, 0, **{"defense_params.mode": mode}, **params)

    assert variant(matl(1, pogq="0.4", tcdm="0.3")) == "Mode 1 without entropy"
    assert variant(matl(0, peer="0.4", tcdm="0.3")) == "Mode 0 without entropy"
    assert variant(matl(1, pogq="0.4", tcdm="0.3", entropy="0.3")) == "MATL Mode 1"
    assert variant(matl(1, pogq="0.8", tcdm="0.6")) == "Mode 1 without entropy"  # same ratio
    assert variant(matl(1, pogq="0.5", tcdm="0.5")) == "MATL Mode 1 (pogq 0.5, tcdm 0.5)"
    assert variant(matl(0, peer="0.4", entropy="0.3")) == "Mode 0 without tcdm"


def _rows() -> list[dict[str, Any]]:
    rows = [_row("fedavg", "none", 0.0, s, final_accuracy=0.95) for s in (0, 1)]
    for s in (0, 1):
        rows.append(_row("matl", "none", 0.0, s, **{"defense_params.mode": 1}))
        # Meets every target.
        rows.append(_row("matl", "sign_flip", 0.2, s, **{"defense_params.mode": 1}))
        # Misses detection and accuracy (gap 5 points).
        rows.append(
            _row(
                "matl",
                "gaussian",
                0.2,
                s,
                active_detection_rate=0.5,
                final_accuracy=0.90,
                **{"defense_params.mode": 1},
            )
        )
        rows.append(_row("krum", "sign_flip", 0.2, s, false_positive_rate=0.1 * (s + 1)))
    rows.append(_row("median", "sign_flip", 0.2, 0, status="error"))
    return rows


def test_report_scores_the_targets() -> None:
    text = trust_report(_rows(), command="matl trust-report x")
    assert "## MATL Mode 1: 1 of 2 cells meet every target" in text
    assert "| sign_flip | 20 % | 1.000 | 0.000 | 0.950 | +0.0 pp | yes |" in text
    assert "| gaussian | 20 % | 0.500 | 0.000 | 0.900 | +5.0 pp | no: detection, accuracy |" in text
    assert "MATL Mode 0" not in text  # no such runs
    # Attack-free FPR per seed and the worst seed.
    assert "| MATL Mode 1 | 0.000 | 0.000 | 0.000 | 0.950 |" in text
    # Krum's FPR is the mean over seeds; the failed median run is left out.
    assert "| sign_flip | 20 % | 0.000 | 0.150 |" in text
    assert "(1 not ok)" in text


def test_report_names_the_seeds_that_miss_a_target_the_mean_meets() -> None:
    """A cell whose mean meets every target can still have a seed that misses one: the report
    shows the worst seed's detection and false-positive rate and names the seeds that miss."""
    rows = _rows()
    for s, fpr in ((0, 0.0), (1, 0.03)):
        rows.append(
            _row("matl", "alie", 0.2, s, false_positive_rate=fpr, **{"defense_params.mode": 1})
        )
    text = trust_report(rows)
    assert "## MATL Mode 1: 2 of 3 cells meet every target (1 on every seed)" in text
    assert (
        "| alie | 20 % | 1.000 | 0.015 | 0.950 | +0.0 pp | yes | 1.000 / 0.030 | no: seed 1 |"
        in text
    )
    assert (
        "| sign_flip | 20 % | 1.000 | 0.000 | 0.950 | +0.0 pp | yes | 1.000 / 0.000 | yes |" in text
    )
    assert "| 0.500 / 0.000 | no: seed 0, 1 |" in text  # gaussian: both seeds miss


def test_held_out_attack_free_seeds_are_summarised_apart() -> None:
    """Attack-free runs on seeds FedAvg did not run are summarised in their own table (seeds with
    no false positive, mean and worst rate); the per-seed table keeps the benchmark's seeds."""
    rows = _rows()
    for s, fpr in ((100, 0.0), (101, 0.004), (102, 0.0), (103, 0.001)):
        rows.append(
            _row("matl", "none", 0.0, s, false_positive_rate=fpr, **{"defense_params.mode": 1})
        )
    rows.append(
        _row("matl", "none", 0.0, 104, false_positive_rate=0.004, **{"defense_params.mode": 1})
    )
    rows += [_row("matl", "none", 0.0, s, **{"defense_params.mode": 0}) for s in (100, 101)]
    text = trust_report(rows)
    assert "FPR seed 100" not in text
    assert "| MATL Mode 1 | 0.000 | 0.000 | 0.000 | 0.950 |" in text
    assert "other seeds than the benchmark's" in text
    # the worst rate's lowest seed (101 and 104 tie); no seed named when every rate is 0
    assert "| MATL Mode 1 | 5 (5 seeds, 100–104) | 2 of 5 | 0.0018 | 0.0040 (seed 101) |" in text
    assert "| MATL Mode 0 | 2 (2 seeds, 100–101) | 2 of 2 | 0.0000 | 0.0000 | 0.950 |" in text
    assert "other seeds than the benchmark's" not in trust_report(_rows())
    # Without attack-free FedAvg the attacked runs' seeds are the benchmark's.
    no_fedavg = [r for r in rows if r["defense"] != "fedavg"]
    assert "| MATL Mode 1 | 5 (5 seeds, 100–104) |" in trust_report(no_fedavg)


def test_zero_reference_accuracy_is_a_reference() -> None:
    rows = [
        _row("fedavg", "none", 0.0, 0, final_accuracy=0.0),
        _row("matl", "sign_flip", 0.2, 0, final_accuracy=0.0),
    ]
    text = trust_report(rows, command="x")
    assert "| sign_flip | 20 % | 1.000 | 0.000 | 0.000 | +0.0 pp | yes |" in text


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_cli_writes_report(tmp_path: Path) -> None:
    _write(tmp_path / "results.csv", _rows())
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["trust-report", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text().startswith("# Trust-engine benchmark")
    assert (out / "results.csv").read_text() == (tmp_path / "results.csv").read_text()
    # Writing next to the results keeps them.
    same = CliRunner().invoke(app, ["trust-report", str(tmp_path), "--out", str(tmp_path)])
    assert same.exit_code == 0, same.output
    assert (tmp_path / "results.csv").read_text() == (out / "results.csv").read_text()
    missing = CliRunner().invoke(app, ["trust-report", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0
    assert "run `matl matrix` first" in " ".join(missing.output.split())


def test_cli_names_missing_columns(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "active_detection_rate"} for r in _rows()]
    _write(tmp_path / "results.csv", rows)
    result = CliRunner().invoke(app, ["trust-report", str(tmp_path)])
    assert result.exit_code != 0
    assert "lacks column(s) active_detection_rate" in " ".join(result.output.split())
    assert not (tmp_path / "trust").exists()
