"""Small helpers shared by the trust signals: input checks, robust statistics, per-client rows.

Nothing here is part of the public API; the signals document the maths they build from these.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import torch

from matl.aggregation.base import RoundContext
from matl.aggregation.memo import round_norms
from matl.errors import ConfigError, InvalidUpdateError
from matl.rng import keyed_generator

#: Consistency constant of the MAD: ``1.4826 · MAD`` estimates σ for Gaussian data.
MAD_SCALE = 1.4826


def check_rows(updates: torch.Tensor, signal: str) -> None:
    """Cheap shape/dtype check of an ``(n, d)`` update matrix (finiteness is checked from the row
    norms each signal computes anyway, see :func:`row_norms`)."""
    if not isinstance(updates, torch.Tensor):
        raise InvalidUpdateError(f"{signal}: updates must be a torch.Tensor, got {type(updates)}")
    if updates.ndim != 2 or updates.shape[0] == 0 or updates.shape[1] == 0:
        raise InvalidUpdateError(
            f"{signal}: updates must be a non-empty 2-D (n, d) tensor, got {tuple(updates.shape)}"
        )
    if not updates.is_floating_point():
        raise InvalidUpdateError(f"{signal}: updates must be floating point, got {updates.dtype}")


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite, in one reduction for the common case: a sum is
    finite only if every term is (a NaN or an infinity makes it NaN or infinite), so a finite sum
    settles it; only a non-finite sum, which finite entries can also give by overflowing, is
    checked entry by entry."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def row_norms(updates: torch.Tensor, signal: str) -> torch.Tensor:
    """``(n,)`` float64 Euclidean norms of the rows (a private copy); raises on rows holding NaN or
    Inf.

    The round's shared norms (:func:`~matl.aggregation.memo.round_norms`: computed once per round,
    also by the finiteness check every rule runs first — summed in float64 for CPU float32/float64
    updates, in the input dtype otherwise); a row whose norm overflows although its entries are
    finite is recomputed in float64.
    """
    norms = round_norms(updates).clone()
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        finite = torch.isfinite(updates[rows]).all(dim=1)
        if not bool(finite.all()):
            shown = rows[~finite].tolist()[:10]
            raise InvalidUpdateError(
                f"{signal}: updates contain NaN or Inf in row(s) {shown}; reject them first"
            )
        norms[rows] = torch.linalg.vector_norm(updates[rows].to(torch.float64), dim=1)
    return norms


def quorum_count(fraction: float, n: int) -> int:
    r""":math:`\lceil q n \rceil`, the clients a crowd quorum of ``fraction`` :math:`q` needs among
    :math:`n`; a product that lands a rounding error above an integer (0.07 · 100 =
    7.000000000000001) counts as that integer."""
    return math.ceil(fraction * n - 1e-9)


def median(x: torch.Tensor) -> float:
    """The median of a 1-D tensor (mean of the two middles for an even length), as a float."""
    return float(torch.quantile(x.to(torch.float64), 0.5))


def running_value(
    mean: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, empty: float
) -> torch.Tensor:
    """The bias-corrected running values ``mean / weight`` at ``rows`` of the tables kept by
    :func:`fold_running_mean`; ``empty`` where a row has no observation yet (weight 0)."""
    w = weight[rows]
    return torch.where(w > 0, mean[rows] / torch.where(w > 0, w, 1.0), empty)


def fold_running_mean(
    mean: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    x: torch.Tensor,
    memory: float,
    harm_memory: float | None = None,
) -> None:
    r"""In place, one step of the bias-corrected moving average of ``x`` at ``rows``.

    :math:`m \leftarrow a\,m + (1 - a)\,x`, :math:`w \leftarrow a\,w + (1 - a)`, read as
    :math:`m / w` (Adam's bias correction: a client with one observation reads exactly that
    observation). :math:`a` is ``harm_memory`` where ``x`` is below the current running value and
    ``memory`` elsewhere (``harm_memory=None``: ``memory`` everywhere). ``mean`` and ``weight`` are
    float64 tables indexed by ``rows``.
    """
    m, w = mean[rows], weight[rows]
    current = torch.where(w > 0, running_value(mean, weight, rows, 0.0), x)
    down = memory if harm_memory is None else harm_memory
    a = torch.where(
        x < current,
        torch.tensor(down, dtype=torch.float64),
        torch.tensor(memory, dtype=torch.float64),
    )
    mean[rows] = a * m + (1.0 - a) * x
    weight[rows] = a * w + (1.0 - a)


def robust_z(
    x: torch.Tensor,
    floor: float,
    scale_from: Literal["both", "upper", "smaller"] = "both",
    reference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, float]:
    r"""``((x − med) / s, med, s)`` with ``s = max(1.4826 · MAD, floor)`` (float64).

    ``reference`` (a bool mask, or ``None`` for all values) selects the values the median and
    the MAD are taken over; every value is scored against them.

    ``scale_from="both"``: the MAD over all of ``x``. ``"upper"``: the median of
    :math:`x_i - \operatorname{med}` over the values at or above the median only. ``"smaller"``:
    the smaller of the two — for a one-sided test of *low* values. Both MADs equal
    :math:`0.674\,\sigma` for a symmetric distribution. With a fraction :math:`\varepsilon < 1/2`
    of the values far below the rest, the two-sided MAD lands in the gap between the groups as
    :math:`\varepsilon \to 1/2` (measured: 45 % switching sleepers raised it from 0.09 to 0.31 in
    cosine units and hid them), while the upper one stays on the clean side; a group sitting far
    *above* the median (e.g. clients replaying one direction, consistency 1) inflates the upper
    one instead and not the two-sided one. The smaller of the two resists both.
    """
    if scale_from not in ("both", "upper", "smaller"):
        raise ValueError(f"scale_from must be 'both', 'upper' or 'smaller', got {scale_from!r}")
    x = x.to(torch.float64)
    ref = x if reference is None else x[reference]
    med = median(ref)
    both = median((ref - med).abs())
    mad = both
    if scale_from != "both":
        upper = median(ref[ref >= med] - med)
        mad = upper if scale_from == "upper" else min(both, upper)
    scale = max(MAD_SCALE * mad, floor)
    return (x - med) / scale, med, scale


def unit_rows(z: torch.Tensor) -> torch.Tensor:
    """Rows of ``z`` divided by their norms (zero rows stay zero); a new tensor."""
    norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return z / torch.where(norms > 0, norms, torch.ones_like(norms))


def round_generator(seed: int, rnd: int, stream: int) -> torch.Generator:
    """A generator for one round of one signal, derived from ``(seed, stream, round)``."""
    return keyed_generator(seed, stream, max(rnd, 0))


def sampled_rows(
    pool: torch.Tensor, limit: int | None, seed: int, rnd: int, stream: int
) -> torch.Tensor | None:
    """``limit`` of the row indices ``pool``, drawn without replacement from
    :func:`round_generator` ``(seed, rnd, stream)`` and sorted; ``None`` (take them all) when
    ``limit`` is ``None`` or ``pool`` has at most ``limit`` rows."""
    if limit is None or pool.numel() <= limit:
        return None
    g = round_generator(seed, rnd, stream)
    return pool[torch.randperm(pool.numel(), generator=g)[:limit]].sort().values


def unique_keys(n: int, ctx: RoundContext | None, signal: str) -> list[int]:
    """The round's client ids (:func:`matl.trust.base.client_keys`), checked for repeats."""
    from matl.trust.base import client_keys

    keys = client_keys(n, ctx)
    if len(keys) != n:
        raise InvalidUpdateError(f"{signal}: {n} updates but {len(keys)} client ids")
    if len(set(keys)) != n:
        raise InvalidUpdateError(f"{signal}: repeated client ids in one round")
    return keys


def assign_rows(index: dict[int, int], keys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``keys`` in a per-client table, adding unseen ids at the end of ``index``.

    Returns ``(rows, known)``: ``(n,)`` int64 row numbers and ``(n,)`` bool, ``True`` for ids that
    were already in the table.
    """
    known = [k in index for k in keys]
    for k in keys:
        if k not in index:
            index[k] = len(index)
    rows = torch.tensor([index[k] for k in keys], dtype=torch.int64)
    return rows, torch.tensor(known, dtype=torch.bool)


def _row_range(rows: torch.Tensor) -> tuple[int, int] | None:
    """``(start, stop)`` when ``rows`` is ``start, start + 1, …, stop − 1`` (every client in its
    usual order, the common case), else ``None``."""
    n = int(rows.numel())
    if n == 0:
        return None
    start = int(rows[0])
    if int(rows[-1]) - start != n - 1 or (n > 1 and not bool((rows.diff() == 1).all())):
        return None
    return start, start + n


def take_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``table[rows]`` — a view (no copy) when ``rows`` is a contiguous ascending range, else a
    gathered copy. **Read-only**: a view changes when the table is written."""
    span = _row_range(rows)
    return table[span[0] : span[1]] if span is not None else table[rows]


def put_rows(table: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """``table[rows] = values`` (a plain copy into the slice when ``rows`` is a contiguous
    ascending range)."""
    span = _row_range(rows)
    if span is not None:
        table[span[0] : span[1]].copy_(values)
    else:
        table[rows] = values


def grow(table: torch.Tensor, rows: int, fill: float | int) -> torch.Tensor:
    """``table`` extended with ``fill`` rows to at least ``rows`` rows (the same tensor if big
    enough)."""
    if table.shape[0] >= rows:
        return table
    extra = table.new_full((rows - table.shape[0], *table.shape[1:]), fill)
    return torch.cat([table, extra])


def check_number(
    signal: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    allow_inf: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a number in the stated interval."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if integer else "a number"
        raise ConfigError(f"{signal}: {name} must be {what}, got {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ConfigError(f"{signal}: {name} must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ConfigError(f"{signal}: {name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ConfigError(f"{signal}: {name} must be {'<' if high_open else '<='} {high}, got {v}")


def check_state_keys(signal: str, state: dict[str, Any], expected: set[str]) -> None:
    """Raise ``ValueError`` unless ``state`` has exactly the keys ``expected``."""
    if set(state) != expected:
        raise ValueError(
            f"{signal}: state keys {sorted(state)} do not match the expected {sorted(expected)}"
        )


def state_client_ids(signal: str, ids: Any) -> list[int]:
    """The ``client_ids`` of a saved state as distinct ints; ``ValueError`` for anything else
    (repeats, non-integral numbers, booleans, strings)."""
    out: list[int] = []
    for c in ids:
        if isinstance(c, bool) or not isinstance(c, numbers.Real):
            raise ValueError(f"{signal}: state client id {c!r} is not an integer")
        if isinstance(c, numbers.Integral):
            out.append(int(c))
        elif float(c).is_integer():  # False for NaN and ±inf too
            out.append(int(float(c)))
        else:
            raise ValueError(f"{signal}: state client id {c!r} is not an integer")
    if len(set(out)) != len(out):
        raise ValueError(f"{signal}: state has repeated client ids")
    return out
