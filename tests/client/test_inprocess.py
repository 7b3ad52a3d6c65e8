"""MATLClient / AsyncMATLClient over the in-process transport: the full API, signature checks,
and retries that are safe because submissions are idempotent by (node, round, nonce)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from matl.client import (
    AsyncInProcessTransport,
    AsyncMATLClient,
    InProcessTransport,
    MATLClient,
    Response,
)
from matl.crypto import Identity
from matl.errors import (
    AuthenticationError,
    NotFoundError,
    ReplayError,
    ServiceError,
    TransportError,
)
from matl.ledger import open_ledger
from matl.server.service import ValidatorService
from matl.validator import MATLValidator, ValidatorConfig

DIM = 30


@pytest.fixture
def service(tmp_path: Path) -> ValidatorService:
    cfg = ValidatorConfig(dim=DIM, round_size=4)
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    return ValidatorService(MATLValidator(cfg, ledger, Identity.generate()))


def _update(seed: int, sign: float = 1.0) -> np.ndarray:
    base = np.random.default_rng(7).normal(size=DIM)
    return (sign * (base + np.random.default_rng(seed).normal(scale=0.5, size=DIM))).astype(
        np.float32
    )


def test_a_round_through_the_sync_client(service: ValidatorService) -> None:
    clients = [MATLClient(InProcessTransport(service)) for _ in range(4)]
    grads: list[Any] = [_update(0), torch.from_numpy(_update(1)), {"w": _update(2)}]
    grads.append(-4 * _update(3))
    receipts = [
        c.submit_gradient(g, {"i": i}) for i, (c, g) in enumerate(zip(clients, grads, strict=False))
    ]
    assert all(r.round == 0 for r in receipts)
    verdicts = [c.verify_gradient(r.gradient_hash) for c, r in zip(clients, receipts, strict=False)]
    assert [v.verdict for v in verdicts] == ["accepted"] * 3 + ["flagged"]
    trusted = clients[0].get_trusted_gradients(0, min_score=0.5)
    assert {t.node_id for t in trusted} == {c.node_id for c in clients[:3]}
    assert clients[3].reputation().reputation < clients[0].reputation().reputation
    rnd, model = clients[0].global_model()
    assert rnd == 1 and model.shape == (DIM,)


def test_a_pinned_wrong_validator_id_is_refused(service: ValidatorService) -> None:
    other = Identity.generate().node_id
    client = MATLClient(InProcessTransport(service), validator_id=other)
    with pytest.raises(AuthenticationError, match="expected"):
        client.info()


class _LosesFirstAck:
    """Fault injection: the first ``submit`` reaches the validator but its reply is lost."""

    def __init__(self, inner: InProcessTransport) -> None:
        self.inner = inner
        self.lost = 0

    def request(
        self, op: str, body: dict[str, Any], payload: bytes | None = None, *, timeout: float
    ) -> Response:
        resp = self.inner.request(op, body, payload, timeout=timeout)
        if op == "submit" and self.lost == 0:
            self.lost += 1
            raise TransportError("connection reset after the request was sent")
        return resp

    def close(self) -> None:
        self.inner.close()


def test_a_retry_after_a_lost_ack_returns_the_stored_receipt(service: ValidatorService) -> None:
    transport = _LosesFirstAck(InProcessTransport(service))
    client = MATLClient(transport, backoff=0.0)
    receipt = client.submit_gradient(_update(0))
    assert transport.lost == 1
    entries = [e for e in service.validator.ledger.entries() if e.kind == "submission"]
    assert len(entries) == 1 and entries[0].seq == receipt.sequence
    # A real replay (not a retry) is still refused.
    with pytest.raises(ReplayError):
        client.submit_gradient(_update(5), round=0)


class _AlwaysDown:
    def request(self, *args: Any, **kwargs: Any) -> Response:
        raise TransportError("validator unreachable")

    def close(self) -> None:
        pass


def test_transport_errors_are_retried_then_raised() -> None:
    client = MATLClient(_AlwaysDown(), retries=2, backoff=0.0)
    with pytest.raises(TransportError, match="unreachable"):
        client.info()


def test_service_errors_are_not_retried(service: ValidatorService) -> None:
    client = MATLClient(InProcessTransport(service))
    with pytest.raises(NotFoundError):
        client.verify_gradient("0" * 64)
    with pytest.raises(ServiceError, match="unknown operation"):
        service.handle("drop_tables", {})


def test_the_async_client_has_the_same_methods(service: ValidatorService) -> None:
    async def main() -> list[str]:
        clients = [AsyncMATLClient(AsyncInProcessTransport(service)) for _ in range(4)]
        receipts = await asyncio.gather(
            *(c.submit_gradient(_update(i)) for i, c in enumerate(clients))
        )
        verdicts = [
            await c.wait_for_verdict(r.gradient_hash, timeout=10)
            for c, r in zip(clients, receipts, strict=False)
        ]
        rep = await clients[0].reputation()
        assert rep.rounds_seen == 1
        trusted = await clients[0].get_trusted_gradients(0)
        assert len(trusted) == 4
        for c in clients:
            await c.aclose()
        return [v.verdict for v in verdicts]

    assert asyncio.run(main()) == ["accepted"] * 4


def test_urls_pick_their_transport_and_bad_schemes_are_refused() -> None:
    from matl.client.base import resolve_async_transport, resolve_transport
    from matl.errors import ConfigError

    assert type(resolve_transport("http://127.0.0.1:1")).__name__ == "HTTPTransport"
    assert type(resolve_transport("grpc://127.0.0.1:1")).__name__ == "GRPCTransport"
    assert type(resolve_async_transport("ws://127.0.0.1:1")).__name__ == "AsyncWSTransport"
    for bad in ("ftp://host", "127.0.0.1:8000"):
        with pytest.raises(ConfigError, match="unsupported validator URL"):
            MATLClient(bad)
