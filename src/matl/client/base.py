"""The IO-free core shared by :class:`~matl.client.MATLClient` and
:class:`~matl.client.AsyncMATLClient`.

Everything that is not waiting on a socket lives here, once: building and signing requests,
checking and parsing replies (every receipt and verdict signature is verified against the
validator's id), the retry policy, and picking a transport from a URL. The two clients are thin
loops around it, in the style of httpx's ``Client`` / ``AsyncClient``.

**Retries are safe.** A submission is identified by (node, round, nonce). If a network failure
hides whether the validator stored it, the retry resends the very same signed submission; the
validator refuses the duplicate with :class:`~matl.errors.ReplayError`, and the client then asks
for the stored receipt and returns it when its nonce and gradient hash are the ones it sent.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from matl.crypto import Identity
from matl.errors import AuthenticationError, ConfigError, TransportError
from matl.protocol import NodeReputation, Receipt, RoundInfo, Submission, TrustedGradient, Verdict
from matl.wire import decode_vector

__all__ = ["ClientCore", "RetryPolicy", "resolve_async_transport", "resolve_transport"]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry on :class:`~matl.errors.TransportError` only, with exponential back-off.

    Attempt ``k`` (0-based) waits ``backoff * 2**k`` seconds before the next one; at most
    ``retries`` retries follow the first attempt. Service errors (4xx) are never retried.
    """

    retries: int = 3
    backoff: float = 0.2

    def delay(self, attempt: int, exc: Exception) -> float | None:
        """Seconds to wait before retrying after ``exc`` on ``attempt``, or ``None`` to give up."""
        if not isinstance(exc, TransportError) or attempt >= self.retries:
            return None
        return float(self.backoff * (2**attempt))


class ClientCore:
    """Request building and reply checking, with no IO.

    Parameters
    ----------
    identity:
        The node's key; it signs every submission.
    validator_id:
        The validator's ``did:key`` id. Receipts and verdicts must carry valid signatures by this
        id. ``None`` trusts the id the validator reports on first contact (trust on first use).
    """

    def __init__(self, identity: Identity, validator_id: str | None = None) -> None:
        self.identity = identity
        self.validator_id = validator_id
        self.node_id = identity.node_id

    # ---------------------------------------------------------------------------- requests
    def register_request(self) -> dict[str, Any]:
        """Body of ``register``."""
        return {"public_key": self.identity.public_key.hex()}

    def submission(
        self, gradient: Any, *, round: int, metadata: dict[str, Any] | None
    ) -> Submission:
        """Sign ``gradient`` (tensor, array, state dict or module) for ``round``."""
        return Submission.create(self.identity, gradient, round=round, metadata=metadata)

    @staticmethod
    def submit_request(sub: Submission) -> tuple[dict[str, Any], bytes]:
        """Body and payload of ``submit``."""
        return {"header": sub.header.to_json_dict(), "signature": sub.signature}, sub.payload

    # ----------------------------------------------------------------------------- replies
    def learn_info(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check ``info``; pins the validator id on first contact."""
        vid = body.get("validator_id")
        if self.validator_id is None:
            self.validator_id = vid
        elif vid != self.validator_id:
            raise AuthenticationError(
                f"the server says it is validator {vid}, expected {self.validator_id}"
            )
        return body

    def _signer(self) -> str:
        if self.validator_id is None:
            raise ConfigError("the validator id is unknown: call info() first or pass validator_id")
        return self.validator_id

    def receipt(self, body: Any, sub: Submission | None = None) -> Receipt:
        """Parse a receipt, check the validator's signature and that it acknowledges ``sub``."""
        rec = Receipt.model_validate(body)
        if not rec.verify(self._signer()):
            raise AuthenticationError("the receipt's validator signature does not verify")
        if sub is not None and not self.acknowledges(rec, sub):
            raise AuthenticationError("the receipt acknowledges a different submission")
        return rec

    @staticmethod
    def acknowledges(rec: Receipt, sub: Submission) -> bool:
        """Whether ``rec`` is the receipt of exactly ``sub``."""
        h = sub.header
        return (rec.node_id, rec.round, rec.nonce, rec.gradient_hash) == (
            h.node_id,
            h.round,
            h.nonce,
            h.gradient_hash,
        )

    def verdict(self, body: Any, gradient_hash: str | None = None) -> Verdict:
        """Parse a verdict and check the validator's signature (offline-verifiable)."""
        v = Verdict.model_validate(body)
        if not v.verify(self._signer()):
            raise AuthenticationError("the verdict's validator signature does not verify")
        if gradient_hash is not None and v.gradient_hash != gradient_hash:
            raise AuthenticationError("the verdict is for a different gradient")
        return v

    @staticmethod
    def round_info(body: Any) -> RoundInfo:
        """Parse ``round``."""
        return RoundInfo.model_validate(body)

    @staticmethod
    def trusted(body: Any) -> list[TrustedGradient]:
        """Parse ``trusted``."""
        return [TrustedGradient.model_validate(g) for g in body["gradients"]]

    @staticmethod
    def reputation(body: Any) -> NodeReputation:
        """Parse ``reputation``."""
        return NodeReputation.model_validate(body)

    @staticmethod
    def model(body: Any, payload: bytes | None) -> tuple[int, np.ndarray]:
        """Parse ``model``: (round, parameters)."""
        if payload is None:
            raise TransportError("the model reply carried no payload")
        vec = decode_vector(payload, max_bytes=len(payload), expected_size=int(body["dim"]))
        return int(body["round"]), vec


#: URL scheme -> (module, blocking transport class, asyncio transport class, takes host:port only)
_TRANSPORTS: dict[str, tuple[str, str, str, bool]] = {
    "http": ("matl.client.http", "HTTPTransport", "AsyncHTTPTransport", False),
    "https": ("matl.client.http", "HTTPTransport", "AsyncHTTPTransport", False),
    "grpc": ("matl.client.grpc", "GRPCTransport", "AsyncGRPCTransport", True),
    "ws": ("matl.client.ws", "WSTransport", "AsyncWSTransport", False),
    "wss": ("matl.client.ws", "WSTransport", "AsyncWSTransport", False),
}


def _from_url(url: str, *, asynchronous: bool) -> Any:
    scheme, sep, rest = url.partition("://")
    entry = _TRANSPORTS.get(scheme.lower()) if sep else None
    if entry is None:
        raise ConfigError(f"unsupported validator URL {url!r}: use http://, grpc:// or ws://")
    module, sync_cls, async_cls, bare = entry
    cls = getattr(importlib.import_module(module), async_cls if asynchronous else sync_cls)
    return cls(rest if bare else url)


def resolve_transport(url: str) -> Any:
    """A blocking transport for ``http(s)://``, ``grpc://`` or ``ws(s)://`` URLs."""
    return _from_url(url, asynchronous=False)


def resolve_async_transport(url: str) -> Any:
    """An asyncio transport for ``http(s)://``, ``grpc://`` or ``ws(s)://`` URLs."""
    return _from_url(url, asynchronous=True)
