"""``matl keygen`` and ``matl serve`` argument errors (the servers are tested in tests/server)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from matl.cli import app
from matl.crypto import Identity

runner = CliRunner()


def test_keygen_writes_a_private_key_and_prints_its_id(tmp_path: Path) -> None:
    path = tmp_path / "node.pem"
    res = runner.invoke(app, ["keygen", str(path)])
    assert res.exit_code == 0
    assert res.output.strip() == Identity.load(path).node_id
    again = runner.invoke(app, ["keygen", str(path)])
    assert again.exit_code == 2 and "exists" in again.output
    assert runner.invoke(app, ["keygen", str(path), "--force"]).exit_code == 0


def test_serve_refuses_bad_config_and_transport(tmp_path: Path) -> None:
    ledger = str(tmp_path / "l.db")
    key = str(tmp_path / "v.pem")
    bad_key = runner.invoke(app, ["serve", "--set", "dimm=4", "--ledger", ledger, "--key", key])
    assert bad_key.exit_code == 2 and "unknown validator key" in bad_key.output
    bad_t = runner.invoke(app, ["serve", "--transport", "smtp", "--set", "dim=4"])
    assert bad_t.exit_code == 2 and "unknown transport" in bad_t.output


def test_ledger_verify_refuses_a_missing_ledger(tmp_path: Path) -> None:
    res = runner.invoke(app, ["ledger", "verify", str(tmp_path / "none.db")])
    assert res.exit_code == 2
