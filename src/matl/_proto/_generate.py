"""Generate the gRPC stubs ``matl_pb2`` and ``matl_pb2_grpc`` from ``proto/matl/v1/matl.proto``.

The generated modules are build outputs, never committed. Three things run this file:

* the setuptools build hook (``setup.py``: ``build_py`` generates before it copies modules), so
  wheels and editable installs carry the stubs;
* ``make proto`` (``python src/matl/_proto/_generate.py``) after editing the ``.proto``;
* :func:`matl._proto.load` on first use, when the stubs are missing, stale (the ``.proto``
  changed) or were made by a ``protoc`` newer than the installed protobuf runtime.

It imports only the standard library at module level (``grpc_tools`` when it generates), so the
build hook can load it by path before ``matl``'s dependencies are installed.

Layout: ``protoc`` sees the source as ``matl/v1/matl.proto`` (package ``matl.v1``; that is the
file name registered in protobuf's descriptor pool and the service path
``/matl.v1.Validator/...``) but the modules live in the package ``matl._proto``; the one import
``protoc`` writes into ``matl_pb2_grpc.py`` (``from matl.v1 import matl_pb2``) is rewritten to
``from matl._proto import matl_pb2``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

__all__ = [
    "GENERATED",
    "PACKAGE_DIR",
    "PROTO_NAME",
    "GenerationError",
    "cache_dir",
    "find_proto",
    "generate",
    "is_current",
    "main",
    "proto_digest",
]

PROTO_NAME = "matl/v1/matl.proto"
"""The source's name as ``protoc`` sees it (relative to its include root)."""
PACKAGE_DIR = Path(__file__).resolve().parent
"""``src/matl/_proto`` (or ``site-packages/matl/_proto``): where the stubs go by default."""
GENERATED = ("matl_pb2.py", "matl_pb2_grpc.py")
"""The generated modules."""
PACKAGED_PROTO = "matl.proto"
"""A copy of the source kept beside the stubs (package data), for regeneration after install."""
STAMP = "matl_proto.sha256"
"""SHA-256 of the source the stubs were generated from."""

_GRPC_IMPORT_FROM = "from matl.v1 import matl_pb2 as"
_GRPC_IMPORT_TO = "from matl._proto import matl_pb2 as"


class GenerationError(RuntimeError):
    """``protoc`` is unavailable or failed, or no ``.proto`` source was found."""


def find_proto() -> Path:
    """The ``.proto`` source to generate from.

    In order: ``$MATL_PROTO_FILE``; ``proto/matl/v1/matl.proto`` of the source checkout this file
    sits in (``src/matl/_proto`` -> repository root); the copy installed beside the stubs.
    """
    candidates = []
    if os.environ.get("MATL_PROTO_FILE"):
        candidates.append(Path(os.environ["MATL_PROTO_FILE"]))
    candidates.append(PACKAGE_DIR.parents[2] / "proto" / PROTO_NAME)
    candidates.append(PACKAGE_DIR / PACKAGED_PROTO)
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise GenerationError(f"cannot find the MATL gRPC definition {PROTO_NAME} (tried {tried})")


def proto_digest(proto: Path) -> str:
    """SHA-256 hex of the ``.proto`` source bytes."""
    return hashlib.sha256(proto.read_bytes()).hexdigest()


def is_current(out_dir: Path, proto: Path | None = None) -> bool:
    """Whether ``out_dir`` holds stubs generated from the current ``.proto`` source."""
    if not all((out_dir / name).is_file() for name in GENERATED):
        return False
    try:
        source = proto or find_proto()
        stamp = (out_dir / STAMP).read_text(encoding="ascii").strip()
    except (GenerationError, OSError):
        # no source to compare with (e.g. an installed wheel without its .proto): trust the stubs
        return True
    return stamp == proto_digest(source)


def cache_dir() -> Path:
    """Where stubs go when the package directory is read-only: ``$MATL_CACHE/grpc`` (default
    ``~/.cache/matl/grpc``)."""
    root = os.environ.get("MATL_CACHE") or str(Path.home() / ".cache" / "matl")
    return Path(root) / "grpc"


def generate(out_dir: Path | None = None, proto: Path | None = None) -> list[Path]:
    """Run ``grpc_tools.protoc`` and write the stubs (plus a copy of the source) to ``out_dir``.

    Parameters
    ----------
    out_dir:
        Target directory (default :data:`PACKAGE_DIR`); created if missing. Files are replaced
        atomically, so concurrent generators and importers never see half a file.
    proto:
        The ``.proto`` source (default :func:`find_proto`).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    GenerationError
        ``grpcio-tools`` is not installed, the source is missing, or ``protoc`` failed.
    """
    out = PACKAGE_DIR if out_dir is None else Path(out_dir)
    source = find_proto() if proto is None else Path(proto)
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise GenerationError(
            "grpcio-tools is needed to generate the MATL gRPC stubs: pip install grpcio-tools"
        ) from exc
    data = source.read_bytes()
    with tempfile.TemporaryDirectory(prefix="matl-protoc-") as tmp:
        include = Path(tmp) / "include"
        gen = Path(tmp) / "gen"
        (include / PROTO_NAME).parent.mkdir(parents=True)
        (include / PROTO_NAME).write_bytes(data)
        gen.mkdir()
        args = [
            "grpc_tools.protoc",
            f"--proto_path={include}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            PROTO_NAME,
        ]
        if protoc.main(args) != 0:
            raise GenerationError(f"protoc failed on {source} (its messages are above)")
        stem = Path(PROTO_NAME).parent
        pb2 = (gen / stem / "matl_pb2.py").read_text(encoding="utf-8")
        grpc_code = (gen / stem / "matl_pb2_grpc.py").read_text(encoding="utf-8")
    if _GRPC_IMPORT_FROM not in grpc_code:
        raise GenerationError(
            f"unexpected protoc output: no {_GRPC_IMPORT_FROM!r} line in matl_pb2_grpc.py"
        )
    grpc_code = grpc_code.replace(_GRPC_IMPORT_FROM, _GRPC_IMPORT_TO, 1)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_atomic(out / "matl_pb2.py", pb2.encode("utf-8")),
        _write_atomic(out / "matl_pb2_grpc.py", grpc_code.encode("utf-8")),
    ]
    if source.resolve() != (out / PACKAGED_PROTO).resolve():
        written.append(_write_atomic(out / PACKAGED_PROTO, data))
    # the stamp last: a crash before it leaves the stubs "stale", so they are made again
    written.append(_write_atomic(out / STAMP, (hashlib.sha256(data).hexdigest() + "\n").encode()))
    return written


def _write_atomic(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python src/matl/_proto/_generate.py [--out DIR] [--proto FILE] [--check]``."""
    parser = argparse.ArgumentParser(description="Generate MATL's gRPC stubs with grpc_tools.")
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR, help="target directory")
    parser.add_argument("--proto", type=Path, default=None, help="the .proto source")
    parser.add_argument(
        "--check", action="store_true", help="only report whether the stubs are current"
    )
    args = parser.parse_args(argv)
    if args.check:
        current = is_current(args.out, args.proto)
        print(f"{args.out}: stubs are {'current' if current else 'missing or stale'}")
        return 0 if current else 1
    try:
        written = generate(args.out, args.proto)
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
