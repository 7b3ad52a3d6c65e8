"""Independent random streams derived from one seed.

Each part of a simulation (partition, Byzantine choice, model init, client sampling, training,
attack, data poisoning) draws from its own stream, so changing how much randomness one part uses
never shifts another part's draws. Streams are derived with NumPy's ``SeedSequence`` from ``(seed, stream)``.
"""

from __future__ import annotations

import torch

from matl.rng import keyed_seed

#: Stream names; new streams are appended so existing ones keep their seeds.
STREAMS = (
    "partition",
    "byzantine",
    "init",
    "sampling",
    "training",
    "attack",
    "subset",
    "root",
    "poison",
)


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` derived from the run's ``seed``."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    return keyed_seed(seed, STREAMS.index(stream))


def generator(seed: int, stream: str) -> torch.Generator:
    """A ``torch.Generator`` seeded for ``stream``."""
    return torch.Generator().manual_seed(stream_seed(seed, stream))
