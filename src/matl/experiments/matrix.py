"""The attack matrix: cross any simulator keys, run every cell once, resumably, in parallel.

A matrix file (TOML) has a ``[fixed]`` table of simulator keys shared by every run and an
``[axes]`` table mapping keys to lists of values; the runs are the Cartesian product of the axes
(``dataset × attack × byzantine_fraction × defense × seed``, or any other keys — dotted keys such as
``"attack_params.scale"`` address nested tables). An axis value may be an inline table, a
*bundle* that sets several keys together (``defense = ["krum", {defense = "matl",
"defense_params.mode" = 1}]``). Each optional ``[[grid]]`` table is a further set of axes whose
product is added to the runs (e.g. a 50 % row for one defense only). An optional ``[[include]]``
array adds single extra axis-value combinations; ``[[exclude]]`` removes combinations matching all of its keys. An optional
``[options]`` table sets ``target_accuracy`` (for the convergence metric).

Each run is keyed by a hash of its fully resolved :class:`SimulationConfig`. Finished runs are
appended to ``results.jsonl`` (one line each, flushed and fsynced by the parent process) and
``results.csv`` is rewritten atomically after each (``results.parquet`` too at the end, when
pyarrow is installed); a run whose rule precondition fails (Bulyan needs n ≥ 4f + 3) is recorded
with ``status = "precondition"`` and its error instead of stopping the matrix. Every run also
records its peak resident memory (:class:`matl.metrics.PeakRSS`); a re-run skips keys already present, so an
interrupted matrix loses at most the runs in flight.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import itertools
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from matl.errors import ConfigError
from matl.experiments.config_io import load_toml, parse_toml, with_values
from matl.sim.config import SimulationConfig

PRESETS = ("quick", "paper", "trust")


@dataclass(frozen=True)
class Cell:
    """One run of the matrix: its key and resolved configuration."""

    key: str
    config: dict[str, Any]


@dataclass(frozen=True)
class MatrixSpec:
    """A parsed matrix file."""

    fixed: dict[str, Any]
    axes: dict[str, list[Any]]
    grids: list[dict[str, list[Any]]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    target_accuracy: float = 0.9


def parse_matrix(data: dict[str, Any]) -> MatrixSpec:
    """Validate the structure of a matrix table (cells are validated by :func:`expand`)."""
    unknown = sorted(set(data) - {"fixed", "axes", "grid", "include", "exclude", "options"})
    if unknown:
        raise ConfigError(
            f"unknown matrix section(s) {', '.join(unknown)}; valid: fixed, axes, grid, include, "
            "exclude, options"
        )
    axes = data.get("axes", {})
    grids = data.get("grid", [])
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ConfigError("`grid` must be an array of tables ([[grid]]), each a set of axes")
    for table in [axes, *grids]:
        for key, values in table.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"axis {key!r} must be a non-empty list, got {values!r}")
    options = data.get("options", {})
    bad = sorted(set(options) - {"target_accuracy"})
    if bad:
        raise ConfigError(f"unknown matrix option(s) {', '.join(bad)}; valid: target_accuracy")
    return MatrixSpec(
        fixed=dict(data.get("fixed", {})),
        axes=dict(axes),
        grids=[dict(g) for g in grids],
        include=list(data.get("include", [])),
        exclude=list(data.get("exclude", [])),
        target_accuracy=float(options.get("target_accuracy", 0.9)),
    )


def load_matrix(source: str | Path) -> MatrixSpec:
    """Load a matrix file, or a packaged preset by name (``quick``, ``paper``)."""
    if str(source) in PRESETS:
        text = resources.files("matl").joinpath(f"presets/{source}.toml").read_text()
        return parse_matrix(parse_toml(text, source=f"preset {source!r}"))
    return parse_matrix(load_toml(source))


def config_key(config: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a resolved config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _product(axes: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of ``axes``; a table value sets several keys at once (a bundle)."""
    names = list(axes)
    for values in itertools.product(*(axes[n] for n in names)):
        combo: dict[str, Any] = {}
        for name, value in zip(names, values, strict=True):
            if isinstance(value, dict):
                combo.update(value)
            else:
                combo[name] = value
        yield combo


def _combinations(spec: MatrixSpec) -> Iterator[dict[str, Any]]:
    grids = [spec.axes, *spec.grids] if spec.axes or not spec.grids else spec.grids
    for axes in grids:
        for combo in _product(axes):
            if not any(all(combo.get(k) == v for k, v in ex.items()) for ex in spec.exclude):
                yield combo
    yield from spec.include


def expand(spec: MatrixSpec) -> list[Cell]:
    """Resolve and validate every run of the matrix (duplicates collapse to one cell)."""
    cells: dict[str, Cell] = {}
    for combo in _combinations(spec):
        try:
            raw = with_values(spec.fixed, combo)
        except ConfigError as exc:
            raise ConfigError(f"matrix cell {combo}: {exc}") from None
        try:
            resolved = SimulationConfig.from_dict(raw).model_dump()
        except ConfigError as exc:
            raise ConfigError(f"matrix cell {combo}: {exc}") from None
        key = config_key(resolved)
        cells.setdefault(key, Cell(key, resolved))
    return list(cells.values())


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted columns: ``{"attack_params": {"scale": 4}}`` → ``attack_params.scale``."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, dict):
            continue
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def _parquet_column(values: list[Any]) -> list[Any]:
    """One typed column: floats when every present value is a number, else strings."""
    present = [v for v in values if v is not None and v != ""]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    return [None if v is None or v == "" else (float(v) if numeric else str(v)) for v in values]


class ResultStore:
    """``results.jsonl`` (source of truth, append-only) and ``results.csv`` (rewritten atomically)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "results.jsonl"
        self.csv = self.dir / "results.csv"
        self.rows: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        rows, clean = [], True
        for line in self.jsonl.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-write: drop it
                clean = False
        if not clean:
            self._rewrite_jsonl(rows)
        return rows

    def _rewrite_jsonl(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.jsonl.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(self.jsonl)

    def keys(self) -> set[str]:
        return {r["key"] for r in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append(row)
        self.write_csv()

    def table(self) -> list[dict[str, Any]]:
        """One flat dict per run: key, every resolved config value, every metric."""
        return [
            {
                "key": r["key"],
                "status": r.get("status", "ok"),
                "error": r.get("error", ""),
                **flatten(r["config"]),
                **r["metrics"],
            }
            for r in self.rows
        ]

    def write_parquet(self) -> Path | None:
        """Write ``results.parquet`` (same columns as the CSV) when pyarrow is installed.

        Returns the path, or ``None`` without pyarrow (``pip install matl[parquet]``).
        """
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return None
        table = self.table()
        columns: list[str] = []
        for row in table:
            columns += [c for c in row if c not in columns]
        data = {c: _parquet_column([row.get(c) for row in table]) for c in columns}
        path = self.dir / "results.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.table(data), tmp)
        tmp.replace(path)
        return path

    def write_csv(self) -> None:
        table = self.table()
        columns: list[str] = []
        for row in table:
            columns += [c for c in row if c not in columns]
        tmp = self.csv.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(table)
        tmp.replace(self.csv)


_DATA_CACHE: dict[str, Any] = {}


def run_cell(config: dict[str, Any], target_accuracy: float, threads: int) -> dict[str, Any]:
    """Run one cell (in a worker process) and return its history and metrics."""
    import torch

    from matl.data import load_dataset
    from matl.errors import PreconditionError
    from matl.metrics import PeakRSS, run_metrics
    from matl.sim import Simulation

    torch.set_num_threads(threads)
    cfg = SimulationConfig.model_validate(config)
    data_key = json.dumps([cfg.dataset, cfg.data_dir, cfg.dataset_options], sort_keys=True)
    if data_key not in _DATA_CACHE:
        _DATA_CACHE[data_key] = load_dataset(
            cfg.dataset, data_dir=cfg.data_dir, **cfg.dataset_options
        )
    try:
        with PeakRSS() as mem:
            history = Simulation(cfg, dataset=_DATA_CACHE[data_key]).run()
    except PreconditionError as exc:  # e.g. Bulyan at 45 % Byzantine: recorded, not fatal
        return {"history": None, "metrics": {}, "status": "precondition", "error": str(exc)}
    metrics = run_metrics(history, target_accuracy=target_accuracy).as_dict()
    metrics["peak_rss_mb"] = round(mem.peak_mb, 1)
    metrics["peak_rss_growth_mb"] = round(mem.growth_mb, 1)
    return {"history": history.to_dict(), "metrics": metrics, "status": "ok"}


def run_matrix(
    spec: MatrixSpec,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_done: Callable[[Cell, dict[str, Any]], None] | None = None,
) -> ResultStore:
    """Run every cell not yet in ``out_dir``'s results; returns the store.

    ``on_start(total, already_done)`` is called once; ``on_done(cell, metrics)`` after each run.
    Runs execute in ``workers`` spawned processes (default: the CPU count), each with
    ``max(1, cpus // workers)`` torch threads.
    """
    cells = expand(spec)
    store = ResultStore(out_dir)
    done = store.keys()
    todo = [c for c in cells if c.key not in done]
    if on_start:
        on_start(len(cells), len(cells) - len(todo))
    cpus = os.cpu_count() or 1
    n_workers = max(1, min(workers or cpus, len(todo) or 1))
    threads = max(1, cpus // n_workers)
    runs_dir = Path(out_dir) / "runs"

    def finish(cell: Cell, result: dict[str, Any]) -> None:
        row = {"key": cell.key, "config": cell.config, "metrics": result["metrics"]}
        if result.get("history") is not None:
            run_dir = runs_dir / cell.key
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "history.json").write_text(json.dumps(result["history"]))
        row["status"] = result.get("status", "ok")
        if "error" in result:
            row["error"] = result["error"]
        store.append(row)
        if on_done:
            on_done(cell, result["metrics"])

    if not todo:
        store.write_csv()
        store.write_parquet()
        return store
    if n_workers == 1:
        for cell in todo:
            finish(cell, run_cell(cell.config, spec.target_accuracy, threads))
        store.write_parquet()
        return store
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_cell, c.config, spec.target_accuracy, threads): c for c in todo}
        try:
            for fut in cf.as_completed(futures):
                finish(futures[fut], fut.result())
        except BaseException:
            # Do not let the workers grind through every remaining cell before the error shows.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    store.write_parquet()
    return store
