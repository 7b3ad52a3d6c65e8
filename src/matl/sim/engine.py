"""The federated simulation engine.

Before the first round, a *data* attack (:class:`matl.attacks.DataAttack`) poisons each Byzantine
client's own partition once (seeded); those clients then train honestly on the poisoned data. The
server's root data stays clean.

One round:

1. sample ``m`` clients (seeded);
2. train all of them together from the global model θ (:func:`matl.models.local_train`) and take
   their deltas ``u_c = θ_c − θ``;
3. under a *model* attack, the sampled Byzantine clients replace their deltas with its output;
4. reject non-finite updates (they are flagged and never reach the rule), aggregate the rest with
   the defense, and apply ``θ ← θ + η_s · aggregate``;
5. evaluate on the test set every ``eval_every`` rounds and after the last one (accuracy, loss and,
   for a data attack with a test-time trigger, the attack success rate: :func:`attack_success_rate`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, cast

import torch

from matl.aggregation import AggregationResult, AggregationRule, RoundContext
from matl.aggregation.base import finite_row_mask
from matl.attacks import AttackContext, DataAttack, ModelAttack
from matl.data import Dataset, load_dataset, partition
from matl.errors import ConfigError
from matl.models import BatchedModel, ClientData, LocalTrainingConfig, build_model, local_train
from matl.sim.config import SimulationConfig
from matl.sim.history import History, RoundRecord
from matl.sim.seeding import generator
from matl.trust.verdicts import VerdictTable

RoundCallback = Callable[[RoundRecord], None]


def _subset(
    x: torch.Tensor, y: torch.Tensor, k: int | None, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    if k is None or k >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=g)[:k].sort().values
    return x[keep], y[keep]


def trigger_set(
    attack: DataAttack, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The samples an attack success rate is measured on, or ``None`` if ``attack`` has no trigger.

    Returns ``(attack.apply_trigger(x), attack.target_label(y))`` restricted to the samples whose
    target label differs from their true label ``y``.
    """
    triggered = attack.apply_trigger(x)
    if triggered is None:
        return None
    wanted = attack.target_label(y)
    keep = wanted != y
    return triggered[keep], wanted[keep]


@torch.no_grad()
def _success_rate(
    model: BatchedModel, params: torch.Tensor, x: torch.Tensor, wanted: torch.Tensor
) -> float | None:
    if len(wanted) == 0:
        return None
    return float((model.predict(params, x).argmax(dim=1) == wanted).double().mean())


def attack_success_rate(
    model: BatchedModel,
    params: torch.Tensor,
    attack: DataAttack,
    x: torch.Tensor,
    y: torch.Tensor,
) -> float | None:
    """Attack success rate of ``attack`` against the model ``params`` on the samples ``(x, y)``.

    The fraction of samples with ``attack.target_label(y) != y`` that the model classifies as their
    target label once stamped with ``attack.apply_trigger``; ``None`` when the attack has no trigger
    or no sample qualifies. For a backdoor: test samples of true label ≠ target, predicted target.
    Use the simulation's resolved ``Simulation.data_attack`` (trigger value filled in) to measure
    the same trigger on another model, e.g. an attack-free baseline.
    """
    subset = trigger_set(attack, x, y)
    return None if subset is None else _success_rate(model, params, *subset)


def _after_rejections(rule: AggregationRule, rejected: int) -> AggregationRule:
    """The rule to run once ``rejected`` non-finite updates were dropped.

    Those clients are certainly Byzantine, so at most ``f − rejected`` Byzantine updates remain; a
    rule with an ``f`` runs with that smaller ``f`` (otherwise dropping rows could break its
    precondition, e.g. Krum's ``n ≥ 2f + 3``). Rules without ``f`` are returned unchanged.
    """
    f = getattr(rule, "f", None)
    if rejected == 0 or not isinstance(f, int) or not dataclasses.is_dataclass(rule):
        return rule
    replaced: AggregationRule = dataclasses.replace(cast(Any, rule), f=max(0, f - rejected))
    return replaced


class Simulation:
    """A seeded, batched federated-learning simulation.

    Parameters
    ----------
    config:
        The validated configuration (a :class:`SimulationConfig` or a plain dict of its keys).
    dataset:
        An already loaded dataset to use instead of loading ``config.dataset`` (useful to share one
        in memory between runs).

    Examples
    --------
    >>> history = Simulation(SimulationConfig(dataset="synthetic", rounds=3)).run()  # doctest: +SKIP
    """

    def __init__(
        self, config: SimulationConfig | dict[str, Any], dataset: Dataset | None = None
    ) -> None:
        self.config = (
            config if isinstance(config, SimulationConfig) else SimulationConfig.from_dict(config)
        )
        cfg = self.config
        self.defense = cfg.build_defense()
        self.defense.check_precondition(cfg.sampled_per_round)
        attack = cfg.build_attack()
        if attack is not None and not isinstance(attack, (ModelAttack, DataAttack)):
            raise ConfigError(f"attack {cfg.attack!r} is neither a model nor a data attack")
        #: The model-poisoning attack, if any (it rewrites the Byzantine clients' updates).
        self.attack: ModelAttack | None = attack if isinstance(attack, ModelAttack) else None

        data = (
            dataset
            if dataset is not None
            else load_dataset(cfg.dataset, data_dir=cfg.data_dir, **cfg.dataset_options)
        )
        g_subset = generator(cfg.seed, "subset")
        self.x_train, self.y_train = _subset(
            data.x_train, data.y_train, cfg.max_train_samples, g_subset
        )
        self.x_test, self.y_test = _subset(data.x_test, data.y_test, cfg.max_test_samples, g_subset)
        #: The data-poisoning attack, if any, with its dataset-dependent defaults filled in.
        self.data_attack: DataAttack | None = (
            attack.for_dataset(self.x_train, self.y_train, data.num_classes)
            if isinstance(attack, DataAttack)
            else None
        )
        self.model: BatchedModel = build_model(
            cfg.model,
            data.input_shape,
            data.num_classes,
            **({"hidden": cfg.hidden} if cfg.model == "mlp" else {}),
        )
        self.parts = partition(
            self.y_train,
            cfg.clients,
            cfg.partition,
            seed=cfg.seed,
            alpha=cfg.alpha,
            shards_per_client=cfg.shards_per_client,
        )
        root = torch.randperm(len(self.y_train), generator=generator(cfg.seed, "root"))
        root = root[: cfg.root_samples].sort().values
        self.root_data = (self.x_train[root], self.y_train[root])
        byz = torch.randperm(cfg.clients, generator=generator(cfg.seed, "byzantine"))
        self.is_byzantine = torch.zeros(cfg.clients, dtype=torch.bool)
        self.is_byzantine[byz[: cfg.num_byzantine]] = True
        x_clients, y_clients = self._poisoned_training_set(data.num_classes)
        self.client_data = ClientData.build(self.model, x_clients, y_clients, self.parts)
        self.counts = self.client_data.counts
        self._trigger_set = (
            trigger_set(self.data_attack, self.x_test, self.y_test)
            if self.data_attack is not None
            else None
        )
        self.train_config = LocalTrainingConfig(
            local_steps=cfg.local_steps,
            local_epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            momentum=cfg.momentum,
            chunk=cfg.train_chunk,
        )

    def _poisoned_training_set(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set with each Byzantine client's partition poisoned by the data attack."""
        if self.data_attack is None or not bool(self.is_byzantine.any()):
            return self.x_train, self.y_train
        x, y = self.x_train.clone(), self.y_train.clone()
        g = generator(self.config.seed, "poison")
        for client in torch.nonzero(self.is_byzantine).flatten().tolist():
            idx = self.parts[client]
            x_p, y_p = self.data_attack.poison(self.x_train[idx], self.y_train[idx], g)
            if y_p.numel() and (int(y_p.min()) < 0 or int(y_p.max()) >= num_classes):
                raise RuntimeError(
                    f"attack {self.config.attack!r} produced labels outside [0, {num_classes})"
                )
            x[idx], y[idx] = x_p, y_p
        return x, y

    def run(self, callback: RoundCallback | None = None) -> History:
        """Run all rounds; ``callback`` is called with each finished :class:`RoundRecord`."""
        cfg = self.config
        self.defense.reset()
        theta = self.model.init(generator(cfg.seed, "init"))
        g_sample = generator(cfg.seed, "sampling")
        g_train = generator(cfg.seed, "training")
        g_attack = generator(cfg.seed, "attack")
        history = History(
            config=cfg.model_dump(),
            byzantine_clients=torch.nonzero(self.is_byzantine).flatten().tolist(),
            client_sizes=self.counts.tolist(),
        )
        start = time.perf_counter()
        for rnd in range(cfg.rounds):
            theta, record = self._round(rnd, theta, g_sample, g_train, g_attack)
            history.rounds.append(record)
            if callback is not None:
                callback(record)
        history.seconds = time.perf_counter() - start
        self.final_params = theta
        return history

    def _round(
        self,
        rnd: int,
        theta: torch.Tensor,
        g_sample: torch.Generator,
        g_train: torch.Generator,
        g_attack: torch.Generator,
    ) -> tuple[torch.Tensor, RoundRecord]:
        cfg = self.config
        timing: dict[str, float] = {}
        sampled = (
            torch.randperm(cfg.clients, generator=g_sample)[: cfg.sampled_per_round].sort().values
        )
        byz_rows = self.is_byzantine[sampled]

        t0 = time.perf_counter()
        updates = local_train(
            self.model, theta, self.client_data, sampled, self.train_config, g_train
        )
        t1 = time.perf_counter()
        timing["train"] = t1 - t0

        n_byz = int(byz_rows.sum())
        if self.attack is not None and n_byz > 0:
            srv = {"validation": self.root_data, "model": self.model, "training": self.train_config}
            actx = AttackContext(
                round=rnd,
                own=updates[byz_rows],
                global_params=theta,
                byzantine_ids=tuple(sampled[byz_rows].tolist()),
                extra={"defense": self.defense, **srv},  # for defense-aware attacks
            )
            updates[byz_rows] = self.attack(updates[~byz_rows], n_byz, actx, g_attack).to(
                updates.dtype
            )
        t2 = time.perf_counter()
        timing["attack"] = t2 - t1

        finite = finite_row_mask(updates)
        weights = torch.zeros(len(sampled), dtype=updates.dtype)
        flagged = ~finite
        scores: list[float] | None = None
        verdicts: list[dict[str, Any]] | None = None
        if bool(finite.any()):
            kept = sampled[finite]
            ctx = RoundContext(
                client_ids=tuple(kept.tolist()),
                round=rnd,
                global_params=theta,
                sample_counts=self.counts[kept].to(updates.dtype),
                validation=self.root_data,
                model=self.model,
                training=self.train_config,
            )
            rule = _after_rejections(self.defense, int((~finite).sum()))
            kept_updates = updates if bool(finite.all()) else updates[finite]  # no copy if clean
            result: AggregationResult = rule(kept_updates, ctx)
            theta = theta + cfg.server_lr * result.aggregate
            weights[finite] = result.weights.to(weights.dtype)
            flagged = flagged.clone()
            flagged[finite] = result.flagged
            if result.scores is not None:
                full = torch.full((len(sampled),), float("nan"), dtype=torch.float64)
                full[finite] = result.scores.double()
                scores = full.tolist()
            if result.details is not None and "verdicts" in result.details:
                # Only the flagged clients' verdicts (with their reasons), to keep histories small.
                table = result.details["verdicts"]
                verdicts = (
                    table.untrusted()
                    if isinstance(table, VerdictTable)
                    else [v for v in table if not v["trusted"]]
                )
            agg_norm = float(result.aggregate.norm())
        else:
            agg_norm = 0.0
        t3 = time.perf_counter()
        timing["defense"] = t3 - t2

        accuracy = loss = asr = None
        if (rnd + 1) % cfg.eval_every == 0 or rnd == cfg.rounds - 1:
            accuracy, loss = self.model.evaluate(theta, self.x_test, self.y_test)
            if self._trigger_set is not None:
                asr = _success_rate(self.model, theta, *self._trigger_set)
        timing["eval"] = time.perf_counter() - t3

        record = RoundRecord(
            round=rnd,
            accuracy=accuracy,
            loss=loss,
            sampled=sampled.tolist(),
            byzantine=sampled[byz_rows].tolist(),
            attacking=(
                sampled[byz_rows].tolist() if self.attack is None or self.attack.active(rnd) else []
            ),
            flagged=sampled[flagged].tolist(),
            rejected=sampled[~finite].tolist(),
            weights=weights.tolist(),
            scores=scores,
            aggregate_norm=agg_norm,
            timing=timing,
            asr=asr,
            verdicts=verdicts,
        )
        return theta, record
