r"""Cartel detection: groups of clients whose updates stay near-identical across rounds.

Honest clients train on different data with different minibatches, so two honest updates are
never near-identical round after round; sybils and colluders replaying one crafted update are.

Per round
---------
1. **Sketch**: pairwise cosines of the round's shared count sketch of width ``dim`` (default
   1024; :func:`matl.trust.sketch.sketch_cosines`, the same matrix the community signal reads when
   their seeds agree, as the engine's defaults do, so the detector adds no pass over the updates). Identical updates have identical sketches (cosine
   1 exactly), and the sketched cosine of two distinct updates errs by a few thousandths near 1
   (the error shrinks with the distance between the unit vectors) and by about
   :math:`1/\sqrt{k} \approx 0.03` for unrelated ones (0.06 from 256 clients, where the
   Gram product reads the sketch folded to 256 buckets): an honest pair at :math:`\rho = 0.9`
   stays far below ``tau = 0.99``, and persistence (step 3) multiplies any rare single-round
   coincidence away. When ``d <= 4·dim`` the exact cosines are used. A zero update is
   near-identical to nothing (free riders sending zeros are the entropy signal's business).
2. **Near-identical pairs**: :math:`\cos(Su_a, Su_b) \ge` ``tau``.
3. **Persistence**: a pair's count :math:`c_{ab}` grows by 1 each round both clients take part and
   are near-identical, is reset to 0 when both take part and are not, and is unchanged when either
   is absent (client sampling). The pair is an *edge* once :math:`c_{ab} \ge` ``min_rounds``.
4. **Cartels**: connected components of the edge graph (over all remembered clients) with at
   least ``min_size`` members. This round's clients in a cartel are reported; the trust engine
   flags them and multiplies their weight by its cartel multiplier.

State (:meth:`CartelDetector.state_dict`): the non-zero pair counts, keyed by client-id pairs
``(a, b)`` with ``a < b``.

References
----------
Fung, Yoon & Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020
(FoolsGold: sybils are told apart by the persistent similarity of their updates); Charikar, Chen &
Farach-Colton, "Finding Frequent Items in Data Streams", ICALP 2002 (the count sketch whose cosines
the detector reads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from matl.errors import ConfigError
from matl.trust._util import row_norms
from matl.trust.sketch import sketch_cosines

__all__ = ["CartelDetector", "CartelReport"]


@dataclass(frozen=True)
class CartelReport:
    """One round's cartel findings, in the round's row order.

    Attributes
    ----------
    member:
        ``(n,)`` bool: in a cartel.
    size:
        ``(n,)`` int64: size of the client's cartel (0 when not in one).
    persistence:
        ``(n,)`` int64: the client's largest pair count with anyone.
    max_cosine:
        ``(n,)`` float64: this round's largest sketched cosine with another client.
    cartels:
        Every cartel (all remembered members, sorted ids), largest first.
    """

    member: torch.Tensor
    size: torch.Tensor
    persistence: torch.Tensor
    max_cosine: torch.Tensor
    cartels: list[list[int]]


@dataclass(kw_only=True)
class CartelDetector:
    """Cross-round detection of near-identical groups (see the module docstring).

    Parameters
    ----------
    tau:
        Cosine at or above which two updates are near-identical, in ``(0, 1]``.
    min_rounds:
        Rounds a pair must stay near-identical to become an edge (``>= 1``).
    min_size:
        Smallest cartel (``>= 2``).
    dim:
        Sketch width (``>= 1``; see :func:`matl.trust.sketch.round_sketch`).
    seed:
        Seed of the sketch.
    """

    tau: float = 0.99
    min_rounds: int = 3
    min_size: int = 3
    dim: int = 1024
    seed: int = 0
    _counts: dict[tuple[int, int], int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        t = self.tau
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise ConfigError(f"cartel tau must be in (0, 1], got {t!r}")
        for name, low in (("min_rounds", 1), ("min_size", 2), ("dim", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"cartel {name} must be an integer >= {low}, got {value!r}")

    def update(self, updates: torch.Tensor, client_ids: Sequence[int]) -> CartelReport:
        """Score one round's ``(n, d)`` updates and update the pair counts."""
        n = updates.shape[0]
        ids = [int(c) for c in client_ids]
        if len(ids) != n or len(set(ids)) != n:
            raise ValueError(f"cartel update needs {n} distinct client ids, got {ids}")
        if n >= 2:
            cos = sketch_cosines(updates, self.dim, seed=self.seed).clone()
            cos.fill_diagonal_(-math.inf)
            zero = row_norms(updates, "cartel") == 0  # an empty update copies nobody
            if bool(zero.any()):
                cos[zero] = -math.inf
                cos[:, zero] = -math.inf
            max_cos = cos.max(dim=1).values
            near = torch.triu(cos >= self.tau, diagonal=1)
            pairs = torch.nonzero(near).tolist()
        else:
            max_cos = torch.full((n,), -math.inf, dtype=torch.float64)
            pairs = []
        present = set(ids)
        near_pairs = {_key(ids[a], ids[b]) for a, b in pairs}
        for key in list(self._counts):
            if key not in near_pairs and key[0] in present and key[1] in present:
                del self._counts[key]
        for key in near_pairs:
            self._counts[key] = self._counts.get(key, 0) + 1

        cartels = self.cartels()
        where = {cid: members for members in cartels for cid in members}
        best: dict[int, int] = {}
        for (a, b), c in self._counts.items():
            best[a] = max(best.get(a, 0), c)
            best[b] = max(best.get(b, 0), c)
        return CartelReport(
            member=torch.tensor([c in where for c in ids], dtype=torch.bool),
            size=torch.tensor([len(where.get(c, ())) for c in ids], dtype=torch.int64),
            persistence=torch.tensor([best.get(c, 0) for c in ids], dtype=torch.int64),
            max_cosine=max_cos.to(torch.float64),
            cartels=cartels,
        )

    def cartels(self) -> list[list[int]]:
        """Connected components of size ``>= min_size`` of the current edge graph (sorted ids,
        largest first, ties by smallest id)."""
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for (a, b), c in self._counts.items():
            if c >= self.min_rounds:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        groups: dict[int, list[int]] = {}
        for x in parent:
            groups.setdefault(find(x), []).append(x)
        found = [sorted(g) for g in groups.values() if len(g) >= self.min_size]
        return sorted(found, key=lambda g: (-len(g), g[0]))

    def state_dict(self) -> dict[str, Any]:
        """``{"pairs": [[a, b, count], …]}`` (sorted)."""
        return {"pairs": [[a, b, c] for (a, b), c in sorted(self._counts.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        unknown = set(state) - {"pairs"}
        if unknown:
            raise ValueError(f"cartel state has unknown keys {sorted(unknown)}")
        self._counts = {_key(int(a), int(b)): int(c) for a, b, c in state.get("pairs", [])}

    def reset(self) -> None:
        """Forget every pair count."""
        self._counts = {}


def _key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)
