"""SQLLedger on real SQLite files: round trips, side tables, serialised appends, URL handling.

The tests that take ``ledger_url`` run on PostgreSQL too (conftest.py); test_postgres.py holds what
only PostgreSQL needs.
"""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from matl.crypto import Identity
from matl.errors import ConfigError, ReplayError
from matl.ledger import (
    GENESIS_HASH,
    InvalidEntryError,
    LedgerEntry,
    SQLLedger,
    open_ledger,
    verify_ledger,
    verify_ledger_url,
)
from matl.ledger import sql as ledger_sql


def test_append_read_round_trip(
    sqlite_url: str,
    fill: Fill,
    validator: Identity,
    nodes: list[Identity],
    awkward_floats: list[float],
) -> None:
    with open_ledger(sqlite_url) as ledger:
        written = fill(ledger, rounds=2)
        extra = [
            ledger.append(
                "verdict",
                round=1,
                node_id=nodes[0].node_id,
                gradient_hash="f" * 64,
                score=x,
                verdict="accepted",
                reasons=[{"value": x, "note": "ünïcødé ✓", "nested": {"t": (1, 2)}}],
                timestamp=1_700_000_000 + x if abs(x) < 1e6 else x,
                sign=validator.sign,
                validator_id=validator.node_id,
            )
            for x in awkward_floats
        ]
        written += extra
        assert [e.seq for e in written] == list(range(len(written)))
        assert written[0].prev_hash == GENESIS_HASH
        assert all(b.prev_hash == a.entry_hash for a, b in itertools.pairwise(written))
        assert extra[0].reasons[0]["nested"]["t"] == [1, 2]  # normalised like the JSON it becomes
        assert list(ledger.entries()) == written
        assert list(ledger.entries(start=5)) == written[5:]
    with open_ledger(Path(sqlite_url.removeprefix("sqlite:///"))) as reopened:
        read = list(reopened.entries())
        assert read == written
        for e in read:
            assert e.compute_hash() == e.entry_hash and e.signature_valid(), e
        assert [e.score for e in read[-len(awkward_floats) :]] == awkward_floats
        assert str(read[-4].score) == "0.0"  # a column double has no negative zero on SQLite
        assert str(read[-4].reasons[0]["value"]) == "-0.0"  # JSON text keeps it
        assert verify_ledger(reopened, validator_id=validator.node_id).ok


def test_queries(sqlite_url: str, fill: Fill, nodes: list[Identity]) -> None:
    with open_ledger(sqlite_url) as ledger:
        assert ledger.head() is None and ledger.chain_head() is None
        written = fill(ledger, rounds=2)
        assert ledger.head() == written[-1]
        assert ledger.chain_head() == (written[-1].seq, written[-1].entry_hash)

        sub = ledger.find_submission(nodes[1].node_id, 1)
        assert sub is not None and sub.kind == "submission" and sub.round == 1
        assert sub.metadata == {"samples": 33, "loss": 0.1 + 0.2}
        assert ledger.find_submission(nodes[1].node_id, 7) is None
        assert [e.node_id for e in ledger.submissions(0)] == [n.node_id for n in nodes]

        verdict = ledger.find_verdict(sub.gradient_hash or "")
        assert verdict is not None and verdict.verdict == "flagged" and verdict.score == 0.25
        assert ledger.find_verdict(sub.gradient_hash or "", nodes[1].node_id, 1) == verdict
        assert ledger.find_verdict(sub.gradient_hash or "", nodes[1].node_id, 0) is None
        assert ledger.find_verdict("0" * 64) is None
        assert [v.verdict for v in ledger.verdicts(0)] == ["accepted", "flagged", "rejected"]
        assert ledger.verdicts(5) == []

        pairs = ledger.submissions_with_payloads(1)
        assert [e for e, _ in pairs] == ledger.submissions(1)
        stored = ledger.payloads(1)
        assert [(n, h) for n, h, _ in stored] == [(e.node_id, e.gradient_hash) for e, _ in pairs]
        assert [d for _, _, d in stored] == [p for _, p in pairs]
        assert ledger.get_payload(sub.gradient_hash or "") == pairs[1][1]
        assert ledger.get_payload("0" * 64) is None


def test_append_checks_fields_and_signer(
    sqlite_url: str, validator: Identity, nodes: list[Identity]
) -> None:
    with open_ledger(sqlite_url) as ledger:
        common: dict[str, Any] = {"sign": validator.sign, "validator_id": validator.node_id}
        with pytest.raises(InvalidEntryError, match="needs gradient_hash, nonce, node_signature"):
            ledger.append("submission", round=0, node_id=nodes[0].node_id, **common)
        with pytest.raises(InvalidEntryError, match="unknown entry kind"):
            ledger.append("vote", round=0, **common)  # type: ignore[arg-type]
        verdict: dict[str, Any] = {"round": 0, "node_id": "n", "gradient_hash": "a" * 64, **common}
        with pytest.raises(InvalidEntryError, match="verdict must be one of"):
            ledger.append("verdict", score=1.0, verdict="maybe", **verdict)
        with pytest.raises(InvalidEntryError, match="score must be finite"):
            ledger.append("verdict", score=float("nan"), verdict="accepted", **verdict)
        with pytest.raises(InvalidEntryError, match="not JSON-serialisable"):
            ledger.append("round", round=0, metadata={"x": object()}, **common)
        with pytest.raises(InvalidEntryError, match="did not produce a valid signature"):
            ledger.append("round", round=0, sign=nodes[0].sign, validator_id=validator.node_id)
        assert ledger.head() is None  # nothing half-written


def test_unique_node_round(
    ledger_url: str, validator: Identity, nodes: list[Identity], submit: Submit
) -> None:
    with open_ledger(ledger_url) as ledger:
        first = submit(ledger, validator, nodes[0], 0)
        with pytest.raises(ReplayError, match=r"already submitted in round 0 \(ledger entry 0\)"):
            submit(ledger, validator, nodes[0], 0, metadata={"other": 1})
        submit(ledger, validator, nodes[0], 1)  # a new round is fine
        # A stray payload for (node, round) makes the combined write fail as a whole.
        ledger.put_payload("e" * 64, 2, nodes[1].node_id, b"stray")
        with pytest.raises(ReplayError, match="already submitted in round 2"):
            submit(ledger, validator, nodes[1], 2)
        assert ledger.find_submission(nodes[1].node_id, 2) is None
        assert [e.seq for e in ledger.entries()] == [0, 1]
        with pytest.raises(ReplayError, match="already has a payload"):
            ledger.put_payload("d" * 64, 0, nodes[0].node_id, b"again")
        assert ledger.payloads(0) == [
            (nodes[0].node_id, first.gradient_hash, ledger.payloads(0)[0][2])
        ]
        assert verify_ledger(ledger).ok


def test_nodes_and_state_persist_across_reopen(ledger_url: str, nodes: list[Identity]) -> None:
    with open_ledger(ledger_url) as ledger:
        assert ledger.get_state("validator") is None
        for i, node in enumerate(nodes):
            rec = ledger.add_node(node.node_id, node.public_key.hex(), 100.0 + i)
            assert rec.registered_at == 100.0 + i
        again = ledger.add_node(nodes[0].node_id, nodes[0].public_key.hex(), 999.0)
        assert again.registered_at == 100.0  # idempotent: the first registration stays
        ledger.put_state("validator", {"round": 1, "theta": [0.1 + 0.2, 1e-300]})
        ledger.put_state("validator", {"round": 2, "theta": [0.1 + 0.2, 1e-300], "ok": True})
        ledger.put_state("other", {"x": "y"})
    # postgres:// is accepted as an alias of postgresql://
    with open_ledger(ledger_url.replace("postgresql://", "postgres://")) as reopened:
        assert [n.node_id for n in reopened.nodes()] == [n.node_id for n in nodes]
        found = reopened.get_node(nodes[2].node_id)
        assert found is not None and found.public_key_hex == nodes[2].public_key.hex()
        assert reopened.get_node("did:key:zNobody") is None
        assert reopened.get_state("validator") == {
            "round": 2,
            "theta": [0.1 + 0.2, 1e-300],
            "ok": True,
        }
        assert reopened.get_state("other") == {"x": "y"}


def test_sqlite_runs_in_wal_with_full_sync(sqlite_url: str, fill: Fill) -> None:
    with open_ledger(sqlite_url) as ledger:
        fill(ledger, rounds=1)
        with ledger._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        path = sqlite_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            # committed and visible to an independent connection
            assert raw.execute("SELECT count(*) FROM entries").fetchone()[0] == 7


def test_concurrent_appends_from_threads_keep_one_chain(
    ledger_url: str, validator: Identity
) -> None:
    """Writers, each with its own SQLLedger (own connections), append at once; on PostgreSQL the
    head row lock serialises them (and each append costs a round trip there: fewer writers)."""
    writers, per_writer = (8, 12) if ledger_url.startswith("sqlite") else (6, 10)
    ledgers = [open_ledger(ledger_url) for _ in range(writers)]
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def work(ledger: SQLLedger, w: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                ledger.append(
                    "round",
                    round=i,
                    metadata={"writer": w},
                    sign=validator.sign,
                    validator_id=validator.node_id,
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(lg, w)) for w, lg in enumerate(ledgers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lg in ledgers:
        lg.close()
    assert errors == []
    report = verify_ledger_url(ledger_url, validator_id=validator.node_id)
    assert report.ok, report
    assert report.checked == writers * per_writer


def test_concurrent_appends_from_two_processes(tmp_path: Path, validator: Identity) -> None:
    path = tmp_path / "shared.db"
    open_ledger(path).close()  # both children open an existing ledger
    script = textwrap.dedent(
        """
        import sys
        from matl.crypto import Identity
        from matl.ledger import open_ledger
        v = Identity.from_seed(b"v" * 32)
        with open_ledger(sys.argv[1]) as ledger:
            for i in range(25):
                ledger.append("round", round=i, metadata={"pid": sys.argv[2]}, sign=v.sign,
                              validator_id=v.node_id)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), str(k)], stderr=subprocess.PIPE)
        for k in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    report = verify_ledger_url(path, validator_id=validator.node_id)
    assert report.ok and report.checked == 50, report
    with open_ledger(path) as ledger:
        writers = {e.metadata["pid"] for e in ledger.entries()}
    assert writers == {"0", "1"}


Fill = Callable[..., list[LedgerEntry]]
Submit = Callable[..., LedgerEntry]


def test_entries_pages_through_long_ledgers(
    sqlite_url: str, validator: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_sql, "_PAGE", 4)  # small pages, so a short ledger spans several
    with open_ledger(sqlite_url) as ledger:
        for i in range(10):
            ledger.append("round", round=i, sign=validator.sign, validator_id=validator.node_id)
        assert [e.seq for e in ledger.entries()] == list(range(10))
        assert [e.seq for e in ledger.entries(start=3)] == list(range(3, 10))
        assert [e.seq for e in ledger.entries(start=8)] == [8, 9]
        assert list(ledger.entries(start=10)) == []


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://user@localhost/db", r"unsupported ledger URL scheme 'mysql'.*sqlite:///PATH"),
        ("postgresql+psycopg2://u@h/db", "unsupported ledger URL scheme 'postgresql\\+psycopg2'"),
        ("sqlite://", "must be durable"),
        ("sqlite:///:memory:", "must be durable"),
        ("", "empty ledger location"),
    ],
)
def test_bad_urls_raise_config_error(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_ledger(url)


def test_secrets_stay_out_of_the_url_and_errors() -> None:
    with pytest.raises(ConfigError) as info:
        open_ledger("mysql://user:hunter2@localhost/db")
    assert "hunter2" not in str(info.value)


def test_bare_path_creates_parent_dirs_and_audit_never_creates(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "ledger.db"
    with open_ledger(str(target)) as ledger:
        assert ledger.dialect == "sqlite" and target.is_file()
        assert repr(ledger).startswith("SQLLedger('sqlite+pysqlite:///")
    with pytest.raises(ConfigError, match="no ledger at"):
        verify_ledger_url(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ConfigError, match="missing tables: entries, head, nodes, payloads, state"):
        verify_ledger_url(tmp_path / "other.db")
    (tmp_path / "junk.db").write_bytes(b"this is not a database file" * 100)
    with pytest.raises(ConfigError, match="cannot open ledger"):
        open_ledger(tmp_path / "junk.db")


def test_entry_json_dict_has_every_field(sqlite_url: str, fill: Fill) -> None:
    with open_ledger(sqlite_url) as ledger:
        entry = fill(ledger, rounds=1)[0]
    data = entry.to_json_dict()
    assert set(data) == {f.name for f in dataclasses.fields(entry)}
    assert data["entry_hash"] == entry.entry_hash and data["kind"] == "submission"


def test_append_batch_is_one_transaction(
    sqlite_url: str, validator: Identity, nodes: list[Identity], submit: Submit
) -> None:
    with open_ledger(sqlite_url) as ledger:
        sub = submit(ledger, validator, nodes[0], 0)
        verdict = {
            "kind": "verdict",
            "round": 0,
            "node_id": sub.node_id,
            "gradient_hash": sub.gradient_hash,
            "score": 0.75,
            "verdict": "accepted",
            "sign": validator.sign,
            "validator_id": validator.node_id,
        }
        closing = {"kind": "round", "round": 0, "sign": validator.sign}
        with pytest.raises(TypeError):  # the round entry lacks validator_id: nothing is stored
            ledger.append_batch([verdict, closing])
        assert [e.seq for e in ledger.entries()] == [0]
        entries = ledger.append_batch([verdict, {**closing, "validator_id": validator.node_id}])
        assert [e.seq for e in entries] == [1, 2] and [e.kind for e in entries] == [
            "verdict",
            "round",
        ]
        assert verify_ledger(ledger).ok
