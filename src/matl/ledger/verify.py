"""Offline audit of a ledger: :func:`verify_ledger` and :func:`verify_ledger_url`.

The audit walks the chain from entry 0 and stops at the first entry that fails one of these
checks, in this order:

1. the entry exists (``seq`` continues without a gap);
2. its ``entry_hash`` recomputes from its fields (otherwise the row was edited);
3. its ``prev_hash`` is the previous entry's ``entry_hash`` (the genesis hash for entry 0);
4. it is signed by the expected validator (when one is named) and the validator's signature of
   :meth:`~matl.ledger.base.LedgerEntry.signing_bytes` verifies;
5. for a submission, the node's signature of its :class:`~matl.protocol.SubmissionHeader`
   (node id, round, nonce, gradient hash, metadata) verifies against the node id.

Finally the last entry is compared with the ``(seq, entry_hash)`` the store recorded at its last
append, which catches a deleted tail. Only public keys are needed: anyone holding a copy of the
ledger can run it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import ValidationError

from matl.crypto import verify_signature
from matl.ledger.base import GENESIS_HASH, CorruptLedgerError, Ledger, LedgerEntry
from matl.ledger.sql import open_ledger

__all__ = ["VerifyReport", "verify_ledger", "verify_ledger_url"]


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_ledger`.

    Attributes
    ----------
    ok:
        Whether every entry verified.
    checked:
        How many entries, from entry 0 on, passed their checks before the audit ended (all of them
        when ``ok``; normally those before the bad one).
    first_bad_seq:
        ``seq`` of the first bad (or missing) entry; ``None`` when ``ok``.
    reason:
        What is wrong with it, e.g. ``"entry 7: hash mismatch (row edited?)"``; ``None`` when
        ``ok``.
    head_hash:
        ``entry_hash`` of the last verified entry (``None`` if none), a compact fingerprint of
        the verified ledger that an auditor can publish or compare.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None

    def __str__(self) -> str:
        if self.ok:
            if self.checked == 0:
                return "ledger OK: empty"
            return (
                f"ledger OK: {self.checked} entries verified "
                f"(entries 0-{self.checked - 1}, head hash {self.head_hash})"
            )
        verified = f"entries 0-{self.checked - 1} verified" if self.checked else "none verified"
        return f"ledger INVALID: {self.reason}; {verified}"


def _node_signature_problem(entry: LedgerEntry) -> str | None:
    # matl.protocol imports matl.wire, which imports torch: load it only when a submission is seen.
    from matl.protocol import SubmissionHeader

    if not entry.node_signature:
        return "node signature missing"
    try:
        header = SubmissionHeader(
            node_id=entry.node_id or "",
            round=entry.round,
            nonce=entry.nonce or "",
            gradient_hash=entry.gradient_hash or "",
            metadata=entry.metadata,
        )
        signature = bytes.fromhex(entry.node_signature)
    except (ValidationError, ValueError) as exc:
        return f"node signature invalid (malformed submission: {exc.__class__.__name__})"
    if not verify_signature(header.node_id, header.signing_bytes(), signature):
        return "node signature invalid"
    return None


def _entry_problem(entry: LedgerEntry, prev_hash: str, validator_id: str | None) -> str | None:
    """What is wrong with ``entry`` (``None`` if nothing), checked in the module's order."""
    if entry.compute_hash() != entry.entry_hash:
        return "hash mismatch (row edited?)"
    if entry.prev_hash != prev_hash:
        if entry.seq == 0:
            return "prev_hash is not the genesis hash"
        return f"prev_hash does not link to entry {entry.seq - 1}"
    if validator_id is not None and entry.validator_id != validator_id:
        return f"signed by {entry.validator_id}, not by the expected validator {validator_id}"
    if not entry.signature_valid():
        return "validator signature invalid"
    if entry.kind == "submission":
        return _node_signature_problem(entry)
    return None


def verify_ledger(ledger: Ledger, *, validator_id: str | None = None) -> VerifyReport:
    """Check the whole chain of ``ledger`` and name the first bad entry.

    Parameters
    ----------
    ledger:
        Any :class:`~matl.ledger.base.Ledger` (e.g. an open :class:`~matl.ledger.SQLLedger`).
        Safe while a validator keeps appending: entries appended during the audit are checked
        too, and the head comparison uses the head recorded before the walk.
    validator_id:
        When given, every entry must be signed by this validator (otherwise any valid signature
        is accepted, so a ledger rewritten with another key would pass).

    Returns
    -------
    VerifyReport
        ``ok`` with the number of entries, or the first bad ``seq`` and the reason.
    """
    recorded = ledger.chain_head()  # read first: everything up to it was committed before the walk
    prev_hash = GENESIS_HASH
    expected = 0
    hash_at_recorded: str | None = None

    def bad(seq: int | None, reason: str) -> VerifyReport:
        head = None if expected == 0 else prev_hash
        return VerifyReport(False, expected, first_bad_seq=seq, reason=reason, head_hash=head)

    try:
        for entry in ledger.entries():
            if entry.seq != expected:
                if entry.seq > expected:
                    return bad(expected, f"entry {expected}: missing (seq gap)")
                return bad(entry.seq, f"entry {entry.seq}: out of order after entry {expected - 1}")
            problem = _entry_problem(entry, prev_hash, validator_id)
            if problem is not None:
                return bad(entry.seq, f"entry {entry.seq}: {problem}")
            if recorded is not None and entry.seq == recorded[0]:
                hash_at_recorded = entry.entry_hash
            prev_hash = entry.entry_hash
            expected += 1
    except CorruptLedgerError as exc:
        return bad(exc.seq, str(exc))

    if recorded is None:
        if expected > 0:
            return bad(0, "entry 0: present, but the store recorded no append (rows inserted?)")
    else:
        head_seq, head_hash = recorded
        if expected <= head_seq:
            return bad(
                expected,
                f"entry {expected}: missing (the ledger ends at entry {expected - 1}, "
                f"but the last append recorded entry {head_seq})",
            )
        if hash_at_recorded != head_hash:
            return bad(head_seq, f"entry {head_seq}: does not match the hash its append recorded")
    return VerifyReport(True, expected, head_hash=prev_hash if expected else None)


def verify_ledger_url(
    url: str | os.PathLike[str], *, validator_id: str | None = None
) -> VerifyReport:
    """Open the existing ledger at ``url``, verify it and close it.

    Raises
    ------
    ConfigError
        The URL is not supported or there is no ledger there (it is never created).
    """
    ledger = open_ledger(url, create=False)
    try:
        return verify_ledger(ledger, validator_id=validator_id)
    finally:
        ledger.close()
