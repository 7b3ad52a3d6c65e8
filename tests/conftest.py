"""Shared fixtures: a temporary MATL cache so tests never touch ~/.cache, free ports, and a real
validator served over a network transport."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def _matl_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Keep the real user cache if set (CI sets nothing: tests use a private one).
    if "MATL_CACHE" not in os.environ:
        os.environ["MATL_CACHE"] = str(Path(tmp_path_factory.mktemp("matl-cache")))


from hypothesis import settings  # noqa: E402

# CI runs are reproducible: hypothesis derives its examples from the test, not from a random seed.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


# ------------------------------------------------------------------ free ports


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a TCP port of 127.0.0.1 that nothing listens on (at the time of asking)."""

    def pick() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return pick


# ------------------------------------------------- a real validator, served on 127.0.0.1
#
# A test module says what it serves with ``pytestmark = pytest.mark.served(wire, **options)``:
# ``wire`` is "http", "ws" or "grpc" and ``options`` are ValidatorConfig fields (``dim`` at least)
# over SERVED_CONFIG. Its tests then take ``validator`` / ``server`` (a validator of their own,
# and that validator served over ``wire``), ``fresh`` (the two as a pair) or ``shared`` (one pair
# for the whole module, for tests that store nothing).

SERVED_CONFIG: dict[str, Any] = {"round_size": 3, "max_payload_bytes": 1024}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "served(wire, **options): the transport and ValidatorConfig fields of the module's "
        "validator / server / fresh / shared fixtures (tests/conftest.py)",
    )


def _served_as(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    marker = request.node.get_closest_marker("served")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid}: mark the module pytest.mark.served(...)")
    return marker.args[0], {**SERVED_CONFIG, **marker.kwargs}


@contextlib.contextmanager
def _running_validator(ledger_path: Path, options: dict[str, Any]) -> Iterator[Any]:
    from matl.crypto import Identity
    from matl.ledger import open_ledger
    from matl.validator import MATLValidator, ValidatorConfig

    ledger = open_ledger(ledger_path)
    try:
        yield MATLValidator(ValidatorConfig(**options), ledger, Identity.generate())
    finally:
        ledger.close()


@contextlib.contextmanager
def _serving(validator: Any, wire: str) -> Iterator[Any]:
    from matl.server.run import start_server
    from matl.server.service import ValidatorService

    with start_server(ValidatorService(validator), wire, "127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def validator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A real MATLValidator on a SQLite ledger of its own (options of the module's marker)."""
    with _running_validator(tmp_path / "ledger.db", _served_as(request)[1]) as running:
        yield running


@pytest.fixture
def server(request: pytest.FixtureRequest, validator: Any) -> Iterator[Any]:
    """``validator`` served over the module's wire on 127.0.0.1 (a free port); ``.url``."""
    with _serving(validator, _served_as(request)[0]) as handle:
        yield handle


@pytest.fixture
def fresh(validator: Any, server: Any) -> tuple[Any, Any]:
    """``(validator, server)``: a served validator of its own, for tests that change its state."""
    return validator, server


@pytest.fixture(scope="module")
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Any]]:
    """``(validator, server)``: one served validator for the module's tests that store nothing."""
    wire, options = _served_as(request)
    ledger_path = tmp_path_factory.mktemp(wire) / "ledger.db"
    with _running_validator(ledger_path, options) as running, _serving(running, wire) as handle:
        yield running, handle
