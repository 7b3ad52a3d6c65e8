r"""Mode 1 — Proof of Gradient Quality (PoGQ): does an update lower a trusted validation loss?

A validator holding trusted validation data :math:`V = (x, y)` (``ctx.validation``) scores each
update by the improvement it brings to the global model θ:

.. math::

    \Delta_i = L_V(\theta) - L_V(\theta + \eta\, u_i), \qquad
    L_V(\theta) = \frac{1}{|V|} \sum_{(x, y) \in V} \operatorname{CE}(f_\theta(x), y),

the validation-loss change of a step of :math:`\eta` along the update (:math:`\eta = 1`: the
whole update; see :class:`PoGQSignal` for why the default is :math:`\eta = 0.1`).

Trust is anchored on data the attacker cannot touch, not on a majority of peers, so the score keeps
its meaning when most clients are Byzantine: a sign-flipped update raises the validation loss
whatever the other clients send. This is the idea behind FLTrust's root dataset (Cao et al. 2021)
and Zeno's stochastic descendant score (Xie, Koyejo, Gupta 2019), applied here per update.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from matl.aggregation.base import RoundContext
from matl.aggregation.kernels import float64_dots, kernel_dtype
from matl.aggregation.memo import fingerprint
from matl.aggregation.products import row_dots
from matl.errors import ConfigError
from matl.trust._util import (
    assign_rows,
    check_number,
    check_rows,
    check_state_keys,
    fold_running_mean,
    grow,
    median,
    row_norms,
    running_value,
    state_client_ids,
    unique_keys,
)
from matl.trust.base import SignalResult
from matl.trust.record import mark_standing
from matl.trust.sketch import round_sketch, round_sketch_gain, sketch_width

__all__ = ["PoGQSignal", "validation_losses"]

Path = Literal["auto", "exact", "fast"]

#: The per-client rows of a saved state; with ``client_ids`` and ``scale``, all of its keys. Rows
#: added after the first release load as zeros from an older state.
_STATE_ROWS = ("mean", "weight", "cos", "cos_weight", "credit", "low", "vouched")
_ADDED_ROWS = ("credit", "low", "vouched")


@dataclass(frozen=True)
class _Primed:
    """The fast path's products read ahead in the round's sketch pass (:meth:`PoGQSignal.prepare`),
    for the very updates and context they were read from: the updates by a weak reference, the
    context's θ, validation batch and model by strong ones (so that no other tensor can take their
    place in memory while the read waits), each tensor with its fingerprint."""

    updates: weakref.ref[torch.Tensor]
    context: tuple[Any, ...]
    marks: tuple[Any, ...]
    dots: torch.Tensor


def _context(ctx: RoundContext) -> tuple[Any, ...]:
    """What the primed products depend on besides the updates: θ, the validation batch and the
    model, as objects."""
    assert ctx.validation is not None
    return (ctx.global_params, *ctx.validation, ctx.model)


def _marks(updates: torch.Tensor, ctx: RoundContext) -> tuple[Any, ...]:
    """Fingerprints of the updates, θ and the validation batch (their in-place versions)."""
    return tuple(fingerprint(t) for t in (updates, *_context(ctx)[:3]))


def pogq_norms(updates: torch.Tensor) -> torch.Tensor:
    """The round's row norms (:func:`~matl.trust._util.row_norms`, summed in float64), with the
    norms below the updates' smallest normal number taken as 0: such a row is a zero update to
    PoGQ, as its norm in the updates' own dtype would be (a float32 row of subnormal entries has
    a float64 norm near 1e-41), so it neither enters the consensus nor is measured against it."""
    norms = row_norms(updates, "pogq")
    wide = updates.dtype in (torch.float32, torch.float64)  # others are weighed in float32
    small = norms < torch.finfo(updates.dtype if wide else torch.float32).tiny
    return torch.where(small, 0.0, norms) if bool(small.any()) else norms


def _promoted(
    theta: torch.Tensor, x: torch.Tensor, updates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(θ as a (1, d) row, x)`` in the promoted dtype of θ and the updates (integer features
    unchanged): the point and batch both paths evaluate the validation loss at."""
    dtype = torch.promote_types(theta.dtype, updates.dtype)
    return theta.detach().reshape(1, -1).to(dtype), x.to(dtype) if x.is_floating_point() else x


def validation_losses(
    model: Any, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy ``(C,)`` of the ``C`` models ``params`` ``(C, d)`` on the one batch
    ``(x, y)``, in one batched forward (the batch is broadcast to ``(C, B, *input)``, a view)."""
    c = params.shape[0]
    b = y.shape[0]
    with torch.no_grad():
        logits = model.forward(params, x.unsqueeze(0).expand(c, *x.shape))
        k = logits.shape[-1]
        per_sample = torch.nn.functional.cross_entropy(
            logits.reshape(c * b, k), y.repeat(c), reduction="none"
        )
        return per_sample.view(c, b).mean(dim=1)


@dataclass(frozen=True, kw_only=True)
class PoGQSignal:
    r"""Proof of Gradient Quality: each update's validation-loss improvement, mapped to ``[0, 1]``.

    **Estimating** :math:`\Delta_i = L_V(\theta) - L_V(\theta + \eta u_i)`:

    * ``exact`` — evaluates :math:`L_V(\theta + \eta u_i)` for all clients with one batched
      forward per chunk of clients (parameters ``θ + η·u_rows`` of shape ``(chunk, d)``, the
      validation batch broadcast to ``(chunk, B, *input)``), chunks sized to about
      ``chunk_elements`` entries. Cost :math:`\approx n \cdot B` forward passes.
    * ``fast`` — first order: one validation gradient :math:`g = \nabla L_V(\theta)` per round,
      then :math:`\Delta_i \approx -\eta \langle g, u_i\rangle` for all clients as one
      matrix–vector product (one pass over the updates, the cost of a mean). Exact to second
      order: :math:`\Delta_i = -\eta\langle g, u_i\rangle - \tfrac{\eta^2}{2} u_i^\top H u_i +
      O(\eta^3 \lVert u_i\rVert^3)`.
    * ``auto`` (default) — ``exact`` when :math:`n \cdot d \cdot B \le` ``exact_budget`` (default
      :math:`5 \times 10^7`: measured 7 ms on two CPU cores at :math:`6 \times 10^7`; e.g. 20
      clients of the simulator's default 8 610-parameter MLP with 100 validation samples),
      ``fast`` otherwise (e.g. 100 clients of the 159 010-parameter MNIST MLP). See
      :meth:`resolve_path`.

    **Step** :math:`\eta` (``step``, default 0.1). :math:`\eta = 1` asks what the client's whole
    update would do on its own. The server never applies it on its own — a mean of :math:`n`
    updates moves θ by about :math:`u_i/n` per client — and under non-IID data the curvature term
    of a whole local update (the overshoot towards the client's own optimum) makes honest updates
    raise the validation loss: on the simulator's default task (Dirichlet(0.5), 20 clients, MLP)
    4–14 of 20 honest updates had :math:`\Delta_i \le 0` at :math:`\eta = 1` over 15 rounds of
    FedAvg, 0–3 at :math:`\eta = 0.2` and 0–2 at :math:`\eta = 0.05`, while every sign-flipped
    update stayed at :math:`\Delta_i < 0` for all of them. A small step measures the direction
    of the update, as the server will use it; the norm guard below takes care of its length. The
    score is invariant to :math:`\eta` on the fast path.

    **Norm guard.** A first-order gain grows linearly with the update's scale, so a boosted update
    (``s · u``) would buy a high score. With :math:`\rho_i = \lVert u_i\rVert / \operatorname{med}_j
    \lVert u_j\rVert`, every *positive* :math:`\Delta_i` is multiplied by

    .. math::

        \gamma(\rho) = \begin{cases} 1 & \rho \le \kappa \\
                                     (\kappa/\rho)^2 & \kappa < \rho < \kappa_{\max} \\
                                     0 & \rho \ge \kappa_{\max} \end{cases}

    (``norm_guard`` :math:`\kappa = 3`, ``norm_cap`` :math:`\kappa_{\max} = 6`). Dividing by the
    *squared* excess ratio makes the guarded first-order gain of ``s · u`` fall like :math:`1/s`
    beyond :math:`\kappa` — dividing by the ratio itself would only make it flat, so an attacker
    would lose nothing by scaling — and beyond :math:`\kappa_{\max}` a gain counts for nothing. A
    negative :math:`\Delta_i` is never shrunk (harm stays harm). The guard applies to both paths:
    the exact path sees a boosted update's overshoot, but on a flat loss surface a boosted update
    can genuinely lower the loss while still hijacking a weighted average. The norm reference is
    the round's median norm, a majority statistic; beyond 50 % Byzantine the guard therefore
    protects only while the attackers do not inflate their norms together (harmful directions are
    still caught: they give :math:`\Delta_i < 0`).

    **Evidence memory.** One round's :math:`\Delta_i` is a noisy witness: with a validation batch
    of 100 MNIST samples and Dirichlet(0.5) clients, honest updates had :math:`\Delta_i \le 0` in
    about 30 % of the rounds, and one honest client's 30-round mean was :math:`-0.6\,D`; 1 000
    samples make single rounds less noisy, but a few honest clients still raise the validation
    loss round after round (see the score below and ``docs/trust.md``). The signal therefore judges
    each client on its running evidence rather than on one round. With
    :math:`\tilde\Delta_i` the guarded improvement and the round's robust positive reference
    :math:`D = \operatorname{med}\{\tilde\Delta_j : \tilde\Delta_j > 0\}` (the median of the
    improvements; :math:`\operatorname{med}_j |\tilde\Delta_j|` when no update improves), the
    round's normalised evidence is :math:`x_i = \operatorname{clip}(\tilde\Delta_i / D, -c, c)`
    (``evidence_clip`` :math:`c = 3`), and each client keeps

    .. math::

        m_i \leftarrow \alpha\, m_i + (1 - \alpha)\, x_i, \qquad
        e_i = \frac{m_i}{1 - \alpha^{t_i}}, \qquad m_i = 0 \text{ before its first participation},

    an exponential moving average with ``memory`` :math:`\alpha` (default 0.8: an effective memory
    of about 5 participations), bias-corrected over the client's :math:`t_i` participations so far
    (as in Adam; with the harm memory below the corrections are :math:`1 - \prod_s a_s` over the
    memories :math:`a_s` actually used), so the first participation counts at its face value and the early ones are a
    plain weighted mean. :math:`\alpha = 0` is the memoryless score of one round. The
    reference :math:`D` is computed from improving updates only, so harmful updates cannot move it
    no matter how many there are, and :math:`x` is scale-free (invariant to rescaling the loss or
    all updates together).

    **Harm memory.** A drop is folded in faster than a rise: when this round's value is below
    the client's running value, the moving average uses ``harm_memory`` (default 0.7, at most
    ``memory``) instead of ``memory``; the bias correction still divides by the sum of the weights
    used. A switch to harm shows sooner (in the calibration below, with the tolerances raised to
    match, sleeper detection went from 0.72 to 0.79 and sign flip at 45 % from 0.91 to 0.96); an
    honest client's running value sits a little lower, which those tolerances allow for.

    **Validated consensus.** The evidence of a sign-flipped copy of an honest update mirrors the
    honest one on the fast path (:math:`x = -x_{\text{honest}}`), so flipping an update that did
    not help leaves harmless-looking evidence, and some honest non-IID clients raise the balanced
    validation loss round after round (a client with a skewed label mix pulls the model towards
    its classes): on evidence alone the two overlap. What separates them is direction. Each round
    the signal takes, among the updates with positive evidence and a norm ratio within the guard
    (:math:`\rho \le \kappa`), the :math:`k = \min(m, \max(3, \lceil q n\rceil))` with the best
    evidence (``consensus_fraction`` :math:`q = 1`: all :math:`m` such updates; ties broken by
    ``torch.topk``; when :math:`m < 3` or the mean direction below is zero there is no
    consensus this round, and nobody's running cosine moves), their mean unit direction :math:`r = \frac1k
    \sum_{j \in T} u_j / \lVert u_j\rVert`, and measures :math:`c_i = \cos(u_i, r)` in the
    round's shared sketch (``sketch_dim``, :math:`k = 1024`; :meth:`consensus_cosines`): the
    sketch is linear, so the sketch of :math:`r` is exact, and each cosine is read to within
    about :math:`1/\sqrt{k} = 0.03` at no pass over the updates (until stop 30 two
    matrix–vector products over them; with the sketch Mode 1 still meets all 32 target cells of
    the trust benchmark, mean detection 0.9943 → 0.9941, false-positive rate 0.0021 → 0.0019:
    docs/trust.md, "Stop 30"). An update that makes the validation loss worse never enters
    :math:`T`, whoever holds the majority. An honest client, even one whose update costs
    validation loss, still shares the task's common direction (:math:`c_i > 0`); a flipped copy
    points away (:math:`c_i < 0`). Each client keeps a running :math:`\bar c_i` (the same bias
    correction as :math:`e_i`, over the rounds that had a consensus, with its own memories
    ``consensus_memory`` 0.9 and ``consensus_harm_memory`` 0.8 for drops), and the scale is the
    running typical cosine :math:`C`: a bias-corrected moving average (``consensus_memory`` only)
    of the round's median positive :math:`c_j` (cosines shrink as training converges, so the cut
    is in units of :math:`C`).

    Why every improving update, and the longer memory: late in training honest directions become
    client-specific, and the best quarter by evidence is a narrow set of label mixes that honest
    clients with other classes point away from. On seeds 10 and 11 (attack-free) every honest flag
    of the engine came from that quarter's cosine; with the reference widened to every improving
    update and memories 0.9 / 0.8, the attack-free false-positive rate went from 0.032 / 0.030 to
    0.004 / 0.003, and under sign flip at 20 % from 0.055 to 0.008, at the cost of sleeper
    detection (0.83 → 0.69 at 45 %). A wider set is also harder to steer: attackers must outweigh
    the improving honest updates rather than fill a quarter of the round. The tables are in
    ``docs/trust.md`` ("A wider, slower consensus").

    **Score.**

    .. math::

        s_i = \gamma(\rho_i)\,\min\!\left(
              \operatorname{clip}\!\left(\frac{e_i + \lambda}{\beta + \lambda}, 0, 1\right),\;
              \chi_i\right), \qquad
        \chi_i = \begin{cases} 1 & e_i \ge \beta \\
              \operatorname{clip}\!\left(\dfrac{\bar c_i / C + \lambda_c}{\beta_c + \lambda_c},
              0, 1\right) & \text{otherwise} \end{cases}

    with ``reference_fraction`` :math:`\beta = 0.2`, ``harm_tolerance`` :math:`\lambda = 3`,
    ``consensus_reference`` :math:`\beta_c = 0.2` and ``consensus_tolerance`` :math:`\lambda_c =
    0.4`. With the composite's default weights and ``safe_score`` 0.75, PoGQ alone makes a client
    flagged only when :math:`s_i < 0.375` (lower TCDM or entropy scores raise that cut): running evidence below :math:`-1.8` typical improvements (a client
    that keeps doing far more harm than a typical client does good), or — for a client without
    good evidence of its own — a running cosine below :math:`-0.175\,C` (pointing away from the
    validated consensus). The factor :math:`\gamma(\rho_i)` of this round's norm ratio makes a
    boosted update score low at once, whatever its history.

    Why a client with good evidence is exempt from the consensus test: the set :math:`T` is chosen
    by first-order evidence, which sees only an update's component along the validation gradient.
    Attackers can align their updates with that gradient (joining :math:`T`, within the norm
    guard) and add a component opposed to the honest clients' common direction, steering
    :math:`r` away from them — with :math:`q = 1` only while they outweigh the improving honest
    updates in :math:`T`, with :math:`q = 0.25` already as a quarter of the round. The exemption keeps such an attack from failing any client
    whose own updates demonstrably help (a test builds exactly this attack); clients without good
    evidence of their own can still be pushed out, and the attackers' orthogonal component is, as
    for any first-order validation score, invisible to the evidence.

    Calibration (on seeds 10 and 11, not the trust benchmark's 0–2: real MNIST, MLP 784-64-10, 50
    clients, Dirichlet(0.5), 1 000 validation samples, 30 rounds, Mode 1's composite; one run
    each). False-positive rate attack-free (seeds 10 / 11), then detection / false-positive rate
    for sign flip 45 % (seed 10), label flip 45 % (10), sleeper 45 % (11), sign flip 20 % (11):

    ================================  =============  ===========  ===========  ===========  ===========
    setting                           attack-free    sign flip    label flip   sleeper      sign flip 20
    ================================  =============  ===========  ===========  ===========  ===========
    no consensus, λ 0.6 (before)      0.072 / 0.052  0.95 / 0.08  0.94 / 0.07  0.78 / 0.10  0.88 / 0.07
    λ 2, λ_c 0.28, no harm memory     0.020 / 0.031  0.91 / 0.03  0.99 / 0.03  0.72 / 0.02  0.94 / 0.03
    **defaults** (λ 3, λ_c 0.4, 0.7)  0.032 / 0.036  0.96 / 0.03  0.97 / 0.04  0.79 / 0.04  0.99 / 0.06
    λ 3, λ_c 0.4, harm memory 0.65    0.041 / 0.046  0.98 / 0.04  0.97 / 0.05  0.83 / 0.04  1.00 / 0.06
    ================================  =============  ===========  ===========  ===========  ===========

    (These rows predate the wider consensus: they used the best quarter and the evidence's
    memories.) The rows trade false positives for detection; the second is the choice for a
    deployment that must flag as few honest clients as possible. The remaining false positives are mostly clients
    that are outliers on both counts (one honest client of seed 10 had :math:`e` down to
    :math:`-1.8` and :math:`\bar c / C` near 0 or below for most of the run). As training
    converges all :math:`\Delta_i` shrink towards the validation batch's noise and the evidence
    accumulates more slowly; the reputation layer keeps what the early rounds established.

    **Condition.** The evidence is only as good as the validation batch: it must represent the
    task, and it must be large enough that the noise of :math:`\nabla L_V` does not swamp an
    honest client's contribution (see the measured numbers above; the trust benchmark uses 1 000
    samples).

    What it catches: direction attacks (sign flip, label flip, noise, IPM with a large
    :math:`\epsilon`), boosted updates (guard), and it keeps working beyond 50 % Byzantine for
    attacks that make the loss worse. What it cannot: attacks that lower the validation loss
    (a backdoor that keeps clean accuracy, ALIE within the honest spread), or data the validation
    set does not represent.

    Parameters
    ----------
    path:
        ``"auto"``, ``"exact"`` or ``"fast"``.
    step:
        :math:`\eta > 0`.
    exact_budget:
        Largest :math:`n \cdot d \cdot B` for which ``auto`` picks the exact path.
    norm_guard, norm_cap:
        :math:`1 \le \kappa \le \kappa_{\max}` (``inf`` disables either).
    reference_fraction:
        :math:`\beta > 0`.
    harm_tolerance:
        :math:`\lambda \ge 0`.
    memory:
        :math:`\alpha \in [0, 1)`.
    harm_memory:
        Memory for values below the running one, in ``[0, 1)`` (capped at ``memory``); ``None``:
        the same as ``memory``.
    evidence_clip:
        :math:`c > 0`.
    consensus_fraction:
        :math:`q \in [0, 1]`; 0 turns the consensus term off (score from the evidence alone).
    consensus_reference:
        :math:`\beta_c > 0`.
    consensus_tolerance:
        :math:`\lambda_c \ge 0`.
    consensus_memory:
        Memory of the running cosines and of the scale :math:`C`, in ``[0, 1)``.
    consensus_harm_memory:
        Memory for cosines below the running one, in ``[0, 1)`` (capped at ``consensus_memory``);
        ``None``: the same as ``consensus_memory``.
    consensus_credit:
        A client whose running cosine :math:`\bar c_i / C` has reached this many typical cosines
        since it was last forgotten is *credited* and judged with ``credited_tolerance`` in place
        of :math:`\lambda_c` (an honest client drifts slowly away from the consensus late in
        training; flippers point against it from their first round). ``None`` (the default
        here; the trust engine sets 0.5): nobody is credited.
    credited_tolerance:
        :math:`\lambda_c` for credited clients, at least ``consensus_tolerance``.
    consensus_blemish:
        A client whose :math:`\bar c_i / C` fell to ``-consensus_blemish`` before it was ever
        credited is *blemished* until it is forgotten, a later credit notwithstanding: its
        consensus score is 0 and its evidence no longer exempts it (a rare-label sign flipper
        starts near :math:`-C` and later sends flipped updates that help the validation loss;
        honest clients are credited in their first rounds). Meant with ``consensus_credit``:
        without it nobody is ever credited, and every client that falls that low is blemished.
        ``None`` (the default): nobody is blemished.
    chunk_elements:
        Budget (entries) of one chunk's parameters and activations on the exact path.
    sketch_dim:
        Width of the round's shared sketch the consensus cosines are read in (default 1024, the
        trust engine's; ``None``: the rows themselves, exact cosines, at the cost of a float64
        copy of the updates).
    seed:
        Seed of that sketch (the engine's shared one by default).

    Raises
    ------
    ConfigError
        ``ctx`` lacks ``validation``, ``model`` or ``global_params`` (the message names them).
    InvalidUpdateError
        Repeated client ids in one round.

    References
    ----------
    Cao, Fang, Liu, Gong. "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping."
    NDSS 2021. Xie, Koyejo, Gupta. "Zeno: Distributed Stochastic Gradient Descent with
    Suspicion-based Fault-tolerance." ICML 2019.
    """

    name = "pogq"

    path: Path = "auto"
    step: float = 0.1
    exact_budget: int = 50_000_000
    norm_guard: float = 3.0
    norm_cap: float = 6.0
    reference_fraction: float = 0.2
    harm_tolerance: float = 3.0
    memory: float = 0.8
    harm_memory: float | None = 0.7
    evidence_clip: float = 3.0
    consensus_fraction: float = 1.0
    consensus_reference: float = 0.2
    consensus_tolerance: float = 0.4
    consensus_memory: float = 0.9
    consensus_harm_memory: float | None = 0.8
    consensus_credit: float | None = None
    credited_tolerance: float = 0.8
    consensus_blemish: float | None = None
    chunk_elements: int = 1 << 24
    sketch_dim: int | None = 1024
    seed: int = 0
    _state: _Evidence = field(
        default_factory=lambda: _Evidence(), init=False, repr=False, compare=False
    )
    _primed: _Primed | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.path not in ("auto", "exact", "fast"):
            raise ConfigError(f"pogq: path must be 'auto', 'exact' or 'fast', got {self.path!r}")
        check_number("pogq", "step", self.step, low=0.0, low_open=True)
        check_number("pogq", "exact_budget", self.exact_budget, low=0, integer=True)
        check_number("pogq", "norm_guard", self.norm_guard, low=1.0, allow_inf=True)
        check_number("pogq", "norm_cap", self.norm_cap, low=self.norm_guard, allow_inf=True)
        check_number("pogq", "reference_fraction", self.reference_fraction, low=0.0, low_open=True)
        check_number("pogq", "harm_tolerance", self.harm_tolerance, low=0.0)
        check_number("pogq", "memory", self.memory, low=0.0, high=1.0, high_open=True)
        if self.harm_memory is not None:
            check_number("pogq", "harm_memory", self.harm_memory, low=0.0, high=1.0, high_open=True)
        check_number("pogq", "evidence_clip", self.evidence_clip, low=0.0, low_open=True)
        check_number("pogq", "consensus_fraction", self.consensus_fraction, low=0.0, high=1.0)
        check_number(
            "pogq", "consensus_reference", self.consensus_reference, low=0.0, low_open=True
        )
        check_number("pogq", "consensus_tolerance", self.consensus_tolerance, low=0.0)
        check_number(
            "pogq", "consensus_memory", self.consensus_memory, low=0.0, high=1.0, high_open=True
        )
        if self.consensus_harm_memory is not None:
            check_number(
                "pogq",
                "consensus_harm_memory",
                self.consensus_harm_memory,
                low=0.0,
                high=1.0,
                high_open=True,
            )
        check_number("pogq", "chunk_elements", self.chunk_elements, low=1, integer=True)
        if self.sketch_dim is not None:
            check_number("pogq", "sketch_dim", self.sketch_dim, low=1, integer=True)
        check_number("pogq", "seed", self.seed, low=0, integer=True)
        if self.consensus_credit is not None:
            check_number("pogq", "consensus_credit", self.consensus_credit, low=0.0, low_open=True)
        check_number(
            "pogq", "credited_tolerance", self.credited_tolerance, low=self.consensus_tolerance
        )
        if self.consensus_blemish is not None:
            check_number("pogq", "consensus_blemish", self.consensus_blemish, low=0.0)

    def resolve_path(self, n: int, d: int, batch: int) -> Literal["exact", "fast"]:
        """The path used for ``n`` updates of ``d`` parameters and a validation batch of ``batch``
        samples: the configured one, or for ``auto`` ``exact`` iff ``n·d·batch ≤ exact_budget``."""
        if self.path != "auto":
            return self.path
        return "exact" if n * d * batch <= self.exact_budget else "fast"

    def guard(self, ratio: torch.Tensor) -> torch.Tensor:
        r"""The norm-guard factor :math:`\gamma(\rho)` of each norm ratio (see the class)."""
        kappa, cap = self.norm_guard, self.norm_cap
        factor = torch.where(ratio > kappa, (kappa / ratio.clamp_min(1e-300)) ** 2, 1.0)
        return torch.where(ratio >= cap, 0.0, factor).to(torch.float64)

    def prepare(self, updates: torch.Tensor, ctx: RoundContext | None, k: int, seed: int) -> bool:
        r"""Read the fast path's products in the round's sketch pass, ahead of the call.

        When this round will take the fast path (a CPU float32/float64 input with θ and the
        validation batch on its device, a real sketch of width ``k``), the validation gradient
        :math:`g` is computed now and :func:`~matl.trust.sketch.round_sketch_gain` reads every
        :math:`u_i^\top g` in the same read of the updates as the round's sketch ``(k, seed)``
        and row norms; the next call on these very updates (and the same θ and validation batch)
        uses them and pays no pass of its own. The trust engine calls this before the input
        check (measured at :math:`n = 1000, d = 10^5`: one read of 400 MB less per round).
        Returns whether the products were read; ``False`` leaves everything to the call (which
        also reports any error).
        """
        object.__setattr__(self, "_primed", None)
        if ctx is None or not kernel_dtype(updates):
            return False
        try:
            theta, x, y, model = _require(ctx)
        except ConfigError:
            return False
        n, d = updates.shape
        if (
            any(t.is_inference() for t in (updates, theta, x, y))  # no version counter to check
            or any(t.device != updates.device for t in (theta, x, y))  # the call reports it
            or theta.numel() != d
            or self.resolve_path(n, d, int(y.shape[0])) != "fast"
            or sketch_width(d, k) != k
        ):
            return False
        try:
            g = self._gradient(model, *_promoted(theta, x, updates), y).to(updates.dtype)
        except Exception:  # the call computes it again and reports the error
            return False
        dots = round_sketch_gain(updates, k, g, seed=seed)
        marks = _marks(updates, ctx)
        primed = _Primed(weakref.ref(updates), _context(ctx), marks, dots)
        object.__setattr__(self, "_primed", primed)
        return True

    def discard_primed(self) -> None:
        """Forget what :meth:`prepare` read (the trust engine calls this when the round fails
        before the call, e.g. on an input the check refuses)."""
        object.__setattr__(self, "_primed", None)

    def _take_primed(self, updates: torch.Tensor, ctx: RoundContext | None) -> torch.Tensor | None:
        """The primed dots when they were read from these very updates and context (then
        forgotten: they serve one call), else ``None``."""
        primed = self._primed
        object.__setattr__(self, "_primed", None)
        if primed is None or ctx is None or primed.updates() is not updates:
            return None
        if ctx.validation is None:
            return None
        same = all(a is b for a, b in zip(primed.context, _context(ctx), strict=True))
        return primed.dots if same and primed.marks == _marks(updates, ctx) else None

    @staticmethod
    def _gradient(
        model: Any, theta_row: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The validation loss gradient :math:`g = \nabla L_{val}(\theta)` at the promoted
        ``theta_row`` and ``x`` (:func:`_promoted`), as a ``(d,)`` vector."""
        grad: torch.Tensor = model.loss_and_grad(theta_row, x.unsqueeze(0), y.unsqueeze(0))[1]
        return grad[0]

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None) -> SignalResult:
        """Score the ``(n, d)`` ``updates`` against ``ctx.validation`` at ``ctx.global_params``."""
        check_rows(updates, "pogq")
        theta, x, y, model = _require(ctx)
        n, d = updates.shape
        keys = unique_keys(n, ctx, "pogq")
        if theta.numel() != d:
            raise ConfigError(f"pogq: updates have d={d} but global_params has {theta.numel()}")
        elsewhere = {t.device for t in (theta, x, y)} - {updates.device}
        if elsewhere:
            raise ConfigError(
                f"pogq: the updates are on {updates.device} but the global parameters or the "
                f"validation batch on {', '.join(sorted(map(str, elsewhere)))}; put them on one "
                "device"
            )
        norms = pogq_norms(updates)
        med_norm = median(norms)
        ratio = (
            norms / med_norm
            if med_norm > 0
            else torch.where(norms == 0, 1.0, math.inf).to(torch.float64)
        )
        guard = self.guard(ratio)
        theta_row, xv = _promoted(theta, x, updates)
        if self.resolve_path(n, d, int(y.shape[0])) == "exact":
            delta = self._exact(model, updates, theta_row, xv, y)
        else:
            primed = self._take_primed(updates, ctx)
            delta = self._fast(model, updates, theta_row, xv, y, primed)

        guarded = torch.where(delta > 0, delta * guard, delta)
        evidence = self.normalise(guarded)
        cosine = self.consensus_cosines(updates, norms, evidence, ratio)
        running, running_cos, known, scale = self._remember(keys, evidence, cosine)
        credited, blemished = self._record(keys, running_cos, known, scale)
        quality = self.map_scores(running)
        consensus = self.map_consensus(running_cos, known, scale, running, credited)
        consensus = torch.where(blemished, 0.0, consensus)
        scores = torch.minimum(quality, consensus) * guard
        return SignalResult(
            scores=scores,
            raw={
                "delta": delta,
                "norm_ratio": ratio,
                "guard": guard,
                "guarded_delta": guarded,
                "evidence": evidence,
                "running_evidence": running,
                "consensus_cosine": (
                    cosine if cosine is not None else torch.full_like(running, math.nan)
                ),
                "running_consensus": running_cos,
                "has_consensus": known.to(torch.float64),
                "consensus_scale": torch.full_like(running, scale),
                "quality_score": quality,
                "consensus_score": consensus,
                "credited": credited.to(torch.float64),
                "blemished": blemished.to(torch.float64),
            },
        )

    def consensus_cosines(
        self,
        updates: torch.Tensor,
        norms: torch.Tensor,
        evidence: torch.Tensor,
        ratio: torch.Tensor,
    ) -> torch.Tensor | None:
        r"""Cosines :math:`c_i = \cos(z_i, S r)` of every update's sketch :math:`z_i = S u_i` (the
        round's shared :func:`~matl.trust.sketch.round_sketch` of width ``sketch_dim``, :math:`w =
        1024`; the update itself when :math:`d \le 4w` or ``sketch_dim`` is ``None``) to the
        sketch of the round's validated consensus :math:`r`: the mean unit direction of the
        :math:`K = \min(m, \max(3, \lceil q n\rceil))` updates with the best evidence this round
        among the :math:`m` with positive evidence, a nonzero norm and a norm ratio within the
        guard (:math:`\rho \le \kappa`). The sketch is linear, so :math:`S r = \frac1K \sum_{j
        \in T} z_j / \lVert u_j\rVert` is exact; only the cosine is estimated, with an error of
        about :math:`1/\sqrt{w}` (0.03). A zero update (``norms`` 0, as :func:`pogq_norms` reads a
        row of subnormal entries) and a row whose sketch is not finite (a float16 run sum can
        overflow) get cosine 0. ``None`` — no consensus this round — when ``consensus_fraction``
        :math:`q = 0` or fewer than three updates qualify. With ``sketch_dim`` and ``seed`` those
        of the trust engine's shared sketch (the defaults) the sketch is already there; others cost
        a pass of their own."""
        n = updates.shape[0]
        eligible = (evidence > 0) & (ratio <= self.norm_guard) & (norms > 0)
        available = int(eligible.sum())
        if self.consensus_fraction == 0 or available < 3:
            return None
        k = min(available, max(3, math.ceil(self.consensus_fraction * n)))
        top = torch.topk(torch.where(eligible, evidence, -math.inf), k).indices
        with torch.no_grad():
            z = round_sketch(updates, self.sketch_dim, seed=self.seed).to(torch.float64)
            weight = torch.zeros(n, dtype=torch.float64, device=z.device)
            weight[top] = 1.0 / (k * norms[top].to(z.device))
            ref = weight @ z
            if not bool(torch.isfinite(ref).all()):  # an overflowed sketch row, weighed 0 or not
                ref = weight @ torch.where(torch.isfinite(z), z, 0.0)
            ref_norm = float(torch.linalg.vector_norm(ref))
            if not math.isfinite(ref_norm) or not ref_norm > 0:
                return None
            z_norms = torch.linalg.vector_norm(z, dim=1)
            dots = z @ (ref / ref_norm)
        usable = (norms.to(z.device) > 0) & (z_norms > 0) & torch.isfinite(dots)
        cos = torch.where(usable, dots / z_norms.clamp_min(1e-300), 0.0).clamp(-1.0, 1.0)
        return cos.to(device=norms.device, dtype=torch.float64)

    def map_consensus(
        self,
        running_cos: torch.Tensor,
        known: torch.Tensor,
        scale: float,
        running_evidence: torch.Tensor,
        credited: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Consensus scores :math:`\operatorname{clip}((\bar c / C + \lambda_c)/(\beta_c +
        \lambda_c), 0, 1)` of running cosines :math:`\bar c` in units of the running typical
        cosine :math:`C` (see the class), with ``credited_tolerance`` in place of
        :math:`\lambda_c` for the ``credited`` clients. 1 for a client whose running evidence is at
        least :math:`\beta` (its own good evidence outranks the consensus) or who has no consensus
        cosine yet, and for everyone when the consensus is off or :math:`C \le 0`."""
        if self.consensus_fraction == 0 or not scale > 0:
            return torch.ones_like(running_cos)
        beta = self.consensus_reference
        lam = torch.full_like(running_cos, self.consensus_tolerance)
        if credited is not None:
            lam = torch.where(credited, self.credited_tolerance, lam)
        mapped = ((running_cos / scale + lam) / (beta + lam)).clamp(0.0, 1.0)
        exempt = ~known | (running_evidence >= self.reference_fraction)
        return torch.where(exempt, 1.0, mapped)

    def normalise(self, guarded: torch.Tensor) -> torch.Tensor:
        r"""The round's evidence :math:`x_i = \operatorname{clip}(\tilde\Delta_i / D, -c, c)` of
        the guarded improvements :math:`\tilde\Delta` (see the class); all 0 when every
        :math:`\tilde\Delta` is 0."""
        positive = guarded[guarded > 0]
        ref = median(positive) if positive.numel() else median(guarded.abs())
        if not ref > 0:  # every Δ is exactly 0 (or the reference underflowed)
            return torch.zeros_like(guarded, dtype=torch.float64)
        c = self.evidence_clip
        return (guarded.to(torch.float64) / ref).clamp(-c, c)

    def map_scores(self, evidence: torch.Tensor) -> torch.Tensor:
        r"""Scores :math:`\operatorname{clip}((e + \lambda)/(\beta + \lambda), 0, 1)` of running
        evidence :math:`e` (before the norm-guard factor; see the class)."""
        beta, lam = self.reference_fraction, self.harm_tolerance
        return ((evidence + lam) / (beta + lam)).clamp(0.0, 1.0)

    def _remember(
        self, keys: list[int], evidence: torch.Tensor, cosine: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Fold this round's evidence (and consensus cosines, when there was a consensus) into
        each client's running values, and the round's typical cosine into the running scale;
        return the bias-corrected :math:`(e_i, \bar c_i)`, which clients have a :math:`\bar c_i`,
        and :math:`C`."""
        st = self._state
        rows, _ = assign_rows(st.index, keys)
        size = len(st.index)
        st.mean, st.weight = grow(st.mean, size, 0.0), grow(st.weight, size, 0.0)
        st.cos, st.cos_weight = grow(st.cos, size, 0.0), grow(st.cos_weight, size, 0.0)
        a = self.memory
        down = a if self.harm_memory is None else min(self.harm_memory, a)
        fold_running_mean(st.mean, st.weight, rows, evidence, a, down)
        if cosine is not None:
            ac = self.consensus_memory
            hc = self.consensus_harm_memory
            fold_running_mean(
                st.cos, st.cos_weight, rows, cosine, ac, ac if hc is None else min(hc, ac)
            )
            typical = _typical(cosine)
            if typical > 0:
                st.scale = [ac * st.scale[0] + (1.0 - ac) * typical, ac * st.scale[1] + (1.0 - ac)]
        known = st.cos_weight[rows] > 0
        running_cos = running_value(st.cos, st.cos_weight, rows, 0.0)
        scale = st.scale[0] / st.scale[1] if st.scale[1] > 0 else 0.0
        return st.mean[rows] / st.weight[rows], running_cos, known, scale

    def _record(
        self, keys: list[int], running_cos: torch.Tensor, known: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Two ``(n,)`` bools: the clients *credited* this round — whose running consensus
        cosine has reached ``consensus_credit`` typical cosines (:math:`\bar c_i / C`) in some
        round since they were last forgotten (this round included) — and the clients
        *blemished* — whose :math:`\bar c_i / C` fell to ``-consensus_blemish`` before they were
        ever credited (a forget does not undo a credit here), in some round since they were last
        forgotten; a later credit does not lift it. Each client's best :math:`\bar c_i / C` since
        it was last forgotten, whether it was ever credited, and its lowest :math:`\bar c_i / C`
        before that are kept in the state."""
        st = self._state
        rows = torch.tensor([st.index[k] for k in keys], dtype=torch.long)
        size = len(st.index)
        st.credit, st.low = grow(st.credit, size, 0.0), grow(st.low, size, 0.0)
        st.vouched = grow(st.vouched, size, 0.0)
        now = torch.where(known, running_cos / scale, 0.0) if scale > 0 else None
        return mark_standing(
            st.credit,
            st.low,
            st.vouched,
            rows,
            now,
            self.consensus_credit,
            self.consensus_blemish,
        )

    def _exact(
        self,
        model: Any,
        updates: torch.Tensor,
        theta_row: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        n, d = updates.shape
        b = int(y.shape[0])
        base = float(validation_losses(model, theta_row, x, y)[0])
        # Entries per client: its parameters plus a generous bound on its activations (inputs and
        # logits, or a thirty-second of the forward FLOPs for wider networks).
        acts = x[0].numel() + int(model.num_classes)
        if hasattr(model, "flops_per_sample"):
            acts = max(acts, int(model.flops_per_sample()) // 32)
        width = d + b * acts
        chunk = max(1, min(n, self.chunk_elements // max(width, 1)))
        delta = torch.empty(n, dtype=torch.float64)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            params = torch.add(
                theta_row, updates[start:stop].detach().to(theta_row.dtype), alpha=self.step
            )
            delta[start:stop] = base - validation_losses(model, params, x, y).to(torch.float64)
        return delta

    def _fast(
        self,
        model: Any,
        updates: torch.Tensor,
        theta_row: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        primed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""First-order :math:`\Delta_i = -\eta\, g^\top u_i`: one validation gradient and one
        pass over the updates (:func:`~matl.aggregation.kernels.float64_dots`, each product summed
        in float64, for CPU float32/float64 input; PyTorch's product in the updates' dtype
        otherwise). ``primed``: the products read ahead in the round's sketch pass by
        :meth:`prepare` (the same bits)."""
        if primed is not None:
            return -self.step * primed
        work = updates.detach()
        g = self._gradient(model, theta_row, x, y).to(work.dtype)
        if kernel_dtype(work):
            return -self.step * float64_dots(work, g)
        return -self.step * row_dots(work, g).to(torch.float64)

    def forget(self, client_ids: Sequence[int]) -> None:
        """Drop the running evidence and consensus cosine of ``client_ids`` (unknown ids are
        ignored): their next participation is judged as a first one. The trust engine calls this
        when a client's temporal consistency shows a switch of behaviour, so that a history
        earned before the switch does not vouch for the client after it. The consensus credit and
        a blemish go too (a client that changes its behaviour starts a new record); whether it
        was ever credited stays, so a client credited once is not blemished later."""
        st = self._state
        rows = [st.index[c] for c in client_ids if c in st.index]
        if rows:
            idx = torch.tensor(rows, dtype=torch.long)
            for t in (st.mean, st.weight, st.cos, st.cos_weight):
                t[idx] = 0.0
            st.credit = grow(st.credit, len(st.index), 0.0)
            st.low = grow(st.low, len(st.index), 0.0)
            st.credit[idx] = 0.0
            st.low[idx] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """``{"client_ids", "mean", "weight", "cos", "cos_weight", "credit", "low", "vouched",
        "scale"}``: the ids in row order; their biased moving averages of evidence :math:`m_i` and its bias corrections
        (:math:`1 - \\prod_s a_s`); the same for the consensus cosines (over the rounds that had a
        consensus); each client's best running cosine in units of :math:`C` since it was last
        forgotten (``credit``), its lowest before it was ever credited (``low``, at most 0) and
        whether it was ever credited (``vouched``, 0 or 1); and
        ``[biased typical cosine, its correction]`` (copies)."""
        st = self._state
        return {
            "client_ids": list(st.index),
            "mean": st.mean.clone(),
            "weight": st.weight.clone(),
            "cos": st.cos.clone(),
            "cos_weight": st.cos_weight.clone(),
            "credit": grow(st.credit, len(st.index), 0.0).clone(),
            "low": grow(st.low, len(st.index), 0.0).clone(),
            "vouched": grow(st.vouched, len(st.index), 0.0).clone(),
            "scale": list(st.scale),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. The empty state (saved by the earlier, memoryless
        signal) restores no evidence, as :meth:`reset`; a state without the consensus keys (saved
        before the consensus term) restores the evidence and no consensus history."""
        if not state:
            self.reset()
            return
        if set(state) == {"client_ids", "mean", "weight"}:
            n_old = len(state_client_ids("pogq", state["client_ids"]))
            state = {**state, "cos": [0.0] * n_old, "cos_weight": [0.0] * n_old}
            state["scale"] = [0.0, 0.0]
        for key in _ADDED_ROWS:
            if key not in state and "client_ids" in state:
                # saved before the consensus credit or the blemish: nobody credited or blemished
                state = {**state, key: [0.0] * len(state["client_ids"])}
        check_state_keys("pogq", state, {"client_ids", "scale", *_STATE_ROWS})
        ids = state_client_ids("pogq", state["client_ids"])
        rows = {k: torch.as_tensor(state[k], dtype=torch.float64).clone() for k in _STATE_ROWS}
        if any(v.shape != (len(ids),) for v in rows.values()):
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in rows.items())
            raise ValueError(f"pogq: state has {len(ids)} client ids but shapes {shapes}")
        if not all(bool(torch.isfinite(v).all()) for v in rows.values()):
            raise ValueError("pogq: state evidence must be finite")
        if not bool((rows["low"] <= 0).all()):
            raise ValueError("pogq: state low must be <= 0")
        if not bool(((rows["vouched"] == 0) | (rows["vouched"] == 1)).all()):
            raise ValueError("pogq: state vouched must be 0 or 1")
        if not bool(((rows["weight"] > 0) & (rows["weight"] <= 1)).all()):
            raise ValueError("pogq: state weights must be in (0, 1]")
        bound = self.evidence_clip * rows["weight"] * (1 + 1e-12)
        if not bool((rows["mean"].abs() <= bound).all()):
            raise ValueError("pogq: state evidence must satisfy |mean| <= evidence_clip * weight")
        cw = rows["cos_weight"]
        if not bool(((cw >= 0) & (cw <= 1) & (rows["cos"].abs() <= cw + 1e-12)).all()):
            raise ValueError("pogq: state cos_weight must be in [0, 1] with |cos| <= cos_weight")
        scale = _state_scale(state["scale"])
        st = self._state
        st.index = {c: i for i, c in enumerate(ids)}
        st.mean, st.weight = rows["mean"], rows["weight"]
        st.cos, st.cos_weight, st.scale = rows["cos"], cw, scale
        st.credit, st.low, st.vouched = rows["credit"], rows["low"], rows["vouched"]

    def reset(self) -> None:
        """Forget every client's evidence and consensus history, and the consensus scale."""
        st = self._state
        st.index = {}
        st.mean = torch.zeros(0, dtype=torch.float64)
        st.weight = torch.zeros(0, dtype=torch.float64)
        st.cos = torch.zeros(0, dtype=torch.float64)
        st.cos_weight = torch.zeros(0, dtype=torch.float64)
        st.credit = torch.zeros(0, dtype=torch.float64)
        st.low = torch.zeros(0, dtype=torch.float64)
        st.vouched = torch.zeros(0, dtype=torch.float64)
        st.scale = [0.0, 0.0]
        object.__setattr__(self, "_primed", None)


def _state_scale(value: Any) -> list[float]:
    """A saved ``[biased typical cosine, its correction]``, checked: ``0 ≤ s ≤ w ≤ 1``."""
    try:
        scale = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"pogq: state scale must be two numbers, got {value!r}") from None
    if len(scale) != 2 or not 0.0 <= scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"pogq: state scale must be [s, w] with 0 <= s <= w <= 1, got {value!r}")
    return scale


@dataclass
class _Evidence:
    """Per-client rows of :class:`PoGQSignal`'s state, and the running consensus scale."""

    index: dict[int, int] = field(default_factory=dict)
    mean: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    weight: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    cos: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    cos_weight: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    #: Each client's best running cosine in units of :math:`C` since it was last forgotten.
    credit: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    #: Each client's lowest running cosine in units of :math:`C` (at most 0) before it was ever
    #: credited, since it was last forgotten.
    low: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    #: 1 for a client that was ever credited (a forget keeps it), else 0.
    vouched: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    #: ``[biased moving average of the typical cosine, its bias correction]``.
    scale: list[float] = field(default_factory=lambda: [0.0, 0.0])


def _typical(cosine: torch.Tensor) -> float:
    """The round's typical consensus cosine: the median of the positive cosines (0 if none)."""
    positive = cosine[cosine > 0]
    return median(positive) if positive.numel() else 0.0


def _require(
    ctx: RoundContext | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """``(θ, x, y, model)`` from the context, or a :class:`ConfigError` naming what is missing."""
    missing = (
        ["validation", "model", "global_params"]
        if ctx is None
        else [f for f in ("validation", "model", "global_params") if getattr(ctx, f) is None]
    )
    if missing:
        raise ConfigError(
            "pogq needs a RoundContext with trusted validation data, the model and the global "
            f"parameters; missing: {', '.join('ctx.' + f for f in missing)}"
        )
    assert ctx is not None and ctx.validation is not None and ctx.global_params is not None
    x, y = ctx.validation
    if y.ndim != 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ConfigError(
            f"pogq: ctx.validation must be a non-empty batch (x, y) with matching lengths, got "
            f"x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    return ctx.global_params, x, y, ctx.model
