"""A federation's budget lives in its signed descriptor: members that reach it report
"finished", train no more, keep serving the final model, and stay finished across restarts."""

from __future__ import annotations

import json
import signal
import time

import pytest

from fednode.node.errors import ExitCode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SMALL = ["--set", "task.params={hidden = [32]}", "--set", "training.local_steps=5",
         "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]', "--log-format", "json"]


def json_of(cli, *args: str):
    result = cli(*args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_until(predicate, timeout: float = 180.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def rounds_logged(daemon) -> list[int]:
    return [json.loads(line)["round"] for line in daemon.log().splitlines()
            if line.startswith("{") and '"event": "round"' in line]


def test_members_finish_at_the_federation_budget_and_keep_serving(start_daemon, cli, tmp_path) -> None:
    owner = start_daemon(*SMALL, name="owner")
    member = start_daemon(*SMALL, name="member")
    for daemon in (owner, member):
        json_of(cli, "status", "--state-dir", str(daemon.state_dir), "--wait")
    created = json_of(cli, "federation", "create", "budgeted", "--rounds", "4", "--min-participants", "2",
                      "--state-dir", str(owner.state_dir))
    assert created["descriptor"]["max_rounds"] == 4 and created["budget"]["max_rounds"] == 4
    token = json_of(cli, "federation", "invite", "budgeted", "--state-dir", str(owner.state_dir))["token"]
    json_of(cli, "federation", "join", token, "--state-dir", str(member.state_dir))
    for daemon in (owner, member):
        status = wait_until(lambda d=daemon: (s := json_of(cli, "status", "--state-dir", str(d.state_dir)))
                            ["state"] == "finished" and s, what="finished")
        assert status["round"] == 4, status
        shown = json_of(cli, "federation", "show", "budgeted", "--state-dir", str(daemon.state_dir))
        assert shown["finished"] is True and shown["finished_reason"] == "rounds" and shown["state"] == "finished"
    # Still running, training no more: the final model is served (export, state sync).
    time.sleep(3)  # a few announcement intervals: a member that kept training would log rounds
    assert max(rounds_logged(owner)) == 4 and max(rounds_logged(member), default=0) <= 4
    exported = json_of(cli, "model", "export", str(tmp_path / "final.pt"), "--state-dir", str(member.state_dir))
    assert exported["model_version"] >= 1
    # Restarted, the member is finished at once and trains no round.
    member.signal(signal.SIGTERM)
    assert member.wait(timeout=60) == ExitCode.OK, member.log()
    again = start_daemon(*SMALL, name="member")
    status = json_of(cli, "status", "--state-dir", str(again.state_dir), "--wait")
    assert status["state"] == "finished" and status["round"] == 4, status
    assert rounds_logged(again) == []
    for daemon in (owner, again):
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == ExitCode.OK, daemon.log()[-3000:]
