r"""TCDM — temporal consistency and community diversity.

Two questions a single round's statistics cannot answer:

* **Temporal consistency** (:class:`TemporalSignal`): does a client's update agree with its *own*
  history? A sleeper agent behaves honestly to earn trust, then switches; its update then points
  away from everything it sent before, while honest clients, whose data does not change, keep
  pointing roughly the same way from one round to the next.
* **Community diversity** (:class:`CommunitySignal`): does the update sit in a tight group of
  near-identical updates? Sybils and cartels that send one crafted vector (or copies of one client's
  update) form such groups; honest clients, each training on its own data with its own SGD noise,
  do not.

:class:`TCDM` multiplies the two. Both work on update *directions* and, for large models, on a
seeded count sketch of the updates (:mod:`matl.trust.sketch`), which keeps cosines near 1 to a few
thousandths at a fraction of the cost and memory.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from matl.aggregation.base import RoundContext
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust._util import (
    all_finite,
    assign_rows,
    check_number,
    check_rows,
    check_state_keys,
    grow,
    put_rows,
    robust_z,
    state_client_ids,
    take_rows,
    unique_keys,
    unit_rows,
)
from matl.trust.base import FAILED, SignalResult
from matl.trust.innovation import InnovationSignal
from matl.trust.sketch import (
    SKETCH_LAYOUT,
    community_sizes,
    pairwise_cosines,
    round_sketch,
    sketch_cosines,
    sketch_layout_changed,
)

__all__ = ["TCDM", "CommunitySignal", "InnovationSignal", "TemporalSignal", "pairwise_cosines"]


def _check_finite(z: torch.Tensor, signal: str) -> None:
    if all_finite(z):
        return
    bad = ~torch.isfinite(z).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()[:10]
        raise InvalidUpdateError(f"{signal}: updates contain NaN or Inf in row(s) {rows}")


@dataclass
class _History:
    """Per-client rows of :class:`TemporalSignal`'s state."""

    index: dict[int, int] = field(default_factory=dict)
    history: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float64))
    #: (N,) consecutive anomalous participations so far (absorbed with ``anomaly_decay``).
    streak: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    dim: int | None = None


@dataclass(frozen=True, kw_only=True)
class TemporalSignal:
    r"""Temporal consistency of each client with its own past updates (catches sleepers).

    Each client :math:`i` keeps an exponential moving average of its past *unit* update directions,

    .. math::

        h_i \leftarrow \alpha\, h_i + (1 - \alpha)\, \hat u_i, \qquad
        \hat u_i = u_i / \lVert u_i\rVert, \qquad h_i = \hat u_i \text{ at its first update},

    with ``decay`` :math:`\alpha` (default 0.7: an effective memory of about
    :math:`1/(1-\alpha) \approx 3` participations). In a round, a client with history has the
    consistency :math:`t_i = \cos(u_i, h_i)`, computed *before* its history absorbs :math:`u_i`.
    Because the whole population drifts as the model trains (all :math:`t_i` fall late in
    training, or after a learning-rate change), :math:`t_i` is judged against the round's clients
    with history, robustly:

    .. math::

        z_i = \frac{\operatorname{med}_j t_j - t_i}{\max(1.4826\,\operatorname{MAD}^\star,\;
              \sigma_{\min})}, \qquad
        \operatorname{MAD}^\star = \min\bigl(\operatorname{med}_j |t_j - m|,\;
        \operatorname{med}_{j : t_j \ge m} (t_j - m)\bigr), \quad
        m = \operatorname{med}_j t_j, \qquad
        s_i = \exp\!\Big(-\tfrac12 \max(0, z_i - z_0)^2\Big),

    one-sided (being *more* consistent than usual is never penalised; replays are the entropy
    signal's business). The scale :math:`\operatorname{MAD}^\star` is the smaller of the two-sided
    MAD and the upper half's (:func:`~matl.trust._util.robust_z` with ``scale_from="smaller"``):
    when 45 % of the clients switch at once, the two-sided MAD lands in the gap between the two
    groups (measured on MNIST: 0.31 instead of 0.09 in the switching round, which put the switchers
    at :math:`z \approx 3.2` and let them pass), while the upper half holds only clients that did
    not drop; and a group of decoys replaying one direction (consistency 1) inflates the upper
    half's scale but not the two-sided one.
    ``scale_floor`` :math:`\sigma_{\min} = 0.1` keeps a very homogeneous round
    (honest consecutive updates of a client on a small model often agree to :math:`t \approx 0.99`,
    MAD :math:`\approx 0.01`) from flagging a client at 0.9; ``z0`` :math:`z_0 = 3`. A sleeper that
    flips its update goes from :math:`t \approx 0.9` to :math:`t \approx -0.9`, a z-score in the
    tens, score :math:`\approx 0`. Clients with no history score ``neutral`` (default 1.0: a newcomer
    has done nothing wrong yet; the reputation layer decides how much to trust it). With fewer than
    three clients with history the median is the only reference, so a lone switcher in a tiny round
    is not detected.

    The history always absorbs the update, but the first ``anomaly_rounds`` (3) of a run of
    anomalous ones (:math:`z_i > z_0`) slowly: with ``anomaly_decay`` :math:`\alpha_a = 0.95`
    instead of :math:`\alpha`. A sleeper that keeps its new behaviour therefore keeps failing for
    two more rounds after the switch than with :math:`\alpha` alone (it looked consistent again two
    rounds later, while the validation-based evidence was still catching up: on MNIST at 45 %
    sleepers, seeds 10 and 11, Mode 1's detection rose from 0.83 / 0.79 to 0.89 / 0.83, and at 20 %
    from 0.86 to 0.95; attack-free false-positive rates 0.032 / 0.035 before, 0.032 / 0.030
    after). The cap on the run bounds the cost for a client whose direction changes for good —
    an honest client whose data changed, or an attacker that reformed: it fails for about five participations, where without the cap
    (``anomaly_rounds`` large) a complete reversal would fail for about 15. ``anomaly_rounds = 0``
    restores the plain moving average. A history is the client's own: it does not age
    between participations.

    For :math:`d > 4k` the history lives in a count sketch of width ``sketch_dim`` :math:`k`
    (default 1024, :mod:`matl.trust.sketch`; cosines to about :math:`\pm 1/\sqrt{k} \approx 0.03`),
    so the state is :math:`k` floats per client instead of :math:`d`; ``sketch_dim=None`` keeps
    exact :math:`d`-dimensional histories.

    Parameters
    ----------
    decay:
        :math:`\alpha \in [0, 1)`.
    anomaly_decay:
        :math:`\alpha_a \in [0, 1)`, the memory for updates that failed the test.
    anomaly_rounds:
        How many consecutive failing participations are absorbed with ``anomaly_decay``
        (``>= 0``; 0 turns the slow absorption off).
    z0:
        :math:`z_0 \ge 0`.
    scale_floor:
        :math:`\sigma_{\min} > 0`, in cosine units.
    neutral:
        Score of a client without history, in ``[0, 1]``.
    sketch_dim:
        Sketch width :math:`k \ge 1`, or ``None``.
    seed:
        Seed of the sketch.
    """

    name = "temporal"

    decay: float = 0.7
    anomaly_decay: float = 0.95
    anomaly_rounds: int = 3
    z0: float = 3.0
    scale_floor: float = 0.1
    neutral: float = 1.0
    sketch_dim: int | None = 1024
    seed: int = 0
    _state: _History = field(default_factory=_History, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_number("temporal", "decay", self.decay, low=0.0, high=1.0, high_open=True)
        check_number(
            "temporal", "anomaly_decay", self.anomaly_decay, low=0.0, high=1.0, high_open=True
        )
        check_number("temporal", "anomaly_rounds", self.anomaly_rounds, low=0, integer=True)
        check_number("temporal", "z0", self.z0, low=0.0)
        check_number("temporal", "scale_floor", self.scale_floor, low=0.0, low_open=True)
        check_number("temporal", "neutral", self.neutral, low=0.0, high=1.0)
        if self.sketch_dim is not None:
            check_number("temporal", "sketch_dim", self.sketch_dim, low=1, integer=True)
        check_number("temporal", "seed", self.seed, low=0, integer=True)

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> SignalResult:
        """Score the ``(n, d)`` ``updates`` against each client's history, then update it."""
        check_rows(updates, "temporal")
        n = updates.shape[0]
        keys = unique_keys(n, ctx, "temporal")
        z = round_sketch(updates, self.sketch_dim, seed=self.seed)
        _check_finite(z, "temporal")
        unit = unit_rows(z)
        st = self._state
        if st.dim is None:
            st.dim = unit.shape[1]
            st.history = torch.zeros(0, st.dim, dtype=torch.float64)
        elif st.dim != unit.shape[1]:
            raise InvalidUpdateError(
                f"temporal: updates changed size (history has width {st.dim}, now "
                f"{unit.shape[1]}); call reset() between models"
            )
        rows, known = assign_rows(st.index, keys)
        st.history = grow(st.history, len(st.index), 0.0)

        old = take_rows(st.history, rows)
        old_norm = torch.linalg.vector_norm(old, dim=1)
        agreement = torch.linalg.vecdot(unit, old) / torch.where(old_norm > 0, old_norm, 1.0)
        consistency = torch.where(known, agreement, 0.0).clamp(-1.0, 1.0)
        zscore = torch.zeros(n, dtype=torch.float64)
        scores = torch.full((n,), float(self.neutral), dtype=torch.float64)
        if bool(known.any()):
            zk, _, _ = robust_z(consistency[known], self.scale_floor, scale_from="smaller")
            zk = -zk  # one-sided: low consistency is the anomaly
            zscore[known] = zk
            scores[known] = torch.exp(-0.5 * (zk - self.z0).clamp_min(0.0) ** 2)

        st.streak = grow(st.streak, len(st.index), 0)
        anomalous = known & (zscore > self.z0)
        slow = anomalous & (st.streak[rows] < self.anomaly_rounds)
        st.streak[rows] = torch.where(anomalous, st.streak[rows] + 1, 0)
        a = torch.where(slow, self.anomaly_decay, self.decay)
        # a·old + (1 − a)·unit for a known client, the unit row for a new one.
        keep = torch.where(known, a, 0.0).to(unit.dtype).unsqueeze(1)
        put_rows(st.history, rows, torch.lerp(unit, old, keep))
        return SignalResult(
            scores=scores,
            raw={
                "consistency": consistency,
                "consistency_z": zscore,
                "has_history": known.to(torch.float64),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        """``{"client_ids", "history", "streak", "dim"}``: the ids in row order, their
        ``(N, k)`` histories and ``(N,)`` counts of consecutive anomalous participations
        (copies)."""
        st = self._state
        return {
            "client_ids": list(st.index),
            "history": st.history.clone(),
            "streak": grow(st.streak, len(st.index), 0).clone(),
            "dim": st.dim,
            "sketch_layout": SKETCH_LAYOUT,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a state saved before ``streak`` existed loads
        with no anomalous streaks. Histories sketched with an earlier layout of the sketch
        (:func:`~matl.trust.sketch.sketch_layout_changed`) cannot be compared with this round's
        sketches: they are dropped, and every client starts a new history."""
        if "streak" not in state:
            state = {**state, "streak": [0] * len(state.get("client_ids", []))}
        if sketch_layout_changed(state, state.get("dim"), self.sketch_dim):
            self.reset()
            return
        state = {k: v for k, v in state.items() if k != "sketch_layout"}
        check_state_keys("temporal", state, {"client_ids", "history", "streak", "dim"})
        ids = state_client_ids("temporal", state["client_ids"])
        hist = torch.as_tensor(state["history"], dtype=torch.float64).clone()
        streak = torch.as_tensor(state["streak"], dtype=torch.int64).clone()
        if streak.shape != (len(ids),) or bool((streak < 0).any()):
            raise ValueError("temporal: state streak must be one count >= 0 per client id")
        dim = state["dim"]
        if hist.ndim != 2 or hist.shape[0] != len(ids):
            raise ValueError(
                f"temporal: state has {len(ids)} client ids but a history of shape "
                f"{tuple(hist.shape)}"
            )
        if dim is not None and hist.shape[1] != dim:
            raise ValueError(f"temporal: history width {hist.shape[1]} != dim {dim}")
        st = self._state
        st.index = {c: i for i, c in enumerate(ids)}
        st.history = hist
        st.streak = streak
        st.dim = None if dim is None else int(dim)

    def reset(self) -> None:
        """Forget every client's history."""
        st = self._state
        st.index = {}
        st.history = torch.zeros(0, 0, dtype=torch.float64)
        st.streak = torch.zeros(0, dtype=torch.int64)
        st.dim = None


@dataclass(frozen=True, kw_only=True)
class CommunitySignal:
    r"""Community diversity: low scores for members of tight groups of near-identical updates.

    With :math:`\cos_{ij}` the pairwise cosines of the round's updates (:func:`pairwise_cosines`),
    client :math:`i`'s *community* is itself plus its :math:`\tau`-neighbours,

    .. math::

        m_i = 1 + \bigl|\{\, j \ne i : \cos_{ij} \ge \tau \,\}\bigr| ,

    and its score is

    .. math::

        s_i = \begin{cases} 1 & m_i < m_{\min} \\
              s_{\text{member}} \cdot \dfrac{m_{\min} - 1}{m_i - 1} & m_i \ge m_{\min} \end{cases}

    (``min_group`` :math:`m_{\min} = 3`, ``member_score`` :math:`s_{\text{member}} = 0.2`): a member
    of the smallest flagged community scores 0.2, and the bigger the group the lower (20
    identical sybils score about 0.02 each). A pair is not flagged (two honest clients with
    near-duplicate data are plausible; three copies are a pattern).

    Why :math:`\tau = 0.99`: distinct honest clients' updates come from different data and
    different SGD noise; on the synthetic Gaussian task (logistic regression and MLP, IID and
    Dirichlet(0.5) partitions, 10 local steps) the largest pairwise cosine between two honest
    clients over 16 rounds of FedAvg was 0.965, and it falls as training proceeds and the common
    gradient shrinks relative to the noise; on real models with :math:`d \gg 10^4` it is far lower.
    Copies of one update have cosine 1; copies that each add independent noise of 10 % of the
    update's norm still have pairwise cosines of about :math:`1/1.01 \approx 0.990`. Near-deterministic training (full-batch steps on IID data) makes honest
    updates more alike; raise ``tau`` there.

    Cost: the Gram product is :math:`O(n^2 d)` (3.8 s at :math:`n = 1000, d = 10^5` on two CPU
    cores, 170 times a mean over the updates). For :math:`d > 4k` it runs on a seeded count
    sketch of width ``sketch_dim`` :math:`k = 1024` instead (:mod:`matl.trust.sketch`), whose
    cosine error is a few thousandths near :math:`\cos = 1` (Johnson–Lindenstrauss: the error of a
    sketched cosine shrinks with the distance between the unit vectors) and about :math:`\pm 0.03`
    for unrelated updates, far below :math:`\tau` (from 256 clients the Gram product reads the
    sketch folded to 256 buckets, :func:`~matl.trust.sketch.sketch_cosines`: about
    :math:`\pm 0.06`, and 0.990 ± 0.0013 at the threshold). The sketch and its cosine matrix are the
    round's shared ones (:func:`~matl.trust.sketch.round_sketch`,
    :func:`~matl.trust.sketch.sketch_cosines`), also read by the temporal signal, the cartel
    detector and the entropy signal: with the defaults the round pays one pass over the updates and
    one :math:`O(n^2 k)` Gram product for all four. ``sketch_dim=None`` uses the exact Gram
    product.

    Parameters
    ----------
    tau:
        Cosine threshold :math:`\tau \in (0, 1]`.
    min_group:
        :math:`m_{\min} \ge 2`.
    member_score:
        :math:`s_{\text{member}} \in [0, 1]`.
    sketch_dim:
        Sketch width :math:`k \ge 1`, or ``None`` for exact cosines.
    seed:
        Seed of the sketch.

    References
    ----------
    Fung, Yoon, Beschastnikh. "The Limitations of Federated Learning in Sybil Settings" (FoolsGold),
    RAID 2020 — sybils betray themselves by their similarity.
    """

    name = "community"

    tau: float = 0.99
    min_group: int = 3
    member_score: float = 0.2
    sketch_dim: int | None = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("community", "tau", self.tau, low=0.0, high=1.0, low_open=True)
        check_number("community", "min_group", self.min_group, low=2, integer=True)
        check_number("community", "member_score", self.member_score, low=0.0, high=1.0)
        if self.sketch_dim is not None:
            check_number("community", "sketch_dim", self.sketch_dim, low=1, integer=True)
        check_number("community", "seed", self.seed, low=0, integer=True)

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> SignalResult:
        """Score the ``(n, d)`` ``updates`` by the size of their near-identical groups."""
        check_rows(updates, "community")
        n = updates.shape[0]
        _check_finite(round_sketch(updates, self.sketch_dim, seed=self.seed), "community")
        cos = sketch_cosines(updates, self.sketch_dim, seed=self.seed).clone()
        size = community_sizes(cos, self.tau)
        cos.fill_diagonal_(-math.inf)
        max_cos = cos.max(dim=1).values if n > 1 else torch.full((n,), -1.0, dtype=torch.float64)
        member = size >= self.min_group
        penalty = self.member_score * (self.min_group - 1) / (size - 1).clamp_min(1.0)
        scores = torch.where(member, penalty, 1.0).to(torch.float64)
        return SignalResult(
            scores=scores, raw={"group_size": size, "max_cosine": max_cos, FAILED: member}
        )

    def state_dict(self) -> dict[str, Any]:
        """Empty: the community signal looks at one round at a time."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept only the empty state."""
        if state:
            raise ValueError(f"community is stateless but got state keys {sorted(state)}")

    def reset(self) -> None:
        """Nothing to forget."""


@dataclass(frozen=True, kw_only=True)
class TCDM:
    r"""Temporal consistency × community diversity.

    .. math::

        s_i = \tau_i \cdot s_i^{\text{community}}
        \quad(\text{``product''}), \qquad
        s_i = w\, \tau_i + (1 - w)\, s_i^{\text{community}}
        \quad(\text{``mean''}), \qquad
        \tau_i = s_i^{\text{temporal}} \cdot s_i^{\text{innovation}} .

    Temporal consistency has two tests, both against the client's own past: the direction of its
    update (:class:`TemporalSignal`, catches a switch) and how much of its deviation from the
    round's centre is new each round (:class:`~matl.trust.innovation.InnovationSignal`, catches
    added noise). The product (default) is low when *any* test fails — a sleeper that switched, a
    noisy client, or a member of a sybil group — which is what a veto-style signal should do; the
    weighted mean (weight ``temporal_weight`` :math:`w`) only halves the score for one failure.
    ``raw`` holds the sub-scores (``temporal``, ``innovation_score``, ``community``) and their raw
    values (``consistency``, ``consistency_z``, ``has_history``, ``innovation``,
    ``running_innovation``, ``excluded_from_reference``, ``group_size``, ``max_cosine``).

    Parameters
    ----------
    temporal:
        The :class:`TemporalSignal`, or a dict of its keyword arguments.
    innovation:
        The :class:`~matl.trust.innovation.InnovationSignal`, a dict of its keyword arguments,
        or ``None`` to leave the innovation test out.
    community:
        The :class:`CommunitySignal`, or a dict of its keyword arguments.
    combine:
        ``"product"`` or ``"mean"``.
    temporal_weight:
        :math:`w \in [0, 1]` for ``"mean"``.
    """

    name = "tcdm"

    temporal: TemporalSignal = field(default_factory=TemporalSignal)
    innovation: InnovationSignal | None = field(default_factory=InnovationSignal)
    community: CommunitySignal = field(default_factory=CommunitySignal)
    combine: Literal["product", "mean"] = "product"
    temporal_weight: float = 0.5

    def __post_init__(self) -> None:
        # Accept plain dicts of options (configuration files) for the two parts.
        for attr, cls in (("temporal", TemporalSignal), ("community", CommunitySignal)):
            value = getattr(self, attr)
            if isinstance(value, dict):
                object.__setattr__(self, attr, cls(**value))
            elif not isinstance(value, cls):
                raise ConfigError(f"tcdm: {attr} must be a {cls.__name__} or a dict of options")
        if isinstance(self.innovation, dict):
            object.__setattr__(self, "innovation", InnovationSignal(**self.innovation))
        elif self.innovation is not None and not isinstance(self.innovation, InnovationSignal):
            raise ConfigError(
                "tcdm: innovation must be an InnovationSignal, a dict of options or None"
            )
        if self.combine not in ("product", "mean"):
            raise ConfigError(f"tcdm: combine must be 'product' or 'mean', got {self.combine!r}")
        check_number("tcdm", "temporal_weight", self.temporal_weight, low=0.0, high=1.0)

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> SignalResult:
        """Score the ``(n, d)`` ``updates`` (and update the temporal histories)."""
        t = self.temporal(updates, ctx)
        c = self.community(updates, ctx)
        raw = {"temporal": t.scores, "community": c.scores, **t.raw, **c.raw}
        temporal = t.scores
        if self.innovation is not None:
            i = self.innovation(updates, ctx)
            temporal = temporal * i.scores
            raw.update(innovation_score=i.scores, **i.raw)
        if self.combine == "product":
            scores = temporal * c.scores
        else:
            w = self.temporal_weight
            scores = w * temporal + (1.0 - w) * c.scores
        return SignalResult(scores=scores.clamp(0.0, 1.0), raw=raw)

    def state_dict(self) -> dict[str, Any]:
        """``{"temporal": ..., "innovation": ...}`` (the community part is stateless; no
        ``innovation`` key when the test is left out)."""
        state = {"temporal": self.temporal.state_dict()}
        if self.innovation is not None:
            state["innovation"] = self.innovation.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, all or nothing: both parts are checked before
        either is replaced. A state saved before the innovation test existed (``temporal`` only)
        loads with the innovation memory empty; with ``innovation=None`` a saved innovation part
        is ignored."""
        if set(state) not in ({"temporal"}, {"temporal", "innovation"}):
            check_state_keys("tcdm", state, {"temporal", "innovation"})
        temporal = dataclasses.replace(self.temporal)
        temporal.load_state_dict(state["temporal"])
        innovation = None
        if self.innovation is not None:
            innovation = dataclasses.replace(self.innovation)
            if "innovation" in state:
                innovation.load_state_dict(state["innovation"])
        object.__setattr__(self.temporal, "_state", temporal._state)
        if self.innovation is not None and innovation is not None:
            object.__setattr__(self.innovation, "_state", innovation._state)

    def reset(self) -> None:
        """Forget the temporal histories and the stored deviations."""
        self.temporal.reset()
        if self.innovation is not None:
            self.innovation.reset()
