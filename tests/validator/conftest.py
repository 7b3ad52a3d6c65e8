"""A real validator on a real SQLite ledger, and honest/attacking gradients for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from matl.crypto import Identity
from matl.ledger import open_ledger
from matl.validator import MATLValidator, ValidatorConfig

DIM = 40


@pytest.fixture
def make_validator(tmp_path: Path) -> Callable[..., MATLValidator]:
    """``make_validator(**config)``: a validator whose ledger and key persist in ``tmp_path``."""
    key = Identity.generate()

    def make(**options: Any) -> MATLValidator:
        cfg = {"dim": DIM, "round_size": 5, **options}
        ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        return MATLValidator(ValidatorConfig(**cfg), ledger, key)

    return make


@pytest.fixture
def honest() -> Callable[[int], np.ndarray]:
    """``honest(seed)``: a gradient near a shared direction (what honest clients agree on)."""
    base = np.random.default_rng(1234).normal(size=DIM)

    def make(seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).normal(scale=0.5, size=DIM)
        return (base + noise).astype(np.float32)

    return make
