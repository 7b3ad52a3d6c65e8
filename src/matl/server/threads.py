"""What the background servers of the transports share: ``with`` support and the serving thread.

* :class:`ServerHandle`: a running server that ``with`` stops on exit (every transport's handle).
* :class:`ServerThread`: a server run by its own asyncio event loop on a socket bound up front,
  either from a daemon thread (:meth:`~ServerThread.start`, for tests and embedding) or in the
  calling thread until interrupted (:meth:`~ServerThread.run`, for the command line); the HTTP
  (:class:`~matl.server.http.HTTPServerThread`) and WebSocket
  (:class:`~matl.server.ws.WSServerThread`) servers are built on it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import ClassVar, TypeVar

from matl._closing import Closing

__all__ = ["ServerHandle", "ServerThread"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T", bound="ServerThread")


class ServerHandle(Closing):
    """A running server; ``with`` stops it on exit.

    Attributes
    ----------
    host, port:
        The bound address (``port`` is the real one when 0 was asked for).
    url:
        Where clients reach it (``scheme://host:port``).
    """

    host: str
    port: int
    url: str

    def stop(self) -> None:
        """Stop serving."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop serving, with :meth:`stop`'s defaults (what leaving ``with`` does)."""
        self.stop()


class ServerThread(ServerHandle):
    """A server run by an asyncio event loop of its own, on a socket bound at construction.

    Subclasses name their protocol and implement :meth:`_serve` and :meth:`_request_stop`.

    Parameters
    ----------
    host, port:
        Where to listen; ``port=0`` picks a free port.
    """

    scheme: ClassVar[str]
    """URL scheme, also the thread's name: ``matl-<scheme>-<port>``."""
    protocol: ClassVar[str]
    """The protocol's name in messages (``HTTP``, ``WebSocket``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.create_server((host, port))
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self.url = f"{self.scheme}://{host}:{self.port}"
        self._ready = threading.Event()
        self._up = False  # the server accepted connections
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._main, name=f"matl-{self.scheme}-{self.port}", daemon=True
        )

    async def _serve(self, ready: Callable[[], None]) -> None:
        """Serve on ``self._sock`` until :meth:`_request_stop`; call ``ready()`` once serving."""
        raise NotImplementedError

    def _request_stop(self) -> None:
        """Make :meth:`_serve` return (called from any thread, possibly before it started)."""
        raise NotImplementedError

    def _run(self, ready: Callable[[], None] | None) -> None:
        def serving() -> None:
            self._up = True
            if ready is not None:
                ready()

        try:
            asyncio.run(self._serve(serving))
        finally:
            self._sock.close()

    def run(self, ready: threading.Event | None = None) -> None:
        """Serve in the calling thread until interrupted or stopped (blocks).

        ``ready`` is set once connections are accepted, and when serving ends (so that nobody
        waits forever on a server that failed to start).
        """
        try:
            self._run(None if ready is None else ready.set)
        finally:
            if ready is not None:
                ready.set()

    def _main(self) -> None:
        try:
            self._run(self._ready.set)
        except BaseException as exc:  # reported by start(), or logged once it served
            self._error = exc
            if self._up:
                _log.error("the %s server on %s failed", self.protocol, self.url, exc_info=exc)
        finally:
            self._ready.set()

    def start(self: _T, timeout: float = 10.0) -> _T:
        """Serve from a daemon thread; returns once connections are accepted."""
        self._thread.start()
        if not self._ready.wait(timeout) or not self._up or self._error is not None:
            self.stop()
            raise RuntimeError(
                f"the {self.protocol} server on {self.url} did not start"
            ) from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait (at most ``timeout`` seconds) for the thread to end."""
        self._request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
