"""TCDM: temporal consistency (sleepers) and community diversity (sybil groups)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from matl.aggregation.base import RoundContext
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust import TCDM, CommunitySignal, InnovationSignal, Signal, TemporalSignal
from matl.trust._util import put_rows, robust_z, take_rows
from matl.trust.base import FAILED
from matl.trust.tcdm import pairwise_cosines

#: The ``honest_rounds`` fixture (tests/trust/conftest.py): real honest FedAvg updates.
Rounds = Callable[..., Iterator[tuple[torch.Tensor, RoundContext]]]

pytestmark = pytest.mark.usefixtures("single_thread")


def test_are_signals() -> None:
    for sig, name in ((TemporalSignal(), "temporal"), (CommunitySignal(), "community")):
        assert isinstance(sig, Signal)
        assert sig.name == name
    assert isinstance(TCDM(), Signal)
    assert TCDM().name == "tcdm"


# ----------------------------------------------------------------------------------- temporal


def test_sleeper_switch_lowers_temporal_consistency(honest_rounds: Rounds) -> None:
    sig = TemporalSignal()
    honest_min = 1.0
    for u, ctx in honest_rounds(9):
        if ctx.round == 8:  # client 3 wakes up and flips its update
            u[3] = -u[3]
            res = sig(u, ctx)
            assert float(res.raw["consistency"][3]) < 0
            assert float(res.scores[3]) < 0.01
            assert float(res.scores[torch.arange(20) != 3].min()) > 0.9
        else:
            res = sig(u, ctx)
            honest_min = min(honest_min, float(res.scores.min()))
    print(f"temporal: min honest score over 8 rounds: {honest_min:.3f}")
    assert honest_min > 0.9


def test_nearly_half_switching_at_once_is_still_caught(honest_rounds: Rounds) -> None:
    """9 of 20 clients flip in the same round. The two-sided MAD would sit in the gap between the
    two groups; the scale from the upper half does not."""
    sig = TemporalSignal()
    for u, ctx in honest_rounds(9, scheme="dirichlet", model="mlp"):
        if ctx.round == 8:
            u[:9] = -u[:9]
        res = sig(u, ctx)
    consistency = res.raw["consistency"]
    assert float(res.scores[:9].max()) < 0.01
    assert float(res.scores[9:].min()) > 0.9
    # the same round under the two-sided scale: the switchers' z-scores shrink
    z_both, _, s_both = robust_z(consistency, 1e-9)
    z_up, _, s_up = robust_z(consistency, 1e-9, scale_from="upper")
    assert s_both > s_up
    assert float(-z_up[:9].max()) > float(-z_both[:9].max())


def test_upper_scale_keeps_a_large_switching_minority_apart() -> None:
    """A switching round like the measured one (45 % sleepers on MNIST: honest consistency around
    0.5, switchers -0.6 to -0.3): the two-sided MAD is inflated by the switchers (here 0.26, the
    honest spread alone gives about 0.07) and the closest switcher sits at z = 3.9 (score 0.7); the
    upper-half scale puts every switcher at z >= 5 (score <= 0.14, the farthest at 7)."""
    honest = torch.linspace(0.40, 0.60, 27, dtype=torch.float64)
    switched = torch.linspace(-0.6, -0.3, 23, dtype=torch.float64)
    t = torch.cat([switched, honest])
    z_both, _, s_both = robust_z(t, 0.1)
    z_up, _, s_up = robust_z(t, 0.1, scale_from="upper")
    assert s_both > 1.8 * s_up
    assert float(-z_both[:23].max()) < 4.0
    assert float(-z_up[:23].max()) > 4.95


def test_robust_z_scales() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 10.0], dtype=torch.float64)
    # median 2.5; |x - med| = 2.5 1.5 0.5 0.5 1.5 7.5 -> MAD 1.5; upper half 0.5 1.5 7.5 -> 1.5
    _, med, s = robust_z(x, 0.0)
    assert med == 2.5 and s == pytest.approx(1.4826 * 1.5)
    y = torch.tensor([-9.0, -8.0, 1.0, 1.1, 1.2, 1.3, 1.4], dtype=torch.float64)
    # median 1.1; upper deviations 0 0.1 0.2 0.3 -> 0.15; two-sided 9.1 8.1 0.1 0 0.1 0.2 0.3 -> 0.2
    _, med, s_up = robust_z(y, 0.0, scale_from="upper")
    assert med == pytest.approx(1.1) and s_up == pytest.approx(1.4826 * 0.15)
    assert robust_z(y, 1.0, scale_from="upper")[2] == 1.0  # the floor


def test_decoys_replaying_one_direction_do_not_hide_sleepers() -> None:
    """13 decoys at consistency 1 sit in the upper half and inflate its scale (a review's
    construction: the upper scale alone put the sleepers at z of about 1); the two-sided MAD does
    not, and the smaller of the two is what the temporal signal uses."""
    decoys = torch.ones(13, dtype=torch.float64)
    sleepers = torch.linspace(-0.6, -0.3, 10, dtype=torch.float64)
    honest = torch.linspace(0.40, 0.60, 27, dtype=torch.float64)
    t = torch.cat([sleepers, honest, decoys])
    z_upper = -robust_z(t, 0.1, scale_from="upper")[0][:10]
    z_used = -robust_z(t, 0.1, scale_from="smaller")[0][:10]
    assert float(z_upper.min()) < 3.0
    assert float(z_used.min()) > 5.0
    with pytest.raises(ValueError):
        robust_z(t, 0.1, scale_from="lower")  # type: ignore[arg-type]


def test_an_anomalous_update_is_absorbed_slowly(honest_rounds: Rounds) -> None:
    """A sleeper that keeps flipping from round 6 on: with memory 0.7 for every update it looks
    consistent again after three rounds; its first ``anomaly_rounds`` failing updates are absorbed
    with memory 0.95, which keeps it failing two rounds longer, and without the cap on the streak
    it would fail for good."""
    failed = {}
    for label, kwargs in (
        ("default", {}),
        ("plain", {"anomaly_decay": 0.7}),
        ("off", {"anomaly_rounds": 0}),
        ("uncapped", {"anomaly_rounds": 100}),
    ):
        sig = TemporalSignal(**kwargs)  # type: ignore[arg-type]
        fails = []
        for u, ctx in honest_rounds(12, scheme="dirichlet", model="mlp"):
            if ctx.round >= 6:
                u[0] = -u[0]
            res = sig(u, ctx)
            fails.append(float(res.scores[0]) < 0.5)
            assert float(res.scores[1:].min()) > 0.9
        failed[label] = fails[6:]
    assert failed["plain"] == failed["off"]
    assert sum(failed["plain"]) < sum(failed["default"]) < sum(failed["uncapped"]) == 6
    assert failed["default"][:5] == [True] * 5


def test_temporal_streak_state(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(8, scheme="dirichlet", model="mlp"))
    a = TemporalSignal()
    for u, ctx in rounds[:7]:
        if ctx.round >= 5:
            u[0] = -u[0]
        a(u, ctx)
    state = a.state_dict()
    assert int(state["streak"][0]) == 2 and int(state["streak"][1:].max()) == 0
    b, old = TemporalSignal(), TemporalSignal()
    b.load_state_dict(state)
    old.load_state_dict({k: v for k, v in state.items() if k != "streak"})  # an older checkpoint
    assert old.state_dict()["streak"].tolist() == [0] * 20
    u, ctx = rounds[7]
    u[0] = -u[0]
    assert torch.equal(a(u.clone(), ctx).scores, b(u.clone(), ctx).scores)
    with pytest.raises(ValueError):
        TemporalSignal().load_state_dict({**state, "streak": state["streak"][:3]})
    with pytest.raises(ValueError):
        TemporalSignal().load_state_dict({**state, "streak": -state["streak"] - 1})


def test_no_history_is_neutral_and_first_round_is_neutral() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(5, 8, generator=g)
    res = TemporalSignal(neutral=0.7)(u, RoundContext(client_ids=(1, 2, 3, 4, 5)))
    assert res.scores.tolist() == [0.7] * 5
    assert res.raw["has_history"].tolist() == [0.0] * 5


def test_partial_participation_keys_by_client_id() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(10, 8, generator=g, dtype=torch.float64)
    sig = TemporalSignal()
    sig(base[:6], RoundContext(client_ids=tuple(range(6))))
    # Round 2: clients 3..9; 3..5 have history, 6..9 are new. Client 4 reverses.
    u = base[3:10].clone() + 0.01 * torch.randn(7, 8, generator=g, dtype=torch.float64)
    u[1] = -u[1]
    res = sig(u, RoundContext(client_ids=tuple(range(3, 10)), round=1))
    assert res.raw["has_history"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert float(res.scores[1]) < 0.01
    assert res.scores[[0, 2, 3, 4, 5, 6]].tolist() == [1.0] * 6


def test_history_is_an_ema_of_unit_updates() -> None:
    sig = TemporalSignal(decay=0.5, sketch_dim=None)
    a = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 5.0]], dtype=torch.float64)
    sig(a)
    res = sig(b)
    assert float(res.raw["consistency"][0]) == pytest.approx(0.0)
    torch.testing.assert_close(
        sig.state_dict()["history"], torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    )


def test_global_drift_does_not_flag_everyone() -> None:
    """All clients rotate together: consistency is judged against the round's median."""
    g = torch.Generator().manual_seed(2)
    common = torch.randn(50, generator=g, dtype=torch.float64)
    sig = TemporalSignal()
    for r in range(5):
        twist = torch.randn(50, generator=g, dtype=torch.float64)
        direction = common + 1.2 * r * twist  # a large shared rotation each round
        u = direction + 0.3 * torch.randn(12, 50, generator=g, dtype=torch.float64)
        res = sig(u, RoundContext(round=r))
    assert float(res.raw["consistency"].median()) < 0.9
    assert float(res.scores.min()) > 0.5


def test_temporal_state_round_trip(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(6))
    a = TemporalSignal()
    for u, ctx in rounds[:5]:
        a(u, ctx)
    state = a.state_dict()
    b = TemporalSignal()
    b.load_state_dict(state)
    state["history"].zero_()  # the exported state is a copy
    u, ctx = rounds[5]
    ra, rb = a(u, ctx), b(u, ctx)
    assert torch.equal(ra.scores, rb.scores)
    assert torch.equal(ra.raw["consistency"], rb.raw["consistency"])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["client_ids"] == sb["client_ids"]
    assert torch.equal(sa["history"], sb["history"])
    a.reset()
    assert a.state_dict()["client_ids"] == []
    assert a(u, ctx).raw["has_history"].sum() == 0


def test_temporal_load_rejects_bad_state() -> None:
    sig = TemporalSignal()
    with pytest.raises(ValueError, match="keys"):
        sig.load_state_dict({"history": torch.zeros(1, 2)})
    with pytest.raises(ValueError):
        sig.load_state_dict({"client_ids": [1, 1], "history": torch.zeros(2, 3), "dim": 3})
    with pytest.raises(ValueError):
        sig.load_state_dict({"client_ids": [1], "history": torch.zeros(1, 3), "dim": 4})


def test_temporal_uses_a_sketch_for_large_models() -> None:
    g = torch.Generator().manual_seed(3)
    d = 20_000
    base = torch.randn(8, d, generator=g)
    sig = TemporalSignal(sketch_dim=256)
    for r in range(3):
        res = sig(base + 0.5 * torch.randn(8, d, generator=g), RoundContext(round=r))
    assert sig.state_dict()["history"].shape == (8, 256)
    flipped = base + 0.5 * torch.randn(8, d, generator=g)
    flipped[0] = -flipped[0]
    res = sig(flipped, RoundContext(round=3))
    assert float(res.scores[0]) < 0.01
    assert float(res.scores[1:].min()) > 0.9


def test_temporal_rejects_a_change_of_width_and_repeated_ids() -> None:
    sig = TemporalSignal()
    sig(torch.randn(3, 5))
    with pytest.raises(InvalidUpdateError, match="reset"):
        sig(torch.randn(3, 6))
    with pytest.raises(InvalidUpdateError, match="repeated"):
        TemporalSignal()(torch.randn(2, 5), RoundContext(client_ids=(4, 4)))


def test_temporal_is_deterministic_and_does_not_mutate(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(3))
    before = [u.clone() for u, _ in rounds]
    a, b = TemporalSignal(), TemporalSignal()
    for (u, ctx), orig in zip(rounds, before, strict=True):
        assert torch.equal(a(u, ctx).scores, b(u.double(), ctx).scores)
        assert torch.equal(u, orig)


# ---------------------------------------------------------------------------------- community


def test_identical_updates_form_a_community(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    sybil = u[0] * 1.5
    u[:4] = sybil  # four clients send one crafted update
    res = CommunitySignal()(u, ctx)
    assert res.raw["group_size"][:4].tolist() == [4.0] * 4
    assert res.scores[:4].tolist() == pytest.approx([0.2 * 2 / 3] * 4)
    assert res.scores[4:].tolist() == [1.0] * 16
    assert res.raw[FAILED].tolist() == [True] * 4 + [False] * 16  # members fail outright


def test_diverse_honest_updates_are_not_a_community(honest_rounds: Rounds) -> None:
    sig = CommunitySignal()
    worst = -1.0
    for scheme in ("iid", "dirichlet"):
        for u, ctx in honest_rounds(12, scheme=scheme):
            res = sig(u, ctx)
            assert res.scores.tolist() == [1.0] * 20
            worst = max(worst, float(res.raw["max_cosine"].max()))
    print(f"community: largest honest pairwise cosine over 24 rounds: {worst:.3f}")
    assert worst < sig.tau


def test_noisy_copies_still_form_a_community() -> None:
    g = torch.Generator().manual_seed(4)
    base = torch.randn(1, 300, generator=g)
    honest = torch.randn(10, 300, generator=g)
    copies = base + 0.01 * base.norm() / 300**0.5 * torch.randn(5, 300, generator=g)
    res = CommunitySignal()(torch.cat([copies, honest]))
    assert res.raw["group_size"][:5].tolist() == [5.0] * 5
    assert float(res.scores[:5].max()) <= 0.1
    assert res.scores[5:].tolist() == [1.0] * 10


def test_a_pair_is_not_a_community_and_group_size_lowers_the_score() -> None:
    g = torch.Generator().manual_seed(5)
    u = torch.randn(12, 30, generator=g)
    u[1] = u[0]
    res = CommunitySignal()(u)
    assert res.scores.tolist() == [1.0] * 12
    assert float(res.raw["group_size"][0]) == 2.0
    u[2:10] = u[0]
    res = CommunitySignal()(u)
    assert float(res.scores[0]) == pytest.approx(0.2 * 2 / 9)


def test_zero_updates_are_identical_to_each_other() -> None:
    g = torch.Generator().manual_seed(6)
    u = torch.randn(8, 10, generator=g)
    u[:3] = 0.0
    cos = pairwise_cosines(u.double())
    assert cos[0, 1] == 1.0 and cos[0, 5] == 0.0
    res = CommunitySignal()(u)
    assert res.raw["group_size"][:3].tolist() == [3.0] * 3
    assert float(res.scores[:3].max()) < 0.3


def test_community_sketch_agrees_with_exact() -> None:
    g = torch.Generator().manual_seed(7)
    d = 50_000
    base = torch.randn(d, generator=g)
    honest = torch.randn(30, d, generator=g) + 0.3 * base
    near = base + 0.05 * torch.randn(4, d, generator=g)  # pairwise cosine ≈ 0.995
    u = torch.cat([near, honest])
    exact = CommunitySignal(sketch_dim=None)(u)
    sketched = CommunitySignal()(u)  # d > 4·256: runs on the count sketch
    assert torch.equal(exact.raw["group_size"], sketched.raw["group_size"])
    assert torch.equal(exact.scores, sketched.scores)
    err = (exact.raw["max_cosine"] - sketched.raw["max_cosine"]).abs()
    assert float(err[:4].max()) < 2e-3  # near cos = 1 the sketch is very accurate
    assert float(err.max()) < 0.25


def test_community_float32_float64_and_no_mutation() -> None:
    g = torch.Generator().manual_seed(8)
    u = torch.randn(10, 20, generator=g)
    u[3:6] = u[0]
    before = u.clone()
    a, b = CommunitySignal()(u), CommunitySignal()(u.double())
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(u, before)


# -------------------------------------------------------------------------------------- TCDM


def test_tcdm_product_and_mean(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(3))
    prod, mean = TCDM(), TCDM(combine="mean", temporal_weight=0.25)
    for u, ctx in rounds:
        if ctx.round == 2:
            u[0] = -u[0]  # a switcher …
            u[5:9] = u[4]  # … and a sybil group of five
        rp, rm = prod(u, ctx), mean(u, ctx)
    for key in (
        "temporal",
        "community",
        "consistency",
        "consistency_z",
        "has_history",
        "group_size",
        "max_cosine",
        FAILED,
    ):
        assert key in rp.raw
    torch.testing.assert_close(
        rp.scores, rp.raw["temporal"] * rp.raw["innovation_score"] * rp.raw["community"]
    )
    temporal = rm.raw["temporal"] * rm.raw["innovation_score"]
    torch.testing.assert_close(rm.scores, 0.25 * temporal + 0.75 * rm.raw["community"])
    assert float(rp.scores[0]) < 0.01
    assert float(rp.scores[4:9].max()) < 0.2
    assert float(rp.scores[torch.tensor([1, 2, 3, *range(9, 20)])].min()) > 0.9


def test_tcdm_accepts_dicts_and_round_trips_state(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(4))
    a = TCDM(temporal={"decay": 0.5}, community={"tau": 0.995})
    assert a.temporal.decay == 0.5 and a.community.tau == 0.995
    for u, ctx in rounds[:3]:
        a(u, ctx)
    b = TCDM(temporal={"decay": 0.5}, community={"tau": 0.995})
    b.load_state_dict(a.state_dict())
    u, ctx = rounds[3]
    assert torch.equal(a(u, ctx).scores, b(u, ctx).scores)
    a.reset()
    assert a.state_dict()["temporal"]["client_ids"] == []
    with pytest.raises(ValueError):
        a.load_state_dict({})


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (TemporalSignal, {"decay": 1.0}),
        (TemporalSignal, {"anomaly_decay": 1.0}),
        (TemporalSignal, {"anomaly_rounds": -1}),
        (TemporalSignal, {"z0": -1.0}),
        (TemporalSignal, {"scale_floor": 0.0}),
        (TemporalSignal, {"neutral": 1.5}),
        (TemporalSignal, {"sketch_dim": 0}),
        (CommunitySignal, {"tau": 0.0}),
        (CommunitySignal, {"tau": 1.5}),
        (CommunitySignal, {"min_group": 1}),
        (CommunitySignal, {"member_score": 2.0}),
        (TCDM, {"combine": "max"}),
        (TCDM, {"temporal_weight": 2.0}),
        (TCDM, {"temporal": 3}),
        (TCDM, {"temporal": {"decay": -0.1}}),
    ],
)
def test_config_errors(cls: type, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        cls(**kwargs)


def test_community_is_stateless() -> None:
    sig = CommunitySignal()
    assert sig.state_dict() == {}
    sig.load_state_dict({})
    sig.reset()
    with pytest.raises(ValueError):
        sig.load_state_dict({"x": 1})


def test_rows_in_order_are_read_as_a_view_and_others_gathered() -> None:
    table = torch.arange(12.0).reshape(6, 2)
    span = take_rows(table, torch.tensor([2, 3, 4]))
    assert span.data_ptr() == table[2].data_ptr()  # a view: no copy
    torch.testing.assert_close(span, table[2:5])
    picked = take_rows(table, torch.tensor([4, 1]))
    torch.testing.assert_close(picked, torch.tensor([[8.0, 9.0], [2.0, 3.0]]))
    gap = take_rows(table, torch.tensor([0, 2, 1]))  # same first and last span, not in order
    torch.testing.assert_close(gap, table[[0, 2, 1]])
    put_rows(table, torch.tensor([1, 2]), torch.zeros(2, 2))
    put_rows(table, torch.tensor([5, 0]), torch.ones(2, 2))
    assert table[:3].tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert table[5].tolist() == [1.0, 1.0]
    assert take_rows(table, torch.zeros(0, dtype=torch.long)).shape == (0, 2)


def test_temporal_history_is_the_same_whatever_the_order_of_the_clients() -> None:
    g = torch.Generator().manual_seed(0)
    rounds = [torch.randn(5, 40, generator=g, dtype=torch.float64) for _ in range(3)]
    ordered, shuffled = TemporalSignal(sketch_dim=None), TemporalSignal(sketch_dim=None)
    order = [3, 0, 4, 1, 2]
    for u in rounds:
        a = ordered(u, RoundContext(client_ids=tuple(range(5))))
        b = shuffled(u[order], RoundContext(client_ids=tuple(order)))
        torch.testing.assert_close(b.raw["consistency"], a.raw["consistency"][order])


def _sketched_rounds(n: int = 6, d: int = 200, rounds: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    return [base + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(rounds)]


def test_histories_of_an_earlier_sketch_layout_are_dropped_on_load() -> None:
    temporal = TemporalSignal(sketch_dim=16)
    innovation = InnovationSignal(sketch_dim=16)
    for u in _sketched_rounds():
        temporal(u)
        innovation(u)
    t_state, i_state = temporal.state_dict(), innovation.state_dict()
    assert t_state["sketch_layout"] == i_state["sketch_layout"] == "strided"
    same_t, same_i = TemporalSignal(sketch_dim=16), InnovationSignal(sketch_dim=16)
    same_t.load_state_dict(t_state)
    same_i.load_state_dict(i_state)
    torch.testing.assert_close(same_t.state_dict()["history"], t_state["history"])
    assert same_i.state_dict()["last_round"].tolist() == i_state["last_round"].tolist()
    # Saved before the tag (contiguous runs): sketched vectors are dropped, the rest is kept.
    old_t = TemporalSignal(sketch_dim=16)
    old_t.load_state_dict({k: v for k, v in t_state.items() if k != "sketch_layout"})
    assert old_t.state_dict()["client_ids"] == []
    old_i = InnovationSignal(sketch_dim=16)
    old_i.load_state_dict({k: v for k, v in i_state.items() if k != "sketch_layout"})
    kept = old_i.state_dict()
    assert kept["last_round"].tolist() == [-1] * 6 and float(kept["deviation"].abs().sum()) == 0
    torch.testing.assert_close(kept["mean"], i_state["mean"])
    assert kept["client_ids"] == i_state["client_ids"]
    nxt = _sketched_rounds(rounds=4)[-1]
    assert bool(torch.isnan(old_i(nxt).raw["innovation"]).all())  # no observation this round
    # Exact rows (no sketch) do not depend on the layout.
    exact = TemporalSignal(sketch_dim=None)
    exact(_sketched_rounds(rounds=1)[0])
    state = {k: v for k, v in exact.state_dict().items() if k != "sketch_layout"}
    again = TemporalSignal(sketch_dim=None)
    again.load_state_dict(state)
    assert again.state_dict()["client_ids"] == state["client_ids"]


def test_community_of_many_clients_reads_the_folded_sketch() -> None:
    """From 256 clients the community signal's cosines come from the sketch folded to 256
    buckets: a planted group of five near-copies (cosine about 0.9975) is found whole and alone,
    and its members' largest cosines are within a thousandth of the exact ones."""
    g = torch.Generator().manual_seed(21)
    n, d = 300, 20_000
    u = torch.randn(n, d, generator=g)
    base = torch.randn(d, generator=g)
    u[:5] = base + 0.05 * torch.randn(5, d, generator=g)
    res = CommunitySignal()(u)
    size = res.raw["group_size"]
    assert size[:5].tolist() == [5.0] * 5 and bool((size[5:] == 1).all())
    assert bool((res.scores[:5] < 1).all()) and bool((res.scores[5:] == 1).all())
    unit = u.double() / torch.linalg.vector_norm(u.double(), dim=1, keepdim=True)
    exact = unit[:5] @ unit[:5].T
    exact.fill_diagonal_(-1.0)
    top = exact.max(dim=1).values
    assert float((res.raw["max_cosine"][:5] - top).abs().max()) < 1e-3
