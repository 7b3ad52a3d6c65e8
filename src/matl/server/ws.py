"""The validator's WebSocket transport: many requests, and pushed verdicts, over one connection.

Frame protocol (JSON text frames, binary frames for payloads):

* request: ``{"id": int, "op": str, "body": {...}, "payload": bool}``; when ``payload`` is true
  the *next* frame is a binary frame holding the payload (a submission's safetensors).
* reply: ``{"id": ..., "ok": true, "body": ..., "payload": bool}`` (followed by a binary frame
  when ``payload`` is true, e.g. the global model) or
  ``{"id": ..., "ok": false, "error": {"code": str, "message": str}}``.
* op ``"subscribe"`` (answered ``{"subscribed": true}``) makes the server push
  ``{"event": "verdict", "verdict": {...}}`` for every verdict the validator signs from then on;
  ``"unsubscribe"`` stops it.

Every other op goes to :meth:`ValidatorService.handle`, run in a worker thread. Requests on one
connection are served concurrently (at most :data:`MAX_IN_FLIGHT` at a time), so replies may
come back out of order: match them by ``id``. A reply and its binary frame are never split by
another frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from matl.errors import MalformedPayloadError, ServiceError
from matl.server.service import Reply, ValidatorService
from matl.server.threads import ServerThread

__all__ = [
    "MAX_IN_FLIGHT",
    "PUSH_BACKLOG",
    "WSServerThread",
    "max_message_size",
    "serve_ws",
    "start_ws_server",
]

MAX_IN_FLIGHT = 64
"""Requests served at once per connection; the server stops reading frames beyond that."""
PUSH_BACKLOG = 10_000
"""Verdicts queued for a subscriber that reads too slowly before its connection is closed."""
_MARGIN = 64 * 1024
_log = logging.getLogger(__name__)

RequestId = int | str | None


def max_message_size(info: dict[str, Any]) -> int:
    """The largest frame the server reads: the payload limit plus room for a JSON header.

    A payload a little over ``max_payload_bytes`` still reaches the service (and is refused
    with ``payload_too_large``); a frame over this size closes the connection (code 1009).
    """
    return int(info["max_payload_bytes"]) + 2 * int(info.get("max_metadata_bytes", 0)) + _MARGIN


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class _Session:
    """One client connection: reads requests, runs them, pushes verdicts if subscribed."""

    def __init__(self, service: ValidatorService, conn: ServerConnection) -> None:
        self.service = service
        self.conn = conn
        self.send_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()
        self.unsubscribe: Callable[[], None] | None = None
        self.pusher: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            await self._read_loop()
        except ConnectionClosed:
            pass
        finally:
            self._stop_push()
            for task in self.tasks:
                task.cancel()

    async def _read_loop(self) -> None:
        waiting: tuple[RequestId, str, dict[str, Any]] | None = None  # announced a payload
        skip_binary = False  # a bad request announced a payload: drop it
        async for message in self.conn:
            if isinstance(message, bytes):
                if waiting is not None:
                    rid, op, body = waiting
                    waiting = None
                    await self._dispatch(rid, op, body, message)
                elif skip_binary:
                    skip_binary = False
                else:
                    await self._send_error(
                        None, MalformedPayloadError("binary frame without a request announcing it")
                    )
                continue
            if waiting is not None:
                await self._send_error(
                    waiting[0], MalformedPayloadError("expected a binary payload frame")
                )
                waiting = None
            skip_binary = False
            try:
                rid, op, body, wants_payload = _parse_request(message)
            except _BadRequest as bad:
                skip_binary = bad.wants_payload
                await self._send_error(bad.rid, bad.error)
                continue
            if wants_payload:
                waiting = (rid, op, body)
            else:
                await self._dispatch(rid, op, body, None)

    async def _dispatch(
        self, rid: RequestId, op: str, body: dict[str, Any], payload: bytes | None
    ) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self._serve_one(rid, op, body, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve_one(
        self, rid: RequestId, op: str, body: dict[str, Any], payload: bytes | None
    ) -> None:
        try:
            if op == "subscribe":
                reply = self._subscribe()
            elif op == "unsubscribe":
                self._stop_push()
                reply = Reply({"subscribed": False})
            else:
                reply = await asyncio.to_thread(self.service.handle, op, body, payload)
            header = {
                "id": rid,
                "ok": True,
                "body": reply.body,
                "payload": reply.payload is not None,
            }
            await self._send(header, reply.payload)
        except ServiceError as exc:
            await self._send_error(rid, exc)
        except ConnectionClosed:
            pass
        except Exception:
            _log.exception("op %r failed", op)
            await self._send_error(rid, ServiceError("internal error"), code="internal")
        finally:
            self.slots.release()

    async def _send(self, header: dict[str, Any], payload: bytes | None = None) -> None:
        async with self.send_lock:
            await self.conn.send(_dumps(header))
            if payload is not None:
                await self.conn.send(payload)

    async def _send_error(
        self, rid: RequestId, error: ServiceError, *, code: str | None = None
    ) -> None:
        detail = {"code": code or error.code, "message": str(error)}
        with contextlib.suppress(ConnectionClosed):
            await self._send({"id": rid, "ok": False, "error": detail})

    # --- verdict push ---

    def _subscribe(self) -> Reply:
        if self.unsubscribe is None:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(PUSH_BACKLOG)

            def enqueue(verdict: dict[str, Any]) -> None:
                try:
                    queue.put_nowait(verdict)
                except asyncio.QueueFull:
                    self._stop_push()
                    closing = loop.create_task(self.conn.close(1013, "verdict backlog exceeded"))
                    self.tasks.add(closing)
                    closing.add_done_callback(self.tasks.discard)

            def on_verdict(verdict: dict[str, Any]) -> None:  # any thread
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                    loop.call_soon_threadsafe(enqueue, verdict)

            self.unsubscribe = self.service.subscribe(on_verdict)
            self.pusher = asyncio.create_task(self._push(queue))
        return Reply({"subscribed": True})

    async def _push(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                verdict = await queue.get()
                await self._send({"event": "verdict", "verdict": verdict})

    def _stop_push(self) -> None:
        if self.unsubscribe is not None:
            # off the event loop: unsubscribing waits for the validator's lock
            asyncio.get_running_loop().run_in_executor(None, self.unsubscribe)
            self.unsubscribe = None
        if self.pusher is not None:
            self.pusher.cancel()
            self.pusher = None


class _BadRequest(Exception):
    def __init__(self, rid: RequestId, error: ServiceError, wants_payload: bool) -> None:
        super().__init__(str(error))
        self.rid = rid
        self.error = error
        self.wants_payload = wants_payload


def _parse_request(text: str) -> tuple[RequestId, str, dict[str, Any], bool]:
    """``(id, op, body, payload?)`` of a request frame; :class:`_BadRequest` if it is not one."""
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise _BadRequest(
            None, MalformedPayloadError(f"request is not JSON: {exc}"), False
        ) from None
    if not isinstance(msg, dict):
        raise _BadRequest(None, MalformedPayloadError("request must be a JSON object"), False)
    wants_payload = msg.get("payload", False)
    rid = msg.get("id")
    if not isinstance(wants_payload, bool):
        raise _BadRequest(None, MalformedPayloadError("'payload' must be true or false"), False)
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        err = MalformedPayloadError("request needs an 'id' (integer or string)")
        raise _BadRequest(None, err, wants_payload)
    op = msg.get("op")
    body = msg.get("body", {})
    if not isinstance(op, str):
        raise _BadRequest(rid, MalformedPayloadError("request needs an 'op' string"), wants_payload)
    if not isinstance(body, dict):
        raise _BadRequest(rid, MalformedPayloadError("'body' must be a JSON object"), wants_payload)
    return rid, op, body, wants_payload


# --- running it ---


def serve_ws(
    service: ValidatorService,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ready: threading.Event | None = None,
) -> None:
    """Serve the WebSocket protocol on ``ws://host:port`` (any path) until interrupted (blocks).

    ``ready`` is set once the server accepts connections (see :meth:`ServerThread.run`).
    """
    WSServerThread(service, host, port).run(ready)


class WSServerThread(ServerThread):
    """The WebSocket server run from a background thread (tests, embedding).

    Use :func:`start_ws_server` to make one; ``with`` stops it on exit (closing every
    connection). ``url`` is ``ws://host:port``; see :class:`~matl.server.threads.ServerThread`.
    """

    scheme = "ws"
    protocol = "WebSocket"

    def __init__(self, service: ValidatorService, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._service = service
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def _serve(self, ready: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        info = self._service.handle("info", {}).body

        async def handler(conn: ServerConnection) -> None:
            await _Session(self._service, conn).run()

        async with serve(
            handler, sock=self._sock, max_size=max_message_size(info), compression=None
        ):
            ready()
            await self._stop.wait()

    def _request_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)


def start_ws_server(
    service: ValidatorService, host: str = "127.0.0.1", port: int = 0
) -> WSServerThread:
    """Serve ``service`` over WebSocket from a daemon thread; ``port=0`` picks a free port.

    Returns
    -------
    WSServerThread
        Running; read ``.port`` / ``.url``, call ``.stop()`` (or use ``with``) to end it.
    """
    return WSServerThread(service, host, port).start()
