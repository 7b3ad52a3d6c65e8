"""Cartels: near-identical updates that persist across rounds."""

from __future__ import annotations

import pytest
import torch

from matl.errors import ConfigError
from matl.trust.cartel import CartelDetector

D = 2000


def _round(g: torch.Generator, n_honest: int, cartel: int, noise: float = 0.0) -> torch.Tensor:
    honest = torch.randn(n_honest, D, generator=g)
    shared = torch.randn(D, generator=g)
    colluders = shared + noise * torch.randn(cartel, D, generator=g)
    return torch.cat([honest, colluders])


def test_identical_updates_form_a_cartel_after_min_rounds() -> None:
    det = CartelDetector(min_rounds=3)
    g = torch.Generator().manual_seed(0)
    ids = list(range(10, 20))
    for rnd in range(4):
        rep = det.update(_round(g, 6, 4, noise=0.001), ids)
        expected = rnd >= 2
        assert rep.member.tolist() == [False] * 6 + [expected] * 4, rnd
        if expected:
            assert rep.cartels == [[16, 17, 18, 19]]
            assert rep.size.tolist() == [0] * 6 + [4] * 4
    assert rep.persistence.tolist()[-4:] == [4] * 4
    assert torch.all(rep.max_cosine[-4:] > 0.99) and torch.all(rep.max_cosine[:6] < 0.5)


def test_pairs_are_not_a_cartel_and_breaking_ranks_resets() -> None:
    det = CartelDetector(min_rounds=2)
    g = torch.Generator().manual_seed(1)
    ids = list(range(8))
    for _ in range(3):
        rep = det.update(_round(g, 6, 2), ids)
        assert not rep.member.any()  # a pair is below min_size 3
    det = CartelDetector(min_rounds=2)
    for _ in range(2):
        rep = det.update(_round(g, 5, 3), ids)
    assert rep.member.sum() == 3
    rep = det.update(torch.randn(8, D, generator=g), ids)  # everyone honest now
    assert not rep.member.any()
    assert det.state_dict() == {"pairs": []}


def test_absent_clients_keep_their_counts() -> None:
    det = CartelDetector(min_rounds=2)
    g = torch.Generator().manual_seed(2)
    det.update(_round(g, 3, 3), [0, 1, 2, 3, 4, 5])
    det.update(torch.randn(3, D, generator=g), [0, 1, 2])  # the cartel is not sampled
    rep = det.update(_round(g, 3, 3), [0, 1, 2, 3, 4, 5])
    assert rep.member.tolist() == [False] * 3 + [True] * 3


def test_honest_updates_never_form_cartels() -> None:
    det = CartelDetector(min_rounds=1, tau=0.99)
    g = torch.Generator().manual_seed(3)
    common = torch.randn(D, generator=g)
    for _ in range(5):
        # strongly correlated honest updates (cosine ≈ 0.9 with each other)
        u = 3 * common + torch.randn(30, D, generator=g)
        assert not det.update(u, list(range(30))).member.any()


def test_state_round_trip_and_reset() -> None:
    det = CartelDetector(min_rounds=3)
    g = torch.Generator().manual_seed(5)
    ids = list(range(7))
    for _ in range(2):
        det.update(_round(g, 4, 3), ids)
    other = CartelDetector(min_rounds=3)
    other.load_state_dict(det.state_dict())
    assert other.state_dict() == det.state_dict()
    u = _round(g, 4, 3)
    assert torch.equal(det.update(u, ids).member, other.update(u, ids).member)
    assert other.cartels() == [[4, 5, 6]]
    other.reset()
    assert other.state_dict() == {"pairs": []}


@pytest.mark.parametrize(
    "kwargs", [{"tau": 0}, {"tau": 1.1}, {"min_rounds": 0}, {"min_size": 1}, {"dim": 0}]
)
def test_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        CartelDetector(**kwargs)


def test_update_checks_ids() -> None:
    with pytest.raises(ValueError, match="distinct"):
        CartelDetector().update(torch.zeros(2, 3), [1, 1])


def test_clients_sending_zeros_are_not_a_cartel() -> None:
    """A zero update copies nobody (free riders are the entropy signal's business), while three
    identical non-zero updates in the same rounds do form a cartel."""
    det = CartelDetector(min_rounds=3)
    g = torch.Generator().manual_seed(9)
    for _ in range(4):
        u = torch.randn(9, D, generator=g)
        u[:3] = 0.0
        u[3:6] = torch.randn(D, generator=g)
        report = det.update(u, list(range(9)))
    assert report.cartels == [[3, 4, 5]]
    assert report.member.tolist() == [False] * 3 + [True] * 3 + [False] * 3
