"""The gRPC transport, driven with the generated stub against a real server on 127.0.0.1.

Every refused submission must end with its gRPC status and the validator's machine code in the
trailing metadata, and leave the ledger as it was; a full round must go through with
offline-verifiable receipts and verdicts; ``WatchVerdicts`` must push every verdict.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from matl._proto import load
from matl._proto.codec import ERROR_CODE_KEY, SUBSCRIBED_KEY, from_message
from matl.crypto import Identity
from matl.errors import ConfigError
from matl.protocol import NodeReputation, Receipt, RoundInfo, Submission, TrustedGradient, Verdict
from matl.server.grpc import GRPCServerHandle, max_message_size, serve_grpc, start_grpc_server
from matl.server.service import Reply, ValidatorService
from matl.validator import MATLValidator
from matl.wire import decode_vector, gradient_hash

DIM = 50
MAX_PAYLOAD = 1024
MAX_METADATA = 256
TIMEOUT = 10.0

pb2 = load().pb2
pb2_grpc = load().pb2_grpc


# validator (a real MATLValidator) and server (it served over gRPC): tests/conftest.py
pytestmark = pytest.mark.served(
    "grpc", dim=DIM, max_payload_bytes=MAX_PAYLOAD, max_metadata_bytes=MAX_METADATA
)


@pytest.fixture
def stub(server: GRPCServerHandle) -> Iterator[Any]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb2_grpc.ValidatorStub(channel)


def _vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def _register(stub: Any, identity: Identity) -> str:
    reply = stub.Register(
        pb2.RegisterRequest(public_key=identity.public_key.hex()), timeout=TIMEOUT
    )
    return str(reply.node_id)


def _submit_request(sub: Submission, **changes: Any) -> Any:
    """A typed ``SubmitRequest`` for ``sub``; ``changes`` override header fields or
    ``signature`` / ``payload``."""
    h = sub.header
    header = {
        "node_id": h.node_id,
        "round": h.round,
        "nonce": h.nonce,
        "gradient_hash": h.gradient_hash,
        "metadata_json": json.dumps(h.metadata),
    }
    signature = changes.pop("signature", sub.signature)
    payload = changes.pop("payload", sub.payload)
    header.update(changes)
    return pb2.SubmitRequest(
        header=pb2.SubmissionHeader(**header), signature=signature, payload=payload
    )


def _refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    codes = [v for k, v in err.trailing_metadata() or () if k == ERROR_CODE_KEY]
    return err.code(), (codes[0] if codes else None)


def _nothing_stored(validator: MATLValidator, entries_before: int) -> None:
    assert len(list(validator.ledger.entries())) == entries_before
    assert validator.round_info().submissions == 0
    assert validator.ledger.payloads(0) == []


# --------------------------------------------------------------------------------- a full round


def test_full_round_over_grpc(stub: Any, validator: MATLValidator) -> None:
    info = from_message(stub.GetInfo(pb2.GetInfoRequest(), timeout=TIMEOUT))[0]
    vid = info["validator_id"]
    assert info == validator.info()
    nodes = [Identity.generate() for _ in range(3)]
    receipts = []
    for i, node in enumerate(nodes):
        assert _register(stub, node) == node.node_id
        sub = Submission.create(node, _vector(i), round=0, metadata={"samples": 10 + i, "lr": 0.1})
        reply = stub.Submit(_submit_request(sub), timeout=TIMEOUT)
        receipt = Receipt.model_validate(from_message(reply)[0])
        assert receipt.verify(vid) and receipt.gradient_hash == sub.header.gradient_hash
        receipts.append(receipt)
    stored = stub.GetReceipt(
        pb2.GetReceiptRequest(node_id=nodes[0].node_id, round=0), timeout=TIMEOUT
    )
    assert Receipt.model_validate(from_message(stored)[0]) == receipts[0]
    # round_size reached: the round closed and every verdict verifies offline
    current = RoundInfo.model_validate(
        from_message(stub.GetRound(pb2.GetRoundRequest(), timeout=TIMEOUT))[0]
    )
    assert (current.round, current.submissions, current.validator_id) == (1, 0, vid)
    for node, receipt in zip(nodes, receipts, strict=True):
        reply = stub.GetVerdict(
            pb2.GetVerdictRequest(gradient_hash=receipt.gradient_hash), timeout=TIMEOUT
        )
        assert reply.reasons_json.startswith("[")
        verdict = Verdict.model_validate(from_message(reply)[0])
        assert verdict.verify(vid) and verdict.node_id == node.node_id
        assert not verdict.model_copy(update={"score": verdict.score - 0.5}).verify(vid)
    trusted_reply = stub.GetTrusted(pb2.GetTrustedRequest(round=0, min_score=0.0), timeout=TIMEOUT)
    assert trusted_reply.round == 0
    trusted = [
        TrustedGradient.model_validate(g) for g in from_message(trusted_reply)[0]["gradients"]
    ]
    assert trusted and {t.gradient_hash for t in trusted} <= {r.gradient_hash for r in receipts}
    rep = stub.GetReputation(pb2.GetReputationRequest(node_id=nodes[0].node_id), timeout=TIMEOUT)
    assert NodeReputation.model_validate(from_message(rep)[0]).rounds_seen == 1
    model = stub.GetModel(pb2.GetModelRequest(), timeout=TIMEOUT)
    body, payload = from_message(model)
    assert payload is not None and (body["round"], body["dim"]) == (1, DIM)
    theta = decode_vector(payload, max_bytes=len(payload), expected_size=DIM)
    assert gradient_hash(theta) == body["gradient_hash"]
    np.testing.assert_array_equal(theta, validator.global_model())


def test_close_round_early(stub: Any, validator: MATLValidator) -> None:
    node = Identity.generate()
    _register(stub, node)
    sub = Submission.create(node, _vector(1), round=0)
    stub.Submit(_submit_request(sub), timeout=TIMEOUT)
    reply = stub.CloseRound(pb2.CloseRoundRequest(), timeout=TIMEOUT)
    assert reply.round == 0 and [v.gradient_hash for v in reply.verdicts] == [
        sub.header.gradient_hash
    ]
    assert Verdict.model_validate(from_message(reply.verdicts[0])[0]).verify(validator.validator_id)
    # nothing left to close: a plain bad request
    assert _refusal(lambda: stub.CloseRound(pb2.CloseRoundRequest(), timeout=TIMEOUT)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad_request",
    )


# ------------------------------------------------------------------------------- refused input


def _sub(
    node: Identity, vec: np.ndarray | None = None, metadata: dict[str, Any] | None = None
) -> Submission:
    return Submission.create(node, _vector(0) if vec is None else vec, round=0, metadata=metadata)


def _nan() -> np.ndarray:
    vec = _vector(2)
    vec[3] = np.nan
    return vec


# case -> (build the request for a registered node, status, code); each submission is signed, so
# only the check the case is about can refuse it
REFUSALS: dict[str, tuple[Callable[[Identity], Any], grpc.StatusCode, str]] = {
    "bad signature": (
        lambda n: _submit_request(_sub(n), signature="ab" * 64),
        grpc.StatusCode.UNAUTHENTICATED,
        "bad_signature",
    ),
    "missing signature": (
        lambda n: _submit_request(_sub(n), signature=""),
        grpc.StatusCode.UNAUTHENTICATED,
        "bad_signature",
    ),
    "wrong round": (
        lambda n: _submit_request(Submission.create(n, _vector(0), round=7)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "wrong_round",
    ),
    "NaN": (
        lambda n: _submit_request(_sub(n, _nan())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_update",
    ),
    "wrong size": (
        lambda n: _submit_request(_sub(n, _vector(4, dim=DIM + 1))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_update",
    ),
    "oversized payload": (  # a little over max_payload_bytes: the validator refuses it
        lambda n: _submit_request(_sub(n, _vector(3, dim=MAX_PAYLOAD // 4 + 16))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "payload_too_large",
    ),
    "not safetensors": (
        lambda n: _submit_request(_sub(n), payload=b"\x00" * 64),
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed_payload",
    ),
    "metadata not JSON": (
        lambda n: _submit_request(_sub(n), metadata_json="{not json"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed_payload",
    ),
    "oversized metadata": (
        lambda n: _submit_request(_sub(n, metadata={"pad": "x" * MAX_METADATA})),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "payload_too_large",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_submission_maps_to_status_and_code(
    case: str, stub: Any, validator: MATLValidator
) -> None:
    build, status, code = REFUSALS[case]
    node = Identity.generate()
    _register(stub, node)
    request = build(node)
    before = len(list(validator.ledger.entries()))
    assert _refusal(lambda: stub.Submit(request, timeout=TIMEOUT)) == (status, code)
    _nothing_stored(validator, before)


def test_unregistered_node_and_replay(stub: Any, validator: MATLValidator) -> None:
    stranger = Identity.generate()
    sub = Submission.create(stranger, _vector(0), round=0)
    assert _refusal(lambda: stub.Submit(_submit_request(sub), timeout=TIMEOUT)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "unknown_node",
    )
    _register(stub, stranger)
    stub.Submit(_submit_request(sub), timeout=TIMEOUT)
    entries = len(list(validator.ledger.entries()))
    again = Submission.create(stranger, _vector(5), round=0)  # new nonce, same (node, round)
    for request in (_submit_request(sub), _submit_request(again)):
        assert _refusal(partial(stub.Submit, request, timeout=TIMEOUT)) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "replay",
        )
    assert len(list(validator.ledger.entries())) == entries


def test_far_oversized_message_is_refused_by_grpc(
    stub: Any, validator: MATLValidator, server: GRPCServerHandle
) -> None:
    node = Identity.generate()
    _register(stub, node)
    sub = Submission.create(node, _vector(0), round=0)
    huge = b"\x00" * (max_message_size(validator.info()) + 1)
    before = len(list(validator.ledger.entries()))
    # gRPC's own limit: no MATL code (the client maps RESOURCE_EXHAUSTED to payload_too_large)
    assert _refusal(lambda: stub.Submit(_submit_request(sub, payload=huge), timeout=TIMEOUT)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        None,
    )
    _nothing_stored(validator, before)


def test_missing_fields_are_malformed(stub: Any) -> None:
    # no header at all; a header without its round (`optional`: absent is not 0)
    assert _refusal(
        lambda: stub.Submit(pb2.SubmitRequest(signature="00", payload=b"x"), timeout=TIMEOUT)
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "malformed_payload")
    node = Identity.generate()
    _register(stub, node)
    sub = Submission.create(node, _vector(0), round=0)
    request = _submit_request(sub)
    request.header.ClearField("round")
    assert _refusal(lambda: stub.Submit(request, timeout=TIMEOUT)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed_payload",
    )
    assert _refusal(
        lambda: stub.GetReceipt(pb2.GetReceiptRequest(node_id="x"), timeout=TIMEOUT)
    ) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed_payload",
    )
    assert _refusal(
        lambda: stub.Register(pb2.RegisterRequest(public_key="zz"), timeout=TIMEOUT)
    ) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed_payload",
    )


def test_not_found(stub: Any) -> None:
    assert _refusal(
        lambda: stub.GetVerdict(pb2.GetVerdictRequest(gradient_hash="0" * 64), timeout=TIMEOUT)
    ) == (grpc.StatusCode.NOT_FOUND, "not_found")
    assert _refusal(lambda: stub.GetTrusted(pb2.GetTrustedRequest(round=0), timeout=TIMEOUT)) == (
        grpc.StatusCode.NOT_FOUND,
        "not_found",
    )
    assert _refusal(
        lambda: stub.GetReputation(
            pb2.GetReputationRequest(node_id=Identity.generate().node_id), timeout=TIMEOUT
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "unknown_node")


# --------------------------------------------------------------------------------- WatchVerdicts


def test_watch_verdicts_streams_every_verdict(stub: Any, server: GRPCServerHandle) -> None:
    everything = stub.WatchVerdicts(pb2.WatchVerdictsRequest(), timeout=TIMEOUT)
    nodes = [Identity.generate() for _ in range(3)]
    mine = stub.WatchVerdicts(pb2.WatchVerdictsRequest(node_id=nodes[1].node_id), timeout=TIMEOUT)
    later = stub.WatchVerdicts(pb2.WatchVerdictsRequest(round=1), timeout=TIMEOUT)
    for call in (everything, mine, later):  # subscribed once the server says so
        assert (SUBSCRIBED_KEY, "1") in tuple(call.initial_metadata())
    subs = [Submission.create(n, _vector(i), round=0) for i, n in enumerate(nodes)]
    for node, sub in zip(nodes, subs, strict=True):
        _register(stub, node)
        stub.Submit(_submit_request(sub), timeout=TIMEOUT)
    got = [Verdict.model_validate(from_message(next(everything))[0]) for _ in nodes]
    assert sorted(v.gradient_hash for v in got) == sorted(s.header.gradient_hash for s in subs)
    assert all(v.verify(server.servicer.service.validator.validator_id) for v in got)
    assert from_message(next(mine))[0]["node_id"] == nodes[1].node_id
    everything.cancel()
    mine.cancel()
    # stopping the server ends a stream cleanly (status OK), with nothing for round 1 yet
    server.stop()
    assert list(later) == []
    assert later.code() == grpc.StatusCode.OK


# ---------------------------------------------------------------------------------- the server


def test_serve_grpc_refuses_a_taken_port(validator: MATLValidator) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            serve_grpc(ValidatorService(validator), "127.0.0.1", port)


def test_serve_grpc_returns_a_started_server(validator: MATLValidator) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve_grpc(ValidatorService(validator), "127.0.0.1", port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb2_grpc.ValidatorStub(channel).GetInfo(pb2.GetInfoRequest(), timeout=TIMEOUT)
        assert reply.validator_id == validator.validator_id
        assert reply.max_payload_bytes == MAX_PAYLOAD
    finally:
        server.stop(None).wait()


def test_run_grpc_serves_until_interrupted(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from matl.crypto import Identity
        from matl.ledger import open_ledger
        from matl.server.grpc import run_grpc
        from matl.server.service import ValidatorService
        from matl.validator import MATLValidator, ValidatorConfig

        v = MATLValidator(ValidatorConfig(dim={DIM}), open_ledger({str(tmp_path / "l.db")!r}),
                          Identity.generate())
        run_grpc(ValidatorService(v), port=0, ready=lambda port: print(port, flush=True))
        print("stopped", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb2_grpc.ValidatorStub(channel).GetInfo(pb2.GetInfoRequest(), timeout=TIMEOUT)
        assert reply.dim == DIM
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert "stopped" in out, err  # run_grpc stopped the server and returned
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _DriftedService(ValidatorService):
    """The real service, except that ``round`` answers a key its message does not have (as if
    the service grew a field the .proto lacks)."""

    def handle(self, op: str, body: dict[str, Any], payload: bytes | None = None) -> Reply:
        reply = super().handle(op, body, payload)
        return Reply({**reply.body, "surprise": 1}) if op == "round" else reply


def test_a_reply_that_does_not_fit_is_an_internal_error(validator: MATLValidator) -> None:
    with (
        start_grpc_server(_DriftedService(validator)) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb2_grpc.ValidatorStub(channel)
        assert _refusal(lambda: stub.GetRound(pb2.GetRoundRequest(), timeout=TIMEOUT)) == (
            grpc.StatusCode.INTERNAL,
            "internal",
        )
        assert stub.GetInfo(pb2.GetInfoRequest(), timeout=TIMEOUT).dim == DIM
