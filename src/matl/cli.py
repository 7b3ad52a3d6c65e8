"""The ``matl`` command line."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from matl.errors import ConfigError, MATLError
from matl.experiments.report_io import emit_table

app = typer.Typer(
    help="MATL: Byzantine-robust trust middleware for federated learning.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks (measured in one process against baselines).")
app.add_typer(bench_app, name="bench")
console = Console()
err_console = Console(stderr=True)


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def _status(record: Any) -> str:
    acc = "" if record.accuracy is None else f"acc {record.accuracy:.4f}"
    return f"{acc}  {sum(record.timing.values()):.2f} s/round"


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Argument(help="TOML config file (optional).", show_default=False)
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set rounds=5 --set attack_params.scale=4."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("runs/latest"),
) -> None:
    """Run one federated simulation and write history.json, history.csv and summary.json."""
    from matl.experiments.config_io import apply_overrides, load_toml
    from matl.sim import Simulation, SimulationConfig

    try:
        raw = load_toml(config) if config is not None else {}
        cfg = SimulationConfig.from_dict(apply_overrides(raw, set_ or []))
        sim = Simulation(cfg)
    except MATLError as exc:
        raise _fail(exc) from None
    with _progress() as progress:
        task = progress.add_task("round", total=cfg.rounds, status="")
        history = sim.run(lambda rec: progress.update(task, advance=1, status=_status(rec)))
    paths = history.write(out)
    summary = history.summary()
    console.print(
        f"final accuracy [bold]{summary['final_accuracy']:.4f}[/] "
        f"(best {summary['best_accuracy']:.4f}) in {summary['seconds']:.1f} s → {paths['summary_json']}"
    )


@app.command()
def rules() -> None:
    """List the aggregation rules with their preconditions, then the pre-aggregators."""
    import dataclasses

    from matl.aggregation import available_rules, rule_class
    from matl.aggregation.pre import available_preaggregators, preaggregator_class

    table = Table("rule", "precondition", "reference")
    for name in available_rules():
        cls = rule_class(name)
        table.add_row(name, cls.precondition, cls.reference)
    console.print(table)
    pre = Table("pre-aggregator (use as pre=[...])", "precondition", "parameters", "reference")
    for name in available_preaggregators():
        pcls = preaggregator_class(name)
        params = ", ".join(
            f.name if f.default is dataclasses.MISSING else f"{f.name}={f.default!r}"
            for f in dataclasses.fields(pcls)
        )
        pre.add_row(name, pcls.precondition, params, pcls.reference)
    console.print(pre)


@app.command()
def attacks() -> None:
    """List the attacks with their knowledge setting and parameters."""
    from matl.attacks import ATTACKS

    table = Table("attack", "kind", "knowledge", "parameters", "reference")
    for name in ATTACKS.names():
        cls = ATTACKS.factory(name)
        assert isinstance(cls, type) and dataclasses.is_dataclass(cls)
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
        table.add_row(name, cls.kind, cls.knowledge, params, cls.reference)  # type: ignore[attr-defined]
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("runs/demo"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a demo key (e.g. rounds=5).")
    ] = None,
) -> None:
    """The main job: FedAvg, median, Krum and MATL Modes 0 and 1 on real MNIST, 50 clients, 20 %
    sign flipping."""
    from matl.experiments.config_io import apply_overrides
    from matl.experiments.demo import DEMO_CONFIG, DEMO_DEFENSES, run_demo

    overrides = apply_overrides({}, set_ or [])
    rounds = int(overrides.get("rounds", DEMO_CONFIG["rounds"]))
    try:
        with _progress() as progress:
            tasks = {d: progress.add_task(d, total=rounds, status="") for d in DEMO_DEFENSES}
            histories = run_demo(
                out,
                overrides=overrides,
                on_round=lambda name, rec: progress.update(
                    tasks[name], advance=1, status=_status(rec)
                ),
            )
    except MATLError as exc:
        raise _fail(exc) from None
    table = Table(
        title=f"MNIST, 50 clients, Dirichlet α=0.5, 20% sign-flip (scale 4), {rounds} rounds"
    )
    for col in ("defense", "final accuracy", "best accuracy", "seconds", "outputs"):
        table.add_column(col)
    rows = []
    for name, hist in histories.items():
        s = hist.summary()
        rows.append(
            {"defense": name, **{k: s[k] for k in ("final_accuracy", "best_accuracy", "seconds")}}
        )
        table.add_row(
            name,
            f"{s['final_accuracy']:.4f}",
            f"{s['best_accuracy']:.4f}",
            f"{s['seconds']:.1f}",
            str(out / name),
        )
    console.print(table)
    (out / "results.json").write_text(json.dumps(rows, indent=2))


@app.command()
def matrix(
    spec: Annotated[
        str, typer.Argument(help="Matrix TOML file, or a preset: quick, paper, trust.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Results directory.")] = Path("runs/matrix"),
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: CPU count).")
    ] = None,
) -> None:
    """Run an attack matrix (datasets × attacks × fractions × defenses × seeds), resumably."""
    from matl.experiments.matrix import load_matrix, run_matrix

    try:
        parsed = load_matrix(spec)
        with Progress(
            TextColumn("[bold]cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
        ) as progress:
            task = progress.add_task("cells", total=None, status="")

            def started(total: int, done: int) -> None:
                progress.update(task, total=total, completed=done, status=f"{done} already done")

            def finished(cell: Any, metrics: dict[str, Any]) -> None:
                acc = metrics.get("final_accuracy")
                cfg = cell.config
                result = f"{acc:.3f}" if isinstance(acc, float) else "not run (precondition)"
                status = f"{cfg['attack']} {cfg['byzantine_fraction']} {cfg['defense']} → {result}"
                progress.update(task, advance=1, status=status)

            store = run_matrix(parsed, out, workers=workers, on_start=started, on_done=finished)
    except MATLError as exc:
        raise _fail(exc) from None
    console.print(f"{len(store.rows)} runs in {store.csv}")


@app.command()
def table(
    results: Annotated[Path, typer.Argument(help="A matrix results directory (or results.csv).")],
    index: Annotated[
        list[str] | None, typer.Option("--index", help="Row keys (repeatable).")
    ] = None,
    column: Annotated[str, typer.Option(help="Column key.")] = "defense",
    value: Annotated[str, typer.Option(help="Metric in the cells.")] = "final_accuracy",
) -> None:
    """Pivot matrix results into a Markdown table of mean ± 95 % CI over seeds."""
    from matl.experiments.tables import markdown, pivot

    path = results / "results.csv" if results.is_dir() else results
    if not path.is_file():
        raise _fail(ConfigError(f"no results at {str(path)!r}; run `matl matrix` first"))
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    keys = index or ["attack", "byzantine_fraction"]
    missing = [k for k in [*keys, column, value] if rows and k not in rows[0]]
    if missing:
        raise _fail(
            ConfigError(f"unknown column(s) {', '.join(missing)}; have: {', '.join(rows[0])}")
        )
    typer.echo(markdown(pivot(rows, index=keys, column=column, value=value)), nl=False)


@app.command("trust-report")
def trust_report_cmd(
    results: Annotated[Path, typer.Argument(help="A `matl matrix trust` results directory.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default RESULTS/trust).")
    ] = None,
) -> None:
    """Write the trust-engine benchmark report (targets, attack-free FPR, ablation) as report.md
    plus a copy of results.csv."""
    import shutil

    from matl.experiments.report import load_rows
    from matl.experiments.trust_report import check_columns, trust_report

    path = results / "results.csv" if results.is_dir() else results
    try:
        rows = load_rows(results)
        check_columns(rows, repr(str(path)))
    except MATLError as exc:
        raise _fail(exc) from None
    target = out if out is not None else path.parent / "trust"
    target.mkdir(parents=True, exist_ok=True)
    command = f"matl trust-report {results} --out {target}"
    (target / "report.md").write_text(trust_report(rows, command=command))
    copy = target / "results.csv"
    if not (copy.exists() and copy.samefile(path)):
        shutil.copyfile(path, copy)
    typer.echo(f"wrote {target / 'report.md'} and {target / 'results.csv'}")


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A matrix results directory.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default RESULTS/report).")
    ] = None,
) -> None:
    """Write report.md, a self-contained report.html and PNG figures for matrix results."""
    from matl.experiments.report import build_report

    try:
        paths = build_report(results, out)
    except MATLError as exc:
        raise _fail(exc) from None
    for path in paths:
        console.print(str(path))


@bench_app.command("sim")
def bench_sim_cmd(
    clients: Annotated[
        list[int] | None, typer.Option("--clients", help="Client counts (repeatable).")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Best of this many batched rounds.")] = 3,
    no_loop: Annotated[bool, typer.Option("--no-loop", help="Skip the per-client loop.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write bench_sim.csv/.md here.")] = None,
) -> None:
    """Seconds per round and GFLOP/s of batched local training vs a per-client loop and the
    machine's matmul peak (MNIST, MLP 784-200-10, 10 steps of batch 32)."""
    from matl.experiments.bench_sim import bench_sim

    with console.status("measuring…") as status:
        peak, rows = bench_sim(
            tuple(clients or (10, 100, 1000)),
            repeats=repeats,
            with_loop=not no_loop,
            progress=lambda msg: status.update(f"measuring {msg}…"),
        )
    header = [
        "clients",
        "batched s/round",
        "loop s/round",
        "batched GFLOP/s",
        "loop GFLOP/s",
        "% of peak",
        "vs loop",
        "RSS growth MB",
        "updates MB",
    ]
    cells = [
        [
            str(r.clients),
            f"{r.batched_s:.3f}",
            _opt(r.loop_s, "{:.3f}"),
            f"{r.batched_gflops:.1f}",
            _opt(r.loop_gflops, "{:.1f}"),
            f"{100 * r.peak_fraction:.0f}%",
            _opt(r.speedup_vs_loop, "{:.1f}×"),
            f"{r.peak_rss_growth_mb:.0f}",
            f"{r.updates_mb:.0f}",
        ]
        for r in rows
    ]
    records = [{**dataclasses.asdict(r), "matmul_peak_gflops": peak} for r in rows]
    emit_table(f"matmul peak: {peak:.1f} GFLOP/s", header, cells, records, out, "bench_sim")


@bench_app.command("rounds")
def bench_rounds_cmd(
    clients: Annotated[
        list[int] | None, typer.Option("--clients", help="Client counts (repeatable).")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Rounds per run.")] = 5,
    target: Annotated[float, typer.Option(help="Accuracy that counts as converged.")] = 0.8,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a simulator key (e.g. dataset=synthetic)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write bench_rounds.csv/.md here.")
    ] = None,
) -> None:
    """Round time of MATL Mode 0 / Mode 1 relative to FedAvg, detection latency, convergence,
    state memory and the scalability curve (MNIST, 20 % sign flip)."""
    from matl.experiments.bench_rounds import bench_rounds
    from matl.experiments.config_io import apply_overrides

    try:
        with console.status("measuring…") as status:
            rows = bench_rounds(
                tuple(clients or (10, 100, 1000)),
                rounds=rounds,
                target=target,
                base=apply_overrides({}, set_ or []),
                progress=lambda msg: status.update(f"measuring {msg}…"),
            )
    except MATLError as exc:
        raise _fail(exc) from None
    header = [
        "defense",
        "clients",
        "s/round",
        "× fedavg",
        "latency s",
        "ms/client",
        "rounds to target",
        "detection",
        "FPR",
        "state MB",
    ]
    cells = [
        [
            r.defense,
            str(r.clients),
            f"{r.round_s:.3f}",
            f"{r.ratio_to_fedavg:.2f}",
            f"{r.detection_latency_s:.3f}",
            f"{r.per_client_ms:.1f}",
            _opt(r.rounds_to_target, "{}"),
            _opt(r.detection_rate, "{:.3f}"),
            _opt(r.false_positive_rate, "{:.3f}"),
            f"{r.state_mb:.2f}",
        ]
        for r in rows
    ]
    title = f"round benchmark ({rounds} rounds, target accuracy {target})"
    emit_table(title, header, cells, [r.as_dict() for r in rows], out, "bench_rounds")


@bench_app.command("aggregation")
def bench_aggregation_cmd(
    shape: Annotated[
        list[str] | None,
        typer.Option(
            "--shape", help="n,d to time (repeatable); default 100,1000000 and 1000,100000."
        ),
    ] = None,
    rule: Annotated[
        list[str] | None, typer.Option("--rule", help="Rules to time (repeatable); default all.")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Best of this many calls.")] = 3,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write bench_aggregation.csv/.md here.")
    ] = None,
) -> None:
    """Time every aggregation rule against a plain mean (float32) and print the ratio."""
    from matl.experiments.bench_aggregation import DEFAULT_SHAPES, bench_aggregation

    try:
        shapes = tuple(_parse_shape(s) for s in shape) if shape else DEFAULT_SHAPES
        with console.status("measuring…") as status:
            rows = bench_aggregation(
                shapes,
                rules=rule,
                repeats=repeats,
                progress=lambda msg: status.update(f"measuring {msg}…"),
            )
    except MATLError as exc:
        raise _fail(exc) from None
    header = ["rule", "n", "d", "seconds", "× mean"]
    cells = [
        [r.rule, str(r.n), str(r.d), f"{r.seconds:.4f}", f"{r.ratio_to_mean:.1f}"]
        if not r.note
        else [r.rule, str(r.n), str(r.d), "–", r.note]
        for r in rows
    ]
    records = [dataclasses.asdict(r) for r in rows]
    emit_table(
        "aggregation rules vs a plain mean (float32)",
        header,
        cells,
        records,
        out,
        "bench_aggregation",
    )


@bench_app.command("trust")
def bench_trust_cmd(
    n: Annotated[int, typer.Option("--n", help="Number of clients.")] = 1000,
    d: Annotated[
        int, typer.Option("--d", help="Parameters (a logistic regression of 10 classes).")
    ] = 100_000,
    repeats: Annotated[int, typer.Option(help="Best of this many calls.")] = 3,
    validation: Annotated[int, typer.Option(help="Validation samples for PoGQ.")] = 256,
    no_exact: Annotated[
        bool, typer.Option("--no-exact", help="Skip PoGQ's exact path (n·B forwards).")
    ] = False,
    no_components: Annotated[
        bool, typer.Option("--no-components", help="Time only the whole rules.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write bench_trust.csv/.md here.")
    ] = None,
) -> None:
    """Time the MATL trust engine (Mode 0, Mode 1 fast and exact, and each signal) against a plain
    mean and Krum (float32), and print the ratios."""
    from matl.experiments.bench_trust import bench_trust

    if n < 2 or d < 20:
        raise _fail(ConfigError(f"bench trust needs n >= 2 and d >= 20, got n={n}, d={d}"))
    try:
        with console.status("measuring…") as status:
            rows = bench_trust(
                n,
                d,
                repeats=repeats,
                validation=validation,
                exact=not no_exact,
                components=not no_components,
                progress=lambda msg: status.update(f"measuring {msg}…"),
            )
    except MATLError as exc:
        raise _fail(exc) from None
    header = ["step", "n", "d", "seconds", "× mean", "× krum"]
    cells = [
        [
            r.name,
            str(r.n),
            str(r.d),
            f"{r.seconds:.4f}",
            f"{r.ratio_to_mean:.1f}",
            f"{r.ratio_to_krum:.2f}",
        ]
        for r in rows
    ]
    records = [dataclasses.asdict(r) for r in rows]
    emit_table(
        "MATL trust engine vs a plain mean and Krum (float32)",
        header,
        cells,
        records,
        out,
        "bench_trust",
    )


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        n, d = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--shape expects n,d (e.g. 1000,100000), got {text!r}") from None
    if n < 1 or d < 1:
        raise ConfigError(f"--shape needs positive n and d, got {text!r}")
    return n, d


def _opt(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


from matl.cli_network import register_network_commands  # noqa: E402

register_network_commands(app, bench_app)


def main() -> None:  # pragma: no cover - console entry point
    app()
