"""The network half of the ``matl`` command: keygen, serve, node, ledger verify, bench serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from matl.errors import MATLError

console = Console(emoji=False, highlight=False)
err_console = Console(stderr=True, emoji=False, highlight=False)
ledger_app = typer.Typer(help="Audit a validator's ledger.")


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


def keygen(
    path: Annotated[Path, typer.Argument(help="Where to write the private key (PEM, mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create an Ed25519 key and print its did:key node id."""
    from matl.crypto import Identity

    try:
        me = Identity.generate()
        me.save(path, overwrite=force)
    except MATLError as exc:
        raise _fail(exc) from None
    console.print(me.node_id)


def _identity(path: Path) -> Any:
    """Load the key at ``path``, creating it (mode 0600) on first use."""
    from matl.crypto import Identity

    if path.exists():
        return Identity.load(path)
    me = Identity.generate()
    me.save(path)
    err_console.print(f"created key {path}")
    return me


def serve(
    config: Annotated[
        Path | None, typer.Argument(help="Validator TOML config (optional).", show_default=False)
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set mode=1 --set dataset=mnist."),
    ] = None,
    transport: Annotated[str, typer.Option(help="http, grpc or ws.")] = "http",
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    ledger: Annotated[
        str, typer.Option(help="Ledger: a SQLite path or URL, or postgresql://...")
    ] = "matl-ledger.db",
    key: Annotated[Path, typer.Option(help="The validator's key (created if missing).")] = Path(
        "matl-validator.pem"
    ),
) -> None:
    """Start a validator with its ledger and serve it over one transport until interrupted."""
    from matl.experiments.config_io import apply_overrides, load_toml
    from matl.ledger import open_ledger
    from matl.server.run import TRANSPORTS, run_server
    from matl.server.service import ValidatorService
    from matl.validator import MATLValidator
    from matl.validator.config import load_validator_config

    if transport not in TRANSPORTS:
        raise _fail(ValueError(f"unknown transport {transport!r}; valid: {', '.join(TRANSPORTS)}"))
    try:
        raw = load_toml(config) if config is not None else {}
        cfg = load_validator_config(apply_overrides(raw, set_ or []))
        validator = MATLValidator(cfg, open_ledger(ledger), _identity(key))
    except MATLError as exc:
        raise _fail(exc) from None

    def ready(bound: int) -> None:
        # One line on stdout that scripts (and the crash test) can wait for.
        print(
            f"matl validator {validator.validator_id} serving {transport}://{host}:{bound}"
            f" (mode {cfg.mode}, round {validator.round}, ledger {ledger})",
            flush=True,
        )

    try:
        run_server(ValidatorService(validator), transport, host, port, ready=ready)
    except MATLError as exc:
        raise _fail(exc) from None


def node(
    url: Annotated[str, typer.Argument(help="Validator URL: http://, grpc:// or ws://host:port.")],
    shard: Annotated[int, typer.Option(help="This node's shard index.")],
    shards: Annotated[int, typer.Option(help="Number of shards (nodes) in the federation.")],
    key: Annotated[Path | None, typer.Option(help="Node key (created if missing).")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds to take part in.")] = 5,
    partition: Annotated[str, typer.Option(help="iid, dirichlet or shards.")] = "iid",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Partition and training seed.")] = 0,
    local_steps: Annotated[int, typer.Option(help="Local SGD steps per round.")] = 10,
    lr: Annotated[float, typer.Option(help="Local learning rate.")] = 0.05,
    flip: Annotated[
        float | None,
        typer.Option(help="Act Byzantine: send the update sign-flipped and scaled by this."),
    ] = None,
    validator_id: Annotated[
        str | None, typer.Option(help="Pin the validator's did:key id (else trust on first use).")
    ] = None,
) -> None:
    """Run one federated client: train on its shard, submit each round, check each verdict."""
    from matl.client import MATLClient
    from matl.node import NodeConfig, NodeRound, run_node

    def show(rec: NodeRound) -> None:
        v = rec.verdict
        console.print(
            f"node {shard}: round {rec.round} {v.verdict} (score {v.score:.3f}, "
            f"‖u‖ {rec.update_norm:.3f}, signature ok)"
        )

    try:
        identity = _identity(key or Path(f"matl-node-{shard}.pem"))
        cfg = NodeConfig(
            shard=shard,
            shards=shards,
            rounds=rounds,
            partition=partition,
            alpha=alpha,
            seed=seed,
            local_steps=local_steps,
            lr=lr,
            flip_scale=flip,
        )
        with MATLClient(url, identity, validator_id=validator_id) as client:
            run_node(client, cfg, show)
    except MATLError as exc:
        raise _fail(exc) from None


def ledger_verify(
    ledger: Annotated[str, typer.Argument(help="SQLite path or URL, or postgresql://...")],
) -> None:
    """Check the hash chain and every signature; name the first bad entry (exit 1 if any)."""
    from matl.ledger import verify_ledger_url

    try:
        report = verify_ledger_url(ledger)
    except MATLError as exc:
        raise _fail(exc) from None
    if report.ok:
        console.print(f"[green]{report}[/]")
        return
    err_console.print(f"[bold red]{report}[/]")
    raise typer.Exit(code=1)


def register_network_commands(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add the network commands to the ``matl`` app."""
    app.command()(keygen)
    app.command()(serve)
    app.command()(node)
    ledger_app.command("verify")(ledger_verify)
    app.add_typer(ledger_app, name="ledger")
    from matl.experiments.bench_serve import bench_serve_cmd

    bench_app.command("serve")(bench_serve_cmd)
