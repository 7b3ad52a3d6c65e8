"""The innovation test of TCDM: noise added every round is caught, honest clients and single
switches are not."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from matl.aggregation.base import RoundContext
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust import TCDM, Signal
from matl.trust.innovation import InnovationSignal

Rounds = Callable[..., Iterator[tuple[torch.Tensor, RoundContext]]]

pytestmark = pytest.mark.usefixtures("single_thread")


def _add_noise(u: torch.Tensor, rows: slice, g: torch.Generator, sigma: float = 1.0) -> None:
    """The additive Gaussian attack: own update plus noise on the scale of the honest spread."""
    honest = torch.cat([u[: rows.start], u[rows.stop :]])
    spread = honest.std(dim=0)
    noise = torch.randn(u[rows].shape, generator=g, dtype=u.dtype)
    u[rows] = u[rows] + sigma * spread * noise


def test_is_a_signal() -> None:
    assert isinstance(InnovationSignal(), Signal)
    assert InnovationSignal().name == "innovation"


@pytest.mark.parametrize(("scheme", "model"), [("dirichlet", "mlp"), ("iid", "logreg")])
@pytest.mark.parametrize(("sigma", "threshold"), [(2.0, 1.5), (1.0, 0.8)])
def test_added_noise_is_caught_and_honest_clients_are_not(
    honest_rounds: Rounds, scheme: str, model: str, sigma: float, threshold: float
) -> None:
    """Five of 20 clients add noise every round. The default threshold (1.5, calibrated on
    MNIST, where honest running values reach 1.5) catches σ = 2 here; the synthetic task's honest
    deviations are more persistent (running values ≤ 0.6), and a threshold of 0.8 set for it
    catches σ = 1 too."""
    sig = InnovationSignal(threshold=threshold)
    g = torch.Generator().manual_seed(3)
    for u, ctx in honest_rounds(12, scheme=scheme, model=model):
        _add_noise(u, slice(0, 5), g, sigma)
        res = sig(u, ctx)
        if ctx.round == 0:  # no innovation yet (min_observations = 1): neutral
            assert res.scores.tolist() == [1.0] * 20
        else:  # caught from the first innovation on
            assert float(res.scores[:5].max()) < 0.05, ctx.round
        # At the default threshold no honest client is ever penalised; at the tight 0.8 one
        # honest client's first innovation alone scored 0.27 in round 1 (IID, logreg), and the
        # running values keep every honest client clear from round 2 on.
        if threshold == 1.5 or ctx.round >= 2:
            assert float(res.scores[5:].min()) == 1.0, ctx.round
    running = res.raw["running_innovation"]
    assert float(running[:5].min()) > threshold + 2 * sig.width  # each observation counts <= 4T/3
    assert float(running[5:].max()) < threshold - 2 * sig.width


def test_the_centre_of_a_row_subsample_beyond_center_rows(honest_rounds: Rounds) -> None:
    """Beyond ``center_rows`` clients the centre is the median of a subsample drawn afresh each
    round: noise is still caught and honest clients still pass; with ``center_rows`` at least n
    nothing changes. A subsample of 11 of 20 is a coarse centre: its change from round to round
    raises the honest running values here from about 0.36 to 0.57 (this task's honest
    deviations persist, so their innovations are small; 255 of 1000 rows add about 0.08 of a
    deviation each round instead of 0.38)."""
    whole = InnovationSignal(center_rows=None)
    same = InnovationSignal(center_rows=20)
    sampled = InnovationSignal(center_rows=11)
    g = torch.Generator().manual_seed(3)
    for u, ctx in honest_rounds(12, scheme="dirichlet", model="mlp"):
        _add_noise(u, slice(0, 5), g, 2.0)
        a, b, c = whole(u, ctx), same(u, ctx), sampled(u, ctx)
        assert torch.equal(a.scores, b.scores)
        if ctx.round > 0:
            assert float(c.scores[:5].max()) < 0.05 and float(c.scores[5:].min()) == 1.0
    full, part = a.raw["running_innovation"], c.raw["running_innovation"]
    assert bool((part[5:] > full[5:]).all())  # the centre's own change adds to every innovation
    assert float(part[5:].max()) < sampled.threshold - 2 * sampled.width
    with pytest.raises(ConfigError, match="center_rows"):
        InnovationSignal(center_rows=0)


def test_a_single_switch_does_not_fail_a_settled_client(honest_rounds: Rounds) -> None:
    """Client 0 sends -5 times its update in round 8 only: two large innovations (there and
    back), each above the clip 2T, leave its running value below the threshold. Unclipped, the
    same two values would put it above (0.8·(0.8·R + 0.2·x₈) + 0.2·x₉ > T)."""
    sig = InnovationSignal()
    ratios, running = [], []
    for u, ctx in honest_rounds(12, scheme="dirichlet", model="mlp"):
        if ctx.round == 8:
            u[0] = -5 * u[0]
        res = sig(u, ctx)
        assert float(res.scores.min()) == 1.0, ctx.round
        ratios.append(float(res.raw["innovation"][0]))
        running.append(float(res.raw["running_innovation"][0]))
    assert min(ratios[8], ratios[9]) > 2 * sig.threshold  # both jumps were clipped
    unclipped = 0.8 * (0.8 * running[7] + 0.2 * ratios[8]) + 0.2 * ratios[9]
    assert unclipped > sig.threshold


def test_a_low_innovation_minority_does_not_frame_honest_clients(honest_rounds: Rounds) -> None:
    """9 of 20 clients send the same vector every round (ALIE/IPM-like: tiny deviation, tiny
    innovation). They form a tight group and stay out of the reference, the median deviation of
    the honest clients."""
    sig = InnovationSignal()
    for u, ctx in honest_rounds(12, scheme="dirichlet", model="mlp"):
        u[:9] = u[9:].mean(dim=0)
        res = sig(u, ctx)
        assert float(res.scores[9:].min()) == 1.0, ctx.round
        # a tight group is one voice: its members stay out of the reference
        assert res.raw["excluded_from_reference"].tolist() == [1.0] * 9 + [0.0] * 11


def test_only_consecutive_participations_are_compared() -> None:
    g = torch.Generator().manual_seed(0)
    sig = InnovationSignal(min_observations=1)
    u = torch.randn(6, 16, generator=g, dtype=torch.float64)
    sig(u, RoundContext(client_ids=(0, 1, 2, 3, 4, 5), round=0))
    # client 5 skips round 1
    r1 = sig(u[:5] + 0.1, RoundContext(client_ids=(0, 1, 2, 3, 4), round=1))
    assert bool(torch.isfinite(r1.raw["innovation"]).all())
    r2 = sig(u + 0.2, RoundContext(client_ids=(0, 1, 2, 3, 4, 5), round=2))
    ratio = r2.raw["innovation"]
    assert bool(torch.isfinite(ratio[:5]).all()) and bool(torch.isnan(ratio[5]))
    assert float(r2.scores[5]) == 1.0  # not observed yet: neutral
    assert float(r2.raw["running_innovation"][5]) != float(r2.raw["running_innovation"][5])


def test_without_context_calls_are_rounds() -> None:
    g = torch.Generator().manual_seed(1)
    sig = InnovationSignal(min_observations=1)
    u = torch.randn(4, 8, generator=g)
    assert bool(torch.isnan(sig(u).raw["innovation"]).all())
    assert bool(torch.isfinite(sig(u * 1.1).raw["innovation"]).all())


def test_running_value_is_the_bias_corrected_average() -> None:
    """Hand-checked: deviations from the coordinate-wise median in 1-D, without the rescaling of
    the previous deviation (checked below)."""
    sig = InnovationSignal(memory=0.5, min_observations=1, sketch_dim=None, rescale=False)
    ids = RoundContext(client_ids=(0, 1, 2))
    rounds = [[0.0, 1.0, 2.0], [0.0, 1.0, 3.0], [0.0, 1.0, 2.0]]
    out = [sig(torch.tensor(r, dtype=torch.float64).unsqueeze(1), ids) for r in rounds]
    # round 1: centre 1, deviations (-1, 0, 2), median |δ| 1; previous (-1, 0, 1): x = (0, 0, 1)
    torch.testing.assert_close(
        out[1].raw["innovation"], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    )
    # round 2: deviations (-1, 0, 1), median 1: x = (0, 0, 1) again; client 2's running value
    # (memory 0.5): (0.5 · 0.5 · 1 + 0.5 · 1) / (0.5 · 0.5 + 0.5) = 1
    torch.testing.assert_close(
        out[2].raw["running_innovation"], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    )


def test_the_previous_deviation_is_rescaled_to_the_round() -> None:
    """Hand-checked in 1-D (the centre of an even count is the lower middle value, as
    :meth:`torch.Tensor.median` takes it). Round 0 (0, 1, 2, 5): centre 1, deviations (-1, 0, 1,
    4); round 1 (0, 1, 2, 9): deviations (-1, 0, 1, 8). The norm ratios of the clients with a
    previous deviation are (1, 1, 2): the scale change is their median, 1, so only client 3
    moved, by 4 against the median deviation 1. Round 2 halves every update: deviations half of
    round 1's, every ratio 0.5, scale change 0.5, and nobody moved. Without the rescaling the
    same halving is a change of half of each deviation, (0.5, 0, 0.5, 4), against the median
    deviation of the clients left in the reference (client 3, over the threshold since round 1,
    is out), 0.5."""
    ids = RoundContext(client_ids=(0, 1, 2, 3))
    rounds = [[0.0, 1.0, 2.0, 5.0], [0.0, 1.0, 2.0, 9.0], [0.0, 0.5, 1.0, 4.5]]
    expected = {True: [0.0, 0.0, 0.0, 0.0], False: [1.0, 0.0, 1.0, 8.0]}
    for rescale in (True, False):
        sig = InnovationSignal(
            min_observations=1, sketch_dim=None, rescale=rescale, early_margin=0.0
        )
        out = [sig(torch.tensor(r, dtype=torch.float64).unsqueeze(1), ids) for r in rounds]
        torch.testing.assert_close(
            out[1].raw["innovation"], torch.tensor([0.0, 0.0, 0.0, 4.0], dtype=torch.float64)
        )
        assert out[2].raw["excluded_from_reference"].tolist() == [0.0, 0.0, 0.0, 1.0]
        torch.testing.assert_close(
            out[2].raw["innovation"], torch.tensor(expected[rescale], dtype=torch.float64)
        )
    # The reference's exclusions are judged on the unscaled change unless rescale_reference:
    # client 0's observations with everyone in the reference are 0 and then 1 (0.5 over the
    # median deviation 0.5), so its running value is (0.8 · 0.2 · 0 + 0.2 · 1) / 0.36 = 5/9;
    # rescaled, 0 and 0.
    for reference, running in ((False, 5 / 9), (True, 0.0)):
        sig = InnovationSignal(
            min_observations=1, sketch_dim=None, rescale=True, rescale_reference=reference
        )
        for r in rounds:
            sig(torch.tensor(r, dtype=torch.float64).unsqueeze(1), ids)
        state = sig.state_dict()
        assert float(state["mean_all"][0] / state["weight"][0]) == pytest.approx(running)
    for flag in ("rescale", "rescale_reference", "quorum_rescaled"):
        with pytest.raises(ConfigError, match=flag):
            InnovationSignal(**{flag: 1})  # type: ignore[arg-type]
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="quorum_level"):
            InnovationSignal(quorum_level=bad)


def test_the_scale_change_reads_only_clients_present_in_both_rounds() -> None:
    """1-D, hand-checked. Client 3 takes part in round 0 (deviation 5), skips round 1 and comes
    back in round 2 at deviation 400, with a new client 4 at -400. Round 2's followers are
    clients 0-2, deviations (-2, 0, 2) -> (-1, 0, 2): norm ratios 0.5 and 1 (client 1's previous
    deviation is 0, so it has none), scale change 0.75, changes (0.5, 0, 0.5) over the median
    deviation 2. Had client 3 entered the scale change (ratio 80), it would be 1 and client 0's
    change 1."""
    sig = InnovationSignal(min_observations=1, sketch_dim=None, rescale=True)
    rows = [(-2.0, 0.0, 2.0, 5.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 2.0, 400.0, -400.0)]
    for values in rows:
        ids = RoundContext(client_ids=tuple(range(len(values))))
        out = sig(torch.tensor(values, dtype=torch.float64).unsqueeze(1), ids)
    ratio = out.raw["innovation"]
    torch.testing.assert_close(ratio[:3], torch.tensor([0.25, 0.0, 0.25], dtype=torch.float64))
    assert bool(torch.isnan(ratio[3:]).all())


def test_state_round_trip_reset_and_bad_states(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(6, scheme="dirichlet", model="mlp"))
    a = InnovationSignal(min_observations=1)
    for u, ctx in rounds[:5]:
        a(u, ctx)
    b = InnovationSignal(min_observations=1)
    b.load_state_dict(a.state_dict())
    u, ctx = rounds[5]
    ra, rb = a(u, ctx), b(u, ctx)
    assert torch.equal(ra.scores, rb.scores)
    assert torch.equal(ra.raw["running_innovation"], rb.raw["running_innovation"])
    good = a.state_dict()
    for key, value in (
        ("mean", -good["mean"]),
        ("weight", good["weight"] * 3),
        ("deviation", good["deviation"][:, :3] if good["dim"] else good["deviation"]),
        ("count", good["count"][:2]),
        ("deviation", good["deviation"] * float("nan")),
    ):
        with pytest.raises(ValueError):
            InnovationSignal().load_state_dict({**good, key: value})
    with pytest.raises(ValueError):
        InnovationSignal().load_state_dict({k: v for k, v in good.items() if k != "round"})
    a.reset()
    assert a.state_dict()["client_ids"] == [] and a.state_dict()["dim"] is None


def test_rejects_nan_a_change_of_width_and_repeated_ids() -> None:
    sig = InnovationSignal()
    u = torch.zeros(3, 8)
    sig(u)
    with pytest.raises(InvalidUpdateError):
        sig(torch.zeros(3, 9))
    bad = torch.zeros(3, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(InvalidUpdateError):
        sig(bad)
    with pytest.raises(InvalidUpdateError):
        sig(u, RoundContext(client_ids=(1, 1, 2)))


def test_zero_updates_have_no_reference() -> None:
    sig = InnovationSignal(min_observations=1)
    for _ in range(3):
        res = sig(torch.zeros(4, 8))
    assert res.scores.tolist() == [1.0] * 4
    assert bool(torch.isnan(res.raw["innovation"]).all())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"width": -1.0},
        {"memory": 1.0},
        {"min_observations": 0},
        {"neutral": 2.0},
        {"sketch_dim": 0},
    ],
)
def test_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        InnovationSignal(**kwargs)  # type: ignore[arg-type]


def test_tcdm_multiplies_the_innovation_into_the_temporal_part(honest_rounds: Rounds) -> None:
    g = torch.Generator().manual_seed(5)
    tcdm, without = TCDM(), TCDM(innovation=None)
    for u, ctx in honest_rounds(8, scheme="dirichlet", model="mlp"):
        _add_noise(u, slice(0, 3), g, sigma=2.0)
        res, res_without = tcdm(u, ctx), without(u.clone(), ctx)
    torch.testing.assert_close(
        res.scores, res.raw["temporal"] * res.raw["innovation_score"] * res.raw["community"]
    )
    assert float(res.scores[:3].max()) < 0.05 and float(res.scores[3:].min()) > 0.9
    assert "innovation_score" not in res_without.raw
    torch.testing.assert_close(
        res_without.scores, res_without.raw["temporal"] * res_without.raw["community"]
    )
    assert set(tcdm.state_dict()) == {"temporal", "innovation"}
    assert set(without.state_dict()) == {"temporal"}


def test_tcdm_loads_a_state_saved_before_the_innovation_test(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(4))
    old = TCDM(innovation=None)
    for u, ctx in rounds[:3]:
        old(u, ctx)
    new = TCDM()
    new.load_state_dict(old.state_dict())
    assert new.state_dict()["innovation"]["client_ids"] == []
    assert new.temporal.state_dict()["client_ids"] == old.temporal.state_dict()["client_ids"]
    with pytest.raises(ValueError):
        new.load_state_dict({"temporal": old.temporal.state_dict(), "x": {}})
    with pytest.raises(ConfigError):
        TCDM(innovation=3)  # type: ignore[arg-type]
    assert TCDM(innovation={"threshold": 2.0}).innovation.threshold == 2.0  # type: ignore[union-attr]


@pytest.mark.parametrize("rescale", [False, True])
def test_the_reference_leaves_out_clients_over_the_threshold(
    honest_rounds: Rounds, rescale: bool
) -> None:
    """9 of 20 clients add noise. Once they are over the threshold they leave the reference (the
    median deviation over the others), which is checked by hand on the exact rows, with and
    without the rescaling of the previous deviation."""
    sig = InnovationSignal(rescale=rescale)
    g = torch.Generator().manual_seed(7)
    previous = None
    for u, ctx in honest_rounds(10, scheme="dirichlet", model="mlp"):
        _add_noise(u, slice(0, 9), g, sigma=2.0)
        res = sig(u, ctx)
        x = u.to(torch.float64)
        deviation = x - x.median(dim=0).values
        excluded = res.raw["excluded_from_reference"].bool()
        if ctx.round >= 5:
            assert excluded.tolist() == [True] * 9 + [False] * 11, ctx.round
        if previous is not None:
            norms = torch.linalg.vector_norm(deviation, dim=1)
            reference = float(torch.quantile(norms[~excluded], 0.5))
            # every client follows and none is in a tight group: all enter the scale change
            before = torch.linalg.vector_norm(previous, dim=1)
            scale = float(torch.quantile(norms / before, 0.5)) if rescale else 1.0
            change = deviation - scale * previous
            expected = torch.linalg.vector_norm(change, dim=1) / reference
            torch.testing.assert_close(res.raw["innovation"], expected)
        previous = deviation
    assert float(res.scores[:9].max()) < 0.05 and float(res.scores[9:].min()) == 1.0


def test_the_reference_keeps_everyone_when_fewer_than_three_would_remain() -> None:
    g = torch.Generator().manual_seed(2)
    sig = InnovationSignal(min_observations=1, threshold=0.01, sketch_dim=None)
    base = torch.randn(4, 8, generator=g, dtype=torch.float64)
    for _ in range(4):
        res = sig(base + torch.randn(4, 8, generator=g, dtype=torch.float64))
    assert res.raw["excluded_from_reference"].tolist() == [0.0] * 4


#: Six clients around the centre 0 (coordinate-wise medians 0 with client 0 at 0 or at (100, 0)),
#: median deviation norm 1, no three of them parallel.
_REST = [[0.0, 1.0], [0.0, -1.0], [-1.0, 0.0], [0.6, 0.8], [-0.8, 0.6], [1.5, -1.5]]


def _settled_state(running: float) -> dict[str, object]:
    """Seven clients with 2-D deviations from round 9 (:data:`_REST` and client 0 at the centre),
    ten observations each; client 0's running value is ``running``, the others' 1.0."""
    weight = torch.full((7,), 0.99, dtype=torch.float64)
    mean = weight.clone()
    mean[0] = running * 0.99
    return {
        "client_ids": list(range(7)),
        "deviation": torch.tensor([[0.0, 0.0], *_REST], dtype=torch.float64),
        "last_round": torch.full((7,), 9, dtype=torch.int64),
        "mean": mean,
        "mean_all": mean.clone(),
        "weight": weight,
        "count": torch.full((7,), 10, dtype=torch.int64),
        "dim": 2,
        "round": 10,
    }


@pytest.mark.parametrize(("running", "passes"), [(1.2, True), (1.3, False)])
def test_a_one_off_excursion_from_a_high_settled_value(running: float, passes: bool) -> None:
    """Client 0 jumps far away and back (two observations far above the clip 4T/3 = 2). From a
    settled 1.2 its running value peaks at 0.64·1.2 + 0.72 = 1.49 < T (bias correction aside), so
    it is never penalised; from 1.3 it reaches 1.55 and is."""
    sig = InnovationSignal(sketch_dim=None)
    sig.load_state_dict(_settled_state(running))
    scores = []
    for value in (100.0, 0.0):
        res = sig(torch.tensor([[value, 0.0], *_REST], dtype=torch.float64))
        assert float(res.raw["innovation"][0]) == pytest.approx(100.0)
        scores.append(float(res.scores[0]))
    peak = float(res.raw["running_innovation"][0])
    assert peak == pytest.approx((0.8 * (0.8 * running * 0.99 + 0.4) + 0.4) / 0.9936)
    assert (min(scores) == 1.0) is passes


def test_bad_states_are_rejected_before_they_can_make_nan_or_zero_scores() -> None:
    good = _settled_state(1.0)
    InnovationSignal().load_state_dict(good)
    weight = good["weight"].clone()  # type: ignore[union-attr]
    weight[0] = 0.0  # observed ten times but no weight: the running value would be 0/0
    tiny = good["weight"].clone()  # type: ignore[union-attr]
    tiny[0] = 1e-12  # a running value of 1e12
    unseen = good["count"].clone()  # type: ignore[union-attr]
    unseen[1] = 0  # never observed but with weight
    for bad in (
        {"weight": weight},
        {"weight": tiny},
        {"count": unseen},
        {"round": 9},  # not after the last participation
        {"round": 10.5},
        {"round": True},
    ):
        with pytest.raises(ValueError):
            InnovationSignal().load_state_dict({**good, **bad})


def test_a_round_without_reference_stores_nothing_to_compare_with(honest_rounds: Rounds) -> None:
    """A one-client round has no median deviation (it is 0): the next round does not compare
    client 0 with that round's meaningless deviation."""
    sig = InnovationSignal(min_observations=1)
    rounds = list(honest_rounds(5, scheme="dirichlet", model="mlp"))
    for u, ctx in rounds[:3]:
        sig(u, ctx)
    u, ctx = rounds[3]
    lone = sig(u[:1], RoundContext(client_ids=(0,)))
    assert bool(torch.isnan(lone.raw["innovation"]).all())
    u, ctx = rounds[4]
    res = sig(u, ctx)
    assert bool(torch.isnan(res.raw["innovation"][0]))


def test_tcdm_load_is_all_or_nothing(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(3))
    a = TCDM()
    for u, ctx in rounds:
        a(u, ctx)
    state = a.state_dict()
    broken = {**state, "innovation": {**state["innovation"], "round": -5}}
    b = TCDM()
    with pytest.raises(ValueError):
        b.load_state_dict(broken)
    assert b.state_dict()["temporal"]["client_ids"] == []  # nothing was replaced
    without = TCDM(innovation=None)
    without.load_state_dict(state)  # the innovation part is ignored
    assert without.state_dict()["temporal"]["client_ids"] == state["temporal"]["client_ids"]


@pytest.mark.parametrize(("scored", "everyone", "excluded"), [(1.8, 1.0, False), (1.0, 1.8, True)])
def test_exclusion_is_decided_on_the_running_value_with_everyone_in_the_reference(
    scored: float, everyone: float, excluded: bool
) -> None:
    """The scored running value may sit over T only because others were left out; what decides
    the exclusion is the running value with every client in the reference, so exclusions cannot
    feed on themselves."""
    state = _settled_state(scored)
    mean_all = state["mean"].clone()  # type: ignore[union-attr]
    mean_all[0] = everyone * 0.99
    sig = InnovationSignal(sketch_dim=None)
    sig.load_state_dict({**state, "mean_all": mean_all})
    res = sig(torch.tensor([[0.0, 0.0], *_REST], dtype=torch.float64))
    assert bool(res.raw["excluded_from_reference"][0]) is excluded
    assert float(res.raw["excluded_from_reference"][1:].sum()) == 0.0


def test_states_round_trip_when_the_clip_is_not_exact_in_binary(honest_rounds: Rounds) -> None:
    """With T = 1.4 the clip 4T/3 is not exact: clipped observations may sit an ulp above
    clip · weight, and the saved state must still load."""
    g = torch.Generator().manual_seed(11)
    a = InnovationSignal(threshold=1.4)
    for u, ctx in honest_rounds(8, scheme="dirichlet", model="mlp"):
        _add_noise(u, slice(0, 5), g, sigma=3.0)
        a(u, ctx)
    b = InnovationSignal(threshold=1.4)
    b.load_state_dict(a.state_dict())
    without = {k: v for k, v in a.state_dict().items() if k != "mean_all"}
    c = InnovationSignal(threshold=1.4)
    c.load_state_dict(without)  # a state without mean_all: taken equal to mean
    assert torch.equal(c.state_dict()["mean_all"], a.state_dict()["mean"])
    older = {k: v for k, v in a.state_dict().items() if k != "mean_scaled"}
    c.load_state_dict(older)  # nor without mean_scaled (states saved before stop 28)
    assert torch.equal(c.state_dict()["mean_scaled"], a.state_dict()["mean"])


def test_first_innovations_face_a_raised_threshold() -> None:
    """T·(1 + m·max(0, 3 − k)/2) after k innovations: 1.1 T, then 1.05 T, then T."""
    sig = InnovationSignal(threshold=1.5, early_margin=0.1)
    limits = sig.limit(torch.tensor([1, 2, 3, 9])).tolist()
    assert limits == pytest.approx([1.65, 1.575, 1.5, 1.5])
    assert InnovationSignal(early_margin=0).limit(torch.tensor([1])).tolist() == [1.5]
    lowered = InnovationSignal(early_margin=-0.1).limit(torch.tensor([1, 2, 3])).tolist()
    assert lowered == pytest.approx([1.35, 1.425, 1.5])  # a negative margin lowers them
    for bad in (-1.0, -1.5):
        with pytest.raises(ConfigError, match="early_margin"):
            InnovationSignal(early_margin=bad)


def test_early_margin_spares_a_first_innovation_between_the_two_thresholds(
    honest_rounds: Rounds,
) -> None:
    """Round 1 on the synthetic task at a low threshold (T = 0.8): one honest client's first
    innovation (0.93) fails T outright without the margin and is judged against 1.1 T = 0.88
    with it, which it exceeds by one width only (score about 0.6, not about 0). With the previous
    deviation rescaled to the round (``rescale``) the round's shrinking scale no longer counts as
    innovation: every first innovation stays below T, and nobody needs the margin."""
    scores = {}
    for margin in (0.0, 0.1):
        sig = InnovationSignal(threshold=0.8, early_margin=margin, early_quorum=0.0)
        for u, ctx in honest_rounds(2, scheme="iid", model="logreg"):
            res = sig(u, ctx)
        scores[margin] = res.scores
        ratios = res.raw["innovation"]
    worst = int(torch.argmax(ratios))
    assert 0.8 + 2 * 0.05 < float(ratios[worst]) < 0.88 + 2 * 0.05  # precondition
    assert float(scores[0.0][worst]) < 0.1 and float(scores[0.1][worst]) > 0.5
    assert float(scores[0.1].min()) == float(scores[0.1][worst])  # nobody else failed
    sig = InnovationSignal(threshold=0.8, early_margin=0.0, early_quorum=0.0, rescale=True)
    for u, ctx in honest_rounds(2, scheme="iid", model="logreg"):
        res = sig(u, ctx)
    assert float(res.raw["innovation"].max()) < 0.8 and res.scores.tolist() == [1.0] * 20


def test_unsettled_clients_are_scored_only_in_a_crowd(honest_rounds: Rounds) -> None:
    """The same lone first innovation as above (T = 0.8, no margin; every client over its limit
    counts towards the quorum, ``quorum_rescaled=False``): with ``early_quorum`` 0.08
    (⌈0.08 · 20⌉ = 2 clients over their limits needed) it is the only client over and waits
    (neutral); with a second, noisy client over too, both are scored (the noisy one shifts the
    round's reference, so the honest one's score moves a little). The quorum counts the
    settled clients as well, and from the ``quorum_window``-th innovation on a lone client is
    scored anyway."""

    def round_one(noisy: bool, quorum: float) -> tuple[torch.Tensor, torch.Tensor]:
        sig = InnovationSignal(
            threshold=0.8, early_margin=0.0, early_quorum=quorum, quorum_rescaled=False
        )
        g = torch.Generator().manual_seed(4)
        for u, ctx in honest_rounds(2, scheme="iid", model="logreg"):
            if noisy:
                _add_noise(u, slice(19, 20), g, 3.0)
            res = sig(u, ctx)
        return res.scores, res.raw["innovation"]

    off, ratios = round_one(noisy=False, quorum=0.0)
    worst = int(torch.argmax(ratios[:19]))
    assert float(off[worst]) < 0.1  # precondition: fails outright without the quorum
    alone, _ = round_one(noisy=False, quorum=0.08)
    assert alone.tolist() == [1.0] * 20
    crowd, _ = round_one(noisy=True, quorum=0.08)
    assert float(crowd[worst]) < 0.5 and float(crowd[19]) < 0.1  # both scored (and penalised)

    # A lone noisy client: neutral for its first quorum_window - 1 innovations, caught from the
    # next (round 0 has no innovation).
    for window in (3, 6):
        sig = InnovationSignal(quorum_window=window)
        g = torch.Generator().manual_seed(5)
        caught = []
        for u, ctx in honest_rounds(9, scheme="dirichlet", model="mlp"):
            _add_noise(u, slice(0, 1), g, 2.0)
            res = sig(u, ctx)
            caught.append(float(res.scores[0]) < 0.05)
            assert float(res.scores[1:].min()) == 1.0
        assert caught == [False] * window + [True] * (9 - window)
    assert InnovationSignal().quorum_window == 6


def test_early_quorum_is_checked() -> None:
    assert InnovationSignal(early_quorum=0.5).early_quorum == 0.5
    for bad in (-0.1, 1.5, True, float("nan")):
        with pytest.raises(ConfigError, match="early_quorum"):
            InnovationSignal(early_quorum=bad)
    assert InnovationSignal(quorum_window=1).quorum_window == 1
    for bad_window in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="quorum_window"):
            InnovationSignal(quorum_window=bad_window)  # type: ignore[arg-type]


def test_the_quorum_is_exact_in_whole_numbers_and_spares_clients_under_their_limits() -> None:
    """Seven noisy clients of 100 at ``early_quorum`` 0.07: q · n is 7.000000000000001 in
    binary, and the quorum is still 7, so all seven are scored from their first innovation. An
    unsettled client under its limit scores 1 whatever the quorum, also with a ``neutral`` below
    1, which only waiting clients over their limits get."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(100, 64, generator=g)
    sig = InnovationSignal(early_quorum=0.07, neutral=0.5)
    quiet = InnovationSignal(neutral=0.5)
    for rnd in range(2):
        u = base + 0.01 * torch.randn(100, 64, generator=g)
        ctx = RoundContext(client_ids=tuple(range(100)), round=rnd)
        calm = quiet(u[:20].clone(), RoundContext(client_ids=tuple(range(20)), round=rnd))
        u[:7] += 5.0 * torch.randn(7, 64, generator=g)  # fresh noise every round
        res = sig(u, ctx)
    assert float(res.scores[:7].max()) < 0.1  # scored: the quorum of 7 is met
    assert res.scores[7:].tolist() == [1.0] * 93
    assert calm.scores.tolist() == [1.0] * 20  # nobody over: nobody waits at 0.5


def _shrinking_rounds(noisy: int) -> list[torch.Tensor]:
    """Two rounds of 20 clients in 16-D: round 0 has deviations of norm 1, three clients (0-2)
    at norm 3; round 1 is round 0 halved plus a little fresh noise (norm about 0.05), and
    ``noisy`` clients (17, 18, ...) add fresh noise of norm 1.5 on top."""
    g = torch.Generator().manual_seed(11)
    direction = torch.randn(20, 16, generator=g, dtype=torch.float64)
    size = torch.ones(20, 1, dtype=torch.float64)
    size[:3] = 3.0
    first = size * direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True)
    second = 0.5 * first + 0.0125 * torch.randn(20, 16, generator=g, dtype=torch.float64)
    noise = torch.randn(noisy, 16, generator=g, dtype=torch.float64)
    second[17 : 17 + noisy] += 1.5 * noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True)
    return [first, second]


def test_a_shrinking_scale_does_not_open_the_quorum_when_it_counts_rescaled() -> None:
    """The round's scale halves. Clients 0-2, with three times the typical deviation, keep their
    place in the crowd (unscaled change about 1.5 against a median deviation of 0.5, a first
    innovation of 3: over the raised limit 1.65), so three are over and the quorum (2 of 20) is
    met: they are scored and fail. Counted against the round's own scale
    (``quorum_rescaled``), they are far below the quorum's level of 0.93 T (rescaled innovation
    about 0.1), the quorum is not met and they wait; a crowd of two clients adding fresh noise is over both ways
    and opens the quorum for everyone over the limit again."""
    scores = {}
    for counted in (False, True):
        for noisy in (0, 2):
            sig = InnovationSignal(sketch_dim=None, quorum_rescaled=counted)
            for u in _shrinking_rounds(noisy):
                res = sig(u, RoundContext(client_ids=tuple(range(20))))
            scores[counted, noisy] = res.scores
            ratios = res.raw["innovation"][:3]
            assert float(ratios.min()) > 2.5  # precondition: over the limit, unscaled
            if counted:
                assert float(res.raw["running_innovation_rescaled"][:3].max()) < 0.5
            else:  # not computed
                assert "running_innovation_rescaled" not in res.raw
    assert float(scores[False, 0][:3].max()) < 0.05  # three over: the quorum is met
    assert scores[True, 0].tolist() == [1.0] * 20  # counted rescaled: nobody over, all wait
    for counted in (False, True):  # a noisy crowd opens it either way
        assert float(scores[counted, 2][:3].max()) < 0.05
        assert float(scores[counted, 2][17:19].max()) < 0.05
        assert float(scores[counted, 2][3:17].min()) == 1.0
