"""JSON encoding of trust-engine state (tensors and integer-keyed dicts included).

:meth:`matl.trust.rule.MATLRule.state_dict` holds tensors and dicts keyed by client index; JSON has
neither. Tensors become ``{"__tensor__": base64, "dtype": ..., "shape": [...]}`` (raw
little-endian bytes, so values round-trip exactly) and a dict with non-string keys becomes
``{"__items__": [[key, value], ...]}``. No pickle anywhere.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch

__all__ = ["decode_state", "encode_state"]


def encode_state(obj: Any) -> Any:
    """Turn a state dict into JSON-able data."""
    if isinstance(obj, torch.Tensor):
        arr = obj.detach().cpu().contiguous().numpy()
        return {
            "__tensor__": base64.b64encode(arr.tobytes()).decode(),
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
        }
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode_state(v) for k, v in obj.items()}
        return {"__items__": [[k, encode_state(v)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [encode_state(v) for v in obj]
    return obj


def decode_state(obj: Any) -> Any:
    """Invert :func:`encode_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            raw = base64.b64decode(obj["__tensor__"])
            arr = np.frombuffer(raw, dtype=np.dtype(obj["dtype"]))
            return torch.from_numpy(arr.reshape(obj["shape"]).copy())
        if "__items__" in obj:
            return {k: decode_state(v) for k, v in obj["__items__"]}
        return {k: decode_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v) for v in obj]
    return obj
