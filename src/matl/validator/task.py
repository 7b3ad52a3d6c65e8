"""The validator's task: global model, validation data (Mode 1) and test data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from matl.data import load_dataset
from matl.models import BatchedModel, build_model
from matl.sim.seeding import generator
from matl.validator.config import ValidatorConfig

__all__ = ["Task", "build_task"]


@dataclass(frozen=True)
class Task:
    """What the validator knows about the learning problem.

    ``model`` is ``None`` in model-free mode (raw vectors of length ``dim``).
    """

    dim: int
    init: torch.Tensor
    model: BatchedModel | None = None
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    test: tuple[torch.Tensor, torch.Tensor] | None = None

    def accuracy(self, params: torch.Tensor) -> float | None:
        """Test accuracy of ``params`` (``None`` without a dataset)."""
        if self.model is None or self.test is None:
            return None
        x, y = self.test
        acc, _ = self.model.evaluate(params, x, y)
        return float(acc)


def build_task(cfg: ValidatorConfig) -> Task:
    """Load the dataset (if any), build the model and draw the validation and test rows.

    The validation rows are a seeded random subset of the training split (the same stream the
    simulator uses for FLTrust root data); the global model starts from the seeded ``init``.
    """
    if cfg.dataset is None:
        assert cfg.dim is not None  # checked by ValidatorConfig
        return Task(dim=cfg.dim, init=torch.zeros(cfg.dim, dtype=torch.float32))
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, **cfg.dataset_options)
    model = build_model(
        cfg.model,
        data.input_shape,
        data.num_classes,
        **({"hidden": cfg.hidden} if cfg.model == "mlp" else {}),
    )
    init = model.init(generator(cfg.seed, "init"))
    rows = torch.randperm(len(data.y_train), generator=generator(cfg.seed, "root"))
    rows = rows[: cfg.validation_samples].sort().values
    validation = (data.x_train[rows], data.y_train[rows])
    test = (data.x_test[: cfg.test_samples], data.y_test[: cfg.test_samples])
    return Task(dim=int(init.numel()), init=init, model=model, validation=validation, test=test)
