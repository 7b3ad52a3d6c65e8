"""Tests for :class:`matl.aggregation.bulyan.Bulyan`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from matl.aggregation import Bulyan, get_rule
from matl.aggregation.bulyan import bulyan_select, closest_to_median_mean
from matl.aggregation.distances import pairwise_sq_distances
from matl.aggregation.krum import krum_scores
from matl.aggregation.order_stats import midpoint
from matl.errors import ConfigError, PreconditionError

DTYPES = [torch.float32, torch.float64]

# n = 7, f = 1 (n = 4f + 3): θ = n − 2f = 5 selected, β = θ − 2f = 3 averaged per coordinate.
POINTS = [[0.0], [1.0], [2.0], [3.0], [4.0], [50.0], [100.0]]
# Round 1 (7 left, 4 nearest): 0: 1+4+9+16 = 30; 1: 1+1+4+9 = 15; 2: 1+1+4+4 = 10; 3: 15; 4: 30;
#   50: 46²+47²+48²+49² = 9030; 100: 50²+96²+97²+98² = 30729 → select row 2.
# Round 2 (6 left, 3 nearest): 0: 1+9+16 = 26; 1: 1+4+9 = 14; 3: 1+4+9 = 14; 4: 26; … → rows 1
#   and 3 tie at 14: the lower index, row 1.
# Round 3 (5 left, 2 nearest): 0: 9+16 = 25; 3: 1+9 = 10; 4: 1+16 = 17; … → row 3.
# Round 4 (4 left, 1 nearest): 0: 16; 4: 16; 50: 46² = 2116; 100: 2500 → tie, row 0.
# Round 5 (3 left, 3 − 1 − 2 = 0 floored to 1 nearest): 4: 2116; 50: 2116; 100: 2500 → tie, row 4.
SCORES = [30.0, 15.0, 10.0, 15.0, 30.0, 9030.0, 30729.0]
SELECTED = [2, 1, 3, 0, 4]


def naive_recursive_krum(updates: torch.Tensor, f: int, theta: int) -> list[int]:
    """Recompute Krum from scratch on the remaining rows every round."""
    dist = pairwise_sq_distances(updates).to(torch.float64)
    remaining = list(range(updates.shape[0]))
    selected = []
    for _ in range(theta):
        r = len(remaining)
        if r == 1:
            selected.append(remaining.pop())
            continue
        sub = dist[remaining][:, remaining].clone()
        sub.fill_diagonal_(float("inf"))
        scores = torch.sort(sub, dim=1).values[:, : max(r - f - 2, 1)].sum(dim=1)
        selected.append(remaining.pop(int(torch.argmin(scores))))
    return selected


def closest_reference(values: torch.Tensor, beta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``values`` (float64): mean of the beta closest to the median, ties shared."""
    srt = torch.sort(values, dim=0).values
    n = values.shape[0]
    mid = srt[n // 2]
    med = mid if n % 2 else torch.from_numpy(midpoint(srt[n // 2 - 1].numpy(), mid.numpy()))
    gap = (values - med).abs()
    radius = torch.sort(gap, dim=0).values[beta - 1]
    inside = gap < radius
    edge = gap == radius
    weight = inside.double() + edge.double() * (beta - inside.sum(0)) / edge.sum(0)
    return (weight * values).sum(dim=0) / beta, weight.sum(dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_answer(dtype: torch.dtype) -> None:
    updates = torch.tensor(POINTS, dtype=dtype)
    selected, scores = bulyan_select(pairwise_sq_distances(updates), f=1, theta=5)
    assert selected.tolist() == SELECTED
    assert scores.tolist() == SCORES
    res = Bulyan(f=1)(updates)
    # selected values 0..4, median 2, the β = 3 closest: 1, 2, 3 → 2
    assert torch.equal(res.aggregate, torch.tensor([2.0], dtype=dtype))
    torch.testing.assert_close(
        res.weights, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, 0.0, 0.0], dtype=dtype)
    )
    assert res.flagged.tolist() == [False] * 5 + [True, True]
    assert res.scores is not None
    assert torch.equal(res.scores, torch.tensor(SCORES, dtype=dtype))


def test_closest_to_median_known_answer() -> None:
    updates = torch.tensor(
        [[0.0, 5.0], [1.0, 5.0], [2.0, 6.0], [10.0, 7.0], [11.0, 100.0]], dtype=torch.float64
    )
    mean, credit = closest_to_median_mean(updates, torch.arange(5), beta=3)
    # column 0: median 2, distances 2 1 0 8 9 → 0, 1, 2 → 1
    # column 1: median 6, distances 1 1 0 1 94 → 6, then 5, 5, 7 tie for the two places left:
    #           each counts 2/3 → (6 + (2/3)(5 + 5 + 7)) / 3 = 52/9
    torch.testing.assert_close(mean, torch.tensor([1.0, 52 / 9], dtype=torch.float64))
    torch.testing.assert_close(
        credit, torch.tensor([5 / 3, 5 / 3, 2.0, 2 / 3, 0.0], dtype=torch.float64)
    )


def test_closest_to_median_uses_only_the_given_rows() -> None:
    updates = torch.tensor([[0.0], [1e9], [1.0], [2.0], [-1e9]], dtype=torch.float64)
    mean, credit = closest_to_median_mean(updates, torch.tensor([0, 2, 3]), beta=1)
    assert mean.tolist() == [1.0]
    assert credit.tolist() == [0.0, 1.0, 0.0]


def test_f_zero_averages_everything() -> None:
    gen = torch.Generator().manual_seed(0)
    updates = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    res = Bulyan(f=0)(updates)
    torch.testing.assert_close(res.aggregate, updates.mean(dim=0))
    torch.testing.assert_close(res.weights, torch.full((5,), 0.2, dtype=torch.float64))
    assert not res.flagged.any()


def test_multi_krum_selection_takes_the_lowest_first_round_scores() -> None:
    gen = torch.Generator().manual_seed(2)
    updates = torch.randn(11, 3, generator=gen, dtype=torch.float64)
    res = Bulyan(f=2, selection="multi_krum")(updates)
    scores = krum_scores(updates, 2)
    expected = torch.zeros(11, dtype=torch.bool)
    expected[torch.sort(scores, stable=True).indices[:7]] = True
    assert torch.equal(~res.flagged, expected)
    assert res.scores is not None
    torch.testing.assert_close(res.scores, scores)


@pytest.mark.parametrize(("n", "f"), [(6, 1), (10, 2), (2, 0), (14, 3)])
def test_precondition_error(n: int, f: int) -> None:
    with pytest.raises(PreconditionError) as info:
        Bulyan(f=f)(torch.randn(n, 3))
    message = str(info.value)
    assert "bulyan" in message
    assert "4f + 3" in message
    assert f"n={n}" in message
    assert f"f={f}" in message


@pytest.mark.parametrize(("n", "f"), [(3, 0), (7, 1), (11, 2)])
def test_precondition_boundary_runs(n: int, f: int) -> None:
    res = Bulyan(f=f)(torch.randn(n, 3))
    assert int(res.flagged.sum()) == 2 * f


@pytest.mark.parametrize("f", [-1, 1.5, "1", True, None])
def test_rejects_bad_f(f: object) -> None:
    with pytest.raises(ConfigError, match="f must be an integer"):
        get_rule("bulyan", f=f)


def test_rejects_unknown_selection() -> None:
    with pytest.raises(ConfigError, match="selection must be one of krum, multi_krum"):
        get_rule("bulyan", f=1, selection="median")


def test_many_columns_run_in_blocks_and_stay_deterministic() -> None:
    # 17 selected rows × 250 000 columns: above the threaded-path threshold.
    gen = torch.Generator().manual_seed(5)
    updates = torch.randn(23, 250_000, generator=gen)
    first = Bulyan(f=3)(updates)
    second = Bulyan(f=3)(updates.clone())
    assert torch.equal(first.aggregate, second.aggregate)
    assert torch.equal(first.weights, second.weights)
    rows = torch.nonzero(~first.flagged).flatten()
    expected, _ = closest_reference(updates[rows].double()[:, :2000], beta=23 - 12)
    torch.testing.assert_close(first.aggregate[:2000].double(), expected, rtol=0, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    f=st.integers(0, 3),
    extra=st.integers(0, 6),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["normal", "rounded", "outliers"]),
)
def test_recursive_selection_matches_recomputing_krum_every_round(
    f: int, extra: int, d: int, seed: int, kind: str
) -> None:
    n = 4 * f + 3 + extra
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if kind == "rounded":  # exact ties between scores
        updates = torch.round(updates)
    elif kind == "outliers":  # large dynamic range in the running scores
        updates[:f] *= 1e8
    theta = n - 2 * f
    selected, scores = bulyan_select(pairwise_sq_distances(updates), f, theta)
    assert selected.tolist() == naive_recursive_krum(updates, f, theta)
    torch.testing.assert_close(scores, krum_scores(updates, f))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    data=st.data(),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    rounded=st.booleans(),
)
def test_closest_to_median_matches_a_reference(
    n: int, data: st.DataObject, d: int, seed: int, rounded: bool
) -> None:
    theta = data.draw(st.integers(1, n), label="theta")
    beta = data.draw(st.integers(1, theta), label="beta")
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2
    if rounded:
        updates = torch.round(updates)
    rows = torch.sort(torch.randperm(n, generator=gen)[:theta]).values
    mean, credit = closest_to_median_mean(updates, rows, beta)
    expected_mean, expected_credit = closest_reference(updates[rows], beta)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(credit, expected_credit, rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    f=st.integers(0, 3),
    extra=st.integers(0, 5),
    d=st.integers(1, 5),
    magnitude=st.floats(1e3, 1e15),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
    collude=st.booleans(),
)
def test_robust_to_f_far_outliers(
    f: int,
    extra: int,
    d: int,
    magnitude: float,
    seed: int,
    dtype: torch.dtype,
    collude: bool,
    far_outliers,
) -> None:
    n_honest = 3 * f + 3 + extra  # n = n_honest + f >= 4f + 3
    case = far_outliers(n_honest, f, d, magnitude, seed, dtype, collude)
    honest = case.honest
    res = Bulyan(f=f)(case.updates)
    # Far outliers are never among the β values closest to a median of a selection whose
    # honest majority sits in [-1, 1]. (Colluding copies can still be *selected*: in the last
    # rounds Krum counts fewer than f neighbours, and identical copies score 0.)
    assert torch.all(res.weights[case.is_outlier] == 0)
    slack = 4 * torch.finfo(dtype).eps
    assert torch.all(res.aggregate >= honest.amin(dim=0) - slack)
    assert torch.all(res.aggregate <= honest.amax(dim=0) + slack)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "theta"), [(700, 600), (1000, 800), (1000, 799), (300, 200)])
@pytest.mark.parametrize("rounded", [False, True])
def test_closest_to_median_many_rows(n: int, theta: int, dtype: torch.dtype, rounded: bool) -> None:
    # Many selected values per coordinate: window sums read from the sorted rows (θ >= 256).
    gen = torch.Generator().manual_seed(theta)
    updates = torch.randn(n, 200, generator=gen, dtype=dtype)
    if rounded:
        updates = torch.round(updates * 2)  # ties at the radius in most coordinates
    rows = torch.sort(torch.randperm(n, generator=gen)[:theta]).values
    beta = theta // 2
    mean, credit = closest_to_median_mean(updates, rows, beta)
    expected_mean, expected_credit = closest_reference(updates[rows].double(), beta)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(mean.double(), expected_mean, rtol=tol, atol=tol)
    torch.testing.assert_close(credit, expected_credit, rtol=0, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(
    theta=st.integers(1, 300),
    data=st.data(),
    d=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["normal", "rounded", "three_values"]),
)
def test_closest_to_median_matches_a_full_sort_reference(
    theta: int, data: st.DataObject, d: int, seed: int, dtype: torch.dtype, kind: str
) -> None:
    # θ below and above 256: window sums from the 0/1 indicator and from the sorted rows; odd
    # and even θ; ties at the radius (rounded values, only three distinct values).
    beta = data.draw(st.integers(1, theta), label="beta")
    n = theta + data.draw(st.integers(0, 5), label="unselected")
    gen = torch.Generator().manual_seed(seed)
    if kind == "three_values":
        updates = torch.randint(0, 3, (n, d), generator=gen).to(torch.float64)
    else:
        updates = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3
        if kind == "rounded":
            updates = torch.round(updates)
    updates = updates.to(dtype)
    rows = torch.sort(torch.randperm(n, generator=gen)[:theta]).values
    mean, credit = closest_to_median_mean(updates, rows, beta)
    # The reference sorts in the input's dtype, so distances round (and tie) the same way.
    expected_mean, expected_credit = closest_reference(updates[rows], beta)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert mean.dtype == dtype
    torch.testing.assert_close(mean.double(), expected_mean, rtol=tol, atol=tol)
    torch.testing.assert_close(credit, expected_credit, rtol=1e-12, atol=1e-9)


@pytest.fixture
def two_threads() -> Iterator[None]:
    """At least two torch threads, so that the thread-pool paths run."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, 2))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("rounded", [False, True])
def test_threaded_neighbour_sort_matches_the_serial_one(two_threads: None, rounded: bool) -> None:
    # n² >= 2^18 sorts the distance rows in blocks on threads; the result must not depend on it.
    n, f = 520, 40
    gen = torch.Generator().manual_seed(n)
    updates = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    if rounded:  # exact ties between distances and scores
        updates = torch.round(updates)
    dist = pairwise_sq_distances(updates)
    threaded = bulyan_select(dist, f, n - 2 * f)
    torch.set_num_threads(1)
    serial = bulyan_select(dist, f, n - 2 * f)
    assert torch.equal(threaded[0], serial[0])
    assert torch.equal(threaded[1], serial[1])


@pytest.mark.parametrize("theta", [200, 301])
def test_closest_to_median_threaded_blocks_match_a_reference(two_threads: None, theta: int) -> None:
    # Enough entries for the thread pool; quarter-rounded values tie at the radius in places.
    gen = torch.Generator().manual_seed(theta)
    n, d = theta + 9, 2**22 // theta + 999
    updates = torch.round(torch.randn(n, d, generator=gen) * 4) / 4
    rows = torch.sort(torch.randperm(n, generator=gen)[:theta]).values
    beta = theta - 2 * (theta // 10)
    mean, credit = closest_to_median_mean(updates, rows, beta)
    expected_mean, expected_credit = closest_reference(updates[rows], beta)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(credit, expected_credit, rtol=1e-12, atol=1e-6)
    assert float(credit.sum()) == pytest.approx(beta * d)
