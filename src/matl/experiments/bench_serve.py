"""``matl bench serve``: concurrent clients against a real validator process.

A validator is started as a separate process (``matl serve``, SQLite ledger, the transport under
test) on 127.0.0.1. ``clients`` asyncio clients (:class:`~matl.client.AsyncMATLClient`) each
submit one update per round, all at once; the round closes when the last one is in
(``round_size = clients``), and each client then fetches its signed verdict and checks the
signature. Per submission we time

* **receipt latency**: submit called → signed receipt in hand (the submission is durable);
* **verdict latency**: submit called → signed verdict in hand. It includes waiting for the other
  clients' submissions and the round's scoring, so it is the latency a client actually sees.

Throughput is submissions per second of wall time over all rounds. Updates are an MNIST MLP's
size (784-128-10: 101,770 parameters, the issue's 10⁵), a shared direction plus noise.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

__all__ = ["ServeBenchRow", "bench_serve", "bench_serve_cmd"]


@dataclass(frozen=True)
class ServeBenchRow:
    """One transport × mode measurement."""

    transport: str
    mode: int
    clients: int
    rounds: int
    dim: int
    submissions_per_s: float
    receipt_p50_ms: float
    receipt_p99_ms: float
    verdict_p50_ms: float
    verdict_p99_ms: float
    accepted_fraction: float


def _start_validator(
    workdir: Path, transport: str, mode: int, clients: int, hidden: int
) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "matl", "serve",
        "--transport", transport, "--port", "0",
        "--ledger", str(workdir / f"ledger-{transport}-{mode}.db"),
        "--key", str(workdir / "validator.pem"),
        "--set", f"mode={mode}", "--set", "dataset=mnist", "--set", "model=mlp",
        "--set", f"hidden={hidden}", "--set", f"round_size={clients}",
        "--set", "validation_samples=500",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"the validator did not start: {line!r}")
    url = line.split("serving ", 1)[1].split(" ", 1)[0]
    return proc, url


async def _one_client(
    url: str, updates: list[np.ndarray], start: asyncio.Event, out: list[tuple[float, float, str]]
) -> None:
    from matl.client import AsyncMATLClient

    async with AsyncMATLClient(url, timeout=120.0) as client:
        await client.register()
        for rnd, update in enumerate(updates):
            await start.wait() if rnd == 0 else None
            t0 = time.perf_counter()
            receipt = await client.submit_gradient(update, round=rnd)
            t1 = time.perf_counter()
            verdict = await client.wait_for_verdict(receipt.gradient_hash, timeout=300, poll=0.02)
            t2 = time.perf_counter()
            out.append((t1 - t0, t2 - t0, verdict.verdict))


async def _drive(url: str, clients: int, rounds: int, dim: int, seed: int) -> tuple[float, Any]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(scale=1e-3, size=dim).astype(np.float32)
    updates = [
        [direction + rng.normal(scale=5e-4, size=dim).astype(np.float32) for _ in range(rounds)]
        for _ in range(clients)
    ]
    start = asyncio.Event()
    out: list[tuple[float, float, str]] = []
    tasks = [asyncio.create_task(_one_client(url, u, start, out)) for u in updates]
    await asyncio.sleep(0.5)  # let every client connect and register first
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0, out


def bench_serve(
    transports: tuple[str, ...] = ("http", "grpc"),
    modes: tuple[int, ...] = (0, 1),
    *,
    clients: int = 100,
    rounds: int = 3,
    hidden: int = 128,
    seed: int = 0,
) -> list[ServeBenchRow]:
    """Measure every transport × mode; see the module docstring."""
    dim = 784 * hidden + hidden + hidden * 10 + 10
    rows = []
    with tempfile.TemporaryDirectory(prefix="matl-bench-serve-") as tmp:
        for transport in transports:
            for mode in modes:
                proc, url = _start_validator(Path(tmp), transport, mode, clients, hidden)
                try:
                    wall, out = asyncio.run(_drive(url, clients, rounds, dim, seed))
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                receipt = np.array([o[0] for o in out]) * 1e3
                verdict = np.array([o[1] for o in out]) * 1e3
                rows.append(
                    ServeBenchRow(
                        transport=transport,
                        mode=mode,
                        clients=clients,
                        rounds=rounds,
                        dim=dim,
                        submissions_per_s=len(out) / wall,
                        receipt_p50_ms=float(np.percentile(receipt, 50)),
                        receipt_p99_ms=float(np.percentile(receipt, 99)),
                        verdict_p50_ms=float(np.percentile(verdict, 50)),
                        verdict_p99_ms=float(np.percentile(verdict, 99)),
                        accepted_fraction=float(np.mean([o[2] == "accepted" for o in out])),
                    )
                )
    return rows


def bench_serve_cmd(
    transport: Annotated[
        list[str] | None, typer.Option(help="Transports to measure (repeatable).")
    ] = None,
    mode: Annotated[list[int] | None, typer.Option(help="Modes to measure (repeatable).")] = None,
    clients: Annotated[int, typer.Option(help="Concurrent clients (= round size).")] = 100,
    rounds: Annotated[int, typer.Option(help="Rounds per measurement.")] = 3,
    hidden: Annotated[int, typer.Option(help="MLP hidden width (128 → 101,770 params).")] = 128,
    out: Annotated[Path | None, typer.Option(help="Write bench_serve.md and .csv here.")] = None,
) -> None:
    """Concurrent clients submitting 10⁵-parameter updates to a real validator process:
    submissions/s and p50/p99 submit→receipt and submit→signed-verdict latency."""
    from matl.experiments.report_io import emit_table

    rows = bench_serve(
        tuple(transport or ["http", "grpc"]),
        tuple(mode or [0, 1]),
        clients=clients,
        rounds=rounds,
        hidden=hidden,
    )
    header = [
        "transport", "mode", "clients", "params", "subm/s",
        "receipt p50 ms", "receipt p99 ms", "verdict p50 ms", "verdict p99 ms", "accepted",
    ]  # fmt: skip
    cells = [
        [
            r.transport,
            str(r.mode),
            str(r.clients),
            f"{r.dim:,}",
            f"{r.submissions_per_s:.1f}",
            f"{r.receipt_p50_ms:.0f}",
            f"{r.receipt_p99_ms:.0f}",
            f"{r.verdict_p50_ms:.0f}",
            f"{r.verdict_p99_ms:.0f}",
            f"{100 * r.accepted_fraction:.0f}%",
        ]
        for r in rows
    ]
    import dataclasses

    emit_table(
        f"{clients} concurrent clients, {rounds} rounds, validator in its own process",
        header,
        cells,
        [dataclasses.asdict(r) for r in rows],
        out,
        "bench_serve",
    )
