"""``AsyncMATLClient``: the asyncio SDK (same methods as :class:`~matl.client.MATLClient`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from matl.client.base import ClientCore, RetryPolicy, resolve_async_transport
from matl.client.transport import AsyncTransport, Response
from matl.crypto import Identity
from matl.errors import ReplayError, TransportError
from matl.protocol import NodeReputation, Receipt, RoundInfo, TrustedGradient, Verdict

__all__ = ["AsyncMATLClient"]


class AsyncMATLClient:
    """Submit gradients to a MATL validator and audit its verdicts.

    Parameters
    ----------
    transport:
        An :class:`~matl.client.transport.AsyncTransport` or a URL (``http://host:port``,
        ``grpc://host:port``, ``ws://host:port``).
    identity:
        The node's Ed25519 key (:class:`matl.crypto.Identity`); a fresh one if omitted.
    validator_id:
        Pin the validator's ``did:key`` id; by default it is learned on first contact.
    timeout, retries, backoff:
        Per-request timeout (s) and the :class:`~matl.client.base.RetryPolicy`.

    Examples
    --------
    >>> async with AsyncMATLClient("grpc://127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     receipt = await client.submit_gradient(model.state_dict())
    ...     verdict = await client.wait_for_verdict(receipt.gradient_hash)
    """

    def __init__(
        self,
        transport: AsyncTransport | str,
        identity: Identity | None = None,
        *,
        validator_id: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self.transport: AsyncTransport = (
            resolve_async_transport(transport) if isinstance(transport, str) else transport
        )
        self.core = ClientCore(identity or Identity.generate(), validator_id)
        self.timeout = timeout
        self.policy = RetryPolicy(retries, backoff)
        self._registered = False

    @property
    def node_id(self) -> str:
        """This client's ``did:key`` node id."""
        return self.core.node_id

    async def _call(self, op: str, body: dict[str, Any], payload: bytes | None = None) -> Response:
        attempt = 0
        while True:
            try:
                return await self.transport.request(op, body, payload, timeout=self.timeout)
            except Exception as exc:
                wait = self.policy.delay(attempt, exc)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                attempt += 1

    # ----------------------------------------------------------------------------- methods
    async def info(self) -> dict[str, Any]:
        """The validator's id, mode, vector length and limits (pins its id on first use)."""
        return self.core.learn_info((await self._call("info", {})).body)

    async def register(self) -> str:
        """Register this node's public key (idempotent); returns its node id."""
        if self.core.validator_id is None:
            await self.info()
        node_id = str((await self._call("register", self.core.register_request())).body["node_id"])
        self._registered = True
        return node_id

    async def round(self) -> RoundInfo:
        """The validator's open round."""
        return self.core.round_info((await self._call("round", {})).body)

    async def global_model(self) -> tuple[int, np.ndarray]:
        """``(round, parameters)`` of the current global model."""
        resp = await self._call("model", {})
        return self.core.model(resp.body, resp.payload)

    async def submit_gradient(
        self, gradient: Any, metadata: dict[str, Any] | None = None, *, round: int | None = None
    ) -> Receipt:
        """Sign and submit ``gradient`` (tensor, array, state dict or module parameters).

        ``round`` defaults to the validator's open round. Returns the validator's signed receipt
        (checked); the submission is durable in the validator's ledger when it returns.
        """
        if not self._registered:
            await self.register()
        rnd = (await self.round()).round if round is None else round
        sub = self.core.submission(gradient, round=rnd, metadata=metadata)
        body, payload = self.core.submit_request(sub)
        lost = False
        attempt = 0
        while True:
            try:
                resp = await self.transport.request("submit", body, payload, timeout=self.timeout)
                return self.core.receipt(resp.body, sub)
            except ReplayError:
                if not lost:
                    raise
                stored = (await self._call("receipt", {"node_id": self.node_id, "round": rnd})).body
                rec = self.core.receipt(stored)
                if not self.core.acknowledges(rec, sub):
                    raise
                return rec
            except TransportError as exc:
                wait = self.policy.delay(attempt, exc)
                if wait is None:
                    raise
                lost = True
                await asyncio.sleep(wait)
                attempt += 1

    async def verify_gradient(self, gradient_hash: str) -> Verdict:
        """The validator's verdict on a gradient, its signature checked
        (:class:`~matl.errors.NotFoundError` while the round is still open)."""
        resp = await self._call("verdict", {"gradient_hash": gradient_hash})
        return self.core.verdict(resp.body, gradient_hash)

    async def wait_for_verdict(
        self, gradient_hash: str, *, timeout: float = 60.0, poll: float = 0.05
    ) -> Verdict:
        """Poll :meth:`verify_gradient` until the verdict exists or ``timeout`` passes.

        The interval starts at ``poll`` seconds and grows by half each time up to 0.5 s, so many
        waiting clients do not flood the validator while a round fills up.
        """
        from matl.errors import NotFoundError

        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.verify_gradient(gradient_hash)
            except NotFoundError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
                poll = min(0.5, poll * 1.5)

    async def get_trusted_gradients(
        self, round: int, min_score: float = 0.0
    ) -> list[TrustedGradient]:
        """Accepted gradients of a closed round with score ≥ ``min_score``."""
        body = {"round": round, "min_score": min_score}
        return self.core.trusted((await self._call("trusted", body)).body)

    async def reputation(self, node_id: str | None = None) -> NodeReputation:
        """A node's reputation (this node's by default)."""
        body = {"node_id": node_id or self.node_id}
        return self.core.reputation((await self._call("reputation", body)).body)

    async def close_round(self) -> list[Verdict]:
        """Ask the validator to score the open round now (an operator action)."""
        body = (await self._call("close_round", {})).body
        return [self.core.verdict(v) for v in body["verdicts"]]

    async def aclose(self) -> None:
        """Close the transport."""
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncMATLClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
