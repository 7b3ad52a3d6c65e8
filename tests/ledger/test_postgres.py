"""SQLLedger on a real, throwaway PostgreSQL cluster (see ``postgres_url`` in conftest.py).

The tests of test_sql.py that take ``ledger_url`` run on PostgreSQL as well; here is the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from matl.crypto import Identity
from matl.errors import ConfigError
from matl.ledger import LedgerEntry, open_ledger, verify_ledger, verify_ledger_url

Fill = Callable[..., list[LedgerEntry]]
RawSQL = Callable[..., list[Any]]


def test_round_trip_hashes_reproduce(
    pg_url: str,
    fill: Fill,
    validator: Identity,
    nodes: list[Identity],
    awkward_floats: list[float],
) -> None:
    with open_ledger(pg_url) as ledger:
        assert ledger.dialect == "postgresql"
        written = fill(ledger, rounds=1)
        for i, x in enumerate(awkward_floats):
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
        assert [e.score for e in read[-len(awkward_floats) :]] == awkward_floats
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


def test_unreachable_server_and_missing_tables(pg_url: str, postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="missing tables"):
        verify_ledger_url(pg_url)  # a fresh database holds no ledger, and auditing creates none
    dead = postgres_url.rsplit(":", 1)[0] + ":1/postgres"
    with pytest.raises(ConfigError, match="cannot open ledger postgresql\\+psycopg://postgres@"):
        open_ledger(dead)
