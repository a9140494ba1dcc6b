"""Durable or loud: a checkpoint that cannot be written (a full disk) is reported in the log, the
admin status and the summary, and a daemon that cannot save its state at shutdown exits 5
(issue 22). The state dir is a small tmpfs (needs root; skipped otherwise)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 192 kB tmpfs: room for the identity, the lock and the summary, not for a checkpoint of
    the default digits model (about 340 kB)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_full_disk_is_reported_and_a_lost_final_checkpoint_exits_5(small_disk: Path, start_daemon, cli) -> None:
    daemon = start_daemon("--state-dir", str(small_disk), "--solo", "--rounds", "4", "--log-format", "json",
                          "--set", "training.emulated_step_ms=60")
    daemon.wait_for_log('"event": "checkpoint_failed"', timeout=120)
    # The worker writes checkpoints in a thread and reports their health with its next round, so
    # status shows the failure a round after the log line; the daemon may be done by then.
    deadline = time.monotonic() + 60
    settled = False  # status showed the failure, or the daemon is gone
    while not settled and time.monotonic() < deadline:
        status = cli("status", "--state-dir", str(small_disk), "--format", "json")
        if status.returncode != 0 or daemon.process.poll() is not None:
            settled = True  # past its last round
        elif json.loads(status.stdout)["checkpoint_failures"] >= 1:
            assert "No space left" in json.loads(status.stdout)["checkpoint_error"], status.stdout
            settled = True
        else:
            time.sleep(0.2)
    assert settled, f"status never showed the failed checkpoint: {status.stdout}"
    assert daemon.wait(timeout=120) == 5, daemon.log()[-3000:]
    log = daemon.log()
    assert "not written (OSError: [Errno 28] No space left on device" in log
    assert "the final checkpoint could not be written" in log
    summary = json.loads((small_disk / "summary.json").read_text())
    assert summary["rounds"] == 4 and summary["checkpoint_failures"] >= 4, summary
    assert "No space left" in summary["checkpoint_error"]
    assert not list((small_disk / "checkpoints").glob(".*.tmp"))  # failed writes leave nothing behind
