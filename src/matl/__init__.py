"""MATL: Byzantine-robust trust middleware for federated learning.

Subpackages
-----------
``matl.aggregation``
    Robust aggregation rules behind one registry (``get_rule``).
``matl.attacks``
    Model- and data-poisoning attacks behind one registry (``get_attack``).
``matl.data``
    Dataset loaders (MNIST, Fashion-MNIST, CIFAR-10, synthetic) and client partitioners.
``matl.models``
    Small torch models batched over clients, and the batched local-training step.
``matl.sim``
    The seeded, batched federated simulator (``Simulation``, ``SimulationConfig``).
``matl.trust``
    The MATL trust engine (``MATLRule``, ``Mode0``, ``Mode1``; the aggregation rule ``"matl"``).
``matl.crypto``, ``matl.wire``, ``matl.protocol``
    Ed25519 identities, the safetensors gradient codec and the signed messages.
``matl.ledger``
    The signed, hash-chained ledger (SQLite or PostgreSQL).
``matl.validator``, ``matl.server``, ``matl.client``
    The IO-free validator core, its HTTP/gRPC/WebSocket adapters and the client SDK
    (``MATLClient``, ``AsyncMATLClient``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matl.errors import (
    ConfigError,
    DatasetUnavailableError,
    InvalidUpdateError,
    MATLError,
    PreconditionError,
    UnknownNameError,
)

if TYPE_CHECKING:
    from matl.client import AsyncMATLClient, MATLClient
    from matl.trust import MATLRule, Mode0, Mode1
    from matl.validator import MATLValidator, ValidatorConfig

__version__ = "0.1.0"

#: Names imported on first access (``from matl import MATLRule``) so ``import matl`` stays light.
_LAZY = {
    "MATLRule": "matl.trust",
    "Mode0": "matl.trust",
    "Mode1": "matl.trust",
    "MATLClient": "matl.client",
    "AsyncMATLClient": "matl.client",
    "MATLValidator": "matl.validator",
    "ValidatorConfig": "matl.validator",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'matl' has no attribute {name!r}")


__all__ = [
    "AsyncMATLClient",
    "ConfigError",
    "DatasetUnavailableError",
    "InvalidUpdateError",
    "MATLClient",
    "MATLError",
    "MATLRule",
    "MATLValidator",
    "Mode0",
    "Mode1",
    "PreconditionError",
    "UnknownNameError",
    "ValidatorConfig",
    "__version__",
]
