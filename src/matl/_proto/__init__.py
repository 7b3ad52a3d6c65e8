"""MATL's generated gRPC stubs (``matl_pb2``, ``matl_pb2_grpc``) and the code that loads them.

The stubs are generated from ``proto/matl/v1/matl.proto`` (see :mod:`matl._proto._generate`) at
build/install time and are not committed. :func:`load` imports them, generating them first when
they are missing, stale or incompatible with the installed protobuf runtime — into this package
directory when it is writable, else into a cache directory that is then put on this package's
``__path__`` — so ``matl._proto.matl_pb2`` always resolves to working stubs.

The generated modules are untyped (they build their classes at import time), so :func:`load`
hands them out as ``Any``; :mod:`matl._proto.codec` is the typed layer over them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import sys
import threading
from pathlib import Path
from typing import Any, NamedTuple

from matl._proto import _generate

__all__ = ["Stubs", "load"]


class Stubs(NamedTuple):
    """The two generated modules."""

    pb2: Any
    """``matl._proto.matl_pb2``: the message classes."""
    pb2_grpc: Any
    """``matl._proto.matl_pb2_grpc``: ``ValidatorStub`` and ``add_ValidatorServicer_to_server``."""


_lock = threading.Lock()
_stubs: Stubs | None = None
_MODULES = ("matl._proto.matl_pb2", "matl._proto.matl_pb2_grpc")


def load() -> Stubs:
    """The generated stubs, generated first if need be (thread-safe; cached after first use).

    Raises
    ------
    matl._proto._generate.GenerationError
        The stubs are missing or unusable and cannot be generated (no ``grpcio-tools``, no
        ``.proto`` source, nowhere writable).
    """
    global _stubs
    if _stubs is not None:
        return _stubs
    with _lock:
        if _stubs is None:
            _stubs = _load_locked()
        return _stubs


def _load_locked() -> Stubs:
    if _generate.is_current(_generate.PACKAGE_DIR):
        try:
            return _import()
        except Exception as exc:  # e.g. protobuf's VersionError: stubs newer than the runtime
            first: Exception | None = exc
    else:
        first = None
    target = _regenerate()
    try:
        return _import()
    except Exception as exc:
        raise _generate.GenerationError(
            f"the gRPC stubs generated in {target} do not import: {exc}"
        ) from (first or exc)


def _regenerate() -> Path:
    """Generate into the package directory, or into the cache if it is read-only."""
    try:
        _generate.generate(_generate.PACKAGE_DIR)
        target = _generate.PACKAGE_DIR
    except OSError:
        proto = _generate.find_proto()
        key = hashlib.sha256(proto.read_bytes() + _protobuf_version().encode()).hexdigest()[:16]
        target = _generate.cache_dir() / key
        if not _generate.is_current(target, proto):
            _generate.generate(target, proto)
        # search the cache before the package directory (whose stubs are missing or unusable)
        if str(target) not in __path__:
            __path__.insert(0, str(target))
    for name in _MODULES:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return target


def _import() -> Stubs:
    return Stubs(importlib.import_module(_MODULES[0]), importlib.import_module(_MODULES[1]))


def _protobuf_version() -> str:
    try:
        return importlib.metadata.version("protobuf")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        return "unknown"
