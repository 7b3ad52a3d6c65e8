r"""Seeded random sketches of update rows, for signals that only need angles between updates.

Several parts of the trust engine compare update *directions* across clients or rounds: the
community signal and the cartel detector (pairwise cosines, an :math:`n \times n` Gram matrix,
:math:`O(n^2 d)`), the temporal signal (a per-client history vector, :math:`O(d)` memory per
client) and the entropy signal (sign codes of random projections). All run on one
:func:`count_sketch` of the rows instead of the rows themselves when :math:`d` is large.

Count sketch
------------
A count sketch (Charikar, Chen, Farach-Colton 2002; the "sparse JL" transform of Dasgupta, Kumar,
Sarlós 2010) maps :math:`x \in \mathbb{R}^d` to :math:`S x \in \mathbb{R}^k`,

.. math::

    (Sx)_b = \sum_{j \,:\, h(j) = b} s_j\, x_j ,

with random signs :math:`s_j \in \{\pm 1\}` and a random bucket map :math:`h : [d] \to [k]`. It is
linear, :math:`\mathbb{E}\,\langle Sx, Sy\rangle = \langle x, y \rangle`, and (for a fully
random bucket map) :math:`\operatorname{Var}\langle Sx, Sy\rangle \le (\lVert x\rVert^2
\lVert y\rVert^2 + \langle x, y\rangle^2)/k`, so cosines are kept to about :math:`\pm 1/\sqrt{k}` for unrelated
vectors — and far better for nearly parallel ones: the estimate of :math:`\cos(x, y)` is a ratio
whose error shrinks with :math:`\lVert \hat x - \hat y \rVert`, so identical rows sketch to
identical rows (cosine 1, up to the rounding of :func:`pairwise_cosines`) and a cosine of 0.99 is
resolved to a few thousandths already at :math:`k = 256` (what the community and cartel
thresholds need; the engine uses :math:`k = 1024`, which the temporal signal's history wants).

To run at memory speed the bucket map is built in two levels: the coordinates are cut into
:math:`m = \lceil d / r\rceil` *runs* of about :math:`r` coordinates each (:math:`r \le 32`,
at least four runs per bucket on average), run :math:`w` holding the coordinates
:math:`j \equiv w \pmod m` — one from each stripe of :math:`m` consecutive coordinates — and the
runs are assigned to buckets by a seeded random permutation (balanced: every bucket receives
:math:`\lfloor m/k \rfloor` or :math:`\lceil m/k \rceil` of the runs). This is a count sketch whose
hash is constant on runs; because every coordinate keeps its own random sign the estimator stays
unbiased, and the random run-to-bucket map spreads any layer of the model over all buckets. The
strided runs let one pass add each stripe of a row into a cache-resident vector of run sums, a
loop the compiler vectorises (:func:`matl.aggregation.kernels.sketch_and_norms`, which computes
the row norms in the same read; measured at :math:`n = 1000, d = 10^5`, float32, 2 cores: 17 ms
for both against 36 + 11 ms for PyTorch's sketch of contiguous runs and a norm pass). Until this
release runs were contiguous (coordinates :math:`w r, \dots, w r + r - 1`): the same
distribution of sketches, but not the same sketch for a given seed.

One sketch per round
--------------------
Every direction-based part of the trust engine — temporal consistency, community diversity, the
cartel detector and the entropy signal's sign codes — reads the same round's sketch (with the
engine's default widths and seeds). :func:`round_sketch`
computes it once per ``(updates, k, seed)`` and hands the same tensor to every later caller in the
round, and :func:`sketch_cosines` does the same for its :math:`n \times n` cosine matrix; so a round
costs one pass over the updates and one small Gram product for all of them, not one of each per
signal (:func:`matl.aggregation.memo.round_memo`: keyed on the very tensor object and its
fingerprint — version counter, data pointer, shape, strides, dtype, device — so in-place changes and freed
tensors are never matched). The shared results are read-only: callers that modify them must copy
first.

All randomness comes from ``seed``: the same ``(d, k, seed)`` gives the same sketch on every call
and every machine. An adversary who knows the seed could craft updates whose sketches collide, so a
deployment should treat the seed as a server secret.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from matl.aggregation.kernels import (
    kernel_dtype,
    sketch_and_norms,
    sketch_norms_dots,
    sketch_norms_gain,
)
from matl.aggregation.memo import round_memo
from matl.trust._util import unit_rows

__all__ = [
    "SKETCH_LAYOUT",
    "community_sizes",
    "count_sketch",
    "fold_sketch",
    "gaussian_projection",
    "pairwise_cosines",
    "round_sketch",
    "round_sketch_dots",
    "round_sketch_gain",
    "sketch_cosines",
    "sketch_layout_changed",
    "sketch_width",
    "stripe_lanes",
    "tight_group_members",
]

#: The layout of the sketch's runs, saved with every state that holds sketched vectors (temporal
#: histories, innovation deviations, entropy projections): ``"strided"`` since runs are taken
#: with a stride; a state without it was saved with contiguous runs, whose vectors are not
#: comparable with this sketch's (see :func:`sketch_layout_changed`).
SKETCH_LAYOUT = "strided"
#: Longest run of coordinates summed as one unit of the two-level count sketch.
_MAX_RUN = 32
#: Fewest lanes of the striped dot products where the rows are used exactly (:func:`stripe_lanes`).
_EXACT_LANES = 1024

#: Target number of entries of one row block of the sketch's temporaries.
_BLOCK_ELEMENTS = 1 << 22


def _runs(d: int, k: int) -> tuple[int, int]:
    """``(run length, run count m)`` of the two-level sketch of ``d`` coordinates at width ``k``."""
    run = max(1, min(_MAX_RUN, d // (4 * k)))
    return run, -(-d // run)


@functools.lru_cache(maxsize=16)
def _plan(d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(signs (d,) float64, bucket of each run (m,) int64, run length)`` for ``(d, k, seed)``."""
    run, m = _runs(d, k)
    g = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, (d,), generator=g, dtype=torch.int64).to(torch.float64) * 2 - 1
    buckets = torch.randperm(m, generator=g) % k
    return signs, buckets, run


@functools.lru_cache(maxsize=32)
def _signs_as(d: int, k: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    return _plan(d, k, seed)[0].to(dtype)


def _layout(x: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signs in x's dtype, bucket of each run)`` of the sketch of ``x``'s rows, on its device."""
    d = x.shape[1]
    return _signs_as(d, k, seed, x.dtype).to(x.device), _plan(d, k, seed)[1].to(x.device)


def _torch_sketch(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """:func:`count_sketch` in PyTorch operations, over row blocks (any dtype and device)."""
    n, d = x.shape
    signs, buckets = _layout(x, k, seed)
    m = buckets.numel()
    whole = (d // m) * m
    stripes = signs[:whole].view(-1, m)
    rows = max(1, min(n, _BLOCK_ELEMENTS // max(d, 1)))
    out = torch.zeros(n, k, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, n, rows):
            block = x[start : min(start + rows, n)].detach()
            runs = (block[:, :whole].reshape(block.shape[0], -1, m) * stripes).sum(dim=1)
            if whole < d:
                runs[:, : d - whole] += block[:, whole:] * signs[whole:]
            out[start : start + block.shape[0]].index_add_(1, buckets, runs.to(torch.float64))
    return out


def _sketch_and_norms(x: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled one-read sketch and row norms (:func:`matl.aggregation.kernels.sketch_and_norms`)."""
    return sketch_and_norms(x, *_layout(x, k, seed), k)


def count_sketch(x: torch.Tensor, k: int, *, seed: int = 0) -> torch.Tensor:
    """The ``(n, k)`` float64 count sketch of the rows of ``x`` (see the module docstring).

    Parameters
    ----------
    x:
        ``(n, d)`` floating tensor. Not modified.
    k:
        Sketch width, ``k ≥ 1``.
    seed:
        Seed of the signs and the bucket map.

    Notes
    -----
    A CPU float32/float64 input with contiguous rows takes the compiled kernel
    (:mod:`matl.aggregation.kernels`: one read of each row, the row norms alongside); any other
    takes PyTorch operations over row blocks of about four million entries. Both sum a run's
    signed coordinates in ``x``'s dtype (a run has at most 32 of them) and the runs into the
    buckets in float64, so they agree to rounding.
    """
    if k < 1:
        raise ValueError(f"sketch width must be >= 1, got {k}")
    if kernel_dtype(x):
        return _sketch_and_norms(x, k, int(seed))[0]
    return _torch_sketch(x, k, int(seed))


def _with_round_sketch(
    who: str,
    x: torch.Tensor,
    k: int,
    seed: int,
    read: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, ...]:
    """Run a compiled pass ``read(signs, buckets) -> (sketch, norms, *extra)`` over ``x``, leave
    its sketch and norms in the round memo (as :func:`round_sketch` and
    :func:`~matl.aggregation.memo.round_norms` would compute them) and return ``extra``."""
    if not kernel_dtype(x) or sketch_width(x.shape[1], k) != k:
        raise ValueError(f"{who} needs a CPU float32/float64 input with contiguous rows and d > 4k")
    sketch, norms, *extra = read(*_layout(x, k, int(seed)))
    round_memo("sketch", x, k, seed, lambda: sketch)
    round_memo("norms", x, None, 0, lambda: norms)
    return tuple(extra)


def _round_products(
    who: str,
    kernel: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    k: int,
    g: torch.Tensor,
    seed: int,
) -> torch.Tensor:
    """The ``(n,)`` products with ``g`` that ``kernel(x, signs, buckets, k, g) -> (sketch, norms,
    dots)`` reads in the round's sketch pass (:func:`_with_round_sketch`)."""
    (dots,) = _with_round_sketch(
        who, x, k, seed, lambda signs, buckets: kernel(x, signs, buckets, k, g)
    )
    return dots


def round_sketch_gain(x: torch.Tensor, k: int, g: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    r"""Every row's dot product with ``g``, summed in float64
    (:func:`matl.aggregation.kernels.float64_dots`: the same bits), read in the same pass as the
    round's sketch and row norms (:func:`matl.aggregation.kernels.sketch_norms_gain`), which it
    leaves in the round memo for :func:`round_sketch` and
    :func:`~matl.aggregation.memo.round_norms` (PoGQ's fast path, primed by the trust engine:
    :meth:`matl.trust.quality.PoGQSignal.prepare`). Needs a kernel input
    (:func:`~matl.aggregation.kernels.kernel_dtype`) and a real sketch (:func:`sketch_width`
    ``(d, k) == k``)."""
    return _round_products("round_sketch_gain", sketch_norms_gain, x, k, g, seed)


def stripe_lanes(d: int, k: int | None) -> int:
    """The lane count of the round's striped dot products at width ``k``
    (:func:`matl.aggregation.kernels.striped_dots`): the run count of the ``(d, k)`` sketch, so
    that :func:`round_sketch_dots` can read the same products in the sketch's pass. Where the rows
    are used exactly (no sketch pass to share) at least ``_EXACT_LANES`` lanes (all ``d`` if fewer)
    and enough that a lane adds at most ``_MAX_RUN`` terms, as it does beside a sketch."""
    if sketch_width(d, k) == d:
        return max(1, min(d, max(_EXACT_LANES, -(-d // _MAX_RUN))))
    assert k is not None
    return _runs(d, k)[1]


def round_sketch_dots(x: torch.Tensor, k: int, g: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    r"""Every row's dot product with ``g`` (:func:`matl.aggregation.kernels.striped_dots` with
    :func:`stripe_lanes` ``(d, k)`` lanes: the same bits), read in the same pass as the round's
    sketch and row norms, which it leaves in the round memo for :func:`round_sketch` and
    :func:`~matl.aggregation.memo.round_norms` (peer comparison's centre, primed by the trust
    engine: :meth:`matl.trust.peer.PeerSignal.prepare`). Needs a kernel input
    (:func:`~matl.aggregation.kernels.kernel_dtype`) and a real sketch (:func:`sketch_width`
    ``(d, k) == k``)."""
    return _round_products("round_sketch_dots", sketch_norms_dots, x, k, g, seed)


def sketch_layout_changed(state: dict[str, Any], width: int | None, sketch_dim: int | None) -> bool:
    """Whether a saved state's vectors of ``width`` were sketched with another layout than
    :data:`SKETCH_LAYOUT` (a state without ``"sketch_layout"`` predates the tag: contiguous
    runs). Only sketched vectors (``width == sketch_dim``) depend on the layout; exact rows do not.
    An untagged state of a model with exactly ``sketch_dim`` parameters is ambiguous (its rows
    were exact, but a sketch has the same width) and counts as changed: its vectors are dropped
    and rebuilt from the next participation, which costs a round's comparisons, never a wrong
    one. States saved since the tag was added (stop 22) are never ambiguous.
    """
    if width is None or sketch_dim is None or int(width) != int(sketch_dim):
        return False
    return bool(state.get("sketch_layout", "contiguous") != SKETCH_LAYOUT)


def sketch_width(d: int, k: int | None) -> int:
    """Width of the round sketch of ``d``-parameter rows at width ``k``: ``d`` itself when ``k`` is
    ``None`` or ``d ≤ 4k`` (the rows are used exactly), else ``k``."""
    return d if k is None or d <= 4 * k else k


def _exact(x: torch.Tensor, k: int | None) -> bool:
    return sketch_width(x.shape[1], k) == x.shape[1]


def round_sketch(x: torch.Tensor, k: int | None, *, seed: int = 0) -> torch.Tensor:
    """The round's shared ``(n, k)`` float64 view of the rows of ``x``: ``x`` itself (as float64)
    when ``k`` is ``None`` or ``d ≤ 4k`` (exact and cheap), else its :func:`count_sketch` of width
    ``k``. Computed once per ``(x, k, seed)`` (see "One sketch per round"); **read-only**."""
    if k is not None and k < 1:
        raise ValueError(f"sketch width must be >= 1, got {k}")
    if _exact(x, k):
        return round_memo("rows", x, None, 0, lambda: x.detach().to(torch.float64, copy=True))
    assert k is not None
    width = k

    def compute() -> torch.Tensor:
        if not kernel_dtype(x):
            return _torch_sketch(x, width, int(seed))
        sketch, norms = _sketch_and_norms(x, width, int(seed))
        round_memo("norms", x, None, 0, lambda: norms)  # the same bits as round_norms computes
        return sketch

    return round_memo("sketch", x, k, seed, compute)


#: From this many rows the Gram product skips its lower-left block (see :func:`_gram`).
_GRAM_SPLIT_ROWS = 256


def _gram(a: torch.Tensor) -> torch.Tensor:
    """``a @ a.T``; from :data:`_GRAM_SPLIT_ROWS` rows as three products of the row halves
    (the two diagonal blocks and the upper-right one, whose transpose is the lower-left): three
    quarters of the multiplications (measured at ``n = 1000, k = 1024``: 8.7 against 10.4 ms)."""
    n = a.shape[0]
    if n < _GRAM_SPLIT_ROWS:
        return a @ a.T
    h = n // 2
    top, bottom = a[:h], a[h:]
    out = torch.empty(n, n, dtype=a.dtype, device=a.device)
    torch.mm(top, top.T, out=out[:h, :h])
    torch.mm(bottom, bottom.T, out=out[h:, h:])
    torch.mm(top, bottom.T, out=out[:h, h:])
    out[h:, :h] = out[:h, h:].T
    return out


def pairwise_cosines(z: torch.Tensor) -> torch.Tensor:
    r"""``(n, n)`` float64 cosines :math:`\hat z_i^\top \hat z_j` between the rows of ``z``, from
    one Gram product of the unit rows :math:`\hat z_i = z_i / \lVert z_i\rVert`. The rows are
    normalised in float64 and multiplied in float32 (half the cost of a float64 product: 1.0
    against 1.9 means at :math:`n = 1000`, :math:`k = 1024`); a cosine is then exact to about
    :math:`10^{-7}`, far inside what the 0.99 thresholds of the community signal, the cartel
    detector and the tight-group rule resolve. By convention a zero row has cosine 1 with another
    zero row (two empty updates are identical) and 0 with any other row.
    """
    z64 = z.to(torch.float64)
    unit = unit_rows(z64).to(torch.float32)
    cos = _gram(unit).to(torch.float64)
    zero = torch.linalg.vector_norm(z64, dim=1) == 0
    if bool(zero.any()):
        both = zero.unsqueeze(0) & zero.unsqueeze(1)
        either = zero.unsqueeze(0) | zero.unsqueeze(1)
        cos = torch.where(either, both.to(cos.dtype), cos)
    return cos.clamp_(-1.0, 1.0)


#: From this many rows :func:`sketch_cosines` reads the sketch folded to :data:`_FOLD_WIDTH`
#: buckets (see there).
_FOLD_FROM_ROWS = 256
#: The folded width of :func:`sketch_cosines`' Gram product from :data:`_FOLD_FROM_ROWS` rows.
_FOLD_WIDTH = 256


def fold_sketch(z: torch.Tensor, width: int) -> torch.Tensor:
    r"""The ``(n, k)`` count sketch ``z`` folded to ``width`` buckets (``width`` divides ``k``):
    bucket :math:`b` is the sum of buckets :math:`b\,k/w, \dots, (b + 1)\,k/w - 1`. Every run
    keeps its signs and now lands in bucket ``buckets[run] // (k / w)``, uniform over the
    ``width`` buckets as ``buckets[run]`` is over ``k``: a count sketch of the same rows at width
    ``width`` (not :func:`count_sketch` ``(x, width)``, whose runs and map differ)."""
    n, k = z.shape
    if width < 1 or k % width:
        raise ValueError(f"fold_sketch: width {width} must divide the sketch width {k}")
    return z.reshape(n, width, k // width).sum(dim=2)


def sketch_cosines(x: torch.Tensor, k: int | None, *, seed: int = 0) -> torch.Tensor:
    r"""The round's shared ``(n, n)`` :func:`pairwise_cosines` of :func:`round_sketch` ``(x, k,
    seed)``, computed once per round; **read-only** (copy before modifying).

    From :data:`_FOLD_FROM_ROWS` (256) rows on, a real sketch of a width that is a multiple of
    :data:`_FOLD_WIDTH` (256) and wider is first folded to 256 buckets (:func:`fold_sketch`;
    another width, e.g. 1000, is used whole): the Gram product costs :math:`n^2 k`, and what its
    readers decide — pairs of near-identical updates at cosine 0.99, each row's largest cosine —
    a narrower sketch still resolves. A sketched cosine's error scales with the pair's own
    distance: for a pair at cosine :math:`c` the sketch reads :math:`1 - c` within a relative
    error of about :math:`\sqrt{4/k}` (12 % at 256 buckets, 6 % at 1024), so a pair at 0.99
    reads :math:`0.990 \pm 0.0013` rather than :math:`\pm 0.0006`; pairs within about 0.004 of
    the threshold may fall on either side, honest pairs (cosines below 0.9) and the attacks'
    near-copies (0.9999 for collusion, 1 for ALIE and IPM) are far from it. Unrelated pairs read
    within about :math:`\pm 1/\sqrt{256} \approx 0.06` instead of 0.03. Measured at :math:`n =
    1000` (2 cores): 3.3 against 12–13 ms per round.
    """
    width = None if _exact(x, k) else k

    def compute() -> torch.Tensor:
        z = round_sketch(x, k, seed=seed)
        if (
            width is not None
            and x.shape[0] >= _FOLD_FROM_ROWS
            and width > _FOLD_WIDTH
            and width % _FOLD_WIDTH == 0
        ):
            z = fold_sketch(z, _FOLD_WIDTH)
        return pairwise_cosines(z)

    return round_memo("cosines", x, width, seed if width is not None else 0, compute)


@functools.lru_cache(maxsize=8)
def gaussian_projection(d: int, k: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """A fixed ``(d, k)`` matrix of independent standard normal entries drawn from ``seed``.

    Cached per ``(d, k, seed, dtype)``; the returned tensor is shared, never modify it.
    """
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(d, k, generator=g, dtype=torch.float64).to(dtype)


def community_sizes(cos: torch.Tensor, tau: float) -> torch.Tensor:
    """``(n,)`` float64: for each row, 1 plus the number of *other* rows at cosine ``>= tau`` in
    the ``(n, n)`` cosine matrix ``cos`` (its diagonal is ignored) — the size of a client's group
    of near-identical updates, as the community signal and the innovation reference count it."""
    close = cos >= tau
    others = close.sum(dim=1) - close.diagonal().to(torch.int64)
    return 1.0 + others.to(torch.float64)


def tight_group_members(
    updates: torch.Tensor, k: int | None, seed: int, tau: float
) -> torch.Tensor:
    """``(n,)`` bool: rows with at least two others at cosine ``>= tau`` (a group of three or
    more near-identical updates, as :class:`~matl.trust.tcdm.CommunitySignal` counts them), from
    the round's shared :func:`sketch_cosines` — the clients the innovation test and the peer
    signal leave out of their references. Computed once per round and ``tau`` (shared,
    **read-only**)."""
    n = updates.shape[0]
    if n < 3:
        return torch.zeros(n, dtype=torch.bool)
    width = None if _exact(updates, k) else k
    return round_memo(
        f"tight_groups:{float(tau)!r}",
        updates,
        width,
        seed if width is not None else 0,
        lambda: community_sizes(sketch_cosines(updates, k, seed=seed), tau) >= 3,
    )
