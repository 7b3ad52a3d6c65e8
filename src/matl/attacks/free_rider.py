"""Free riders: clients that take the global model and send an update that cost them nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from matl.attacks._common import check_choice, check_int, check_real, reference_updates
from matl.attacks.base import AttackContext, Knowledge, ModelAttack
from matl.attacks.registry import register_attack
from matl.rng import keyed_generator


@register_attack
@dataclass(frozen=True, kw_only=True)
class FreeRider(ModelAttack):
    r"""Free riders: Byzantine clients that do not train, yet send an update every round to keep
    receiving the model (Lin et al. 2019, "Free-riders in Federated Learning: Attacks and
    Defenses"; Fraboni et al., AISTATS 2021, "Free-rider Attacks on Model Aggregation in Federated
    Learning").

    ``mode="fixed"`` (default), a disguised free rider: client :math:`b` sends the same direction
    every round, a unit vector :math:`e_b` drawn once from ``(seed, b)`` (``ctx.byzantine_ids``
    name the clients; without them the rows are clients ``0 … f−1``), at the median norm of the
    round's honest updates times ``scale``,

    .. math::

        \tilde u_b = \text{scale} \cdot \operatorname{med}_j \lVert u_j\rVert \cdot e_b ,

    so its norm is ordinary and its direction, in :math:`d` dimensions, nearly orthogonal to every
    honest update (cosine :math:`\approx d^{-1/2}`), as a late honest update under non-IID data
    often is. It is a replay of one fake update, rescaled: what a free rider sends when it has
    nothing new to say. Reading the honest norms makes it omniscient; a free rider that knows only
    its own past updates would use their norm instead.

    ``mode="zeros"``, the plain free rider: the global model sent back unchanged, :math:`\tilde
    u_b = 0`.

    Neither hurts a plain mean much (they dilute the honest updates; a random direction at the
    honest norm adds noise); the harm is the free ride itself, and a defense should not pay a
    client for it. MATL's entropy signal (:mod:`matl.trust.entropy`) gives a client whose
    direction repeats the ``REPEAT`` symbol, so a free rider of either mode ends at entropy 0.

    Parameters
    ----------
    mode:
        ``"fixed"`` or ``"zeros"``.
    scale:
        Norm of a ``fixed`` update in honest median norms, ``> 0`` (default 1).
    seed:
        Seed of the directions, ``>= 0``.
    """

    name: ClassVar[str] = "free_rider"
    knowledge: ClassVar[Knowledge] = "omniscient"
    reference: ClassVar[str] = "Lin et al. 2019; Fraboni et al., AISTATS 2021 (free riders)"

    mode: Literal["fixed", "zeros"] = "fixed"
    scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("free_rider", "mode", self.mode, ("fixed", "zeros"))
        check_real("free_rider", "scale", self.scale, minimum=0.0)
        check_int("free_rider", "seed", self.seed, 0)

    def direction(self, client: int, d: int) -> torch.Tensor:
        """The unit ``(d,)`` float64 direction client ``client`` sends every round."""
        e = torch.randn(d, generator=keyed_generator(self.seed, client), dtype=torch.float64)
        unit: torch.Tensor = e / e.norm()
        return unit

    def craft(
        self, honest: torch.Tensor, n_byzantine: int, ctx: AttackContext, rng: torch.Generator
    ) -> torch.Tensor:
        d = honest.shape[1]
        if self.mode == "zeros":
            return honest.new_zeros((n_byzantine, d))
        ref = reference_updates("free_rider", honest, ctx, n_byzantine)
        norm = float(torch.linalg.vector_norm(ref.double(), dim=1).median())
        ids = ctx.byzantine_ids or tuple(range(n_byzantine))
        if len(ids) != n_byzantine:
            raise ValueError(
                f"free_rider: ctx.byzantine_ids names {len(ids)} clients, expected {n_byzantine}"
            )
        rows = torch.stack([self.direction(int(b), d) for b in ids])
        return (self.scale * norm * rows).to(dtype=honest.dtype, device=honest.device)
