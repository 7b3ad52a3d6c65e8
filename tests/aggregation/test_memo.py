"""The round memo's shared row norms: one pass for the finiteness check and the trust signals."""

from __future__ import annotations

import torch

from matl.aggregation.base import finite_row_mask
from matl.aggregation.memo import round_norms
from matl.trust._util import row_norms


def test_finiteness_check_leaves_its_norms_for_the_signals() -> None:
    x = torch.randn(6, 40)
    finite_row_mask(x)
    shared = round_norms(x)
    assert round_norms(x) is shared  # the same tensor: no second pass
    assert torch.allclose(row_norms(x, "test"), torch.linalg.vector_norm(x.double(), dim=1))
    assert row_norms(x, "test") is not shared  # signals get a private copy


def test_in_place_change_and_new_tensor_are_not_matched() -> None:
    x = torch.randn(4, 10)
    before = round_norms(x)
    x[0] *= 2  # bumps the version counter
    after = round_norms(x)
    assert after is not before
    assert torch.isclose(after[0], 2 * before[0])
    y = x.clone()
    assert round_norms(y) is not round_norms(x)


def test_overflowing_finite_row_is_finite_and_gets_an_exact_norm() -> None:
    x = torch.ones(3, 8)
    x[1] = 3e38  # finite entries whose float32 norm overflows
    x[2, 0] = float("nan")
    assert finite_row_mask(x).tolist() == [True, True, False]
    good = x[:2].clone()
    norms = row_norms(good, "test")
    assert torch.isfinite(norms).all() and norms[1] > 3e38
