"""A daemon's life before and outside federations: idle by default, admin API first, a
bootstrap role that runs only the mesh (real `fednode start` processes)."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fednode.node.errors import ExitCode

pytestmark = pytest.mark.timeout(300)

LOCAL = ["--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]']


def wait_until(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(cli, daemon) -> dict | None:
    if daemon.process.poll() is not None:
        raise AssertionError(f"daemon exited ({daemon.process.returncode}):\n{daemon.log()[-3000:]}")
    result = cli("status", "--state-dir", str(daemon.state_dir), "--format", "json")
    return json.loads(result.stdout) if result.returncode == 0 else None


def health(daemon) -> int:
    with grpc.insecure_channel(f"unix:{daemon.state_dir / 'admin.sock'}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def test_a_node_without_a_federation_idles_without_a_worker(start_daemon, cli) -> None:
    daemon = start_daemon(*LOCAL, "--rounds", "3", "--log-format", "json")
    status = wait_until(lambda: (s := status_of(cli, daemon)) and s["state"] != "starting" and s, what="ready")
    assert status["state"] == "idle" and status["ready"] is True and status["round"] == 0
    assert status["listen_multiaddrs"], status  # it listens: it can be invited, or create a federation
    assert daemon.children() == [], "an idle node runs no training worker"
    assert health(daemon) == health_pb2.HealthCheckResponse.SERVING
    # --rounds belongs to solo training and launch: the daemon says so and does not stop on it.
    assert "apply to --solo training and open federations" in daemon.log()
    assert '"event": "round"' not in daemon.log()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == ExitCode.OK, daemon.log()
    summary = json.loads((daemon.state_dir / "summary.json").read_text())
    assert summary["rounds"] == 0 and summary["history"] == []


SLOW_TASK = """
import time
from pathlib import Path

from fednode.node.tasks.digits import build_task as digits


def build_task(context, release="", **params):
    while not Path(release).exists():  # the test decides when the worker is ready
        time.sleep(0.05)
    return digits(context, hidden=[32], **params)
"""


def test_status_says_starting_with_its_phase_and_health_waits_for_ready(start_daemon, cli, tmp_path: Path) -> None:
    (tmp_path / "slowtask.py").write_text(textwrap.dedent(SLOW_TASK))
    release = tmp_path / "release"
    daemon = start_daemon("--solo", "--set", "task.name=slowtask:build_task", "--set",
                          f'task.params={{release = "{release}"}}', "--set", "training.local_steps=5",
                          env={"PYTHONPATH": str(tmp_path)})
    first = wait_until(lambda: status_of(cli, daemon), timeout=60, what="the admin API")
    # The admin API answers while the worker is still building its task.
    assert first["state"] == "starting" and first["phase"] in ("identity", "worker"), first
    assert first["ready"] is False
    assert wait_until(lambda: status_of(cli, daemon)["phase"] == "worker", what="the worker phase")
    assert health(daemon) == health_pb2.HealthCheckResponse.NOT_SERVING
    release.touch()
    wait_until(lambda: status_of(cli, daemon)["state"] == "training", what="training")
    assert health(daemon) == health_pb2.HealthCheckResponse.SERVING
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == ExitCode.OK, daemon.log()


def test_a_bootstrap_node_runs_only_the_mesh_and_prints_its_address(start_daemon, cli) -> None:
    boot = start_daemon(*LOCAL, "--role", "bootstrap", "--log-format", "json", name="boot")
    status = wait_until(lambda: (s := status_of(cli, boot)) and s["ready"] and s, what="ready")
    assert status["state"] == "serving" and status["role"] == "bootstrap", status
    assert boot.children() == [], "a bootstrap node runs no training worker"
    assert "libtorch" not in Path(f"/proc/{boot.pid}/maps").read_text()
    printed = next(json.loads(line) for line in boot.log().splitlines() if '"bootstrap_ready"' in line)
    address = printed["multiaddrs"][0]
    assert address in printed["msg"] and address.endswith(status["peer_id"])
    # Federation commands are for members.
    refused = cli("federation", "create", "x", "--state-dir", str(boot.state_dir))
    assert refused.returncode == ExitCode.REQUEST_FAILED and "bootstrap node" in refused.stderr
    # A member started with that address reaches it.
    member = start_daemon(*LOCAL, "--set", f'mesh.bootstrap=["{address}"]', name="member")
    wait_until(lambda: json.loads(cli("peers", "--state-dir", str(member.state_dir), "--format", "json").stdout or "[]")
               and any(p["peer_id"] == status["peer_id"]
                       for p in json.loads(cli("peers", "--state-dir", str(member.state_dir), "--format", "json").stdout)),
               what="the member connected to the bootstrap node")
    for daemon in (member, boot):
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == ExitCode.OK, daemon.log()[-2000:]
