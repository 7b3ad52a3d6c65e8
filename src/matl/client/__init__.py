"""The MATL client SDK: :class:`MATLClient` (blocking) and :class:`AsyncMATLClient` (asyncio).

Both share :class:`~matl.client.base.ClientCore` (IO-free) and talk through pluggable transports:
``http://``, ``grpc://``, ``ws://`` URLs or an in-process transport for tests.
"""

from matl.client.aio import AsyncMATLClient
from matl.client.base import ClientCore, RetryPolicy
from matl.client.inprocess import AsyncInProcessTransport, InProcessTransport
from matl.client.sync import MATLClient
from matl.client.transport import AsyncTransport, Response, Transport

__all__ = [
    "AsyncInProcessTransport",
    "AsyncMATLClient",
    "AsyncTransport",
    "ClientCore",
    "InProcessTransport",
    "MATLClient",
    "Response",
    "RetryPolicy",
    "Transport",
]
