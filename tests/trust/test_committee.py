"""Validator committee: 2/3 reputation-weighted quorum, lying validators, validator reputation."""

from __future__ import annotations

import pytest
import torch

from matl.errors import ConfigError
from matl.trust.committee import Committee, weighted_median
from matl.trust.composite import AdaptiveThreshold

N_HONEST, N_BAD = 12, 8  # 40 % Byzantine clients


def _reports(validators: int, seed: int) -> torch.Tensor:
    """Honest validators' reports: honest clients high, Byzantine clients low, shard noise."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.tensor([0.8] * N_HONEST + [0.2] * N_BAD, dtype=torch.float64)
    return (truth + 0.03 * torch.randn(validators, truth.numel(), generator=g)).clamp(0, 1)


FLAG = AdaptiveThreshold()
HONEST = torch.tensor([True] * N_HONEST + [False] * N_BAD)


def _flag(s: torch.Tensor) -> torch.Tensor:
    return FLAG.decide(s).flagged


@pytest.mark.parametrize(("validators", "liars"), [(4, 1), (7, 2), (10, 3)])
@pytest.mark.parametrize("lie", ["invert", "random"])
def test_less_than_a_third_lying_gives_correct_verdicts_and_liars_lose_power(
    validators: int, liars: int, lie: str
) -> None:
    assert liars / validators < 1 / 3
    com = Committee(validators=validators, liars=liars, lie=lie)  # type: ignore[arg-type]
    for rnd in range(8):
        dec = com.vote(com.corrupt(_reports(validators, rnd), rnd), _flag)
        assert torch.equal(dec.trusted, HONEST)
        assert torch.equal(dec.rejected, ~HONEST)
        # the power-weighted median follows the honest validators
        assert torch.all((dec.score > 0.5) == HONEST)
    rep = com.reputation
    assert torch.all(rep[: validators - liars] > 0.99)
    if lie == "invert":
        assert torch.all(rep[validators - liars :] < 0.1)  # ≈ 0.7^8
        assert torch.all(com.power()[validators - liars :] == 0)
    else:
        assert torch.all(rep[validators - liars :] < 0.8)


def test_exactly_a_third_lying_still_gives_correct_verdicts() -> None:
    """The quorum is inclusive: 4 honest of 6 hold exactly 2/3 of the power."""
    com = Committee(validators=6, liars=2)
    dec = com.vote(com.corrupt(_reports(6, 0), 0), _flag)
    assert torch.equal(dec.trusted, HONEST) and torch.equal(dec.rejected, ~HONEST)


@pytest.mark.parametrize(("validators", "liars"), [(7, 3), (5, 3)])
def test_more_than_a_third_lying_blocks_verdicts_but_trusts_no_byzantine_client(
    validators: int, liars: int
) -> None:
    """1/3 < λ < 2/3 inverting liars: no quorum on anyone, nobody trusted, reputations frozen."""
    com = Committee(validators=validators, liars=liars)
    for rnd in range(3):
        dec = com.vote(com.corrupt(_reports(validators, rnd), rnd), _flag)
        assert not dec.trusted.any()
        assert not dec.rejected.any()
        assert torch.all(dec.support[~HONEST] < 2 / 3)  # Byzantine clients never reach a quorum
        assert torch.isnan(dec.agreement).all()
    assert torch.equal(com.reputation, torch.ones(validators, dtype=torch.float64))


def test_two_thirds_lying_decides_for_the_liars() -> None:
    com = Committee(validators=3, liars=2)
    dec = com.vote(com.corrupt(_reports(3, 0), 0), _flag)
    assert torch.equal(dec.trusted, ~HONEST)


def test_honest_only_rounds_trust_everyone_even_with_inverting_liars() -> None:
    g = torch.Generator().manual_seed(0)
    reports = (0.8 + 0.03 * torch.randn(5, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    com = Committee(validators=5, liars=1)
    dec = com.vote(com.corrupt(reports, 0), _flag)
    assert dec.trusted.all()  # the inverted report (≈ 0.2 everywhere) shows no separation either
    assert torch.equal(com.reputation, torch.ones(5, dtype=torch.float64))


def test_reputation_weighted_power() -> None:
    com = Committee(validators=3)
    com.load_state_dict({"reputation": [1.0, 0.2, 0.2]})
    reports = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]], dtype=torch.float64)
    dec = com.vote(reports, lambda s: s < 0.5)
    # validator 0 holds 1/1.4 > 2/3 of the power: its votes decide
    assert dec.trusted.tolist() == [True, False]
    assert dec.rejected.tolist() == [False, True]


def test_weighted_median() -> None:
    values = torch.tensor([[0.1, 5.0], [0.2, 6.0], [0.9, 7.0]], dtype=torch.float64)
    assert weighted_median(values, torch.tensor([1.0, 1.0, 1.0])).tolist() == [0.2, 6.0]
    assert weighted_median(values, torch.tensor([0.0, 0.0, 1.0])).tolist() == [0.9, 7.0]
    assert weighted_median(values, torch.tensor([3.0, 1.0, 1.0])).tolist() == [0.1, 5.0]


def test_random_lies_are_seeded() -> None:
    reports = _reports(4, 0)
    a = Committee(validators=4, liars=2, lie="random", seed=1).corrupt(reports, 3)
    b = Committee(validators=4, liars=2, lie="random", seed=1).corrupt(reports, 3)
    c = Committee(validators=4, liars=2, lie="random", seed=1).corrupt(reports, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:2], reports[:2])


def test_each_stream_of_a_random_lie_is_drawn_apart() -> None:
    reports = _reports(4, 0)
    com = Committee(validators=4, liars=2, lie="random", seed=1)
    scores, exempt = com.corrupt(reports, 3, stream=1), com.corrupt(reports, 3, stream=2)
    assert not torch.equal(scores[2:], com.corrupt(reports, 3)[2:])
    assert not torch.equal(scores[2:], exempt[2:])
    assert torch.equal(scores, com.corrupt(reports, 3, stream=1))
    assert torch.equal(scores[:2], reports[:2])


def test_the_floor_is_the_lowest_value_more_than_a_third_of_the_power_reports() -> None:
    values = torch.tensor([[0.1, 0.9], [0.5, 0.8], [0.7, 0.2]], dtype=torch.float64)
    assert Committee(validators=3).floor(values).tolist() == [0.5, 0.8]  # second lowest
    assert Committee(validators=1).floor(values[:1]).tolist() == [0.1, 0.9]
    assert Committee(validators=2).floor(values[:2]).tolist() == [0.1, 0.8]  # the minimum
    com = Committee(validators=3)
    com.load_state_dict({"reputation": [1.0, 0.05, 0.05]})  # only validator 0 has power
    assert com.floor(values).tolist() == [0.1, 0.9]
    com.load_state_dict({"reputation": [0.0, 0.0, 0.0]})  # nobody has power: the minimum
    assert com.floor(values).tolist() == [0.1, 0.2]


@pytest.mark.parametrize(("validators", "liars"), [(3, 1), (4, 1), (6, 2), (7, 2)])
@pytest.mark.parametrize("lie", ["invert", "random"])
def test_liars_within_the_tolerance_can_neither_fake_nor_hide_a_low_floor(
    validators: int, liars: int, lie: str
) -> None:
    """Honest validators agree that the Byzantine clients score low; liars holding at most a
    third of the power cannot pull an honest client's floor below every honest report, nor lift
    a Byzantine client's above the honest reports."""
    honest = _reports(validators, 5)
    com = Committee(validators=validators, liars=liars, lie=lie)  # type: ignore[arg-type]
    floor = com.floor(com.corrupt(honest, 0, stream=1))
    truthful = honest[: validators - liars]
    assert torch.all(floor >= truthful.min(dim=0).values)
    assert torch.all(floor <= truthful.max(dim=0).values)
    assert torch.all(floor[HONEST] > 0.6) and torch.all(floor[~HONEST] < 0.4)


def test_the_floor_compares_shares_of_the_power_whatever_its_scale() -> None:
    values = torch.tensor([[0.1], [0.5], [0.7]], dtype=torch.float64)
    for scale in (1.0, 1e-6):
        com = Committee(validators=3, min_reputation=0.0)
        com.load_state_dict({"reputation": [scale * 0.5, scale, scale]})
        # shares 0.2, 0.4, 0.4: the liar-sized first report alone is not beyond 1/3
        assert com.floor(values).tolist() == [0.5]


def test_consensus_is_the_power_weighted_median() -> None:
    values = _reports(4, 2)
    com = Committee(validators=4)
    assert torch.equal(com.consensus(values), weighted_median(values, torch.ones(4)))
    com.load_state_dict({"reputation": [0.0, 0.0, 0.0, 0.0]})
    assert torch.equal(com.consensus(values), values.median(dim=0).values)


def test_state_round_trip() -> None:
    com = Committee(validators=4, liars=1)
    for rnd in range(3):
        com.vote(com.corrupt(_reports(4, rnd), rnd), _flag)
    other = Committee(validators=4, liars=1)
    other.load_state_dict(com.state_dict())
    assert torch.equal(other.reputation, com.reputation)
    other.reset()
    assert torch.equal(other.reputation, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected 4"):
        other.load_state_dict({"reputation": [1.0]})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"validators": 0},
        {"validators": 2, "liars": 3},
        {"liars": -1},
        {"lie": "lol"},
        {"quorum": 0.5},
        {"learning_rate": 0},
        {"min_reputation": 1.0},
        {"seed": -1},
    ],
)
def test_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Committee(**kwargs)
