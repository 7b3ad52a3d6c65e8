""":class:`SQLLedger`: the ledger on SQLite (one file) or PostgreSQL, through SQLAlchemy Core.

Five tables:

``entries``   the hash chain (one row per :class:`~matl.ledger.base.LedgerEntry`; ``reasons`` and
              ``metadata`` as canonical-JSON text, ``score`` and ``timestamp`` as IEEE doubles,
              which both backends return bit for bit)
``head``      one row: ``(seq, entry_hash)`` of the last entry, updated in the append transaction
              (so a deleted tail is detected, and PostgreSQL appends lock this row)
``nodes``     registered nodes
``payloads``  submitted gradients (safetensors bytes)
``state``     a small JSON key-value store for the validator's own state

Durability and serialisation: every write commits before the method returns. SQLite runs in WAL
mode with ``synchronous=FULL`` and starts write transactions with ``BEGIN IMMEDIATE`` (so writers
in other processes queue on the file lock, up to a 30 s busy timeout); PostgreSQL appends take
``SELECT ... FOR UPDATE`` on the ``head`` row. Concurrent appenders therefore never fork the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, RowMapping

from matl.crypto import canonical_json
from matl.errors import ConfigError, ReplayError
from matl.ledger.base import (
    GENESIS_HASH,
    CorruptLedgerError,
    EntryKind,
    LedgerEntry,
    NodeRecord,
    Signer,
    make_entry,
)

__all__ = ["SUPPORTED_URLS", "SQLLedger", "open_ledger"]

#: How to name a ledger store (for error messages and ``--help`` texts).
SUPPORTED_URLS = "sqlite:///PATH, postgresql://USER@HOST:PORT/DB, or a bare file path (SQLite)"

#: Seconds a SQLite writer waits for another process's write transaction.
SQLITE_BUSY_TIMEOUT_S = 30.0

_PAGE = 512
_WRITE = "matl_ledger_write"
#: Key of the PostgreSQL advisory lock that serialises schema creation.
_PG_SCHEMA_LOCK = int.from_bytes(
    hashlib.sha256(b"matl.ledger.schema").digest()[:8], "big", signed=True
)

_meta = sa.MetaData()

#: The keyword fields of :meth:`SQLLedger.append` that default to ``None``.
_OPTIONAL_FIELDS = (
    "node_id",
    "gradient_hash",
    "nonce",
    "score",
    "verdict",
    "metadata",
    "node_signature",
)

_entries = sa.Table(
    "entries",
    _meta,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("round", sa.BigInteger, nullable=False),
    sa.Column("node_id", sa.Text),
    sa.Column("gradient_hash", sa.String(64)),
    sa.Column("nonce", sa.Text),
    sa.Column("score", sa.Double),
    sa.Column("verdict", sa.String(16)),
    sa.Column("reasons_json", sa.Text, nullable=False),
    sa.Column("metadata_json", sa.Text, nullable=False),
    sa.Column("timestamp", sa.Double, nullable=False),
    sa.Column("validator_id", sa.Text, nullable=False),
    sa.Column("node_signature", sa.Text),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
)
sa.Index(
    "ux_entries_submission",
    _entries.c.node_id,
    _entries.c.round,
    unique=True,
    sqlite_where=_entries.c.kind == "submission",
    postgresql_where=_entries.c.kind == "submission",
)
sa.Index("ix_entries_gradient_hash", _entries.c.gradient_hash)
sa.Index("ix_entries_kind_round", _entries.c.kind, _entries.c.round)

_head = sa.Table(
    "head",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
)

_nodes = sa.Table(
    "nodes",
    _meta,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("public_key_hex", sa.String(64), nullable=False),
    sa.Column("registered_at", sa.Double, nullable=False),
)

_payloads = sa.Table(
    "payloads",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("round", sa.BigInteger, nullable=False),
    sa.Column("node_id", sa.Text, nullable=False),
    sa.Column("gradient_hash", sa.String(64), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("round", "node_id", name="ux_payloads_round_node"),
)
sa.Index("ix_payloads_gradient_hash", _payloads.c.gradient_hash)

_state = sa.Table(
    "state",
    _meta,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value_json", sa.Text, nullable=False),
)


def _parse_url(url_or_path: str | os.PathLike[str]) -> sa.URL:
    """The SQLAlchemy URL of a ledger URL or bare SQLite path; :class:`ConfigError` if neither."""
    if isinstance(url_or_path, os.PathLike) or "://" not in str(url_or_path):
        text = os.fspath(url_or_path)
        if not text:
            raise ConfigError(f"empty ledger location; use {SUPPORTED_URLS}")
        return sa.URL.create("sqlite+pysqlite", database=text)
    text = str(url_or_path)
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError:
        raise ConfigError(f"cannot parse ledger URL {text!r}; use {SUPPORTED_URLS}") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return url.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return url.set(drivername="postgresql+psycopg")
    raise ConfigError(
        f"unsupported ledger URL scheme {url.drivername!r} in "
        f"{url.render_as_string(hide_password=True)!r}; supported: {SUPPORTED_URLS}"
    )


def _sqlite_engine(url: sa.URL, *, create: bool) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ConfigError(
            "the ledger must be durable: give SQLite a file path (sqlite:///PATH), "
            f"not {database or 'an in-memory database'!r}"
        )
    path = Path(database).expanduser()
    if not create and not path.is_file():
        raise ConfigError(f"no ledger at {path} (no such file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url.set(database=str(path)),
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module: _on_begin issues BEGIN itself.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"SQLite refused WAL mode for {path} (journal_mode={mode}); "
                    "put the ledger on a local file system"
                )
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the file's write lock up front, so two appenders (threads or processes)
        # never both read the same head; readers get a plain deferred (snapshot) transaction.
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _json_text(value: Any) -> str:
    return canonical_json(value).decode("utf-8")


def _entry_from_row(row: RowMapping) -> LedgerEntry:
    seq = int(row["seq"])
    try:
        return LedgerEntry(
            seq=seq,
            kind=row["kind"],
            round=int(row["round"]),
            node_id=row["node_id"],
            gradient_hash=row["gradient_hash"],
            nonce=row["nonce"],
            score=None if row["score"] is None else float(row["score"]),
            verdict=row["verdict"],
            reasons=json.loads(row["reasons_json"]),
            metadata=json.loads(row["metadata_json"]),
            timestamp=float(row["timestamp"]),
            validator_id=row["validator_id"],
            node_signature=row["node_signature"],
            prev_hash=row["prev_hash"],
            signature=row["signature"],
            entry_hash=row["entry_hash"],
        )
    except (TypeError, ValueError) as exc:
        raise CorruptLedgerError(seq, f"row unreadable ({exc})") from None


def _entry_row(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "kind": entry.kind,
        "round": entry.round,
        "node_id": entry.node_id,
        "gradient_hash": entry.gradient_hash,
        "nonce": entry.nonce,
        "score": entry.score,
        "verdict": entry.verdict,
        "reasons_json": _json_text(entry.reasons),
        "metadata_json": _json_text(entry.metadata),
        "timestamp": entry.timestamp,
        "validator_id": entry.validator_id,
        "node_signature": entry.node_signature,
        "prev_hash": entry.prev_hash,
        "signature": entry.signature,
        "entry_hash": entry.entry_hash,
    }


def _node_from_row(row: RowMapping) -> NodeRecord:
    return NodeRecord(
        node_id=row["node_id"],
        public_key_hex=row["public_key_hex"],
        registered_at=float(row["registered_at"]),
    )


class SQLLedger:
    """The validator's ledger in a SQL database (implements :class:`matl.ledger.Ledger`).

    Parameters
    ----------
    url:
        ``sqlite:///PATH`` (``sqlite:////abs/path`` for an absolute one), a bare file path (SQLite),
        or ``postgresql://USER[:PASSWORD]@HOST:PORT/DB`` (driven by psycopg 3). Several processes
        may open the same store.
    create:
        Create the file and tables if missing (the default). With ``False`` (auditing an existing
        ledger) a missing file or missing tables raise :class:`ConfigError`.

    Raises
    ------
    ConfigError
        The URL's scheme is not supported, SQLite was given no file, the database cannot be
        opened, or (``create=False``) there is no ledger there.

    Examples
    --------
    >>> from matl.crypto import Identity
    >>> me = Identity.from_seed(bytes(32))
    >>> with SQLLedger(tmp / "ledger.db") as ledger:  # doctest: +SKIP
    ...     e = ledger.append("round", round=0, sign=me.sign, validator_id=me.node_id)
    """

    def __init__(self, url: str | os.PathLike[str], *, create: bool = True) -> None:
        sa_url = _parse_url(url)
        self.url: str = sa_url.render_as_string(hide_password=True)
        self.dialect: str = sa_url.get_backend_name()
        if self.dialect == "sqlite":
            self._engine = _sqlite_engine(sa_url, create=create)
        else:
            self._engine = sa.create_engine(sa_url, pool_pre_ping=True)
        self._write_lock = threading.Lock()
        try:
            if create:
                self._create_schema()
            else:
                self._check_schema()
        except sa.exc.DBAPIError as exc:
            self._engine.dispose()
            raise ConfigError(f"cannot open ledger {self.url}: {exc.orig}") from exc
        except ConfigError:
            self._engine.dispose()
            raise

    # -- connections ------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction, committed on exit (rolled back on an exception)."""
        with self._write_lock, self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn

    def _create_schema(self) -> None:
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
            _meta.create_all(conn)
            if conn.execute(sa.select(_head.c.id)).first() is None:
                conn.execute(_head.insert().values(id=1, seq=-1, entry_hash=GENESIS_HASH))

    def _check_schema(self) -> None:
        with self._read() as conn:
            present = set(sa.inspect(conn).get_table_names())
        missing = sorted(set(_meta.tables) - present)
        if missing:
            raise ConfigError(f"no ledger at {self.url} (missing tables: {', '.join(missing)})")

    def close(self) -> None:
        """Release every pooled connection (the data is already durable)."""
        self._engine.dispose()

    def __enter__(self) -> SQLLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLLedger({self.url!r})"

    # -- the chain ----------------------------------------------------------------------------

    def _append_in(
        self, conn: Connection, kind: str, fields: dict[str, Any], timestamp: float | None
    ) -> LedgerEntry:
        """Append inside ``conn``'s write transaction, which holds the append lock."""
        head = conn.execute(
            sa.select(_head.c.seq, _head.c.entry_hash).where(_head.c.id == 1).with_for_update()
        ).one()
        if kind == "submission":
            existing = conn.execute(
                sa.select(_entries.c.seq).where(
                    _entries.c.kind == "submission",
                    _entries.c.node_id == fields["node_id"],
                    _entries.c.round == fields["round"],
                )
            ).first()
            if existing is not None:
                raise ReplayError(
                    f"node {fields['node_id']} already submitted in round {fields['round']} "
                    f"(ledger entry {existing.seq})"
                )
        entry = make_entry(
            kind,
            seq=int(head.seq) + 1,
            prev_hash=head.entry_hash,
            timestamp=time.time() if timestamp is None else timestamp,
            **fields,
        )
        conn.execute(_entries.insert().values(**_entry_row(entry)))
        conn.execute(
            _head.update().where(_head.c.id == 1).values(seq=entry.seq, entry_hash=entry.entry_hash)
        )
        return entry

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
        """Append one entry; ``seq``, ``prev_hash``, signature and hash are fixed in one transaction.

        Parameters
        ----------
        kind:
            ``"submission"`` (needs node_id, gradient_hash, nonce, node_signature; ``metadata`` is
            the node's signed metadata), ``"verdict"`` (needs node_id, gradient_hash, score,
            verdict) or ``"round"``.
        sign:
            The validator's signing function (``Identity.sign``), called once with
            :meth:`LedgerEntry.signing_bytes`.
        timestamp:
            Unix seconds; the current time when ``None``.

        Returns
        -------
        LedgerEntry
            The entry as stored; it is committed (durable) when this returns.

        Raises
        ------
        ReplayError
            A submission entry for ``(node_id, round)`` exists already.
        InvalidEntryError
            A required field is missing or malformed, or ``sign`` is not ``validator_id``'s key.
        """
        fields = {
            "round": round,
            "sign": sign,
            "validator_id": validator_id,
            "node_id": node_id,
            "gradient_hash": gradient_hash,
            "nonce": nonce,
            "score": score,
            "verdict": verdict,
            "reasons": reasons,
            "metadata": metadata,
            "node_signature": node_signature,
        }
        try:
            with self._write() as conn:
                return self._append_in(conn, kind, fields, timestamp)
        except sa.exc.IntegrityError as exc:
            raise ReplayError(
                f"node {node_id} already submitted in round {round} ({exc.orig})"
            ) from exc

    def append_batch(self, items: Sequence[Mapping[str, Any]]) -> list[LedgerEntry]:
        """Append several entries in one transaction (all or none are stored).

        Each item holds :meth:`append`'s arguments: ``kind`` plus its keyword fields. One commit
        (one fsync) for a whole round's verdicts instead of one per entry.
        """
        out: list[LedgerEntry] = []
        try:
            with self._write() as conn:
                for item in items:
                    fields = dict(item)
                    kind = fields.pop("kind")
                    timestamp = fields.pop("timestamp", None)
                    for name in _OPTIONAL_FIELDS:
                        fields.setdefault(name, None)
                    fields.setdefault("reasons", ())
                    out.append(self._append_in(conn, kind, fields, timestamp))
        except sa.exc.IntegrityError as exc:
            raise ReplayError(f"a submission in the batch is a duplicate ({exc.orig})") from exc
        return out

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
        """Store ``payload`` and append its submission entry in one transaction.

        Once this returns both are durable; if it raises, neither was stored.

        Raises
        ------
        ReplayError
            ``(node_id, round)`` already has a submission or a payload.
        """
        fields = {
            "round": round,
            "sign": sign,
            "validator_id": validator_id,
            "node_id": node_id,
            "gradient_hash": gradient_hash,
            "nonce": nonce,
            "metadata": metadata,
            "node_signature": node_signature,
        }
        try:
            with self._write() as conn:
                entry = self._append_in(conn, "submission", fields, timestamp)
                conn.execute(
                    _payloads.insert().values(
                        round=round, node_id=node_id, gradient_hash=gradient_hash, data=payload
                    )
                )
                return entry
        except sa.exc.IntegrityError as exc:
            raise ReplayError(
                f"node {node_id} already submitted in round {round} ({exc.orig})"
            ) from exc

    def entries(self, start: int = 0) -> Iterator[LedgerEntry]:
        """Entries with ``seq >= start`` in sequence order (read in pages, no connection held).

        Raises
        ------
        CorruptLedgerError
            A row cannot be decoded (names its ``seq``).
        """
        cursor = start
        while True:
            with self._read() as conn:
                rows = (
                    conn.execute(
                        sa.select(_entries)
                        .where(_entries.c.seq >= cursor)
                        .order_by(_entries.c.seq)
                        .limit(_PAGE)
                    )
                    .mappings()
                    .all()
                )
            for row in rows:
                yield _entry_from_row(row)
            if len(rows) < _PAGE:
                return
            cursor = int(rows[-1]["seq"]) + 1

    def _select_entries(self, query: sa.Select[Any]) -> list[LedgerEntry]:
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [_entry_from_row(row) for row in rows]

    def head(self) -> LedgerEntry | None:
        """The entry with the highest ``seq``, or ``None`` for an empty ledger."""
        found = self._select_entries(sa.select(_entries).order_by(_entries.c.seq.desc()).limit(1))
        return found[0] if found else None

    def chain_head(self) -> tuple[int, str] | None:
        """``(seq, entry_hash)`` the last append recorded in the ``head`` table (``None``: empty)."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(_head.c.seq, _head.c.entry_hash).where(_head.c.id == 1)
            ).first()
        if row is None or row.seq < 0:
            return None
        return int(row.seq), str(row.entry_hash)

    def find_submission(self, node_id: str, round: int) -> LedgerEntry | None:
        """The submission entry of ``node_id`` in ``round``, if any."""
        found = self._select_entries(
            sa.select(_entries).where(
                _entries.c.kind == "submission",
                _entries.c.node_id == node_id,
                _entries.c.round == round,
            )
        )
        return found[0] if found else None

    def submissions(self, round: int) -> list[LedgerEntry]:
        """The submission entries of ``round`` in sequence order."""
        return self._select_entries(
            sa.select(_entries)
            .where(_entries.c.kind == "submission", _entries.c.round == round)
            .order_by(_entries.c.seq)
        )

    def find_verdict(
        self, gradient_hash: str, node_id: str | None = None, round: int | None = None
    ) -> LedgerEntry | None:
        """The latest verdict entry on ``gradient_hash`` (also matching ``node_id`` and ``round``
        when given), if any."""
        query = sa.select(_entries).where(
            _entries.c.kind == "verdict", _entries.c.gradient_hash == gradient_hash
        )
        if node_id is not None:
            query = query.where(_entries.c.node_id == node_id)
        if round is not None:
            query = query.where(_entries.c.round == round)
        found = self._select_entries(query.order_by(_entries.c.seq.desc()).limit(1))
        return found[0] if found else None

    def verdicts(self, round: int) -> list[LedgerEntry]:
        """The verdict entries of ``round`` in sequence order."""
        return self._select_entries(
            sa.select(_entries)
            .where(_entries.c.kind == "verdict", _entries.c.round == round)
            .order_by(_entries.c.seq)
        )

    # -- nodes ---------------------------------------------------------------------------------

    def add_node(self, node_id: str, public_key_hex: str, registered_at: float) -> NodeRecord:
        """Register a node; a second registration of the same id keeps the first record.

        Returns
        -------
        NodeRecord
            The stored record (the earlier one if the node was registered already).
        """
        values = {
            "node_id": node_id,
            "public_key_hex": public_key_hex,
            "registered_at": float(registered_at),
        }
        with self._write() as conn:
            if self.dialect == "sqlite":
                conn.execute(
                    sqlite_dialect.insert(_nodes).values(**values).on_conflict_do_nothing()
                )
            else:
                conn.execute(pg_dialect.insert(_nodes).values(**values).on_conflict_do_nothing())
            row = (
                conn.execute(sa.select(_nodes).where(_nodes.c.node_id == node_id)).mappings().one()
            )
        return _node_from_row(row)

    def get_node(self, node_id: str) -> NodeRecord | None:
        """The node's record, or ``None`` if it never registered."""
        with self._read() as conn:
            row = (
                conn.execute(sa.select(_nodes).where(_nodes.c.node_id == node_id))
                .mappings()
                .first()
            )
        return None if row is None else _node_from_row(row)

    def nodes(self) -> list[NodeRecord]:
        """Every registered node, by registration time."""
        with self._read() as conn:
            rows = (
                conn.execute(sa.select(_nodes).order_by(_nodes.c.registered_at, _nodes.c.node_id))
                .mappings()
                .all()
            )
        return [_node_from_row(row) for row in rows]

    # -- payloads ------------------------------------------------------------------------------

    def put_payload(self, gradient_hash: str, round: int, node_id: str, data: bytes) -> None:
        """Store a payload (use :meth:`append_submission_with_payload` to log it atomically).

        Raises
        ------
        ReplayError
            ``(node_id, round)`` has a payload already.
        """
        try:
            with self._write() as conn:
                conn.execute(
                    _payloads.insert().values(
                        round=round, node_id=node_id, gradient_hash=gradient_hash, data=data
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise ReplayError(
                f"node {node_id} already has a payload in round {round} ({exc.orig})"
            ) from exc

    def submissions_with_payloads(self, round: int) -> list[tuple[LedgerEntry, bytes]]:
        """``round``'s submission entries in sequence order, each with its stored payload.

        Submissions without a stored payload are left out.
        """
        query = (
            sa.select(_entries, _payloads.c.data.label("payload_data"))
            .join(
                _payloads,
                sa.and_(
                    _payloads.c.round == _entries.c.round,
                    _payloads.c.node_id == _entries.c.node_id,
                ),
            )
            .where(_entries.c.kind == "submission", _entries.c.round == round)
            .order_by(_entries.c.seq)
        )
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [(_entry_from_row(row), bytes(row["payload_data"])) for row in rows]

    def get_payload(self, gradient_hash: str) -> bytes | None:
        """The payload with this gradient hash (the first stored), or ``None``."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(_payloads.c.data)
                .where(_payloads.c.gradient_hash == gradient_hash)
                .order_by(_payloads.c.id)
                .limit(1)
            ).first()
        return None if row is None else bytes(row.data)

    def payloads(self, round: int) -> list[tuple[str, str, bytes]]:
        """``(node_id, gradient_hash, data)`` of every payload of ``round``, in the order stored."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_payloads.c.node_id, _payloads.c.gradient_hash, _payloads.c.data)
                .where(_payloads.c.round == round)
                .order_by(_payloads.c.id)
            ).all()
        return [(str(r.node_id), str(r.gradient_hash), bytes(r.data)) for r in rows]

    # -- state ---------------------------------------------------------------------------------

    def put_state(self, key: str, value: Mapping[str, Any]) -> None:
        """Store ``value`` (a JSON object) under ``key``, replacing what was there; durable."""
        text = _json_text(dict(value))
        with self._write() as conn:
            if self.dialect == "sqlite":
                stmt_lite = sqlite_dialect.insert(_state).values(key=key, value_json=text)
                conn.execute(
                    stmt_lite.on_conflict_do_update(
                        index_elements=[_state.c.key],
                        set_={"value_json": stmt_lite.excluded.value_json},
                    )
                )
            else:
                stmt_pg = pg_dialect.insert(_state).values(key=key, value_json=text)
                conn.execute(
                    stmt_pg.on_conflict_do_update(
                        index_elements=[_state.c.key],
                        set_={"value_json": stmt_pg.excluded.value_json},
                    )
                )

    def get_state(self, key: str) -> dict[str, Any] | None:
        """The JSON object stored under ``key``, or ``None``."""
        with self._read() as conn:
            row = conn.execute(sa.select(_state.c.value_json).where(_state.c.key == key)).first()
        if row is None:
            return None
        value = json.loads(row.value_json)
        if not isinstance(value, dict):
            raise CorruptLedgerError(None, f"state {key!r} is not a JSON object")
        return value


def open_ledger(url_or_path: str | os.PathLike[str], *, create: bool = True) -> SQLLedger:
    """Open the ledger at a URL or bare SQLite file path (created if missing unless ``create``
    is ``False``).

    See :class:`SQLLedger` for the accepted forms.
    """
    return SQLLedger(url_or_path, create=create)
