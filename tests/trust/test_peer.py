"""PeerSignal (Mode 0): cosine, norm ratio and MAD distance to the coordinate-wise median."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import pytest
import torch

from matl.aggregation.base import RoundContext
from matl.aggregation.median import coordinate_median
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust import PeerSignal, Signal
from matl.trust._util import median
from matl.trust.base import SignalResult
from matl.trust.peer import robust_center

#: The ``honest_rounds`` fixture (tests/trust/conftest.py): real honest FedAvg updates.
Rounds = Callable[..., Iterator[tuple[torch.Tensor, RoundContext]]]

pytestmark = pytest.mark.usefixtures("single_thread")


def test_is_a_signal() -> None:
    assert isinstance(PeerSignal(), Signal)
    assert PeerSignal().name == "peer"


def test_sign_flipped_updates_score_low(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    bad = u.clone()
    bad[:4] = -bad[:4]
    res = PeerSignal()(bad, ctx)
    assert float(res.scores[:4].max()) < 0.05
    assert float(res.scores[4:].min()) > 0.7
    assert bool((res.raw["cosine"][:4] < 0).all())


def test_scaled_update_scores_low(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    bad = u.clone()
    bad[0] *= 10.0
    res = PeerSignal()(bad, ctx)
    assert res.raw["norm_ratio"][0] == pytest.approx(10.0, rel=0.2)
    assert float(res.raw["norm_term"][0]) < 0.1
    assert float(res.scores[0]) < 0.1
    assert float(res.scores[1:].min()) > 0.7


def test_free_rider_scores_zero(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    bad = u.clone()
    bad[0] = 0.0
    res = PeerSignal()(bad, ctx)
    assert float(res.scores[0]) == 0.0
    assert float(res.raw["cosine"][0]) == 0.0


def test_no_attack_scores_stay_high(honest_rounds: Rounds) -> None:
    """Honest-only rounds: every client stays far from the low region (minimum reported)."""
    sig = PeerSignal()
    minima = {}
    for scheme in ("iid", "dirichlet"):
        minima[scheme] = min(
            float(sig(u, ctx).scores.min()) for u, ctx in honest_rounds(12, scheme=scheme)
        )
    print(f"peer: min honest score over 12 rounds: {minima}")
    assert minima["iid"] > 0.7
    assert minima["dirichlet"] > 0.4


def test_raw_values_match_definitions() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(9, 40, generator=g, dtype=torch.float64) + 1.0
    res = PeerSignal()(u)
    c, _ = coordinate_median(u)
    norms = u.norm(dim=1)
    cos = (u @ c) / (norms * c.norm())
    torch.testing.assert_close(res.raw["cosine"], cos)
    torch.testing.assert_close(res.raw["norm_ratio"], norms / norms.median())
    dist = (u - c).norm(dim=1)
    med = dist.median()
    mad = (dist - med).abs().median()
    scale = torch.maximum(1.4826 * mad, 0.1 * med)
    torch.testing.assert_close(res.raw["distance_z"], (dist - med) / scale)
    raw = PeerSignal(distance_floor=0.0)(u).raw["distance_z"]
    torch.testing.assert_close(raw, (dist - med) / (1.4826 * mad))
    expected = res.raw["cosine_term"] * res.raw["norm_term"] * res.raw["distance_term"]
    torch.testing.assert_close(res.scores, expected)


def test_formula_terms() -> None:
    sig = PeerSignal(norm_tolerance=2.0, norm_width=0.5, distance_z0=3.0, distance_width=2.0)
    u = torch.tensor([[1.0, 0.0]] * 5 + [[8.0, 0.0]], dtype=torch.float64)
    res = sig(u)
    # ρ = 8 for the last row: excess = ln 8 − ln 2 = ln 4.
    assert float(res.raw["norm_term"][-1]) == pytest.approx(math.exp(-(math.log(4) ** 2) / 0.5))
    assert res.raw["norm_term"][:-1].tolist() == [1.0] * 5


def test_identical_updates_are_all_trusted() -> None:
    u = torch.ones(6, 10)
    res = PeerSignal()(u)
    assert res.scores.tolist() == [1.0] * 6
    assert bool(torch.isfinite(res.raw["distance_z"]).all())


def test_zero_centre_is_neutral_on_direction() -> None:
    u = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    res = PeerSignal()(u)
    assert res.raw["cosine_term"].tolist() == [1.0] * 4


def test_scores_in_unit_interval_float32_and_float64() -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.randn(30, 50, generator=g)
    r32 = PeerSignal()(u)
    r64 = PeerSignal()(u.double())
    for r in (r32, r64):
        assert r.scores.dtype == torch.float64
        assert bool(((r.scores >= 0) & (r.scores <= 1)).all())
    torch.testing.assert_close(r32.scores, r64.scores, atol=1e-4, rtol=1e-4)


def test_does_not_mutate_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(4)
    u = torch.randn(300, 20, generator=g)
    before = u.clone()
    ctx = RoundContext(round=5)
    a = PeerSignal(center_rows=101)(u, ctx)
    b = PeerSignal(center_rows=101)(u, ctx)
    assert torch.equal(u, before)
    assert torch.equal(a.scores, b.scores)


def test_center_subsample() -> None:
    g = torch.Generator().manual_seed(5)
    u = torch.randn(50, 30, generator=g)
    full = PeerSignal(center_rows=None).center(u)
    torch.testing.assert_close(full, coordinate_median(u)[0])
    sub = PeerSignal(center_rows=11)
    c1 = sub.center(u, RoundContext(round=1))
    assert torch.equal(c1, sub.center(u, RoundContext(round=1)))
    assert not torch.equal(c1, sub.center(u, RoundContext(round=2)))  # a fresh subset per round
    # The subsample's median is the median of 11 of the rows.
    rows = torch.tensor([0, 3, 7])
    torch.testing.assert_close(robust_center(u, rows), u[rows].median(dim=0).values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_robust_center_even_rows_average_the_middle_pair(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(9)
    u = torch.randn(40, 25, generator=g).to(dtype)
    rows = torch.tensor([1, 4, 9, 16, 25, 36])
    middle = torch.sort(u[rows].to(torch.float64), dim=0).values[2:4]
    center = robust_center(u, rows)
    assert center.dtype == dtype
    torch.testing.assert_close(center, middle.mean(dim=0).to(dtype))
    big = torch.finfo(torch.float32).max
    assert robust_center(torch.full((2, 3), big)).tolist() == [big] * 3  # no overflow to inf
    with pytest.raises(ValueError, match="no rows"):
        robust_center(u, torch.tensor([], dtype=torch.int64))


def test_subsampled_centre_still_catches_sign_flips() -> None:
    g = torch.Generator().manual_seed(6)
    base = torch.randn(200, generator=g)
    u = base + 0.5 * torch.randn(600, 200, generator=g)
    u[:200] = -u[:200]  # a third sign-flipped
    res = PeerSignal(center_rows=63)(u, RoundContext(round=0))
    assert float(res.scores[:200].max()) < 0.05
    assert float(res.scores[200:].min()) > 0.5


def test_rejects_nan_rows() -> None:
    u = torch.randn(5, 4)
    u[2, 1] = float("nan")
    with pytest.raises(InvalidUpdateError, match=r"\[2\]"):
        PeerSignal()(u)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cosine_fraction": 0.0},
        {"norm_tolerance": 0.5},
        {"norm_width": 0.0},
        {"distance_z0": -1.0},
        {"distance_width": 0.0},
        {"center_rows": 0},
        {"group_tau": 0.0},
        {"group_tau": 1.5},
        {"sketch_dim": 0},
        {"seed": -1},
        {"cosine_fraction": True},
    ],
)
def test_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PeerSignal(**kwargs)  # type: ignore[arg-type]


def test_stateless_interface() -> None:
    sig = PeerSignal()
    assert sig.state_dict() == {}
    sig.load_state_dict({})
    sig.reset()
    with pytest.raises(ValueError):
        sig.load_state_dict({"x": 1})


def _cartel_round(n_honest: int = 14, n_cartel: int = 7, d: int = 300) -> torch.Tensor:
    """Honest rows around a shared direction, and a cartel sending one reversed vector plus a
    little private noise (cosines among its members above 0.99), as the collusion attack does."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    honest = base + 1.5 * torch.randn(n_honest, d, generator=g, dtype=torch.float64)
    shared = -2.0 * base
    cartel = shared + 0.01 * shared.norm() / d**0.5 * torch.randn(
        n_cartel, d, generator=g, dtype=torch.float64
    )
    return torch.cat([cartel, honest])


def mid(x: torch.Tensor) -> torch.Tensor:
    """The median as the peer signal takes it (the mean of the two middle values of an even
    count; ``Tensor.median`` returns the lower one)."""
    return torch.quantile(x, 0.5)


def test_tight_groups_are_left_out_of_the_reference() -> None:
    """A third of the round sends near-identical updates: without the exclusion the cartel owns a
    third of the coordinate-wise median and drags it (and the medians of cosine, norm and distance)
    its way; with it the centre is the honest rows' median and every statistic is theirs."""
    u = _cartel_round()
    res = PeerSignal()(u)
    assert res.raw["in_reference"].tolist() == [0.0] * 7 + [1.0] * 14
    honest = u[7:]
    c, _ = coordinate_median(honest)
    cos = (u @ c) / (u.norm(dim=1) * c.norm())
    torch.testing.assert_close(res.raw["cosine"], cos)
    norms = u.norm(dim=1)
    torch.testing.assert_close(res.raw["norm_ratio"], norms / mid(honest.norm(dim=1)))
    dist = (u - c).norm(dim=1)
    med = mid(dist[7:])
    scale = torch.maximum(1.4826 * mid((dist[7:] - med).abs()), 0.1 * med)
    torch.testing.assert_close(res.raw["distance_z"], (dist - med) / scale)
    assert float(res.scores[:7].max()) < 0.05  # the cartel still fails: it points away
    assert float(res.scores[7:].min()) > 0.9
    pulled = PeerSignal(group_tau=None)(u)  # the centre the cartel pulls
    assert float(pulled.raw["cosine"][7:].median()) < float(res.raw["cosine"][7:].median())
    assert float(pulled.raw["in_reference"].min()) == 1.0


def test_reference_keeps_everyone_when_fewer_than_three_would_remain() -> None:
    u = _cartel_round(n_honest=2, n_cartel=7)
    res = PeerSignal()(u)
    assert res.raw["in_reference"].tolist() == [1.0] * 9


# ------------------------------------------------------------------------ the record of direction
def test_record_blemishes_a_client_reversed_from_the_start(honest_rounds: Rounds) -> None:
    """A client that points against the crowd in its first round is blemished at once and stays
    so; honest clients are credited at once and never blemished. The blemish does not change
    the score (it is the engine's verdict, not the round's)."""
    sig, plain = PeerSignal(record=True), PeerSignal()
    for rnd, (u, ctx) in enumerate(honest_rounds(8, scheme="dirichlet")):
        if rnd < 3:
            u[0] = -u[0]  # reversed in its first three rounds, honest afterwards
        res = sig(u, ctx)
        assert res.raw["blemished"].tolist() == [1.0] + [0.0] * 19
        assert bool((res.raw["credited"][1:] == 1).all())
        if rnd == 0:  # one observation: the running value is the round's, the scores the same
            assert torch.allclose(res.scores, plain(u, ctx).scores)
            assert float(res.raw["running_direction"][0]) < -0.5


def test_a_credited_client_is_judged_on_its_running_direction(honest_rounds: Rounds) -> None:
    """One reversed update late in an honest record: the stateless signal scores it low, the
    record reads the client's running direction and lets it pass."""
    sig, plain = PeerSignal(record=True), PeerSignal()
    for rnd, (u, ctx) in enumerate(honest_rounds(8, scheme="dirichlet")):
        if rnd == 7:
            u[0] = -u[0]
        res, ref = sig(u, ctx), plain(u, ctx)
    assert float(ref.scores[0]) < 0.1
    assert res.raw["credited"][0] == 1.0 and float(res.raw["running_direction"][0]) > 0.5
    assert float(res.scores[0]) > 0.7
    assert res.raw["blemished"][0] == 0.0


def test_uncredited_shift(honest_rounds: Rounds) -> None:
    """A client not (yet) credited reads ``x_i - s`` in its direction term; without a blemish
    the record reports none."""
    u, ctx = next(honest_rounds(1, scheme="dirichlet"))
    g = torch.Generator().manual_seed(3)
    u[0] = 0.4 * u[0] + torch.randn(u.shape[1], generator=g, dtype=u.dtype) * float(u[0].norm())
    res = PeerSignal(record=True, uncredited_shift=0.5)(u, ctx)
    typical = median(res.raw["cosine"][res.raw["in_reference"] > 0])
    x = res.raw["cosine"] / typical
    uncredited = res.raw["credited"] == 0
    assert bool(uncredited[0]) and not bool(uncredited[1:].any())
    expected = (0.5 + (x - 0.5) / (2 * 0.5)).clamp(0, 1)
    assert torch.allclose(res.raw["cosine_term"][uncredited], expected[uncredited])
    credited_term = (0.5 + x / (2 * 0.5)).clamp(0, 1)
    assert torch.allclose(res.raw["cosine_term"][~uncredited], credited_term[~uncredited])
    assert "blemished" not in PeerSignal(record=True, blemish=None)(u, ctx).raw


def test_forget_clears_the_blemish(honest_rounds: Rounds) -> None:
    sig = PeerSignal(record=True)
    rounds = list(honest_rounds(3, scheme="dirichlet"))
    u, ctx = rounds[0]
    u[0] = -u[0]
    assert sig(u, ctx).raw["blemished"][0] == 1.0
    sig.forget([0, 12345])
    for u, ctx in rounds[1:]:
        res = sig(u, ctx)
    assert res.raw["blemished"][0] == 0.0 and res.raw["credited"][0] == 1.0


def test_record_state_round_trip(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(4, scheme="dirichlet"))
    a = PeerSignal(record=True)
    for u, ctx in rounds[:3]:
        u[:2] = -u[:2]
        a(u, ctx)
    b = PeerSignal(record=True)
    b.load_state_dict(a.state_dict())
    u, ctx = rounds[3]
    ra, rb = a(u, ctx), b(u, ctx)
    assert torch.equal(ra.scores, rb.scores)
    assert all(torch.equal(ra.raw[k], rb.raw[k]) for k in ra.raw)
    assert ra.raw["blemished"][:2].tolist() == [1.0, 1.0]
    a.reset()
    assert a.state_dict()["client_ids"] == []
    with pytest.raises(ValueError, match="keys"):
        b.load_state_dict({"client_ids": [1]})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"record": True, "blemish": -0.1},
        {"credit": 0.0},
        {"uncredited_shift": -1.0},
        {"record": True, "record_memory": 1.0},
        {"record": True, "record_harm_memory": -0.5},
        {"blemish": -0.1},  # checked while the record is off too
        {"record_memory": 1.5},
        {"record": 1},
    ],
)
def test_record_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PeerSignal(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------- the centre read ahead (prepare)
def _same(a: SignalResult, b: SignalResult) -> None:
    """Bit for bit: the read-ahead changes where the products are computed, not their values."""
    assert torch.equal(a.scores, b.scores)
    assert a.raw.keys() == b.raw.keys()
    for key in a.raw:
        assert torch.equal(a.raw[key], b.raw[key]), key


@pytest.mark.parametrize("center_rows", [None, 7])
def test_centre_products_read_ahead_give_the_result_of_a_plain_call(
    honest_rounds: Rounds, center_rows: int | None
) -> None:
    """Read ahead or not, the same bits; a round with a tight group computes its own centre and
    turns the next round's read-ahead off, and a round without one turns it back on."""
    primed = PeerSignal(sketch_dim=8, record=True, center_rows=center_rows)
    plain = PeerSignal(sketch_dim=8, record=True, center_rows=center_rows)
    expect_read = [True, True, True, False, True]
    # Rounds 1-5 (round 0's updates are so alike that a width-8 sketch sees a group in them).
    for t, (u, ctx) in enumerate(list(honest_rounds(6))[1:]):
        if t == 1:
            u[:3] = -u[:3]
        if t == 2:  # a tight group: its members are left out of the reference
            u[:5] = u[5] + 1e-4 * u[5].norm() * torch.randn(5, u.shape[1], dtype=u.dtype)
        assert primed.prepare(u, ctx, 8, 0) is expect_read[t]
        a, b = primed(u, ctx), plain(u, ctx)
        _same(a, b)
        assert primed._primed is None  # one call only
        assert bool(a.raw["in_reference"].min() == 1.0) is (t != 2)


def test_centre_products_are_read_ahead_only_for_a_sketched_kernel_input(
    honest_rounds: Rounds,
) -> None:
    u, ctx = next(honest_rounds(1))
    sig = PeerSignal(sketch_dim=8)
    assert not sig.prepare(u.half(), ctx, 8, 0)  # not a kernel dtype
    assert not sig.prepare(u, ctx, 16, 0)  # another sketch than the signal's
    assert not sig.prepare(u, ctx, 8, 1)  # another seed than the signal's
    assert not PeerSignal(sketch_dim=64).prepare(u, ctx, 64, 0)  # d ≤ 4k: no sketch pass
    assert not PeerSignal(sketch_dim=None).prepare(u, ctx, 8, 0)
    with torch.inference_mode():
        frozen = u.clone()
    assert not sig.prepare(frozen, ctx, 8, 0)  # no version counter to check it against
    assert not sig.prepare(u[:0], ctx, 8, 0)
    assert not sig.prepare(u, object(), 8, 0)  # type: ignore[arg-type]  # a context without a round
    assert sig.prepare(u, ctx, 8, 0)
    sig.discard_primed()  # what the engine does when the round fails before the call
    assert sig._primed is None


def test_centre_products_read_ahead_serve_only_the_updates_and_round_they_came_from(
    honest_rounds: Rounds,
) -> None:
    (u1, ctx1), (u2, ctx2) = list(honest_rounds(3))[1:]
    plain = PeerSignal(sketch_dim=8, center_rows=7)
    sig = PeerSignal(sketch_dim=8, center_rows=7)
    assert sig.prepare(u1, ctx1, 8, 0)
    _same(sig(u2, ctx2), plain(u2, ctx2))  # other updates
    assert sig.prepare(u1, ctx1, 8, 0)
    u1[0] = -u1[0]  # changed in place after the read: the read is stale
    _same(sig(u1, ctx1), plain(u1, ctx1))
    assert sig.prepare(u2, ctx2, 8, 0)
    later = dataclasses.replace(ctx2, round=ctx2.round + 1)  # another round: another subsample
    _same(sig(u2, later), plain(u2, later))


def test_a_malformed_input_is_left_to_the_call(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    u[2, 3] = math.nan
    sig = PeerSignal(sketch_dim=8)
    sig.prepare(u, ctx, 8, 0)  # whatever it read, the call refuses the round
    with pytest.raises(InvalidUpdateError):
        sig(u, ctx)
