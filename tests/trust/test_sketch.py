"""The seeded count sketch behind the community and temporal signals."""

from __future__ import annotations

import pytest
import torch

from matl.errors import InvalidUpdateError
from matl.trust._util import row_norms
from matl.trust.sketch import _layout as sketch_layout
from matl.trust.sketch import (
    community_sizes,
    count_sketch,
    fold_sketch,
    gaussian_projection,
    round_sketch,
    sketch_cosines,
    sketch_width,
    stripe_lanes,
    tight_group_members,
)
from matl.trust.tcdm import pairwise_cosines

pytestmark = pytest.mark.usefixtures("single_thread")


def test_is_linear_deterministic_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 10_007, generator=g, dtype=torch.float64)  # d not a multiple of the run
    a = count_sketch(x, 64, seed=1)
    assert a.shape == (5, 64) and a.dtype == torch.float64
    assert torch.equal(a, count_sketch(x, 64, seed=1))
    assert not torch.equal(a, count_sketch(x, 64, seed=2))
    torch.testing.assert_close(count_sketch(x[:2] + 3 * x[2:4], 64, seed=1), a[:2] + 3 * a[2:4])
    # Every coordinate lands in exactly one bucket with a ±1 sign: the sketch of e_j is ±e_b.
    e = torch.zeros(3, 10_007, dtype=torch.float64)
    e[0, 0] = e[1, 5000] = e[2, 10_006] = 1.0
    s = count_sketch(e, 64, seed=1)
    assert s.abs().sum(dim=1).tolist() == [1.0, 1.0, 1.0]


def test_row_blocks_do_not_change_the_result() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(700, 9000, generator=g)  # several row blocks of the sketch's temporaries
    whole = count_sketch(x, 128, seed=0)
    parts = torch.cat([count_sketch(x[i : i + 50], 128, seed=0) for i in range(0, 700, 50)])
    torch.testing.assert_close(whole, parts)


def test_keeps_cosines() -> None:
    g = torch.Generator().manual_seed(2)
    d = 60_000
    base = torch.randn(d, generator=g)
    x = torch.cat(
        [
            base.expand(2, d),  # identical rows
            base + 0.1 * torch.randn(2, d, generator=g),  # cos ≈ 0.995 to base
            torch.randn(20, d, generator=g),  # unrelated
        ]
    )
    exact = pairwise_cosines(x.double())
    sk = pairwise_cosines(count_sketch(x, 256, seed=0))
    assert float(sk[0, 1]) == pytest.approx(1.0, abs=1e-12)
    near = (exact[:4, :4] - sk[:4, :4]).abs().max()
    assert float(near) < 2e-3
    far = (exact - sk).abs().max()
    assert float(far) < 0.3  # about ±1/√k for unrelated rows


def test_round_sketch_is_exact_for_small_d() -> None:
    x = torch.randn(3, 100)
    same = round_sketch(x, 256)
    assert same.dtype == torch.float64 and torch.equal(same, x.double())
    assert round_sketch(x, None).shape == (3, 100)
    assert round_sketch(torch.randn(3, 2000), 256).shape == (3, 256)
    assert [sketch_width(d, k) for d, k in [(100, 256), (1024, 256), (1025, 256), (9, None)]] == [
        100,
        1024,
        256,
        9,
    ]
    with pytest.raises(ValueError):
        count_sketch(x, 0)
    with pytest.raises(ValueError):
        round_sketch(x, 0)


def test_gaussian_projection_is_cached_and_seeded() -> None:
    a = gaussian_projection(50, 4, 0, torch.float32)
    assert a is gaussian_projection(50, 4, 0, torch.float32)
    assert a.shape == (50, 4) and a.dtype == torch.float32
    assert not torch.equal(a, gaussian_projection(50, 4, 1, torch.float32))
    torch.testing.assert_close(a.double(), gaussian_projection(50, 4, 0, torch.float64))


def test_round_sketch_is_computed_once_per_tensor_and_version() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 4000, generator=g)
    a = round_sketch(x, 64, seed=1)
    assert round_sketch(x, 64, seed=1) is a  # shared within the round
    assert torch.equal(a, count_sketch(x, 64, seed=1))
    assert round_sketch(x, 64, seed=2) is not a  # another seed is another sketch
    twin = x.clone()
    b = round_sketch(twin, 64, seed=1)
    assert b is not a and torch.equal(a, b)  # equal values, another tensor: recomputed
    a = round_sketch(x, 64, seed=1)
    assert round_sketch(x, 64, seed=1) is a
    x[0, 0] += 1.0  # in place: the version counter moves, the memo must not answer
    c = round_sketch(x, 64, seed=1)
    assert c is not a and torch.equal(c, count_sketch(x, 64, seed=1))


def test_sketch_cosines_are_shared_and_keep_angles() -> None:
    g = torch.Generator().manual_seed(4)
    u = torch.randn(6, 5000, generator=g, dtype=torch.float64)
    u[1] = u[0] * 3.0  # same direction
    u[2] = 0.8 * u[0] + 0.6 * torch.randn(5000, generator=g, dtype=torch.float64)
    cos = sketch_cosines(u, 256, seed=1)
    assert sketch_cosines(u, 256, seed=1) is cos
    assert cos[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert cos[0, 2] == pytest.approx(0.8, abs=0.1)
    torch.testing.assert_close(cos, pairwise_cosines(count_sketch(u, 256, seed=1)))
    v = torch.randn(3, 8, dtype=torch.float64, generator=g)  # small d: exact cosines
    exact = torch.nn.functional.cosine_similarity(v[:, None], v[None], dim=2)
    torch.testing.assert_close(sketch_cosines(v, 64), exact)


def test_fold_sketch_sums_adjacent_buckets() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 12, generator=g, dtype=torch.float64)
    folded = fold_sketch(z, 3)
    torch.testing.assert_close(folded[:, 1], z[:, 4:8].sum(dim=1))
    assert folded.shape == (5, 3) and torch.equal(fold_sketch(z, 12), z)
    with pytest.raises(ValueError, match="must divide"):
        fold_sketch(z, 5)


def test_many_rows_read_their_cosines_in_the_folded_sketch() -> None:
    """From 256 rows the Gram product reads the sketch folded to 256 buckets (below, the whole
    width): a near-identical pair reads 1 - cos to within a relative error of about sqrt(4/k)
    (12 % at 256 buckets: 0.990 +- 0.0013), and groups clear of the 0.99 threshold are the same
    as at the whole width and in the full space."""
    g = torch.Generator().manual_seed(11)
    n, d = 300, 20_000
    u = torch.randn(n, d, generator=g)
    base = torch.randn(d, generator=g)
    u[:12] = base + 0.05 * torch.randn(12, d, generator=g)  # pairwise cosine 1/(1+a²) ≈ 0.9975
    u[12:20] = base + 0.25 * torch.randn(8, d, generator=g)  # about 0.94, 0.97 to the first
    cos = sketch_cosines(u, 1024, seed=2)
    z = round_sketch(u, 1024, seed=2)
    torch.testing.assert_close(cos, pairwise_cosines(fold_sketch(z, 256)))
    wide = pairwise_cosines(z)
    exact = pairwise_cosines(u.double())
    near = exact >= 0.97
    near.fill_diagonal_(False)
    assert int(near.sum()) > 0
    # the error scales with the pair's own distance 1 - cos (relative SD about sqrt(4/256))
    assert bool(((cos - exact).abs() <= 0.4 * (1.0 - exact))[near].all())
    far = (cos - exact)[exact.abs() < 0.5]  # honest pairs: about 1/sqrt(256) apart
    assert 0.04 < float(far.pow(2).mean().sqrt()) < 0.09
    assert torch.equal(community_sizes(cos, 0.99), community_sizes(wide, 0.99))
    assert torch.equal(community_sizes(cos, 0.99), community_sizes(exact, 0.99))
    few = u[:255].clone()  # below 256 rows: the whole width
    torch.testing.assert_close(
        sketch_cosines(few, 1024, seed=2), pairwise_cosines(round_sketch(few, 1024, seed=2))
    )


def test_tight_groups_are_computed_once_per_round_and_threshold() -> None:
    g = torch.Generator().manual_seed(8)
    u = torch.randn(8, 5000, generator=g, dtype=torch.float64)
    u[1:3] = u[0] + 0.05 * torch.randn(2, 5000, generator=g, dtype=torch.float64)  # cos ~0.999
    members = tight_group_members(u, 256, 1, 0.99)
    assert members.tolist() == [True] * 3 + [False] * 5
    assert tight_group_members(u, 256, 1, 0.99) is members
    loose = tight_group_members(u, 256, 1, 0.99999)  # another threshold: computed anew
    assert loose is not members and not bool(loose.any())
    u[3:5] = u[0]  # an in-place change: a new round's content
    assert tight_group_members(u, 256, 1, 0.99).tolist() == [True] * 5 + [False] * 3


def test_row_norms_are_shared_but_private_copies() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    a = row_norms(x, "t")
    a[0] = -1.0
    torch.testing.assert_close(row_norms(x, "t"), torch.tensor([5.0, 1.0], dtype=torch.float64))
    x[1, 1] = float("nan")
    with pytest.raises(InvalidUpdateError, match="NaN or Inf"):
        row_norms(x, "t")


def test_memo_sees_data_reassignment_and_skips_inference_tensors() -> None:
    x = torch.randn(4, 3000, dtype=torch.float64)
    a = round_sketch(x, 64)
    x.data = torch.randn(6, 3000, dtype=torch.float64)
    b = round_sketch(x, 64)
    assert b.shape == (6, 64) and torch.equal(b, count_sketch(x, 64))
    with torch.inference_mode():
        y = torch.randn(4, 3000)
    torch.testing.assert_close(row_norms(y, "t"), torch.linalg.vector_norm(y.double(), dim=1))
    assert torch.equal(round_sketch(y, 64), count_sketch(y, 64))
    del a


def test_memo_sees_a_new_storage_of_the_same_shape() -> None:
    """``x.data = other`` (same shape and dtype) keeps the version counter: the data pointer in the
    fingerprint still tells the memo the values are new."""
    x = torch.randn(4, 3000, dtype=torch.float64)
    a = round_sketch(x, 64)
    version = x._version
    other = torch.randn(4, 3000, dtype=torch.float64)
    x.data = other
    assert x._version == version
    b = round_sketch(x, 64)
    assert b is not a and torch.equal(b, count_sketch(other, 64))


def test_community_sizes_count_other_rows_only() -> None:
    cos = torch.tensor(
        [
            [1.0, 0.995, 0.2, 0.999],
            [0.995, 1.0, 0.1, 0.992],
            [0.2, 0.1, 1.0, 0.0],
            [0.999, 0.992, 0.0, 0.5],
        ],
        dtype=torch.float64,
    )  # the last diagonal entry is below tau on purpose: it must not matter
    assert community_sizes(cos, 0.99).tolist() == [3.0, 3.0, 1.0, 3.0]


def test_the_layout_of_a_sketch_is_built_once() -> None:
    """The signs and bucket map of ``(d, k, seed)`` are drawn once and reused by every pass (a
    rebuild costs 0.5 ms a pass at d = 10⁵ and 6 ms at 10⁶)."""
    x = torch.zeros(2, 5000)
    signs, buckets = sketch_layout(x, 64, 3)
    again = sketch_layout(x, 64, 3)
    assert again[0] is signs and again[1] is buckets
    assert not torch.equal(sketch_layout(x, 64, 4)[1], buckets)


def test_stripe_lanes_follow_the_sketch_or_cap_a_lane_at_32_terms() -> None:
    assert stripe_lanes(100_000, 1024) == -(-100_000 // 24)  # the sketch's run count
    assert stripe_lanes(3000, 1024) == 1024  # rows used exactly: 1024 lanes
    assert stripe_lanes(10, None) == 10
    assert stripe_lanes(1_000_000, None) == 31_250  # 32 terms a lane, not 977
