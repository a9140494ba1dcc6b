"""The mesh port holds: every implementation is a `MeshPort` and the runners use nothing else.

mypy checks, in one run:
* tests/mesh/port_conformance.py (Mesh, RemoteMesh and InMemoryMesh returned as MeshPort), the
  port, the in-memory mesh and the simulation harness, which must be free of type errors;
* the federation runners, where every error that names MeshPort fails (a runner calling a mesh
  method the port lacks, or with the wrong types). tests/test_types.py checks the whole package
  (these files included) for every other error.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".mypy_cache"
CLEAN = ["node/mesh/port.py", "node/mesh/memory.py", "node/federation/simulation.py"]
USERS = ["node/federation/runner.py", "node/federation/compass.py", "node/federation/revocation_record.py"]


def source_tree() -> Path:
    """The package is installed in editable mode through an import hook mypy cannot follow: give
    it the `fednode` namespace as a tree of links to the top-level folders. It lives at one
    place beside mypy's cache, so the incremental cache always sees the same paths."""
    source = CACHE / "fednode-src"
    (source / "fednode").mkdir(parents=True, exist_ok=True)
    for folder in ("node", "aggregators", "cli", "proto"):
        link = source / "fednode" / folder
        if not link.is_symlink():
            with contextlib.suppress(FileExistsError):  # another run made it meanwhile
                link.symlink_to(ROOT / folder)
    return source


def run_mypy() -> tuple[dict[str, list[str]], str]:
    """mypy's error lines per file (repository-relative paths), and its whole output."""
    source = source_tree()
    files = [str(source / "fednode" / f) for f in CLEAN + USERS] + [str(ROOT / "tests/mesh/port_conformance.py")]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--explicit-package-bases",
         "--cache-dir", str(CACHE), "--no-error-summary", "--show-error-codes", *files],
        cwd=ROOT, env={**os.environ, "MYPYPATH": str(source)}, capture_output=True, text=True, timeout=280,
    )
    if done.returncode not in (0, 1) or "error: Cannot find" in done.stdout:
        raise AssertionError(f"mypy did not run ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    errors: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        if ": error:" not in line:
            continue
        path = line.split(":", 1)[0].replace(str(source / "fednode") + "/", "").replace(str(ROOT) + "/", "")
        errors.setdefault(path, []).append(line)
    return errors, done.stdout


def test_mesh_implementations_satisfy_the_port_and_the_runners_use_only_the_port() -> None:
    errors, output = run_mypy()
    for path in [*CLEAN, "tests/mesh/port_conformance.py"]:
        assert not errors.get(path), output
    for path in USERS:
        drift = [line for line in errors.get(path, []) if "MeshPort" in line]
        assert not drift, output
