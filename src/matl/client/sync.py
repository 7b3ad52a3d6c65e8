"""``MATLClient``: the blocking SDK."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from matl.client.base import ClientCore, RetryPolicy, resolve_transport
from matl.client.transport import Response, Transport
from matl.crypto import Identity
from matl.errors import ReplayError, TransportError
from matl.protocol import NodeReputation, Receipt, RoundInfo, TrustedGradient, Verdict

__all__ = ["MATLClient"]


class MATLClient:
    """Submit gradients to a MATL validator and audit its verdicts.

    Parameters
    ----------
    transport:
        A :class:`~matl.client.transport.Transport` or a URL (``http://host:port``,
        ``grpc://host:port``, ``ws://host:port``).
    identity:
        The node's Ed25519 key (:class:`matl.crypto.Identity`); a fresh one if omitted.
    validator_id:
        Pin the validator's ``did:key`` id; by default it is learned on first contact.
    timeout, retries, backoff:
        Per-request timeout (s) and the :class:`~matl.client.base.RetryPolicy`.

    Examples
    --------
    >>> with MATLClient("http://127.0.0.1:8000") as client:     # doctest: +SKIP
    ...     receipt = client.submit_gradient(model.state_dict())
    ...     verdict = client.wait_for_verdict(receipt.gradient_hash)
    """

    def __init__(
        self,
        transport: Transport | str,
        identity: Identity | None = None,
        *,
        validator_id: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self.transport: Transport = (
            resolve_transport(transport) if isinstance(transport, str) else transport
        )
        self.core = ClientCore(identity or Identity.generate(), validator_id)
        self.timeout = timeout
        self.policy = RetryPolicy(retries, backoff)
        self._registered = False

    @property
    def node_id(self) -> str:
        """This client's ``did:key`` node id."""
        return self.core.node_id

    def _call(self, op: str, body: dict[str, Any], payload: bytes | None = None) -> Response:
        attempt = 0
        while True:
            try:
                return self.transport.request(op, body, payload, timeout=self.timeout)
            except Exception as exc:
                wait = self.policy.delay(attempt, exc)
                if wait is None:
                    raise
                time.sleep(wait)
                attempt += 1

    # ----------------------------------------------------------------------------- methods
    def info(self) -> dict[str, Any]:
        """The validator's id, mode, vector length and limits (pins its id on first use)."""
        return self.core.learn_info(self._call("info", {}).body)

    def register(self) -> str:
        """Register this node's public key (idempotent); returns its node id."""
        if self.core.validator_id is None:
            self.info()
        node_id = str(self._call("register", self.core.register_request()).body["node_id"])
        self._registered = True
        return node_id

    def round(self) -> RoundInfo:
        """The validator's open round."""
        return self.core.round_info(self._call("round", {}).body)

    def global_model(self) -> tuple[int, np.ndarray]:
        """``(round, parameters)`` of the current global model."""
        resp = self._call("model", {})
        return self.core.model(resp.body, resp.payload)

    def submit_gradient(
        self, gradient: Any, metadata: dict[str, Any] | None = None, *, round: int | None = None
    ) -> Receipt:
        """Sign and submit ``gradient`` (tensor, array, state dict or module parameters).

        ``round`` defaults to the validator's open round. Returns the validator's signed receipt
        (checked); the submission is durable in the validator's ledger when it returns.
        """
        if not self._registered:
            self.register()
        rnd = self.round().round if round is None else round
        sub = self.core.submission(gradient, round=rnd, metadata=metadata)
        body, payload = self.core.submit_request(sub)
        lost = False
        attempt = 0
        while True:
            try:
                return self.core.receipt(
                    self.transport.request("submit", body, payload, timeout=self.timeout).body, sub
                )
            except ReplayError:
                if not lost:
                    raise
                stored = self._call("receipt", {"node_id": self.node_id, "round": rnd}).body
                rec = self.core.receipt(stored)
                if not self.core.acknowledges(rec, sub):
                    raise
                return rec
            except TransportError as exc:
                wait = self.policy.delay(attempt, exc)
                if wait is None:
                    raise
                lost = True
                time.sleep(wait)
                attempt += 1

    def verify_gradient(self, gradient_hash: str) -> Verdict:
        """The validator's verdict on a gradient, its signature checked
        (:class:`~matl.errors.NotFoundError` while the round is still open)."""
        return self.core.verdict(
            self._call("verdict", {"gradient_hash": gradient_hash}).body, gradient_hash
        )

    def wait_for_verdict(
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
                return self.verify_gradient(gradient_hash)
            except NotFoundError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
                poll = min(0.5, poll * 1.5)

    def get_trusted_gradients(self, round: int, min_score: float = 0.0) -> list[TrustedGradient]:
        """Accepted gradients of a closed round with score ≥ ``min_score``."""
        body = {"round": round, "min_score": min_score}
        return self.core.trusted(self._call("trusted", body).body)

    def reputation(self, node_id: str | None = None) -> NodeReputation:
        """A node's reputation (this node's by default)."""
        body = {"node_id": node_id or self.node_id}
        return self.core.reputation(self._call("reputation", body).body)

    def close_round(self) -> list[Verdict]:
        """Ask the validator to score the open round now (an operator action)."""
        body = self._call("close_round", {}).body
        return [self.core.verdict(v) for v in body["verdicts"]]

    def close(self) -> None:
        """Close the transport."""
        self.transport.close()

    def __enter__(self) -> MATLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
