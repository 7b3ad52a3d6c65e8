r"""Behavioural entropy: how unpredictable is a client's behaviour from round to round?

An honest client's update changes every round in ways nobody scripts: fresh mini-batches, a moved
global model, its own SGD noise. A replaying client (the same update every round), a free rider
(zeros every round), or a bot cycling through a few stored vectors repeats itself.
:class:`EntropySignal` turns each participation into a discrete symbol — either "repeat" or a code
of how the update's direction changed — and measures the Shannon entropy of the client's recent
symbols.

Why the *change* and not the update itself: the obvious definition — the sign pattern of a few
random projections of the unit update — has low entropy for honest clients too. Honest consecutive
updates of one client typically agree to a cosine of 0.95–0.99 (the client's data does not
change), so each projection's sign rarely flips: measured on the synthetic task over 8 rounds,
16-bit codes of the updates themselves gave honest normalised entropies with a median of 0.2–0.8
and a minimum of 0. The change of direction between participations, once the change common to the
whole round is removed, is dominated by each client's own SGD noise, and its codes vary: minimum
0.8–1.0 with 10 local steps of batch 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from matl.aggregation.base import RoundContext
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust._util import (
    assign_rows,
    check_number,
    check_rows,
    check_state_keys,
    grow,
    row_norms,
    state_client_ids,
    unique_keys,
    unit_rows,
)
from matl.trust.base import SignalResult
from matl.trust.sketch import (
    SKETCH_LAYOUT,
    gaussian_projection,
    round_sketch,
    sketch_layout_changed,
    sketch_width,
)

__all__ = ["EntropySignal", "window_entropy"]


def window_entropy(symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Empirical Shannon entropy (bits) of each row of ``symbols`` ``(n, W)``, ignoring ``-1``.

    With :math:`w` valid symbols in a row and :math:`c_j` the number of valid entries equal to
    entry :math:`j`, :math:`H = \log_2 w - \frac{1}{w} \sum_{j} \log_2 c_j` (the same as
    :math:`-\sum_s p_s \log_2 p_s` over the distinct symbols). Returns ``(H, w)`` as float64 and
    int64 ``(n,)`` tensors; ``H = 0`` where ``w ≤ 1``.
    """
    valid = symbols >= 0
    w = valid.sum(dim=1)
    pair = valid.unsqueeze(2) & valid.unsqueeze(1) & (symbols.unsqueeze(2) == symbols.unsqueeze(1))
    counts = pair.sum(dim=2).to(torch.float64)
    log_counts = torch.where(valid, counts.clamp_min(1.0).log2(), 0.0).sum(dim=1)
    wf = w.to(torch.float64)
    h = torch.where(w > 1, wf.clamp_min(1.0).log2() - log_counts / wf.clamp_min(1.0), 0.0)
    return h.clamp_min(0.0), w


@dataclass
class _Windows:
    """Per-client rows of :class:`EntropySignal`'s state."""

    index: dict[int, int] = field(default_factory=dict)
    #: (N, W, k) projections of the last W participations, oldest first; NaN = empty.
    recent: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0, dtype=torch.float64))
    #: (N, W) symbols, oldest first; -1 = empty.
    symbols: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.int64))
    dim: int | None = None
    #: Width of the space the stored projections were taken in (the sketch width, or ``dim``).
    space: int | None = None


@dataclass(frozen=True, kw_only=True)
class EntropySignal:
    r"""Normalised Shannon entropy of each client's recent behaviour symbols.

    **Symbols.** Let :math:`z_i = S u_i` be the round's shared count sketch of the update
    (:func:`~matl.trust.sketch.round_sketch`, width ``sketch_dim`` :math:`m = 1024`; the update
    itself when :math:`d \le 4m` or ``sketch_dim=None``; the sketch keeps the angle between two
    directions to about :math:`\pm 1/\sqrt{m}` for unrelated ones and far better for nearly
    parallel ones, which is all the codes below depend on) and fix once, from ``seed``, a Gaussian matrix
    :math:`R \in \mathbb{R}^{m \times k}` (``bits`` :math:`k = 16` columns). A participation of
    client :math:`i` is summarised by the projection of its unit direction,
    :math:`p_i = R^\top z_i / \lVert z_i\rVert` (:math:`p_i = 0` for a zero update); the client
    keeps its last :math:`W` projections. From its second
    participation on, each participation emits one symbol:

    * ``REPEAT`` (the value :math:`2^k`) when :math:`\min_{q} \lVert p_i - q\rVert / \sqrt{k} \le`
      ``repeat_tol`` over the client's stored projections :math:`q` (default :math:`10^{-3}`;
      :math:`\lVert R^\top v\rVert^2 / k` estimates :math:`\lVert v\rVert^2`, so this asks whether
      the unit direction is within about :math:`10^{-3}` of one the client sent in its last
      :math:`W` participations) — a replay, a free rider's zeros, or a cycle through a few stored
      vectors. Honest changes measured on the synthetic task were :math:`\ge 5 \times 10^{-3}`
      even with 100 nearly full-batch local steps;
    * otherwise the :math:`k`-bit code :math:`\sum_b 2^b\, \mathbb{1}[\delta_{ib} - m_b > 0]` of
      the change since the previous participation, :math:`\delta_i = p_i^{(t)} - p_i^{(t')}`,
      where, when ``remove_drift`` and at least three clients of the round emit a code,
      :math:`m = \operatorname{med}_j \delta_j` (per column, over those clients) removes the change
      common to the whole round — the model's drift, which otherwise gives a client the same code
      round after round in low-noise training (honest minimum entropy 0.27 instead of 0.92 on a
      Dirichlet partition, logistic regression); else :math:`m = 0`.

    **Entropy and score.** Each client keeps its last ``window`` :math:`W` (default 8) symbols.
    With :math:`w \le W` of them, empirical frequencies :math:`p_s` and :math:`\pi_i` the fraction
    of ``REPEAT`` symbols,

    .. math::

        H_i = -\sum_s p_s \log_2 p_s, \qquad
        \bar H_i = \frac{H_i}{\log_2 \min(w, 2^k + 1)} \in [0, 1], \qquad
        s_i = \min\bigl(1, \bar H_i / h^\star\bigr) \cdot (1 - \pi_i),

    with ``full_trust`` :math:`h^\star = 0.5`; a client with :math:`w <` ``min_observations``
    (default 4) scores ``neutral`` (default 1.0). The factor :math:`1 - \pi_i` charges every
    repetition directly: an honest client never repeats itself, and without it a replay that began
    six rounds ago would still have :math:`\bar H = 0.35` in a window of eight (its two earlier
    symbols are distinct); with it that client scores 0.18, and 0 once the window holds only
    repeats. Honest clients with the simulator's defaults (10 local steps of batch 32) sit at
    :math:`\bar H \approx 1`; the half-way credit :math:`h^\star` protects honest clients in
    low-noise regimes (many local steps on large batches), whose measured minimum over 8 rounds
    was 0.4–0.9. In nearly deterministic training (logistic regression by full-batch gradient
    descent on IID data) an honest client's change of direction is itself predictable and its
    entropy can reach 0: give the signal less weight there.

    What it catches, and what it adds to the other signals: a client replaying one update,
    sending zeros, or cycling through up to :math:`W` stored updates gets ``REPEAT`` symbols and
    ends at 0 — yet a replayed honest update looks ordinary to the peer and temporal signals (it
    *is* an honest update, just an old one) and, alone, it forms no community. What it does not
    catch: attacks recomputed from the current round (sign flip, ALIE, IPM) — they inherit the
    honest clients' randomness — and a replayer that adds fresh noise larger than ``repeat_tol``.

    Parameters
    ----------
    bits:
        :math:`k \in [1, 30]`.
    window:
        :math:`W \ge 2`.
    min_observations:
        Symbols needed before the entropy counts, :math:`2 \le \cdot \le W`.
    full_trust:
        :math:`h^\star \in (0, 1]`.
    repeat_tol:
        Threshold of the ``REPEAT`` symbol, ``≥ 0``.
    remove_drift:
        Subtract the round's median change before coding.
    neutral:
        Score while a client has too few symbols, in ``[0, 1]``.
    sketch_dim:
        Width :math:`m \ge 1` of the shared count sketch projected, or ``None`` to project the
        updates themselves (a :math:`d \times k` matrix; one extra pass over the updates).
    seed:
        Seed of the sketch and of :math:`R` (treat it as a server secret).

    References
    ----------
    Shannon, "A Mathematical Theory of Communication", 1948 (entropy); Charikar, "Similarity
    Estimation Techniques from Rounding Algorithms", STOC 2002 (sign codes of random projections).
    """

    name = "entropy"

    bits: int = 16
    window: int = 8
    min_observations: int = 4
    full_trust: float = 0.5
    repeat_tol: float = 1e-3
    remove_drift: bool = True
    neutral: float = 1.0
    sketch_dim: int | None = 1024
    seed: int = 0
    _state: _Windows = field(default_factory=_Windows, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_number("entropy", "bits", self.bits, low=1, high=30, integer=True)
        check_number("entropy", "window", self.window, low=2, integer=True)
        check_number(
            "entropy",
            "min_observations",
            self.min_observations,
            low=2,
            high=self.window,
            integer=True,
        )
        check_number("entropy", "full_trust", self.full_trust, low=0.0, high=1.0, low_open=True)
        check_number("entropy", "repeat_tol", self.repeat_tol, low=0.0)
        check_number("entropy", "neutral", self.neutral, low=0.0, high=1.0)
        if self.sketch_dim is not None:
            check_number("entropy", "sketch_dim", self.sketch_dim, low=1, integer=True)
        check_number("entropy", "seed", self.seed, low=0, integer=True)
        if not isinstance(self.remove_drift, bool):
            raise ConfigError(f"entropy: remove_drift must be a bool, got {self.remove_drift!r}")

    @property
    def repeat_symbol(self) -> int:
        """The value of the ``REPEAT`` symbol, :math:`2^k`."""
        return 1 << self.bits

    def space(self, d: int) -> int:
        """Width of the space projected for ``d``-parameter updates: the sketch width, or ``d``
        when the round sketch is the updates themselves."""
        return sketch_width(d, self.sketch_dim)

    def project(self, updates: torch.Tensor) -> torch.Tensor:
        r"""``(n, k)`` float64 projections :math:`p_i = R^\top z_i / \lVert z_i\rVert` of the
        round's sketch :math:`z` (see the class); rejects NaN/Inf rows."""
        norms = row_norms(updates, "entropy")  # shared with the other signals
        d = updates.shape[1]
        if self.space(d) == d:  # no sketch: project the updates themselves, in their dtype
            r = gaussian_projection(d, self.bits, self.seed, updates.dtype)
            with torch.no_grad():
                proj = (updates.detach() @ r).to(torch.float64)
            return proj / torch.where(norms > 0, norms, 1.0).unsqueeze(1)
        z = round_sketch(updates, self.sketch_dim, seed=self.seed)
        r = gaussian_projection(z.shape[1], self.bits, self.seed, torch.float64)
        return unit_rows(z) @ r

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> SignalResult:
        """Emit this round's symbols, then score every client by the entropy of its window."""
        check_rows(updates, "entropy")
        n, d = updates.shape
        keys = unique_keys(n, ctx, "entropy")
        proj = self.project(updates)
        st = self._state
        k, big_w = self.bits, self.window
        if st.dim is None:
            st.dim = d
            st.recent = torch.zeros(0, big_w, k, dtype=torch.float64)
            st.symbols = torch.zeros(0, big_w, dtype=torch.int64)
        elif st.dim != d:
            raise InvalidUpdateError(
                f"entropy: updates changed size ({st.dim} → {d}); call reset() between models"
            )
        space = self.space(d)
        if st.space != space:  # projections of another space (e.g. an older checkpoint): unusable
            st.recent.fill_(math.nan)
            st.space = space
        rows, known = assign_rows(st.index, keys)
        st.recent = grow(st.recent, len(st.index), math.nan)
        st.symbols = grow(st.symbols, len(st.index), -1)
        # A client without a stored last projection (dropped with an old space) starts over.
        known = known & ~st.recent[rows, -1].isnan().any(dim=1)

        repeat = torch.zeros(n, dtype=torch.bool)
        if bool(known.any()):
            krows = rows[known]
            stored = st.recent[krows]  # (m, W, k), NaN where empty
            p = proj[known]
            gaps = torch.linalg.vector_norm(stored - p.unsqueeze(1), dim=2) / math.sqrt(k)
            repeat[known] = torch.nan_to_num(gaps, nan=math.inf).amin(dim=1) <= self.repeat_tol
            delta = p - stored[:, -1]
            if self.remove_drift and delta.shape[0] >= 3:
                delta = delta - torch.quantile(delta, 0.5, dim=0, keepdim=True)
            weights = 2 ** torch.arange(k, dtype=torch.int64)
            code = ((delta > 0).to(torch.int64) * weights).sum(dim=1)
            symbol = torch.where(repeat[known], self.repeat_symbol, code)
            window = st.symbols[krows]
            st.symbols[krows] = torch.cat([window[:, 1:], symbol.unsqueeze(1)], dim=1)
        history = st.recent[rows]
        st.recent[rows] = torch.cat([history[:, 1:], proj.unsqueeze(1)], dim=1)

        window_symbols = st.symbols[rows]
        h, w = window_entropy(window_symbols)
        wf = w.clamp_min(1).to(torch.float64)
        norm = torch.log2(w.clamp(2, self.repeat_symbol + 1).to(torch.float64))
        entropy = torch.where(w > 1, h / norm, 0.0).clamp(0.0, 1.0)
        repeats = (window_symbols == self.repeat_symbol).sum(dim=1).to(torch.float64) / wf
        credit = (entropy / self.full_trust).clamp_max(1.0) * (1.0 - repeats)
        scores = torch.where(w >= self.min_observations, credit, self.neutral)
        return SignalResult(
            scores=scores.to(torch.float64),
            raw={
                "entropy": entropy,
                "observations": w.to(torch.float64),
                "repeat": repeat.to(torch.float64),
                "repeat_fraction": repeats,
            },
        )

    def state_dict(self) -> dict[str, Any]:
        """``{"client_ids", "recent", "symbols", "dim", "space"}``: ids in row order, each
        client's last ``W`` projections ``(N, W, k)`` (NaN = empty) and symbols ``(N, W)`` (``-1``
        = empty), oldest first, as copies; the update size and the width of the space projected."""
        st = self._state
        return {
            "client_ids": list(st.index),
            "recent": st.recent.clone(),
            "symbols": st.symbols.clone(),
            "dim": st.dim,
            "space": st.space,
            "sketch_layout": SKETCH_LAYOUT,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (for the same ``bits`` and ``window``). A state
        without ``space`` (saved before the projections were tagged with their space) keeps its
        symbols; its stored projections are taken as projections of the updates themselves and
        dropped at the next round if the space differs (the client's next participation then
        emits no symbol, as a first one). Projections of sketches of an earlier layout
        (:func:`~matl.trust.sketch.sketch_layout_changed`) are dropped the same way; the symbols
        stay."""
        legacy = {"client_ids", "recent", "symbols", "dim"}
        if "space" not in state and set(state) - {"sketch_layout"} == legacy:
            state = {**state, "space": state["dim"]}
        stale = sketch_layout_changed(state, state.get("space"), self.sketch_dim)
        state = {k: v for k, v in state.items() if k != "sketch_layout"}
        check_state_keys("entropy", state, {"client_ids", "recent", "symbols", "dim", "space"})
        ids = state_client_ids("entropy", state["client_ids"])
        recent = torch.as_tensor(state["recent"], dtype=torch.float64).clone()
        symbols = torch.as_tensor(state["symbols"], dtype=torch.int64).clone()
        n = len(ids)
        if state["dim"] is not None and (
            recent.shape != (n, self.window, self.bits) or symbols.shape != (n, self.window)
        ):
            raise ValueError(
                f"entropy: state shapes recent {tuple(recent.shape)}, symbols "
                f"{tuple(symbols.shape)} do not match {n} clients, bits={self.bits}, "
                f"window={self.window}"
            )
        st = self._state
        st.index = {c: i for i, c in enumerate(ids)}
        st.recent = recent.fill_(math.nan) if stale else recent
        st.symbols = symbols
        st.dim = None if state["dim"] is None else int(state["dim"])
        st.space = None if state["space"] is None else int(state["space"])

    def reset(self) -> None:
        """Forget every client's window."""
        st = self._state
        st.index = {}
        st.recent = torch.zeros(0, 0, 0, dtype=torch.float64)
        st.symbols = torch.zeros(0, 0, dtype=torch.int64)
        st.dim = None
        st.space = None
