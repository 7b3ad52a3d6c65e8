"""Per-round memo of values computed from one update matrix, and its shared row norms.

Several parts of a round read the same function of the ``(n, d)`` updates: the finiteness check
every rule runs before aggregating (:func:`matl.aggregation.base.finite_row_mask`), the trust
signals' row norms and sketches (:mod:`matl.trust.sketch`). :func:`round_memo` computes each such
value once per update tensor, so a round pays one pass over the updates for each, not one per
caller.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["fingerprint", "round_memo", "round_norms"]

_MEMO_LOCK = threading.Lock()
#: (kind, k, seed) → (weak reference to the input, its fingerprint, the result, its finalizer).
_MEMO: dict[
    tuple[str, int | None, int], tuple[weakref.ref[torch.Tensor], tuple[Any, ...], Any, Any]
] = {}


def fingerprint(x: torch.Tensor) -> tuple[Any, ...]:
    """What identifies a tensor's current contents without reading them: in-place version
    counter, data pointer, shape, strides, offset, dtype and device (see :func:`round_memo`)."""
    return (
        x._version,
        x.data_ptr(),
        tuple(x.shape),
        x.stride(),
        x.storage_offset(),
        x.dtype,
        x.device,
    )


def _forget(key: tuple[str, int | None, int], ref: weakref.ref[torch.Tensor]) -> None:
    """Drop ``key``'s entry when its tensor is freed. Never blocks: the garbage collector may run
    this while the same thread holds the lock; the entry then stays until it is replaced (a dead
    reference never matches)."""
    if not _MEMO_LOCK.acquire(blocking=False):
        return
    try:
        hit = _MEMO.get(key)
        if hit is not None and hit[0] is ref:
            del _MEMO[key]
    finally:
        _MEMO_LOCK.release()


def round_memo(
    kind: str, x: torch.Tensor, k: int | None, seed: int, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``compute()``, or the result kept from the last call for the very same tensor ``x``,
    ``kind``, ``k`` and ``seed``: one computation per round however many signals ask.

    A hit needs the same tensor object (a weak reference: a new tensor, even at a freed tensor's
    address, never matches) with the same fingerprint: in-place version counter, data pointer,
    shape, strides, offset, dtype and device — so in-place operations and ``x.data = …`` are seen.
    Writes that bypass autograd's version counter (through ``x.data`` or a NumPy view) are not;
    the trust signals never make them. Inference-mode tensors, which have no version counter, are
    not memoised. Only the latest tensor is kept per key, and its entry is dropped when the tensor
    is freed. Results are shared: treat them as read-only.
    """
    if x.is_inference():
        return compute()
    key = (kind, k, int(seed))
    mark = fingerprint(x)
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
        if hit is not None and hit[0]() is x and hit[1] == mark:
            value: torch.Tensor = hit[2]
            return value
    value = compute()
    ref = weakref.ref(x)
    finalizer = weakref.finalize(x, _forget, key, ref)
    with _MEMO_LOCK:
        old = _MEMO.get(key)
        _MEMO[key] = (ref, mark, value, finalizer)
    if old is not None:
        old[3].detach()  # one finalizer per live entry
    return value


def round_norms(updates: torch.Tensor) -> torch.Tensor:
    """``(n,)`` float64 Euclidean norms of the rows of the floating ``updates`` (one pass, no
    ``(n, d)`` temporary), shared for the round (:func:`round_memo`): **read-only**. A CPU
    float32/float64 input is summed in float64 by the compiled kernel
    (:func:`matl.aggregation.kernels.row_norms`, the same bits as the round sketch's pass, which
    also fills this memo); any other in its own dtype. A row holding NaN or Inf has a non-finite
    norm; so does a finite row whose norm overflows the summing dtype — callers that need to tell
    the two apart check those rows exactly.
    """
    from matl.aggregation.kernels import kernel_dtype, row_norms

    def compute() -> torch.Tensor:
        if kernel_dtype(updates):
            return row_norms(updates)
        norms: torch.Tensor = torch.linalg.vector_norm(updates.detach(), dim=1)
        return norms.to(torch.float64)

    return round_memo("norms", updates, None, 0, compute)
