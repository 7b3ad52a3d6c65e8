"""Generating and loading the gRPC stubs (:mod:`matl._proto._generate`, :func:`matl._proto.load`).

Generation must yield importable ``matl._proto`` modules with a stamp that tracks the source;
loading must repair missing, stale or unusable stubs, falling back to a cache directory when the
package directory cannot be written. Loading runs in fresh interpreters (the descriptor pool and
the module cache are per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from matl._proto import _generate

PROTO = _generate.find_proto()


def _run(code: str, tmp_path: Path) -> str:
    env = {
        **os.environ,
        "MATL_CACHE": str(tmp_path / "cache"),
        "MATL_PROTO_FILE": str(PROTO),
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_generate_writes_stubs_with_the_package_import(tmp_path: Path) -> None:
    written = _generate.generate(tmp_path, PROTO)
    assert {p.name for p in written} == {
        "matl_pb2.py",
        "matl_pb2_grpc.py",
        "matl.proto",
        "matl_proto.sha256",
    }
    grpc_code = (tmp_path / "matl_pb2_grpc.py").read_text()
    assert "from matl._proto import matl_pb2 as" in grpc_code
    assert "from matl.v1 import" not in grpc_code
    assert _generate.is_current(tmp_path, PROTO)
    # editing the source makes the stubs stale
    edited = tmp_path / "edited.proto"
    edited.write_text(PROTO.read_text() + "\n// edited\n")
    assert not _generate.is_current(tmp_path, edited)
    (tmp_path / "matl_pb2.py").unlink()
    assert not _generate.is_current(tmp_path, PROTO)


def test_generate_reports_protoc_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3";\nmessage {')
    with pytest.raises(_generate.GenerationError, match="protoc failed"):
        _generate.generate(tmp_path / "out", bad)
    assert _generate.main(["--out", str(tmp_path / "out"), "--proto", str(bad)]) == 1
    assert _generate.main(["--out", str(tmp_path / "out"), "--check"]) == 1


def test_load_repairs_unusable_stubs(tmp_path: Path) -> None:
    out = _run(
        """
        import sys
        from pathlib import Path
        import matl._proto as proto
        from matl._proto import _generate
        pkg = Path(sys.argv[1]) / "pkg"
        _generate.PACKAGE_DIR = pkg
        proto.__path__[:] = [str(pkg)]
        _generate.generate(pkg)
        # current stamp, but a module that fails (as a newer protoc's output fails on an older
        # protobuf runtime)
        (pkg / "matl_pb2.py").write_text("raise ImportError('gencode newer than the runtime')")
        stubs = proto.load()
        assert Path(stubs.pb2.__file__).parent == pkg, stubs.pb2.__file__
        assert stubs.pb2_grpc.ValidatorStub and stubs.pb2.Verdict(score=0.5).score == 0.5
        assert proto.load() is stubs
        print("ok")
        """,
        tmp_path,
    )
    assert out.strip() == "ok"


def test_load_falls_back_to_the_cache_when_the_package_is_not_writable(tmp_path: Path) -> None:
    out = _run(
        """
        import sys
        from pathlib import Path
        import matl._proto as proto
        from matl._proto import _generate
        blocker = Path(sys.argv[1]) / "not-a-directory"
        blocker.write_text("")
        _generate.PACKAGE_DIR = blocker  # mkdir fails there: OSError
        proto.__path__[:] = [str(blocker)]
        stubs = proto.load()
        print(Path(stubs.pb2.__file__).parent.parent)
        """,
        tmp_path,
    )
    assert Path(out.strip()) == tmp_path / "cache" / "grpc"
