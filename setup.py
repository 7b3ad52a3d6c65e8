"""Build hook: generate MATL's gRPC stubs before setuptools copies the Python modules.

All project metadata lives in ``pyproject.toml``; this file only swaps in a ``build_py`` that
first runs ``src/matl/_proto/_generate.py`` (``grpc_tools.protoc`` on
``proto/matl/v1/matl.proto``), so wheels and editable installs carry ``matl._proto.matl_pb2``
and ``matl_pb2_grpc``. The generator is loaded by path: the build environment needs only
setuptools and grpcio-tools, not MATL's dependencies. Without grpcio-tools the build goes on
with a warning and ``matl._proto.load`` generates the stubs on first use instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
GENERATOR = ROOT / "src" / "matl" / "_proto" / "_generate.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_matl_proto_generate", GENERATOR)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {GENERATOR}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithGrpcStubs(build_py):
    """``build_py`` that generates the gRPC stubs into ``src/matl/_proto`` first."""

    def run(self) -> None:
        gen = _generator()
        try:
            for path in gen.generate():
                print(f"matl: generated {path.relative_to(ROOT)}")
        except gen.GenerationError as exc:
            if "grpcio-tools" not in str(exc):
                raise
            print(
                f"matl: WARNING: {exc}; the stubs will be generated on first use", file=sys.stderr
            )
        super().run()


setup(cmdclass={"build_py": BuildPyWithGrpcStubs})
