"""The validator's signed, hash-chained, append-only ledger.

Every submission the validator acknowledges, every verdict it issues and every round event is an
entry signed by the validator and chained to the previous one by hash, stored durably (SQLite file
or PostgreSQL) before the validator answers. :func:`verify_ledger` audits a ledger offline::

    from matl.ledger import open_ledger, verify_ledger_url

    ledger = open_ledger("sqlite:///validator/ledger.db")
    entry = ledger.append("round", round=0, sign=identity.sign, validator_id=identity.node_id)
    print(verify_ledger_url("sqlite:///validator/ledger.db"))  # ledger OK: 1 entries verified ...
"""

from __future__ import annotations

from matl.ledger.base import (
    ENTRY_KINDS,
    GENESIS_HASH,
    CorruptLedgerError,
    EntryKind,
    InvalidEntryError,
    Ledger,
    LedgerEntry,
    NodeRecord,
    Signer,
    make_entry,
)
from matl.ledger.sql import SUPPORTED_URLS, SQLLedger, open_ledger
from matl.ledger.verify import VerifyReport, verify_ledger, verify_ledger_url

__all__ = [
    "ENTRY_KINDS",
    "GENESIS_HASH",
    "SUPPORTED_URLS",
    "CorruptLedgerError",
    "EntryKind",
    "InvalidEntryError",
    "Ledger",
    "LedgerEntry",
    "NodeRecord",
    "SQLLedger",
    "Signer",
    "VerifyReport",
    "make_entry",
    "open_ledger",
    "verify_ledger",
    "verify_ledger_url",
]
