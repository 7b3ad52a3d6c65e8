"""Seeds and generators derived from a key of integers.

Every random stream in MATL (a simulation's parts, a rule's rounds, a signal's subsamples, an
attack's directions) is a ``torch.Generator`` seeded from a short tuple of integers — the run's
or the rule's seed and tags naming the stream, the round, the client. NumPy's ``SeedSequence``
(its hashing follows M. O'Neill's ``seed_seq_fe``, from the PCG work, 2014-2015) mixes the key, so nearby seeds, rounds
and tags give unrelated streams; two 32-bit words of its state make a 63-bit torch seed. It pads a
key with zeros, so a key and the same key with trailing zeros give one stream: put a stream's tag
before the round, never after it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["keyed_generator", "keyed_seed"]


def keyed_seed(*key: int) -> int:
    """A 63-bit seed derived from the non-negative integers ``key``."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`keyed_seed` ``(*key)``."""
    return torch.Generator().manual_seed(keyed_seed(*key))
