"""The gRPC client transports with the SDK, against a real gRPC server on 127.0.0.1.

Several :class:`MATLClient` / :class:`AsyncMATLClient` nodes run full rounds over
:class:`GRPCTransport` / :class:`AsyncGRPCTransport`; every refusal must surface as the
validator's own exception class, an unreachable or slow server as a
:class:`~matl.errors.TransportError`, and ``watch_verdicts`` must see every verdict.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from matl.client import AsyncMATLClient, MATLClient
from matl.client.base import ClientCore
from matl.client.grpc import AsyncGRPCTransport, GRPCTransport
from matl.crypto import Identity
from matl.errors import (
    AuthenticationError,
    InvalidUpdateError,
    MalformedPayloadError,
    NotFoundError,
    PayloadTooLargeError,
    ReplayError,
    ServiceError,
    TransportError,
    UnknownNodeError,
    WrongRoundError,
)
from matl.protocol import Submission, Verdict
from matl.server.grpc import GRPCServerHandle, max_message_size
from matl.validator import MATLValidator

DIM = 50
MAX_PAYLOAD = 1024
MAX_METADATA = 256
TIMEOUT = 10.0


# validator (a real MATLValidator) and server (it served over gRPC): tests/conftest.py
pytestmark = pytest.mark.served(
    "grpc", dim=DIM, max_payload_bytes=MAX_PAYLOAD, max_metadata_bytes=MAX_METADATA
)


@pytest.fixture
def transport(server: GRPCServerHandle) -> Iterator[GRPCTransport]:
    with GRPCTransport(server.target) as t:
        yield t


def _vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


# ------------------------------------------------------------------------------- full rounds


def test_sync_clients_run_full_rounds(server: GRPCServerHandle, validator: MATLValidator) -> None:
    watcher = GRPCTransport(server.url)  # grpc:// URLs work too
    stream = watcher.watch_verdicts()
    clients = [MATLClient(GRPCTransport(server.target), timeout=TIMEOUT) for _ in range(2)]
    clients.append(MATLClient(server.url, timeout=TIMEOUT))  # the URL picks this transport
    assert isinstance(clients[2].transport, GRPCTransport)
    try:
        info = clients[0].info()
        assert info == validator.info()
        for rnd in range(2):
            receipts = [
                c.submit_gradient(_vector(10 * rnd + i), {"samples": 32, "loss": 0.25 + i})
                for i, c in enumerate(clients)
            ]
            assert all(r.round == rnd and r.verify(validator.validator_id) for r in receipts)
            verdicts = [
                c.wait_for_verdict(r.gradient_hash, timeout=TIMEOUT)
                for c, r in zip(clients, receipts, strict=True)
            ]
            assert all(v.round == rnd and v.verify(validator.validator_id) for v in verdicts)
            pushed = [Verdict.model_validate(next(stream)) for _ in clients]
            assert {v.gradient_hash for v in pushed} == {r.gradient_hash for r in receipts}
            trusted = clients[0].get_trusted_gradients(rnd)
            assert trusted and math.isclose(sum(t.weight for t in trusted), 1.0, rel_tol=1e-5)
        rnd_now, theta = clients[1].global_model()
        assert rnd_now == 2 and theta.shape == (DIM,)
        np.testing.assert_array_equal(theta, validator.global_model())
        assert clients[2].round().round == 2
        rep = clients[0].reputation(clients[1].node_id)
        assert rep.node_id == clients[1].node_id and rep.rounds_seen == 2
    finally:
        stream.close()
        watcher.close()
        for c in clients:
            c.close()
    assert list(stream) == []  # a closed stream just ends


def test_async_clients_run_a_full_round(server: GRPCServerHandle, validator: MATLValidator) -> None:
    async def main() -> None:
        async with AsyncGRPCTransport(server.target) as watcher:
            stream = await watcher.watch_verdicts(round=0)
            clients = [
                AsyncMATLClient(AsyncGRPCTransport(server.target), timeout=TIMEOUT, backoff=0.01)
                for _ in range(3)
            ]
            receipts = await asyncio.gather(
                *(c.submit_gradient(_vector(i)) for i, c in enumerate(clients))
            )
            verdicts = await asyncio.gather(
                *(
                    c.wait_for_verdict(r.gradient_hash, timeout=TIMEOUT)
                    for c, r in zip(clients, receipts, strict=True)
                )
            )
            assert all(v.verify(validator.validator_id) for v in verdicts)
            pushed = []
            async for body in stream:
                pushed.append(Verdict.model_validate(body))
                if len(pushed) == len(clients):
                    break
            assert sorted(v.gradient_hash for v in pushed) == sorted(
                r.gradient_hash for r in receipts
            )
            await stream.aclose()
            assert [b async for b in stream] == []
            rnd, theta = await clients[0].global_model()
            assert rnd == 1 and theta.shape == (DIM,)
            with pytest.raises(NotFoundError):
                await clients[0].get_trusted_gradients(5)
            for c in clients:
                await c.aclose()
            with pytest.raises(TransportError):
                await clients[0].round()  # closed transport (after the retries)

    asyncio.run(main())


def test_close_round_over_grpc(server: GRPCServerHandle, validator: MATLValidator) -> None:
    with MATLClient(GRPCTransport(server.target), timeout=TIMEOUT) as client:
        receipt = client.submit_gradient(_vector(1))
        with pytest.raises(NotFoundError):  # its round is still open
            client.verify_gradient(receipt.gradient_hash)
        (verdict,) = client.close_round()
        assert verdict.gradient_hash == receipt.gradient_hash
        assert verdict.verify(validator.validator_id)
        assert client.verify_gradient(receipt.gradient_hash) == verdict


# ------------------------------------------------------------------------------ refused input


def _registered(transport: GRPCTransport) -> Identity:
    core = ClientCore(Identity.generate())
    transport.request("register", core.register_request(), timeout=TIMEOUT)
    return core.identity


def _submit(transport: GRPCTransport, sub: Submission, **changes: Any) -> Any:
    body, payload = ClientCore.submit_request(sub)
    body.update({k: v for k, v in changes.items() if k != "payload"})
    return transport.request("submit", body, changes.get("payload", payload), timeout=TIMEOUT)


def test_refusals_raise_the_validators_exceptions(
    transport: GRPCTransport, validator: MATLValidator
) -> None:
    node = _registered(transport)
    sub = Submission.create(node, _vector(0), round=0)
    nan = _vector(1)
    nan[0] = np.inf
    before = len(list(validator.ledger.entries()))
    with pytest.raises(AuthenticationError):
        _submit(transport, sub, signature="cd" * 64)
    with pytest.raises(UnknownNodeError):
        _submit(transport, Submission.create(Identity.generate(), _vector(0), round=0))
    with pytest.raises(WrongRoundError):
        _submit(transport, Submission.create(node, _vector(0), round=3))
    with pytest.raises(InvalidUpdateError):
        _submit(transport, Submission.create(node, nan, round=0))
    with pytest.raises(InvalidUpdateError):
        _submit(transport, Submission.create(node, _vector(0, dim=DIM - 1), round=0))
    with pytest.raises(PayloadTooLargeError):  # refused by the validator
        _submit(transport, Submission.create(node, _vector(0, dim=MAX_PAYLOAD // 4 + 8), round=0))
    with pytest.raises(PayloadTooLargeError):  # refused by gRPC's message limit
        _submit(transport, sub, payload=b"\x01" * (max_message_size(validator.info()) + 1))
    with pytest.raises(PayloadTooLargeError):
        _submit(transport, Submission.create(node, _vector(0), round=0, metadata={"x": "y" * 300}))
    with pytest.raises(MalformedPayloadError):
        _submit(transport, sub, payload=b"definitely not safetensors")
    assert len(list(validator.ledger.entries())) == before
    receipt = _submit(transport, sub).body
    with pytest.raises(ReplayError):
        _submit(transport, sub)
    stored = transport.request("receipt", {"node_id": node.node_id, "round": 0}, timeout=TIMEOUT)
    assert stored.body == receipt


def test_ill_typed_bodies_are_malformed(transport: GRPCTransport) -> None:
    node = _registered(transport)
    sub = Submission.create(node, _vector(0), round=0)
    header = sub.header.to_json_dict()
    cases: list[tuple[str, dict[str, Any], bytes | None]] = [
        ("submit", {"header": {**header, "round": "0"}, "signature": sub.signature}, sub.payload),
        ("submit", {"header": {**header, "round": True}, "signature": sub.signature}, sub.payload),
        ("submit", {"header": {**header, "colour": "red"}, "signature": sub.signature}, None),
        ("submit", {"header": {**header, "metadata": {"x": math.nan}}}, sub.payload),
        ("trusted", {"round": 0, "min_score": "high"}, None),
        ("register", {"public_key": 1234}, None),
        ("register", {"public_key": "not hex"}, None),  # reaches the validator
        ("submit", {"header": "no"}, sub.payload),
        ("round", {}, b"unexpected payload"),
    ]
    for op, body, payload in cases:
        with pytest.raises(MalformedPayloadError):
            transport.request(op, body, payload, timeout=TIMEOUT)
    with pytest.raises(ServiceError, match="unknown operation"):
        transport.request("drop_tables", {}, timeout=TIMEOUT)


# ---------------------------------------------------------------------- unreachable and slow


def test_unreachable_server_is_a_transport_error(free_port: Callable[[], int]) -> None:
    target = f"127.0.0.1:{free_port()}"
    with GRPCTransport(target) as transport:
        with pytest.raises(TransportError):
            transport.request("info", {}, timeout=2.0)
        with pytest.raises(TransportError):
            transport.watch_verdicts(timeout=2.0)
    with pytest.raises(TransportError):  # the SDK retries, then gives up
        MATLClient(GRPCTransport(target), retries=1, backoff=0.01, timeout=2.0).info()

    async def main() -> None:
        async with AsyncGRPCTransport(target) as transport:
            with pytest.raises(TransportError):
                await transport.request("info", {}, timeout=2.0)
            with pytest.raises(TransportError):
                await transport.watch_verdicts(timeout=2.0)

    asyncio.run(main())


def test_silent_server_and_closed_channel_are_transport_errors(server: GRPCServerHandle) -> None:
    # a listener that never answers: connections hang until the request's deadline
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        with GRPCTransport(target) as transport:
            with pytest.raises(TransportError):
                transport.request("info", {}, timeout=0.3)
            with pytest.raises(TransportError, match="no answer"):
                transport.watch_verdicts(ready_timeout=0.3)

        async def silent_async() -> None:
            async with AsyncGRPCTransport(target) as transport:
                with pytest.raises(TransportError):
                    await transport.request("info", {}, timeout=0.3)
                with pytest.raises(TransportError, match="no answer"):
                    await transport.watch_verdicts(ready_timeout=0.3)

        asyncio.run(silent_async())

    transport = GRPCTransport(server.target)
    assert transport.request("info", {}, timeout=TIMEOUT).body["dim"] == DIM
    transport.close()
    with pytest.raises(TransportError):
        transport.request("info", {}, timeout=TIMEOUT)

    async def closed_async() -> None:
        transport = AsyncGRPCTransport(server.target)
        assert (await transport.request("info", {}, timeout=TIMEOUT)).body["dim"] == DIM
        await transport.aclose()
        with pytest.raises(TransportError):
            await transport.request("info", {}, timeout=TIMEOUT)

    asyncio.run(closed_async())


def test_stopping_the_server_ends_watchers(server: GRPCServerHandle) -> None:
    with GRPCTransport(server.target) as transport:
        stream = transport.watch_verdicts(node_id="did:key:nobody")
        server.stop()
        assert list(stream) == []
