"""Run a validator service over one transport until SIGINT/SIGTERM (``matl serve``)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from matl.errors import ConfigError
from matl.server.service import ValidatorService

__all__ = ["TRANSPORTS", "run_server", "start_server"]

TRANSPORTS = ("http", "grpc", "ws")


def start_server(service: ValidatorService, transport: str, host: str, port: int) -> Any:
    """Start ``service`` on ``transport`` in the background; the handle has ``.port``/``.stop()``."""
    if transport == "http":
        from matl.server.http import start_http_server

        return start_http_server(service, host, port)
    if transport == "grpc":
        from matl.server.grpc import start_grpc_server

        return start_grpc_server(service, host, port)
    if transport == "ws":
        from matl.server.ws import start_ws_server

        return start_ws_server(service, host, port)
    raise ConfigError(f"unknown transport {transport!r}; valid: {', '.join(TRANSPORTS)}")


def run_server(
    service: ValidatorService,
    transport: str,
    host: str,
    port: int,
    *,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly; ``ready(port)`` once listening."""
    try:
        handle = start_server(service, transport, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if ready is not None:
        ready(handle.port)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
