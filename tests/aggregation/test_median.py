"""Tests for :class:`matl.aggregation.median.Median`."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from matl.aggregation import Median, get_rule
from matl.aggregation.median import coordinate_median

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_answer_odd_n(dtype: torch.dtype) -> None:
    updates = torch.tensor([[1.0, 5.0], [3.0, -2.0], [2.0, 10.0]], dtype=dtype)
    res = Median()(updates)
    # coordinate 0: sorted 1, 2, 3 → 2 (row 2); coordinate 1: sorted −2, 5, 10 → 5 (row 0)
    assert torch.equal(res.aggregate, torch.tensor([2.0, 5.0], dtype=dtype))
    # each row supplied the median in 1 of 2 coordinates, or none
    assert torch.equal(res.weights, torch.tensor([0.5, 0.0, 0.5], dtype=dtype))
    assert not res.flagged.any()
    assert res.scores is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_answer_even_n_averages_the_two_middles(dtype: torch.dtype) -> None:
    updates = torch.tensor([[1.0, 0.0], [4.0, 10.0], [2.0, 20.0], [3.0, 30.0]], dtype=dtype)
    res = Median()(updates)
    # coordinate 0: sorted 1, 2, 3, 4 → (2 + 3)/2 = 2.5 from rows 2 and 3
    # coordinate 1: sorted 0, 10, 20, 30 → (10 + 20)/2 = 15 from rows 1 and 2
    assert torch.equal(res.aggregate, torch.tensor([2.5, 15.0], dtype=dtype))
    # weights: each middle counts 1/2 of a coordinate, over d = 2 coordinates:
    # row 0: 0; row 1: ½/2 = ¼; row 2: (½ + ½)/2 = ½; row 3: ½/2 = ¼
    assert torch.equal(res.weights, torch.tensor([0.0, 0.25, 0.5, 0.25], dtype=dtype))


def test_single_client_is_its_own_median() -> None:
    updates = torch.tensor([[1.5, -2.0, 3.0]])
    res = Median()(updates)
    assert torch.equal(res.aggregate, updates[0])
    assert torch.equal(res.weights, torch.ones(1))


def test_ties_still_give_weights_summing_to_one() -> None:
    updates = torch.ones(4, 3, dtype=torch.float64)
    res = Median()(updates)
    assert torch.equal(res.aggregate, torch.ones(3, dtype=torch.float64))
    assert res.weights.sum().item() == pytest.approx(1.0)


def test_even_median_does_not_overflow() -> None:
    big = torch.finfo(torch.float32).max
    updates = torch.tensor([[big], [big], [-big], [big]], dtype=torch.float32)
    assert Median()(updates).aggregate.item() == big


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_matches_torch_quantile(n: int, d: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=gen, dtype=torch.float64)
    res = get_rule("median")(updates)
    torch.testing.assert_close(res.aggregate, torch.quantile(updates, 0.5, dim=0))
    assert res.weights.sum().item() == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_permutation_invariance(n: int, d: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # Rounded values make ties likely: the aggregate must still be exactly invariant.
    updates = torch.round(torch.randn(n, d, generator=gen, dtype=torch.float64) * 2)
    perm = torch.randperm(n, generator=gen)
    assert torch.equal(Median()(updates[perm]).aggregate, Median()(updates).aggregate)


@settings(max_examples=60, deadline=None)
@given(
    n_honest=st.integers(1, 10),
    data=st.data(),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
    collude=st.booleans(),
)
def test_robust_to_a_minority_of_outliers(
    n_honest: int,
    data: st.DataObject,
    d: int,
    seed: int,
    dtype: torch.dtype,
    collude: bool,
    far_outliers,
) -> None:
    f = data.draw(st.integers(0, n_honest - 1), label="f")  # f < n/2  ⇔  f < n_honest
    magnitude = data.draw(st.floats(1e3, 1e30), label="magnitude")
    case = far_outliers(n_honest, f, d, magnitude, seed, dtype, collude)
    honest = case.honest
    agg = Median()(case.updates).aggregate
    assert torch.all(agg >= honest.amin(dim=0))
    assert torch.all(agg <= honest.amax(dim=0))


def test_tied_middle_values_share_the_credit() -> None:
    # coordinate 0: sorted 1, 2, 2, 2, 5 → median 2 held by rows 1, 2, 3: a third each
    updates = torch.tensor([[1.0], [2.0], [2.0], [2.0], [5.0]], dtype=torch.float64)
    res = Median()(updates)
    assert res.aggregate.tolist() == [2.0]
    torch.testing.assert_close(
        res.weights, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64)
    )
    # … whatever the row order
    perm = torch.tensor([2, 4, 0, 3, 1])
    torch.testing.assert_close(Median()(updates[perm]).weights, res.weights[perm])


def test_many_columns_match_kthvalue() -> None:
    # n · d above the threaded-path threshold: column blocks sorted on a thread pool.
    gen = torch.Generator().manual_seed(7)
    updates = torch.randn(65, 70_000, generator=gen)
    res = Median()(updates)
    values, rows = torch.kthvalue(updates, 33, dim=0)
    assert torch.equal(res.aggregate, values)
    counts = torch.bincount(rows, minlength=65).double() / 70_000
    torch.testing.assert_close(res.weights.double(), counts, rtol=0, atol=1e-6)


def tie_shared_reference(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median from a full sort, and each middle's credit split between the rows holding it."""
    n, d = updates.shape
    srt = torch.sort(updates, dim=0).values
    mids = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    values = srt[mids[0]] if n % 2 else (srt[mids[0]] + srt[mids[1]]) / 2
    credit = torch.zeros(n, dtype=torch.float64)
    for r in mids:
        holders = (updates == srt[r]).double()
        credit += (holders / holders.sum(dim=0)).sum(dim=1) / len(mids)
    return values, credit / d


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [513, 600, 999, 1000])
@pytest.mark.parametrize("rounded", [False, True])
def test_many_rows_match_a_full_sort(n: int, dtype: torch.dtype, rounded: bool) -> None:
    # n > 512 float32 values per coordinate: selected from two sorted runs, never merged.
    gen = torch.Generator().manual_seed(n)
    updates = torch.randn(n, 300, generator=gen, dtype=dtype)
    if rounded:
        updates = torch.round(updates * 2)  # ties at the middle in most coordinates
    median, credit = coordinate_median(updates)
    values, weights = tie_shared_reference(updates)
    assert torch.equal(median, values)
    torch.testing.assert_close(credit, weights, rtol=0, atol=1e-12)
