"""WebSocket transports of the client SDK (the frame protocol of :mod:`matl.server.ws`).

One connection carries every request, matched to its reply by ``id``, and the verdicts the
server pushes once subscribed:

* :class:`WSTransport` (``websockets.sync.client``): one request at a time (thread-safe);
  :meth:`WSTransport.iter_verdicts` yields pushed verdicts.
* :class:`AsyncWSTransport` (``websockets.asyncio.client``): any number of concurrent requests;
  a reader task routes replies to their waiters and verdicts to every
  :meth:`AsyncWSTransport.subscribe_verdicts` stream.

Both connect on first use. A server-reported error is raised as the
:class:`~matl.errors.ServiceError` subclass its ``code`` names; a connection failure, a closed
connection or a timeout as :class:`~matl.errors.TransportError` (a connection the server closed
because a frame was over its size limit, code 1009, as :class:`~matl.errors.PayloadTooLargeError`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from matl._closing import AsyncClosing, Closing
from matl.client.transport import Response
from matl.errors import MATLError, PayloadTooLargeError, TransportError, error_from_code

__all__ = ["AsyncWSTransport", "VerdictStream", "WSTransport"]

_MESSAGE_TOO_BIG = 1009
_CONNECT_ERRORS = (OSError, TimeoutError, WebSocketException)


def _request_frame(rid: int, op: str, body: dict[str, Any], payload: bytes | None) -> str:
    return json.dumps(
        {"id": rid, "op": op, "body": body, "payload": payload is not None},
        separators=(",", ":"),
        allow_nan=False,
    )


def _closed_error(url: str, code: int | None, reason: str = "") -> MATLError:
    """What a closed connection means to a request waiting on it."""
    if code == _MESSAGE_TOO_BIG:
        return PayloadTooLargeError(f"{url} closed the connection: message too big ({reason})")
    return TransportError(
        f"connection to {url} closed (code {code}{', ' + reason if reason else ''})"
    )


def _exc_closed_error(url: str, exc: ConnectionClosed) -> MATLError:
    rcvd = exc.rcvd
    return _closed_error(url, rcvd.code if rcvd else None, rcvd.reason if rcvd else "")


def _result(reply: dict[str, Any], payload: bytes | None) -> Response:
    """The :class:`Response` of a reply frame, or the error it reports raised."""
    if reply.get("ok"):
        return Response(reply.get("body"), payload)
    error = reply.get("error")
    if not isinstance(error, dict):
        error = {}
    raise error_from_code(str(error.get("code", "bad_request")), str(error.get("message", "")))


def _read_json(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class _WSTransportBase:
    """What :class:`WSTransport` and :class:`AsyncWSTransport` share (no IO): their settings
    (see :class:`WSTransport`), request ids, connection options and error messages."""

    def __init__(self, url: str, *, open_timeout: float = 10.0) -> None:
        self.url = url
        self._open_timeout = open_timeout
        self._ids = itertools.count(1)
        self._subscribed = False

    def _connect_options(self, timeout: float) -> dict[str, Any]:
        """Keyword arguments of ``connect`` for a request allowed ``timeout`` seconds."""
        return {
            "open_timeout": min(timeout, self._open_timeout),
            "compression": None,
            "max_size": None,
            "proxy": None,
        }

    def _connect_error(self, exc: Exception) -> TransportError:
        return TransportError(f"cannot connect to {self.url}: {exc}")

    def _timed_out(self, op: str, timeout: float) -> TransportError:
        return TransportError(f"{op!r} to {self.url} timed out after {timeout}s")


# --- synchronous ---


class WSTransport(_WSTransportBase, Closing):
    """Synchronous WebSocket transport.

    Parameters
    ----------
    url:
        The server, e.g. ``ws://127.0.0.1:8765``.
    open_timeout:
        Seconds allowed for the opening handshake.

    Examples
    --------
    >>> with WSTransport("ws://127.0.0.1:8765") as t:  # doctest: +SKIP
    ...     t.subscribe()
    ...     for verdict in t.iter_verdicts(timeout=30):
    ...         print(verdict["verdict"])
    """

    def __init__(self, url: str, *, open_timeout: float = 10.0) -> None:
        super().__init__(url, open_timeout=open_timeout)
        self._conn: SyncConnection | None = None
        self._closer = contextlib.ExitStack()  # closes the connection
        self._lock = threading.RLock()
        self._events: collections.deque[dict[str, Any]] = collections.deque()

    def _connection(self, timeout: float) -> SyncConnection:
        if self._conn is None:
            stack = contextlib.ExitStack()
            try:
                self._conn = stack.enter_context(
                    sync_connect(self.url, **self._connect_options(timeout))
                )
            except _CONNECT_ERRORS as exc:
                raise self._connect_error(exc) from exc
            self._closer = stack
            self._subscribed = False
        return self._conn

    def _drop(self) -> None:
        closer, self._closer = self._closer, contextlib.ExitStack()
        self._conn = None
        self._subscribed = False
        closer.close()

    def _recv(self, conn: SyncConnection, deadline: float) -> tuple[dict[str, Any], bytes | None]:
        """The next reply or event (with its binary frame); ``TimeoutError`` at ``deadline``."""
        while True:
            message = conn.recv(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(message, bytes):
                continue  # the payload of a reply nobody waits for any more
            data = _read_json(message)
            if data is None:
                continue
            if data.get("ok") and data.get("payload"):
                payload = conn.recv(timeout=max(0.0, deadline - time.monotonic()))
                if isinstance(payload, bytes):
                    return data, payload
                continue
            return data, None

    def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Carry out ``op``; see :class:`~matl.client.transport.Transport`."""
        with self._lock:
            conn = self._connection(timeout)
            rid = next(self._ids)
            deadline = time.monotonic() + timeout
            try:
                conn.send(_request_frame(rid, op, body, payload))
                if payload is not None:
                    conn.send(payload)
                while True:
                    data, data_payload = self._recv(conn, deadline)
                    if data.get("event") == "verdict":
                        self._events.append(data.get("verdict") or {})
                    elif data.get("id") == rid:
                        return _result(data, data_payload)
            except TimeoutError:
                raise self._timed_out(op, timeout) from None
            except ConnectionClosed as exc:
                self._drop()
                raise _exc_closed_error(self.url, exc) from exc
            except OSError as exc:
                self._drop()
                raise TransportError(f"{op!r} to {self.url} failed: {exc}") from exc

    def subscribe(self, timeout: float = 10.0) -> None:
        """Ask the server to push every verdict from now on (see :meth:`iter_verdicts`)."""
        with self._lock:
            if not self._subscribed or self._conn is None:
                self.request("subscribe", {}, timeout=timeout)
                self._subscribed = True

    def _next_event(self, timeout: float) -> dict[str, Any] | None:
        with self._lock:
            if self._events:
                return self._events.popleft()
            conn = self._connection(timeout)
            deadline = time.monotonic() + timeout
            try:
                while True:
                    data, _ = self._recv(conn, deadline)
                    if data.get("event") == "verdict":
                        return dict(data.get("verdict") or {})
            except TimeoutError:
                return None
            except ConnectionClosed as exc:
                self._drop()
                raise _exc_closed_error(self.url, exc) from exc

    def iter_verdicts(self, timeout: float = 30.0) -> Iterator[dict[str, Any]]:
        """Yield verdicts (JSON dicts) as the server pushes them.

        Subscribes first if needed. Stops when no verdict arrived for ``timeout`` seconds.
        """
        self.subscribe(timeout)
        while (verdict := self._next_event(timeout)) is not None:
            yield verdict

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._drop()


# --- asynchronous ---


class VerdictStream(AsyncIterator[dict[str, Any]]):
    """Verdicts pushed to an :class:`AsyncWSTransport`, as an async iterator.

    ``await`` it to be sure the subscription is in place (no verdict signed after that is
    missed); iterating subscribes too. It ends when the connection closes or on :meth:`aclose`.
    """

    def __init__(self, transport: AsyncWSTransport, timeout: float) -> None:
        self._transport = transport
        self._timeout = timeout
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._started = False
        self._finished = False

    async def _start(self) -> VerdictStream:
        if not self._started:
            self._started = True
            await self._transport._add_stream(self, self._timeout)
        return self

    def __await__(self) -> Generator[Any, None, VerdictStream]:
        return self._start().__await__()

    def __aiter__(self) -> VerdictStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        await self._start()
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._finished = True
            raise StopAsyncIteration
        return item

    def _put(self, item: dict[str, Any] | None) -> None:
        self._queue.put_nowait(item)

    async def aclose(self) -> None:
        """Stop receiving verdicts on this stream."""
        self._transport._streams.discard(self)
        self._put(None)


class AsyncWSTransport(_WSTransportBase, AsyncClosing):
    """Asynchronous WebSocket transport (see the module docstring); its parameters are those of
    :class:`WSTransport`."""

    def __init__(self, url: str, *, open_timeout: float = 10.0) -> None:
        super().__init__(url, open_timeout=open_timeout)
        self._conn: AsyncConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._streams: set[VerdictStream] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def _connection(self, timeout: float) -> AsyncConnection:
        async with self._connect_lock:
            if self._conn is None:
                try:
                    conn = await async_connect(self.url, **self._connect_options(timeout))
                except _CONNECT_ERRORS as exc:
                    raise self._connect_error(exc) from exc
                self._conn = conn
                self._subscribed = False
                self._reader = asyncio.create_task(self._read(conn))
            return self._conn

    async def _read(self, conn: AsyncConnection) -> None:
        """Route replies to their waiters and verdicts to the streams until the connection ends."""
        error: MATLError = TransportError(f"connection to {self.url} ended")
        waiting: dict[str, Any] | None = None  # a reply whose binary frame comes next
        try:
            async for message in conn:
                if isinstance(message, bytes):
                    if waiting is not None:
                        self._resolve(waiting, message)
                        waiting = None
                    continue
                data = _read_json(message)
                if data is None:
                    continue
                if data.get("event") == "verdict":
                    for stream in list(self._streams):
                        stream._put(dict(data.get("verdict") or {}))
                elif data.get("ok") and data.get("payload"):
                    waiting = data
                else:
                    self._resolve(data, None)
            error = _closed_error(self.url, conn.close_code, conn.close_reason or "")
        except ConnectionClosed as exc:
            error = _exc_closed_error(self.url, exc)
        finally:
            if self._conn is conn:
                self._conn = None
                self._subscribed = False
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            for stream in list(self._streams):
                stream._put(None)
            self._streams.clear()

    def _resolve(self, reply: dict[str, Any], payload: bytes | None) -> None:
        rid = reply.get("id")
        future = self._pending.get(rid) if isinstance(rid, int) else None
        if future is None or future.done():
            return  # a reply to a request that timed out, or an error with no id
        try:
            future.set_result(_result(reply, payload))
        except MATLError as exc:
            future.set_exception(exc)

    async def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        """Carry out ``op``; see :class:`~matl.client.transport.AsyncTransport`."""
        conn = await self._connection(timeout)
        rid = next(self._ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future

        async def exchange() -> Response:
            async with self._send_lock:
                sent = False
                try:
                    await conn.send(_request_frame(rid, op, body, payload))
                    if payload is not None:
                        await conn.send(payload)
                    sent = True
                finally:
                    if not sent:  # cut off mid-request: the frame stream is out of step
                        closing = asyncio.get_running_loop().create_task(conn.close())
                        self._background.add(closing)
                        closing.add_done_callback(self._background.discard)
            return await future

        try:
            return await asyncio.wait_for(exchange(), timeout)
        except asyncio.TimeoutError:
            raise self._timed_out(op, timeout) from None
        except ConnectionClosed as exc:
            raise _exc_closed_error(self.url, exc) from exc
        finally:
            self._pending.pop(rid, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning

    async def _add_stream(self, stream: VerdictStream, timeout: float) -> None:
        await self._connection(timeout)
        self._streams.add(stream)  # before subscribing: nothing signed after the reply is lost
        if not self._subscribed:
            await self.request("subscribe", {}, timeout=timeout)
            self._subscribed = True

    def subscribe_verdicts(self, timeout: float = 10.0) -> VerdictStream:
        """Verdicts (JSON dicts) the server pushes from now on.

        ``stream = await transport.subscribe_verdicts()`` returns once subscribed; ``async for
        verdict in transport.subscribe_verdicts(): ...`` works too.
        """
        return VerdictStream(self, timeout)

    async def aclose(self) -> None:
        """Close the connection (pending requests fail with :class:`TransportError`)."""
        conn, reader = self._conn, self._reader
        if conn is not None:
            await conn.close()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
