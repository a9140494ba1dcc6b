"""The typical sessions of docs/admin.md and docs/cli.md run exactly as written.

Each script runs with bash -eu -o pipefail inside a network namespace of its own (a loopback and
one interface), so its fixed ports (7461, 7462) never meet another test's, with HOME in a
temporary directory (the scripts use ~/fed/...) and this checkout's `fednode` first on PATH.
Whatever the script left running is killed with the namespace.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from netlab import NetLab

from fednode.node.identity import identity_path, load_identity

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(1200)]

DOCS = Path(__file__).resolve().parents[2] / "docs"


def session(document: str, name: str) -> str:
    """The ```bash block right after `<!-- session: name -->` in docs/<document>."""
    text = (DOCS / document).read_text()
    match = re.search(rf"<!-- session: {name} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"docs/{document} has no '<!-- session: {name} -->' bash block"
    return match.group(1)


def run_session(lab: NetLab, script: str, home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    host = lab.public_host("docs")
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDNODE_", "XDG_"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               COLUMNS="100")
    return subprocess.run(["ip", "netns", "exec", host.ns, "bash", "-eu", "-o", "pipefail", "-c", script],
                          cwd=home, env=env, capture_output=True, text=True, timeout=timeout)


def _report(done: subprocess.CompletedProcess[str], home: Path) -> str:
    logs = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(home.rglob("*.log")))
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}\n{logs}"


def test_the_admin_session_runs_as_written(lab: NetLab, tmp_path: Path) -> None:
    import torch

    home = tmp_path / "home"
    done = run_session(lab, session("admin.md", "admin"), home, timeout=1100)
    assert done.returncode == 0, _report(done, home)
    state = torch.load(home / "fed" / "hospital-study.pt", weights_only=True)
    assert state and all(torch.isfinite(v).all() for v in state.values())
    b_log = (home / "fed" / "b.log").read_text()
    assert "finished (rounds) at round 20" in b_log, _report(done, home)
    assert b_log.count("ready (finished)") == 1, _report(done, home)  # the restart came back finished
    # After the restart, B's peers include A again (the last command printing peer ids).
    a_peer = load_identity(identity_path(home / "fed" / "a")).peer_id
    assert a_peer in done.stdout.split("wrote ")[-1], _report(done, home)


def test_the_cli_session_runs_as_written(lab: NetLab, tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = run_session(lab, session("cli.md", "cli"), home, timeout=600)
    assert done.returncode == 0, _report(done, home)
    rounds = [json.loads(line) for line in (home / "alone.log").read_text().splitlines()
              if line.startswith("{") and '"event": "round"' in line]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    summary = json.loads((home / "fed" / "run" / "summary.json").read_text())
    assert [n["rounds"] for n in summary["nodes"]] == [3, 3] and summary["honest_min_accuracy"] > 0
