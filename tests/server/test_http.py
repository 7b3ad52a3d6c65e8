"""The REST transport, driven with raw HTTP against a real uvicorn server on 127.0.0.1.

Every refused submission must get its own status and machine code and leave the ledger as it
was (nothing stored), and a full round must go through with offline-verifiable verdicts.
"""

from __future__ import annotations

import base64
import contextlib
import math
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from matl.crypto import Identity, canonical_json
from matl.ledger import verify_ledger
from matl.protocol import NodeReputation, Receipt, RoundInfo, Submission, TrustedGradient, Verdict
from matl.server.http import HTTPServerThread, decode_header, encode_header
from matl.validator import MATLValidator
from matl.wire import decode_vector

DIM = 50
MAX_PAYLOAD = 1024
MAX_METADATA = 256
SUBMIT = "/v1/rounds/current/submissions"


pytestmark = pytest.mark.served(  # fresh / shared: tests/conftest.py
    "http", dim=DIM, max_payload_bytes=MAX_PAYLOAD, max_metadata_bytes=MAX_METADATA
)

Served = tuple[MATLValidator, httpx.Client]


@contextlib.contextmanager
def _with_client(served: tuple[MATLValidator, HTTPServerThread]) -> Iterator[Served]:
    validator, server = served
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
        yield validator, client


@pytest.fixture
def fresh(fresh: tuple[MATLValidator, HTTPServerThread]) -> Iterator[Served]:
    """A validator of its own and a client of its server, for tests that change its state."""
    with _with_client(fresh) as served:
        yield served


@pytest.fixture(scope="module")
def shared(shared: tuple[MATLValidator, HTTPServerThread]) -> Iterator[Served]:
    """One validator and client for the tests that must not change its state (refused requests)."""
    with _with_client(shared) as served:
        yield served


def _vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def _register(http: httpx.Client, identity: Identity) -> str:
    r = http.post("/v1/nodes", json={"public_key": identity.public_key.hex()})
    assert r.status_code == 201, r.text
    return str(r.json()["node_id"])


def _post(
    http: httpx.Client,
    sub: Submission,
    *,
    header: dict[str, Any] | None = None,
    signature: str | None = None,
    payload: Any = None,
) -> httpx.Response:
    headers = {
        "X-MATL-Header": encode_header(header or sub.header.to_json_dict()),
        "X-MATL-Signature": signature or sub.signature,
        "Content-Type": "application/octet-stream",
    }
    return http.post(SUBMIT, content=sub.payload if payload is None else payload, headers=headers)


def _submitted(http: httpx.Client, seed: int) -> tuple[Identity, Submission]:
    """A new node, registered, and its accepted submission to round 0."""
    node = Identity.generate()
    _register(http, node)
    sub = Submission.create(node, _vector(seed), round=0)
    assert _post(http, sub).status_code == 201
    return node, sub


def _error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, str(r.json()["error"]["code"])


def _nothing_stored(validator: MATLValidator, entries_before: int) -> None:
    assert len(list(validator.ledger.entries())) == entries_before
    assert validator.round_info().submissions == 0
    assert validator.ledger.payloads(0) == []


# --------------------------------------------------------------------------------- a full round


def test_full_round_over_rest(fresh: Served) -> None:
    validator, http = fresh
    info = http.get("/v1/info").json()
    vid = info["validator_id"]
    assert vid == validator.validator_id
    assert info["dim"] == DIM and info["max_payload_bytes"] == MAX_PAYLOAD
    nodes = [Identity.generate() for _ in range(3)]
    receipts = []
    for i, node in enumerate(nodes):
        assert _register(http, node) == node.node_id
        sub = Submission.create(node, _vector(i), round=0, metadata={"samples": 10 + i})
        r = _post(http, sub)
        assert r.status_code == 201, r.text
        receipt = Receipt.model_validate(r.json())
        assert receipt.verify(vid) and receipt.gradient_hash == sub.header.gradient_hash
        receipts.append(receipt)
    # round_size reached: the round closed and every verdict is signed by the validator
    current = RoundInfo.model_validate(http.get("/v1/rounds/current").json())
    assert (current.round, current.submissions) == (1, 0)
    for node, receipt in zip(nodes, receipts, strict=True):
        r = http.get(f"/v1/verdicts/{receipt.gradient_hash}")
        assert r.status_code == 200, r.text
        verdict = Verdict.model_validate(r.json())
        assert verdict.verify(vid) and verdict.node_id == node.node_id
        tampered = verdict.model_copy(update={"score": verdict.score - 0.5})
        assert not tampered.verify(vid)
    r = http.get("/v1/rounds/0/trusted", params={"min_score": 0.0})
    trusted = [TrustedGradient.model_validate(g) for g in r.json()["gradients"]]
    assert {t.gradient_hash for t in trusted} <= {rc.gradient_hash for rc in receipts}
    assert trusted and math.isclose(sum(t.weight for t in trusted), 1.0, rel_tol=1e-5)
    rep = NodeReputation.model_validate(http.get(f"/v1/nodes/{nodes[0].node_id}/reputation").json())
    assert rep.node_id == nodes[0].node_id and rep.rounds_seen == 1
    r = http.get(f"/v1/rounds/0/receipts/{nodes[1].node_id}")
    assert Receipt.model_validate(r.json()) == receipts[1]
    assert verify_ledger(validator.ledger, validator_id=vid).ok


def test_model_is_safetensors_with_json_headers(shared: Served) -> None:
    _, http = shared
    r = http.get("/v1/model")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["X-MATL-Round"] == "0" and r.headers["X-MATL-Dim"] == str(DIM)
    vec = decode_vector(r.content, max_bytes=len(r.content), expected_size=DIM)
    from matl.wire import gradient_hash

    assert r.headers["X-MATL-Gradient-Hash"] == gradient_hash(vec)
    assert decode_header(r.headers["X-MATL-Body"])["dim"] == DIM


def test_close_round_and_verdict_pending(fresh: Served) -> None:
    _, http = fresh
    _, sub = _submitted(http, 7)
    pending = http.get(f"/v1/verdicts/{sub.header.gradient_hash}")
    assert _error(pending) == (404, "not_found")
    assert _error(http.get("/v1/rounds/0/trusted")) == (404, "not_found")
    r = http.post("/v1/rounds/current/close")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["round"] == 0 and [v["gradient_hash"] for v in body["verdicts"]] == [
        sub.header.gradient_hash
    ]
    assert http.get(f"/v1/verdicts/{sub.header.gradient_hash}").status_code == 200


# ------------------------------------------------------------------------------ refused input


def _case_bad_signature(node: Identity) -> dict[str, Any]:
    sub = Submission.create(node, _vector(1), round=0)
    return {"sub": sub, "signature": Identity.generate().sign(sub.header.signing_bytes()).hex()}


def _case_missing_signature(node: Identity) -> dict[str, Any]:
    return {"sub": Submission.create(node, _vector(1), round=0), "signature": ""}


def _case_unregistered(node: Identity) -> dict[str, Any]:
    return {"sub": Submission.create(Identity.generate(), _vector(1), round=0)}


def _case_wrong_round(node: Identity) -> dict[str, Any]:
    return {"sub": Submission.create(node, _vector(1), round=5)}


def _case_nan(node: Identity) -> dict[str, Any]:
    vec = _vector(1)
    vec[3] = np.nan
    return {"sub": Submission.create(node, vec, round=0)}


def _case_wrong_size(node: Identity) -> dict[str, Any]:
    return {"sub": Submission.create(node, _vector(1, DIM - 1), round=0)}


def _case_oversized(node: Identity) -> dict[str, Any]:
    return {"sub": Submission.create(node, _vector(1, 2 * MAX_PAYLOAD // 4), round=0)}


def _case_oversized_streamed(node: Identity) -> dict[str, Any]:
    sub = Submission.create(node, _vector(1, 2 * MAX_PAYLOAD // 4), round=0)
    chunks = [sub.payload[i : i + 256] for i in range(0, len(sub.payload), 256)]
    return {"sub": sub, "payload": iter(chunks)}  # chunked: no Content-Length to go by


def _case_malformed(node: Identity) -> dict[str, Any]:
    sub = Submission.create(node, _vector(1), round=0)
    return {"sub": sub, "payload": b"\x08\x00\x00\x00\x00\x00\x00\x00{not json"}


def _case_oversized_metadata(node: Identity) -> dict[str, Any]:
    meta = {"note": "x" * (MAX_METADATA + 10)}
    return {"sub": Submission.create(node, _vector(1), round=0, metadata=meta)}


REFUSED: dict[str, tuple[Callable[[Identity], dict[str, Any]], int, str]] = {
    "bad signature": (_case_bad_signature, 401, "bad_signature"),
    "missing signature": (_case_missing_signature, 401, "bad_signature"),
    "unregistered node": (_case_unregistered, 403, "unknown_node"),
    "wrong round": (_case_wrong_round, 409, "wrong_round"),
    "NaN": (_case_nan, 422, "invalid_update"),
    "wrong size": (_case_wrong_size, 422, "invalid_update"),
    "oversized payload": (_case_oversized, 413, "payload_too_large"),
    "oversized streamed payload": (_case_oversized_streamed, 413, "payload_too_large"),
    "malformed safetensors": (_case_malformed, 400, "malformed_payload"),
    "oversized metadata": (_case_oversized_metadata, 413, "payload_too_large"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_submission_stores_nothing(case: str, shared: Served) -> None:
    validator, http = shared
    make, status, code = REFUSED[case]
    node = Identity.generate()
    _register(http, node)
    before = len(list(validator.ledger.entries()))
    kwargs = make(node)
    sub = kwargs.pop("sub")
    if kwargs.get("signature") == "":  # leave the header out altogether
        headers = {"X-MATL-Header": encode_header(sub.header.to_json_dict())}
        r = http.post(SUBMIT, content=sub.payload, headers=headers)
    else:
        r = _post(http, sub, **kwargs)
    assert _error(r) == (status, code), r.text
    assert r.json()["error"]["message"]
    _nothing_stored(validator, before)


def test_replay_is_refused_and_stored_once(fresh: Served) -> None:
    validator, http = fresh
    node, sub = _submitted(http, 1)
    after_first = len(list(validator.ledger.entries()))
    assert _error(_post(http, sub)) == (409, "replay")  # the very same request again
    other = Submission.create(node, _vector(2), round=0)  # another gradient, same round
    assert _error(_post(http, other)) == (409, "replay")
    assert len(list(validator.ledger.entries())) == after_first
    assert validator.round_info().submissions == 1


def test_declared_length_over_limit_is_refused_before_the_body(shared: Served) -> None:
    validator, http = shared
    # Only the request head is sent: the server must answer 413 on the declared length alone.
    head = (
        f"POST {SUBMIT} HTTP/1.1\r\nHost: test\r\nContent-Length: {MAX_PAYLOAD * 10_000}\r\n"
        f"X-MATL-Header: {encode_header({'round': 0})}\r\nX-MATL-Signature: 00\r\n\r\n"
    )
    url = http.base_url
    assert url.port is not None
    with socket.create_connection((url.host, url.port), timeout=5) as sock:
        sock.sendall(head.encode())
        reply = b""
        while b"}}" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert b"payload_too_large" in reply
    _nothing_stored(validator, 0)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"X-MATL-Header": "%%%not-base64%%%", "X-MATL-Signature": "00"}, 400, "malformed_payload"),
        ({"X-MATL-Header": base64.urlsafe_b64encode(b"[1,2]").decode()}, 400, "malformed_payload"),
        ({"X-MATL-Signature": "00"}, 400, "malformed_payload"),
        (
            {"X-MATL-Header": encode_header({"node_id": "x"}), "X-MATL-Signature": "00"},
            400,
            "malformed_payload",
        ),
    ],
)
def test_malformed_headers(shared: Served, headers: dict[str, str], status: int, code: str) -> None:
    validator, http = shared
    r = http.post(SUBMIT, content=b"payload", headers=headers)
    assert _error(r) == (status, code), r.text
    _nothing_stored(validator, 0)


def test_request_errors_use_the_error_shape(shared: Served) -> None:
    _, http = shared
    assert _error(http.get("/v1/nope")) == (404, "not_found")
    assert _error(http.get("/v1/rounds/0/trusted", params={"min_score": "abc"})) == (
        400,
        "malformed_payload",
    )
    assert _error(http.post("/v1/nodes", json={})) == (400, "malformed_payload")
    assert _error(http.post("/v1/nodes", content=b"{")) == (400, "malformed_payload")
    huge = {"public_key": "00" * 32, "pad": "x" * 100_000}
    assert _error(http.post("/v1/nodes", json=huge)) == (413, "payload_too_large")
    assert _error(http.post("/v1/nodes", json={"public_key": "zz"})) == (400, "malformed_payload")
    assert _error(http.post("/v1/nodes", json={"public_key": "00" * 31})) == (
        400,
        "malformed_payload",
    )
    stranger = Identity.generate().node_id
    assert _error(http.get(f"/v1/nodes/{stranger}/reputation")) == (403, "unknown_node")
    assert http.get("/v1/nodes").status_code == 405


def test_header_codec_round_trip() -> None:
    header = {"node_id": "did:key:z6Mk", "round": 3, "metadata": {"é": [1.5, None]}}
    encoded = encode_header(header)
    assert "=" not in encoded and decode_header(encoded) == header
    assert decode_header(encoded + "=" * (-len(encoded) % 4)) == header
    assert canonical_json(decode_header(encoded)) == canonical_json(header)


# ------------------------------------------------------------------------------------- schema


def test_openapi_schema_is_served(shared: Served) -> None:
    _, http = shared
    assert http.get("/healthz").json() == {"status": "ok"}
    schema = http.get("/openapi.json").json()
    assert schema["info"]["title"] == "MATL validator" and schema["info"]["description"]
    paths = schema["paths"]
    for path, method in [
        ("/v1/nodes", "post"),
        (SUBMIT, "post"),
        ("/v1/rounds/current", "get"),
        ("/v1/rounds/current/close", "post"),
        ("/v1/rounds/{round}/trusted", "get"),
        ("/v1/model", "get"),
        ("/v1/verdicts/{gradient_hash}", "get"),
        ("/v1/nodes/{node_id}/reputation", "get"),
        ("/v1/info", "get"),
    ]:
        operation = paths[path][method]
        assert operation["summary"] and operation["description"], path
    submit = paths[SUBMIT]["post"]
    assert "application/octet-stream" in submit["requestBody"]["content"]
    assert {"401", "403", "409", "413", "422"} <= set(submit["responses"])
    assert {p["name"] for p in submit["parameters"]} == {"X-MATL-Header", "X-MATL-Signature"}
    assert "Verdict" in schema["components"]["schemas"]
