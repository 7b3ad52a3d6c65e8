r"""``matl bench trust``: the MATL trust engine against a plain mean and Krum, in one process.

At ``n`` clients and ``d`` parameters (default :math:`n = 1000`, :math:`d = 10^5`, float32) we time,
best of ``repeats`` after one warm-up call:

* ``mean`` — ``updates.mean(0)``, the baseline every ratio divides by;
* ``krum`` — :class:`~matl.aggregation.Krum` with ``f = n // 10`` (one pairwise-distance matrix,
  :math:`O(n^2 d)`), the second reference;
* ``matl mode 0`` and ``matl mode 1 (fast)`` — the whole rule (input validation, signals,
  composite, threshold, cartels, reputation, weighted mean) called as the simulator calls it;
  Mode 1 with PoGQ's first-order path (one validation gradient per round, then one
  matrix–vector product);
* ``matl mode 1 (exact)`` — the same with PoGQ's exact path, which evaluates the validation loss
  of every client's model :math:`\theta + u_i`: :math:`n \cdot B` forward passes;
* each component alone (``signal: …`` and ``cartel detector``), to show where the time goes.

The model is a multinomial logistic regression whose size matches ``d``: ``K = 10`` classes and
``d / K − 1`` features, so :math:`d = 10 (D + 1)` (``d = 10^5`` → 9 999 features; a ``d`` that is
not a multiple of 10 is rounded down). The validation batch is ``validation`` synthetic samples
(standard normal features, uniform labels), the updates small random deltas around a shared
direction, and the global parameters the model's default initialisation, all seeded. The stateful
parts keep their state across the timed calls (as across rounds), and every call receives the
updates as a new tensor object (a view: no copy), as a new round would, so nothing the signals share
within a round (:func:`matl.trust.sketch.round_sketch`, the row norms) carries over from one timed
call to the next. A component timed alone therefore pays for the sketch it reads; inside the whole
rule the signals share one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from matl.aggregation import RoundContext, get_rule
from matl.experiments.timing import best_time
from matl.models import LogisticRegression
from matl.trust.cartel import CartelDetector
from matl.trust.rule import MATLRule, build_signal

__all__ = ["DEFAULT_D", "DEFAULT_N", "TrustBenchRow", "bench_model", "bench_trust"]

DEFAULT_N = 1000
DEFAULT_D = 100_000
NUM_CLASSES = 10


@dataclass
class TrustBenchRow:
    """One timed step."""

    name: str
    n: int
    d: int
    seconds: float
    ratio_to_mean: float
    ratio_to_krum: float


def bench_model(d: int) -> LogisticRegression:
    """The logistic regression with ``K = 10`` classes and ``d // 10 − 1`` features (``d`` rounded
    down to a multiple of 10, at least 20 parameters)."""
    return LogisticRegression((max(1, d // NUM_CLASSES - 1),), NUM_CLASSES)


def _call(
    fn: Callable[[torch.Tensor, RoundContext], object], ctx: RoundContext, u: torch.Tensor
) -> object:
    return fn(u, ctx)


def bench_trust(
    n: int = DEFAULT_N,
    d: int = DEFAULT_D,
    *,
    repeats: int = 3,
    validation: int = 256,
    exact: bool = True,
    components: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[TrustBenchRow]:
    """Time the trust engine (see the module docstring); one row per timed step, ``mean`` first."""
    model = bench_model(d)
    d = model.num_params
    g = torch.Generator().manual_seed(seed)
    theta = model.init(g)
    direction = 0.01 * torch.randn(d, generator=g)
    updates = direction + 0.01 * torch.randn(n, d, generator=g)
    x = torch.randn(validation, model.num_features, generator=g)
    y = torch.randint(0, NUM_CLASSES, (validation,), generator=g)
    ctx = RoundContext(
        client_ids=tuple(range(n)),
        round=0,
        global_params=theta,
        validation=(x, y),
        model=model,
        sample_counts=torch.ones(n),
    )

    def fresh(fn: Callable[[torch.Tensor], object]) -> Callable[[], object]:
        """``fn`` called on a new view of the updates each time (a new round's tensor)."""
        return lambda: fn(updates.view(n, d))

    timed: list[tuple[str, Callable[[], object]]] = [
        ("mean", partial(torch.mean, updates, dim=0)),
        ("krum", partial(get_rule("krum", f=n // 10), updates, ctx)),
        ("matl mode 0", fresh(partial(_call, MATLRule(mode=0), ctx))),
        (
            "matl mode 1 (fast)",
            fresh(partial(_call, MATLRule(mode=1, signal_params={"pogq": {"path": "fast"}}), ctx)),
        ),
    ]
    if exact:
        rule = MATLRule(mode=1, signal_params={"pogq": {"path": "exact"}})
        timed.append(("matl mode 1 (exact)", fresh(partial(_call, rule, ctx))))
    if components:
        params = MATLRule(mode=1).resolved_signal_params()
        parts: list[tuple[str, Any]] = [
            ("signal: peer", build_signal("peer", params.get("peer"))),
            ("signal: pogq (fast)", build_signal("pogq", {"path": "fast"})),
        ]
        if exact:
            parts.append(("signal: pogq (exact)", build_signal("pogq", {"path": "exact"})))
        parts += [
            ("signal: tcdm", build_signal("tcdm")),
            ("signal: entropy", build_signal("entropy")),
        ]
        timed += [(name, fresh(partial(_call, sig, ctx))) for name, sig in parts]
        detector = CartelDetector()
        ids = list(range(n))
        timed.append(("cartel detector", fresh(lambda u: detector.update(u, ids))))

    seconds: dict[str, float] = {}
    for name, fn in timed:
        if progress:
            progress(f"{name} at n={n}, d={d}")
        seconds[name] = best_time(fn, repeats, warmup=1)
    mean_s, krum_s = seconds["mean"], seconds["krum"]
    return [TrustBenchRow(name, n, d, s, s / mean_s, s / krum_s) for name, s in seconds.items()]
