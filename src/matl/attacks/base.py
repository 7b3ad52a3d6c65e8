"""The attack contract.

*Model-poisoning* attacks act on update vectors: ``attack(honest, n_byzantine, ctx, rng) -> (f, d)``
returns the ``f = n_byzantine`` malicious updates of a round. ``honest`` is the ``(h, d)`` tensor of
the round's honest updates (an *omniscient* attacker reads it; a non-omniscient one must not) and
``ctx.own`` holds the Byzantine clients' own honestly-trained updates (what a non-omniscient
attacker knows: its own data). All randomness comes from ``rng``.

*Data-poisoning* attacks act on a client's data before local training:
``attack.poison(x, y, rng) -> (x', y')`` (see :class:`DataAttack`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from matl.errors import ConfigError

Knowledge = Literal["own", "omniscient"]


@dataclass(frozen=True)
class AttackContext:
    """What an attacker may use besides the honest updates.

    Attributes
    ----------
    round:
        The round number.
    own:
        ``(f, d)`` updates the Byzantine clients computed honestly on their own data, or ``None``.
    global_params:
        The global model's flat parameters θ.
    byzantine_ids:
        Ids of the Byzantine clients sampled this round, in the row order of the output.
    extra:
        Free-form extras documented by the attack that reads them.
    """

    round: int = 0
    own: torch.Tensor | None = None
    global_params: torch.Tensor | None = None
    byzantine_ids: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Attack(ABC):  # noqa: B024 - abstract by convention; subclasses add the call
    """Base class of all attacks: a frozen keyword-only dataclass whose fields are its parameters."""

    name: ClassVar[str] = ""
    kind: ClassVar[Literal["model", "data"]] = "model"
    #: What the attacker knows: ``"own"`` (its own data only) or ``"omniscient"`` (honest updates).
    knowledge: ClassVar[Knowledge] = "own"
    reference: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        """The attack's configuration as a plain dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class ModelAttack(Attack):
    """An attack that crafts the Byzantine clients' update vectors."""

    kind: ClassVar[Literal["model", "data"]] = "model"

    def __call__(
        self,
        honest: torch.Tensor,
        n_byzantine: int,
        ctx: AttackContext | None = None,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        if honest.ndim != 2:
            raise ValueError(f"honest updates must be (h, d), got shape {tuple(honest.shape)}")
        if n_byzantine < 0:
            raise ValueError(f"n_byzantine must be >= 0, got {n_byzantine}")
        if n_byzantine == 0:
            return honest.new_empty((0, honest.shape[1]))
        ctx = ctx if ctx is not None else AttackContext()
        rng = rng if rng is not None else torch.Generator().manual_seed(0)
        out = self.craft(honest, n_byzantine, ctx, rng)
        if out.shape != (n_byzantine, honest.shape[1]):
            raise RuntimeError(
                f"attack {self.name!r} produced shape {tuple(out.shape)}, "
                f"expected {(n_byzantine, honest.shape[1])}"
            )
        return out

    def active(self, round: int) -> bool:
        """Whether the Byzantine clients attack in round ``round`` (always, unless the attack has
        an honest phase, like :class:`~matl.attacks.sleeper.Sleeper`). :func:`matl.metrics.detection
        .run_metrics` reports detection over every round (``detection_rate``) and over the active
        rounds only (``active_detection_rate``)."""
        return True

    @abstractmethod
    def craft(
        self, honest: torch.Tensor, n_byzantine: int, ctx: AttackContext, rng: torch.Generator
    ) -> torch.Tensor:
        """The ``(n_byzantine, d)`` malicious updates."""

    def own_or_fail(self, ctx: AttackContext, n_byzantine: int) -> torch.Tensor:
        """``ctx.own`` checked to be ``(n_byzantine, d)``; a clear error when absent."""
        if ctx.own is None:
            raise ConfigError(
                f"attack {self.name!r} needs the Byzantine clients' own updates (ctx.own)"
            )
        if ctx.own.shape[0] != n_byzantine:
            raise ValueError(f"ctx.own has {ctx.own.shape[0]} rows, expected {n_byzantine}")
        return ctx.own


@dataclass(frozen=True, kw_only=True)
class DataAttack(Attack):
    """An attack that rewrites a Byzantine client's training data; the client then trains honestly.

    ``poison(x, y, rng) -> (x', y')`` takes the client's samples as the dataset gives them (inputs
    ``(n, *input)``, already standardised by the loader; ``int64`` labels ``(n,)``) and returns new
    tensors of the same shapes and dtypes — samples are rewritten, never added or dropped — without
    mutating its inputs. All randomness comes from ``rng``.

    Test-time hooks, for the *attack success rate* (ASR): :meth:`apply_trigger` gives the test inputs
    as the attacker would present them, or ``None`` when the attack has no targeted test-time
    behaviour (then no ASR is measured); :meth:`target_label` gives the labels the attacker wants
    them classified as. ASR is the fraction of test samples with ``target_label(y) != y`` that the
    model classifies as ``target_label(y)`` on ``apply_trigger(x)``.

    Defaults that depend on the whole dataset (number of classes, input scale) are filled in by
    :meth:`for_dataset`, which the simulator calls once with the full training set before poisoning.
    """

    kind: ClassVar[Literal["model", "data"]] = "data"

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, rng: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The poisoned copy ``(x', y')`` of one client's samples ``(x, y)``."""
        if y.ndim != 1 or x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"expected x (n, *input) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        rng = rng if rng is not None else torch.Generator().manual_seed(0)
        x_out, y_out = self.corrupt(x, y, rng)
        if x_out.shape != x.shape or y_out.shape != y.shape:
            raise RuntimeError(
                f"attack {self.name!r} changed the data's shape: "
                f"{tuple(x.shape)}, {tuple(y.shape)} -> {tuple(x_out.shape)}, {tuple(y_out.shape)}"
            )
        return x_out.to(x.dtype), y_out.to(y.dtype)

    @abstractmethod
    def corrupt(
        self, x: torch.Tensor, y: torch.Tensor, rng: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New tensors ``(x', y')`` of the shapes of ``(x, y)``; must not write into ``x`` or ``y``."""

    def for_dataset(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> DataAttack:
        """A copy with dataset-dependent defaults filled in and checked (default: ``self``)."""
        return self

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor | None:
        """Test inputs as the attacker presents them, or ``None``: no ASR (the default)."""
        return None

    def target_label(self, y: torch.Tensor) -> torch.Tensor:
        """The labels the attacker wants test samples of true label ``y`` to get (default: ``y``)."""
        return y
