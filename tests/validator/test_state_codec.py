"""Trust-engine state survives a JSON round trip exactly (tensors, int keys, nesting)."""

from __future__ import annotations

import json

import torch

from matl.aggregation import get_rule
from matl.aggregation.base import RoundContext
from matl.validator.state_codec import decode_state, encode_state


def test_tensors_and_int_keys_round_trip_exactly() -> None:
    state = {
        "t": torch.randn(3, 4, dtype=torch.float64),
        "b": torch.tensor([True, False]),
        "i": torch.arange(5),
        "by_client": {0: {"r": 0.5}, 7: {"r": 1.0}},
        "plain": [1, "x", None],
    }
    back = decode_state(json.loads(json.dumps(encode_state(state))))
    for key in ("t", "b", "i"):
        assert back[key].dtype == state[key].dtype and torch.equal(back[key], state[key])
    assert back["by_client"] == state["by_client"] and back["plain"] == state["plain"]


def test_a_matl_rule_restored_from_json_continues_identically() -> None:
    updates = [torch.randn(6, 12, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    ctx = [RoundContext(client_ids=tuple(range(6)), round=r) for r in range(4)]
    a, b = get_rule("matl", mode=0), get_rule("matl", mode=0)
    for r in range(2):
        a(updates[r], ctx[r])
    b.load_state_dict(decode_state(json.loads(json.dumps(encode_state(a.state_dict())))))
    for r in range(2, 4):
        ra, rb = a(updates[r], ctx[r]), b(updates[r], ctx[r])
        assert torch.equal(ra.aggregate, rb.aggregate) and torch.equal(ra.flagged, rb.flagged)
