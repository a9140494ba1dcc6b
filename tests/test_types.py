"""The whole `fednode` package type-checks with mypy (configuration: pyproject.toml [tool.mypy]).

One mypy run over every module of the package (generated protobuf stubs included: the messages'
`*_pb2.pyi` from protoc, the services' `*_pb2_grpc.pyi` from mypy-protobuf) and the conformance
files in tests/, which state with types what the tests elsewhere check by running: the mesh
implementations are `MeshPort`s (tests/mesh/port_conformance.py) and the daemon offers the admin
backend its two narrow interfaces (tests/node/admin_conformance.py). Any error fails.

torch, numpy, libp2p, trio and multiaddr are read as Any (pyproject.toml says why); grpc is typed
by types-grpcio. mypy's cache lives in .mypy_cache: a first run takes about a minute of CPU, the
next ones a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".mypy_cache"
CONFORMANCE = ["tests/mesh/port_conformance.py", "tests/node/admin_conformance.py"]


def source_tree() -> Path:
    """The package is installed in editable mode through an import hook mypy cannot follow: give
    it the `fednode` namespace as a tree of links to the top-level folders (the same place as
    tests/mesh/test_port_types.py, so both share mypy's incremental cache)."""
    source = CACHE / "fednode-src"
    (source / "fednode").mkdir(parents=True, exist_ok=True)
    for folder in ("node", "aggregators", "cli", "proto"):
        link = source / "fednode" / folder
        if not link.is_symlink():
            with contextlib.suppress(FileExistsError):  # another run made it meanwhile
                link.symlink_to(ROOT / folder)
    return source


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    source = source_tree()
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--explicit-package-bases",
         "--cache-dir", str(CACHE), "--no-error-summary", "--show-error-codes", *args],
        cwd=ROOT, env={**os.environ, "MYPYPATH": str(source)}, capture_output=True, text=True, timeout=550,
    )
    if done.returncode not in (0, 1) or "error: Cannot find" in done.stdout or "Can't find package" in done.stdout:
        raise AssertionError(f"mypy did not run ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def test_the_package_type_checks() -> None:
    done = mypy(str(source_tree() / "fednode"), *[str(ROOT / path) for path in CONFORMANCE])
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not errors, f"{len(errors)} type error(s):\n" + "\n".join(errors)
    assert done.returncode == 0, done.stdout


def test_the_configuration_catches_an_optional_used_as_its_value(tmp_path: Path) -> None:
    """The settings the package is checked with are strict enough for the errors that matter
    most here: `X | None` used as X, and a comparison that can never be true."""
    program = (
        "from fednode.node.identity import Identity\n"
        "def peer(identity: Identity | None) -> str:\n"
        "    return identity.peer_id\n"
        "def same(a: bytes, b: str) -> bool:\n"
        "    return a == b\n"
    )
    source = tmp_path / "misuse.py"
    source.write_text(program)
    done = mypy(str(source))
    assert '[union-attr]' in done.stdout and 'Item "None" of "Identity | None"' in done.stdout, done.stdout
    assert "[comparison-overlap]" in done.stdout, done.stdout
