"""The one dispatch every transport calls: ``ValidatorService.handle(op, body, payload)``.

HTTP, gRPC and WebSocket adapters only translate their wire format to ``(op, body, payload)``
and back; request validation, error classes and replies live here, once. Bodies are JSON-able
dicts; ``payload`` carries binary data (a submission's safetensors, the global model).

========== ===================================================== ==============================
op         body                                                  reply
========== ===================================================== ==============================
info       ``{}``                                                validator id, mode, dim, limits
register   ``{"public_key": hex}``                               ``{"node_id"}``
submit     ``{"header": SubmissionHeader, "signature": hex}``    :class:`~matl.protocol.Receipt`
           + payload (safetensors)
receipt    ``{"node_id", "round"}``                              :class:`~matl.protocol.Receipt`
round      ``{}``                                                :class:`~matl.protocol.RoundInfo`
model      ``{}``                                                ``{"round", "dim",
                                                                 "gradient_hash"}`` + payload
verdict    ``{"gradient_hash"}``                                 :class:`~matl.protocol.Verdict`
trusted    ``{"round", "min_score"}``                            ``{"gradients": [...]}``
reputation ``{"node_id"}``                                       :class:`~matl.protocol.NodeReputation`
close_round ``{}``                                               ``{"round", "verdicts": [...]}``
========== ===================================================== ==============================

Errors are always :class:`~matl.errors.ServiceError` subclasses (with ``status`` and ``code``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError

from matl.errors import AuthenticationError, MalformedPayloadError, MATLError, ServiceError
from matl.protocol import Submission, SubmissionHeader, Verdict
from matl.validator.core import MATLValidator, model_payload

__all__ = ["Reply", "ValidatorService"]


@dataclass(frozen=True)
class Reply:
    """A reply: JSON-able ``body`` and optional binary ``payload``."""

    body: Any
    payload: bytes | None = None


class ValidatorService:
    """Request dispatch over a :class:`~matl.validator.MATLValidator`."""

    OPS: ClassVar[tuple[str, ...]] = (
        "info",
        "register",
        "submit",
        "receipt",
        "round",
        "model",
        "verdict",
        "trusted",
        "reputation",
        "close_round",
    )

    def __init__(self, validator: MATLValidator) -> None:
        self.validator = validator

    def handle(self, op: str, body: dict[str, Any], payload: bytes | None = None) -> Reply:
        """Run one request; raises only :class:`~matl.errors.ServiceError` on bad input."""
        if op not in self.OPS:
            raise ServiceError(f"unknown operation {op!r}; valid: {', '.join(self.OPS)}")
        if not isinstance(body, dict):
            raise MalformedPayloadError(f"{op}: the request body must be a JSON object")
        handler: Callable[[dict[str, Any], bytes | None], Reply] = getattr(self, f"_op_{op}")
        try:
            return handler(body, payload)
        except ServiceError:
            raise
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, MATLError) and not isinstance(exc, ServiceError):
                raise ServiceError(str(exc)) from None
            raise MalformedPayloadError(f"{op}: malformed request: {_short(exc)}") from None

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback(verdict_json)`` for every verdict; returns the unsubscribe function."""

        def forward(verdict: Verdict) -> None:
            callback(verdict.to_json_dict())

        return self.validator.subscribe(forward)

    # ------------------------------------------------------------------------------ handlers
    def _op_info(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        return Reply(self.validator.info())

    def _op_register(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        key = bytes.fromhex(_field(body, "public_key", str))
        if len(key) != 32:
            raise MalformedPayloadError(
                f"public_key must be 32 bytes (64 hex digits) of Ed25519 key, got {len(key)} bytes"
            )
        return Reply({"node_id": self.validator.register(key)})

    def _op_submit(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        if payload is None:
            raise MalformedPayloadError("submit: the safetensors payload is missing")
        header = SubmissionHeader.model_validate(_field(body, "header", dict))
        signature = body.get("signature")
        if not isinstance(signature, str) or not signature:
            raise AuthenticationError("submit: the signature is missing")
        sub = Submission(header=header, signature=signature, payload=payload)
        return Reply(self.validator.submit(sub).to_json_dict())

    def _op_receipt(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        node_id = _field(body, "node_id", str)
        return Reply(self.validator.receipt(node_id, _field(body, "round", int)).to_json_dict())

    def _op_round(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        return Reply(self.validator.round_info().to_json_dict())

    def _op_model(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        meta, data = model_payload(self.validator)
        return Reply(meta, data)

    def _op_verdict(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        return Reply(self.validator.verdict(_field(body, "gradient_hash", str)).to_json_dict())

    def _op_trusted(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        rnd = _field(body, "round", int)
        min_score = float(body.get("min_score", 0.0))
        grads = self.validator.trusted_gradients(rnd, min_score)
        return Reply({"round": rnd, "gradients": [g.to_json_dict() for g in grads]})

    def _op_reputation(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        return Reply(self.validator.reputation(_field(body, "node_id", str)).to_json_dict())

    def _op_close_round(self, body: dict[str, Any], payload: bytes | None) -> Reply:
        closing = self.validator.round
        verdicts = self.validator.close_round()
        return Reply({"round": closing, "verdicts": [v.to_json_dict() for v in verdicts]})


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    if name not in body:
        raise MalformedPayloadError(f"the request is missing {name!r}")
    value = body[name]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise MalformedPayloadError(f"{name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
