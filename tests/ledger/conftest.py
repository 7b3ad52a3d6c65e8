"""Fixtures of the ledger tests: identities, a filled chain, raw SQL access, and PostgreSQL.

``postgres_url`` is ``$MATL_TEST_POSTGRES_URL`` when set (``.ci/run`` starts a PostgreSQL server and
sets it); otherwise it starts a throwaway cluster for the session (DESIGN §7): ``initdb`` and
``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` run as the ``postgres`` user in a temporary directory
it owns, listening on a free port of 127.0.0.1 only. Without those binaries the PostgreSQL tests
skip, unless the ``CI`` environment variable is set: then they fail, so CI cannot silently lose them.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa

from matl.crypto import Identity, sha256_hex
from matl.ledger import LedgerEntry, SQLLedger
from matl.protocol import SubmissionHeader

# ------------------------------------------------------------------------------- identities


@pytest.fixture(scope="session")
def validator() -> Identity:
    """The validator whose key signs every entry."""
    return Identity.from_seed(b"v" * 32)


@pytest.fixture(scope="session")
def nodes() -> list[Identity]:
    """Three nodes that submit gradients."""
    return [Identity.from_seed(bytes([i + 1]) * 32) for i in range(3)]


# ------------------------------------------------------------------------------- the chain


@pytest.fixture(scope="session")
def awkward_floats() -> list[float]:
    """Floats whose decimal forms are long, tiny, negative-zero or huge: all must hash identically
    after a trip through the database."""
    return [0.1 + 0.2, 1 / 3, 5e-324, 1e-300, -0.0, 1e16, 2.0**53 + 2, 1.7976931348623157e308]


Fill = Callable[..., list[LedgerEntry]]


def _submit(
    ledger: SQLLedger,
    validator: Identity,
    node: Identity,
    round: int,
    *,
    metadata: dict[str, Any] | None = None,
    signer: Identity | None = None,
) -> LedgerEntry:
    """Append ``node``'s submission in ``round`` (signed by ``signer``, default the node)."""
    payload = f"gradient of {node.node_id[-6:]} in round {round}".encode()
    header = SubmissionHeader(
        node_id=node.node_id,
        round=round,
        nonce=f"nonce-{round}-{node.node_id[-4:]}",
        gradient_hash=sha256_hex(payload),
        metadata=metadata or {"samples": 32 + round, "loss": 0.1 + 0.2},
    )
    return ledger.append_submission_with_payload(
        round=round,
        node_id=header.node_id,
        gradient_hash=header.gradient_hash,
        nonce=header.nonce,
        metadata=header.metadata,
        node_signature=(signer or node).sign(header.signing_bytes()).hex(),
        payload=payload,
        sign=validator.sign,
        validator_id=validator.node_id,
    )


@pytest.fixture
def fill(validator: Identity, nodes: list[Identity]) -> Fill:
    """``fill(ledger, rounds=2)``: per round, 3 submissions, 3 verdicts and a round entry."""

    def _fill(ledger: SQLLedger, rounds: int = 2) -> list[LedgerEntry]:
        out: list[LedgerEntry] = []
        for r in range(rounds):
            subs = [_submit(ledger, validator, node, r) for node in nodes]
            out += subs
            for i, sub in enumerate(subs):
                out.append(
                    ledger.append(
                        "verdict",
                        round=r,
                        node_id=sub.node_id,
                        gradient_hash=sub.gradient_hash,
                        score=1.0 / (i + 3),
                        verdict=("accepted", "flagged", "rejected")[i],
                        reasons=[{"signal": "pogq", "value": 0.1 * (i + 1)}],
                        sign=validator.sign,
                        validator_id=validator.node_id,
                    )
                )
            out.append(
                ledger.append(
                    "round",
                    round=r,
                    metadata={"closed": True},
                    sign=validator.sign,
                    validator_id=validator.node_id,
                )
            )
        return out

    return _fill


# ------------------------------------------------------------------------------- raw SQL

RawSQL = Callable[..., list[Any]]


@pytest.fixture
def raw_sql() -> Iterator[RawSQL]:
    """``raw_sql(url, statement, **params)``: run SQL on a ledger's database past the ledger.

    ``url`` is what the test gave :func:`matl.ledger.open_ledger`; returns the rows, if any.
    """
    engines: dict[str, sa.Engine] = {}

    def _run(url: str, statement: str, **params: Any) -> list[Any]:
        if url not in engines:
            target = url.replace("postgresql://", "postgresql+psycopg://", 1)
            engines[url] = sa.create_engine(target, poolclass=sa.NullPool)
        with engines[url].begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return list(result.all()) if result.returns_rows else []

    yield _run
    for engine in engines.values():
        engine.dispose()


def _rewrite_row(raw_sql: RawSQL, url: str, entry: LedgerEntry) -> None:
    """Overwrite the stored row ``entry.seq`` with ``entry``'s fields (what an attacker does)."""
    row = entry.to_json_dict()
    row["reasons_json"] = json.dumps(row.pop("reasons"))
    row["metadata_json"] = json.dumps(row.pop("metadata"))
    columns = ", ".join(f'"{name}" = :{name}' for name in row if name != "seq")
    raw_sql(url, f"UPDATE entries SET {columns} WHERE seq = :seq", **row)


def _forge(
    entry: LedgerEntry,
    *,
    prev_hash: str | None = None,
    signer: Identity | None = None,
    **changes: Any,
) -> LedgerEntry:
    """``entry`` with ``changes``, relinked to ``prev_hash``, re-signed by ``signer`` (if given,
    which also becomes the validator) and re-hashed."""
    forged = dataclasses.replace(entry, **changes)
    if prev_hash is not None:
        forged = dataclasses.replace(forged, prev_hash=prev_hash)
    if signer is not None:
        forged = dataclasses.replace(forged, validator_id=signer.node_id)
        forged = dataclasses.replace(forged, signature=signer.sign(forged.signing_bytes()).hex())
    return dataclasses.replace(forged, entry_hash=forged.compute_hash())


@pytest.fixture
def submit() -> Callable[..., LedgerEntry]:
    """``submit(ledger, validator, node, round, *, metadata=None, signer=None)``: append ``node``'s
    submission with its payload (header signed by ``signer``, default the node)."""
    return _submit


@pytest.fixture
def forge() -> Callable[..., LedgerEntry]:
    """``forge(entry, *, prev_hash=None, signer=None, **changes)``: a doctored copy of ``entry``,
    re-signed by ``signer`` if given and re-hashed (what an attacker writes back)."""
    return _forge


@pytest.fixture
def rewrite_row(raw_sql: RawSQL) -> Callable[[str, LedgerEntry], None]:
    """``rewrite_row(url, entry)``: overwrite stored row ``entry.seq`` with ``entry``'s fields."""
    return lambda url, entry: _rewrite_row(raw_sql, url, entry)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite ledger location (the file does not exist yet)."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


# ------------------------------------------------------------------------------- PostgreSQL


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the PostgreSQL tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url(free_port: Callable[[], int]) -> Iterator[str]:
    """URL of a throwaway PostgreSQL cluster on 127.0.0.1, stopped and deleted after the session.

    ``MATL_TEST_POSTGRES_URL`` (set by ``.ci/run``, which starts the server) is used instead when
    present.
    """
    external = os.environ.get("MATL_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        _unavailable(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); "
            "install postgresql-15 to run these tests"
        )
    bindir = Path(initdbs[-1]).parent
    user = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("there is no 'postgres' user to run initdb as")
    elif user == "postgres":
        as_postgres = []
        owner = pwd.getpwnam("postgres")
    else:
        _unavailable(f"initdb must run as root or postgres, not {user}")

    # Directly under /tmp: pytest's own tmp dirs are private to the user running pytest.
    base = Path(tempfile.mkdtemp(prefix="matl-pg-"))
    os.chown(base, owner.pw_uid, owner.pw_gid)
    data = base / "data"
    port = free_port()

    def run(*args: str) -> None:
        proc = subprocess.run(
            [*as_postgres, *args], cwd=base, capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            log = base / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}{tail}")

    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        run(*initdb, "-E", "UTF8", "--locale=C", "--no-sync")
        # fsync=off: the cluster is deleted afterwards, and its shutdown checkpoint stays fast.
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(base / "server.log")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            cwd=base,
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(base, ignore_errors=True)


_db_numbers = count()


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """A fresh, empty database in the session's cluster (one per test)."""
    name = f"ledger_test_{os.getpid()}_{next(_db_numbers)}"
    engine = sa.create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
    )
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """A fresh ledger location on each backend in turn: ``sqlite_url``, then ``pg_url``."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
