"""gRPC transports for the MATL clients: :class:`GRPCTransport` and :class:`AsyncGRPCTransport`.

Each operation is one typed RPC of ``matl.v1.Validator`` (see :mod:`matl.server.grpc`); bodies
and payloads are translated to and from the messages by :mod:`matl._proto.codec`, so the client
sees the same JSON shapes as over HTTP or WebSocket (a verdict read here verifies with the same
canonical bytes).

Errors: a failed RPC whose trailing metadata carries ``matl-error-code`` raises
:func:`matl.errors.error_from_code`'s exception; ``UNAVAILABLE``, ``DEADLINE_EXCEEDED`` (the
request's ``timeout``) and ``CANCELLED`` raise :class:`~matl.errors.TransportError`; gRPC's own
message-size limit (``RESOURCE_EXHAUSTED``) raises :class:`~matl.errors.PayloadTooLargeError`.

Examples
--------
>>> from matl.client import MATLClient
>>> with MATLClient(GRPCTransport("127.0.0.1:50051")) as client:  # doctest: +SKIP
...     receipt = client.submit_gradient(model.state_dict())
>>> with GRPCTransport("127.0.0.1:50051").watch_verdicts() as stream:  # doctest: +SKIP
...     for verdict in stream:
...         print(verdict["node_id"], verdict["verdict"])
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from matl._closing import AsyncClosing, Closing
from matl._proto import load
from matl._proto.codec import (
    SUBSCRIBED_KEY,
    CodecError,
    Rpc,
    error_code_from_metadata,
    error_for,
    from_message,
    rpc_for_op,
    to_message,
)
from matl.client.transport import Response
from matl.errors import MalformedPayloadError, MATLError, ServiceError, TransportError

__all__ = ["AsyncGRPCTransport", "AsyncVerdictStream", "GRPCTransport", "VerdictStream"]

ChannelOption = tuple[str, Any]


def _target(target: str) -> str:
    """``host:port`` from ``host:port`` or ``grpc://host:port``."""
    if target.lower().startswith("grpc://"):
        target = target[len("grpc://") :]
    return target.rstrip("/")


def _options(max_message_bytes: int | None, extra: Sequence[ChannelOption]) -> list[ChannelOption]:
    return [
        ("grpc.max_receive_message_length", -1 if max_message_bytes is None else max_message_bytes),
        ("grpc.max_send_message_length", -1),
        *extra,
    ]


def _encode(pb2: Any, rpc: Rpc, body: dict[str, Any], payload: bytes | None) -> Any:
    try:
        return to_message(getattr(pb2, rpc.request), body, payload)
    except CodecError as exc:
        raise MalformedPayloadError(f"{rpc.op}: {exc}") from None


def _decode(reply: Any, what: str) -> tuple[dict[str, Any], bytes | None]:
    try:
        return from_message(reply)
    except CodecError as exc:
        raise ServiceError(f"{what}: the validator's reply is malformed: {exc}") from None


def rpc_error(exc: Exception) -> MATLError:
    """The MATL exception for a failed gRPC call (sync or asyncio)."""
    code_fn = getattr(exc, "code", None)
    status = code_fn() if callable(code_fn) else None
    if not isinstance(status, grpc.StatusCode):
        return TransportError(f"gRPC call failed: {exc}")
    details_fn = getattr(exc, "details", None)
    details = details_fn() if callable(details_fn) else None
    trailing_fn = getattr(exc, "trailing_metadata", None)
    trailing = trailing_fn() if callable(trailing_fn) else None
    return error_for(status, error_code_from_metadata(trailing), details)


def _response(rpc: Rpc, reply: Any) -> Response:
    return Response(*_decode(reply, rpc.method))


_WATCH = Rpc("watch", "WatchVerdicts", "WatchVerdictsRequest", "Verdict")
_UNCONFIRMED = "WatchVerdicts: the validator did not confirm the subscription"


def _subscribed(metadata: Any) -> bool:
    """Whether a ``WatchVerdicts`` call's initial metadata says the subscription is live."""
    return SUBSCRIBED_KEY in {key for key, _ in metadata or ()}


class _GRPCTransportBase:
    """What :class:`GRPCTransport` and :class:`AsyncGRPCTransport` share (no IO): their settings
    (see :class:`GRPCTransport`), requests to messages and replies to responses."""

    def __init__(
        self,
        target: str,
        *,
        credentials: Any = None,
        max_message_bytes: int | None = None,
        options: Sequence[ChannelOption] = (),
    ) -> None:
        self.target = _target(target)
        stubs = load()
        self._pb2 = stubs.pb2
        self._pb2_grpc = stubs.pb2_grpc
        self._credentials = credentials
        self._options = _options(max_message_bytes, options)
        self._channel, self._stub = self._initial_channel()

    def _initial_channel(self) -> tuple[Any, Any]:
        """The channel and stub to start with: none (opened on first use) unless overridden."""
        return None, None

    def _open(self, channels: Any) -> tuple[Any, Any]:
        """A channel made by ``channels`` (``grpc`` or ``grpc.aio``) and its stub."""
        if self._credentials is None:
            channel = channels.insecure_channel(self.target, options=self._options)
        else:
            channel = channels.secure_channel(self.target, self._credentials, options=self._options)
        return channel, self._pb2_grpc.ValidatorStub(channel)

    def _message(self, op: str, body: dict[str, Any], payload: bytes | None) -> tuple[Rpc, Any]:
        """The RPC that carries ``op`` and its request message."""
        rpc = rpc_for_op(op)
        return rpc, _encode(self._pb2, rpc, body, payload)

    def _watch_request(self, round: int | None, node_id: str | None) -> Any:
        return _encode(self._pb2, _WATCH, {"round": round, "node_id": node_id}, None)

    def _no_answer(self, ready_timeout: float) -> TransportError:
        return TransportError(f"WatchVerdicts: no answer from {self.target} in {ready_timeout} s")


class VerdictStream(Closing):
    """The verdicts a validator pushes, as JSON bodies (:class:`~matl.protocol.Verdict` shape).

    Iterate it; :meth:`close` (or leaving ``with``) ends the subscription and the iteration.
    Made by :meth:`GRPCTransport.watch_verdicts`.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise StopIteration
        try:
            reply = next(self._call)
        except StopIteration:
            raise
        except grpc.RpcError as exc:
            if self._closed:
                raise StopIteration from None
            raise rpc_error(exc) from None
        return _decode(reply, "WatchVerdicts")[0]

    def close(self) -> None:
        """Cancel the subscription."""
        self._closed = True
        self._call.cancel()


class GRPCTransport(_GRPCTransportBase, Closing):
    """A blocking transport over one gRPC channel (plaintext unless ``credentials`` is given).

    Parameters
    ----------
    target:
        ``host:port`` or ``grpc://host:port``.
    credentials:
        ``grpc.ssl_channel_credentials(...)`` for TLS; plaintext when omitted.
    max_message_bytes:
        Largest reply accepted (the global model); unlimited by default.
    options:
        Extra gRPC channel options.
    """

    def _initial_channel(self) -> tuple[Any, Any]:
        return self._open(grpc)  # no IO yet: gRPC connects on the first call

    def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Run ``op`` as its RPC with a ``timeout``-second deadline."""
        rpc, message = self._message(op, body, payload)
        try:
            reply = getattr(self._stub, rpc.method)(message, timeout=timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        except ValueError as exc:  # "Cannot invoke RPC on closed channel!"
            raise TransportError(f"gRPC {rpc.method}: {exc}") from None
        return _response(rpc, reply)

    def watch_verdicts(
        self,
        *,
        round: int | None = None,
        node_id: str | None = None,
        timeout: float | None = None,
        ready_timeout: float = 30.0,
    ) -> VerdictStream:
        """Subscribe to verdicts (optionally one round's or one node's only).

        Returns once the subscription is live (at most ``ready_timeout`` seconds, else
        :class:`~matl.errors.TransportError`): every verdict signed afterwards arrives.
        ``timeout`` bounds the whole subscription (none by default).
        """
        try:
            call = self._stub.WatchVerdicts(self._watch_request(round, node_id), timeout=timeout)
        except ValueError as exc:
            raise TransportError(f"gRPC WatchVerdicts: {exc}") from None
        stream = VerdictStream(call)
        metadata: list[Any] = []
        waiter = threading.Thread(
            target=lambda: metadata.extend(call.initial_metadata() or ()),
            name="matl-grpc-watch",
            daemon=True,
        )
        waiter.start()
        waiter.join(ready_timeout)
        if waiter.is_alive():
            stream.close()  # unblocks the waiter
            raise self._no_answer(ready_timeout)
        if not _subscribed(metadata):
            # the call failed before the server subscribed it
            try:
                next(call)
            except grpc.RpcError as exc:
                raise rpc_error(exc) from None
            except StopIteration:
                pass
            stream.close()
            raise ServiceError(_UNCONFIRMED)
        return stream

    def close(self) -> None:
        """Close the channel (cancels open calls and streams)."""
        self._channel.close()


class AsyncVerdictStream(AsyncClosing):
    """The verdicts a validator pushes, as JSON bodies; ``async for`` over it.

    Made by :meth:`AsyncGRPCTransport.watch_verdicts`; :meth:`aclose` (or ``async with``) ends it.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False

    def __aiter__(self) -> AsyncVerdictStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        try:
            reply = await self._call.read()
        except grpc.RpcError as exc:
            if self._closed:
                raise StopAsyncIteration from None
            raise rpc_error(exc) from None
        except asyncio.CancelledError:
            if self._closed:  # our own cancel(), not the task's
                raise StopAsyncIteration from None
            raise
        if reply is grpc.aio.EOF:
            self._closed = True
            raise StopAsyncIteration
        return _decode(reply, "WatchVerdicts")[0]

    async def aclose(self) -> None:
        """Cancel the subscription."""
        self._closed = True
        self._call.cancel()


class AsyncGRPCTransport(_GRPCTransportBase, AsyncClosing):
    """An asyncio transport over one ``grpc.aio`` channel, opened on first use (in the loop that
    uses it); its parameters are those of :class:`GRPCTransport`."""

    _closed = False

    def _ensure_stub(self) -> Any:
        if self._closed:
            raise TransportError("the gRPC transport is closed")
        if self._stub is None:
            self._channel, self._stub = self._open(grpc.aio)
        return self._stub

    async def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Run ``op`` as its RPC with a ``timeout``-second deadline."""
        rpc, message = self._message(op, body, payload)
        stub = self._ensure_stub()
        try:
            reply = await getattr(stub, rpc.method)(message, timeout=timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        return _response(rpc, reply)

    async def watch_verdicts(
        self,
        *,
        round: int | None = None,
        node_id: str | None = None,
        timeout: float | None = None,
        ready_timeout: float = 30.0,
    ) -> AsyncVerdictStream:
        """Subscribe to verdicts; see :meth:`GRPCTransport.watch_verdicts`."""
        request = self._watch_request(round, node_id)
        call = self._ensure_stub().WatchVerdicts(request, timeout=timeout)
        stream = AsyncVerdictStream(call)
        try:
            metadata = await asyncio.wait_for(call.initial_metadata(), ready_timeout)
        except asyncio.TimeoutError:
            await stream.aclose()
            raise self._no_answer(ready_timeout) from None
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        if not _subscribed(metadata):
            try:
                await call.read()
            except grpc.RpcError as exc:
                raise rpc_error(exc) from None
            await stream.aclose()
            raise ServiceError(_UNCONFIRMED)
        return stream

    async def aclose(self) -> None:
        """Close the channel (cancels open calls and streams)."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
