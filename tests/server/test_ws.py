"""The WebSocket transport's frame protocol, driven with a raw client against a real server."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from matl.crypto import Identity
from matl.protocol import Receipt, Submission, Verdict
from matl.server.ws import WSServerThread, max_message_size
from matl.validator import MATLValidator
from matl.wire import decode_vector

DIM = 50
MAX_PAYLOAD = 1024
pytestmark = pytest.mark.served("ws", dim=DIM, max_payload_bytes=MAX_PAYLOAD)  # tests/conftest.py
Served = tuple[MATLValidator, WSServerThread]


def _connect(url: str) -> ClientConnection:
    return connect(url, compression=None, proxy=None, max_size=None)


def _send(
    conn: ClientConnection, rid: Any, op: str, body: dict[str, Any], payload: bytes | None = None
) -> None:
    conn.send(json.dumps({"id": rid, "op": op, "body": body, "payload": payload is not None}))
    if payload is not None:
        conn.send(payload)


def _recv(conn: ClientConnection) -> tuple[dict[str, Any], bytes | None]:
    """The next text frame as JSON, with the binary frame that follows it if it announces one."""
    message = conn.recv(timeout=10)
    assert isinstance(message, str), "expected a text frame"
    data = json.loads(message)
    if data.get("payload"):
        payload = conn.recv(timeout=10)
        assert isinstance(payload, bytes)
        return data, payload
    return data, None


def _call(
    conn: ClientConnection, rid: int, op: str, body: dict[str, Any], payload: bytes | None = None
) -> tuple[dict[str, Any], bytes | None]:
    _send(conn, rid, op, body, payload)
    reply, data = _recv(conn)
    assert reply["id"] == rid
    return reply, data


def _submit_body(sub: Submission) -> dict[str, Any]:
    return {"header": sub.header.to_json_dict(), "signature": sub.signature}


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def test_many_requests_share_one_connection(shared: Served) -> None:
    validator, server = shared
    with _connect(server.url) as conn:
        for rid in range(1, 6):  # pipelined: all sent before any reply is read
            _send(conn, rid, "info" if rid % 2 else "round", {})
        replies = [_recv(conn)[0] for _ in range(5)]
        assert sorted(r["id"] for r in replies) == [1, 2, 3, 4, 5]
        assert all(r["ok"] for r in replies)
        by_id = {r["id"]: r["body"] for r in replies}
        assert by_id[1]["validator_id"] == validator.validator_id
        assert by_id[2]["round"] == 0
        reply, model = _call(conn, 9, "model", {})
        assert reply["ok"] and reply["payload"] and model is not None
        assert decode_vector(model, max_bytes=len(model), expected_size=DIM).shape == (DIM,)
        assert reply["body"]["dim"] == DIM


def test_submission_rides_in_a_binary_frame(fresh: Served) -> None:
    validator, server = fresh
    node = Identity.generate()
    with _connect(server.url) as conn:
        reply, _ = _call(conn, 1, "register", {"public_key": node.public_key.hex()})
        assert reply == {"id": 1, "ok": True, "body": {"node_id": node.node_id}, "payload": False}
        sub = Submission.create(node, _vector(0), round=0)
        reply, _ = _call(conn, 2, "submit", _submit_body(sub), sub.payload)
        assert reply["ok"], reply
        assert Receipt.model_validate(reply["body"]).verify(validator.validator_id)
        reply, _ = _call(conn, 3, "submit", _submit_body(sub), sub.payload)
        assert reply["error"]["code"] == "replay"
    assert validator.round_info().submissions == 1


@pytest.mark.parametrize(
    ("case", "code"),
    [("nan", "invalid_update"), ("unregistered", "unknown_node"), ("big", "payload_too_large")],
)
def test_service_errors_come_back_by_id(shared: Served, case: str, code: str) -> None:
    validator, server = shared
    vec = np.random.default_rng(1).normal(size=600 if case == "big" else DIM).astype(np.float32)
    vec[0] = np.nan if case == "nan" else vec[0]
    node = Identity.generate()
    with _connect(server.url) as conn:
        if case != "unregistered":
            _call(conn, 1, "register", {"public_key": node.public_key.hex()})
        sub = Submission.create(node, vec, round=0)
        assert len(sub.payload) < max_message_size(validator.info())
        reply, _ = _call(conn, 7, "submit", _submit_body(sub), sub.payload)
    assert reply["ok"] is False and reply["error"]["code"] == code and reply["error"]["message"]
    assert validator.round_info().submissions == 0


def test_bad_frames_get_errors_and_the_connection_survives(shared: Served) -> None:
    _, server = shared
    with _connect(server.url) as conn:
        conn.send("{not json")
        assert _recv(conn)[0]["error"]["code"] == "malformed_payload"
        conn.send(b"\x00\x01")  # a binary frame no request announced
        reply = _recv(conn)[0]
        assert reply["id"] is None and reply["error"]["code"] == "malformed_payload"
        _send(conn, 3, "no_such_op", {})
        reply = _recv(conn)[0]
        assert (reply["id"], reply["ok"], reply["error"]["code"]) == (3, False, "bad_request")
        conn.send(json.dumps({"id": 4, "op": "submit", "body": {}, "payload": True}))
        conn.send(json.dumps({"id": 5, "op": "round", "body": {}}))  # not the promised payload
        first, second = _recv(conn)[0], _recv(conn)[0]
        assert (first["id"], first["error"]["code"]) == (4, "malformed_payload")
        assert (second["id"], second["ok"]) == (5, True)
        conn.send(json.dumps({"id": 6, "op": "round", "body": [1]}))
        assert _recv(conn)[0]["error"]["code"] == "malformed_payload"
        conn.send(json.dumps({"op": "round", "payload": True}))  # no id; its payload is dropped
        conn.send(b"ignored")
        assert _recv(conn)[0]["id"] is None
        assert _call(conn, 8, "round", {})[0]["ok"]


def test_oversized_frame_closes_the_connection(shared: Served) -> None:
    validator, server = shared
    limit = max_message_size(validator.info())
    with _connect(server.url) as conn:
        _send(conn, 2, "submit", {}, b"\0" * (limit + 1))
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_subscribers_get_every_verdict_pushed(fresh: Served) -> None:
    validator, server = fresh
    nodes = [Identity.generate() for _ in range(3)]
    with (
        _connect(server.url) as watcher,
        _connect(server.url) as other_watcher,
        _connect(server.url) as conn,
    ):
        assert _call(watcher, 1, "subscribe", {})[0]["body"] == {"subscribed": True}
        assert _call(other_watcher, 1, "subscribe", {})[0]["ok"]
        assert _call(other_watcher, 2, "unsubscribe", {})[0]["body"] == {"subscribed": False}
        hashes = set()
        for i, node in enumerate(nodes):
            _call(conn, 10 + i, "register", {"public_key": node.public_key.hex()})
            sub = Submission.create(node, _vector(i), round=0)
            reply, _ = _call(conn, 20 + i, "submit", _submit_body(sub), sub.payload)
            assert reply["ok"], reply
            hashes.add(sub.header.gradient_hash)
        pushed = [_recv(watcher)[0] for _ in nodes]  # the third submission closed the round
        assert all(set(p) == {"event", "verdict"} and p["event"] == "verdict" for p in pushed)
        verdicts = [Verdict.model_validate(p["verdict"]) for p in pushed]
        assert {v.gradient_hash for v in verdicts} == hashes
        assert all(v.verify(validator.validator_id) for v in verdicts)
        assert _call(other_watcher, 3, "round", {})[0]["body"]["round"] == 1  # nothing pushed
        # a closed connection unsubscribes: the next round still closes cleanly
        watcher.close()
        for i, node in enumerate(nodes):
            sub = Submission.create(node, _vector(10 + i), round=1)
            assert _call(conn, 30 + i, "submit", _submit_body(sub), sub.payload)[0]["ok"]
        assert _call(conn, 40, "round", {})[0]["body"]["round"] == 2
