"""SQLLedger on a real, throwaway PostgreSQL cluster (see ``postgres_url`` in conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from matl.crypto import Identity
from matl.errors import ConfigError, ReplayError
from matl.ledger import LedgerEntry, SQLLedger, open_ledger, verify_ledger, verify_ledger_url

Fill = Callable[..., list[LedgerEntry]]
RawSQL = Callable[..., list[Any]]
Submit = Callable[..., LedgerEntry]


AWKWARD_FLOATS = [0.1 + 0.2, 1 / 3, 5e-324, 1e-300, -0.0, 1e16, 2.0**53 + 2, 1.7976931348623157e308]


def test_round_trip_hashes_reproduce(
    pg_url: str, fill: Fill, validator: Identity, nodes: list[Identity]
) -> None:
    with open_ledger(pg_url) as ledger:
        assert ledger.dialect == "postgresql"
        written = fill(ledger, rounds=1)
        for i, x in enumerate(AWKWARD_FLOATS):
            written.append(
                ledger.append(
                    "verdict",
                    round=0,
                    node_id=nodes[0].node_id,
                    gradient_hash="f" * 64,
                    score=x,
                    verdict="accepted",
                    reasons=[{"value": x, "note": "ünïcødé ✓"}],
                    timestamp=1_700_000_000.123456789 + i,
                    sign=validator.sign,
                    validator_id=validator.node_id,
                )
            )
    with open_ledger(pg_url) as reopened:
        read = list(reopened.entries())
        assert read == written
        for entry in read:
            assert entry.compute_hash() == entry.entry_hash, entry
        assert [e.score for e in read[-len(AWKWARD_FLOATS) :]] == AWKWARD_FLOATS
        assert verify_ledger(reopened, validator_id=validator.node_id).ok
        sub = reopened.find_submission(nodes[2].node_id, 0)
        assert sub == written[2]
        assert [v.seq for v in reopened.verdicts(0)] == [3, 4, 5, *range(7, 15)]
        assert [e for e, _ in reopened.submissions_with_payloads(0)] == written[:3]
        assert sub is not None and sub.gradient_hash is not None
        assert reopened.get_payload(sub.gradient_hash) == reopened.payloads(0)[2][2]


def test_tampered_score_and_deleted_row_are_named(pg_url: str, fill: Fill, raw_sql: RawSQL) -> None:
    with open_ledger(pg_url) as ledger:
        fill(ledger)
    raw_sql(pg_url, "UPDATE entries SET score = 0.5 WHERE seq = 11")
    report = verify_ledger_url(pg_url)
    assert (report.ok, report.first_bad_seq) == (False, 11)
    assert report.reason == "entry 11: hash mismatch (row edited?)"
    raw_sql(pg_url, "DELETE FROM entries WHERE seq = 6")
    report = verify_ledger_url(pg_url)
    assert report.reason == "entry 6: missing (seq gap)" and report.checked == 6


def test_concurrent_appenders_keep_one_chain(pg_url: str, validator: Identity) -> None:
    """Six writers with their own connections: the head row lock serialises them."""
    writers, per_writer = 6, 10
    ledgers = [open_ledger(pg_url) for _ in range(writers)]
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
    report = verify_ledger_url(pg_url, validator_id=validator.node_id)
    assert report.ok and report.checked == writers * per_writer, report


def test_unique_node_round(
    pg_url: str, validator: Identity, nodes: list[Identity], submit: Submit
) -> None:
    with open_ledger(pg_url) as ledger:
        submit(ledger, validator, nodes[0], 3)
        with pytest.raises(ReplayError, match="already submitted in round 3"):
            submit(ledger, validator, nodes[0], 3)
        assert [e.seq for e in ledger.entries()] == [0]
        assert len(ledger.payloads(3)) == 1


def test_nodes_and_state_persist_across_reopen(pg_url: str, nodes: list[Identity]) -> None:
    with open_ledger(pg_url) as ledger:
        ledger.add_node(nodes[0].node_id, nodes[0].public_key.hex(), 5.0)
        ledger.put_state("validator", {"round": 1})
        ledger.put_state("validator", {"round": 2, "theta": [0.1 + 0.2]})
    # postgres:// is accepted as an alias of postgresql://
    with open_ledger(pg_url.replace("postgresql://", "postgres://")) as reopened:
        assert reopened.get_state("validator") == {"round": 2, "theta": [0.1 + 0.2]}
        assert [n.node_id for n in reopened.nodes()] == [nodes[0].node_id]


def test_unreachable_server_and_missing_tables(pg_url: str, postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="missing tables"):
        verify_ledger_url(pg_url)  # a fresh database holds no ledger, and auditing creates none
    dead = postgres_url.rsplit(":", 1)[0] + ":1/postgres"
    with pytest.raises(ConfigError, match="cannot open ledger postgresql\\+psycopg://postgres@"):
        open_ledger(dead)
