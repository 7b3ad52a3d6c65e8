"""verify_ledger names the first bad entry of a tampered SQLite ledger, and passes a good one.

The chain ``fill`` writes (two rounds) is: 0-2 submissions, 3-5 verdicts, 6 round; 7-9
submissions, 10-12 verdicts, 13 round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from matl.crypto import Identity
from matl.ledger import (
    LedgerEntry,
    SQLLedger,
    VerifyReport,
    open_ledger,
    verify_ledger,
    verify_ledger_url,
)

Fill = Callable[..., list[LedgerEntry]]
RawSQL = Callable[..., list[Any]]
Submit = Callable[..., LedgerEntry]
Forge = Callable[..., LedgerEntry]
Rewrite = Callable[[str, LedgerEntry], None]
RewriteChain = Callable[..., None]


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[SQLLedger]:
    with open_ledger(sqlite_url) as opened:
        yield opened


Tamper = Callable[..., VerifyReport]


@pytest.fixture
def tamper(ledger: SQLLedger, sqlite_url: str, fill: Fill, raw_sql: RawSQL) -> Tamper:
    """``tamper(statement, rounds=2, **params)``: fill the ledger, run the SQL ``statement`` on its
    database past the ledger, and return what :func:`verify_ledger` reports then."""

    def _tamper(statement: str, rounds: int = 2, **params: Any) -> VerifyReport:
        fill(ledger, rounds=rounds)
        raw_sql(sqlite_url, statement, **params)
        return verify_ledger(ledger)

    return _tamper


@pytest.fixture
def rewrite_chain(
    sqlite_url: str, raw_sql: RawSQL, forge: Forge, rewrite_row: Rewrite
) -> RewriteChain:
    """``rewrite_chain(entries, *, signer=None, edits=None)``: what an attacker with write access
    does to a run of stored entries. Each entry, changed by ``edits[entry.seq]`` if given, is
    forged (linked to the forged one before it, re-signed by ``signer`` if given, re-hashed) and
    written back; the recorded head then points at the last one."""

    def _rewrite(
        entries: list[LedgerEntry],
        *,
        signer: Identity | None = None,
        edits: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        prev = entries[0].prev_hash
        for entry in entries:
            changes = (edits or {}).get(entry.seq, {})
            forged = forge(entry, prev_hash=prev, signer=signer, **changes)
            rewrite_row(sqlite_url, forged)
            prev = forged.entry_hash
        raw_sql(sqlite_url, "UPDATE head SET entry_hash = :h", h=prev)

    return _rewrite


def _bad(report: VerifyReport, seq: int, reason: str) -> None:
    assert not report.ok
    assert report.first_bad_seq == seq
    assert report.reason == f"entry {seq}: {reason}"
    assert report.checked == seq


def test_good_and_empty_ledgers_verify(ledger: SQLLedger, fill: Fill, validator: Identity) -> None:
    empty = verify_ledger(ledger)
    assert empty.ok and empty.checked == 0 and str(empty) == "ledger OK: empty"
    written = fill(ledger)
    report = verify_ledger(ledger, validator_id=validator.node_id)
    assert report == VerifyReport(True, 14, head_hash=written[-1].entry_hash)
    assert (
        str(report)
        == f"ledger OK: 14 entries verified (entries 0-13, head hash {written[-1].entry_hash})"
    )


def test_updated_score_is_a_hash_mismatch(
    ledger: SQLLedger, sqlite_url: str, fill: Fill, raw_sql: RawSQL
) -> None:
    written = fill(ledger)
    raw_sql(sqlite_url, "UPDATE entries SET score = 0.99 WHERE seq = 10")
    report = verify_ledger_url(sqlite_url)
    _bad(report, 10, "hash mismatch (row edited?)")
    assert report.head_hash == written[9].entry_hash
    assert str(report) == (
        "ledger INVALID: entry 10: hash mismatch (row edited?); entries 0-9 verified"
    )


def test_rehashed_row_breaks_the_next_link(
    ledger: SQLLedger,
    sqlite_url: str,
    fill: Fill,
    validator: Identity,
    forge: Forge,
    rewrite_row: Rewrite,
) -> None:
    written = fill(ledger)
    # entry 5, validly signed and hashed, but chained to something other than entry 4
    rewrite_row(sqlite_url, forge(written[5], prev_hash="ab" * 32, signer=validator))
    _bad(verify_ledger(ledger), 5, "prev_hash does not link to entry 4")


def test_rehashed_edit_fails_the_signature(
    ledger: SQLLedger, sqlite_url: str, fill: Fill, forge: Forge, rewrite_row: Rewrite
) -> None:
    written = fill(ledger)
    rewrite_row(sqlite_url, forge(written[4], score=1.0))  # hash fixed, no key to sign
    _bad(verify_ledger(ledger), 4, "validator signature invalid")


def test_relinked_chain_without_the_key_fails_the_signature(
    ledger: SQLLedger, fill: Fill, rewrite_chain: RewriteChain
) -> None:
    written = fill(ledger)
    # the attacker re-hashes and re-links everything after the edit
    rewrite_chain(written[4:], edits={4: {"score": 1.0}})
    _bad(verify_ledger(ledger), 4, "validator signature invalid")


def test_chain_resigned_by_another_key_fails_only_a_pinned_audit(
    ledger: SQLLedger, fill: Fill, validator: Identity, rewrite_chain: RewriteChain
) -> None:
    mallory = Identity.from_seed(b"m" * 32)
    rewrite_chain(fill(ledger, rounds=1), signer=mallory)
    assert verify_ledger(ledger).ok  # every signature is valid, just not the validator's
    report = verify_ledger(ledger, validator_id=validator.node_id)
    _bad(
        report, 0, f"signed by {mallory.node_id}, not by the expected validator {validator.node_id}"
    )
    assert str(report).endswith("; none verified")


def test_deleted_row_is_a_seq_gap(tamper: Tamper) -> None:
    _bad(tamper("DELETE FROM entries WHERE seq = 3"), 3, "missing (seq gap)")


def test_deleted_tail_is_detected_by_the_recorded_head(tamper: Tamper) -> None:
    _bad(
        tamper("DELETE FROM entries WHERE seq >= 12"),
        12,
        "missing (the ledger ends at entry 11, but the last append recorded entry 13)",
    )


def test_recorded_head_must_match(tamper: Tamper) -> None:
    report = tamper("UPDATE head SET entry_hash = :h", h="ab" * 32)
    assert not report.ok and report.first_bad_seq == 13 and report.checked == 14
    assert report.reason == "entry 13: does not match the hash its append recorded"


def test_node_signature_by_another_key_is_invalid(
    ledger: SQLLedger, validator: Identity, nodes: list[Identity], submit: Submit
) -> None:
    submit(ledger, validator, nodes[0], 0)
    submit(ledger, validator, nodes[1], 0, signer=nodes[2])  # node 2 signed node 1's header
    _bad(verify_ledger(ledger), 1, "node signature invalid")


def test_validator_cannot_rewrite_what_a_node_signed(
    ledger: SQLLedger, fill: Fill, validator: Identity, rewrite_chain: RewriteChain
) -> None:
    """Even with the validator's key, editing a submission's metadata breaks the node signature."""
    edits = {1: {"metadata": {"samples": 10_000}}}
    rewrite_chain(fill(ledger, rounds=1), signer=validator, edits=edits)
    _bad(verify_ledger(ledger, validator_id=validator.node_id), 1, "node signature invalid")


def test_missing_node_signature(
    ledger: SQLLedger,
    sqlite_url: str,
    fill: Fill,
    raw_sql: RawSQL,
    validator: Identity,
    forge: Forge,
    rewrite_row: Rewrite,
) -> None:
    written = fill(ledger, rounds=1)
    forged = forge(written[2], prev_hash=written[1].entry_hash, signer=validator, node_signature="")
    rewrite_row(sqlite_url, forged)
    raw_sql(sqlite_url, "DELETE FROM entries WHERE seq > 2")
    raw_sql(sqlite_url, "UPDATE head SET seq = 2, entry_hash = :h", h=forged.entry_hash)
    _bad(verify_ledger(ledger), 2, "node signature missing")


def test_unreadable_row_is_named(tamper: Tamper) -> None:
    report = tamper("UPDATE entries SET reasons_json = '{not json' WHERE seq = 4")
    assert not report.ok and report.first_bad_seq == 4 and report.checked == 4
    assert report.reason is not None and report.reason.startswith("entry 4: row unreadable")


def test_rows_written_past_the_ledger_are_flagged(tamper: Tamper) -> None:
    report = tamper("UPDATE head SET seq = -1, entry_hash = :h", rounds=1, h="0" * 64)
    assert not report.ok and report.first_bad_seq == 0
    assert report.reason == "entry 0: present, but the store recorded no append (rows inserted?)"
