"""The transport protocols the MATL clients talk through.

A transport moves one request ``(op, body, payload)`` to a validator and brings back a
:class:`Response`; it knows nothing of signatures or retries (that is
:class:`~matl.client.base.ClientCore`'s job). Implementations: in-process
(:mod:`matl.client.inprocess`), HTTP (:mod:`matl.client.http`), gRPC (:mod:`matl.client.grpc`)
and WebSocket (:mod:`matl.client.ws`). The operations are listed in
:mod:`matl.server.service`.

A transport raises :func:`matl.errors.error_from_code` for an error the validator reported and
:class:`matl.errors.TransportError` when the validator cannot be reached or does not answer in
time — never its library's own exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["AsyncTransport", "Response", "Transport"]


@dataclass(frozen=True)
class Response:
    """A validator's reply: JSON-able ``body`` and optional binary ``payload``."""

    body: Any
    payload: bytes | None = None


@runtime_checkable
class Transport(Protocol):
    """A blocking transport."""

    def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Send one request and wait for its reply."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class AsyncTransport(Protocol):
    """An asyncio transport."""

    async def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Send one request and await its reply."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
