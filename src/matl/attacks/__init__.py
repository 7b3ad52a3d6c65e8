"""Attacks on federated learning: model poisoning (update vectors) and data poisoning."""

from __future__ import annotations

from matl.attacks import (  # importing the modules registers their attacks
    adaptive,
    alie,
    backdoor,
    collusion,
    free_rider,
    gaussian,
    ipm,
    label_flip,
    mimic,
    min_max,
    min_sum,
    nan_inf,
    scaling,
    sign_flip,
    sleeper,
)
from matl.attacks.base import Attack, AttackContext, DataAttack, ModelAttack
from matl.attacks.registry import ATTACKS, available_attacks, get_attack, register_attack

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "DataAttack",
    "ModelAttack",
    "adaptive",
    "alie",
    "available_attacks",
    "backdoor",
    "collusion",
    "free_rider",
    "gaussian",
    "get_attack",
    "ipm",
    "label_flip",
    "mimic",
    "min_max",
    "min_sum",
    "nan_inf",
    "register_attack",
    "scaling",
    "sign_flip",
    "sleeper",
]
