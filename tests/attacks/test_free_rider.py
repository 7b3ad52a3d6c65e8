"""Free riders: a fixed direction at the honest norm every round, or zeros."""

from __future__ import annotations

import pytest
import torch

from matl.attacks import AttackContext, get_attack
from matl.errors import ConfigError
from matl.trust.entropy import EntropySignal


def test_a_fixed_free_rider_repeats_its_direction_at_the_honest_norm() -> None:
    g = torch.Generator().manual_seed(0)
    attack = get_attack("free_rider")
    rounds = []
    for rnd in range(3):
        honest = (rnd + 1.0) * torch.randn(6, 500, generator=g)
        out = attack(honest, 2, AttackContext(round=rnd, byzantine_ids=(3, 9)))
        median = float(honest.norm(dim=1).median())
        torch.testing.assert_close(out.norm(dim=1), torch.full((2,), median))
        rounds.append(out / out.norm(dim=1, keepdim=True))
    for later in rounds[1:]:
        torch.testing.assert_close(later, rounds[0])  # the same direction every round
    assert abs(float(rounds[0][0] @ rounds[0][1])) < 0.2  # each client its own direction
    again = attack(honest, 1, AttackContext(byzantine_ids=(9,)))
    torch.testing.assert_close(again[0] / again[0].norm(), rounds[0][1])  # tied to the client
    scaled = get_attack("free_rider", scale=2.0)(honest, 1, AttackContext(byzantine_ids=(9,)))
    torch.testing.assert_close(scaled, 2.0 * again)
    other = get_attack("free_rider", seed=1)(honest, 1, AttackContext(byzantine_ids=(9,)))
    assert not torch.allclose(other, again)


def test_a_plain_free_rider_sends_zeros() -> None:
    out = get_attack("free_rider", mode="zeros")(torch.randn(4, 30, dtype=torch.float64), 3)
    assert out.dtype == torch.float64 and torch.equal(out, torch.zeros(3, 30, dtype=torch.float64))


def test_entropy_gives_a_free_rider_the_repeat_symbol() -> None:
    """Over eight rounds the free riders' entropy scores fall to 0 while the honest clients'
    stay at 1 (the signal's purpose: a replay looks ordinary to the peer and temporal tests)."""
    g = torch.Generator().manual_seed(1)
    attack = get_attack("free_rider")
    signal = EntropySignal(sketch_dim=None)
    for rnd in range(8):
        honest = torch.randn(8, 400, generator=g)
        riders = attack(honest, 2, AttackContext(round=rnd, byzantine_ids=(8, 9)))
        res = signal(torch.cat([honest, riders]))
    assert res.scores[8:].tolist() == [0.0, 0.0]
    assert bool((res.scores[:8] == 1.0).all())


def test_the_directions_belong_to_the_named_clients() -> None:
    honest = torch.randn(4, 50)
    attack = get_attack("free_rider")
    rows = attack(honest, 2)  # no ids: the rows are clients 0 and 1
    torch.testing.assert_close(rows, attack(honest, 2, AttackContext(byzantine_ids=(0, 1))))
    assert not torch.allclose(rows[:1], attack(honest, 1, AttackContext(byzantine_ids=(7,))))
    with pytest.raises(ValueError, match="names 1 clients, expected 2"):
        attack(honest, 2, AttackContext(byzantine_ids=(7,)))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"mode": "replay"}, "mode must be one of"),
        ({"scale": 0.0}, "scale must be > 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_attack("free_rider", **params)
