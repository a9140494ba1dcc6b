"""die_with_parent: a process started with it dies when its parent dies, even by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

PARENT = """
import functools, signal, subprocess, sys, time
from fednode.node.parent_death import die_with_parent
tie = {tie}
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         preexec_fn=functools.partial(die_with_parent, signal.SIGTERM) if tie else None)
print(child.pid, flush=True)
time.sleep(300)
"""


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def orphan_after_parent_killed(tie: bool, wait: float) -> tuple[int, bool]:
    """Start a parent that starts a child (tied to it or not), SIGKILL the parent: (child pid,
    whether the child still runs `wait` seconds later; asked sooner if it is gone before)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(tie=tie)], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + wait
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        return child, running(child)
    finally:
        parent.kill()
        if child and running(child):
            os.kill(child, signal.SIGKILL)


def test_a_tied_child_dies_with_its_parent_and_an_untied_one_does_not() -> None:
    _, still_running = orphan_after_parent_killed(tie=True, wait=20.0)
    assert not still_running
    pid, untied_running = orphan_after_parent_killed(tie=False, wait=2.0)
    assert untied_running, f"the untied child {pid} died too: the check above proves nothing here"
