"""Composite score and the adaptive, no-attack-guarded threshold."""

from __future__ import annotations

import pytest
import torch

from matl.errors import ConfigError
from matl.trust.base import FAILED, SignalResult
from matl.trust.composite import (
    DEFAULT_WEIGHTS,
    AdaptiveThreshold,
    combine,
    lowest_signal_score,
    mode_weights,
    signal_lows,
    signal_reasons,
    verdicts,
)


def _res(values: list[float]) -> SignalResult:
    return SignalResult(scores=torch.tensor(values, dtype=torch.float64))


def test_default_weights() -> None:
    assert DEFAULT_WEIGHTS == {"pogq": 0.4, "tcdm": 0.3, "entropy": 0.3}
    assert mode_weights(1) == DEFAULT_WEIGHTS
    assert mode_weights(0) == {"peer": 0.4, "tcdm": 0.3, "entropy": 0.3}


def test_combine_is_the_normalised_weighted_sum() -> None:
    sig = {"pogq": _res([1.0, 0.0]), "tcdm": _res([0.5, 0.5]), "entropy": _res([0.0, 1.0])}
    c = combine(sig, DEFAULT_WEIGHTS)
    assert c.dtype == torch.float64
    assert torch.allclose(c, torch.tensor([0.4 + 0.15, 0.15 + 0.3], dtype=torch.float64))
    # weights need not sum to 1; zero-weight signals need not be present
    c2 = combine(
        {"pogq": _res([1.0, 0.0]), "tcdm": _res([0.5, 0.5])}, {"pogq": 2, "tcdm": 2, "x": 0}
    )
    assert torch.allclose(c2, torch.tensor([0.75, 0.25], dtype=torch.float64))


@pytest.mark.parametrize(
    "weights", [{}, {"pogq": -1.0}, {"pogq": 0.0}, {"pogq": float("nan")}, {"pogq": True}]
)
def test_combine_rejects_bad_weights(weights: dict) -> None:
    with pytest.raises(ConfigError):
        combine({"pogq": _res([1.0])}, weights)


def test_combine_names_a_missing_signal() -> None:
    with pytest.raises(ConfigError, match="'entropy'"):
        combine({"pogq": _res([1.0])}, {"pogq": 1.0, "entropy": 1.0})


@pytest.mark.parametrize("method", ["cluster", "mad"])
@pytest.mark.parametrize("n", [5, 10, 20, 50, 200])
def test_no_attack_guard_flags_nobody_within_min_gap(method: str, n: int) -> None:
    """The stated guarantee: scores spanning less than ``min_gap`` are never split, whatever
    their shape, for both methods and even far below the safe score."""
    rule = AdaptiveThreshold(method=method, safe_score=1.0)  # type: ignore[arg-type]
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        for base in (0.9, 0.5, 0.2):
            for shape in (
                (0.5 + 0.12 * torch.randn(n, generator=g, dtype=torch.float64)).clamp(0, 1),
                torch.rand(n, generator=g, dtype=torch.float64),
                torch.rand(n, generator=g, dtype=torch.float64) ** 4,
                (torch.rand(n, generator=g) < 0.1).to(torch.float64),  # a lone low outlier
            ):
                scores = base - 0.149 * shape
                d = rule.decide(scores)
                assert not d.flagged.any(), (seed, base, d)


@pytest.mark.parametrize("n", [10, 20, 50, 200])
def test_cluster_guard_on_wide_unimodal_honest_scores(n: int) -> None:
    """Beyond ``min_gap``: a Gaussian spread of σ = 0.05 (about the honest composite spread
    measured on the synthetic task) is not split."""
    rule = AdaptiveThreshold()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        scores = (0.9 + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)).clamp(0, 1)
        d = rule.decide(scores)
        assert not d.flagged.any(), (seed, d)


def test_identical_scores_flag_nobody() -> None:
    for method in ("cluster", "mad"):
        d = AdaptiveThreshold(method=method).decide(torch.full((10,), 0.3))  # type: ignore[arg-type]
        assert not d.flagged.any() and not d.separated


@pytest.mark.parametrize("n_bad", [1, 3, 6, 9])
def test_cluster_split_flags_the_low_group_even_as_a_majority(n_bad: int) -> None:
    g = torch.Generator().manual_seed(0)
    honest = 0.8 + 0.03 * torch.randn(15 - n_bad, generator=g, dtype=torch.float64)
    bad = 0.3 + 0.03 * torch.randn(n_bad, generator=g, dtype=torch.float64)
    scores = torch.cat([bad, honest])
    d = AdaptiveThreshold().decide(scores)
    assert d.separated
    assert d.flagged.tolist() == [True] * n_bad + [False] * (15 - n_bad)
    assert 0.3 < d.threshold < 0.8


def test_mad_rule_flags_low_outliers_under_an_honest_majority() -> None:
    scores = torch.tensor([0.8, 0.81, 0.79, 0.82, 0.8, 0.78, 0.2, 0.25], dtype=torch.float64)
    d = AdaptiveThreshold(method="mad").decide(scores)
    assert d.flagged.tolist() == [False] * 6 + [True, True]


def test_safe_score_and_hard_floor() -> None:
    scores = torch.tensor([0.95, 0.95, 0.95, 0.7, 0.7], dtype=torch.float64)
    # clearly separated, but the low group is above the safe score: nobody flagged
    assert not AdaptiveThreshold(safe_score=0.6).decide(scores).flagged.any()
    assert (
        AdaptiveThreshold(safe_score=0.8).decide(scores).flagged.tolist()
        == [False] * 3 + [True] * 2
    )
    # the hard floor flags even without separation
    flat = torch.full((6,), 0.05, dtype=torch.float64)
    assert AdaptiveThreshold(hard_floor=0.1).decide(flat).flagged.all()


def test_attack_signature_guard() -> None:
    """Guard 4: a separated low group is cut only in a round where some client fails some signal
    outright (lowest weighted signal score <= signature); the hard floor applies regardless."""
    scores = torch.tensor([0.95, 0.96, 0.94, 0.95, 0.7, 0.71], dtype=torch.float64)
    rule = AdaptiveThreshold(signature=0.1, hard_floor=0.05)
    unsigned = rule.decide(scores, lowest=0.25)
    assert not unsigned.flagged.any() and not unsigned.signed and unsigned.separated
    assert unsigned.threshold == 0.05 and unsigned.as_dict()["signed"] is False
    signed = rule.decide(scores, lowest=0.1)
    assert signed.signed and signed.flagged.tolist() == [False] * 4 + [True] * 2
    assert rule.decide(scores).flagged.tolist() == signed.flagged.tolist()  # lowest not given
    assert AdaptiveThreshold().decide(scores, lowest=0.9).signed  # no signature configured
    floor = torch.tensor([0.95, 0.95, 0.95, 0.02], dtype=torch.float64)
    assert rule.decide(floor, lowest=0.5).flagged.tolist() == [False] * 3 + [True]


def _noise_round() -> dict[str, SignalResult]:
    """Eight honest clients, one honest outlier on PoGQ alone (composite 0.72) and three noisy
    clients that fail TCDM outright (composite 0.7): the round's signature is on TCDM only."""
    return {
        "pogq": _res([1.0] * 8 + [0.3] + [1.0] * 3),
        "tcdm": _res([1.0] * 9 + [0.0] * 3),
        "entropy": _res([1.0] * 12),
    }


@pytest.mark.parametrize("scope", ["round", "signal"])
def test_signal_scoped_signature_spares_clients_low_only_elsewhere(scope: str) -> None:
    """Guard 4 by signal: the cut flags a client only if it is low (< safe_score) on a signal that
    carries the round's attack signature. An honest outlier on PoGQ is spared in a round whose
    attackers fail TCDM, and cut like them in a round where some attacker fails PoGQ too."""
    rule = AdaptiveThreshold(signature=0.1, signature_scope=scope)  # type: ignore[arg-type]
    sig = _noise_round()
    composite = combine(sig, DEFAULT_WEIGHTS)
    decision = rule.decide(composite, signal_lows(sig, DEFAULT_WEIGHTS))
    assert decision.signed and decision.threshold == 0.75  # the split is the same either way
    outlier_flagged = scope == "round"
    assert decision.flagged.tolist() == [False] * 8 + [outlier_flagged] + [True] * 3
    assert decision.excused is not None
    assert decision.excused.tolist() == [False] * 8 + [not outlier_flagged] + [False] * 3
    assert decision.as_dict()["n_excused"] == int(not outlier_flagged)
    # one attacker also fails PoGQ outright: PoGQ carries the signature, the outlier is cut
    sig["pogq"] = _res([1.0] * 8 + [0.3, 0.05, 1.0, 1.0])
    both = rule.decide(combine(sig, DEFAULT_WEIGHTS), signal_lows(sig, DEFAULT_WEIGHTS))
    assert both.flagged.tolist() == [False] * 8 + [True] * 4
    # a float lowest (no per-signal evidence) keeps the round scope
    assert rule.decide(composite, 0.0).flagged.tolist() == [False] * 8 + [True] * 4


def test_the_cut_spares_clients_that_never_carried_a_signature() -> None:
    """``marked``: in a round whose signature is on PoGQ, the honest outlier at PoGQ 0.3 is cut
    only if it has carried a signature itself (this round or earlier); the flipper at 0 has."""
    sig = _noise_round()
    sig["pogq"] = _res([1.0] * 8 + [0.3, 0.0, 1.0, 1.0])
    composite = combine(sig, DEFAULT_WEIGHTS)
    lows = signal_lows(sig, DEFAULT_WEIGHTS)
    rule = AdaptiveThreshold(signature=0.1, signature_scope="signal")
    own = torch.stack(list(lows.values())).min(dim=0).values <= 0.1
    spared = rule.decide(composite, lows, own)
    assert spared.flagged.tolist() == [False] * 8 + [False, True, True, True]
    assert (
        spared.excused is not None and spared.excused.tolist() == [False] * 8 + [True] + [False] * 3
    )
    marked = own.clone()
    marked[8] = True  # it failed a signal outright in an earlier round
    assert rule.decide(composite, lows, marked).flagged.tolist() == [False] * 8 + [True] * 4
    # the round scope ignores marks
    by_round = AdaptiveThreshold(signature=0.1, signature_scope="round")
    assert by_round.decide(composite, lows, own).flagged.tolist() == [False] * 8 + [True] * 4


def test_signal_scope_keeps_the_hard_floor_and_checks_its_value() -> None:
    sig = _noise_round()
    sig["pogq"] = _res([1.0] * 8 + [0.0] + [1.0] * 3)
    sig["entropy"] = _res([1.0] * 8 + [0.0] + [1.0] * 3)  # composite 0.3 below the hard floor
    rule = AdaptiveThreshold(signature=0.1, signature_scope="signal", hard_floor=0.35)
    lows = signal_lows(sig, {"tcdm": 1.0})  # only TCDM weighted for the signature
    decision = rule.decide(combine(sig, DEFAULT_WEIGHTS), lows)
    assert decision.flagged.tolist() == [False] * 8 + [True] * 4
    with pytest.raises(ConfigError, match="signature_scope"):
        AdaptiveThreshold(signature_scope="client")  # type: ignore[arg-type]


def test_nested_splits_peel_off_a_second_low_cluster() -> None:
    """``levels``: after an accepted split the cut is sought again above it. Switching sleepers
    that also fail PoGQ (0.3) and those that fail only TCDM (0.7) form two low clusters; one
    split cuts only the lowest, two cut both, and the honest cluster is never split."""
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(20, generator=g, dtype=torch.float64) - 0.5) * 0.02
    scores = torch.tensor([0.3] * 3 + [0.7] * 4 + [0.99] * 13, dtype=torch.float64) + noise
    one = AdaptiveThreshold().decide(scores)
    assert one.flagged.tolist() == [True] * 3 + [False] * 17
    two = AdaptiveThreshold(levels=2).decide(scores)
    assert two.flagged.tolist() == [True] * 7 + [False] * 13
    assert AdaptiveThreshold(levels=5).decide(scores).flagged.tolist() == two.flagged.tolist()
    assert two.threshold <= 0.75 and two.gap > 0.2
    with pytest.raises(ConfigError, match="levels"):
        AdaptiveThreshold(levels=0)


def test_a_client_failing_a_signal_outright_is_cut_below_the_safe_score() -> None:
    """``own_signature_cut``: switching sleepers that fail PoGQ and TCDM (composite 0.3) and those
    that fail TCDM only (0.7) form two low clusters; the split cuts only the lowest, but every
    client at most ``signature`` on a signal is cut while its composite is below ``safe_score`` —
    in a round whose split is accepted (the guard still holds otherwise)."""
    sig = {
        "pogq": _res([1.0] * 12 + [0.0] * 4 + [1.0] * 3),
        "tcdm": _res([1.0] * 12 + [0.0] * 7),
        "entropy": _res([1.0] * 19),
    }
    composite = combine(sig, DEFAULT_WEIGHTS)
    lows = signal_lows(sig, DEFAULT_WEIGHTS)
    plain = AdaptiveThreshold(signature=0.1, signature_scope="signal").decide(composite, lows)
    assert plain.flagged.tolist() == [False] * 12 + [True] * 4 + [False] * 3
    assert plain.threshold == pytest.approx(0.5)
    own = AdaptiveThreshold(signature=0.1, signature_scope="signal", own_signature_cut=True)
    assert own.decide(composite, lows).flagged.tolist() == [False] * 12 + [True] * 7
    unseparated = AdaptiveThreshold(signature=0.1, own_signature_cut=True, min_gap=0.9)
    assert not unseparated.decide(composite, lows).flagged.any()


def test_signal_lows_mark_failed_clients_and_skip_unweighted_signals() -> None:
    marked = SignalResult(
        scores=torch.tensor([0.9, 0.8], dtype=torch.float64),
        raw={FAILED: torch.tensor([False, True])},
    )
    lows = signal_lows(
        {"pogq": _res([0.4, 1.0]), "tcdm": marked, "entropy": _res([0.0, 0.0])},
        {"pogq": 1.0, "tcdm": 1.0, "entropy": 0.0},
    )
    assert sorted(lows) == ["pogq", "tcdm"]
    assert lows["tcdm"].tolist() == [0.9, 0.0] and lows["pogq"].tolist() == [0.4, 1.0]


def test_lowest_signal_score_reads_only_weighted_signals() -> None:
    sig = {"pogq": _res([0.9, 0.3]), "tcdm": _res([0.0, 1.0]), "entropy": _res([0.8, 0.7])}
    assert lowest_signal_score(sig, {"pogq": 0.5, "tcdm": 0.0, "entropy": 0.5}) == 0.3
    assert lowest_signal_score(sig, DEFAULT_WEIGHTS) == 0.0
    assert lowest_signal_score({}, DEFAULT_WEIGHTS) == float("inf")
    # a client the signal marks as failing outright counts as 0, whatever its score
    marked = SignalResult(
        scores=torch.tensor([0.9, 0.2], dtype=torch.float64),
        raw={FAILED: torch.tensor([False, True])},
    )
    assert lowest_signal_score({**sig, "tcdm": marked}, DEFAULT_WEIGHTS) == 0.0
    unmarked = SignalResult(scores=marked.scores, raw={FAILED: torch.tensor([False, False])})
    assert lowest_signal_score({**sig, "tcdm": unmarked}, DEFAULT_WEIGHTS) == 0.2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "kmeans"},
        {"k": 0},
        {"min_gap": 1.5},
        {"safe_score": 0},
        {"hard_floor": 0.9, "safe_score": 0.5},
        {"k": True},
        {"signature": 1.5},
        {"signature": -0.1},
    ],
)
def test_threshold_validates(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        AdaptiveThreshold(**kwargs)


def test_verdicts_carry_reasons() -> None:
    sig = {"pogq": _res([0.9, 0.9, 0.0]), "tcdm": _res([0.8, 0.8, 0.7]), "entropy": _res([1, 1, 1])}
    comp = combine(sig, DEFAULT_WEIGHTS)
    rule = AdaptiveThreshold(min_gap=0.1, k=2.0)
    d = rule.decide(comp)
    out = verdicts([7, 8, 9], comp, d, signal_reasons(sig, DEFAULT_WEIGHTS, rule))
    assert [out.verdict(i).client_id for i in range(3)] == [7, 8, 9]
    assert [v["trusted"] for v in out] == [True, True, False]
    assert out.untrusted() == [out[2]] and out[-1] == out[2]
    bad = out.verdict(2).as_dict()
    assert bad == out[2]
    names = [r["signal"] for r in bad["reasons"]]
    assert names == ["pogq", "tcdm", "entropy", "composite"]
    comp_reason = bad["reasons"][-1]
    assert comp_reason["value"] == pytest.approx(float(comp[2]))
    assert comp_reason["threshold"] == d.threshold and comp_reason["passed"] is False
    assert bad["reasons"][0]["passed"] is False  # the PoGQ score failed its own cut
