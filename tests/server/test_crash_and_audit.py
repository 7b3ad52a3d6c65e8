"""Durability and audit against a real ``matl serve`` process and a real SQLite ledger.

* Crash test: SIGKILL the validator while clients submit over HTTP; after a restart every
  submission that had been acknowledged (a signed receipt returned) is in the ledger.
* Tamper test: edit a row of the database by hand; ``matl ledger verify`` names that entry.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from matl.cli import app
from matl.client import MATLClient
from matl.crypto import Identity
from matl.errors import MATLError
from matl.ledger import open_ledger, verify_ledger
from matl.protocol import Receipt

DIM = 2000


def _serve(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "matl", "serve", "--transport", "http", "--port", "0",
        "--ledger", str(tmp / "ledger.db"), "--key", str(tmp / "validator.pem"),
        "--set", f"dim={DIM}", "--set", "round_size=1000",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving" in line, proc.stderr.read() if proc.stderr else line
    return proc, line.split("serving ", 1)[1].split(" ", 1)[0]


def test_kill_mid_round_loses_no_acknowledged_submission(tmp_path: Path) -> None:
    proc, url = _serve(tmp_path)
    acked: list[Receipt] = []
    lock = threading.Lock()
    enough = threading.Event()

    def submitter(worker: int) -> None:
        rng = np.random.default_rng(worker)
        for _ in range(50):
            try:
                with MATLClient(url, Identity.generate(), retries=0, timeout=5) as client:
                    receipt = client.submit_gradient(rng.normal(size=DIM).astype(np.float32))
            except MATLError:
                return  # the server is gone
            with lock:
                acked.append(receipt)
                if len(acked) >= 30:
                    enough.set()

    threads = [threading.Thread(target=submitter, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(60), "the clients never got 30 receipts"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for t in threads:
            t.join(30)
    assert len(acked) >= 30

    restarted, url = _serve(tmp_path)  # recovery runs on start-up
    try:
        with MATLClient(url) as client:
            info = client.round()
            assert info.round == 0 and info.submissions >= len(acked)
    finally:
        restarted.terminate()
        restarted.wait(10)
    ledger = open_ledger(tmp_path / "ledger.db")
    stored = {
        (e.node_id, e.gradient_hash, e.seq) for e in ledger.entries() if e.kind == "submission"
    }
    missing = [r for r in acked if (r.node_id, r.gradient_hash, r.sequence) not in stored]
    assert not missing, f"{len(missing)} acknowledged submissions lost"
    assert verify_ledger(ledger).ok


def test_ledger_verify_names_an_edited_row(tmp_path: Path) -> None:
    from matl.protocol import Submission
    from matl.validator import MATLValidator, ValidatorConfig

    db = tmp_path / "ledger.db"
    v = MATLValidator(ValidatorConfig(dim=10, round_size=3), open_ledger(db), Identity.generate())
    nodes = [Identity.generate() for _ in range(3)]
    base = np.random.default_rng(0).normal(size=10)
    for i, node in enumerate(nodes):
        v.register(node.public_key)
        grad = base + np.random.default_rng(i).normal(scale=0.5, size=10)
        v.submit(Submission.create(node, grad, round=0))
    v.ledger.close()
    runner = CliRunner()
    ok = runner.invoke(app, ["ledger", "verify", str(db)])
    assert ok.exit_code == 0 and "ledger OK" in ok.output
    verdict_seq = 4  # entries 0-2 are the submissions, 3-5 the verdicts
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE entries SET score = 0.99 WHERE seq = ?", (verdict_seq,))
    bad = runner.invoke(app, ["ledger", "verify", str(db)])
    assert bad.exit_code == 1
    assert f"entry {verdict_seq}" in bad.output and "hash mismatch" in bad.output
