"""The SDK over HTTP: MATLClient / AsyncMATLClient with the HTTP transports, real server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from matl.client import AsyncMATLClient, AsyncTransport, MATLClient, Transport
from matl.client.http import AsyncHTTPTransport, HTTPTransport
from matl.crypto import Identity
from matl.errors import (
    InvalidUpdateError,
    NotFoundError,
    PayloadTooLargeError,
    ReplayError,
    ServiceError,
    TransportError,
    UnknownNodeError,
    WrongRoundError,
)
from matl.ledger import verify_ledger
from matl.protocol import Receipt, Submission
from matl.server.http import HTTPServerThread
from matl.validator import MATLValidator

DIM = 50
pytestmark = pytest.mark.served("http", dim=DIM)  # fresh / shared: tests/conftest.py
Served = tuple[MATLValidator, HTTPServerThread]


def _vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def test_transports_implement_the_protocols() -> None:
    sync = HTTPTransport("http://127.0.0.1:1")
    aio = AsyncHTTPTransport("http://127.0.0.1:1")
    assert isinstance(sync, Transport) and isinstance(aio, AsyncTransport)
    sync.close()
    asyncio.run(aio.aclose())


def test_full_round_with_blocking_clients(fresh: Served) -> None:
    validator, server = fresh
    clients = [MATLClient(HTTPTransport(server.url), retries=0) for _ in range(3)]
    done: dict[int, Receipt] = {}

    def run(i: int) -> None:
        done[i] = clients[i].submit_gradient(_vector(i), {"samples": 32})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    receipts = [done[i] for i in range(3)]
    vid = validator.validator_id
    for client, receipt in zip(clients, receipts, strict=True):
        assert receipt.verify(vid)
        verdict = client.wait_for_verdict(receipt.gradient_hash, timeout=5)
        assert verdict.verify(vid) and verdict.node_id == client.node_id  # offline check
        assert verdict.round == 0
    trusted = clients[0].get_trusted_gradients(0)
    assert {t.gradient_hash for t in trusted} <= {r.gradient_hash for r in receipts}
    rep = clients[1].reputation()
    assert rep.node_id == clients[1].node_id and rep.rounds_seen == 1
    rnd, params = clients[2].global_model()
    assert rnd == 1 and params.shape == (DIM,) and np.isfinite(params).all()
    assert clients[0].round().round == 1
    assert verify_ledger(validator.ledger, validator_id=vid).ok
    for client in clients:
        client.close()


def test_full_round_with_async_clients(fresh: Served) -> None:
    validator, server = fresh

    async def main() -> None:
        clients = [AsyncMATLClient(AsyncHTTPTransport(server.url), retries=0) for _ in range(3)]
        receipts = await asyncio.gather(
            *(c.submit_gradient(_vector(i)) for i, c in enumerate(clients))
        )
        waits = [
            c.wait_for_verdict(r.gradient_hash, timeout=5)
            for c, r in zip(clients, receipts, strict=True)
        ]
        verdicts = await asyncio.gather(*waits)
        assert all(v.verify(validator.validator_id) for v in verdicts)
        assert {v.node_id for v in verdicts} == {c.node_id for c in clients}
        trusted = await clients[0].get_trusted_gradients(0, min_score=0.0)
        assert {t.gradient_hash for t in trusted} <= {r.gradient_hash for r in receipts}
        assert (await clients[1].reputation(clients[2].node_id)).node_id == clients[2].node_id
        assert (await clients[2].global_model())[0] == 1
        for c in clients:
            await c.aclose()

    asyncio.run(main())


def test_close_round_replay_and_wrong_round(fresh: Served) -> None:
    validator, server = fresh
    with MATLClient(HTTPTransport(server.url), retries=0) as client:
        receipt = client.submit_gradient(_vector(0))
        with pytest.raises(NotFoundError):
            client.verify_gradient(receipt.gradient_hash)
        with pytest.raises(ReplayError):
            client.submit_gradient(_vector(1))
        with pytest.raises(WrongRoundError):
            client.submit_gradient(_vector(1), round=4)
        [verdict] = client.close_round()
        assert verdict.gradient_hash == receipt.gradient_hash
        assert client.verify_gradient(receipt.gradient_hash) == verdict
    assert validator.round == 1


def test_service_errors_are_raised_by_class(shared: Served) -> None:
    _, server = shared
    node = Identity.generate()
    transport = HTTPTransport(server.url)
    with MATLClient(transport, node, retries=0) as client:
        client.register()
        bad = _vector(0)
        bad[1] = np.inf
        with pytest.raises(InvalidUpdateError):
            client.submit_gradient(bad)
        with pytest.raises(PayloadTooLargeError):
            client.submit_gradient(_vector(0, dim=1000))
        stranger = Submission.create(Identity.generate(), _vector(0), round=0)
        body = {"header": stranger.header.to_json_dict(), "signature": stranger.signature}
        with pytest.raises(UnknownNodeError):
            transport.request("submit", body, stranger.payload, timeout=5)
        with pytest.raises(ServiceError, match="no op"):
            transport.request("no_such_op", {}, timeout=5)
        assert client.round().submissions == 0


def test_unreachable_server_is_a_transport_error(free_port: Callable[[], int]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with HTTPTransport(url) as transport, pytest.raises(TransportError, match="failed"):
        transport.request("info", {}, timeout=2)

    async def main() -> None:
        async with AsyncHTTPTransport(url) as aio:
            with pytest.raises(TransportError):
                await aio.request("info", {}, timeout=2)

    asyncio.run(main())


@contextlib.contextmanager
def _silent_server(reply: bytes | None = None) -> Iterator[str]:
    """A TCP server that reads a request and answers ``reply`` (or never answers)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                if reply is not None:
                    conn.sendall(reply)
                stop.wait(5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        thread.join(5)


_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"
_TEAPOT = b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"


@pytest.mark.parametrize(
    ("reply", "timeout", "error", "match"),
    [
        (None, 0.2, TransportError, "timed out"),  # never answers
        (_GATEWAY, 5, TransportError, "502"),  # a foreign 5xx is a transport error
        (_TEAPOT, 5, ServiceError, "418"),  # and a foreign 4xx a service error
    ],
    ids=["timeout", "foreign 5xx", "foreign 4xx"],
)
def test_silent_or_foreign_server(
    reply: bytes | None, timeout: float, error: type[Exception], match: str
) -> None:
    with (
        _silent_server(reply) as url,
        HTTPTransport(url) as transport,
        pytest.raises(error, match=match),
    ):
        transport.request("round", {}, timeout=timeout)
