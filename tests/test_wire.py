"""The safetensors gradient codec: encoding, hashing and every way a payload can be bad."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save

from matl.errors import InvalidUpdateError, MalformedPayloadError, PayloadTooLargeError
from matl.wire import as_vector, decode_vector, encode_vector, gradient_hash


def test_round_trip_and_hash_is_container_independent() -> None:
    vec = np.arange(10, dtype=np.float32) / 3
    data = encode_vector(vec)
    back = decode_vector(data, max_bytes=10_000, expected_size=10)
    np.testing.assert_array_equal(back, vec)
    assert gradient_hash(back) == gradient_hash(torch.from_numpy(vec).numpy())
    assert gradient_hash(vec) != gradient_hash(vec + 1e-6)


def test_as_vector_flattens_tensors_state_dicts_and_modules() -> None:
    model = torch.nn.Linear(3, 2)
    flat = as_vector(model)
    assert flat.dtype == np.float32 and flat.shape == (8,)
    np.testing.assert_array_equal(flat, as_vector(model.state_dict()))
    assert as_vector(torch.ones(2, 2, dtype=torch.float64)).tolist() == [1.0] * 4
    with pytest.raises(InvalidUpdateError, match="empty"):
        as_vector({})
    with pytest.raises(InvalidUpdateError, match="numbers"):
        as_vector(np.array(["a"]))


def test_every_bad_payload_gets_its_own_error() -> None:
    good = encode_vector(np.zeros(4, dtype=np.float32))
    with pytest.raises(PayloadTooLargeError, match="limit"):
        decode_vector(good, max_bytes=len(good) - 1)
    with pytest.raises(MalformedPayloadError, match="safetensors"):
        decode_vector(b"not a safetensors file", max_bytes=1000)
    with pytest.raises(MalformedPayloadError, match="exactly one"):
        decode_vector(bytes(save({"other": np.zeros(4, np.float32)})), max_bytes=1000)
    with pytest.raises(InvalidUpdateError, match="float32"):
        decode_vector(bytes(save({"gradient": np.zeros(4, np.float64)})), max_bytes=1000)
    with pytest.raises(InvalidUpdateError, match="1-D"):
        decode_vector(bytes(save({"gradient": np.zeros((2, 2), np.float32)})), max_bytes=1000)
    with pytest.raises(InvalidUpdateError, match="has 4 values"):
        decode_vector(good, max_bytes=1000, expected_size=5)
    bad = np.zeros(4, dtype=np.float32)
    bad[2] = np.nan
    with pytest.raises(InvalidUpdateError, match="NaN/Inf"):
        decode_vector(encode_vector(bad), max_bytes=1000)
