"""EntropySignal: Shannon entropy of each client's round-to-round behaviour symbols."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import pytest
import torch

from matl.aggregation.base import RoundContext
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust import EntropySignal, PeerSignal, PoGQSignal, Signal, TemporalSignal
from matl.trust.entropy import window_entropy

#: The ``honest_rounds`` fixture (tests/trust/conftest.py): real honest FedAvg updates.
Rounds = Callable[..., Iterator[tuple[torch.Tensor, RoundContext]]]

pytestmark = pytest.mark.usefixtures("single_thread")


def test_is_a_signal() -> None:
    assert isinstance(EntropySignal(), Signal)
    assert EntropySignal().name == "entropy"


def test_window_entropy() -> None:
    symbols = torch.tensor(
        [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [-1, -1, 5, 6],
            [1, 1, 2, 2],
            [-1, -1, -1, 4],
            [-1, -1, -1, -1],
            [1, 1, 1, 2],
        ]
    )
    h, w = window_entropy(symbols)
    expected = [0.0, 2.0, 1.0, 1.0, 0.0, 0.0, -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))]
    torch.testing.assert_close(h, torch.tensor(expected, dtype=torch.float64))
    assert w.tolist() == [4, 4, 2, 4, 1, 0, 4]


def test_replaying_client_gets_low_entropy(honest_rounds: Rounds) -> None:
    """Client 0 replays its round-4 update from then on. Its score falls with every replay while
    the varied honest clients stay at 1 — and the stale update still looks fine to the temporal,
    PoGQ and peer signals (it *is* an honest update, just an old one): that is what entropy adds."""
    ent, peer, temporal, pogq = EntropySignal(), PeerSignal(), TemporalSignal(), PoGQSignal()
    replay = None
    honest_min = 1.0
    replayer = []
    for u, ctx in honest_rounds(12):
        if ctx.round == 4:
            replay = u[0].clone()
        if replay is not None:
            u[0] = replay
        res = ent(u, ctx)
        others = [sig(u, ctx).scores[0] for sig in (peer, temporal, pogq)]
        if ctx.round >= 4:  # everyone has ≥ min_observations symbols
            honest_min = min(honest_min, float(res.scores[1:].min()))
            replayer.append(round(float(res.scores[0]), 3))
    print(f"entropy: min honest score (rounds 4-11): {honest_min:.3f}; replayer: {replayer}")
    assert honest_min == 1.0
    assert replayer[0] == 1.0  # round 4: its own, fresh update
    assert all(a > b for a, b in itertools.pairwise(replayer))
    assert float(res.raw["repeat_fraction"][0]) == pytest.approx(7 / 8)
    assert float(res.scores[0]) < 0.1
    peer_s, temporal_s, pogq_s = (float(s) for s in others)
    print(f"replayer, last round: peer {peer_s:.3f}, temporal {temporal_s:.3f}, pogq {pogq_s:.3f}")
    assert min(peer_s, temporal_s, pogq_s) > 0.5


def test_partial_replay_window() -> None:
    """Six replays after two honest symbols: H̄ = 0.35, and the repeat fraction 3/4 cuts it."""
    sig = EntropySignal()
    h, _ = window_entropy(torch.tensor([[3, 7] + [sig.repeat_symbol] * 6]))
    assert float(h) / 3.0 == pytest.approx(0.3538, abs=1e-4)


def test_free_rider_sending_zeros_gets_low_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    sig = EntropySignal()
    for r in range(7):
        u = torch.randn(6, 40, generator=g)
        u[2] = 0.0
        res = sig(u, RoundContext(round=r))
    assert float(res.scores[2]) == 0.0
    assert float(res.scores[[0, 1, 3, 4, 5]].min()) == 1.0


def test_cycling_client_repeats_itself(honest_rounds: Rounds) -> None:
    """Client 0 alternates between two stored updates (its own from rounds 0 and 1): every update
    from round 2 on repeats one of its last W, so its score collapses; honest clients stay high."""
    sig = EntropySignal()
    stored: list[torch.Tensor] = []
    for u, ctx in honest_rounds(10):
        if ctx.round < 2:
            stored.append(u[0].clone())
        else:
            u[0] = stored[ctx.round % 2]
        res = sig(u, ctx)
    assert float(res.raw["repeat_fraction"][0]) == 1.0
    assert float(res.scores[0]) == 0.0
    assert float(res.scores[1:].min()) == 1.0


def test_neutral_until_min_observations() -> None:
    g = torch.Generator().manual_seed(2)
    u = torch.randn(4, 10, generator=g)
    sig = EntropySignal(min_observations=3, neutral=0.6)
    observed = []
    for r in range(5):
        res = sig(u, RoundContext(round=r))  # a replay from the start
        observed.append(res.raw["observations"][0].item())
        expected = 0.6 if r < 3 else 0.0
        assert res.scores.tolist() == [expected] * 4, r
    assert observed == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_repeat_threshold() -> None:
    """A replay with noise below ``repeat_tol`` is still a repeat; larger noise is not."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 500, generator=g, dtype=torch.float64)
    tiny, loud = EntropySignal(), EntropySignal()
    for r in range(6):
        others = torch.randn(5, 500, generator=g, dtype=torch.float64)
        noise = torch.randn(1, 500, generator=g, dtype=torch.float64) / math.sqrt(500)
        tiny_res = tiny(torch.cat([base * (1 + 1e-6 * noise), others]), RoundContext(round=r))
        loud_res = loud(
            torch.cat([base + 0.2 * base.norm() * noise, others]), RoundContext(round=r)
        )
    assert float(tiny_res.scores[0]) == 0.0
    assert float(loud_res.scores[0]) == 1.0


def test_state_round_trip_and_reset(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(8))
    a = EntropySignal()
    for u, ctx in rounds[:7]:
        a(u, ctx)
    state = a.state_dict()
    b = EntropySignal()
    b.load_state_dict(state)
    state["symbols"].fill_(0)  # exported state is a copy
    u, ctx = rounds[7]
    ra, rb = a(u, ctx), b(u, ctx)
    assert torch.equal(ra.scores, rb.scores)
    assert torch.equal(ra.raw["entropy"], rb.raw["entropy"])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["client_ids"] == sb["client_ids"]
    assert torch.equal(sa["symbols"], sb["symbols"])
    torch.testing.assert_close(sa["recent"], sb["recent"], equal_nan=True, rtol=0, atol=0)
    a.reset()
    assert a.state_dict()["client_ids"] == []
    assert a(u, ctx).raw["observations"].sum() == 0


def test_load_rejects_bad_state() -> None:
    sig = EntropySignal()
    with pytest.raises(ValueError, match="keys"):
        sig.load_state_dict({"client_ids": []})
    with pytest.raises(ValueError):
        sig.load_state_dict(
            {
                "client_ids": [1],
                "recent": torch.zeros(1, 8, 3),
                "symbols": torch.zeros(1, 8),
                "dim": 4,
            }
        )


def test_partial_participation(honest_rounds: Rounds) -> None:
    """Clients keyed by id: a client's window only grows in rounds it takes part in."""
    sig = EntropySignal()
    for u, ctx in honest_rounds(7):
        ids = ctx.client_ids
        assert ids is not None
        keep = [i for i in range(20) if i % 2 == 0 or ctx.round % 2 == 0]
        sub = RoundContext(client_ids=tuple(ids[i] for i in keep), round=ctx.round)
        res = sig(u[keep], sub)
    obs = dict(zip(sub.client_ids or (), res.raw["observations"].tolist(), strict=True))
    assert obs[0] == 6.0 and obs[1] == 3.0


def test_deterministic_float32_float64_no_mutation(honest_rounds: Rounds) -> None:
    rounds = list(honest_rounds(6))
    a, b = EntropySignal(), EntropySignal()
    for u, ctx in rounds:
        before = u.clone()
        ra, rb = a(u, ctx), b(u.double(), ctx)
        assert torch.equal(u, before)
        assert torch.equal(ra.scores, rb.scores)


def test_rejects_bad_input() -> None:
    sig = EntropySignal()
    with pytest.raises(InvalidUpdateError, match="repeated"):
        sig(torch.randn(2, 5), RoundContext(client_ids=(1, 1)))
    sig(torch.randn(2, 5))
    with pytest.raises(InvalidUpdateError, match="reset"):
        sig(torch.randn(2, 6))
    bad = torch.randn(3, 5)
    bad[1, 1] = float("nan")
    with pytest.raises(InvalidUpdateError):
        EntropySignal()(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 0},
        {"bits": 31},
        {"window": 1},
        {"min_observations": 1},
        {"min_observations": 9},
        {"full_trust": 0.0},
        {"repeat_tol": -1.0},
        {"neutral": 2.0},
        {"remove_drift": 1},
        {"seed": -3},
    ],
)
def test_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        EntropySignal(**kwargs)  # type: ignore[arg-type]


def test_sketched_projections_and_a_change_of_space() -> None:
    """Large updates are projected through the round sketch; a state whose projections were taken
    in another space (an older checkpoint) keeps its symbols, and its clients' next participation
    starts over instead of emitting a code from a meaningless difference."""
    g = torch.Generator().manual_seed(3)
    d = 5000  # > 4 · 1024: the round sketch is used
    sketched = EntropySignal(sketch_dim=1024)
    exact = EntropySignal(sketch_dim=None)
    assert sketched.space(d) == 1024 and exact.space(d) == d
    u = torch.randn(6, d, generator=g, dtype=torch.float64)
    p_sketch, p_exact = sketched.project(u), exact.project(u)
    assert p_sketch.shape == p_exact.shape == (6, sketched.bits)
    # Unit directions: both projections have squared norm about bits (JL), whatever the space.
    for p in (p_sketch, p_exact):
        assert float((p.pow(2).sum(1) / sketched.bits).mean()) == pytest.approx(1.0, abs=0.35)
    for _ in range(2):
        exact(u + 0.1 * torch.randn(6, d, generator=g, dtype=torch.float64))
    old = exact.state_dict()
    legacy = {k: v for k, v in old.items() if k != "space"}
    sig = EntropySignal(sketch_dim=1024)
    sig.load_state_dict(legacy)  # taken as projections of the updates themselves
    assert sig.state_dict()["space"] == d
    symbols_before = sig.state_dict()["symbols"].clone()
    sig(u, None)
    after = sig.state_dict()
    assert after["space"] == 1024
    # No new symbol this participation (the last stored projection was unusable) ...
    assert torch.equal(after["symbols"], symbols_before)
    # ... and the next one emits a real code again.
    sig(u + 0.1 * torch.randn(6, d, generator=g, dtype=torch.float64), None)
    assert not torch.equal(sig.state_dict()["symbols"], symbols_before)


def test_projections_of_an_earlier_sketch_layout_are_dropped_on_load() -> None:
    g = torch.Generator().manual_seed(3)
    sig = EntropySignal(sketch_dim=16)
    for _ in range(4):
        sig(torch.randn(5, 300, generator=g, dtype=torch.float64))
    state = sig.state_dict()
    assert state["sketch_layout"] == "strided" and state["space"] == 16
    assert bool(torch.isfinite(state["recent"]).any())
    old = EntropySignal(sketch_dim=16)
    old.load_state_dict({k: v for k, v in state.items() if k != "sketch_layout"})
    loaded = old.state_dict()
    assert bool(torch.isnan(loaded["recent"]).all())  # contiguous-run projections: dropped
    assert torch.equal(loaded["symbols"], state["symbols"])  # the behaviour recorded stays
    same = EntropySignal(sketch_dim=16)
    same.load_state_dict(state)
    assert torch.equal(same.state_dict()["recent"].nan_to_num(7.0), state["recent"].nan_to_num(7.0))
