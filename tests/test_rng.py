"""Keyed seeds: the derivation every random stream in MATL uses."""

from __future__ import annotations

import numpy as np
import torch

from matl.rng import keyed_generator, keyed_seed


def test_a_keyed_seed_is_the_seed_sequence_of_its_key() -> None:
    """Two 32-bit words of NumPy's SeedSequence state of the key make the 63-bit seed, so the
    streams derived before this helper existed keep their draws."""
    state = np.random.SeedSequence([7, 3, 11]).generate_state(2, np.uint32)
    assert keyed_seed(7, 3, 11) == (int(state[0]) << 31) ^ int(state[1])
    assert 0 <= keyed_seed(7, 3, 11) < 2**63


def test_keys_that_differ_anywhere_give_unrelated_generators() -> None:
    draws = {
        key: torch.rand(4, generator=keyed_generator(*key)).tolist()
        for key in [(0, 1), (1, 0), (0, 1, 0), (0, 2), (1, 1)]
    }
    assert draws[(0, 1)] == torch.rand(4, generator=keyed_generator(0, 1)).tolist()
    # SeedSequence pads keys with zeros, so (0, 1) and (0, 1, 0) coincide: a stream's tag goes
    # before the round, never after it
    assert draws[(0, 1)] == draws[(0, 1, 0)]
    others = [tuple(v) for k, v in draws.items() if k != (0, 1, 0)]
    assert len(set(others)) == len(others)
