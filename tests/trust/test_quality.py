"""PoGQSignal (Mode 1): validation-loss improvement, exact and first-order paths, norm guard."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import pytest
import torch

from matl.aggregation import products
from matl.aggregation.base import RoundContext
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust import PoGQSignal, Signal
from matl.trust.base import SignalResult
from matl.trust.quality import validation_losses
from matl.trust.rule import MATLRule, build_signal
from matl.trust.sketch import round_sketch

#: The ``honest_rounds`` fixture (tests/trust/conftest.py): real honest FedAvg updates.
Rounds = Callable[..., Iterator[tuple[torch.Tensor, RoundContext]]]

pytestmark = pytest.mark.usefixtures("single_thread")


def EXACT(u: torch.Tensor, ctx: RoundContext) -> SignalResult:
    """One round of a fresh exact-path signal (the signal keeps per-client evidence)."""
    return PoGQSignal(path="exact")(u, ctx)


def FAST(u: torch.Tensor, ctx: RoundContext) -> SignalResult:
    """One round of a fresh fast-path signal."""
    return PoGQSignal(path="fast")(u, ctx)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_is_a_signal() -> None:
    assert isinstance(PoGQSignal(), Signal)
    assert PoGQSignal().name == "pogq"


@pytest.mark.parametrize("path", ["exact", "fast"])
def test_sign_flipped_updates_score_zero(honest_rounds: Rounds, path: str) -> None:
    sig = PoGQSignal(path=path)  # type: ignore[arg-type]
    u, ctx = next(honest_rounds(1))
    u[:3] = -u[:3]
    res = sig(u, ctx)
    assert bool((res.raw["delta"][:3] < 0).all())
    assert res.scores[:3].tolist() == [0.0, 0.0, 0.0]
    assert float(res.scores[3:].min()) > 0.5


@pytest.mark.parametrize("path", ["exact", "fast"])
@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_holds_beyond_half_byzantine(honest_rounds: Rounds, path: str, model: str) -> None:
    """60 % sign-flipped for four rounds: trust is anchored on validation data, so PoGQ still
    separates them (a majority-based signal cannot: its centre is the attackers')."""
    sig = PoGQSignal(path=path)  # type: ignore[arg-type]
    for u, ctx in honest_rounds(4, model=model):
        n = u.shape[0]
        f = int(0.6 * n)
        u[:f] = -u[:f]
        res = sig(u, ctx)
        assert float(res.scores[:f].max()) == 0.0
        assert float(res.scores[f:].min()) > 0.5, ctx.round


def test_scaled_update_fails_the_norm_guard(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    u[0] *= 10.0
    res = FAST(u, ctx)
    assert float(res.raw["norm_ratio"][0]) > PoGQSignal().norm_cap
    assert float(res.raw["guard"][0]) == 0.0
    assert float(res.raw["delta"][0]) > float(res.raw["delta"][1:].max())  # first order: 10× gain
    assert float(res.scores[0]) == 0.0
    assert float(res.scores[1:].min()) > 0.5
    # Without the guard the boosted update would score top marks.
    unguarded = PoGQSignal(path="fast", norm_guard=float("inf"), norm_cap=float("inf"))
    assert float(unguarded(u, ctx).scores[0]) == 1.0


def test_guard_factor() -> None:
    sig = PoGQSignal(norm_guard=3.0, norm_cap=6.0)
    ratio = torch.tensor([0.1, 1.0, 3.0, 4.0, 5.99, 6.0, 100.0], dtype=torch.float64)
    expected = [1.0, 1.0, 1.0, (3 / 4) ** 2, (3 / 5.99) ** 2, 0.0, 0.0]
    torch.testing.assert_close(sig.guard(ratio), torch.tensor(expected, dtype=torch.float64))


def test_guarded_gain_falls_with_scale(honest_rounds: Rounds) -> None:
    """Beyond κ a scaled update's guarded first-order gain falls like 1/s: scaling never pays."""
    u, ctx = next(honest_rounds(1))
    gains = []
    for s in (3.5, 4.0, 5.0):
        v = u.clone()
        v[0] *= s
        gains.append(float(FAST(v, ctx).raw["guarded_delta"][0]))
    assert gains[0] > gains[1] > gains[2]


def test_exact_and_fast_agree_for_small_updates(honest_rounds: Rounds) -> None:
    for model in ("logreg", "mlp"):
        u, ctx = next(honest_rounds(1, model=model))
        g = torch.Generator().manual_seed(0)
        small = 1e-3 * (
            u.double() + 0.5 * u.std() * torch.randn(u.shape, generator=g, dtype=torch.float64)
        )
        ctx64 = dataclasses.replace(
            ctx,
            global_params=ctx.global_params.double(),
            validation=(ctx.validation[0].double(), ctx.validation[1]),
        )
        exact = EXACT(small, ctx64).raw["delta"]
        fast = FAST(small, ctx64).raw["delta"]
        assert spearman(exact, fast) > 0.99
        torch.testing.assert_close(exact, fast, rtol=0.05, atol=1e-3 * float(fast.abs().max()))


def test_exact_delta_is_the_loss_change(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1, model="mlp"))
    x, y = ctx.validation
    model = ctx.model
    _, before = model.evaluate(ctx.global_params, x, y)
    for step in (1.0, 0.1):
        res = PoGQSignal(path="exact", step=step)(u, ctx)
        for i in (0, 7):
            _, after = model.evaluate(ctx.global_params + step * u[i], x, y)
            assert float(res.raw["delta"][i]) == pytest.approx(before - after, abs=1e-5)


def test_small_step_spares_honest_non_iid_updates(honest_rounds: Rounds) -> None:
    """A whole non-IID local update can overshoot and raise the validation loss; a small step
    measures its direction. Flipping an update that helps makes it harmful."""
    whole, small = PoGQSignal(path="exact", step=1.0), PoGQSignal(path="exact")
    counts = {"whole": 0, "small": 0}
    for u, ctx in honest_rounds(12, scheme="dirichlet", model="mlp"):
        counts["whole"] += int((whole(u, ctx).raw["delta"] <= 0).sum())
        honest = small(u, ctx).raw["delta"]
        counts["small"] += int((honest <= 0).sum())
        flipped = small(-u, ctx).raw["delta"]
        assert bool((flipped[honest > 0] < 0).all())
    print(f"pogq: honest Δ ≤ 0 over 12 Dirichlet rounds (240 updates): {counts}")
    assert counts["small"] < counts["whole"]


def test_exact_chunking_does_not_change_results(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1, model="mlp"))
    whole = EXACT(u, ctx)
    chunked = PoGQSignal(path="exact", chunk_elements=1)(u, ctx)  # one client per chunk
    torch.testing.assert_close(whole.raw["delta"], chunked.raw["delta"], rtol=1e-5, atol=1e-6)


def test_no_attack_scores(honest_rounds: Rounds) -> None:
    """Honest-only IID rounds: PoGQ stays out of the low region (minimum reported)."""
    minima = {"exact": 1.0, "fast": 1.0}
    for u, ctx in honest_rounds(12):
        minima["exact"] = min(minima["exact"], float(EXACT(u, ctx).scores.min()))
        minima["fast"] = min(minima["fast"], float(FAST(u, ctx).scores.min()))
    print(f"pogq: min honest score over 12 IID rounds: {minima}")
    assert minima["exact"] > 0.3
    assert minima["fast"] > 0.3


def test_auto_path_threshold() -> None:
    sig = PoGQSignal(exact_budget=1000)
    assert sig.resolve_path(10, 10, 10) == "exact"
    assert sig.resolve_path(10, 10, 11) == "fast"
    assert PoGQSignal(path="fast").resolve_path(1, 1, 1) == "fast"
    assert PoGQSignal(path="exact").resolve_path(10**6, 10**6, 100) == "exact"


def test_auto_matches_the_chosen_path(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    n, d = u.shape
    b = ctx.validation[1].numel()
    assert PoGQSignal().resolve_path(n, d, b) == "exact"
    assert torch.equal(PoGQSignal()(u, ctx).scores, EXACT(u, ctx).scores)
    tight = PoGQSignal(exact_budget=n * d * b - 1)
    assert torch.equal(tight(u, ctx).scores, FAST(u, ctx).scores)


def test_score_mapping() -> None:
    sig = PoGQSignal(reference_fraction=0.5, harm_tolerance=0.0)
    g = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    # D = median of the positive guarded gains {0.5, 1, 2, 3} = 1.5; x = Δ / D.
    x = sig.normalise(g)
    torch.testing.assert_close(x, g / 1.5)
    # s = clip(x / β) with λ = 0.
    torch.testing.assert_close(
        sig.map_scores(x),
        torch.tensor([0.0, 0.0, 0.5 / 0.75, 1.0, 1.0, 1.0], dtype=torch.float64),
    )
    tolerant = PoGQSignal(reference_fraction=0.5, harm_tolerance=0.5)
    s = tolerant.map_scores(x)
    assert float(s[1]) == pytest.approx(0.5)  # x = 0 → λ / (β + λ)
    assert float(s[0]) == 0.0  # x = −2/3 ≤ −λ
    assert float(tolerant.map_scores(torch.tensor([-0.25]))[0]) == pytest.approx(0.25)
    # Scale-free, and clipped at ±c.
    torch.testing.assert_close(sig.normalise(7.0 * g), x)
    assert PoGQSignal(evidence_clip=1.0).normalise(g).tolist()[-1] == 1.0
    # No improving update at all: the reference is the median |Δ|, so the evidence is negative.
    assert bool((sig.map_scores(sig.normalise(-g.abs() - 1)) == 0).all())
    # Nothing moves the loss: evidence 0 for everyone.
    assert sig.normalise(torch.zeros(3, dtype=torch.float64)).tolist() == [0.0] * 3


def test_evidence_memory(honest_rounds: Rounds) -> None:
    """Running evidence: bias-corrected EMA per client id; the first participation counts at face
    value; α = 0 is memoryless (whatever the harm memory); absent clients keep theirs."""
    rounds = list(honest_rounds(3))
    sig = PoGQSignal(path="fast", memory=0.8, harm_memory=None)
    memoryless = PoGQSignal(path="fast", memory=0.0)
    xs = []
    for u, ctx in rounds:
        res = sig(u, ctx)
        xs.append(res.raw["evidence"])
        torch.testing.assert_close(memoryless(u, ctx).raw["running_evidence"], xs[-1])
    torch.testing.assert_close(
        res.raw["running_evidence"],
        (0.128 * xs[0] + 0.16 * xs[1] + 0.2 * xs[2]) / (1 - 0.8**3),
    )
    # A client that switches to sign-flipping keeps part of its good record for a while ...
    u, ctx = rounds[0]
    flipped = u.clone()
    flipped[0] = -flipped[0]
    after = sig(flipped, ctx)
    assert float(after.raw["evidence"][0]) < 0
    assert float(after.raw["running_evidence"][0]) < float(res.raw["running_evidence"][0])
    # ... and a new client id is judged on its first update alone.
    renamed = dataclasses.replace(ctx, client_ids=tuple(range(100, 100 + u.shape[0])))
    fresh = sig(flipped, renamed)
    torch.testing.assert_close(fresh.raw["running_evidence"], fresh.raw["evidence"])
    assert float(fresh.scores[0]) == 0.0
    assert float(after.scores[0]) > float(fresh.scores[0])


def test_harm_memory_is_shorter_for_drops(honest_rounds: Rounds) -> None:
    """With ``harm_memory`` a value below the running one is folded in with the shorter memory,
    one above it with ``memory``: a switch to harm shows sooner, a recovery as slowly as before."""
    rounds = list(honest_rounds(2))
    sym = PoGQSignal(path="fast", harm_memory=None)
    asym = PoGQSignal(path="fast", harm_memory=0.5)
    for u, ctx in rounds:
        a, b = sym(u, ctx), asym(u, ctx)
    x0 = PoGQSignal(path="fast")(*rounds[0]).raw["evidence"]
    x1 = a.raw["evidence"]
    drop = x1 < x0
    m = torch.where(drop, 0.5, 0.8).double()
    expected = (m * 0.2 * x0 + (1 - m) * x1) / (m * 0.2 + (1 - m))
    torch.testing.assert_close(b.raw["running_evidence"], expected)
    assert bool(drop.any()) and bool((~drop).any())
    torch.testing.assert_close(b.raw["running_evidence"][~drop], a.raw["running_evidence"][~drop])
    assert bool((b.raw["running_evidence"][drop] < a.raw["running_evidence"][drop]).all())


def test_state_round_trip_and_reset(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(3))
    a = PoGQSignal(path="fast")
    for u, ctx in rounds[:2]:
        a(u, ctx)
    b, fresh = PoGQSignal(path="fast"), PoGQSignal(path="fast")
    b.load_state_dict(a.state_dict())
    u, ctx = rounds[2]
    ra, rb, rf = a(u, ctx), b(u, ctx), fresh(u, ctx)
    # The restored signal continues the saved evidence; a fresh one starts over.
    assert torch.equal(ra.raw["running_evidence"], rb.raw["running_evidence"])
    assert torch.equal(ra.raw["running_consensus"], rb.raw["running_consensus"])
    assert bool((ra.raw["running_consensus"] != 0).any())
    assert torch.equal(ra.scores, rb.scores)
    assert not torch.equal(ra.raw["running_evidence"], rf.raw["running_evidence"])
    assert not torch.equal(ra.raw["running_consensus"], rf.raw["running_consensus"])
    for key in ("mean", "weight", "cos", "cos_weight", "credit", "low", "vouched"):
        assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert a.state_dict()["scale"] == b.state_dict()["scale"]
    assert set(a.state_dict()) == {
        "client_ids",
        "mean",
        "weight",
        "cos",
        "cos_weight",
        "credit",
        "low",
        "vouched",
        "scale",
    }  # fmt: skip
    a.reset()
    assert a.state_dict()["client_ids"] == []
    assert a.state_dict()["scale"] == [0.0, 0.0]
    # The memoryless signal's empty state restores no evidence.
    b.load_state_dict({})
    assert b.state_dict()["client_ids"] == []


def test_loads_state_saved_before_the_consensus_term() -> None:
    sig = PoGQSignal(path="fast")
    sig.load_state_dict({"client_ids": [3, 4], "mean": [0.1, -0.2], "weight": [0.2, 0.36]})
    state = sig.state_dict()
    assert state["client_ids"] == [3, 4]
    torch.testing.assert_close(state["mean"], torch.tensor([0.1, -0.2], dtype=torch.float64))
    assert state["cos"].tolist() == [0.0, 0.0]
    assert state["cos_weight"].tolist() == [0.0, 0.0]
    assert state["scale"] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"x": 1}, "state keys"),
        ({"weight": [0.5, 0.0]}, "weights"),
        ({"weight": [0.5, 1.5]}, "weights"),
        ({"mean": [float("nan"), 0.0]}, "finite"),
        ({"mean": [float("inf"), 0.0]}, "finite"),
        ({"mean": [0.0]}, "shapes"),
        ({"client_ids": [3, 3]}, "repeated"),
        ({"client_ids": [3, 0.7]}, "not an integer"),
        ({"client_ids": [3, "a"]}, "not an integer"),
        ({"cos": [float("nan"), 0.0]}, "finite"),
        ({"cos": [0.0]}, "shapes"),
        ({"cos": [0.5, 0.1]}, "cos_weight"),
        ({"cos_weight": [0.2, 1.5]}, "cos_weight"),
        ({"cos_weight": [-0.1, 0.36]}, "cos_weight"),
        ({"scale": [0.1]}, "scale"),
        ({"scale": [float("inf"), 0.5]}, "scale"),
        ({"scale": [0.1, 1.5]}, "scale"),
        ({"scale": [0.5, 0.2]}, "scale"),
        ({"scale": [-0.1, 0.2]}, "scale"),
        ({"scale": 3}, "scale"),
        ({"credit": [0.5]}, "shapes"),
        ({"credit": [float("nan"), 0.1]}, "finite"),
        ({"low": [0.0]}, "shapes"),
        ({"low": [-0.5, 0.1]}, "low"),
        ({"vouched": [1.0, 0.5]}, "vouched"),
    ],
)
def test_load_state_rejects_bad_state(change: dict[str, object], match: str) -> None:
    good: dict[str, object] = {
        "client_ids": [3, 4],
        "mean": [0.1, -0.2],
        "cos": [0.05, 0.1],
        "weight": [0.2, 0.36],
        "cos_weight": [0.2, 0.36],
        "scale": [0.02, 0.2],
    }
    state = change if "x" in change else {**good, **change}
    sig = PoGQSignal(path="fast")
    sig.load_state_dict(good)
    with pytest.raises(ValueError, match=match):
        sig.load_state_dict(state)
    assert sig.state_dict()["client_ids"] == [3, 4]  # a rejected state changes nothing


def test_float32_and_float64(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    for sig in (EXACT, FAST):
        r32 = sig(u, ctx)
        r64 = sig(u.double(), ctx)
        assert r32.scores.dtype == r64.scores.dtype == torch.float64
        torch.testing.assert_close(r32.raw["delta"], r64.raw["delta"], rtol=1e-3, atol=1e-5)


def test_does_not_mutate_and_is_deterministic(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    before = u.clone()
    theta = ctx.global_params.clone()
    x, y = (t.clone() for t in ctx.validation)
    for sig in (EXACT, FAST):
        a, b = sig(u, ctx), sig(u, ctx)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.raw["delta"], b.raw["delta"])
    assert torch.equal(u, before)
    assert torch.equal(ctx.global_params, theta)
    assert torch.equal(ctx.validation[0], x)
    assert torch.equal(ctx.validation[1], y)


def test_validation_losses_broadcast(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    x, y = ctx.validation
    params = ctx.global_params + u[:3]
    losses = validation_losses(ctx.model, params, x, y)
    for i in range(3):
        assert float(losses[i]) == pytest.approx(ctx.model.evaluate(params[i], x, y)[1], abs=1e-6)


@pytest.mark.parametrize("missing", ["validation", "model", "global_params"])
def test_config_error_names_what_is_missing(honest_rounds: Rounds, missing: str) -> None:
    u, ctx = next(honest_rounds(1))
    bare = dataclasses.replace(ctx, **{missing: None})
    with pytest.raises(ConfigError, match=rf"ctx\.{missing}"):
        PoGQSignal()(u, bare)


def test_config_error_without_context() -> None:
    with pytest.raises(ConfigError, match=r"ctx\.validation, ctx\.model, ctx\.global_params"):
        PoGQSignal()(torch.zeros(3, 4), None)


def test_wrong_width_and_bad_rows(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    with pytest.raises(ConfigError, match="d="):
        PoGQSignal()(u[:, :-1], ctx)
    u[1, 0] = float("inf")
    with pytest.raises(InvalidUpdateError):
        PoGQSignal()(u, ctx)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "slow"},
        {"exact_budget": -1},
        {"norm_guard": 0.5},
        {"norm_guard": 4.0, "norm_cap": 3.0},
        {"reference_fraction": 0.0},
        {"harm_tolerance": -0.1},
        {"memory": 1.0},
        {"memory": -0.1},
        {"evidence_clip": 0.0},
        {"chunk_elements": 0},
        {"sketch_dim": 0},
        {"sketch_dim": 1.5},
        {"seed": -1},
        {"seed": True},
    ],
)
def test_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PoGQSignal(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_consensus_cosine_points_to_the_best_evidence_set(
    honest_rounds: Rounds, fraction: float
) -> None:
    """The reference is the mean unit direction of the best-evidence fraction (at least 3) of the
    improving updates: all of them by default, the best quarter with ``consensus_fraction=0.25``."""
    u, ctx = next(honest_rounds(1))
    u[:3] = -u[:3]  # three harmful updates, outside the set whatever the fraction
    res = PoGQSignal(path="fast", consensus_fraction=fraction)(u, ctx)
    n = u.shape[0]
    improving = int((res.raw["evidence"] > 0).sum())
    assert bool((res.raw["norm_ratio"] <= 3).all()) and improving >= 5
    k = min(improving, max(3, math.ceil(fraction * n)))
    top = torch.topk(res.raw["evidence"], k).indices
    if fraction == 1.0:
        assert k == improving < n  # every improving update, and only those
    unit = u.double() / torch.linalg.vector_norm(u.double(), dim=1, keepdim=True)
    ref = unit[top].mean(0)
    expected = (unit @ ref) / torch.linalg.vector_norm(ref)
    torch.testing.assert_close(res.raw["consensus_cosine"], expected, rtol=1e-5, atol=1e-6)
    assert float(res.raw["consensus_cosine"][top].min()) > 0


def test_consensus_catches_a_flipped_update_that_barely_helped(honest_rounds: Rounds) -> None:
    """A client that always sends the sign-flipped copy of its honest update, where that update
    barely moves the validation loss: its evidence looks harmless, so the evidence term passes it;
    it points away from the validated consensus, and the consensus term catches it."""
    rounds = list(honest_rounds(4))
    probe = PoGQSignal(path="fast", consensus_fraction=0.0)(*rounds[0])
    flipper = int(probe.raw["evidence"].abs().argmin())  # the update that did least
    sig = PoGQSignal(path="fast")
    for u, ctx in rounds:
        flipped = u.clone()
        flipped[flipper] = -flipped[flipper]
        res = sig(flipped, ctx)
    assert float(res.raw["quality_score"][flipper]) > 0.375  # its evidence alone passes
    assert float(res.raw["running_consensus"][flipper]) < 0
    assert float(res.scores[flipper]) < 0.375
    others = torch.ones(res.scores.shape[0], dtype=torch.bool)
    others[flipper] = False
    assert float(res.scores[others].median()) == 1.0


def test_consensus_off_is_the_evidence_score(honest_rounds: Rounds) -> None:
    u, ctx = next(honest_rounds(1))
    res = PoGQSignal(path="fast", consensus_fraction=0.0)(u, ctx)
    assert bool(torch.isnan(res.raw["consensus_cosine"]).all())
    assert bool((res.raw["consensus_score"] == 1).all())
    torch.testing.assert_close(res.scores, res.raw["quality_score"] * res.raw["guard"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("consensus_fraction", -0.1),
        ("consensus_fraction", 1.5),
        ("consensus_reference", 0.0),
        ("consensus_tolerance", -1.0),
        ("consensus_memory", 1.0),
        ("consensus_memory", -0.1),
        ("consensus_harm_memory", 1.0),
    ],
)
def test_consensus_config_errors(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        PoGQSignal(**{key: value})  # type: ignore[arg-type]


def test_consensus_needs_three_improving_updates(honest_rounds: Rounds) -> None:
    """Fewer than three updates with positive evidence: no consensus this round, and the running
    cosines are left as they were (not diluted by a round without a reference)."""
    u, ctx = next(honest_rounds(1))
    sig = PoGQSignal(path="fast")
    first = sig(u, ctx)
    before = sig.state_dict()
    flipped = -u
    flipped[:2] = u[:2]  # only two updates still help
    res = sig(flipped, ctx)
    assert bool(torch.isnan(res.raw["consensus_cosine"]).all())
    after = sig.state_dict()
    assert torch.equal(after["cos"], before["cos"])
    assert torch.equal(after["cos_weight"], before["cos_weight"])
    assert not torch.equal(after["mean"], before["mean"])
    assert bool((first.raw["running_consensus"] != 0).any())


@pytest.mark.parametrize("fraction", [0.25, 1.0])
def test_steered_consensus_cannot_fail_clients_with_good_evidence(
    honest_rounds: Rounds, fraction: float
) -> None:
    """An adaptive quarter of the round aligns its updates with the validation descent direction
    (so they rank first by evidence, within the norm guard) and adds a component opposed to the
    honest clients' common direction, steering the consensus away from them. Clients whose own
    running evidence is good keep a consensus score of 1 regardless. With the reference taken from
    the best quarter the steering takes hold; from every improving update (the default) the honest
    majority of that set dilutes it."""
    sig = PoGQSignal(path="fast", consensus_fraction=fraction)
    n, bad = 20, 5
    for u, ctx in honest_rounds(6, n=n):
        x, y = ctx.validation
        _, grad = ctx.model.loss_and_grad(ctx.global_params.reshape(1, -1), x[None], y[None])
        descent = -grad[0] / grad[0].norm()
        honest = u[bad:]
        common = honest.mean(0)
        away = -(common - (common @ descent) * descent)
        away = away / away.norm()
        med = float(honest.norm(dim=1).median())
        g = torch.Generator().manual_seed(1)
        noise = torch.randn(bad, u.shape[1], generator=g)
        noise = noise - (noise @ descent)[:, None] * descent
        noise = 0.3 * noise / noise.norm(dim=1, keepdim=True)
        crafted = 0.45 * descent + 0.89 * away + noise
        u[:bad] = 2.9 * med * crafted / crafted.norm(dim=1, keepdim=True)
        res = sig(u, ctx)
    evidence = res.raw["running_evidence"][bad:]
    consensus = res.raw["consensus_score"][bad:]
    good = evidence >= sig.reference_fraction
    assert int(good.sum()) >= 5
    assert bool((consensus[good] == 1).all())
    steered = float(res.raw["consensus_cosine"][:bad].min())
    if fraction == 0.25:
        assert steered > 0.5  # the steering did take hold
    else:
        assert steered < 0.25  # diluted: the reference stays with the honest clients
        assert float(res.raw["consensus_cosine"][bad:].median()) > steered


def test_consensus_ignores_boosted_updates(honest_rounds: Rounds) -> None:
    """An update beyond the norm guard cannot join the consensus set, however good its guarded
    evidence: boosting the best update by 4× (κ = 3 < 4 < κ_max = 6) keeps it out."""
    u, ctx = next(honest_rounds(1))
    base = PoGQSignal(path="fast")(u.clone(), ctx)
    best = int(base.raw["evidence"].argmax())
    boosted = u.clone()
    boosted[best] *= 4.0
    sig = PoGQSignal(path="fast", consensus_fraction=0.25)
    res = sig(boosted, ctx)
    assert 3 < float(res.raw["norm_ratio"][best]) < 6
    n = u.shape[0]
    ok = (res.raw["evidence"] > 0) & (res.raw["norm_ratio"] <= 3)
    ok[best] = False
    top = torch.topk(torch.where(ok, res.raw["evidence"], -torch.inf), max(3, -(-n // 4))).indices
    assert best not in top.tolist()
    unit = boosted.double() / torch.linalg.vector_norm(boosted.double(), dim=1, keepdim=True)
    ref = unit[top].mean(0)
    expected = (unit @ ref) / torch.linalg.vector_norm(ref)
    torch.testing.assert_close(res.raw["consensus_cosine"], expected, rtol=1e-5, atol=1e-6)


def test_clients_without_consensus_history_are_exempt(honest_rounds: Rounds) -> None:
    """A client first seen in a round without a consensus has no running cosine yet: its
    consensus score is 1 (no evidence against it), while its evidence still counts."""
    u, ctx = next(honest_rounds(1))
    sig = PoGQSignal(path="fast")
    flipped = -u
    flipped[:2] = u[:2]  # two improving updates: no consensus this round
    res = sig(flipped, ctx)
    assert bool(torch.isnan(res.raw["consensus_cosine"]).all())
    assert res.raw["has_consensus"].tolist() == [0.0] * u.shape[0]
    assert bool((res.raw["consensus_score"] == 1).all())
    assert float(res.raw["quality_score"][2:].max()) < 1  # the flipped evidence still counts


def test_consensus_memory_is_its_own(honest_rounds: Rounds) -> None:
    """The running cosines fold with ``consensus_memory`` (``consensus_harm_memory`` for drops),
    not with the evidence's memories: checked against the hand-folded bias-corrected averages."""
    rounds = list(honest_rounds(3))
    sig = PoGQSignal(path="fast", consensus_memory=0.9, consensus_harm_memory=0.6)
    mean = torch.zeros(rounds[0][0].shape[0], dtype=torch.float64)
    weight = torch.zeros_like(mean)
    for u, ctx in rounds:
        res = sig(u, ctx)
        c = res.raw["consensus_cosine"]
        assert not bool(torch.isnan(c).any())
        running = torch.where(weight > 0, mean / weight.clamp_min(1e-300), c)
        a = torch.where(c < running, 0.6, 0.9).to(torch.float64)
        mean = a * mean + (1 - a) * c
        weight = a * weight + (1 - a)
        torch.testing.assert_close(res.raw["running_consensus"], mean / weight)
    other = PoGQSignal(path="fast", consensus_memory=0.5, consensus_harm_memory=0.5)
    for u, ctx in rounds:
        res_other = other(u, ctx)
    torch.testing.assert_close(res_other.raw["running_evidence"], res.raw["running_evidence"])
    assert not torch.allclose(res_other.raw["running_consensus"], res.raw["running_consensus"])


def test_forget_makes_the_next_participation_a_first_one(honest_rounds: Rounds) -> None:
    """After ``forget``, a client's running evidence and cosine restart from its next round alone,
    exactly as for a client seen for the first time; the others and unknown ids are untouched."""
    rounds = list(honest_rounds(4))
    sig = PoGQSignal(path="fast")
    for u, ctx in rounds[:3]:
        sig(u, ctx)
    before = sig.state_dict()
    sig.forget([0, 999])
    after = sig.state_dict()
    for key in ("mean", "weight", "cos", "cos_weight"):
        assert float(after[key][0]) == 0.0
        assert torch.equal(after[key][1:], before[key][1:])
    u, ctx = rounds[3]
    res = sig(u, ctx)
    assert float(res.raw["running_evidence"][0]) == pytest.approx(float(res.raw["evidence"][0]))
    assert float(res.raw["running_consensus"][0]) == pytest.approx(
        float(res.raw["consensus_cosine"][0])
    )


def test_a_row_whose_sketch_overflows_does_not_erase_the_consensus() -> None:
    """Float16 run sums can overflow: a finite float16 row of large entries gets an infinite
    sketch row. Outside the consensus set it gets cosine 0 and the others keep theirs."""
    gen = torch.Generator().manual_seed(4)
    n, d = 12, 8192
    u = (0.5 * torch.randn(d, generator=gen) + torch.randn(n, d, generator=gen)).half()
    u[0] = torch.full((d,), 60000.0, dtype=torch.float16)
    assert not bool(torch.isfinite(round_sketch(u, 1024, seed=0)[0]).all())
    evidence = torch.ones(n, dtype=torch.float64)
    evidence[0] = -1.0
    norms = torch.linalg.vector_norm(u.double(), dim=1)
    ratio = torch.ones(n, dtype=torch.float64)
    cos = PoGQSignal(path="fast").consensus_cosines(u, norms, evidence, ratio)
    assert cos is not None and float(cos[0]) == 0.0
    assert bool((cos[1:] > 0).all())


def test_consensus_cosines_are_read_in_the_round_sketch() -> None:
    """With a real sketch (d > 4k) the consensus cosines are those of the round's sketch: the
    sketch of the mean unit direction of the chosen updates (exact, the sketch being linear)
    against each update's sketch — within the sketch's error of the cosines in the full space,
    which ``sketch_dim=None`` computes."""
    gen = torch.Generator().manual_seed(7)
    n, d = 40, 20_000
    common = torch.randn(d, generator=gen)
    u = 0.5 * common + torch.randn(n, d, generator=gen)
    u[:5] = -u[:5]
    evidence = torch.ones(n, dtype=torch.float64)
    evidence[:5] = -1.0  # harmful: outside the consensus set
    norms = torch.linalg.vector_norm(u.double(), dim=1)
    ratio = norms / norms.median()
    cos = PoGQSignal(path="fast").consensus_cosines(u, norms, evidence, ratio)
    z = round_sketch(u, 1024, seed=0).double()
    ref = (z[5:] / norms[5:, None]).sum(0)
    expected = (z @ ref) / (torch.linalg.vector_norm(z, dim=1) * torch.linalg.vector_norm(ref))
    assert cos is not None
    torch.testing.assert_close(cos, expected, rtol=1e-9, atol=1e-12)
    unit = u.double() / norms[:, None]
    full = unit[5:].sum(0)
    exact = (unit @ full) / torch.linalg.vector_norm(full)
    rows = PoGQSignal(path="fast", sketch_dim=None).consensus_cosines(u, norms, evidence, ratio)
    assert rows is not None
    torch.testing.assert_close(rows, exact, rtol=1e-9, atol=1e-12)
    assert float((cos - exact).abs().max()) < 0.1  # about 1/sqrt(1024) = 0.03 per cosine
    assert bool((cos[:5] < 0).all()) and bool((cos[5:] > 0).all())


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_split_fast_path_scores_as_the_single_pass(
    honest_rounds: Rounds, monkeypatch: pytest.MonkeyPatch, fraction: float
) -> None:
    """Cutting the fast path's pass into chunks (a large matrix) changes rounding only: over three
    rounds with harmful updates, every score and raw value agrees with the single pass, with the
    consensus over every improving update (``consensus_fraction`` 1) and over the best quarter."""
    single = PoGQSignal(path="fast", consensus_fraction=fraction)
    split = PoGQSignal(path="fast", consensus_fraction=fraction)
    for u, ctx in honest_rounds(3):
        u = u.clone()
        u[:3] = -u[:3]
        a = single(u, ctx)
        monkeypatch.setattr(products, "PARALLEL_MIN_ELEMENTS", 0)
        b = split(u, ctx)
        monkeypatch.undo()
        assert torch.allclose(a.scores, b.scores, atol=1e-6)
        for key in ("delta", "consensus_cosine", "running_consensus"):
            assert torch.allclose(a.raw[key], b.raw[key], atol=1e-6, equal_nan=True), key
        assert bool((a.scores < 0.5).any())  # the harmful updates are scored as such


def test_a_good_record_earns_the_wider_consensus_tolerance(honest_rounds: Rounds) -> None:
    """``consensus_credit``: a client whose running consensus cosine once reached half the typical
    cosine is mapped with ``credited_tolerance``; a client against the consensus from its first
    round never is, and :meth:`forget` (a switch) takes the credit away."""
    sig = PoGQSignal(path="fast", consensus_credit=0.5, credited_tolerance=0.8)
    plain = PoGQSignal(path="fast")
    for rnd, (u, ctx) in enumerate(honest_rounds(6)):
        u = u.clone()
        u[0] = -u[0]  # against the consensus from round 0
        if rnd >= 3:
            u[1] = -u[1]  # turns after three rounds with the consensus
        res, ref = sig(u, ctx), plain(u, ctx)
    credited = res.raw["credited"].bool()
    assert not bool(credited[0]) and bool(credited[1]) and bool(credited[2:].all())
    assert not bool(ref.raw["credited"].bool().any())  # off by default in the class
    ratio = res.raw["running_consensus"] / res.raw["consensus_scale"]
    for i in (0, 1):
        lam = 0.8 if bool(credited[i]) else sig.consensus_tolerance
        expected = float(((ratio[i] + lam) / (sig.consensus_reference + lam)).clamp(0.0, 1.0))
        assert float(res.raw["consensus_score"][i]) == pytest.approx(expected)
    assert float(res.raw["consensus_score"][1]) >= float(ref.raw["consensus_score"][1])
    sig.forget([1])
    u, ctx = next(honest_rounds(1))
    u = u.clone()
    u[1] = -u[1]
    assert not bool(sig(u, ctx).raw["credited"][1])
    with pytest.raises(ConfigError, match="credited_tolerance"):
        PoGQSignal(consensus_tolerance=0.5, credited_tolerance=0.4)


def test_a_client_against_the_consensus_before_any_credit_stays_blemished(
    honest_rounds: Rounds,
) -> None:
    """``consensus_blemish``: a client that flips its updates for its first three rounds and then
    sends honest ones keeps a consensus score of 0 (its later good evidence does not exempt it),
    where without the blemish it is scored 1 again; honest clients are never blemished,
    :meth:`forget` clears the blemish, and a client credited once is not blemished after a
    forget."""
    marked = PoGQSignal(path="fast", consensus_credit=0.5, consensus_blemish=0.5)
    plain = PoGQSignal(path="fast", consensus_credit=0.5)
    for rnd, (u, ctx) in enumerate(honest_rounds(12)):
        u = u.clone()
        if rnd < 3:
            u[0] = -u[0]
        res, ref = marked(u, ctx), plain(u, ctx)
        if rnd == 0:
            assert float(res.raw["running_consensus"][0]) < -0.5 * float(
                res.raw["consensus_scale"][0]
            )
    assert float(ref.scores[0]) == 1.0  # the history has recovered ...
    assert bool(res.raw["blemished"][0]) and float(res.scores[0]) == 0.0  # ... the record not
    assert not bool(res.raw["blemished"][1:].any())
    assert torch.equal(res.scores[1:], ref.scores[1:])
    marked.forget([0, 1])
    for u, ctx in honest_rounds(3):
        u = u.clone()
        u[1] = -u[1]  # credited once: a forget and a reversal after it leave no blemish
        after = marked(u, ctx)
        assert not bool(after.raw["blemished"][:2].any())
    assert float(after.scores[1]) == 0.0  # it still fails on the consensus itself
    with pytest.raises(ConfigError, match="consensus_blemish"):
        PoGQSignal(consensus_blemish=-0.1)
    assert MATLRule(mode=1).resolved_signal_params()["pogq"]["consensus_blemish"] == 0.5


def test_the_engines_tighter_tolerance_fails_a_mildly_opposed_client(honest_rounds: Rounds) -> None:
    """The engine's ``consensus_tolerance`` 0.1 (with the credit): a client whose updates lean
    slightly against the consensus from its first round — a fifth of its own update reversed,
    plus noise of the same length — earns no credit and scores 0, where the stand-alone
    tolerance 0.4 leaves it a partial score; the honest clients keep 1."""
    params = MATLRule(mode=1).resolved_signal_params()["pogq"]
    engine = build_signal("pogq", {**params, "path": "fast"})
    assert (engine.consensus_tolerance, engine.consensus_credit) == (0.1, 0.5)
    alone = PoGQSignal(path="fast", consensus_credit=0.5)
    g = torch.Generator().manual_seed(5)
    for u, ctx in honest_rounds(6):
        u = u.clone()
        noise = torch.randn(u.shape[1], generator=g)
        u[0] = -0.2 * u[0] + noise / noise.norm() * u[0].norm()
        res, ref = engine(u, ctx), alone(u, ctx)
    ratio = float(res.raw["running_consensus"][0] / res.raw["consensus_scale"][0])
    assert -0.4 < ratio < -0.1  # between the two tolerances
    assert not bool(res.raw["credited"][0])
    assert float(res.scores[0]) == 0.0 < float(ref.scores[0])
    assert bool((res.scores[1:] == 1.0).all())


@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_products_read_ahead_give_the_scores_of_a_plain_call(
    honest_rounds: Rounds, model: str, fraction: float
) -> None:
    primed = PoGQSignal(path="fast", consensus_fraction=fraction)
    plain = PoGQSignal(path="fast", consensus_fraction=fraction)
    for t, (u, ctx) in enumerate(honest_rounds(4, model=model)):
        if t == 1:
            u[0] *= 20.0  # over the norm guard
        if t == 2:
            u[1] = -u[1]
        assert primed.prepare(u, ctx, 8, 0)
        a, b = primed(u, ctx), plain(u, ctx)
        for key in ("delta", "consensus_cosine", "running_consensus", "evidence"):
            assert torch.equal(a.raw[key].nan_to_num(), b.raw[key].nan_to_num()), key
        assert torch.equal(a.scores, b.scores)  # the same bits: the same products, read ahead
        assert primed._primed is None  # one call only
        if t == 1:  # the scaled row improves, and the guard keeps it out of the consensus
            assert float(a.raw["delta"][0]) > 0 and float(a.raw["norm_ratio"][0]) > 3.0


def test_products_are_read_ahead_only_on_the_fast_path_of_a_sketched_input(
    honest_rounds: Rounds,
) -> None:
    u, ctx = next(honest_rounds(1))
    assert not PoGQSignal(path="exact").prepare(u, ctx, 8, 0)
    assert PoGQSignal(path="fast", consensus_fraction=0.5).prepare(u, ctx, 8, 0)  # any consensus
    assert not PoGQSignal(path="fast").prepare(u.half(), ctx, 8, 0)
    assert not PoGQSignal(path="fast").prepare(u, None, 8, 0)
    assert not PoGQSignal(path="fast").prepare(u, ctx, 64, 0)  # d ≤ 4k: no sketch
    bare = RoundContext(client_ids=ctx.client_ids)
    assert not PoGQSignal(path="fast").prepare(u, bare, 8, 0)  # the call reports what is missing
    # θ or the validation batch on another device than the updates (a GPU model, CPU updates):
    # the read-ahead steps aside, and the call reports the mismatch.
    # (the "meta" device stands in for a GPU: its gradient comes back on it, as a GPU's would)
    x, y = ctx.validation
    elsewhere = dataclasses.replace(
        ctx, global_params=ctx.global_params.to("meta"), validation=(x.to("meta"), y.to("meta"))
    )
    sig = PoGQSignal(path="fast")
    # It steps aside before the gradient (not by the gradient failing on the other device).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PoGQSignal, "_gradient", lambda *a: pytest.fail("gradient computed"))
        assert not sig.prepare(u, elsewhere, 8, 0)
    for path in ("fast", "exact"):
        with pytest.raises(ConfigError, match=r"updates are on cpu but .* on meta"):
            PoGQSignal(path=path)(u, elsewhere)
    sig = PoGQSignal(path="fast")
    assert sig.prepare(u, ctx, 8, 0)
    sig.discard_primed()  # what the engine does when the round fails before the call
    assert sig._primed is None


def test_products_read_ahead_serve_only_the_updates_and_context_they_came_from(
    honest_rounds: Rounds,
) -> None:
    (u1, ctx1), (u2, ctx2) = honest_rounds(2)
    sig = PoGQSignal(path="fast")
    assert sig.prepare(u1, ctx1, 8, 0)
    torch.testing.assert_close(sig(u2, ctx2).raw["delta"], FAST(u2, ctx2).raw["delta"])
    sig = PoGQSignal(path="fast")
    assert sig.prepare(u1, ctx1, 8, 0)
    u1[0] = -u1[0]  # changed in place after the read: the read is stale
    torch.testing.assert_close(sig(u1, ctx1).raw["delta"], FAST(u1, ctx1).raw["delta"])
    sig = PoGQSignal(path="fast")
    assert sig.prepare(u2, ctx2, 8, 0)
    moved = dataclasses.replace(ctx2, global_params=ctx2.global_params + 0.1)
    torch.testing.assert_close(sig(u2, moved).raw["delta"], FAST(u2, moved).raw["delta"])


@pytest.mark.parametrize("primed", [False, True])
def test_a_row_of_subnormal_entries_is_a_zero_update(honest_rounds: Rounds, primed: bool) -> None:
    """Its float64 norm (~1e-41) has an inverse that overflows float32: PoGQ takes it as a zero
    row, as its float32 norm would be, nothing turns NaN, and it is not measured against the
    consensus (cosine 0, though its direction is a consensus member's)."""
    sig = PoGQSignal(path="fast")
    for u, ctx in honest_rounds(3):
        u = u.float()
        ctx = dataclasses.replace(ctx, global_params=ctx.global_params.float())
        u[0] = u[1] * 1e-40
        assert float(torch.linalg.vector_norm(u[0].double())) > 0
        if primed:
            assert sig.prepare(u, ctx, 8, 0)
        res = sig(u, ctx)
        assert not bool(torch.isnan(res.raw["consensus_cosine"]).any())
        assert float(res.raw["consensus_cosine"][0]) == 0.0
        assert bool(torch.isfinite(res.scores).all())
        assert float(res.raw["norm_ratio"][0]) == 0.0
    PoGQSignal(path="fast").load_state_dict(sig.state_dict())  # finite: it reloads


def test_a_read_ahead_needs_the_very_context_objects_and_tracked_tensors(
    honest_rounds: Rounds,
) -> None:
    u, ctx = next(honest_rounds(1))
    sig = PoGQSignal(path="fast")
    assert sig.prepare(u, ctx, 8, 0)
    twin = dataclasses.replace(ctx, global_params=ctx.global_params.clone())  # equal, not the same
    assert sig._take_primed(u, twin) is None
    assert sig.prepare(u, ctx, 8, 0)
    assert sig._take_primed(u, ctx) is not None
    with torch.inference_mode():
        frozen = u.clone()
    assert not sig.prepare(frozen, ctx, 8, 0)  # no version counter: never read ahead
