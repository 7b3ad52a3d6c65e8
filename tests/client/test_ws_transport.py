"""The SDK over WebSocket: MATLClient / AsyncMATLClient with the WS transports, real server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from matl.client import AsyncMATLClient, AsyncTransport, MATLClient, Transport
from matl.client.ws import AsyncWSTransport, WSTransport
from matl.errors import (
    InvalidUpdateError,
    NotFoundError,
    PayloadTooLargeError,
    ReplayError,
    ServiceError,
    TransportError,
)
from matl.protocol import Verdict
from matl.server.ws import WSServerThread, max_message_size
from matl.validator import MATLValidator

DIM = 50
pytestmark = pytest.mark.served("ws", dim=DIM)  # fresh / shared: tests/conftest.py
Served = tuple[MATLValidator, WSServerThread]


def _vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def test_transports_implement_the_protocols() -> None:
    assert isinstance(WSTransport("ws://127.0.0.1:1"), Transport)
    assert isinstance(AsyncWSTransport("ws://127.0.0.1:1"), AsyncTransport)


def test_full_round_with_blocking_clients_and_pushed_verdicts(fresh: Served) -> None:
    validator, server = fresh
    vid = validator.validator_id
    with WSTransport(server.url) as watcher:
        watcher.subscribe()
        clients = [MATLClient(WSTransport(server.url), retries=0) for _ in range(3)]
        receipts = [c.submit_gradient(_vector(i), {"epoch": i}) for i, c in enumerate(clients)]
        assert all(r.verify(vid) for r in receipts)
        pushed = list(itertools.islice(watcher.iter_verdicts(timeout=5), 3))
    verdicts = [Verdict.model_validate(p) for p in pushed]
    assert {v.gradient_hash for v in verdicts} == {r.gradient_hash for r in receipts}
    assert all(v.verify(vid) for v in verdicts)  # offline: the validator's id is its key
    for client, receipt in zip(clients, receipts, strict=True):
        polled = client.verify_gradient(receipt.gradient_hash)
        assert polled.verify(vid) and polled.node_id == client.node_id
    trusted = clients[0].get_trusted_gradients(0)
    assert {t.gradient_hash for t in trusted} <= {r.gradient_hash for r in receipts}
    assert clients[1].reputation().rounds_seen == 1
    rnd, params = clients[2].global_model()
    assert rnd == 1 and params.shape == (DIM,)
    for client in clients:
        client.close()


def test_full_round_with_async_clients_and_a_subscriber(fresh: Served) -> None:
    validator, server = fresh
    vid = validator.validator_id

    async def main() -> None:
        async with AsyncWSTransport(server.url) as watcher:
            stream = await watcher.subscribe_verdicts()  # subscribed when this returns
            clients = [AsyncMATLClient(AsyncWSTransport(server.url), retries=0) for _ in range(3)]
            receipts = await asyncio.gather(
                *(c.submit_gradient(_vector(i)) for i, c in enumerate(clients))
            )
            pushed: list[Verdict] = []
            async for event in stream:
                pushed.append(Verdict.model_validate(event))
                if len(pushed) == 3:
                    break
            assert {v.gradient_hash for v in pushed} == {r.gradient_hash for r in receipts}
            assert all(v.verify(vid) for v in pushed)
            for client, receipt in zip(clients, receipts, strict=True):
                verdict = await client.wait_for_verdict(receipt.gradient_hash, timeout=5)
                assert verdict in pushed
            trusted = await clients[0].get_trusted_gradients(0)
            assert {t.gradient_hash for t in trusted} <= {r.gradient_hash for r in receipts}
            assert (await clients[1].reputation()).node_id == clients[1].node_id
            for client in clients:
                await client.aclose()
            await stream.aclose()

    asyncio.run(main())


def test_concurrent_requests_on_one_async_connection(fresh: Served) -> None:
    validator, server = fresh

    async def main() -> None:
        async with AsyncWSTransport(server.url) as transport:
            replies = await asyncio.gather(
                *(transport.request("round" if i % 2 else "info", {}, timeout=5) for i in range(40))
            )
            model = await transport.request("model", {}, timeout=5)
        assert all(r.body["validator_id"] == validator.validator_id for r in replies)
        assert model.payload is not None and model.body["dim"] == DIM

    asyncio.run(main())


def test_service_errors_are_raised_by_class(shared: Served) -> None:
    _, server = shared
    with MATLClient(WSTransport(server.url), retries=0) as client:
        client.register()
        bad = _vector(0)
        bad[2] = np.nan
        with pytest.raises(InvalidUpdateError):
            client.submit_gradient(bad)
        with pytest.raises(PayloadTooLargeError):  # refused by the service: over max_payload
            client.submit_gradient(_vector(0, dim=1000))
        with pytest.raises(NotFoundError):
            client.verify_gradient("0" * 64)
        with pytest.raises(ServiceError):
            client.transport.request("no_such_op", {}, timeout=5)
        assert client.round().submissions == 0

    async def main() -> None:
        async with AsyncMATLClient(AsyncWSTransport(server.url), retries=0) as aclient:
            with pytest.raises(NotFoundError):
                await aclient.verify_gradient("1" * 64)
            assert (await aclient.round()).submissions == 0

    asyncio.run(main())


def test_frame_over_the_limit_is_payload_too_large(shared: Served) -> None:
    validator, server = shared
    huge = b"\0" * (max_message_size(validator.info()) + 1)
    with WSTransport(server.url) as transport:
        with pytest.raises(PayloadTooLargeError):
            transport.request("submit", {"header": {}, "signature": "00"}, huge, timeout=5)
        assert transport.request("round", {}, timeout=5).body["round"] == 0  # reconnects

    async def main() -> None:
        async with AsyncWSTransport(server.url) as transport:
            with pytest.raises(PayloadTooLargeError):
                await transport.request("submit", {}, huge, timeout=5)

    asyncio.run(main())


def test_replay_over_ws(fresh: Served) -> None:
    _, server = fresh
    with MATLClient(WSTransport(server.url), retries=0) as client:
        client.submit_gradient(_vector(0))
        with pytest.raises(ReplayError):
            client.submit_gradient(_vector(1))


def test_unreachable_server_is_a_transport_error(free_port: Callable[[], int]) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    with WSTransport(url) as transport, pytest.raises(TransportError, match="cannot connect"):
        transport.request("info", {}, timeout=2)

    async def main() -> None:
        async with AsyncWSTransport(url) as transport:
            with pytest.raises(TransportError, match="cannot connect"):
                await transport.request("info", {}, timeout=2)

    asyncio.run(main())


@contextlib.contextmanager
def _mute_listener() -> Iterator[str]:
    """A listening socket nobody serves: TCP connects, the WebSocket handshake never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}"


def test_handshake_timeout_is_a_transport_error() -> None:
    with (
        _mute_listener() as url,
        WSTransport(url) as transport,
        pytest.raises(TransportError),
    ):
        transport.request("info", {}, timeout=0.3)

    async def main() -> None:
        with _mute_listener() as url:
            async with AsyncWSTransport(url) as transport:
                with pytest.raises(TransportError):
                    await transport.request("info", {}, timeout=0.3)

    asyncio.run(main())


def test_server_shutdown_fails_pending_work_and_ends_streams(fresh: Served) -> None:
    _, server = fresh

    async def main() -> None:
        transport = AsyncWSTransport(server.url)
        stream = await transport.subscribe_verdicts()
        await asyncio.to_thread(server.stop)
        assert [v async for v in stream] == []  # the stream ends with the connection
        with pytest.raises(TransportError):
            await transport.request("round", {}, timeout=1)
        await transport.aclose()

    asyncio.run(main())
