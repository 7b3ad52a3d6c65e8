"""The validator's gRPC transport: typed RPCs over :class:`ValidatorService`.

Service ``matl.v1.Validator`` (``proto/matl/v1/matl.proto``):

=================  ===============  ============================================
RPC                operation        reply
=================  ===============  ============================================
``Register``       ``register``     ``RegisterReply``
``Submit``         ``submit``       ``Receipt`` (payload: the safetensors)
``GetReceipt``     ``receipt``      ``Receipt``
``GetRound``       ``round``        ``RoundInfo``
``GetModel``       ``model``        ``Model`` (payload: the global model)
``GetVerdict``     ``verdict``      ``Verdict``
``GetTrusted``     ``trusted``      ``TrustedGradients``
``GetReputation``  ``reputation``   ``NodeReputation``
``CloseRound``     ``close_round``  ``CloseRoundReply``
``GetInfo``        ``info``         ``ValidatorInfo``
``WatchVerdicts``  (subscription)   ``stream Verdict``
=================  ===============  ============================================

Every unary RPC is the same thin adapter: message -> ``(op, body, payload)`` ->
:meth:`ValidatorService.handle` -> message (:mod:`matl._proto.codec`). A
:class:`~matl.errors.ServiceError` ends the RPC with the status of
:func:`~matl._proto.codec.status_for` and its ``code`` in the trailing metadata
(``matl-error-code``). The server accepts messages up to the payload limit plus a margin, so a
payload a little over ``max_payload_bytes`` reaches the validator (and is refused with
``payload_too_large``) while a far larger one is refused by gRPC itself (``RESOURCE_EXHAUSTED``).

``WatchVerdicts`` streams every verdict the validator signs after the subscription is live; the
server sends the initial metadata ``matl-subscribed: 1`` at that moment.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn

import grpc

from matl._proto import load
from matl._proto.codec import (
    ERROR_CODE_KEY,
    RPCS,
    SUBSCRIBED_KEY,
    CodecError,
    Rpc,
    from_message,
    status_for,
    to_message,
)
from matl.errors import ConfigError, MalformedPayloadError, ServiceError
from matl.server.service import ValidatorService
from matl.server.threads import ServerHandle

__all__ = [
    "PUSH_BACKLOG",
    "BacklogError",
    "GRPCServerHandle",
    "InternalError",
    "ValidatorServicer",
    "max_message_size",
    "run_grpc",
    "serve_grpc",
    "start_grpc_server",
]

PUSH_BACKLOG = 10_000
"""Verdicts queued for a ``WatchVerdicts`` subscriber that reads too slowly before its stream is
ended with ``RESOURCE_EXHAUSTED``."""
_MARGIN = 64 * 1024
_POLL_S = 0.5
_log = logging.getLogger(__name__)
_Item = dict[str, Any] | None


class InternalError(ServiceError):
    """The server failed on a request for a reason of its own (status ``INTERNAL``)."""

    status = 500
    code = "internal"


class BacklogError(ServiceError):
    """A ``WatchVerdicts`` subscriber fell :data:`PUSH_BACKLOG` verdicts behind."""

    status = 503
    code = "backlog"


def max_message_size(info: dict[str, Any]) -> int:
    """The largest request message the server reads: payload limit + metadata + a margin."""
    return int(info["max_payload_bytes"]) + 2 * int(info.get("max_metadata_bytes", 0)) + _MARGIN


def _abort(context: Any, error: ServiceError) -> NoReturn:
    context.set_trailing_metadata(((ERROR_CODE_KEY, error.code),))
    context.abort(status_for(error), str(error) or error.code)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


class ValidatorServicer:
    """The ``matl.v1.Validator`` servicer: one adapter method per RPC.

    Parameters
    ----------
    service:
        The dispatch every RPC goes through.
    """

    def __init__(self, service: ValidatorService) -> None:
        self.service = service
        self._pb2 = load().pb2
        self._closed = threading.Event()
        self._streams: set[queue.Queue[_Item]] = set()
        self._streams_lock = threading.Lock()

    # ------------------------------------------------------------------------------ unary RPCs
    # Register, Submit, GetReceipt, ...: one method per entry of codec.RPCS, made by _unary_rpc
    # below the class; every one is this adapter.
    def _unary(self, rpc: Rpc, request: Any, context: Any) -> Any:
        try:
            body, payload = from_message(request)
        except CodecError as exc:
            _abort(context, MalformedPayloadError(f"{rpc.op}: {exc}"))
        error: ServiceError
        try:
            reply = self.service.handle(rpc.op, body, payload)
            return to_message(getattr(self._pb2, rpc.reply), reply.body, reply.payload)
        except ServiceError as exc:
            error = exc
        except Exception:  # a bug (or a reply that does not fit its message): log, say little
            _log.exception("gRPC %s failed", rpc.op)
            error = InternalError(f"{rpc.op}: internal error (see the validator's log)")
        _abort(context, error)

    # ---------------------------------------------------------------------------- streaming RPC
    def WatchVerdicts(self, request: Any, context: Any) -> Iterator[Any]:
        """Stream verdicts as rounds close (optionally one round's or one node's only)."""
        want_round: int | None = request.round if request.HasField("round") else None
        want_node: str = request.node_id
        items: queue.Queue[_Item] = queue.Queue(PUSH_BACKLOG)
        overflow = threading.Event()

        def on_verdict(verdict: dict[str, Any]) -> None:
            if want_round is not None and verdict.get("round") != want_round:
                return
            if want_node and verdict.get("node_id") != want_node:
                return
            try:
                items.put_nowait(verdict)
            except queue.Full:
                overflow.set()

        def wake() -> None:
            with contextlib.suppress(queue.Full):  # full: the reader is awake anyway
                items.put_nowait(None)

        unsubscribe = self.service.subscribe(on_verdict)
        with self._streams_lock:
            self._streams.add(items)
        context.add_callback(wake)  # the RPC ended: client cancel, deadline, server stop
        try:
            context.send_initial_metadata(((SUBSCRIBED_KEY, "1"),))
            while context.is_active() and not self._closed.is_set():
                if overflow.is_set():
                    _abort(
                        context,
                        BacklogError(
                            f"the subscriber fell {PUSH_BACKLOG} verdicts behind; subscribe again"
                        ),
                    )
                try:
                    item = items.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is None:
                    continue  # re-check why we were woken
                yield to_message(self._pb2.Verdict, item)
        finally:
            unsubscribe()
            with self._streams_lock:
                self._streams.discard(items)

    def close(self) -> None:
        """End every ``WatchVerdicts`` stream (normally, status ``OK``); new ones end at once."""
        self._closed.set()
        with self._streams_lock:
            streams = list(self._streams)
        for items in streams:
            with contextlib.suppress(queue.Full):
                items.put_nowait(None)


def _unary_rpc(rpc: Rpc) -> Callable[[ValidatorServicer, Any, Any], Any]:
    """The servicer method of ``rpc``: the service operation ``rpc.op`` behind :meth:`_unary`."""

    def method(self: ValidatorServicer, request: Any, context: Any) -> Any:
        return self._unary(rpc, request, context)

    method.__name__ = rpc.method
    method.__qualname__ = f"ValidatorServicer.{rpc.method}"
    method.__doc__ = f"``{rpc.op}``: ``{rpc.request}`` -> ``{rpc.reply}``."
    return method


for _rpc in RPCS:
    setattr(ValidatorServicer, _rpc.method, _unary_rpc(_rpc))
del _rpc


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{port}"


def _build(
    service: ValidatorService, host: str, port: int, max_workers: int
) -> tuple[Any, ValidatorServicer, int]:
    """A started server, its servicer and the bound port."""
    info = service.handle("info", {}).body
    options = [
        ("grpc.max_receive_message_length", max_message_size(info)),
        ("grpc.max_send_message_length", -1),
        # refuse a port another process already serves (gRPC's Linux default shares it)
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="matl-grpc"),
        options=options,
    )
    servicer = ValidatorServicer(service)
    load().pb2_grpc.add_ValidatorServicer_to_server(servicer, server)
    address = _address(host, port)
    try:
        bound = int(server.add_insecure_port(address))
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from None
    if bound == 0:
        raise ConfigError(f"cannot listen for gRPC on {address}")
    server.start()
    return server, servicer, bound


def serve_grpc(
    service: ValidatorService,
    host: str = "127.0.0.1",
    port: int = 50051,
    *,
    max_workers: int = 32,
) -> Any:
    """Serve ``service`` over gRPC (plaintext) from gRPC's own threads.

    Parameters
    ----------
    service:
        The dispatcher to serve.
    host, port:
        Where to listen.
    max_workers:
        Worker threads; each open ``WatchVerdicts`` stream holds one.

    Returns
    -------
    grpc.Server
        Started. ``server.wait_for_termination()`` blocks; ``server.stop(grace)`` ends it.

    Raises
    ------
    ConfigError
        The address cannot be bound.
    """
    server, _, _ = _build(service, host, port, max_workers)
    return server


class GRPCServerHandle(ServerHandle):
    """A running gRPC server (tests, embedding); :func:`start_grpc_server` makes one.

    ``with`` stops it on exit; ``host`` and ``port`` are the bound address (see
    :class:`~matl.server.threads.ServerHandle`).

    Attributes
    ----------
    server:
        The ``grpc.Server``.
    servicer:
        Its :class:`ValidatorServicer`.
    target, url:
        ``host:port`` (what :class:`~matl.client.grpc.GRPCTransport` takes) and
        ``grpc://host:port`` (what :class:`~matl.client.MATLClient` takes).
    """

    def __init__(
        self,
        service: ValidatorService,
        host: str = "127.0.0.1",
        port: int = 0,
        max_workers: int = 32,
    ) -> None:
        self.server, self.servicer, self.port = _build(service, host, port, max_workers)
        self.host = host
        self.target = _address(host, self.port)
        self.url = f"grpc://{self.target}"

    def stop(self, grace: float | None = 1.0) -> None:
        """End the verdict streams, then stop serving (in-flight RPCs get ``grace`` seconds)."""
        self.servicer.close()
        self.server.stop(grace).wait()


def start_grpc_server(
    service: ValidatorService, host: str = "127.0.0.1", port: int = 0, *, max_workers: int = 32
) -> GRPCServerHandle:
    """Serve ``service`` over gRPC in the background; ``port=0`` picks a free port.

    Returns
    -------
    GRPCServerHandle
        Running; read ``.port`` / ``.target`` / ``.url``, call ``.stop()`` (or use ``with``).
    """
    return GRPCServerHandle(service, host, port, max_workers)


def run_grpc(
    service: ValidatorService,
    host: str = "127.0.0.1",
    port: int = 50051,
    *,
    ready: Callable[[int], None] | None = None,
    max_workers: int = 32,
    grace: float = 5.0,
) -> None:
    """Serve ``service`` over gRPC until SIGINT/SIGTERM (blocks), then stop it and return.

    Parameters
    ----------
    service:
        The dispatcher to serve.
    host, port:
        Where to listen (``port=0`` picks a free one).
    ready:
        Called with the bound port once the server accepts connections.
    max_workers:
        Worker threads (each open ``WatchVerdicts`` stream holds one).
    grace:
        Seconds in-flight RPCs get to finish when the server is interrupted.
    """
    handle = GRPCServerHandle(service, host, port, max_workers)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Our own handlers: gRPC's core may otherwise swallow SIGINT, or not, depending on timing.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        if ready is not None:
            ready(handle.port)
        while not stop.is_set() and not handle.server.wait_for_termination(timeout=0.25):
            pass
    finally:
        handle.stop(grace)
