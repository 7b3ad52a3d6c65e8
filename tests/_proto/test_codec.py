"""Bodies <-> gRPC messages and errors <-> gRPC statuses (:mod:`matl._proto.codec`).

The conversions must be exact (a signed verdict read back verifies), strict (no key dropped, no
value coerced) and keep "absent" distinct from zero; every service error must map to its status
and back to its own class.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest

from matl._proto import load
from matl._proto.codec import (
    ERROR_CODE_KEY,
    RPCS,
    CodecError,
    error_code_from_metadata,
    error_for,
    from_message,
    rpc_for_op,
    status_for,
    to_message,
)
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
from matl.protocol import Verdict, sign_message
from matl.server.service import ValidatorService

pb2 = load().pb2


def test_every_service_op_has_an_rpc_with_real_message_types() -> None:
    assert {rpc.op for rpc in RPCS} == set(ValidatorService.OPS)
    methods = pb2.DESCRIPTOR.services_by_name["Validator"].methods_by_name
    for rpc in RPCS:
        method = methods[rpc.method]
        assert (method.input_type.name, method.output_type.name) == (rpc.request, rpc.reply)
    assert methods["WatchVerdicts"].server_streaming
    with pytest.raises(ServiceError, match="unknown operation"):
        rpc_for_op("nope")


def test_signed_verdict_round_trips_exactly() -> None:
    validator = Identity.generate()
    verdict = sign_message(
        Verdict(
            gradient_hash="ab" * 32,
            node_id=Identity.generate().node_id,
            round=3,
            score=0.1 + 0.2,  # not representable in short decimal: must survive bit-exact
            verdict="flagged",
            reasons=[{"signal": "peer", "value": 1e-300, "passed": False, "n": 7, "x": None}],
            timestamp=1_700_000_000.123456,
            validator_id=validator.node_id,
        ),
        validator,
    )
    message = to_message(pb2.Verdict, verdict.to_json_dict())
    wire = pb2.Verdict.FromString(message.SerializeToString())
    body, payload = from_message(wire)
    assert payload is None and body == verdict.to_json_dict()
    assert Verdict.model_validate(body).verify(validator.node_id)


def test_nested_repeated_json_and_payload() -> None:
    body = {
        "header": {
            "node_id": "n",
            "round": 0,  # `optional`: an explicit 0 stays 0
            "nonce": "x",
            "gradient_hash": "0" * 64,
            "metadata": {"samples": 3, "tags": ["a"], "nested": {"f": 0.5}},
        },
        "signature": "00",
    }
    msg = to_message(pb2.SubmitRequest, body, b"\x00\x01")
    assert msg.header.metadata_json == '{"samples":3,"tags":["a"],"nested":{"f":0.5}}'
    assert from_message(msg) == (body, b"\x00\x01")
    closed = {"round": 2, "verdicts": [{"node_id": "a", "score": 1.0, "reasons": []}] * 2}
    back, _ = from_message(to_message(pb2.CloseRoundReply, closed))
    assert back["round"] == 2 and len(back["verdicts"]) == 2
    assert back["verdicts"][0]["reasons"] == [] and back["verdicts"][0]["score"] == 1.0


def test_absent_stays_absent_and_null_json_stays_null() -> None:
    header = {"node_id": "n", "nonce": "x", "gradient_hash": "h"}  # no round, no metadata
    body, _ = from_message(to_message(pb2.SubmitRequest, {"header": header}))
    assert body == {"header": header, "signature": ""}
    assert from_message(pb2.SubmitRequest())[0] == {"signature": ""}  # no header at all
    assert from_message(to_message(pb2.GetTrustedRequest, {"round": None}))[0] == {}
    info = {"validator_id": "v", "registration": "open", "task": None}
    decoded, _ = from_message(to_message(pb2.ValidatorInfo, info))
    assert decoded["task"] is None and decoded["mode"] == 0


BAD: list[tuple[Any, dict[str, Any]]] = [
    (pb2.RegisterRequest, {"public_key": 5}),
    (pb2.RegisterRequest, {"public_key": b"bytes are not JSON"}),
    (pb2.RegisterRequest, {"public_key": "\udc80"}),
    (pb2.RegisterRequest, {"colour": "red"}),
    (pb2.RegisterRequest, {"colour": None}),  # unknown keys are refused even when None
    (pb2.GetTrustedRequest, {"round": "1"}),
    (pb2.GetTrustedRequest, {"round": True}),
    (pb2.GetTrustedRequest, {"round": 1.0}),
    (pb2.GetTrustedRequest, {"round": 2**63}),
    (pb2.GetTrustedRequest, {"min_score": "0"}),
    (pb2.SubmitRequest, {"header": []}),
    (pb2.SubmitRequest, {"header": {"metadata": {"x": math.inf}}}),
    (pb2.SubmitRequest, {"header": {"metadata": {"x": object()}}}),
    (pb2.SubmitRequest, {"payload": b"only as the payload argument"}),
    (pb2.CloseRoundReply, {"verdicts": {"not": "a list"}}),
    (pb2.RoundInfo, {"open": 1}),
]


@pytest.mark.parametrize(("cls", "body"), BAD)
def test_strict_encoding(cls: Any, body: dict[str, Any]) -> None:
    with pytest.raises(CodecError):
        to_message(cls, body)


def test_payload_only_where_the_message_has_one() -> None:
    with pytest.raises(CodecError, match="carries no payload"):
        to_message(pb2.GetRoundRequest, {}, b"x")
    with pytest.raises(CodecError, match="must be bytes"):
        to_message(pb2.SubmitRequest, {}, "text")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="not valid JSON"):
        from_message(pb2.Verdict(reasons_json="[oops"))


ERRORS: list[tuple[ServiceError, grpc.StatusCode]] = [
    (AuthenticationError("x"), grpc.StatusCode.UNAUTHENTICATED),
    (UnknownNodeError("x"), grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
    (ReplayError("x"), grpc.StatusCode.ALREADY_EXISTS),
    (WrongRoundError("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (PayloadTooLargeError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MalformedPayloadError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidUpdateError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (ServiceError("x"), grpc.StatusCode.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("error", "status"), ERRORS)
def test_errors_map_to_a_status_and_back(error: ServiceError, status: grpc.StatusCode) -> None:
    assert status_for(error) == status
    rebuilt = error_for(status, error.code, "the message")
    assert type(rebuilt) is type(error) and str(rebuilt) == "the message"


def test_statuses_without_a_matl_code() -> None:
    for status in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    ):
        assert isinstance(error_for(status, None, "down"), TransportError)
    assert isinstance(
        error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, None, "too big"), PayloadTooLargeError
    )
    assert isinstance(error_for(grpc.StatusCode.NOT_FOUND, None, None), NotFoundError)
    internal = error_for(grpc.StatusCode.INTERNAL, None, "boom")
    assert type(internal) is ServiceError and "INTERNAL" in str(internal)
    assert type(error_for(grpc.StatusCode.INTERNAL, "internal", "boom")) is ServiceError


def test_error_code_from_metadata() -> None:
    assert error_code_from_metadata(None) is None
    assert error_code_from_metadata([("other", "x"), (ERROR_CODE_KEY, "replay")]) == "replay"
    assert error_code_from_metadata([(ERROR_CODE_KEY, b"replay")]) == "replay"
