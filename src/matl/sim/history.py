"""What a simulation records: one :class:`RoundRecord` per round, gathered in a :class:`History`."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Phases of a round whose wall-clock seconds are recorded.
PHASES = ("train", "attack", "defense", "eval")


@dataclass
class RoundRecord:
    """One round.

    Attributes
    ----------
    round:
        Round number (0-based).
    accuracy, loss:
        Test accuracy and loss of the global model after this round (``None`` if not evaluated).
    sampled:
        Ids of the clients sampled this round, in row order.
    byzantine:
        Ids of the sampled clients that were Byzantine (ground truth, for scoring detection).
    flagged:
        Ids the defense treated as Byzantine (including rejected ones).
    rejected:
        Ids whose update was rejected before aggregation (NaN/Inf).
    weights:
        Aggregation weight of each sampled client (row order of ``sampled``; rejected clients get 0).
    scores:
        Per-client score from the rule (row order of ``sampled``), or ``None``.
    aggregate_norm:
        ‖aggregate‖₂ applied to the global model.
    timing:
        Seconds spent in each phase of :data:`PHASES`. Timings are the only non-deterministic field.
    asr:
        Attack success rate of a data attack with a test-time trigger (see
        :func:`matl.sim.attack_success_rate`) on the global model after this round; ``None`` if
        not evaluated or the attack has none.
    attacking:
        Ids of the sampled Byzantine clients that attacked this round: all of ``byzantine``,
        except while an attack with an honest phase (``sleeper``) is inactive. ``None`` in
        histories written before this field existed (read as ``byzantine``).
    verdicts:
        The trust engine's verdicts (``Verdict.as_dict()``: client id, score, reasons) for the
        clients it did not trust this round, when the rule gives verdicts (``"matl"``); ``None``
        for other rules.
    """

    round: int
    accuracy: float | None
    loss: float | None
    sampled: list[int]
    byzantine: list[int]
    flagged: list[int]
    rejected: list[int]
    weights: list[float]
    scores: list[float] | None
    aggregate_norm: float
    timing: dict[str, float]
    asr: float | None = None
    verdicts: list[dict[str, Any]] | None = None
    attacking: list[int] | None = None


@dataclass
class History:
    """The full record of a simulation run."""

    config: dict[str, Any]
    byzantine_clients: list[int]
    client_sizes: list[int]
    rounds: list[RoundRecord] = field(default_factory=list)
    seconds: float = 0.0

    def evaluated(self) -> list[RoundRecord]:
        """Rounds that were evaluated on the test set."""
        return [r for r in self.rounds if r.accuracy is not None]

    def summary(self) -> dict[str, Any]:
        """``final_accuracy``, ``best_accuracy``, ``final_loss``, ``final_asr``, ``rounds``,
        ``seconds``, timings, config."""
        evaluated = self.evaluated()
        accs = [r.accuracy for r in evaluated if r.accuracy is not None]
        phase_totals = {p: sum(r.timing.get(p, 0.0) for r in self.rounds) for p in PHASES}
        return {
            "final_accuracy": accs[-1] if accs else None,
            "best_accuracy": max(accs) if accs else None,
            "final_loss": evaluated[-1].loss if evaluated else None,
            "final_asr": evaluated[-1].asr if evaluated else None,
            "rounds": len(self.rounds),
            "seconds": self.seconds,
            "seconds_per_round": self.seconds / max(1, len(self.rounds)),
            "phase_seconds": phase_totals,
            "config": self.config,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``rounds`` list of per-round records."""
        return {
            "config": self.config,
            "byzantine_clients": self.byzantine_clients,
            "client_sizes": self.client_sizes,
            "seconds": self.seconds,
            "rounds": [asdict(r) for r in self.rounds],
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``history.json``, ``history.csv`` and ``summary.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "history_json": out / "history.json",
            "history_csv": out / "history.csv",
            "summary_json": out / "summary.json",
        }
        _write_text(paths["history_json"], json.dumps(self.to_dict(), indent=1, default=_json))
        _write_text(paths["summary_json"], json.dumps(self.summary(), indent=2, default=_json))
        tmp = paths["history_csv"].with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                [
                    "round",
                    "accuracy",
                    "loss",
                    "asr",
                    "n_sampled",
                    "n_byzantine",
                    "n_flagged",
                    "n_rejected",
                    "aggregate_norm",
                    *(f"t_{p}" for p in PHASES),
                ]
            )
            for r in self.rounds:
                writer.writerow(
                    [
                        r.round,
                        _blank(r.accuracy),
                        _blank(r.loss),
                        _blank(r.asr),
                        len(r.sampled),
                        len(r.byzantine),
                        len(r.flagged),
                        len(r.rejected),
                        r.aggregate_norm,
                        *(r.timing.get(p, 0.0) for p in PHASES),
                    ]
                )
        tmp.replace(paths["history_csv"])
        return paths

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(
            config=data["config"],
            byzantine_clients=list(data["byzantine_clients"]),
            client_sizes=list(data["client_sizes"]),
            rounds=[RoundRecord(**r) for r in data["rounds"]],
            seconds=float(data.get("seconds", 0.0)),
        )


def _blank(value: float | None) -> str | float:
    return "" if value is None else value


def _json(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
