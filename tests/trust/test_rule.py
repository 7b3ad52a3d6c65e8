"""MATLRule ("matl"): the whole trust pipeline as an aggregation rule, alone and in the simulator."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Iterator

import pytest
import torch

from matl.aggregation import RoundContext, available_rules, get_rule, products
from matl.data import load_dataset
from matl.errors import ConfigError
from matl.sim import History, Simulation, SimulationConfig
from matl.trust import MATLRule, Mode0, Mode1, PeerSignal
from matl.trust.rule import DEFAULT_SIGNAL_PARAMS

#: The ``honest_rounds`` fixture (tests/trust/conftest.py): real honest FedAvg updates.
Rounds = Callable[..., Iterator[tuple[torch.Tensor, RoundContext]]]

pytestmark = pytest.mark.usefixtures("single_thread")

N_BYZ = 6  # of the fixture's 20 clients: 30 %


def _sign_flip(u: torch.Tensor, f: int = N_BYZ, scale: float = 4.0) -> torch.Tensor:
    out = u.clone()
    out[:f] = -scale * u[:f]
    return out


# ----------------------------------------------------------------------------- configuration
def test_registered_and_valid_in_a_simulation_config() -> None:
    assert "matl" in available_rules()
    cfg = SimulationConfig(defense="matl", defense_params={"mode": 0, "validators": 3})
    rule = cfg.build_defense()
    assert isinstance(rule, MATLRule) and rule.mode == 0 and rule.validators == 3
    with pytest.raises(ConfigError, match="unknown parameter"):
        SimulationConfig.from_dict({"defense": "matl", "defense_params": {"bogus": 1}})
    assert rule.attack_signature_scope == "signal"
    assert rule.threshold_rule().signature_scope == "signal"
    for bad, match in (
        ({"attack_signature_memory": -1}, "attack_signature_memory must be >= 0"),
        ({"attack_signature_memory": 1.5}, "attack_signature_memory must be an int"),
        ({"oracle_verdict": "yes"}, "oracle_verdict must be a bool"),
        ({"own_signature_cut": 1}, "own_signature_cut must be a bool"),
        ({"release_per_violation": -0.5}, "release_per_violation must be >= 0"),
        ({"threshold_levels": 0}, "levels must be an integer >= 1"),
    ):
        with pytest.raises(ConfigError, match=match):
            SimulationConfig.from_dict({"defense": "matl", "defense_params": bad})
    with pytest.raises(ConfigError, match="signature_scope must be 'round' or 'signal'"):
        SimulationConfig.from_dict(
            {"defense": "matl", "defense_params": {"attack_signature_scope": "client"}}
        )


@pytest.mark.parametrize("mode", [2, 3])
def test_modes_2_and_3_are_not_implemented_yet(mode: int) -> None:
    with pytest.raises(ConfigError, match=r"not implemented yet — Mode 2 \(TEE\) and Mode 3"):
        get_rule("matl", mode=mode)
    with pytest.raises(ConfigError, match="not implemented yet"):
        SimulationConfig.from_dict({"defense": "matl", "defense_params": {"mode": mode}})
    with pytest.raises(ConfigError, match="mode must be one of"):
        get_rule("matl", mode=7)


def test_mode_shorthands_and_top_level_exports() -> None:
    import matl

    assert matl.MATLRule is MATLRule and matl.Mode0 is Mode0 and matl.Mode1 is Mode1
    assert Mode0() == MATLRule(mode=0)
    assert Mode1(validators=3).validators == 3 and Mode1().mode == 1


@pytest.mark.parametrize(
    "params",
    [
        {"mode": 0, "weights": {"pogq": 1.0}},  # no oracle in Mode 0
        {"weights": {"tcdm": -1.0}},
        {"weights": (0.4, 0.3, 0.3)},  # weights name their signals
        {"weights": 5},
        {"signal_params": {"nope": {}}},
        {"signal_params": {"pogq": {"bogus": 1}}},
        {"threshold": "kmeans"},
        {"r0": 2.0},
        {"cartel_weight": 1.5},
        {"validators": 2, "lying_validators": 3},
        {"fallback": "mean"},
        {"restart_on_switch": "yes"},
    ],
)
def test_bad_parameters_raise_config_errors(params: dict) -> None:
    with pytest.raises(ConfigError):
        get_rule("matl", **params)


def test_default_signal_params_merge_key_by_key() -> None:
    rule = MATLRule(mode=0, signal_params={"peer": {"norm_tolerance": 4.0}})
    assert rule.resolved_signal_params()["peer"] == {
        **DEFAULT_SIGNAL_PARAMS["peer"],
        "norm_tolerance": 4.0,
    }


# ------------------------------------------------------------------------------ behaviour
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_honest_rounds_flag_nobody(honest_rounds: Rounds, mode: int, seed: int) -> None:
    rule = MATLRule(mode=mode)
    for model in ("logreg", "mlp"):
        rule.reset()
        for u, ctx in honest_rounds(8, seed=seed, model=model):
            res = rule(u, ctx)
            assert not res.flagged.any(), (model, ctx.round, res.details)
            assert res.details is not None and all(v["trusted"] for v in res.details["verdicts"])
            assert float(res.weights.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("mode", [0, 1])
def test_sign_flippers_are_flagged_with_reasons(honest_rounds: Rounds, mode: int) -> None:
    rule = MATLRule(mode=mode)
    primary = "peer" if mode == 0 else "pogq"
    for u, ctx in honest_rounds(5):
        res = rule(_sign_flip(u), ctx)
        assert res.flagged.tolist() == [True] * N_BYZ + [False] * (20 - N_BYZ)
        assert torch.all(res.weights[:N_BYZ] == 0)
        assert torch.allclose(res.aggregate, res.weights @ _sign_flip(u))
        assert res.details is not None
        bad = res.details["verdicts"][0]
        assert bad["client_id"] == 0 and not bad["trusted"]
        reasons = {r["signal"]: r for r in bad["reasons"]}
        oracle = {"oracle"} if mode == 1 else set()  # PoGQ's own verdict
        blemish = {"blemish"} if mode == 0 else set()  # peer comparison's record of direction
        assert (
            set(reasons)
            == {primary, "tcdm", "entropy", "composite", "cartel", "quarantine", "switch"}
            | oracle
            | blemish
        )
        if mode == 0:  # reversed from their first round: blemished at once
            assert not reasons["blemish"]["passed"] and reasons["blemish"]["threshold"] == -0.5
            assert reasons["blemish"]["value"] <= -0.5
        assert not reasons[primary]["passed"] and reasons[primary]["value"] == 0.0
        if mode == 1:
            assert not reasons["oracle"]["passed"] and reasons["oracle"]["value"] == 0.0
        assert not reasons["composite"]["passed"]
        assert reasons["composite"]["value"] < reasons["composite"]["threshold"]
    # the fourth round of violations quarantined them
    assert sorted(res.details["quarantined"]) == list(range(N_BYZ))


@pytest.mark.parametrize("mode", [0, 1])
def test_split_products_give_the_same_round(
    honest_rounds: Rounds, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    """A large matrix's products run in chunks (matl.aggregation.products); forced on these small
    rounds, the verdicts are the same and the aggregate and scores agree to rounding."""
    single, split = MATLRule(mode=mode), MATLRule(mode=mode)
    for u, ctx in honest_rounds(4):
        flipped = _sign_flip(u)
        a = single(flipped, ctx)
        monkeypatch.setattr(products, "PARALLEL_MIN_ELEMENTS", 0)
        b = split(flipped, ctx)
        monkeypatch.undo()
        assert torch.equal(a.flagged, b.flagged)
        assert a.scores is not None and b.scores is not None
        assert torch.allclose(a.scores, b.scores, atol=1e-6)
        assert torch.allclose(a.aggregate, b.aggregate, rtol=1e-5, atol=1e-7)
    assert bool(a.flagged[:N_BYZ].all())


@pytest.mark.parametrize("oracle", [True, False])
def test_pogq_own_verdict_cuts_what_the_composite_cannot(
    honest_rounds: Rounds, oracle: bool
) -> None:
    """With PoGQ's weight at 0.2 (entropy 0.8) a flipper failing PoGQ alone still has a composite
    of 0.8, above ``safe_score``: the composite never cuts it, PoGQ's own verdict
    (``oracle_verdict``) does."""
    weights = {"pogq": 0.2, "entropy": 0.8}
    rule = MATLRule(mode=1, weights=weights, oracle_verdict=oracle)
    for u, ctx in honest_rounds(3):
        res = rule(_sign_flip(u, scale=1.0), ctx)
        assert res.details is not None
        assert bool((res.scores[:N_BYZ] >= 0.75).all())  # the composite alone cuts nobody
        expected = [oracle] * N_BYZ + [False] * (20 - N_BYZ)
        assert res.flagged.tolist() == expected, ctx.round
        reasons = {r["signal"]: r for r in res.details["verdicts"][0]["reasons"]}
        assert ("oracle" in reasons) == oracle
        if oracle:
            assert not reasons["oracle"]["passed"] and reasons["composite"]["passed"]


def test_mode1_holds_beyond_half_byzantine(honest_rounds: Rounds) -> None:
    """60 % sign flippers: Mode 1 is anchored on validation data and the cluster split does not
    assume an honest majority, so exactly the flippers are flagged."""
    rule = MATLRule(mode=1)
    for u, ctx in honest_rounds(4):
        res = rule(_sign_flip(u, f=12), ctx)
        assert res.flagged.tolist() == [True] * 12 + [False] * 8, ctx.round


def test_attackers_carry_marks_that_honest_clients_do_not(honest_rounds: Rounds) -> None:
    """The reputation book counts the rounds in which a client carried an attack signature
    itself (``attack_signature_memory``): every boosted sign flipper each round, no honest
    client."""
    rule = MATLRule(mode=1)
    for u, ctx in honest_rounds(3):
        rule(_sign_flip(u), ctx)
    clients = rule.state_dict()["reputation"]["clients"]
    assert [clients[c]["marks"] for c in range(20)] == [3] * N_BYZ + [0] * (20 - N_BYZ)
    off = MATLRule(mode=1, attack_signature=None)  # no signature, nothing to count
    for u, ctx in honest_rounds(2):
        off(_sign_flip(u), ctx)
    assert all(st["marks"] == 0 for st in off.state_dict()["reputation"]["clients"].values())


def test_quarantine_and_release(honest_rounds: Rounds) -> None:
    """Client 0 attacks three rounds, then behaves. The third violation quarantines it (weight 0,
    flagged); it is released in the round that completes ``release_after`` consecutive clean
    rounds. (Its first honest rounds are not clean: the temporal signal flags the switch; the
    hold on a lasting switch is off here, see the next test.)"""
    rule = MATLRule(
        mode=1,
        max_violations=3,
        violation_window=3,
        release_after=3,
        release_per_violation=0.0,
        switch_hold=None,
    )
    quarantined, clean, weighted = [], [], []
    for rnd, (u, ctx) in enumerate(honest_rounds(12)):
        res = rule(_sign_flip(u, f=1) if rnd < 3 else u, ctx)
        assert res.details is not None
        reasons = {r["signal"]: r for r in res.details["verdicts"][0]["reasons"]}
        quarantined.append(not reasons["quarantine"]["passed"])
        clean.append(reasons["composite"]["passed"] and reasons["cartel"]["passed"])
        weighted.append(float(res.weights[0]) > 0)
        assert bool(res.flagged[0]) == (quarantined[-1] or not clean[-1])
        assert not res.flagged[1:].any()
    assert clean[:3] == [False] * 3 and quarantined[:3] == [False, False, True]
    release = next(r for r in range(5, 12) if all(clean[r - 2 : r + 1]))
    assert quarantined[2:release] == [True] * (release - 2)
    assert weighted[:release] == [False] * release
    assert not any(quarantined[release:]) and all(weighted[release:])


@pytest.mark.parametrize("hold", [2, None])
def test_a_lasting_switch_holds_the_client(honest_rounds: Rounds, hold: int | None) -> None:
    """Client 0 sends its honest update for four rounds, then its flipped update (unscaled) for
    the rest. Its switch lasts more than one round, so with ``switch_hold=2`` it is held: flagged
    in every round after it, with the ``switch`` reason failing and its id in ``details["held"]``,
    and nobody else is held. Without the hold it is quarantined and released again, like any
    violator."""
    rule = MATLRule(mode=1, switch_hold=hold)
    held_rounds, flagged = [], []
    for rnd, (u, ctx) in enumerate(honest_rounds(12)):
        res = rule(_sign_flip(u, f=1, scale=1.0) if rnd >= 4 else u, ctx)
        assert res.details is not None
        held_rounds.append(0 in res.details["held"])
        assert set(res.details["held"]) <= {0}
        flagged.append(bool(res.flagged[0]))
        reasons = {r["signal"]: r for r in res.details["verdicts"][0]["reasons"]}
        assert ("switch" in reasons) == (hold is not None)
        if hold is not None:
            assert reasons["switch"]["passed"] == (not held_rounds[-1])
    assert not any(held_rounds[:4]) and not any(flagged[:4])
    if hold is None:
        assert not any(held_rounds) and rule.held([0, 1]) == []
    else:
        first = held_rounds.index(True)
        assert first <= 6 and all(held_rounds[first:]) and all(flagged[first:])
        assert rule.held([0, 1, 99]) == [0]
        rule.release([0])
        assert rule.held([0]) == []


def _reversing_rounds(
    rounds: int = 9, n: int = 20, byz: int = 9, d: int = 64
) -> Iterator[tuple[torch.Tensor, RoundContext]]:
    """Constructed rounds: client ``i`` sends its own fixed direction ``b_i`` plus noise (noise
    level rising with ``i``, so honest consistencies spread over about 0.3–0.95); from round 5
    the first ``byz`` clients (45 %) turn against their histories, to ``-0.5 b_i`` and then
    ``-0.25 b_i`` plus noise: consistencies −0.55 to −0.3 at the turn and about −0.55 to +0.02
    after it, and with so many switching at once their robust z-scores stay moderate and several
    temporal scores stay above 0.1."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, d, generator=g)
    base = base / torch.linalg.vector_norm(base, dim=1, keepdim=True)
    noise = torch.linspace(0.3, 1.5, n).unsqueeze(1) / d**0.5
    for rnd in range(rounds):
        u = base + noise * torch.randn(n, d, generator=g)
        if rnd >= 5:
            turn = 0.5 if rnd == 5 else 0.25
            u[:byz] = -turn * base[:byz] + torch.randn(byz, d, generator=g) / d**0.5
        yield u, RoundContext(client_ids=tuple(range(n)), round=rnd)


@pytest.mark.parametrize("reversal", [-0.2, None])
def test_a_switch_against_the_own_history_counts_as_failed(reversal: float | None) -> None:
    """45 % of the clients turn against their own histories at once. With ``switch_reversal``
    (default −0.2) a switch with a consistency below it counts as failed outright, so every
    switcher is held from its second switching round on; without it only the temporal score
    counts, and the switchers whose z-scores the crowd kept moderate are never held. Honest
    clients are held in neither."""
    rule = MATLRule(mode=0, switch_reversal=reversal)
    held: list[set[int]] = []
    for u, ctx in _reversing_rounds():
        res = rule(u, ctx)
        assert res.details is not None
        held.append(set(res.details["held"]))
    switchers = set(range(9))
    assert all(h <= switchers for h in held)
    assert held[:6] == [set()] * 6
    if reversal is None:
        assert held[-1] and held[-1] != switchers
    else:
        assert all(h == switchers for h in held[6:])


def test_a_reversal_counts_as_a_switch_whatever_its_z_score() -> None:
    """When 45 % of the clients turn at once, the robust z-scores of their second turned round
    can stay under z₀ (2.4–3.0 on MNIST, seed 16) although their consistency is still about
    −0.5, which broke the hold's streak of switches. Constructed TCDM results: a client with a
    history whose consistency is below ``switch_reversal`` counts as switched and failed
    whatever its z-score; a low but positive consistency, or no history, does not."""
    from matl.trust.base import SignalResult

    raw = {
        "consistency_z": torch.tensor([2.5, 2.5, 2.5, 6.0, 2.5], dtype=torch.float64),
        "consistency": torch.tensor([-0.4, 0.2, -0.4, 0.1, -0.07], dtype=torch.float64),
        "has_history": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64),
        "temporal": torch.tensor([0.8, 0.8, 1.0, 0.0, 0.8], dtype=torch.float64),
    }
    results = {"tcdm": SignalResult(scores=torch.ones(5, dtype=torch.float64), raw=raw)}
    # The default margin -0.2: a client barely against its history (-0.07, as honest clients
    # were in round 2 of a scaling run with TCDM alone) is not reversed; at 0 it is.
    for reversal, last in ((-0.2, False), (0.0, True)):
        switched, failed = MATLRule(mode=0, switch_reversal=reversal)._switch_flags(results)
        assert switched is not None and failed is not None
        assert switched.tolist() == [True, False, False, True, last]
        assert failed.tolist() == [True, False, False, True, last]
    assert MATLRule().switch_reversal == -0.2
    switched, failed = MATLRule(mode=0, switch_reversal=None)._switch_flags(results)
    assert switched is not None and failed is not None
    assert switched.tolist() == [False, False, False, True, False]
    assert failed.tolist() == [False, False, False, True, False]


def test_switch_reversal_is_checked() -> None:
    assert MATLRule(switch_reversal=-0.2).switch_reversal == -0.2
    for bad in (1.5, -2.0, "0", True, float("nan")):
        with pytest.raises(ConfigError, match="switch_reversal"):
            MATLRule(switch_reversal=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("restart", [True, False])
def test_a_switch_restarts_the_pogq_history(honest_rounds: Rounds, restart: bool) -> None:
    """Six sleepers send their honest updates for six rounds, then flip them (unscaled, so no norm
    guard). TCDM's temporal test sees the switch; with ``restart_on_switch`` the sleepers lose
    their PoGQ history in that round and PoGQ scores them as the flippers they now are, instead of
    letting the honest rounds vouch for them while the running values catch up."""
    rule = MATLRule(mode=1, restart_on_switch=restart)
    pogq: list[list[float]] = []
    for rnd, (u, ctx) in enumerate(honest_rounds(10)):
        if rnd >= 6:
            u[:6] = -u[:6]
        res = rule(u, ctx)
        assert res.details is not None
        verdicts = res.details["verdicts"]
        pogq.append([r["value"] for v in verdicts for r in v["reasons"] if r["signal"] == "pogq"])
        if rnd == 6:
            assert bool(res.flagged[:6].all())  # TCDM catches the switch either way
    state = rule._engine.signals["pogq"].state_dict()
    assert min(min(p[6:]) for p in pogq[:6]) == 1.0  # honest clients keep full PoGQ scores
    sleepers = [p[:6] for p in pogq[6:]]
    if restart:
        assert all(max(p) < 0.375 for p in sleepers)  # failing from the switch round on
        assert float(state["cos_weight"][:6].max()) < float(state["cos_weight"][6:].min())
        # the switch takes the consensus credit too
        assert float(state["credit"][:6].max()) < 0.5 <= float(state["credit"][6:].min())
    else:
        assert min(sleepers[0]) > 0.9  # the honest history still vouches in the switch round


def test_identical_updates_form_a_cartel(honest_rounds: Rounds) -> None:
    rule = MATLRule(mode=0, cartel_min_rounds=3)
    found = []
    for u, ctx in honest_rounds(4):
        u[:4] = u[4:].mean(dim=0)  # four sybils replay one plausible update
        res = rule(u, ctx)
        assert res.details is not None
        found.append(res.details["cartels"])
        assert res.flagged[:4].all() and not res.flagged[4:].any()
    assert found == [[], [], [[0, 1, 2, 3]], [[0, 1, 2, 3]]]
    cartel = next(r for r in res.details["verdicts"][0]["reasons"] if r["signal"] == "cartel")
    assert cartel == {"signal": "cartel", "value": 4.0, "threshold": 3.0, "passed": False}


def test_cartel_members_are_down_weighted(honest_rounds: Rounds) -> None:
    """With the other signals' weights at zero only the cartel detector sees the sybils: they keep
    ``cartel_weight`` of their weight (until reputation quarantines them)."""
    rule = MATLRule(
        mode=0, weights={"peer": 1.0}, cartel_min_rounds=1, cartel_weight=0.5, max_violations=5
    )
    u, ctx = next(honest_rounds(1))
    u[:3] = u[3:].mean(dim=0)
    res = rule(u, ctx)
    assert res.flagged[:3].all() and not res.flagged[3:].any()
    # weight ∝ r·c·m: peer scores are 1; new clients r = r0 then one EMA step
    w = res.weights.double()
    assert float(w[0] / w[3]) == pytest.approx(0.5 * (0.5 * 0.5) / (0.8 * 0.5 + 0.2), rel=1e-6)


@pytest.mark.parametrize("lie", ["invert", "random"])
def test_committee_outvotes_a_lying_validator(honest_rounds: Rounds, lie: str) -> None:
    rule = MATLRule(mode=1, validators=4, lying_validators=1, lie=lie)  # type: ignore[arg-type]
    for u, ctx in honest_rounds(4):
        res = rule(_sign_flip(u), ctx)
        assert res.flagged.tolist() == [True] * N_BYZ + [False] * (20 - N_BYZ)
        assert res.details is not None
        committee = next(
            r for r in res.details["verdicts"][-1]["reasons"] if r["signal"] == "committee"
        )
        assert committee["passed"] and committee["value"] >= 2 / 3
    reputation = res.details["validator_reputation"]
    assert min(reputation[:3]) > 0.99 and reputation[3] < 0.75


@pytest.mark.parametrize("lie", ["invert", "random"])
def test_a_lying_validators_pogq_neither_fails_the_honest_nor_spares_a_flipper(
    honest_rounds: Rounds, lie: str
) -> None:
    """A liar falsifies its PoGQ scores and exemptions as it does its report. One liar of four
    (an inverting one reports PoGQ 0 for every honest client and exempts everyone): honest
    clients are not flagged, the flippers' PoGQ evidence stays low, and a lone unblemished
    failure is still spared by the oracle quorum, as with four honest validators."""
    rule = MATLRule(mode=1, validators=4, lying_validators=1, lie=lie)  # type: ignore[arg-type]
    lone = MATLRule(
        mode=1,
        oracle_quorum=0.1,
        validators=4,
        lying_validators=1,
        lie=lie,  # type: ignore[arg-type]
        signal_params=UNBLEMISHED,
    )
    for u, ctx in honest_rounds(4):
        res = rule(_sign_flip(u), ctx)
        assert res.flagged.tolist() == [True] * N_BYZ + [False] * (20 - N_BYZ), ctx.round
        assert res.details is not None
        for verdict in res.details["verdicts"]:
            pogq = next(r for r in verdict["reasons"] if r["signal"] == "pogq")
            flipper = verdict["client_id"] < N_BYZ
            assert pogq["value"] <= 0.1 if flipper else pogq["value"] > pogq["threshold"]
        spared = lone(_sign_flip(u, f=1, scale=1.0), ctx)
        assert not spared.flagged.any(), ctx.round
        assert spared.details is not None
        assert spared.details["pogq_signature"]["exempt"] == 0


def test_pogqs_consensus_is_read_with_the_power_of_the_round_that_voted(
    honest_rounds: Rounds,
) -> None:
    """PoGQ's own verdict reads the validators' PoGQ through their power-weighted median with the
    power they voted with, not the power the vote then moved."""
    rule = MATLRule(mode=1, validators=4, lying_validators=1, lie="random")  # type: ignore[arg-type]
    committee = rule._engine.committee
    assert committee is not None
    powers: list[torch.Tensor] = []
    consensus = committee.consensus

    def recorded(reports: torch.Tensor) -> torch.Tensor:
        powers.append(committee.power().clone())
        return consensus(reports)

    object.__setattr__(committee, "consensus", recorded)
    moved = 0
    for u, ctx in honest_rounds(4):
        before = committee.power().clone()
        powers.clear()
        rule(_sign_flip(u), ctx)
        assert len(powers) == 2  # PoGQ's consensus and the reports' (in the vote)
        assert all(torch.equal(p, before) for p in powers), ctx.round
        moved += not torch.equal(committee.power(), before)
    assert moved  # the vote did move the power: the test can tell the two apart


@pytest.mark.parametrize("fallback", ["skip", "median"])
def test_a_third_or_more_lying_validators_block_every_verdict(
    honest_rounds: Rounds, fallback: str
) -> None:
    """Two inverting liars of four (1/2 of the power): no quorum on anyone, so nobody is trusted
    and the rule falls back."""
    rule = MATLRule(mode=1, validators=4, lying_validators=2, fallback=fallback)  # type: ignore[arg-type]
    u, ctx = next(honest_rounds(1))
    attacked = _sign_flip(u)
    res = rule(attacked, ctx)
    assert res.details is not None and res.details["fallback"]
    assert res.flagged.all()
    assert torch.allclose(res.weights, torch.full((20,), 1 / 20, dtype=res.weights.dtype))
    expected = torch.zeros(u.shape[1]) if fallback == "skip" else attacked.median(dim=0).values
    assert torch.equal(res.aggregate, expected.to(u.dtype))
    assert res.details["validator_reputation"] == [1.0] * 4  # no decided client, no change


def test_state_round_trip_and_reset(honest_rounds: Rounds) -> None:
    rounds = [(_sign_flip(u, f=2), ctx) for u, ctx in honest_rounds(6, model="mlp")]
    a = MATLRule(mode=1, validators=3, lying_validators=1)
    for u, ctx in rounds[:5]:
        a(u, ctx)
    b = MATLRule(mode=1, validators=3, lying_validators=1)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    u, ctx = rounds[5]
    ra, rb = a(u, ctx), b(u, ctx)
    for field in ("aggregate", "weights", "flagged", "scores"):
        assert torch.equal(getattr(ra, field), getattr(rb, field)), field
    assert ra.details == rb.details
    # reset forgets everything: the same as a fresh rule
    a.reset()
    fresh = MATLRule(mode=1, validators=3, lying_validators=1)
    u0, ctx0 = rounds[0]
    assert torch.equal(a(u0, ctx0).weights, fresh(u0, ctx0).weights)
    assert a.state_dict()["reputation"] == fresh.state_dict()["reputation"]
    with pytest.raises(ValueError, match="unknown keys"):
        a.load_state_dict({"bogus": {}})


def test_deepcopy_is_independent(honest_rounds: Rounds) -> None:
    """Defense-aware attacks evaluate deep copies of the rule: they must not share state."""
    rule = MATLRule(mode=0)
    u, ctx = next(honest_rounds(1))
    clone = copy.deepcopy(rule)
    clone(_sign_flip(u), ctx)
    assert rule.state_dict()["reputation"] == {"clients": {}}
    assert dataclasses.replace(rule, k=4.0).k == 4.0


def test_without_context_mode0_works() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 50, generator=g) + 0.1 * torch.randn(12, 50, generator=g)
    res = MATLRule(mode=0)(u)
    assert res.aggregate.shape == (50,) and not res.flagged.any()
    with pytest.raises(ConfigError, match="pogq needs"):
        MATLRule(mode=1)(u)


# ----------------------------------------------------------------------------- simulation
SIM = {
    "dataset": "synthetic",
    "dataset_options": {"samples": 3000, "test_samples": 500, "dim": 16, "classes": 4},
    "model": "mlp",
    "hidden": 16,
    "clients": 12,
    "rounds": 6,
    "local_steps": 5,
    "lr": 0.1,
    "partition": "iid",
}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", samples=3000, test_samples=500, dim=16, classes=4)


def _sim(data, **overrides) -> History:
    return Simulation(SimulationConfig.from_dict({**SIM, **overrides}), dataset=data).run()


@pytest.mark.parametrize("mode", [0, 1])
def test_simulation_detects_sign_flipping_and_keeps_accuracy(data, mode: int) -> None:
    clean = _sim(data, defense="fedavg")
    attack = {"attack": "sign_flip", "attack_params": {"scale": 4}, "byzantine_fraction": 0.3}
    fedavg = _sim(data, defense="fedavg", **attack)
    h = _sim(data, defense="matl", defense_params={"mode": mode}, **attack)
    detected = sum(len(set(r.flagged) & set(r.byzantine)) for r in h.rounds)
    byzantine = sum(len(r.byzantine) for r in h.rounds)
    false_pos = sum(len(set(r.flagged) - set(r.byzantine)) for r in h.rounds)
    assert detected / byzantine >= 0.9 and false_pos == 0
    final = h.rounds[-1].accuracy
    assert final is not None and clean.rounds[-1].accuracy is not None
    assert final >= clean.rounds[-1].accuracy - 0.03
    assert fedavg.rounds[-1].accuracy is not None and final > fedavg.rounds[-1].accuracy + 0.2
    # verdicts are recorded for the flagged clients only, and survive the JSON round trip
    for r in h.rounds:
        assert r.verdicts is not None
        assert sorted(v["client_id"] for v in r.verdicts) == sorted(r.flagged)
        assert all(not v["trusted"] and v["reasons"] for v in r.verdicts)
    again = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again.rounds[0].verdicts == h.rounds[0].verdicts


def test_simulation_mode1_with_45_percent_byzantine_and_a_lying_validator(data) -> None:
    """The conditional tolerance: 45 % Byzantine clients, one of four validators lying."""
    h = _sim(
        data,
        clients=20,
        defense="matl",
        defense_params={"mode": 1, "validators": 4, "lying_validators": 1},
        attack="sign_flip",
        attack_params={"scale": 4},
        byzantine_fraction=0.45,
    )
    assert all(sorted(r.flagged) == sorted(r.byzantine) for r in h.rounds)
    assert h.rounds[-1].accuracy is not None and h.rounds[-1].accuracy > 0.85


@pytest.mark.parametrize("mode", [0, 1])
def test_simulation_without_attack_flags_nobody(data, mode: int) -> None:
    for seed in (0, 1, 2):
        h = _sim(data, defense="matl", defense_params={"mode": mode}, seed=seed)
        assert all(r.flagged == [] and r.verdicts == [] for r in h.rounds), seed


def test_other_rules_record_no_verdicts(data) -> None:
    h = _sim(data, defense="median", rounds=1)
    assert h.rounds[0].verdicts is None


# ------------------------------------------------------------------------ attack signature
def _round_with_outlier(cos_to_centre: float) -> tuple[torch.Tensor, RoundContext]:
    """19 honest updates around one direction and one whose cosine to it is ``cos_to_centre``
    (same norm as a typical honest update)."""
    g = torch.Generator().manual_seed(0)
    d, n = 64, 20
    m = torch.randn(d, generator=g)
    honest = m + 0.8 * torch.randn(n - 1, d, generator=g) * m.norm() / d**0.5
    perp = torch.randn(d, generator=g)
    perp -= (perp @ m) / (m @ m) * m
    c = cos_to_centre
    odd = c * m / m.norm() + (1 - c * c) ** 0.5 * perp / perp.norm()
    u = torch.cat([honest, (odd * honest.norm(dim=1).median()).unsqueeze(0)])
    return u, RoundContext(client_ids=tuple(range(n)), round=0)


def test_a_mild_lone_outlier_is_not_an_attack_but_a_failed_signal_is() -> None:
    """Mode 0, one round: a client pointing slightly away from the crowd (peer score 0.33,
    composite 0.73) is cut by the two-cluster split without the attack-signature guard, and not
    with it (default 0.1): no client failed a signal outright. One pointing clearly away (peer
    score 0) is flagged either way. (Judged as a credited client, ``uncredited_shift`` 0: in its
    first round the engine judges a client half a typical cosine more strictly, and this one
    fails outright — see the end.)"""
    lenient = {"peer": {"uncredited_shift": 0.0}}
    u, ctx = _round_with_outlier(-0.15)
    res = MATLRule(mode=0, signal_params=lenient)(u, ctx)
    assert res.details is not None
    peer = next(r for r in res.details["verdicts"][-1]["reasons"] if r["signal"] == "peer")
    assert 0.1 < peer["value"] < 0.375  # precondition: a mild outlier, below the safe score
    assert not res.flagged.any() and res.details["decision"]["signed"] is False
    assert res.weights[-1] < res.weights[:-1].min()  # still weighted down by its composite
    assert res.flagged.tolist() == [False] * 19 + [False]
    unguarded = MATLRule(mode=0, attack_signature=None, signal_params=lenient)(u, ctx)
    assert unguarded.flagged.tolist() == [False] * 19 + [True]
    strict = MATLRule(mode=0)(u, ctx)  # uncredited: direction term cos/c̄ - 0.5 + 0.5 <= 0
    assert strict.details is not None and strict.details["decision"]["signed"] is True
    assert strict.flagged.tolist() == [False] * 19 + [True]
    u, ctx = _round_with_outlier(-0.6)
    res = MATLRule(mode=0, signal_params=lenient)(u, ctx)
    assert res.details is not None and res.details["decision"]["signed"] is True
    assert res.flagged.tolist() == [False] * 19 + [True]


def test_attack_signature_is_validated() -> None:
    with pytest.raises(ConfigError, match="signature"):
        MATLRule(attack_signature=2.0)


@pytest.mark.parametrize("restart", [True, False])
def test_a_switch_clears_the_peer_blemish(honest_rounds: Rounds, restart: bool) -> None:
    """Mode 0: six clients send their updates reversed from the first round (blemished at once,
    reason ``blemish``), then mend their ways in round 5. TCDM's temporal test sees the switch;
    with ``restart_on_switch`` the peer record forgets them, so the blemish goes and their
    honest rounds count, instead of keeping them out for good."""
    rule = MATLRule(mode=0, restart_on_switch=restart)
    blemish: list[list[bool]] = []
    for rnd, (u, ctx) in enumerate(honest_rounds(10, scheme="dirichlet")):
        if rnd < 5:
            u[:6] = -u[:6]
        res = rule(u, ctx)
        assert res.details is not None
        verdicts = res.details["verdicts"]
        blemish.append(
            [not r["passed"] for v in verdicts for r in v["reasons"] if r["signal"] == "blemish"]
        )
    assert all(all(b[:6]) and not any(b[6:]) for b in blemish[:5])
    state = rule._engine.signals["peer"].state_dict()
    assert float(state["vouched"][6:].min()) == 1.0  # the honest clients are vouched for
    if restart:
        assert not any(any(b) for b in blemish[5:])  # the switch round forgot it
        assert float(state["low"][:6].min()) == 0.0
    else:
        assert all(all(b[:6]) for b in blemish[5:])  # kept for good
        assert float(state["low"][:6].max()) <= -0.5


# ------------------------------------------------------------------------- oracle quorum
#: PoGQ without its blemish: a flipper then fails PoGQ as an honest client that keeps raising the
#: validation loss does, and only the quorum or the norm guard can make it carry the signature.
UNBLEMISHED = {"pogq": {"consensus_blemish": None}}


@pytest.mark.parametrize("validators", [1, 3])
def test_a_lone_pogq_failure_carries_no_signature_under_the_oracle_quorum(
    honest_rounds: Rounds, validators: int
) -> None:
    """``oracle_quorum`` 0.1 of 20 clients: PoGQ carries the attack signature only when at least
    two clients fail it (or an exempt one does, below). A lone unblemished failure at an honest
    norm, round after round, is not cut and never marked, is weighted below every honest client,
    and the round records why; without the quorum it is cut. Two such failures meet the quorum and
    are both cut."""
    lone_rule = MATLRule(
        mode=1, oracle_quorum=0.1, validators=validators, signal_params=UNBLEMISHED
    )
    plain_rule = MATLRule(
        mode=1, oracle_quorum=0.0, validators=validators, signal_params=UNBLEMISHED
    )
    pair_rule = MATLRule(
        mode=1, oracle_quorum=0.1, validators=validators, signal_params=UNBLEMISHED
    )
    for u, ctx in honest_rounds(4):
        attacked = _sign_flip(u, f=1, scale=1.0)
        lone = lone_rule(attacked, ctx)
        assert lone.details is not None
        pogq = next(r for r in lone.details["verdicts"][0]["reasons"] if r["signal"] == "pogq")
        assert pogq["value"] <= 0.1  # precondition: it fails PoGQ outright
        assert not lone.flagged.any(), ctx.round
        assert lone.weights[0] < lone.weights[1:].min()
        assert lone.details["pogq_signature"] == {
            "failing": 1,
            "needed": 2,
            "exempt": 0,
            "carried": False,
        }
        plain = plain_rule(attacked, ctx)
        assert plain.flagged.tolist() == [True] + [False] * 19, ctx.round
        assert plain.details is not None and "pogq_signature" not in plain.details
        pair = pair_rule(_sign_flip(u, f=2, scale=1.0), ctx)
        assert pair.flagged.tolist() == [True] * 2 + [False] * 18, ctx.round
    marks = lone_rule.state_dict()["reputation"]["clients"]
    assert all(marks[c]["marks"] == 0 for c in range(20))
    assert plain_rule.state_dict()["reputation"]["clients"][0]["marks"] == 4


def test_the_oracle_quorum_is_no_gate_in_small_rounds(honest_rounds: Rounds) -> None:
    """With 12 clients ⌈0.08 · 12⌉ = 1: one failure is a quorum, and the lone flipper is cut as
    without the quorum."""
    rule = MATLRule(mode=1, signal_params=UNBLEMISHED)
    for u, ctx in honest_rounds(2, n=12):
        res = rule(_sign_flip(u, f=1, scale=1.0), ctx)
        assert res.flagged.tolist() == [True] + [False] * 11, ctx.round
        assert res.details is not None and res.details["pogq_signature"]["carried"]


def test_the_oracle_quorum_leaves_mode_0_alone(honest_rounds: Rounds) -> None:
    """Mode 0 has no PoGQ: the quorum changes nothing and records nothing."""
    rules = [MATLRule(mode=0, oracle_quorum=q) for q in (0.0, 0.5)]
    for u, ctx in honest_rounds(3):
        a, b = (rule(_sign_flip(u), ctx) for rule in rules)
        assert torch.equal(a.flagged, b.flagged) and torch.equal(a.aggregate, b.aggregate)
        assert a.details is not None and "pogq_signature" not in a.details


@pytest.mark.parametrize("validators", [1, 3])
@pytest.mark.parametrize(
    ("scale", "params"), [(4.0, UNBLEMISHED), (1.0, None)], ids=["boosted", "blemished"]
)
def test_a_lone_boosted_or_blemished_failure_still_carries_the_signature(
    honest_rounds: Rounds, validators: int, scale: float, params: dict | None
) -> None:
    """Under the quorum a lone flipper is still cut when it is boosted beyond PoGQ's norm guard
    (4 × an honest norm, κ = 3: an update the aggregate would not bound never passes on the
    count) or blemished (it pointed against the validated consensus from its first round)."""
    rule = MATLRule(mode=1, oracle_quorum=0.1, validators=validators, signal_params=params)
    for u, ctx in honest_rounds(3):
        res = rule(_sign_flip(u, f=1, scale=scale), ctx)
        assert res.flagged.tolist() == [True] + [False] * 19, ctx.round


@pytest.mark.parametrize("quorum", [-0.1, 1.5, "0.1", math.nan])
def test_oracle_quorum_is_checked(quorum: object) -> None:
    with pytest.raises(ConfigError, match="oracle_quorum"):
        MATLRule(oracle_quorum=quorum)  # type: ignore[arg-type]


@pytest.mark.parametrize("validators", [1, 3])
def test_a_round_another_signal_signs_still_spares_a_lone_pogq_failure(
    honest_rounds: Rounds, validators: int
) -> None:
    """Four copies of one update form a tight group (TCDM's community test fails them outright, so
    the round carries an attack signature) while one unblemished client fails PoGQ alone: the cut
    takes the group and spares the lone failure, with one validator and with a committee (whose
    validators vote with the round's guard); without the quorum the lone failure is cut too."""
    rules = {
        q: MATLRule(mode=1, oracle_quorum=q, validators=validators, signal_params=UNBLEMISHED)
        for q in (0.1, 0.0)
    }
    for u, ctx in honest_rounds(3):
        u[0] = -u[0]
        u[17] = u[18] = u[19] = u[16]
        res = {q: rule(u, ctx) for q, rule in rules.items()}
        group = [False] * 16 + [True] * 4
        assert res[0.1].flagged.tolist() == [False, *group[1:]], ctx.round
        assert res[0.0].flagged.tolist() == [True, *group[1:]], ctx.round


def test_mode0_reads_the_peer_centre_ahead_without_changing_a_bit() -> None:
    """The engine reads peer comparison's products with its centre in the round's sketch pass
    (PeerSignal.prepare) when the last round had no tight group: the rounds come out the same,
    bit for bit, as an engine that never reads ahead — through a sign flip and a cartel round."""
    gen = torch.Generator().manual_seed(3)
    n, d = 30, 5000  # d > 4 · 1024: the round has a real sketch pass to share
    base = torch.randn(d, generator=gen)
    ahead, plain = MATLRule(mode=0), MATLRule(mode=0)
    peer = ahead._engine.signals["peer"]
    reads: list[bool] = []

    def counted(*args: object) -> bool:
        done = PeerSignal.prepare(peer, *args)  # type: ignore[arg-type]
        reads.append(done)
        return done

    object.__setattr__(peer, "prepare", counted)
    object.__setattr__(plain._engine.signals["peer"], "prepare", lambda *args: False)
    for rnd in range(5):
        u = base + torch.randn(n, d, generator=gen)
        if rnd >= 1:
            u[:4] = -u[:4]
        if rnd == 2:
            u[4:10] = -3.0 * base + 1e-3 * torch.randn(6, d, generator=gen)
        ctx = RoundContext(client_ids=tuple(range(n)), round=rnd)
        a, b = ahead(u, ctx), plain(u, ctx)
        assert torch.equal(a.aggregate, b.aggregate)
        assert torch.equal(a.weights, b.weights)
        assert torch.equal(a.flagged, b.flagged)
        assert a.scores is not None and b.scores is not None
        assert torch.equal(a.scores, b.scores)
        if rnd >= 1:
            assert bool(a.flagged[:4].all())
    # Read ahead in every round but the one after the cartel's.
    assert reads == [True, True, True, False, True]


def test_a_round_refused_by_the_input_check_keeps_no_read_ahead() -> None:
    """The peer centre's products are read before the input check; when the check refuses the
    round (a NaN), nothing read ahead outlives it: the rule pickles, and the next round comes
    out as in an engine that never read ahead."""
    import pickle

    from matl.errors import InvalidUpdateError

    gen = torch.Generator().manual_seed(4)
    n, d = 30, 5000
    base = torch.randn(d, generator=gen)
    ahead, plain = MATLRule(mode=0), MATLRule(mode=0)
    peer = ahead._engine.signals["peer"]
    bad = base + torch.randn(n, d, generator=gen)
    bad[3, 17] = float("nan")
    ctx0 = RoundContext(client_ids=tuple(range(n)), round=0)
    assert peer.prepare(bad, ctx0, 1024, 0)  # the engine's own read-ahead would succeed too
    peer.discard_primed()
    with pytest.raises(InvalidUpdateError, match=r"NaN|non-finite"):
        ahead(bad, ctx0)
    assert peer._primed is None
    pickle.dumps(ahead)
    u = base + torch.randn(n, d, generator=gen)
    ctx1 = RoundContext(client_ids=tuple(range(n)), round=1)
    a, b = ahead(u, ctx1), plain(u, ctx1)
    assert torch.equal(a.aggregate, b.aggregate) and torch.equal(a.flagged, b.flagged)


def _wide_round(n: int, seed: int) -> tuple[torch.Tensor, RoundContext]:
    """A round of ``n`` small random updates around a shared direction for a logistic regression
    of 8 200 parameters (a real sketch at width 1024), with a validation batch."""
    from matl.models import LogisticRegression

    model = LogisticRegression((819,), 10)
    g = torch.Generator().manual_seed(seed)
    theta = model.init(g)
    d = theta.numel()
    u = 0.01 * torch.randn(d, generator=g) + 0.01 * torch.randn(n, d, generator=g)
    x = torch.randn(64, 819, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    ctx = RoundContext(
        client_ids=tuple(range(n)), round=0, global_params=theta, validation=(x, y), model=model
    )
    return u, ctx


def test_mode1_consensus_reads_the_round_sketch_the_primed_pass_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a real sketch (d > 4k) PoGQ's consensus cosines read the round's sketch that the
    engine's primed pass computed: no other sketch pass runs in the round."""
    import matl.trust.sketch as sketch

    u, ctx = _wide_round(40, 0)
    rule = MATLRule(mode=1, signal_params={"pogq": {"path": "fast"}})
    passes: list[int] = []
    plain = sketch._sketch_and_norms

    def counted(*args: object) -> object:
        passes.append(1)
        return plain(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sketch, "_sketch_and_norms", counted)
    res = rule(u, ctx)
    assert passes == []  # the primed pass (sketch_norms_gain) served every reader
    exact = MATLRule(mode=1, signal_params={"pogq": {"path": "exact"}})
    exact(u.clone(), ctx)
    assert passes == [1]  # not primed on the exact path: the engine's own sketch pass, once
    cos = res.details["verdicts"]
    assert len(cos) == 40
    verdict = next(v for v in cos if v["client_id"] == 0)
    assert any(r["signal"] == "pogq" for r in verdict["reasons"])


def test_calls_without_a_context_are_successive_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a context the engine counts its rounds, so the row subsamples beyond
    ``center_rows`` (innovation and peer centres) are drawn afresh each round."""
    import matl.trust.innovation as innovation

    seen: list[int] = []
    plain = innovation.sampled_rows

    def spy(pool: torch.Tensor, limit: int | None, seed: int, rnd: int, stream: int) -> object:
        seen.append(rnd)
        return plain(pool, limit, seed, rnd, stream)

    monkeypatch.setattr(innovation, "sampled_rows", spy)
    rule = MATLRule(mode=0, signal_params={"tcdm": {"innovation": {"center_rows": 5}}})
    u, _ = _wide_round(12, 1)
    for _ in range(3):
        rule(u.clone())
    assert seen == [0, 1, 2]
    rule.reset()
    rule(u.clone())
    assert seen[-1] == 0
