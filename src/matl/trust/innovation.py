r"""Innovation: how much of a client's place in the crowd is new each round.

An honest client trains on the same local data every round, so where its update sits relative to
the round's other updates — its *deviation* from the round's centre — changes only partly from one
round to the next: the part due to its data persists, the part due to fresh mini-batches does not.
A client that adds noise of its own (the additive Gaussian attack: its honest update plus noise on
the scale of the honest spread) or sends a fresh random vector each round has a deviation that is
mostly new every round. Its direction and norm can look perfectly honest in any single round; its
*innovation* — the change of its deviation between consecutive rounds, relative to the round's
typical deviation — cannot.

Measured on real MNIST (the trust benchmark's setting, seeds 10 and 11; the updates of one run per
setting, scored by this signal with its defaults, from the fourth round on): honest clients' running
innovation reached at most 1.54 attack-free (99 % quantile 1.37–1.40), and at most 1.10 / 1.18 /
1.38 / 1.54 with label flip, ALIE, sign flip and sleepers at 45 % Byzantine (1.43 with 45 %
Gaussian clients); additive Gaussian clients (σ = 1) had medians of 1.81–1.84 at 20 % and
1.76–1.82 at 45 %. At 45 % that needs the reference to leave out the clients already over the
threshold: with every client in it, the noisy ones made up much of it and their medians fell to
1.53–1.58 (0.69–0.74 of their client-rounds over the threshold, against 1.0 now). Why the reference is the median
deviation and not a lower quantile: 45 % ALIE clients send one shared vector, whose deviation is
small and does not change, so a lower quantile of the deviations (or of the innovations) is theirs
and every honest client's ratio rises fourfold (measured: honest ratios up to 5.7); the median stays
among the honest clients whichever side a minority sits on.

References
----------
Kalman, "A New Approach to Linear Filtering and Prediction Problems", 1960 (the *innovation*: the
part of an observation its past does not predict); Blanchard et al., "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017 (the Gaussian Byzantine worker the
test is aimed at).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from matl.aggregation.base import RoundContext
from matl.errors import ConfigError, InvalidUpdateError
from matl.trust._util import (
    all_finite,
    assign_rows,
    check_number,
    check_rows,
    check_state_keys,
    fold_running_mean,
    grow,
    median,
    put_rows,
    quorum_count,
    running_value,
    sampled_rows,
    state_client_ids,
    take_rows,
    unique_keys,
)
from matl.trust.base import SignalResult
from matl.trust.sketch import (
    SKETCH_LAYOUT,
    round_sketch,
    sketch_layout_changed,
    tight_group_members,
)

__all__ = ["InnovationSignal"]

#: Stream id of the centre's row subsample in :func:`matl.trust._util.round_generator`.
_STREAM_CENTER = 2

_STATE_KEYS = {
    "client_ids",
    "deviation",
    "last_round",
    "mean",
    "mean_all",
    "mean_scaled",
    "weight",
    "count",
    "dim",
    "round",
}


#: Innovations after which a client's running value is judged at the plain threshold :math:`T`
#: (before: the raised :math:`T_k`).
_SETTLED = 3


@dataclass
class _Deviations:
    """Per-client rows of :class:`InnovationSignal`'s state."""

    index: dict[int, int] = field(default_factory=dict)
    #: (N, k) the deviation of each client's last participation.
    deviation: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float64))
    #: (N,) the round of that participation (-1: none).
    last_round: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    #: (N,) running sum and weight of the innovation ratio, and the number of observations.
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    #: (N,) the same running sum with every client in the reference (decides the exclusions).
    mean_all: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    #: (N,) the same running sum of the innovation against the round's scale (the quorum's count).
    mean_scaled: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    weight: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    count: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    dim: int | None = None
    #: The number of calls so far (one call is one round).
    round: int = 0


@dataclass(frozen=True, kw_only=True)
class InnovationSignal:
    r"""Running innovation of each client's deviation from the round's centre.

    Let :math:`z_i = S u_i` be the round's shared count sketch (:func:`~matl.trust.sketch.round_sketch`,
    width ``sketch_dim`` :math:`k = 1024`; the update itself when :math:`d \le 4k`), :math:`c` the
    coordinate-wise median of the :math:`z_i` (of a random 255 of them beyond 255 clients:
    ``center_rows``) and :math:`\delta_i = z_i - c` client :math:`i`'s
    deviation. For a client that also took part in the previous round (deviation
    :math:`\delta_i'`),

    .. math::

        x_i = \frac{\lVert \delta_i - r\,\delta_i' \rVert}{\operatorname{med}_j \lVert \delta_j \rVert},
        \qquad
        R_i \leftarrow \frac{\alpha\, W_i R_i + (1 - \alpha)\, x_i}{\alpha W_i + 1 - \alpha},
        \quad W_i \leftarrow \alpha W_i + 1 - \alpha,

    where :math:`r = 1` unless ``rescale`` (below: the round's scale change, measured and not
    adopted), the median runs over the round's clients except those already over the threshold,
    unless fewer than three would remain. "Over the threshold" is judged on a second running value
    kept alongside, :math:`R_i^{\text{all}}`, the same average with every client in the reference
    (above :math:`T` before this round, with at least ``min_observations``): judged on
    :math:`R_i` itself, exclusions could feed on themselves (leaving clients out lowers the
    reference, which puts more clients over). Members of a tight group — three or more updates at pairwise cosine
    :math:`\ge` ``group_tau`` (0.99) in the round's shared sketch, as the community signal counts
    them — are left out of both references: such a group is one voice, and 45 % IPM clients
    sending one shared update near the centre otherwise made the median deviation theirs (every
    honest ratio rose: 725 honest client-rounds failed on MNIST, seed 1, and the exclusion then
    left out all 28 honest clients). :math:`R_i` is the bias-corrected moving average (``memory``
    :math:`\alpha = 0.8`) of the innovation ratio
    :math:`x_i`, each observation clipped at :math:`4T/3 = 2` (:attr:`clip`; noisy clients' ratios
    sit around 1.8): a one-off change of behaviour (a switch, or a client returning to honest
    training after an attack) makes two large observations, there and back, and a settled running
    value :math:`R` then peaks at :math:`0.64 R + 0.72`, below :math:`T` for :math:`R < 1.22`
    (MNIST's honest clients settle around 1.1), while noise added every round keeps it above.
    Common drift (the model moving, the learning rate changing) shifts the centre and
    cancels in :math:`\delta_i - \delta_i'`. Why it separates noise from honest behaviour: with
    :math:`\rho` the correlation of an honest client's consecutive deviations,
    :math:`\mathbb{E}\lVert\delta - \delta'\rVert^2 = 2(1 - \rho)\,\mathbb{E}\lVert\delta\rVert^2`,
    while independent noise :math:`\nu` with :math:`\mathbb{E}\lVert\nu\rVert^2 = \sigma^2
    \mathbb{E}\lVert\delta\rVert^2` adds :math:`2\sigma^2\,\mathbb{E}\lVert\delta\rVert^2` —
    for :math:`\rho \approx 0.36` (measured on MNIST) and :math:`\sigma = 1` a ratio
    :math:`\sqrt{1 + 1/(1 - \rho)} \approx 1.6` above an honest client's.

    The score is one-sided (a *stable* client is never penalised):

    .. math::

        s_i = \exp\!\Big(-\tfrac12 \max\bigl(0, (R_i - T) / w\bigr)^2\Big)

    with ``threshold`` :math:`T = 1.5` and ``width`` :math:`w = 0.05`: the highest honest running
    value measured on MNIST, 1.54, scores 0.73 (in the composite, 0.92: not flagged), a client at
    1.6 scores 0.14. :math:`T` is in units of the round's median deviation, so it does not depend
    on the model's scale, but it does depend on how persistent honest deviations are: on the
    synthetic task of the unit tests honest running values stay below 0.6, and there
    :math:`T = 0.8` also catches σ = 1 noise. A client with fewer than ``min_observations``
    (default 1) innovations scores ``neutral`` (1.0): a client is scored from its second
    consecutive round on, on its first innovation alone (the bias-corrected average of one
    observation is that observation). Waiting for three, as this signal first did, left every
    noisy client unflagged in rounds 0–2, a ceiling of 27/30 = 0.90 on detection in a 30-round
    run; on the calibration seeds (10 and 11, Mode 1, MNIST) scoring from the first innovation
    raised Gaussian-noise detection from 0.90 to 0.97 at 20 and 33 % and from 0.81 / 0.87 to
    0.91 / 0.97 at 45 %, sleeper detection at 20 % from 0.83 / 0.84 to 0.85 / 0.85, and changed
    no false-positive rate by more than 0.003 (attack-free, sign flip, ALIE, IPM, scaling,
    collusion and label flip unchanged). Honest deviations persist from one round to the next
    (:math:`\rho \approx 0.36`), so an honest client's single innovation usually stays below
    :math:`T`, but not always: on calibration seeds 12–14 honest first innovations reached 1.70,
    the noisy clients' first ones started at 1.78. A running value of one or two observations
    is therefore held to a raised threshold,

    .. math::

        T_k = T\,\bigl(1 + m \max(0, 3 - k) / 2\bigr)

    after :math:`k` innovations (``early_margin`` :math:`m = 0.1`: :math:`1.1\,T = 1.65` for the
    first, :math:`1.05\,T` for the second, :math:`T` from the third on); the same
    :math:`T_k` decides who is left out of the reference. With the engine's attack-signature
    guard, on calibration seeds 10–14 it took Mode 1's attack-free false-positive rate from
    0 / 0 / 0.001 / 0.003 / 0.015 to 0 / 0 / 0 / 0 / 0.010 (the flags it removes are honest
    first innovations in rounds 1–4, which also gave the round its attack signature), and moved
    Gaussian-noise detection by at most 0.008 (45 %, seed 11: 0.967 → 0.959).

    Noise is a crowd's behaviour when it matters, an honest outlier a lone one: on the attack-free
    calibration seeds 10–19 (Mode 1) at most three honest clients of 50 were over their limits in
    any round, while every additive Gaussian client (10 at 20 %, 22 at 45 %) was over in every round
    from round 1 on. The remaining early false positives were lone first innovations (seed 16:
    client 26 at 1.84, one of two clients over; seed 18: client 28 at 1.78, the only one). So a
    client *in the quorum window* — fewer than ``quorum_window`` innovations (three in stop 25, six
    since stop 26, below) — is scored only in a round in which at least :math:`\lceil q n \rceil` of
    the round's :math:`n` clients are over their limits (``early_quorum`` :math:`q = 0.08`: 4 of 50,
    one more than the honest maximum); otherwise, if it is over its own limit, it scores ``neutral``
    that round, and its running value is kept as usual. From its ``quorum_window``-th innovation on
    a client is scored alone. In rounds of at most :math:`1/q` clients (12 at the default) the
    quorum is one client, which is no gate at all. On calibration seeds 10–19 (every attack at
    20–45 % in Mode 1 and 20–33 % in Mode 0, seeds 10–11; attack-free seeds 10–19 in both modes; 232
    runs) this took the attack-free false-positive rate of seeds 16 and 18 from 0.0007 to 0 in both
    modes (Mode 0 is now 0 on all ten seeds), changed no detection rate, and moved one
    false-positive rate (Mode 0, label flip 33 %, seed 11: 0.001 → 0.002). The price then: fewer
    than :math:`\lceil q n \rceil` noisy clients went unscored for their first two innovations
    (scored from round 3 of a run instead of round 1; a unit test sends one).

    The quorum now covers a client's first ``quorum_window`` − 1 = 5 innovations (stop 26; the third
    innovation in stop 25): on the attack-free seeds 20–59 (Mode 1; seeds never used before), the
    innovation test flagged an honest client on 8 of 40 seeds, on 7 of them at its third to fifth
    innovation, the only client or one of two over its limit (running values 1.59–1.96 in rounds
    3–5: the bias-corrected average of :math:`k` observations with memory 0.8 weighs them as
    :math:`n_{\text{eff}} = 2.9` samples at :math:`k = 3` and 5.3 at :math:`k = 6`, against 9 in the
    limit, so a settled value needs about as many rounds as the memory's horizon
    :math:`1/(1 - \alpha) = 5`). The eighth was a round-1 first innovation with four honest clients
    over (the quorum met; so were held-out seeds 127 and 136 of the benchmark: four honest clients
    over is rare, not impossible). The price: fewer than :math:`\lceil q n \rceil` noisy clients are scored
    from round 6 of a run instead of round 3. ``docs/trust.md`` ("Held-out attack-free seeds and a
    longer quorum window") has the calibration.

    **The round's own scale (``rescale``; measured in stop 28, off by default).** Early in
    training the whole spread shrinks: on MNIST the median deviation in round 1 was 0.66–0.70
    times round 0's, then 0.8–0.9 times the previous round's until about round 4, and about 1
    after. A persistent deviation shrinks with it, so :math:`\delta_i - \delta_i'` carries
    :math:`(1 - r)\,\delta_i'` that nobody added, most for the clients with the largest persistent
    deviations; that is where the honest round-1 first innovations over 1.65 came from (and why
    the raised early threshold exists). With ``rescale`` the previous deviation is scaled by
    :math:`r = \operatorname{med}_{j \in P} \lVert\delta_j\rVert / \lVert\delta_j'\rVert`, the median norm ratio of
    the clients :math:`P` present in both rounds, outside tight groups, whose previous deviation
    is not zero (1 if there are none): the same clients in both rounds, so neither sampling nor a
    change of the reference's membership moves it. The reference's exclusions stay on the
    unscaled change unless ``rescale_reference``. Measured in the trust benchmark's setting
    (traces of seeds 20–59 attack-free and Gaussian noise on seeds 10–13, then
    ``examples/trust_calibration_stop28.toml``): honest round-1 innovations fell from a 99 %
    quantile of 1.68 and a maximum of 2.32 to 1.40 and 1.68, and the attack-free seeds 20–59
    were all clean in both modes (78 of 80 before); but the noisy clients' innovations fell with
    them (round-1 median 2.00 → 1.64), and their detection with it. With the early margin
    turned off, Gaussian noise at 40 / 45 % in Mode 1 went from 0.960–0.967 / 0.911–0.967 to
    0.902–0.917 / 0.852–0.915 (0.762 at 45 %, seed 11, with the reference rescaled as well:
    the noisy clients then never left it); with the first limits lowered instead
    (``early_margin`` −0.1: 1.35, 1.425, then :math:`T`) to 0.930–0.963 / 0.882–0.961, the
    loss now a noisy client or two whose settled value sits just over :math:`T` (the shrink in
    later rounds, :math:`r` of 0.93–0.99, also lifted the unscaled values a little). The
    benchmark's Gaussian cells at 40–45 % sit 1–2 points above the 95 % target, so it stays off;
    it is worth turning on where the scale changes abruptly between rounds (a learning-rate
    schedule) and false positives cost more than a slower catch.

    **The quorum counted against the round's own scale (``quorum_rescaled``, on since stop
    28).** What the rescaling is good for is the *count*. A client over its limit counts towards
    the early quorum only if its running innovation against the round's scale is over
    :math:`\kappa T` as well (``quorum_level`` :math:`\kappa = 0.93`, about 1.4). That running
    value is the same bias-corrected average of :math:`\lVert\delta_i - r\,\delta_i'\rVert /
    \operatorname{med}_j \lVert\delta_j\rVert`, kept alongside (``raw["running_innovation_rescaled"]``).
    Scores stay those of the unscaled test. Honest round-1 innovations against the round's scale
    reached at most 1.68 of 2 437 (99 % quantile 1.40), while the noisy clients' had a 5 %
    quantile of 1.48 and a median of 1.64. So a crowd made by the shrink no longer opens the
    quorum, and a crowd of noisy clients still does.

    Why :math:`\kappa < 1`: in round 1 nobody has left the reference yet, so at 45 % the noisy
    clients inflate its median and their own rescaled values. Their round-1 medians were
    1.41–1.58 on seeds 12–19 and 0 (a throw-away script), and on seed 15 only 2 of 22 exceeded
    :math:`T`, so at :math:`\kappa = 1` the quorum stayed shut in round 1 (detection 0.947 →
    0.933). A first benchmark run at :math:`\kappa = 1` showed the same on seed 0 (0.953 →
    0.933). Replayed on the traces of seeds 20–59 (attack-free) and 10–13 (Gaussian noise),
    levels from 1.3 to 1.5 let no honest crowd through and lose no noisy client-round, while 1.25
    let one through. On the calibration runs (``examples/trust_calibration_stop28_quorum.toml``)
    the default and the plain count gave identical metrics on 174 of 176 settings, Gaussian noise
    from 5 to 22 of 50 clients on seeds 10–19 included. The two that differ are attack-free seed
    57 in both modes, at 0.0007 → 0: its round-1 crowd of four honest clients no longer met the
    quorum.

    Only consecutive participations are compared (the client was also in the previous call; one
    call is one round): a client that skipped rounds has a deviation that moved for reasons of
    its own (the model changed more in between), so its stored deviation is replaced without an
    observation.

    Limits:

    * Noise much smaller than the honest spread (:math:`\sigma \lesssim 0.5` gives a ratio of
      about 1.2 on MNIST) is invisible — and harmless to the same degree.
    * When noisy clients are nearly half of the round they make up much of the reference until
      they are over the threshold and left out of it; the first rounds after scoring starts
      catch fewer of them.
    * Tight groups are found on the raw updates' cosines, as the community signal finds them. A
      group that sits still near the centre but adds a little noise per client (pairwise cosine
      below ``group_tau``) is not one, and being nearly half the round it can still pull the
      median deviation down to the low end of the honest ones and push the honest clients with
      the largest deviations over. Conversely, if honest updates are themselves nearly parallel
      (cosine ≥ 0.99 — the community signal then flags them as well, and ``tau`` must be raised
      for such a task), they are left out of the reference.
    * Noise that does not change from round to round is not innovation: a client adding its own
      fixed vector every round (or one refreshed every :math:`k` rounds, with about :math:`1/k` of
      the innovation) passes, although a fixed bias adds up in the aggregate faster than fresh
      noise. Its direction is stable too, so the temporal test passes it as well; its effect on
      the validation loss (Mode 1) is what remains to catch it.
    * Only consecutive calls are compared, so the test needs clients that take part round after
      round. Under client sampling most participations are not consecutive (10 of 100 clients per
      round: a third of the clients were ever scored in 200 rounds, in a review's simulation), and
      a client that joins every other round is never scored. Rounds in which the signal is not
      called do not exist for it.
    * The quorum window counts a client's innovations, which need consecutive participations:
      under client sampling a lone noisy client can wait far longer than ``quorum_window``
      rounds before it is scored alone.
    * When honest deviations are mostly fresh SGD noise (:math:`\rho \approx 0`, e.g. clients
      drawing new data every round), honest ratios sit near :math:`\sqrt 2 \approx 1.41`, close
      to :math:`T`; raise ``threshold`` there.

    Parameters
    ----------
    threshold:
        :math:`T > 0`.
    width:
        :math:`w > 0`.
    memory:
        :math:`\alpha \in [0, 1)`.
    min_observations:
        Innovations needed before a client is scored (``>= 1``).
    early_margin:
        :math:`m > -1`, the relative raise of the threshold for a client's first two
        innovations (0 turns it off; a negative margin lowers them).
    early_quorum:
        :math:`q \in [0, 1]`: a client's first ``quorum_window`` − 1 innovations are scored only
        in a round in which at least :math:`\lceil q n \rceil` of its :math:`n` clients are over
        their limits (0 turns it off).
    quorum_window:
        :math:`K \ge 1`: the innovation from which a client is scored alone (default 6; 3 in
        stop 25; 1 turns the quorum off).
    neutral:
        Score of a client not yet scored, in ``[0, 1]``.
    sketch_dim:
        Sketch width :math:`k \ge 1`, or ``None`` for the exact rows.
    seed:
        Seed of the sketch (the engine's shared one by default).
    group_tau:
        Cosine at which updates count as near-identical (members of a group of three or more
        are left out of the reference), in ``(0, 1]``.
    rescale:
        Scale the previous deviation by the round's scale change :math:`r` (default ``False``;
        see **The round's own scale**).
    rescale_reference:
        With ``rescale``, judge the reference's exclusions on the rescaled change as well
        (default ``False``: on the unscaled one).
    quorum_rescaled:
        Count a client over its limit towards the early quorum only if its running innovation
        against the round's scale is over ``quorum_level`` :math:`\cdot\, T` too (default
        ``True``; ``False``: stop 27's count, every client over its limit).
    quorum_level:
        :math:`\kappa > 0`: the rescaled running innovation a client over its limit needs to
        count towards the quorum, in units of :math:`T` (default 0.93: 1.4 at :math:`T = 1.5`).
    center_rows:
        When :math:`n` exceeds this (default 255), :math:`c` is the coordinate-wise median of a
        random subset of this many of the round's sketches, drawn afresh each round from a
        generator seeded by ``(seed, round)``; ``None`` always uses every row. The median of
        the :math:`(1000, 1024)` sketch costs 8–9 ms a round on 2 cores, that of 255 rows 2 ms.
        The subsample's median differs from the whole round's by a common vector whose norm is
        about :math:`1.25/\sqrt{255}` of a deviation's, less the finite-population share
        (0.068 measured at :math:`n = 1000`); its change from round to round adds to every
        client's innovation in quadrature: about 0.5 % where honest innovations are about one
        deviation (MNIST's honest level, 1.1), more where honest deviations persist and their
        innovations are small (the unit test's synthetic task). The subsample loses its honest
        majority in a round with probability (hypergeometric) 0.0001 at :math:`n = 1000` and
        40 % Byzantine clients, 0.011 / 0.032 / 0.050 at :math:`n = 500 / 1000 / 5000` and
        45 % — where the whole round's median does not; beyond 40 % set ``center_rows=None``,
        as for the peer signal's.
    """

    name = "innovation"

    threshold: float = 1.5
    width: float = 0.05
    memory: float = 0.8
    min_observations: int = 1
    early_margin: float = 0.1
    early_quorum: float = 0.08
    quorum_window: int = 6
    neutral: float = 1.0
    sketch_dim: int | None = 1024
    seed: int = 0
    rescale: bool = False
    rescale_reference: bool = False
    quorum_rescaled: bool = True
    quorum_level: float = 0.93
    center_rows: int | None = 255
    _state: _Deviations = field(default_factory=_Deviations, init=False, repr=False, compare=False)

    group_tau: float = 0.99

    def limit(self, count: torch.Tensor) -> torch.Tensor:
        r"""``(n,)`` float64 threshold for running values of ``count`` innovations:
        :math:`T\,(1 + m \max(0, 3 - k) / 2)` (``early_margin`` :math:`m`), :math:`T` from the
        third innovation on."""
        early = (_SETTLED - count).clamp(min=0).to(torch.float64) / 2.0
        return self.threshold * (1.0 + self.early_margin * early)

    @property
    def clip(self) -> float:
        """The largest value one observation contributes, :math:`4T/3`."""
        return 4.0 * self.threshold / 3.0

    def __post_init__(self) -> None:
        check_number("innovation", "threshold", self.threshold, low=0.0, low_open=True)
        check_number("innovation", "width", self.width, low=0.0, low_open=True)
        check_number("innovation", "memory", self.memory, low=0.0, high=1.0, high_open=True)
        check_number("innovation", "min_observations", self.min_observations, low=1, integer=True)
        check_number("innovation", "early_margin", self.early_margin, low=-1.0, low_open=True)
        check_number("innovation", "early_quorum", self.early_quorum, low=0.0, high=1.0)
        check_number("innovation", "quorum_window", self.quorum_window, low=1, integer=True)
        check_number("innovation", "neutral", self.neutral, low=0.0, high=1.0)
        if self.sketch_dim is not None:
            check_number("innovation", "sketch_dim", self.sketch_dim, low=1, integer=True)
        check_number("innovation", "seed", self.seed, low=0, integer=True)
        check_number("innovation", "group_tau", self.group_tau, low=0.0, high=1.0, low_open=True)
        check_number("innovation", "quorum_level", self.quorum_level, low=0.0, low_open=True)
        if self.center_rows is not None:
            check_number("innovation", "center_rows", self.center_rows, low=1, integer=True)
        for flag in ("rescale", "rescale_reference", "quorum_rescaled"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"innovation: {flag} must be a bool, got {getattr(self, flag)!r}")

    @staticmethod
    def _scale_change(norms: torch.Tensor, previous: torch.Tensor, paired: torch.Tensor) -> float:
        r"""The round's scale change :math:`r = \operatorname{med}_j \lVert\delta_j\rVert /
        \lVert\delta_j'\rVert` over the ``paired`` clients (in the previous round as well, outside
        tight groups) whose previous deviation is not zero; 1 when there are none."""
        before = torch.linalg.vector_norm(previous[paired], dim=1)
        now = norms[paired]
        usable = (before > 0) & torch.isfinite(now / before.clamp_min(1e-300))
        if not bool(usable.any()):
            return 1.0
        r = median(now[usable] / before[usable])
        return r if math.isfinite(r) and r > 0 else 1.0

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> SignalResult:
        """Score the ``(n, d)`` ``updates`` by their running innovation, then store them."""
        check_rows(updates, "innovation")
        n = updates.shape[0]
        keys = unique_keys(n, ctx, "innovation")
        z = round_sketch(updates, self.sketch_dim, seed=self.seed).to(torch.float64)
        if not all_finite(z):
            raise InvalidUpdateError("innovation: updates contain NaN or Inf")
        st = self._state
        if st.dim is None:
            st.dim = z.shape[1]
            st.deviation = torch.zeros(0, st.dim, dtype=torch.float64)
        elif st.dim != z.shape[1]:
            raise InvalidUpdateError(
                f"innovation: updates changed size (stored deviations have width {st.dim}, now "
                f"{z.shape[1]}); call reset() between models"
            )
        rnd = st.round  # one call is one round
        st.round = rnd + 1
        drawn = sampled_rows(
            torch.arange(n),
            self.center_rows,
            self.seed,
            ctx.round if ctx is not None else rnd,
            _STREAM_CENTER,
        )
        deviation = z - (z if drawn is None else z[drawn]).median(dim=0).values
        rows, _ = assign_rows(st.index, keys)
        total = len(st.index)
        st.deviation = grow(st.deviation, total, 0.0)
        st.last_round = grow(st.last_round, total, -1)
        st.mean, st.weight = grow(st.mean, total, 0.0), grow(st.weight, total, 0.0)
        st.mean_all = grow(st.mean_all, total, 0.0)
        st.mean_scaled = grow(st.mean_scaled, total, 0.0)
        st.count = grow(st.count, total, 0)
        # The reference leaves out the clients whose running value *with everyone in the
        # reference* is over the threshold (when 3 others remain). Deciding on that value, not on
        # the scored one, keeps the exclusions from feeding on themselves.
        norms = torch.linalg.vector_norm(deviation, dim=1)
        # Members of a tight group (near-identical updates: ALIE, IPM, colluders) are one voice,
        # not many: they stay out of every reference, or a large group sitting at the centre
        # would shrink it and push every honest client over the threshold.
        grouped = tight_group_members(updates, self.sketch_dim, self.seed, self.group_tau)
        if n - int(grouped.sum()) < 3:
            grouped = torch.zeros_like(grouped)
        size_all = median(norms[~grouped])
        before = running_value(st.mean_all, st.weight, rows, 0.0)
        count = st.count[rows]
        excluded = grouped | (count >= self.min_observations) & (before > self.limit(count))
        if n - int(excluded.sum()) < 3:
            excluded = grouped
        size = median(norms[~excluded])

        last = st.last_round[rows]
        follows = (last >= 0) & (last == rnd - 1)
        previous = take_rows(st.deviation, rows)
        scale = (
            self._scale_change(norms, previous, follows & ~grouped)
            if self.rescale or self.quorum_rescaled
            else 1.0
        )
        scaled = torch.linalg.vector_norm(deviation - scale * previous, dim=1)
        unscaled = scaled if scale == 1.0 else torch.linalg.vector_norm(deviation - previous, dim=1)
        change = scaled if self.rescale else unscaled
        # The reference's exclusions are judged on the unscaled change unless rescale_reference.
        change_all = scaled if self.rescale and self.rescale_reference else unscaled
        ratio = (
            torch.where(follows, change / size, math.nan)
            if size > 0
            else torch.full((n,), math.nan, dtype=torch.float64)
        )
        observed = torch.isfinite(ratio)
        seen_rows = rows[observed]
        # Both averages see the same observations with the same memory, so they share one weight
        # sequence: the second fold's copy of the weights ends equal to the first's.
        weight_before = st.weight.clone()
        fold_running_mean(
            st.mean, st.weight, seen_rows, ratio[observed].clamp(max=self.clip), self.memory
        )
        ratio_scaled = scaled[observed] / size if size > 0 else ratio[observed]
        fold_running_mean(
            st.mean_scaled,
            weight_before.clone(),
            seen_rows,
            ratio_scaled.clamp(max=self.clip),
            self.memory,
        )
        ratio_all = change_all[observed] / size_all if size_all > 0 else change_all[observed] / size
        fold_running_mean(
            st.mean_all, weight_before, seen_rows, ratio_all.clamp(max=self.clip), self.memory
        )
        st.count[rows] += observed.to(torch.int64)
        put_rows(st.deviation, rows, deviation)
        # Without a reference (a single client, or all alike) the deviations mean nothing: the
        # next participation starts afresh rather than being compared with them.
        st.last_round[rows] = rnd if size > 0 else -1

        running = running_value(st.mean, st.weight, rows, math.nan)
        count = st.count[rows]
        scored = count >= self.min_observations
        limit = self.limit(count)
        over = scored & (running > limit)
        running_scaled = running_value(st.mean_scaled, st.weight, rows, math.nan)
        # The quorum counts a client over its limit only if it is over quorum_level · T against
        # the round's own scale as well (quorum_rescaled; see the class docstring).
        level = self.quorum_level * self.threshold
        counted = over & (running_scaled > level) if self.quorum_rescaled else over
        if int(counted.sum()) < quorum_count(self.early_quorum, n):
            # Too few clients over their limits for noise: those in the quorum window over theirs
            # wait (neutral); those under score 1 as ever.
            scored = scored & ((count >= self.quorum_window) | ~over)
        excess = ((running - limit) / self.width).clamp_min(0.0)
        scores = torch.where(scored, torch.exp(-0.5 * excess**2), float(self.neutral))
        rescaled = self.rescale or self.quorum_rescaled
        raw = {"running_innovation_rescaled": running_scaled} if rescaled else {}
        return SignalResult(
            scores=scores.to(torch.float64),
            raw={
                **raw,
                "innovation": ratio,
                "running_innovation": running,
                "excluded_from_reference": excluded.to(torch.float64),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        """``client_ids`` in row order, their last ``deviation`` ``(N, k)``, ``last_round`` (the
        call it came from), the running ``mean`` (scored), ``mean_all`` (with every client in
        the reference) and ``mean_scaled`` (against the round's scale: the quorum's count) with
        their common ``weight`` and ``count``, ``dim`` and the number of calls ``round``
        (copies)."""
        st = self._state
        return {
            "client_ids": list(st.index),
            "deviation": st.deviation.clone(),
            "last_round": st.last_round.clone(),
            "mean": st.mean.clone(),
            "mean_all": st.mean_all.clone(),
            "mean_scaled": st.mean_scaled.clone(),
            "weight": st.weight.clone(),
            "count": st.count.clone(),
            "dim": st.dim,
            "round": st.round,
            "sketch_layout": SKETCH_LAYOUT,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, checked: shapes, finiteness, a weight in
        ``(0, 1]`` exactly for the clients observed, ``0 <= mean, mean_all, mean_scaled <= clip ·
        weight`` (up to rounding), ``round`` an integer after every ``last_round``. A state
        without ``mean_all`` or ``mean_scaled`` (saved before stop 28) loads with them equal to
        ``mean``. Deviations sketched with an earlier layout
        of the sketch (:func:`~matl.trust.sketch.sketch_layout_changed`) cannot be compared with
        this round's: the running innovations are kept, and each client's next participation
        stores a new deviation without an observation (as after a skipped round)."""
        for key in ("mean_all", "mean_scaled"):
            if key not in state and "mean" in state:
                state = {**state, key: state["mean"]}
        stale = sketch_layout_changed(state, state.get("dim"), self.sketch_dim)
        state = {k: v for k, v in state.items() if k != "sketch_layout"}
        check_state_keys("innovation", state, _STATE_KEYS)
        ids = state_client_ids("innovation", state["client_ids"])
        n = len(ids)
        dev = torch.as_tensor(state["deviation"], dtype=torch.float64).clone()
        last = torch.as_tensor(state["last_round"], dtype=torch.int64).clone()
        mean = torch.as_tensor(state["mean"], dtype=torch.float64).clone()
        mean_all = torch.as_tensor(state["mean_all"], dtype=torch.float64).clone()
        mean_scaled = torch.as_tensor(state["mean_scaled"], dtype=torch.float64).clone()
        weight = torch.as_tensor(state["weight"], dtype=torch.float64).clone()
        count = torch.as_tensor(state["count"], dtype=torch.int64).clone()
        dim = state["dim"]
        if (
            dev.ndim != 2
            or dev.shape[0] != n
            or any(t.shape != (n,) for t in (last, mean, mean_all, mean_scaled, weight, count))
        ):
            raise ValueError(f"innovation: state rows do not match its {n} client ids")
        if dim is not None and dev.shape[1] != dim:
            raise ValueError(f"innovation: deviation width {dev.shape[1]} != dim {dim}")
        if not all(bool(torch.isfinite(t).all()) for t in (dev, mean, mean_all, mean_scaled)):
            raise ValueError("innovation: state has non-finite values")
        seen = count > 0
        if bool(
            (count < 0).any()
            | (weight > 1).any()
            | (seen & (weight <= 0)).any()
            | (~seen & (weight != 0)).any()
            | (torch.minimum(torch.minimum(mean, mean_all), mean_scaled) < 0).any()
            | (
                torch.maximum(torch.maximum(mean, mean_all), mean_scaled)
                > self.clip * weight * (1 + 1e-9)
            ).any()
        ):
            raise ValueError(
                "innovation: state must have counts >= 0, weights in (0, 1] exactly where a "
                "client was observed, and 0 <= mean, mean_all, mean_scaled <= "
                f"{self.clip:g} * weight"
            )
        rnd = state["round"]
        latest = int(last.max()) if last.numel() else -1
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < latest + 1:
            raise ValueError(
                f"innovation: state round {rnd!r} must be an integer after every last_round"
            )
        st = self._state
        st.index = {c: i for i, c in enumerate(ids)}
        st.deviation, st.last_round, st.weight, st.count = dev, last, weight, count
        st.mean, st.mean_all, st.mean_scaled = mean, mean_all, mean_scaled
        st.dim = None if dim is None else int(dim)
        st.round = rnd
        if stale:
            st.deviation.zero_()
            st.last_round.fill_(-1)

    def reset(self) -> None:
        """Forget every client."""
        object.__setattr__(self, "_state", _Deviations())
