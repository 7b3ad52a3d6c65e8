r"""The trust-engine benchmark report (issue 5): targets, attack-free false positives, ablation.

Reads the rows of a ``matl matrix trust`` run (``results.csv``) and writes Markdown:

1. **Targets.** For MATL Mode 1 and Mode 0, one line per attack and Byzantine fraction with the
   mean over seeds of the detection rate over the rounds in which the Byzantine clients attacked
   (``active_detection_rate``, :mod:`matl.metrics.detection`), the false-positive rate, the final
   accuracy and its gap to attack-free FedAvg (same seeds), and whether the cell meets the targets:

   .. math::

       \text{TPR} \ge 0.95, \qquad \text{FPR} \le 0.02, \qquad
       \text{acc} \ge \text{acc}_{\text{FedAvg, no attack}} - 0.02 .

   Mode 0's targets apply up to 33 % Byzantine; its cells beyond are reported but not scored.
   Beside the means, the worst seed's detection and false-positive rate and the seeds whose own
   run misses a target (a cell can meet the targets on the mean and miss them on one seed); the
   heading counts the cells met on the mean and those met on every seed.
2. **Attack-free.** Each defense's false-positive rate per benchmark seed (the seeds of the
   attacked runs and of attack-free FedAvg; the target is 0 for every seed) and final accuracy; for
   defenses also run attack-free on other (held-out) seeds, the number of those seeds with no false
   positive, the mean and the worst rate.
3. **Ablation.** The same runs for the composite (Modes 0 and 1), each composite without entropy
   (its default weights with entropy's dropped), each signal alone (the engine with one signal's
   weight 1: threshold, reputation and cartel detection unchanged), FLTrust, Krum and median: mean detection, false-positive rate and final accuracy per attack and fraction, and the
   mean over all cells.

A variant's label comes from its defense and ``defense_params`` (:func:`variant`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from matl.errors import ConfigError
from matl.experiments.report import _mean, _num, _pct
from matl.experiments.tables import markdown
from matl.trust.composite import mode_weights

__all__ = ["REQUIRED_COLUMNS", "TARGETS", "check_columns", "trust_report", "variant"]

Row = dict[str, Any]

#: The issue's targets: (minimum detection, maximum false-positive rate, maximum accuracy gap).
TARGETS = (0.95, 0.02, 0.02)

#: Columns of ``results.csv`` the report reads (beyond ``attack`` and ``defense``).
REQUIRED_COLUMNS = (
    "seed",
    "byzantine_fraction",
    "active_detection_rate",
    "false_positive_rate",
    "final_accuracy",
)


def check_columns(rows: Sequence[Row], source: str) -> None:
    """Raise :class:`~matl.errors.ConfigError` naming the columns the report needs that ``rows``
    (read from ``source``) lack; results written before ``active_detection_rate`` existed need
    their matrix re-run."""
    missing = [c for c in REQUIRED_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ConfigError(
            f"{source} lacks column(s) {', '.join(missing)}; re-run the matrix with this version"
        )


#: Signal weighted alone → label.
_ALONE = {
    "pogq": "PoGQ alone",
    "peer": "peer alone",
    "tcdm": "TCDM alone",
    "entropy": "entropy alone",
}

#: Column order of the ablation.
ORDER = (
    "MATL Mode 1",
    "MATL Mode 0",
    "Mode 1 without entropy",
    "Mode 0 without entropy",
    "PoGQ alone",
    "peer alone",
    "TCDM alone",
    "entropy alone",
    "fltrust",
    "krum",
    "median",
    "fedavg",
)


def variant(row: Row) -> str:
    """``MATL Mode 0/1`` for the composite with its default weights, ``<signal> alone`` when
    exactly one signal has a positive weight, ``Mode m without <signals>`` when the weights keep
    some of the mode's default signals and drop the others, ``MATL Mode m (<weights>)`` for other
    weights, else the defense name."""
    if row.get("defense") != "matl":
        return str(row.get("defense"))
    weights = {
        key.rsplit(".", 1)[1]: _num(value)
        for key, value in row.items()
        if key.startswith("defense_params.weights.") and _num(value)
    }
    if len(weights) == 1:
        return _ALONE.get(next(iter(weights)), f"{next(iter(weights))} alone")
    mode_value = _num(row.get("defense_params.mode"))
    mode = int(mode_value) if mode_value is not None else 1
    if not weights:
        return f"MATL Mode {mode}"
    default = mode_weights(mode)
    dropped = [name for name in default if name not in weights]
    if set(weights) <= set(default) and _proportional(weights, default):
        return f"Mode {mode} without {', '.join(dropped)}" if dropped else f"MATL Mode {mode}"
    shown = ", ".join(f"{k} {v:g}" for k, v in sorted(weights.items()) if v is not None)
    return f"MATL Mode {mode} ({shown})"


def _proportional(weights: dict[str, float | None], default: dict[str, float]) -> bool:
    """Whether ``weights`` are the ``default`` weights of their signals up to a common factor
    (the composite divides by the weights' sum, so those weight the kept signals alike)."""
    total = sum(w or 0.0 for w in weights.values())
    base = sum(default[k] for k in weights)
    return total > 0 and all(
        math.isclose((w or 0.0) / total, default[k] / base, rel_tol=1e-9)
        for k, w in weights.items()
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ok(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.get("status", "ok") in ("ok", "", None)]


def _reference(rows: list[Row]) -> dict[str, float]:
    """Attack-free FedAvg's final accuracy per seed."""
    return {
        str(r["seed"]): float(r["final_accuracy"])
        for r in rows
        if r["defense"] == "fedavg"
        and r["attack"] == "none"
        and _num(r["final_accuracy"]) is not None
    }


def _gap(rows: list[Row], reference: dict[str, float]) -> float | None:
    """Mean over seeds of (attack-free FedAvg accuracy − this run's accuracy)."""
    gaps = [
        reference[str(r["seed"])] - float(r["final_accuracy"])
        for r in rows
        if str(r["seed"]) in reference and _num(r["final_accuracy"]) is not None
    ]
    return _mean(gaps)


def _cells(rows: list[Row]) -> dict[tuple[str, str, float], list[Row]]:
    cells: dict[tuple[str, str, float], list[Row]] = defaultdict(list)
    for r in rows:
        cells[(variant(r), r["attack"], float(r["byzantine_fraction"]))].append(r)
    return cells


def _targets(
    cells: dict[tuple[str, str, float], list[Row]],
    label: str,
    attacks: list[str],
    fractions: list[float],
    reference: dict[str, float],
    scored_up_to: float,
) -> tuple[str, int, int, int]:
    tpr_min, fpr_max, gap_max = TARGETS
    table = [
        [
            "attack",
            "Byzantine",
            "detection",
            "FPR",
            "final acc",
            "below FedAvg",
            "meets",
            "worst seed: detection / FPR",
            "every seed meets",
        ]
    ]
    met = scored = met_seeds = 0
    for attack in attacks:
        for f in fractions:
            rows = cells.get((label, attack, f), [])
            if not rows:
                continue
            tpr = _mean([_num(r["active_detection_rate"]) for r in rows])
            fpr = _mean([_num(r["false_positive_rate"]) for r in rows])
            acc = _mean([_num(r["final_accuracy"]) for r in rows])
            gap = _gap(rows, reference)
            if f <= scored_up_to + 1e-9:
                misses = [
                    name
                    for name, bad in (
                        ("detection", tpr is None or tpr < tpr_min),
                        ("FPR", fpr is None or fpr > fpr_max),
                        ("accuracy", gap is None or gap > gap_max),
                    )
                    if bad
                ]
                verdict = "yes" if not misses else "no: " + ", ".join(misses)
                scored += 1
                met += not misses
                missed = _seeds_missing(rows, reference)
                met_seeds += not missed
                every = "yes" if not missed else "no: seed " + ", ".join(missed)
            else:
                verdict = every = "(not a target)"
            tprs = [v for v in (_num(r["active_detection_rate"]) for r in rows) if v is not None]
            fprs = [v for v in (_num(r["false_positive_rate"]) for r in rows) if v is not None]
            table.append(
                [
                    attack,
                    _pct(f),
                    _fmt(tpr),
                    _fmt(fpr),
                    _fmt(acc),
                    "–" if gap is None else f"{gap * 100:+.1f} pp",
                    verdict,
                    f"{_fmt(min(tprs, default=None))} / {_fmt(max(fprs, default=None))}",
                    every,
                ]
            )
    return markdown(table), met, scored, met_seeds


def _seeds_missing(rows: list[Row], reference: dict[str, float]) -> list[str]:
    """The seeds (sorted) whose own run misses a target: detection, false-positive rate or the
    accuracy gap to attack-free FedAvg on the same seed."""
    tpr_min, fpr_max, gap_max = TARGETS
    missing = set()
    for r in rows:
        tpr, fpr, acc = (
            _num(r[k]) for k in ("active_detection_rate", "false_positive_rate", "final_accuracy")
        )
        ref = reference.get(str(r["seed"]))
        if (
            tpr is None
            or tpr < tpr_min
            or fpr is None
            or fpr > fpr_max
            or acc is None
            or ref is None
            or ref - acc > gap_max
        ):
            missing.add(str(r["seed"]))
    return sorted(missing, key=lambda seed: (len(seed), seed))


def _attack_free(rows: list[Row], benchmark_seeds: set[str]) -> str:
    """Per-seed false-positive rates on the ``benchmark_seeds`` (every seed when empty), then, for
    defenses also run attack-free on other seeds (the ``trust`` preset's held-out seeds), their
    number of runs without a false positive, the mean and the worst rate."""
    by: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r["attack"] == "none":
            by[variant(r)].append(r)
    labels = [v for v in ORDER if v in by] + sorted(set(by) - set(ORDER))

    def on_a_benchmark_seed(r: Row) -> bool:
        return not benchmark_seeds or str(r["seed"]) in benchmark_seeds

    on_bench = {label: [r for r in by[label] if on_a_benchmark_seed(r)] for label in labels}
    held = {label: [r for r in by[label] if not on_a_benchmark_seed(r)] for label in labels}
    seeds = sorted({str(r["seed"]) for rs in on_bench.values() for r in rs}, key=int)
    table = [["defense", *(f"FPR seed {s}" for s in seeds), "max FPR", "final acc"]]
    for label in labels:
        rs = on_bench[label]
        if not rs:
            continue
        per_seed = {str(r["seed"]): _num(r["false_positive_rate"]) for r in rs}
        values = [v for v in per_seed.values() if v is not None]
        table.append(
            [
                label,
                *(_fmt(per_seed.get(s)) for s in seeds),
                _fmt(max(values) if values else None),
                _fmt(_mean([_num(r["final_accuracy"]) for r in rs])),
            ]
        )
    text = markdown(table)
    summary = [["defense", "runs", "FPR 0 on", "mean FPR", "max FPR", "final acc"]]
    for label, rs in held.items():
        rates = [
            (v, str(r["seed"])) for r in rs if (v := _num(r["false_positive_rate"])) is not None
        ]
        if not rates:
            continue
        # the worst rate, on its lowest seed; no seed named when every rate is 0
        worst, worst_seed = max(rates, key=lambda t: (t[0], -int(t[1])))
        numbers = sorted({int(seed) for _, seed in rates})
        summary.append(
            [
                label,
                f"{len(rates)} ({len(numbers)} seeds, {numbers[0]}–{numbers[-1]})",
                f"{sum(v == 0 for v, _ in rates)} of {len(rates)}",
                _fmt(_mean([v for v, _ in rates]), 4),
                _fmt(worst, 4) + (f" (seed {worst_seed})" if worst > 0 else ""),
                _fmt(_mean([_num(r["final_accuracy"]) for r in rs])),
            ]
        )
    if len(summary) > 1:
        text += (
            "\n\nAttack-free runs on other seeds than the benchmark's (seeds with attacked runs "
            "or attack-free FedAvg), summarised:\n\n" + markdown(summary)
        )
    return text


def _ablation(
    cells: dict[tuple[str, str, float], list[Row]],
    attacks: list[str],
    fractions: list[float],
    metric: str,
) -> str:
    labels = [v for v in ORDER if any(k[0] == v and k[1] != "none" for k in cells)]
    table = [["attack", "Byzantine", *labels]]
    columns: dict[str, list[float | None]] = defaultdict(list)
    for attack in attacks:
        for f in fractions:
            line = [attack, _pct(f)]
            for label in labels:
                value = _mean([_num(r[metric]) for r in cells.get((label, attack, f), [])])
                columns[label].append(value)
                line.append(_fmt(value))
            table.append(line)
    table.append(["**mean**", "", *(_fmt(_mean(columns[label])) for label in labels)])
    return markdown(table)


def trust_report(rows: Sequence[Row], *, command: str = "") -> str:
    """The Markdown report of a ``matl matrix trust`` run (see the module docstring)."""
    ok = _ok(list(rows))
    reference = _reference(ok)
    cells = _cells(ok)
    attacks = list(dict.fromkeys(r["attack"] for r in ok if r["attack"] != "none"))
    fractions = sorted({float(r["byzantine_fraction"]) for r in ok if r["attack"] != "none"})
    tpr_min, fpr_max, gap_max = TARGETS
    parts = ["# Trust-engine benchmark", ""]
    if command:
        parts += [f"Produced by `{command}`.", ""]
    parts += [
        f"{len(ok)} runs ({len(rows) - len(ok)} not ok). Detection is the rate over the rounds "
        "in which the Byzantine clients attacked (a sleeper's honest phase is left out); every "
        "number is the mean over seeds. Targets: detection ≥ "
        f"{tpr_min:g}, false-positive rate ≤ {fpr_max:g}, final accuracy within "
        f"{gap_max * 100:g} points of attack-free FedAvg (seeds: "
        f"{', '.join(f'{k}: {v:.3f}' for k, v in sorted(reference.items()))}).",
        "",
    ]
    for label, up_to in (("MATL Mode 1", 1.0), ("MATL Mode 0", 0.33)):
        if not any(key[0] == label for key in cells):
            continue
        text, met, scored, met_seeds = _targets(cells, label, attacks, fractions, reference, up_to)
        scope = "" if up_to >= 1.0 else f" (targets up to {_pct(up_to)})"
        heading = (
            f"## {label}{scope}: {met} of {scored} cells meet every target "
            f"({met_seeds} on every seed)"
        )
        parts += [heading, "", text, ""]
    parts += [
        "## Attack-free false-positive rates (target: 0 for every seed)",
        "",
        _attack_free(ok, set(reference) | {str(r["seed"]) for r in ok if r["attack"] != "none"}),
    ]
    for metric, title in (
        ("active_detection_rate", "Ablation: detection rate"),
        ("false_positive_rate", "Ablation: false-positive rate"),
        ("final_accuracy", "Ablation: final accuracy"),
    ):
        parts += ["", f"## {title}", "", _ablation(cells, attacks, fractions, metric)]
    return "\n".join(parts).rstrip() + "\n"
