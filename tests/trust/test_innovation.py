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
        if ctx.round < 3:  # fewer than min_observations innovations: neutral
            assert res.scores.tolist() == [1.0] * 20
        if ctx.round >= 4:
            assert float(res.scores[:5].max()) < 0.05, ctx.round
            assert float(res.scores[5:].min()) == 1.0, ctx.round
    running = res.raw["running_innovation"]
    assert float(running[:5].min()) > 2 * float(running[5:].max())


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
    """9 of 20 clients send the same vector every round (ALIE-like: tiny innovation). The
    reference is the median deviation, which stays among the honest clients."""
    sig = InnovationSignal()
    for u, ctx in honest_rounds(12, scheme="dirichlet", model="mlp"):
        u[:9] = u[9:].mean(dim=0)
        res = sig(u, ctx)
        assert float(res.scores[9:].min()) == 1.0, ctx.round


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


def test_running_value_is_the_bias_corrected_clipped_average() -> None:
    """Hand-checked: deviations from the coordinate-wise median in 1-D."""
    sig = InnovationSignal(memory=0.5, min_observations=1, sketch_dim=None)
    ids = RoundContext(client_ids=(0, 1, 2))
    rounds = [[0.0, 1.0, 2.0], [0.0, 1.0, 3.0], [0.0, 1.0, 2.0]]
    out = [sig(torch.tensor(r, dtype=torch.float64).unsqueeze(1), ids) for r in rounds]
    # round 1: centre 1, deviations (-1, 0, 2), median |δ| 1; previous (-1, 0, 1): x = (0, 0, 1)
    torch.testing.assert_close(
        out[1].raw["innovation"], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    )
    # round 2: deviations (-1, 0, 1), median 1: x = (0, 0, 1); running = (0.5·1 + 1)/(0.5 + 1)
    # for client 2 after the 0.5-weight first observation: (0.25·1 + 0.5·1)/(0.25 + 0.5) = 1
    torch.testing.assert_close(
        out[2].raw["running_innovation"], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    )


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
