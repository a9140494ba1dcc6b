"""Helpers shared by the federation tests that run real daemons through `fednode launch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

# A small model and short local training: real-daemon tests stay within their time budget.
SMALL = ["--set", "task.params={hidden = [64]}", "--set", "training.local_steps=10"]


def launch(tmp_path: Path, *args: str, timeout: float = 600) -> dict:
    """Run the README's main job (`fednode launch`) and return its JSON summary. Kills every
    daemon it started (they die with the launcher's process group)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fednode.cli.app", "launch", "--out", str(out), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # daemons die with it (PR_SET_PDEATHSIG)
            process.wait()
    if process.returncode != 0:
        # The launcher shows the failing nodes' tails; a node that exited 0 can be the cause.
        tails = "".join(f"\n--- {log.name}:\n{log.read_text()[-4000:]}" for log in sorted(out.glob("node-*.log")))
        raise AssertionError(f"launch exited {process.returncode}:\n{output}{tails}")
    return json.loads((out / "summary.json").read_text())
