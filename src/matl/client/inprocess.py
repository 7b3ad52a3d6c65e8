"""In-process transports: call a :class:`~matl.server.service.ValidatorService` directly.

For tests and single-process simulations. The request still goes through the same dispatch, the
same JSON shapes and the same error classes as over the network (bodies are round-tripped
through JSON so nothing is shared by reference), only the socket is missing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from matl.client.transport import Response
from matl.server.service import ValidatorService

__all__ = ["AsyncInProcessTransport", "InProcessTransport"]


def _call(
    service: ValidatorService, op: str, body: dict[str, Any], payload: bytes | None
) -> Response:
    reply = service.handle(op, json.loads(json.dumps(body)), payload)
    return Response(json.loads(json.dumps(reply.body)), reply.payload)


class InProcessTransport:
    """A blocking transport bound to a service object in this process."""

    def __init__(self, service: ValidatorService) -> None:
        self.service = service

    def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Dispatch directly (``timeout`` is not needed in-process)."""
        return _call(self.service, op, body, payload)

    def close(self) -> None:
        """Nothing to release."""


class AsyncInProcessTransport:
    """An asyncio transport bound to a service object; requests run in a worker thread."""

    def __init__(self, service: ValidatorService) -> None:
        self.service = service

    async def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Dispatch in a thread so a scoring round never blocks the event loop."""
        return await asyncio.wait_for(
            asyncio.to_thread(_call, self.service, op, body, payload), timeout
        )

    async def aclose(self) -> None:
        """Nothing to release."""
