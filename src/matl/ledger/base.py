"""The ledger's data model: :class:`LedgerEntry`, the :class:`Ledger` protocol and the hashing rules.

The validator's ledger is an append-only, hash-chained list of signed entries:

- every entry has a sequence number ``seq`` (0, 1, 2, ... without gaps);
- ``prev_hash`` is the previous entry's ``entry_hash`` (:data:`GENESIS_HASH` for entry 0);
- ``signature`` is the validator's Ed25519 signature of :meth:`LedgerEntry.signing_bytes`, which
  covers every field but the signature and the hash, ``seq`` and ``prev_hash`` included;
- ``entry_hash`` is ``sha256_hex(canonical_json(every field but entry_hash))``, so it also covers
  the signature.

Editing, deleting or re-ordering a row therefore breaks the chain at that row, and rewriting a row
consistently (new hash, relinked successors) needs the validator's private key.
:func:`matl.ledger.verify_ledger` checks all of it.

Every field is normalised when the entry is made (JSON values through a canonical-JSON round trip,
``score`` and ``timestamp`` to ``float`` with ``-0.0`` as ``0.0``), so an entry read back from any store hashes to the same
bytes as the one that was appended.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from matl.crypto import canonical_json, sha256_hex, verify_signature
from matl.errors import MATLError

__all__ = [
    "ENTRY_KINDS",
    "ENTRY_SIGNING_TYPE",
    "GENESIS_HASH",
    "VERDICT_LABELS",
    "CorruptLedgerError",
    "EntryKind",
    "InvalidEntryError",
    "Ledger",
    "LedgerEntry",
    "NodeRecord",
    "Signer",
    "make_entry",
]

#: What a ledger entry records: a durable submission, a verdict on one, or a round event.
EntryKind = Literal["submission", "verdict", "round"]
ENTRY_KINDS: tuple[str, ...] = get_args(EntryKind)

#: The verdict labels a ``"verdict"`` entry may carry (those of :class:`matl.protocol.Verdict`).
VERDICT_LABELS: tuple[str, ...] = ("accepted", "flagged", "rejected")

#: ``prev_hash`` of entry 0.
GENESIS_HASH = "0" * 64

#: Type tag inside the validator-signed bytes, so a ledger signature is never valid as another
#: message (receipts and verdicts carry their own tags, see :mod:`matl.protocol`).
ENTRY_SIGNING_TYPE = "matl.ledger.entry.v1"

#: Signs bytes with the validator's key (``Identity.sign``).
Signer = Callable[[bytes], bytes]


class InvalidEntryError(MATLError, ValueError):
    """An entry cannot be appended: a required field is missing or a value is malformed."""


class CorruptLedgerError(MATLError):
    """A stored entry cannot even be read back (e.g. its JSON column was overwritten).

    ``seq`` names the unreadable entry, so :func:`matl.ledger.verify_ledger` can report it.
    """

    def __init__(self, seq: int | None, message: str) -> None:
        super().__init__(message if seq is None else f"entry {seq}: {message}")
        self.seq = seq


def _normalise_json(value: Any, what: str) -> Any:
    """``value`` after a canonical-JSON round trip (tuples become lists, floats stay exact)."""
    try:
        return json.loads(canonical_json(value))
    except (TypeError, ValueError) as exc:
        raise InvalidEntryError(f"{what} is not JSON-serialisable: {exc}") from None


def _double(value: float) -> float:
    """``value`` as the double a SQL column returns: SQLite stores integral REALs as integers, so
    ``-0.0`` comes back as ``0.0``; adding ``0.0`` makes that change before hashing."""
    return float(value) + 0.0


@dataclass(frozen=True)
class LedgerEntry:
    """One signed, hash-chained ledger entry.

    Attributes
    ----------
    seq:
        Position in the ledger, 0-based and gap-free.
    kind:
        ``"submission"``, ``"verdict"`` or ``"round"``.
    round:
        The federated round the entry belongs to.
    node_id:
        The submitting node's ``did:key`` id (``None`` for round events).
    gradient_hash:
        SHA-256 hex of the submitted gradient (submissions and verdicts).
    nonce:
        The node's submission nonce (submissions).
    score:
        The trust score (verdicts).
    verdict:
        ``"accepted"``, ``"flagged"`` or ``"rejected"`` (verdicts).
    reasons:
        The verdict's machine-readable reasons.
    metadata:
        The submission's metadata exactly as the node signed it; free-form data for other kinds.
    timestamp:
        Unix seconds when the validator appended the entry (a receipt's ``received_at``).
    validator_id:
        The ``did:key`` id of the validator that signed the entry.
    node_signature:
        The node's hex signature of its :class:`matl.protocol.SubmissionHeader` (submissions).
    prev_hash:
        ``entry_hash`` of entry ``seq - 1`` (:data:`GENESIS_HASH` for entry 0).
    signature:
        The validator's hex Ed25519 signature of :meth:`signing_bytes`.
    entry_hash:
        :meth:`compute_hash` at append time.
    """

    seq: int
    kind: EntryKind
    round: int
    node_id: str | None
    gradient_hash: str | None
    nonce: str | None
    score: float | None
    verdict: str | None
    reasons: list[dict[str, Any]]
    metadata: dict[str, Any]
    timestamp: float
    validator_id: str
    node_signature: str | None
    prev_hash: str
    signature: str = ""
    entry_hash: str = ""

    def content(self) -> dict[str, Any]:
        """Every field but ``signature`` and ``entry_hash``, as JSON-able data."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "round": self.round,
            "node_id": self.node_id,
            "gradient_hash": self.gradient_hash,
            "nonce": self.nonce,
            "score": self.score,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "metadata": self.metadata,
            "timestamp": self.timestamp,
            "validator_id": self.validator_id,
            "node_signature": self.node_signature,
            "prev_hash": self.prev_hash,
        }

    def signing_bytes(self) -> bytes:
        """What the validator signs: :meth:`content` plus the :data:`ENTRY_SIGNING_TYPE` tag."""
        return canonical_json({"type": ENTRY_SIGNING_TYPE, **self.content()})

    def compute_hash(self) -> str:
        """``sha256_hex(canonical_json(every field but entry_hash))``."""
        return sha256_hex(canonical_json({**self.content(), "signature": self.signature}))

    def signature_valid(self) -> bool:
        """Whether ``signature`` is ``validator_id``'s signature of :meth:`signing_bytes`."""
        try:
            sig = bytes.fromhex(self.signature)
        except ValueError:
            return False
        return verify_signature(self.validator_id, self.signing_bytes(), sig)

    def to_json_dict(self) -> dict[str, Any]:
        """Every field as JSON-able data (for exports and the CLI)."""
        return {**self.content(), "signature": self.signature, "entry_hash": self.entry_hash}


def make_entry(
    kind: str,
    *,
    seq: int,
    prev_hash: str,
    round: int,
    validator_id: str,
    sign: Signer,
    timestamp: float,
    node_id: str | None = None,
    gradient_hash: str | None = None,
    nonce: str | None = None,
    score: float | None = None,
    verdict: str | None = None,
    reasons: Sequence[Mapping[str, Any]] = (),
    metadata: Mapping[str, Any] | None = None,
    node_signature: str | None = None,
) -> LedgerEntry:
    """Validate and normalise the fields, sign the entry with ``sign`` and hash it.

    Stores call this inside the transaction that fixed ``seq`` and ``prev_hash``.

    Raises
    ------
    InvalidEntryError
        A field the kind needs is missing, a value is malformed, or ``sign`` does not produce
        ``validator_id``'s signature (a validator configured with the wrong key would otherwise
        write a ledger nobody can verify).
    """
    if kind not in ENTRY_KINDS:
        raise InvalidEntryError(f"unknown entry kind {kind!r}; expected one of {ENTRY_KINDS}")
    required: dict[str, tuple[str, ...]] = {
        "submission": ("node_id", "gradient_hash", "nonce", "node_signature"),
        "verdict": ("node_id", "gradient_hash", "score", "verdict"),
        "round": (),
    }
    given = {
        "node_id": node_id,
        "gradient_hash": gradient_hash,
        "nonce": nonce,
        "node_signature": node_signature,
        "score": score,
        "verdict": verdict,
    }
    missing = [name for name in required[kind] if given[name] is None]
    if missing:
        raise InvalidEntryError(f"a {kind} entry needs {', '.join(missing)}")
    if verdict is not None and verdict not in VERDICT_LABELS:
        raise InvalidEntryError(f"verdict must be one of {VERDICT_LABELS}, got {verdict!r}")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise InvalidEntryError(f"round must be a non-negative int, got {round!r}")
    if score is not None and not math.isfinite(float(score)):
        raise InvalidEntryError(f"score must be finite, got {score!r}")
    if not math.isfinite(float(timestamp)):
        raise InvalidEntryError(f"timestamp must be finite, got {timestamp!r}")
    unsigned = LedgerEntry(
        seq=int(seq),
        kind=kind,  # type: ignore[arg-type]  # checked against ENTRY_KINDS above
        round=int(round),
        node_id=node_id,
        gradient_hash=gradient_hash,
        nonce=nonce,
        score=None if score is None else _double(score),
        verdict=verdict,
        reasons=_normalise_json([dict(r) for r in reasons], "reasons"),
        metadata=_normalise_json(dict(metadata or {}), "metadata"),
        timestamp=_double(timestamp),
        validator_id=validator_id,
        node_signature=node_signature,
        prev_hash=prev_hash,
    )
    signed = dataclasses.replace(unsigned, signature=sign(unsigned.signing_bytes()).hex())
    if not signed.signature_valid():
        raise InvalidEntryError(
            f"the signer did not produce a valid signature for validator {validator_id}; "
            "is the validator running with the key its id names?"
        )
    return dataclasses.replace(signed, entry_hash=signed.compute_hash())


@dataclass(frozen=True)
class NodeRecord:
    """A registered node: its id, raw public key (hex) and registration time (unix seconds)."""

    node_id: str
    public_key_hex: str
    registered_at: float


class Ledger(Protocol):
    """What the validator needs from a ledger store (see :class:`matl.ledger.SQLLedger`)."""

    def append(
        self,
        kind: EntryKind,
        *,
        round: int,
        sign: Signer,
        validator_id: str,
        node_id: str | None = None,
        gradient_hash: str | None = None,
        nonce: str | None = None,
        score: float | None = None,
        verdict: str | None = None,
        reasons: Sequence[Mapping[str, Any]] = (),
        metadata: Mapping[str, Any] | None = None,
        node_signature: str | None = None,
        timestamp: float | None = None,
    ) -> LedgerEntry:
        """Append one entry (seq, prev_hash, signature and hash fixed in one transaction).

        Durable when it returns.
        """
        ...

    def append_batch(self, items: Sequence[Mapping[str, Any]]) -> list[LedgerEntry]:
        """Append several entries (``kind`` plus :meth:`append`'s fields each) in one transaction."""
        ...

    def append_submission_with_payload(
        self,
        *,
        round: int,
        node_id: str,
        gradient_hash: str,
        nonce: str,
        node_signature: str,
        payload: bytes,
        sign: Signer,
        validator_id: str,
        metadata: Mapping[str, Any] | None = None,
        timestamp: float | None = None,
    ) -> LedgerEntry:
        """Store the payload and append its submission entry in one transaction."""
        ...

    def entries(self, start: int = 0) -> Iterator[LedgerEntry]:
        """Entries with ``seq >= start`` in sequence order."""
        ...

    def head(self) -> LedgerEntry | None:
        """The last entry, or ``None`` for an empty ledger."""
        ...

    def chain_head(self) -> tuple[int, str] | None:
        """``(seq, entry_hash)`` recorded by the last append, kept apart from the entries."""
        ...

    def find_submission(self, node_id: str, round: int) -> LedgerEntry | None:
        """The node's submission entry in ``round``, if any."""
        ...

    def submissions(self, round: int) -> list[LedgerEntry]:
        """The submission entries of ``round`` in sequence order."""
        ...

    def find_verdict(
        self, gradient_hash: str, node_id: str | None = None, round: int | None = None
    ) -> LedgerEntry | None:
        """The latest verdict entry on ``gradient_hash`` (matching ``node_id`` and ``round`` when
        given), if any."""
        ...

    def verdicts(self, round: int) -> list[LedgerEntry]:
        """The verdict entries of ``round`` in sequence order."""
        ...

    def add_node(self, node_id: str, public_key_hex: str, registered_at: float) -> NodeRecord:
        """Register a node (idempotent); returns the stored record."""
        ...

    def get_node(self, node_id: str) -> NodeRecord | None:
        """The node's record, if registered."""
        ...

    def nodes(self) -> list[NodeRecord]:
        """Every registered node, in registration order."""
        ...

    def put_payload(self, gradient_hash: str, round: int, node_id: str, data: bytes) -> None:
        """Store a submission's payload bytes."""
        ...

    def submissions_with_payloads(self, round: int) -> list[tuple[LedgerEntry, bytes]]:
        """``round``'s submission entries in sequence order, each with its payload."""
        ...

    def get_payload(self, gradient_hash: str) -> bytes | None:
        """A payload by its gradient hash, if stored."""
        ...

    def payloads(self, round: int) -> list[tuple[str, str, bytes]]:
        """``(node_id, gradient_hash, data)`` of ``round``'s payloads in the order stored."""
        ...

    def put_state(self, key: str, value: Mapping[str, Any]) -> None:
        """Store (or replace) a JSON object under ``key``."""
        ...

    def get_state(self, key: str) -> dict[str, Any] | None:
        """The JSON object stored under ``key``, if any."""
        ...

    def close(self) -> None:
        """Release the store's connections."""
        ...
