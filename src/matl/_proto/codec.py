"""The typed layer over the generated stubs: operations <-> RPCs, bodies <-> messages, errors.

Shared by the gRPC server (:mod:`matl.server.grpc`) and client (:mod:`matl.client.grpc`), so the
two sides cannot disagree.

**Bodies and messages.** A message field carries the body key of the same name; a string field
named ``<key>_json`` carries the JSON text of body key ``<key>`` (submission metadata, verdict
reasons); a top-level bytes field ``payload`` carries the request's or reply's binary payload.
Nested messages are nested objects and repeated messages are lists. A request field declared
``optional`` (or a message field) that is unset is left out of the body, so the service sees
"missing" exactly as it does over JSON; a ``None`` body value leaves a typed field unset and
becomes ``"null"`` in a ``*_json`` field (an empty ``*_json`` field means the key is absent). Conversion is strict both ways: a body key with no field,
or a value of the wrong type, raises :class:`CodecError` instead of being dropped or coerced,
since a dropped field would silently break a signature.

**Errors.** A :class:`~matl.errors.ServiceError` travels as a gRPC status (:func:`status_for`)
plus its stable ``code`` in the trailing metadata key :data:`ERROR_CODE_KEY`; the client rebuilds
the same exception class with :func:`error_for`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from matl.errors import (
    AuthenticationError,
    MATLError,
    NotFoundError,
    PayloadTooLargeError,
    ReplayError,
    ServiceError,
    TransportError,
    UnknownNodeError,
    WrongRoundError,
    error_from_code,
)

__all__ = [
    "ERROR_CODE_KEY",
    "PAYLOAD_FIELD",
    "RPCS",
    "SERVICE_NAME",
    "SUBSCRIBED_KEY",
    "CodecError",
    "Rpc",
    "error_code_from_metadata",
    "error_for",
    "from_message",
    "rpc_for_op",
    "status_for",
    "to_message",
]

SERVICE_NAME = "matl.v1.Validator"
"""The fully qualified gRPC service name."""
ERROR_CODE_KEY = "matl-error-code"
"""Trailing-metadata key carrying :attr:`matl.errors.ServiceError.code`."""
SUBSCRIBED_KEY = "matl-subscribed"
"""Initial-metadata key the server sends once a ``WatchVerdicts`` subscription is live."""
PAYLOAD_FIELD = "payload"
"""The top-level bytes field that carries a request's or reply's binary payload."""
_JSON_SUFFIX = "_json"


@dataclass(frozen=True)
class Rpc:
    """One unary RPC and the service operation it carries.

    Attributes
    ----------
    op:
        The :meth:`ValidatorService.handle <matl.server.service.ValidatorService.handle>`
        operation.
    method:
        The RPC's name in ``service Validator``.
    request, reply:
        Names of its request and reply message types in ``matl_pb2``.
    """

    op: str
    method: str
    request: str
    reply: str


RPCS: tuple[Rpc, ...] = (
    Rpc("register", "Register", "RegisterRequest", "RegisterReply"),
    Rpc("submit", "Submit", "SubmitRequest", "Receipt"),
    Rpc("receipt", "GetReceipt", "GetReceiptRequest", "Receipt"),
    Rpc("round", "GetRound", "GetRoundRequest", "RoundInfo"),
    Rpc("model", "GetModel", "GetModelRequest", "Model"),
    Rpc("verdict", "GetVerdict", "GetVerdictRequest", "Verdict"),
    Rpc("trusted", "GetTrusted", "GetTrustedRequest", "TrustedGradients"),
    Rpc("reputation", "GetReputation", "GetReputationRequest", "NodeReputation"),
    Rpc("close_round", "CloseRound", "CloseRoundRequest", "CloseRoundReply"),
    Rpc("info", "GetInfo", "GetInfoRequest", "ValidatorInfo"),
)
"""Every unary RPC (``WatchVerdicts``, the one streaming RPC, is handled on its own)."""

_BY_OP = {rpc.op: rpc for rpc in RPCS}


class CodecError(ValueError):
    """A body does not fit its message type, or a message does not decode to a body."""


def rpc_for_op(op: str) -> Rpc:
    """The RPC carrying ``op``; :class:`~matl.errors.ServiceError` (``bad_request``) if none."""
    try:
        return _BY_OP[op]
    except KeyError:
        valid = ", ".join(_BY_OP)
        raise ServiceError(f"unknown operation {op!r}; valid: {valid}") from None


# --------------------------------------------------------------------------- bodies <-> messages
def to_message(cls: Any, body: Mapping[str, Any], payload: bytes | None = None) -> Any:
    """Build a ``cls`` message from a JSON-able ``body`` and an optional binary ``payload``.

    A ``None`` value leaves a typed field unset; a ``*_json`` field then holds ``"null"``.

    Raises
    ------
    CodecError
        A key has no field, a value has the wrong type, or ``payload`` is given to a message
        without a ``payload`` field.
    """
    msg = cls()
    _fill(msg, body, cls.DESCRIPTOR.full_name)
    if payload is not None:
        if PAYLOAD_FIELD not in cls.DESCRIPTOR.fields_by_name:
            raise CodecError(f"{cls.DESCRIPTOR.full_name} carries no payload")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise CodecError(f"the payload must be bytes, got {type(payload).__name__}")
        msg.payload = bytes(payload)
    return msg


def from_message(msg: Any) -> tuple[dict[str, Any], bytes | None]:
    """The JSON-able body of a message and its top-level ``payload`` (``None`` if it has none).

    Raises
    ------
    CodecError
        A ``*_json`` field does not hold valid JSON.
    """
    payload: bytes | None = None
    if PAYLOAD_FIELD in msg.DESCRIPTOR.fields_by_name:
        payload = bytes(msg.payload)
    return _read(msg, skip_payload=True), payload


def _fill(msg: Any, body: Mapping[str, Any], where: str) -> None:
    if not isinstance(body, Mapping):
        raise CodecError(f"{where} must be a JSON object, got {type(body).__name__}")
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in body.items():
        if not isinstance(key, str):
            raise CodecError(f"{where}: keys must be strings, got {key!r}")
        path = f"{where}.{key}"
        json_field = fields.get(key + _JSON_SUFFIX)
        if key in fields and key != PAYLOAD_FIELD:
            if value is not None:  # None: leave the field unset
                _set(msg, fields[key], value, path)
        elif json_field is not None and json_field.type == json_field.TYPE_STRING:
            try:
                text = json.dumps(value, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise CodecError(f"{path} is not JSON-encodable: {exc}") from None
            setattr(msg, json_field.name, text)
        else:
            raise CodecError(f"{where} has no field {key!r}")


def _set(msg: Any, fd: Any, value: Any, path: str) -> None:
    if _is_repeated(fd):
        if not isinstance(value, list | tuple):
            raise CodecError(f"{path} must be a list, got {type(value).__name__}")
        container = getattr(msg, fd.name)
        for i, item in enumerate(value):
            if fd.message_type is not None:
                _fill(container.add(), item, f"{path}[{i}]")
            else:
                container.append(_scalar(fd, item, f"{path}[{i}]"))
    elif fd.message_type is not None:
        child = getattr(msg, fd.name)
        child.SetInParent()
        _fill(child, value, path)
    else:
        setattr(msg, fd.name, _scalar(fd, value, path))


def _scalar(fd: Any, value: Any, path: str) -> Any:
    """``value`` checked against the field's type, as JSON would type it (no coercion)."""
    t = fd.type
    ok: bool
    if t == fd.TYPE_STRING:
        ok = isinstance(value, str)
    elif t == fd.TYPE_BOOL:
        ok = isinstance(value, bool)
    elif t in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif t == fd.TYPE_BYTES:
        ok = isinstance(value, bytes)
    else:  # the integer types
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise CodecError(f"{path} has the wrong type ({type(value).__name__})")
    if t == fd.TYPE_STRING:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CodecError(f"{path} is not valid UTF-8 text: {exc}") from None
    if t in (fd.TYPE_INT64, fd.TYPE_SINT64, fd.TYPE_SFIXED64) and not -(2**63) <= value < 2**63:
        raise CodecError(f"{path} is out of range for a 64-bit integer")
    if t in (fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_SFIXED32) and not -(2**31) <= value < 2**31:
        raise CodecError(f"{path} is out of range for a 32-bit integer")
    return value


def _read(msg: Any, *, skip_payload: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        name = fd.name
        if skip_payload and name == PAYLOAD_FIELD:
            continue
        if _is_repeated(fd):
            items = getattr(msg, name)
            out[name] = [_read(i) for i in items] if fd.message_type is not None else list(items)
        elif fd.has_presence and not msg.HasField(name):
            continue
        elif fd.message_type is not None:
            out[name] = _read(getattr(msg, name))
        elif name.endswith(_JSON_SUFFIX) and fd.type == fd.TYPE_STRING:
            text = getattr(msg, name)
            if text:
                try:
                    out[name[: -len(_JSON_SUFFIX)]] = json.loads(text)
                except ValueError as exc:
                    raise CodecError(f"{name} is not valid JSON: {exc}") from None
        else:
            out[name] = getattr(msg, name)
    return out


def _is_repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 6.31; `label` is deprecated there
    if flag is None:
        return bool(fd.label == fd.LABEL_REPEATED)
    return bool(flag() if callable(flag) else flag)


# ----------------------------------------------------------------------------------------- errors
_STATUS_BY_CODE: dict[str, grpc.StatusCode] = {
    ReplayError.code: grpc.StatusCode.ALREADY_EXISTS,
    WrongRoundError.code: grpc.StatusCode.FAILED_PRECONDITION,
}
_STATUS_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# A status that came without a MATL code (a proxy, or gRPC's own message-size limit).
_ERROR_BY_STATUS: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: UnknownNodeError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ReplayError,
    grpc.StatusCode.FAILED_PRECONDITION: WrongRoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: PayloadTooLargeError,
}
_UNREACHABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def status_for(error: ServiceError) -> grpc.StatusCode:
    """The gRPC status a service error travels as.

    401 ``UNAUTHENTICATED``, 403 ``PERMISSION_DENIED``, 404 ``NOT_FOUND``, 409
    ``ALREADY_EXISTS`` (``replay``) or ``FAILED_PRECONDITION`` (``wrong_round``), 413
    ``RESOURCE_EXHAUSTED``, 400/422 ``INVALID_ARGUMENT``, 503 ``UNAVAILABLE``; any other 4xx
    ``INVALID_ARGUMENT`` and 5xx ``INTERNAL``.
    """
    if error.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[error.code]
    if error.status in _STATUS_BY_HTTP:
        return _STATUS_BY_HTTP[error.status]
    return grpc.StatusCode.INTERNAL if error.status >= 500 else grpc.StatusCode.INVALID_ARGUMENT


def error_code_from_metadata(metadata: Iterable[Any] | None) -> str | None:
    """The :data:`ERROR_CODE_KEY` value in (trailing) metadata, if any."""
    for key, value in metadata or ():
        if key == ERROR_CODE_KEY:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def error_for(status: grpc.StatusCode, code: str | None, details: str | None) -> MATLError:
    """The exception a client raises for a failed RPC.

    With a MATL ``code`` it is :func:`matl.errors.error_from_code`'s class. Without one:
    ``UNAVAILABLE``, ``DEADLINE_EXCEEDED`` and ``CANCELLED`` are a
    :class:`~matl.errors.TransportError`; ``RESOURCE_EXHAUSTED`` (gRPC's own message-size limit)
    a :class:`~matl.errors.PayloadTooLargeError`; the other statuses the error class they stand
    for, or a plain :class:`~matl.errors.ServiceError`.
    """
    message = details or status.name
    if code:
        return error_from_code(code, message)
    if status in _UNREACHABLE:
        return TransportError(f"gRPC {status.name}: {message}")
    if status in _ERROR_BY_STATUS:
        return _ERROR_BY_STATUS[status](message)
    return ServiceError(f"gRPC {status.name}: {message}")
