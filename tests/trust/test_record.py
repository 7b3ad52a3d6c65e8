"""The record of a direction test over rounds (matl.trust.record): running value, credit,
blemish, forget and state."""

from __future__ import annotations

import pytest
import torch

from matl.errors import ConfigError
from matl.trust.record import DirectionRecord, mark_standing


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_mark_standing_credit_low_and_vouched() -> None:
    credit, low, vouched = _t(0, 0, 0), _t(0, 0, 0), _t(0, 0, 0)
    rows = torch.arange(3)
    credited, blemished = mark_standing(credit, low, vouched, rows, _t(0.9, -0.2, -0.7), 0.5, 0.5)
    assert credited.tolist() == [True, False, False]
    assert blemished.tolist() == [False, False, True]
    assert vouched.tolist() == [1, 0, 0] and low.tolist() == [0, -0.2, -0.7]
    # a later credit does not lift the blemish; the vouched client's lows are not recorded
    credited, blemished = mark_standing(credit, low, vouched, rows, _t(-0.9, 0.6, 0.6), 0.5, 0.5)
    assert credited.tolist() == [True, True, True]
    assert blemished.tolist() == [False, False, True]
    assert low.tolist() == [0, -0.2, -0.7] and credit.tolist() == [0.9, 0.6, 0.6]
    # no value this round: nothing folded, the standing read as it is
    credited, blemished = mark_standing(credit, low, vouched, rows, None, 0.5, 0.5)
    assert credited.all() and blemished.tolist() == [False, False, True]


def test_mark_standing_without_levels() -> None:
    credit, low, vouched = _t(0, 0), _t(0, 0), _t(0, 0)
    credited, blemished = mark_standing(
        credit, low, vouched, torch.arange(2), _t(0.9, -0.7), None, 0.5
    )
    # nobody credited: every client that fell that low is blemished, the other is not
    assert not credited.any() and blemished.tolist() == [False, True]
    credited, blemished = mark_standing(
        credit, low, vouched, torch.arange(2), _t(0.9, -0.7), 0.5, None
    )
    assert credited.tolist() == [True, False] and not blemished.any()


def test_running_value_is_bias_corrected_with_a_harm_memory() -> None:
    rec = DirectionRecord(name="t", memory=0.9, harm_memory=0.8)
    running, credited, blemished = rec.update([5], _t(0.2))
    assert running.item() == pytest.approx(0.2)  # one observation reads as itself
    assert not credited.any() and not blemished.any()
    running, _, _ = rec.update([5], _t(1.0))  # a rise folds with memory 0.9
    assert running.item() == pytest.approx((0.09 * 0.2 + 0.1 * 1.0) / 0.19)
    before = running.item()
    running, _, _ = rec.update([5], _t(-1.0))  # a drop with memory 0.8
    m, w = 0.8 * (0.09 * 0.2 + 0.1) + 0.2 * -1.0, 0.8 * 0.19 + 0.2
    assert running.item() == pytest.approx(m / w) and running.item() < before


def test_values_are_clipped_and_unseen_clients_read_zero() -> None:
    rec = DirectionRecord(name="t", clip=3.0)
    running, _, blemished = rec.update([1, 2], _t(-50.0, 7.0))
    assert running.tolist() == [-3.0, 3.0] and blemished.tolist() == [True, False]
    running, _, _ = rec.update([3], None)  # no reference: a new client has no value yet
    assert running.tolist() == [0.0]


def test_forget_drops_credit_and_blemish_but_not_vouched() -> None:
    rec = DirectionRecord(name="t")
    rec.update([1, 2], _t(1.0, -1.0))
    rec.forget([1, 2, 99])  # unknown ids ignored
    running, credited, blemished = rec.update([1, 2], _t(-1.0, 0.0))
    assert running.tolist() == [-1.0, 0.0]
    assert not credited.any()
    # client 1 was vouched for before the forget: it cannot be blemished now
    assert blemished.tolist() == [False, False]
    _, _, blemished = rec.update([1, 2], _t(-1.0, -1.0))
    assert blemished.tolist() == [False, True]


def test_state_round_trip_and_reset() -> None:
    rec = DirectionRecord(name="t")
    rec.update([4, 7, 9], _t(0.9, -0.8, 0.1))
    state = rec.state_dict()
    assert state["client_ids"] == [4, 7, 9]
    other = DirectionRecord(name="t")
    other.load_state_dict(state)
    for mine, theirs in zip(
        other.update([9, 7], _t(0.3, 0.3)), rec.update([9, 7], _t(0.3, 0.3)), strict=True
    ):
        assert torch.equal(mine, theirs)
    state["mean"][0] = 99.0  # the saved copy is not the live table
    assert rec.state_dict()["mean"][0] != 99.0
    rec.reset()
    assert rec.state_dict()["client_ids"] == [] and rec.update([4], _t(0.0))[0].tolist() == [0.0]
    other.load_state_dict({})
    assert other.state_dict()["client_ids"] == []


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("weight", [2.0, 0.5], "weight"),
        ("mean", [5.0, 0.0], "weight"),
        ("low", [0.5, 0.0], "low"),
        ("vouched", [0.5, 1.0], "vouched"),
        ("credit", [float("nan"), 0.0], "finite"),
        ("credit", [0.0], "shapes"),
    ],
)
def test_bad_states_are_refused(key: str, value: list[float], match: str) -> None:
    rec = DirectionRecord(name="t")
    rec.update([1, 2], _t(0.9, 0.1))
    state = rec.state_dict()
    state[key] = value
    with pytest.raises(ValueError, match=match):
        DirectionRecord(name="t").load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        DirectionRecord(name="t").load_state_dict({"client_ids": [1]})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory": 1.0},
        {"harm_memory": -0.1},
        {"clip": 0.0},
        {"credit_level": 0.0},
        {"blemish_level": -1.0},
    ],
)
def test_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        DirectionRecord(name="t", **kwargs)
