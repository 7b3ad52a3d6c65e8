"""``matl node``: a federated client process that trains on its shard and submits every round.

Each node loads the task the validator announces (dataset and model, from ``info()``), takes its
shard of the training split (the same seeded partitioners as the simulator: shard ``k`` of ``K``),
and then, round after round:

1. fetches the global model :math:`\\theta_t`;
2. trains locally (:func:`matl.models.local_train`) and forms the update
   :math:`u = \\theta_{\\text{local}} - \\theta_t`; a node started with ``flip_scale`` is Byzantine
   and sends :math:`-s\\,u` instead (a sign-flipping attacker, for demonstrations);
3. signs and submits :math:`u`, then waits for the validator's signed verdict (the round closes
   once enough nodes have submitted) and checks its signature.

Several ``matl node`` processes against one ``matl serve`` are a real multi-process federation on
one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from matl.client import MATLClient
from matl.data import load_dataset, partition
from matl.errors import ConfigError
from matl.models import ClientData, LocalTrainingConfig, build_model, local_train
from matl.protocol import Verdict
from matl.sim.seeding import stream_seed

__all__ = ["NodeConfig", "NodeRound", "run_node"]


@dataclass(frozen=True)
class NodeConfig:
    """How a node picks its data and trains (see :mod:`matl.node`)."""

    shard: int
    shards: int
    rounds: int = 5
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    local_steps: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    flip_scale: float | None = None
    data_dir: str | None = None
    verdict_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.shard < self.shards:
            raise ConfigError(f"shard must be in [0, {self.shards}), got {self.shard}")


@dataclass(frozen=True)
class NodeRound:
    """What one round did: the round, the verdict and the update's norm."""

    round: int
    verdict: Verdict
    update_norm: float


def run_node(
    client: MATLClient, cfg: NodeConfig, on_round: Callable[[NodeRound], None] | None = None
) -> list[NodeRound]:
    """Train and submit for ``cfg.rounds`` rounds; returns each round's verdict."""
    info = client.info()
    task: dict[str, Any] | None = info.get("task")
    if task is None:
        raise ConfigError("this validator runs model-free (no dataset): nothing to train")
    data = load_dataset(task["dataset"], data_dir=cfg.data_dir, **task["dataset_options"])
    model = build_model(
        task["model"],
        data.input_shape,
        data.num_classes,
        **({"hidden": task["hidden"]} if task["model"] == "mlp" else {}),
    )
    parts = partition(data.y_train, cfg.shards, cfg.partition, seed=cfg.seed, alpha=cfg.alpha)
    shard = ClientData.build(model, data.x_train, data.y_train, [parts[cfg.shard]])
    train_cfg = LocalTrainingConfig(
        local_steps=cfg.local_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
    )
    g = torch.Generator().manual_seed(stream_seed(cfg.seed + 7919 * (cfg.shard + 1), "training"))
    client.register()
    out = []
    for _ in range(cfg.rounds):
        rnd, theta_np = client.global_model()
        theta = torch.from_numpy(theta_np)
        if theta.numel() != model.num_params:
            raise ConfigError(
                f"the validator's model has {theta.numel()} parameters, this node's "
                f"{model.num_params}"
            )
        update = local_train(model, theta, shard, torch.tensor([0]), train_cfg, g)[0]
        if cfg.flip_scale is not None:
            update = -cfg.flip_scale * update
        receipt = client.submit_gradient(update, {"shard": cfg.shard}, round=rnd)
        verdict = client.wait_for_verdict(receipt.gradient_hash, timeout=cfg.verdict_timeout)
        record = NodeRound(rnd, verdict, float(update.norm()))
        out.append(record)
        if on_round is not None:
            on_round(record)
    return out
