"""Bad input to the admin API and the launcher: one clear line, the documented status or exit
code, nothing started, nothing changed (issue 22, "input checks")."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from fednode.node.errors import ExitCode
from fednode.proto.v1 import admin_pb2, admin_pb2_grpc

pytestmark = pytest.mark.timeout(300)

LOCAL = ["--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]', "--set", "task.params={hidden = [32]}"]


def _ready(cli, daemon) -> None:
    result = cli("status", "--state-dir", str(daemon.state_dir), "--wait", "--timeout", "120", "--format", "json")
    assert result.returncode == 0, result.stderr + daemon.log()[-2000:]


def test_bad_admin_requests_are_invalid_argument_and_change_nothing(start_daemon, cli) -> None:
    daemon = start_daemon(*LOCAL)
    _ready(cli, daemon)
    with grpc.insecure_channel(f"unix:{daemon.state_dir / 'admin.sock'}") as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        refused = {
            "unknown codec": admin_pb2.CreateFederationRequest(name="x", codec="zip"),
            "unknown rule": admin_pb2.CreateFederationRequest(name="x", aggregator="nope"),
            "huge min_participants": admin_pb2.CreateFederationRequest(name="x", min_participants=2**32 - 1),
            "empty name": admin_pb2.CreateFederationRequest(name=""),
            "rule params not an object": admin_pb2.CreateFederationRequest(name="x", aggregator_params_json="[1]"),
            "past end time": admin_pb2.CreateFederationRequest(name="x", until_unix_ms=1000),
            "accuracy above 1": admin_pb2.CreateFederationRequest(name="x", target_accuracy=1.5),
            # Sync rounds work out per round what the rule needs; FedCompass groups wait for
            # min_participants, which must cover the rule.
            "rule minimum above a fedcompass min_participants": admin_pb2.CreateFederationRequest(
                name="x", aggregator="krum", aggregator_params_json='{"f": 2}', min_participants=3,
                schedule="fedcompass"),
            "unknown exchange": admin_pb2.CreateFederationRequest(name="x", exchange="ring"),
            "butterfly with fedcompass": admin_pb2.CreateFederationRequest(
                name="x", exchange="butterfly", schedule="fedcompass"),
            "gas over the butterfly without within_parts": admin_pb2.CreateFederationRequest(
                name="x", exchange="butterfly", aggregator="gas", aggregator_params_json='{"f": 1}',
                min_participants=4),
        }
        for what, request in refused.items():
            with pytest.raises(grpc.RpcError) as info:
                stub.CreateFederation(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, info.value.details())
            assert "\n" not in info.value.details(), what
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateInvite(admin_pb2.CreateInviteRequest(federation_id="x" * 8, ttl_seconds=2**64 - 1), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ttl" in info.value.details()
        # A request that does not parse as its message type.
        raw = channel.unary_unary("/fednode.v1.AdminService/CreateFederation",
                                  request_serializer=lambda data: data, response_deserializer=lambda data: data)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff", timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        # Nothing was created, nothing started, and the daemon saw no bug.
        assert stub.ListFederations(admin_pb2.ListFederationsRequest(), timeout=30).federations == []
        assert stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=30).state == "idle"
    deadline = time.monotonic() + 60
    while daemon.children() and time.monotonic() < deadline:  # a worker started to check settings
        time.sleep(0.2)
    assert daemon.children() == [], "an idle node keeps no worker after a refused request"
    assert "Traceback" not in daemon.log() and "admin call failed" not in daemon.log()
    # The same through the CLI: one line, exit code 9 (the daemon refused), nothing created.
    for args in (["--codec", "zip"], ["--rule-params", "f = ["], ["--until", "yesterday"]):
        result = cli("federation", "create", "lab", *args, "--state-dir", str(daemon.state_dir))
        assert result.returncode in (ExitCode.REQUEST_FAILED, ExitCode.CONFIG), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    listed = cli("federation", "list", "--state-dir", str(daemon.state_dir), "--format", "json")
    assert json.loads(listed.stdout) == []


@pytest.mark.parametrize(("args", "expected"), [
    (["--nodes", "3", "--rule", "krum", "--f", "2"], "needs at least 7 updates"),
    (["--nodes", "2", "--byzantine", "3", "--attack", "ipm"], "leaves no honest node"),
    (["--nodes", "2", "--byzantine", "1", "--attack", "nope"], "unknown attack 'nope'"),
    (["--nodes", "2", "--codec", "zip"], "--codec zip"),
    (["--nodes", "2", "--min-participants", "3"], "no round could close"),
])
def test_launch_refuses_what_cannot_train_before_starting_anything(cli, tmp_path: Path, args: list[str],
                                                                   expected: str) -> None:
    started = time.monotonic()
    result = cli("launch", *args, "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == ExitCode.CONFIG, result.stdout + result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists(), "nothing is started"
    assert time.monotonic() - started < 60
