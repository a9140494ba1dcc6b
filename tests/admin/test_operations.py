"""Operating a real daemon: `fednode logs [-f]` on the WatchEvents stream, `fednode health`,
the plaintext health listener, and Prometheus metrics that survive a restart."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fednode.node.errors import ExitCode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ALONE_IN_A_FEDERATION = ["--log-format", "json", "--set", 'federation.id="ops-test"', "--set", "federation.min_participants=1",
                         "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]', "--set", "task.params={hidden = [16]}",
                         "--set", "training.local_steps=5", "--set", "metrics.port=0"]


def metrics_port(daemon) -> int:
    text = daemon.wait_for_log('"event": "metrics"', timeout=180)
    for line in text.splitlines():
        if '"event": "metrics"' in line:
            return int(json.loads(line)["port"])
    raise AssertionError(text)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:  # not serving yet, or a loaded machine dropped the connection: ask again
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_until(predicate, timeout: float = 180.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_metrics_are_labelled_have_process_series_no_created_and_survive_a_restart(start_daemon, cli) -> None:
    first = start_daemon(*ALONE_IN_A_FEDERATION, "--set", "training.slowdown=10", name="node")
    port = metrics_port(first)
    samples = wait_until(lambda: (s := scrape(port)) and s.get(("fednode_round", (("federation", "ops-test"),)), 0) >= 2
                         and s, what="two rounds in the metrics")
    info = [labels for name, labels in samples if name == "fednode_node_info"]
    assert len(info) == 1
    labels = dict(info[0])
    assert labels["version"] and labels["peer_id"].startswith("12D3KooW") and labels["device"] == "cpu"
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)
    assert not [name for name, _ in samples if name.endswith("_created")]
    assert cli("stop", "--state-dir", str(first.state_dir)).returncode == 0
    assert first.wait(timeout=120) == ExitCode.OK, first.log()
    summary = json.loads((first.state_dir / "summary.json").read_text())
    # Restarted (slowly training, so no new round comes first), the gauges show the checkpoint.
    # Each local step now takes 5 s: no new round comes before the scrape.
    second = start_daemon(*ALONE_IN_A_FEDERATION, "--set", "training.emulated_step_ms=5000", name="node")
    port = metrics_port(second)
    federation = (("federation", "ops-test"),)
    # The metrics port is up at start; the gauges are restored once the worker has read its checkpoint.
    restored = wait_until(lambda: (s := scrape(port)) and ("fednode_round", federation) in s and s,
                          what="the restarted node's restored metrics")
    assert restored[("fednode_round", federation)] == summary["rounds"] >= 2
    assert restored[("fednode_accuracy", federation)] == pytest.approx(summary["accuracy"])
    assert restored[("fednode_loss", (("federation", "ops-test"), ("split", "eval")))] == pytest.approx(summary["loss"])
    assert restored[("fednode_rounds_total", federation)] == 0  # counters count this process's rounds


def test_logs_tail_follow_json_and_health(start_daemon, cli, tmp_path: Path) -> None:
    daemon = start_daemon(*ALONE_IN_A_FEDERATION, "--set", "training.slowdown=4",
                          "--set", "admin.health_listen=\"127.0.0.1:0\"", name="node")
    state = ["--state-dir", str(daemon.state_dir)]
    # `fednode health` fails cleanly before the daemon is up, then reports SERVING.
    down = cli("health", "--state-dir", str(tmp_path / "nowhere"))
    assert down.returncode == ExitCode.NO_DAEMON and "UNREACHABLE" in down.stdout
    wait_until(lambda: cli("health", *state).returncode == 0, what="SERVING")
    healthy = json.loads(cli("health", *state, "--format", "json").stdout)
    assert healthy["status"] == "SERVING" and healthy["address"].startswith("unix:")
    # The health listener answers a plain gRPC health probe on TCP, and serves nothing else.
    text = daemon.wait_for_log("gRPC health on TCP port")
    port = int(re.search(r"gRPC health on TCP port (\d+)", text).group(1))
    probe = cli("health", "--address", f"127.0.0.1:{port}")
    assert probe.returncode == 0 and probe.stdout.startswith("SERVING"), probe.stdout + probe.stderr
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        from fednode.proto.v1 import admin_pb2, admin_pb2_grpc

        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminServiceStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # Recent events: rounds, as JSON lines and as text.
    def rounds_logged():
        shown = cli("logs", *state, "--format", "json", "--kind", "round")
        assert shown.returncode == 0, shown.stderr
        return [json.loads(line) for line in shown.stdout.splitlines()] if shown.stdout.count("\n") >= 2 else None

    events = wait_until(rounds_logged, what="two round events")
    assert all(e["kind"] == "round" and e["federation_id"] == "ops-test" for e in events)
    assert [e["round"] for e in events] == sorted(e["round"] for e in events)
    assert events[0]["time"].endswith("Z") and 0 < events[-1]["accuracy"] <= 1
    human = cli("logs", *state, "--tail", "1")
    assert human.returncode == 0 and len(human.stdout.splitlines()) == 1 and "round" in human.stdout
    # -f follows: a round that has not happened yet arrives, then the stream ends with the daemon.
    follower = subprocess.Popen([sys.executable, "-m", "fednode.cli.app", "logs", "-f", "--tail", "0", *state,
                                 "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = follower.stdout.readline()  # blocks until the next event
        newer = json.loads(line)
        assert newer["kind"] == "round" and newer["round"] > events[-1]["round"], newer
        assert cli("stop", *state).returncode == 0
        _out, err_text = follower.communicate(timeout=120)
        assert follower.returncode == 0, err_text
        assert "the daemon stopped" in err_text
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=10)
    assert daemon.wait(timeout=120) == ExitCode.OK
    gone = cli("logs", *state)
    assert gone.returncode == ExitCode.NO_DAEMON and "fednode start" in gone.stderr
