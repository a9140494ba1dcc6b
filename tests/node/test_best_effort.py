"""Best-effort work says what it swallowed, and audit records that cannot be written are
reported (log error, summary.json), not lost silently."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fednode.node.config import FednodeConfig
from fednode.node.daemon import Daemon, RunSummary
from fednode.node.logs import best_effort
from fednode.node.membership.audit import AuditLog
from fednode.proto.v1 import worker_pb2


def test_best_effort_logs_what_failed_and_why_then_only_every_power_of_ten(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("fednode.test.best_effort")
    with caplog.at_level(logging.WARNING, logger=log.name):
        for _ in range(12):
            with best_effort(log, "closing the test sink"):
                raise OSError("disk gone")
        with best_effort(log, "something that works"):
            pass
    messages = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert messages == ["closing the test sink failed: disk gone", "closing the test sink failed: disk gone (10 times so far)"]


def test_best_effort_does_not_swallow_cancellation_or_exit() -> None:
    log = logging.getLogger("fednode.test.best_effort")
    with pytest.raises(KeyboardInterrupt), best_effort(log, "anything"):
        raise KeyboardInterrupt


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
def test_an_audit_log_on_a_full_disk_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    node = Daemon(FednodeConfig())
    node.summary = RunSummary(peer_id="p", version="v", task="t", device="cpu", state_dir="/x", started_unix=0.0)
    node.audit = AuditLog(Path("/dev/full"))  # every write fails with ENOSPC, as on a full disk
    with caplog.at_level(logging.ERROR, logger="fednode.daemon"):
        node._on_runner_event(worker_pb2.RunnerEvent(kind="update_accepted", peer_id="peer", round=3,
                                                     payload_sha256=b"\x01" * 32))
        node.record_audit("member_joined", "accepted", actor={"id": "peer"}, event={"federation_id": "f"})
    assert node.audit_failures == 2
    assert node.summary.audit_failures == 2
    assert "No space left on device" in node.summary.audit_error and node.summary.audit_error.startswith("member_joined")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("audit log: writing the update record failed" in m and "No space left" in m for m in errors), errors
    assert any("audit log: writing the member_joined record failed" in m for m in errors), errors
