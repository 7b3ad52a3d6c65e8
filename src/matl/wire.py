"""The gradient payload codec: flat float32 vectors as safetensors, never pickle.

A payload is a safetensors file holding exactly one tensor, ``"gradient"``: 1-D, ``F32``,
little-endian. safetensors is a plain JSON header plus raw bytes, so decoding an untrusted
payload never executes code. A gradient's identity is :func:`gradient_hash`, the SHA-256 of
its float32 bytes — the same vector always has the same hash, whatever container carried it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from matl.crypto import sha256_hex
from matl.errors import InvalidUpdateError, MalformedPayloadError, PayloadTooLargeError

__all__ = ["TENSOR_NAME", "as_vector", "decode_vector", "encode_vector", "gradient_hash"]

TENSOR_NAME = "gradient"


def as_vector(x: Any) -> np.ndarray:
    """Flatten a gradient-like object into a C-contiguous float32 1-D array.

    Accepts a torch tensor, a numpy array, a state dict (a mapping of names to tensors or
    arrays, flattened in its iteration order) or a ``torch.nn.Module`` (its parameters, in
    ``parameters()`` order).
    """
    if isinstance(x, torch.nn.Module):
        parts: list[Any] = [p.detach() for p in x.parameters()]
    elif isinstance(x, Mapping):
        parts = list(x.values())
    else:
        parts = [x]
    if not parts:
        raise InvalidUpdateError("the gradient is empty (no tensors to flatten)")
    flat = []
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().to("cpu", torch.float32).numpy()
        arr = np.asarray(part)
        if not np.issubdtype(arr.dtype, np.number):
            raise InvalidUpdateError(f"gradient values must be numbers, got dtype {arr.dtype}")
        flat.append(arr.astype(np.float32, copy=False).reshape(-1))
    return np.ascontiguousarray(np.concatenate(flat) if len(flat) > 1 else flat[0])


def gradient_hash(vector: np.ndarray) -> str:
    """SHA-256 hex of the vector's float32 little-endian bytes."""
    data = np.ascontiguousarray(vector, dtype="<f4")
    return sha256_hex(data.tobytes())


def encode_vector(vector: np.ndarray) -> bytes:
    """A safetensors payload holding ``vector`` as the 1-D ``F32`` tensor ``"gradient"``."""
    data = np.ascontiguousarray(vector, dtype="<f4").reshape(-1)
    return bytes(st_save({TENSOR_NAME: data}))


def decode_vector(data: bytes, *, max_bytes: int, expected_size: int | None = None) -> np.ndarray:
    """Parse and check an untrusted payload.

    Raises
    ------
    PayloadTooLargeError
        ``len(data) > max_bytes`` (checked before anything is parsed).
    MalformedPayloadError
        Not safetensors, or no single 1-D ``"gradient"`` tensor.
    InvalidUpdateError
        Not float32, not ``expected_size`` long, or holding NaN/Inf.
    """
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"payload is {len(data)} bytes; the limit is {max_bytes}")
    try:
        tensors = st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise MalformedPayloadError(f"payload is not a valid safetensors file: {exc}") from None
    if set(tensors) != {TENSOR_NAME}:
        raise MalformedPayloadError(
            f"payload must hold exactly one tensor named {TENSOR_NAME!r}, got {sorted(tensors)}"
        )
    vec = tensors[TENSOR_NAME]
    if vec.dtype != np.float32:
        raise InvalidUpdateError(f"gradient dtype must be float32 (F32), got {vec.dtype}")
    if vec.ndim != 1:
        raise InvalidUpdateError(f"gradient must be 1-D, got shape {tuple(vec.shape)}")
    if expected_size is not None and vec.shape[0] != expected_size:
        raise InvalidUpdateError(
            f"gradient has {vec.shape[0]} values; this validator's model has {expected_size}"
        )
    if not np.isfinite(vec).all():
        bad = int((~np.isfinite(vec)).sum())
        raise InvalidUpdateError(f"gradient holds {bad} NaN/Inf values; it was not stored")
    return vec
