"""The compiled row kernels agree with their definitions and with the PyTorch paths."""

from __future__ import annotations

import pytest
import torch

from matl.aggregation.kernels import (
    float64_dots,
    kernel_dtype,
    row_norms,
    sketch_and_norms,
    sketch_norms_dots,
    sketch_norms_gain,
    striped_dots,
)
from matl.aggregation.memo import round_norms
from matl.aggregation.products import PARALLEL_MIN_ELEMENTS
from matl.trust.sketch import (
    _plan,
    _torch_sketch,
    count_sketch,
    pairwise_cosines,
    round_sketch,
    round_sketch_dots,
    round_sketch_gain,
    stripe_lanes,
)


def _definition(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The count sketch written out coordinate by coordinate: coordinate j is in run j mod m,
    run w goes to bucket buckets[w] with the coordinate's sign."""
    signs, buckets, _ = _plan(x.shape[1], k, seed)
    m = buckets.numel()
    bucket_of = buckets[torch.arange(x.shape[1]) % m]
    out = torch.zeros(x.shape[0], k, dtype=torch.float64)
    out.index_add_(1, bucket_of, x.to(torch.float64) * signs)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [700, 5003, 20000])
def test_sketch_matches_its_definition_on_both_paths(dtype: torch.dtype, d: int) -> None:
    g = torch.Generator().manual_seed(d)
    x = torch.randn(7, d, generator=g, dtype=dtype)
    want = _definition(x, 32, seed=3)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    compiled = count_sketch(x, 32, seed=3)
    torch.testing.assert_close(compiled, want, rtol=tol, atol=tol)
    torch.testing.assert_close(_torch_sketch(x, 32, 3), want, rtol=tol, atol=tol)


def test_a_strided_or_half_precision_input_takes_the_pytorch_path() -> None:
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(5, 2000, generator=g)
    columns = wide.T.contiguous().T  # the same values, column-major
    assert kernel_dtype(wide) and not kernel_dtype(columns)
    assert not kernel_dtype(wide.half())
    torch.testing.assert_close(
        count_sketch(columns, 16), count_sketch(wide, 16), rtol=1e-4, atol=1e-4
    )
    half = count_sketch(wide.half(), 16)
    assert half.dtype == torch.float64
    torch.testing.assert_close(half, count_sketch(wide.half().float(), 16), rtol=1e-2, atol=1e-2)


def test_norms_of_the_sketch_pass_are_the_round_norms_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 3000, generator=g)
    signs, buckets, _ = _plan(3000, 64, 0)
    _, norms = sketch_and_norms(x, signs.to(x.dtype), buckets, 64)
    assert torch.equal(norms, row_norms(x))
    torch.testing.assert_close(norms, torch.linalg.vector_norm(x.double(), dim=1))
    # The round sketch fills the round's norm memo: the check reads these very values.
    y = x.clone()
    round_sketch(y, 64, seed=0)
    assert torch.equal(round_norms(y), norms)


def test_norms_of_non_finite_rows_are_not_finite() -> None:
    x = torch.ones(4, 300)
    x[1, 7] = float("nan")
    x[2, 0] = float("inf")
    n = row_norms(x)
    assert torch.isfinite(n).tolist() == [True, False, False, True]
    big = torch.full((1, 10), 1e30)  # float32 squares overflow; summed in float64 they do not
    assert bool(torch.isfinite(row_norms(big)).all())


@pytest.mark.parametrize("rows", [1, 3, 4, 9, 50])
def test_float64_dots_match_the_products_and_the_sketch_pass(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1001, generator=gen)
    grad = torch.randn(1001, generator=gen)
    dots = float64_dots(x, grad)
    assert dots.dtype == torch.float64
    torch.testing.assert_close(dots, x.double() @ grad.double(), rtol=1e-9, atol=1e-9)
    signs, buckets, _ = _plan(1001, 16, 0)
    sketch, norms, fused = sketch_norms_gain(x, signs.float(), buckets, 16, grad)
    assert torch.equal(fused, dots)  # the same bits in the sketch's pass
    plain_sketch, plain_norms = sketch_and_norms(x, signs.float(), buckets, 16)
    assert torch.equal(sketch, plain_sketch) and torch.equal(norms, plain_norms)


def test_wrong_arguments_are_refused_before_the_compiled_loops_read_them() -> None:
    """The loops index without bounds checks: a short vector would be read past its end and a
    bucket out of range written past the sketch, so the wrappers refuse both with a clear error."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 300, generator=gen)
    signs, buckets, _ = _plan(300, 16, 0)
    signs = signs.float()
    grad = torch.randn(300, generator=gen)
    bad_calls = {
        "x must be": lambda: row_norms(x.T),
        "signs must be a CPU vector of length 300": lambda: sketch_and_norms(
            x, signs[:-1], buckets, 16
        ),
        "signs must have": lambda: sketch_and_norms(x, signs.double(), buckets, 16),
        r"must lie in \[0, 8\)": lambda: sketch_and_norms(x, signs, buckets, 8),
        "buckets must be": lambda: sketch_and_norms(x, signs, buckets.int(), 16),
        "width k": lambda: sketch_and_norms(x, signs, buckets, 0),
        "g must be": lambda: sketch_norms_gain(x, signs, buckets, 16, grad[:10]),
        "g must be a CPU vector of length 300": lambda: float64_dots(x, grad[:4]),
    }
    for message, call in bad_calls.items():
        with pytest.raises(ValueError, match=message):
            call()
    sketch, norms = sketch_and_norms(x, signs, buckets, 16)  # the same arguments, right
    assert sketch.shape == (5, 16) and norms.shape == (5,)
    with pytest.raises(ValueError, match="width >= 1"):  # zero-width rows: nothing to sketch
        count_sketch(torch.zeros(3, 0), 4)


def test_large_inputs_split_into_chunks_give_the_same_results_with_any_thread_count() -> None:
    gen = torch.Generator().manual_seed(5)
    n = 64
    d = PARALLEL_MIN_ELEMENTS // n + 17  # large enough to run in chunks
    x = torch.randn(n, d, generator=gen)
    grad = torch.randn(d, generator=gen)
    signs, buckets, _ = _plan(d, 128, 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (
            sketch_and_norms(x, signs.float(), buckets, 128),
            float64_dots(x, grad),
        )
        torch.set_num_threads(2)
        two = (
            sketch_and_norms(x, signs.float(), buckets, 128),
            float64_dots(x, grad),
        )
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one[0], two[0], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(one[1], two[1])
    torch.testing.assert_close(one[1], x.double() @ grad.double(), rtol=1e-9, atol=1e-6)


def test_the_read_ahead_pass_needs_a_kernel_input_and_a_real_sketch() -> None:
    x = torch.randn(4, 200)
    g = torch.randn(200)
    with pytest.raises(ValueError, match="float32/float64 input with contiguous rows and d > 4k"):
        round_sketch_gain(x.half(), 16, g)
    with pytest.raises(ValueError, match="d > 4k"):
        round_sketch_gain(x, 64, g)  # d ≤ 4k: the rows are used exactly, no sketch
    dots = round_sketch_gain(x, 16, g)
    torch.testing.assert_close(dots, x.double() @ g.double())
    assert torch.equal(round_sketch(x, 16), count_sketch(x, 16))  # left in the round memo


def test_the_gram_product_in_blocks_is_the_full_product_and_symmetric() -> None:
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(301, 64, generator=gen, dtype=torch.float64)  # over the split threshold
    cos = pairwise_cosines(z)
    unit = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)
    torch.testing.assert_close(cos, (unit @ unit.T).clamp(-1, 1), rtol=0, atol=1e-6)
    assert torch.equal(cos, cos.T)


def _striped_reference(x: torch.Tensor, g: torch.Tensor, m: int) -> torch.Tensor:
    """The striped product written out: lane w sums g_j x_ij over j ≡ w (mod m) in x's dtype,
    coordinate by coordinate, then the lanes are added in float64."""
    n, d = x.shape
    lanes = torch.zeros(n, m, dtype=x.dtype)
    gx = g.to(x.dtype)
    for a in range(0, d, m):
        b = min(a + m, d)
        lanes[:, : b - a] += x[:, a:b] * gx[a:b]
    return lanes.to(torch.float64).sum(dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("d", "k"), [(1001, 16), (5003, 64), (20000, 128)])
def test_the_sketch_pass_reads_the_striped_products_bit_for_bit(
    dtype: torch.dtype, d: int, k: int
) -> None:
    """Reading the products in the sketch's sweep changes neither the sketch nor the norms, and
    gives the very products the standalone striped loop gives."""
    gen = torch.Generator().manual_seed(d)
    x = (torch.randn(9, d, generator=gen) + 0.2).to(dtype)
    g = (torch.randn(d, generator=gen) + 0.2).to(dtype)
    signs, buckets, _ = _plan(d, k, 3)
    signs = signs.to(dtype)
    sketch, norms, dots = sketch_norms_dots(x, signs, buckets, k, g)
    want_sketch, want_norms = sketch_and_norms(x, signs, buckets, k)
    assert torch.equal(sketch, want_sketch) and torch.equal(norms, want_norms)
    m = buckets.numel()
    assert m == stripe_lanes(d, k)
    assert torch.equal(dots, striped_dots(x, g, m))
    exact = x.double() @ g.double()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(dots, _striped_reference(x, g, m), rtol=tol, atol=tol)
    assert float((dots - exact).abs().max()) <= tol * float(exact.abs().max())


def test_striped_products_are_more_accurate_than_a_float32_product() -> None:
    """Lanes of a few dozen float32 terms: the error is far below PyTorch's float32 mv's."""
    gen = torch.Generator().manual_seed(11)
    d = 100_000
    x = torch.randn(16, d, generator=gen) + 0.3
    g = torch.randn(d, generator=gen) + 0.3
    exact = x.double() @ g.double()
    striped = striped_dots(x, g, stripe_lanes(d, 1024))
    mv = (x @ g).double()
    assert float((striped - exact).abs().max()) < 0.1 * float((mv - exact).abs().max())


def test_striped_products_refuse_wrong_arguments() -> None:
    x = torch.randn(3, 50)
    with pytest.raises(ValueError, match="lane count m must be >= 1"):
        striped_dots(x, torch.randn(50), 0)
    with pytest.raises(ValueError, match="g must be a CPU vector of length 50"):
        striped_dots(x, torch.randn(49), 8)
    signs, buckets, _ = _plan(50, 4, 0)
    with pytest.raises(ValueError, match="g must be"):
        sketch_norms_dots(x, signs.float(), buckets, 4, torch.randn(3))
    with pytest.raises(ValueError, match="float32/float64 input with contiguous rows and d > 4k"):
        round_sketch_dots(x.half(), 4, torch.randn(50))
    with pytest.raises(ValueError, match="d > 4k"):
        round_sketch_dots(x, 16, torch.randn(50))  # d ≤ 4k: no sketch pass to share


def test_the_striped_read_ahead_leaves_the_round_sketch_and_norms() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3000, generator=gen)
    c = torch.randn(3000, generator=gen)
    dots = round_sketch_dots(x, 64, c, seed=5)
    assert torch.equal(dots, striped_dots(x, c, stripe_lanes(3000, 64)))
    assert torch.equal(round_sketch(x, 64, seed=5), count_sketch(x, 64, seed=5))
    assert torch.equal(round_norms(x), row_norms(x))


def test_striped_products_in_chunks_do_not_depend_on_the_thread_count() -> None:
    gen = torch.Generator().manual_seed(8)
    n = 64
    d = PARALLEL_MIN_ELEMENTS // n + 17
    x = torch.randn(n, d, generator=gen)
    c = torch.randn(d, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = striped_dots(x, c, 997)
        torch.set_num_threads(2)
        two = striped_dots(x, c, 997)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    # Each lane adds ⌈d/m⌉ float32 terms: the standard bound on a sum's rounding error.
    terms = -(-d // 997)
    bound = terms * 2.0**-24 * (x.double().abs() @ c.double().abs())
    assert bool(((one - x.double() @ c.double()).abs() <= bound).all())
