"""Tests for :class:`matl.aggregation.trimmed_mean.TrimmedMean`."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from matl.aggregation import TrimmedMean, get_rule
from matl.aggregation.trimmed_mean import trimmed_mean
from matl.errors import ConfigError, PreconditionError

DTYPES = [torch.float32, torch.float64]


def reference(updates: torch.Tensor, t: int) -> torch.Tensor:
    """Sort every coordinate in float64 and average the kept order statistics."""
    srt = torch.sort(updates.to(torch.float64), dim=0).values
    return srt[t : updates.shape[0] - t].mean(dim=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_answer(dtype: torch.dtype) -> None:
    updates = torch.tensor(
        [[1.0, -50.0], [2.0, 0.0], [3.0, 2.0], [4.0, 1.0], [100.0, 3.0]], dtype=dtype
    )
    res = TrimmedMean(f=1)(updates)
    # coordinate 0: sorted 1, 2, 3, 4, 100 → keep 2, 3, 4 → 3 (rows 0 and 4 trimmed)
    # coordinate 1: sorted -50, 0, 1, 2, 3 → keep 0, 1, 2 → 1 (rows 0 and 4 trimmed)
    assert torch.equal(res.aggregate, torch.tensor([3.0, 1.0], dtype=dtype))
    # each kept row was kept in both coordinates: (2 - 0) / (2 · 3) = 1/3
    torch.testing.assert_close(
        res.weights, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3, 0.0], dtype=dtype)
    )
    assert res.flagged.tolist() == [True, False, False, False, True]
    assert res.scores is not None
    assert res.scores.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_flags_rows_trimmed_in_more_than_half_of_the_coordinates() -> None:
    updates = torch.tensor(
        [
            [0.0, 5.0, 1.5, 0.0],
            [1.0, 1.0, 1.0, 1.0],
            [2.0, 2.0, 2.0, 2.0],
            [3.0, 3.0, 3.0, 3.0],
            [9.0, 9.0, 9.0, 2.5],
        ],
        dtype=torch.float64,
    )
    res = TrimmedMean(f=1)(updates)
    # coordinate 0: 0 1 2 3 9 → trims rows 0, 4, keeps 1 2 3 → 2
    # coordinate 1: 1 2 3 5 9 → trims rows 1, 4, keeps 2 3 5 → 10/3
    # coordinate 2: 1 1.5 2 3 9 → trims rows 1, 4, keeps 1.5 2 3 → 13/6
    # coordinate 3: 0 1 2 2.5 3 → trims rows 0, 3, keeps 1 2 2.5 → 11/6
    torch.testing.assert_close(
        res.aggregate, torch.tensor([2.0, 10 / 3, 13 / 6, 11 / 6], dtype=torch.float64)
    )
    # trimmed in 2, 2, 0, 1, 3 of the 4 coordinates: only row 4 exceeds half (2 is not > 2)
    assert res.scores is not None
    assert res.scores.tolist() == [0.5, 0.5, 0.0, 0.25, 0.75]
    assert res.flagged.tolist() == [False, False, False, False, True]
    # kept (4 - T_i) / (4 · 3)
    torch.testing.assert_close(res.weights, torch.tensor([2, 2, 4, 3, 1], dtype=torch.float64) / 12)


def test_ties_at_the_boundary_share_the_trimming() -> None:
    updates = torch.tensor([[1.0], [1.0], [1.0], [5.0], [9.0]], dtype=torch.float64)
    res = TrimmedMean(f=1)(updates)
    # sorted 1, 1, 1, 5, 9: one of the three 1s and the 9 are trimmed → mean(1, 1, 5) = 7/3
    assert res.aggregate.item() == pytest.approx(7 / 3)
    # each 1 is trimmed a third of the time: kept (2/3) / 3 = 2/9; the 5 kept: 1/3; the 9: 0
    torch.testing.assert_close(
        res.weights, torch.tensor([2 / 9, 2 / 9, 2 / 9, 1 / 3, 0.0], dtype=torch.float64)
    )
    # and the weights do not depend on which copy comes first
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(TrimmedMean(f=1)(updates[perm]).weights, res.weights[perm])


def test_all_equal_coordinate() -> None:
    updates = torch.full((6, 3), 2.5)
    res = TrimmedMean(f=1)(updates)
    assert torch.equal(res.aggregate, torch.full((3,), 2.5))
    # every copy is trimmed a third of the time: equal weights, nobody flagged
    torch.testing.assert_close(res.weights, torch.full((6,), 1 / 6))
    assert res.scores is not None
    torch.testing.assert_close(res.scores, torch.full((6,), 1 / 3))
    assert not res.flagged.any()


@pytest.mark.parametrize(
    ("beta", "n", "t"), [(0.2, 5, 1), (0.29, 100, 29), (0.1, 30, 3), (0.0, 7, 0), (0.49, 9, 4)]
)
def test_beta_trims_floor_of_beta_n(beta: float, n: int, t: int) -> None:
    assert TrimmedMean(beta=beta).trim_count(n) == t
    gen = torch.Generator().manual_seed(n)
    updates = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(TrimmedMean(beta=beta)(updates).aggregate, reference(updates, t))


def test_f_zero_is_the_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    updates = torch.randn(6, 5, generator=gen)
    res = TrimmedMean(f=0)(updates)
    assert torch.equal(res.aggregate, updates.mean(dim=0))
    torch.testing.assert_close(res.weights, torch.full((6,), 1 / 6))
    assert not res.flagged.any()


@pytest.mark.parametrize("params", [{}, {"f": 1, "beta": 0.1}])
def test_needs_exactly_one_of_f_and_beta(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="exactly one of f"):
        get_rule("trimmed_mean", **params)


@pytest.mark.parametrize("f", [-1, 1.5, "1", True])
def test_rejects_bad_f(f: object) -> None:
    with pytest.raises(ConfigError, match="f must be an integer"):
        get_rule("trimmed_mean", f=f)


@pytest.mark.parametrize("beta", [0.5, -0.1, 0.7, math.nan, math.inf, True, "0.1"])
def test_rejects_bad_beta(beta: object) -> None:
    with pytest.raises(ConfigError, match=r"beta must be a number in \[0, 0.5\)"):
        get_rule("trimmed_mean", beta=beta)


@pytest.mark.parametrize(("n", "f"), [(4, 2), (2, 1), (6, 3), (1, 1)])
def test_precondition_error(n: int, f: int) -> None:
    with pytest.raises(PreconditionError) as info:
        TrimmedMean(f=f)(torch.randn(n, 3))
    message = str(info.value)
    assert "trimmed_mean" in message
    assert "2f + 1" in message
    assert f"n={n}" in message
    assert f"f={f}" in message


@pytest.mark.parametrize(("n", "f"), [(5, 2), (3, 1), (1, 0)])
def test_precondition_boundary_runs(n: int, f: int) -> None:
    updates = torch.randn(n, 3, dtype=torch.float64)
    torch.testing.assert_close(TrimmedMean(f=f)(updates).aggregate, reference(updates, f))


def test_function_rejects_too_few_rows() -> None:
    with pytest.raises(ValueError, match="n >= 2f \\+ 1"):
        trimmed_mean(torch.randn(4, 2), 2)


def test_many_columns_run_in_blocks_and_stay_deterministic() -> None:
    # n · d above the threaded-path threshold: several column blocks on the thread pool.
    gen = torch.Generator().manual_seed(5)
    updates = torch.randn(64, 70_000, generator=gen)
    first = TrimmedMean(f=7)(updates)
    second = TrimmedMean(f=7)(updates.clone())
    assert torch.equal(first.aggregate, second.aggregate)
    assert torch.equal(first.weights, second.weights)
    torch.testing.assert_close(first.aggregate.double(), reference(updates, 7), rtol=0, atol=1e-6)
    assert abs(first.weights.double().sum().item() - 1.0) < 1e-6


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    d=st.integers(1, 6),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
    rounded=st.booleans(),
)
def test_matches_a_sort_based_reference(
    n: int, d: int, data: st.DataObject, seed: int, dtype: torch.dtype, rounded: bool
) -> None:
    f = data.draw(st.integers(0, (n - 1) // 2), label="f")
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=gen, dtype=dtype) * 3
    if rounded:  # many ties, including at the trimming boundaries
        updates = torch.round(updates)
    res = TrimmedMean(f=f)(updates)
    expected = reference(updates, f)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(res.aggregate.double(), expected, rtol=tol, atol=tol)
    assert abs(res.weights.double().sum().item() - 1.0) < tol * 10
    assert torch.all(res.weights >= 0)
    # permuting the rows permutes the weights
    perm = torch.randperm(n, generator=gen)
    torch.testing.assert_close(TrimmedMean(f=f)(updates[perm]).weights, res.weights[perm])


@settings(max_examples=60, deadline=None)
@given(
    n_honest=st.integers(1, 10),
    data=st.data(),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
    collude=st.booleans(),
)
def test_robust_to_f_huge_outliers_and_numerically_exact(
    n_honest: int,
    data: st.DataObject,
    d: int,
    seed: int,
    dtype: torch.dtype,
    collude: bool,
    far_outliers,
) -> None:
    f = data.draw(st.integers(0, n_honest - 1), label="f")  # n = n_honest + f >= 2f + 1
    magnitude = data.draw(st.floats(1e3, 1e30), label="mag")
    case = far_outliers(n_honest, f, d, magnitude, seed, dtype, collude)
    honest, updates = case.honest, case.updates
    agg = TrimmedMean(f=f)(updates).aggregate
    # Inside the honest box up to one rounding of a mean: the huge trimmed values leave no trace
    # (a "sum minus trimmed sums" shortcut would cancel catastrophically here).
    slack = 4 * torch.finfo(dtype).eps
    assert torch.all(agg >= honest.amin(dim=0) - slack)
    assert torch.all(agg <= honest.amax(dim=0) + slack)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(agg.double(), reference(updates, f), rtol=tol, atol=tol)


def trimmed_share_reference(updates: torch.Tensor, t: int) -> torch.Tensor:
    """Per row, the coordinates where it was trimmed, copies at a boundary sharing equally."""
    n = updates.shape[0]
    srt = torch.sort(updates, dim=0).values
    lo, hi = srt[t], srt[n - t - 1]
    below, above = (updates < lo).double(), (updates > hi).double()
    at_lo, at_hi = (updates == lo).double(), (updates == hi).double()
    same = lo == hi
    frac_lo = torch.where(
        same, (at_lo.sum(0) - (n - 2 * t)) / at_lo.sum(0), (t - below.sum(0)) / at_lo.sum(0)
    )
    frac_hi = torch.where(same, torch.zeros_like(frac_lo), (t - above.sum(0)) / at_hi.sum(0))
    return (below + above + at_lo * frac_lo + at_hi * frac_hi).sum(dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [513, 600, 999, 1000])
@pytest.mark.parametrize("rounded", [False, True])
def test_many_rows_match_a_sort_based_reference(n: int, dtype: torch.dtype, rounded: bool) -> None:
    # n > 512 float32 values per coordinate: boundaries selected from two sorted runs.
    gen = torch.Generator().manual_seed(n)
    updates = torch.randn(n, 300, generator=gen, dtype=dtype)
    if rounded:
        updates = torch.round(updates * 2)  # ties at both trimming boundaries
    t = n // 10
    mean, trimmed = trimmed_mean(updates, t)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(mean.double(), reference(updates, t), rtol=tol, atol=tol)
    torch.testing.assert_close(trimmed, trimmed_share_reference(updates, t), rtol=0, atol=1e-9)
