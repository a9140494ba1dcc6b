"""`fednode start` as a real process: training, graceful stop, resume, and clear start-up errors."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path

import pytest

from fednode.node.checkpoint import CheckpointStore
from fednode.node.errors import ExitCode

pytestmark = pytest.mark.timeout(300)

# Small and slow enough that a signal lands mid-training: tiny model, many rounds.
FAST = ["--set", "task.params={hidden = [32]}", "--set", "training.local_steps=5", "--solo"]


def test_trains_default_task_to_target_and_writes_summary(start_daemon) -> None:
    daemon = start_daemon("--solo", "--rounds", "60", "--target-accuracy", "0.9", "--log-format", "json")
    assert daemon.wait(timeout=240) == ExitCode.OK, daemon.log()
    summary = json.loads((daemon.state_dir / "summary.json").read_text())
    assert summary["accuracy"] >= 0.9
    assert summary["stop_reason"] == "target_accuracy"
    assert summary["device"] == "cpu"
    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    rounds = [r for r in records if "round" in r and "accuracy" in r]
    assert rounds, f"--log-format json must produce JSON round records:\n{daemon.log()}"
    assert rounds[-1]["accuracy"] == pytest.approx(summary["accuracy"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_with_final_checkpoint_and_nothing_left(start_daemon, signum: int) -> None:
    daemon = start_daemon(*FAST, "--set", "training.slowdown=3")
    daemon.wait_for_log("round 2")
    # Two processes: the daemon and the training worker it started, nothing else.
    workers = daemon.children()
    assert len(workers) == 1 and sorted(daemon.group_members()) == sorted([daemon.pid, *workers])
    assert "fednode.node.worker" in Path(f"/proc/{workers[0]}/cmdline").read_text()
    daemon_maps = Path(f"/proc/{daemon.pid}/maps").read_text()
    worker_maps = Path(f"/proc/{workers[0]}/maps").read_text()
    # torch lives in the worker only; the digits split is computed out of process, so
    # scikit-learn (and scipy, ~76 MB resident) loads into neither.
    assert "libtorch" not in daemon_maps and "libtorch" in worker_maps
    for mapped in (daemon_maps, worker_maps):
        assert "/scipy" not in mapped and "/sklearn" not in mapped
    daemon.signal(signum)
    started = time.monotonic()
    code = daemon.wait(timeout=30)
    elapsed = time.monotonic() - started
    assert code == ExitCode.OK, daemon.log()
    assert elapsed < 20, f"graceful stop took {elapsed:.1f} s"
    assert daemon.group_members() == []
    summary = json.loads((daemon.state_dir / "summary.json").read_text())
    assert summary["stop_reason"] == signal.Signals(signum).name
    checkpoint = CheckpointStore(daemon.state_dir).load()
    assert checkpoint is not None and checkpoint.round == summary["rounds"] >= 2
    with open(daemon.state_dir / "daemon.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: raises if still held


def test_restart_keeps_identity_and_resumes_from_checkpoint(start_daemon) -> None:
    first = start_daemon(*FAST, "--rounds", "3", name="node")
    assert first.wait(timeout=120) == ExitCode.OK, first.log()
    peer_id = json.loads((first.state_dir / "summary.json").read_text())["peer_id"]
    second = start_daemon(*FAST, "--rounds", "5", name="node")
    assert second.wait(timeout=120) == ExitCode.OK, second.log()
    summary = json.loads((second.state_dir / "summary.json").read_text())
    assert summary["peer_id"] == peer_id
    assert summary["resumed_from_round"] == 3
    assert [r["round"] for r in summary["history"]] == [4, 5]
    # Each round carries both processes' CPU clocks and when it ended (bench/mesh.py derives the
    # CPU a round costs from them); the restarted processes count from their own start.
    fourth, fifth = summary["history"]
    for clock in ("daemon_cpu_seconds", "worker_cpu_seconds", "finished_at"):
        assert 0 < fourth[clock] < fifth[clock], (clock, fourth, fifth)
    assert fifth["finished_at"] <= time.time()


def test_kill_9_mid_run_leaves_a_loadable_checkpoint(start_daemon) -> None:
    daemon = start_daemon(*FAST, "--set", "training.local_steps=1")
    daemon.wait_for_log("round 5")
    time.sleep(0.3)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=10)
    checkpoint = CheckpointStore(daemon.state_dir).load()
    assert checkpoint is not None and checkpoint.round >= 5
    restarted = start_daemon(*FAST, "--rounds", str(checkpoint.round + 1), name="node")
    assert restarted.wait(timeout=120) == ExitCode.OK, restarted.log()
    assert "resumed from checkpoint" in restarted.log()


def test_second_daemon_on_same_state_dir_is_refused(start_daemon) -> None:
    first = start_daemon(*FAST, name="shared")
    first.wait_for_log("round 1")
    second = start_daemon(*FAST, name="shared")
    assert second.wait(timeout=60) == ExitCode.STATE_DIR
    assert f"pid {first.pid}" in second.log()
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == ExitCode.OK


def test_bad_config_exits_3_with_one_line(start_daemon, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlr = \"fast\"\n")
    daemon = start_daemon("--config", str(bad))
    assert daemon.wait(timeout=60) == ExitCode.CONFIG
    lines = daemon.log().strip().splitlines()
    assert len(lines) == 1 and "training.lr" in lines[0], lines


def test_unreadable_key_exits_4_with_one_line(start_daemon, tmp_path: Path) -> None:
    state = tmp_path / "node"
    state.mkdir()
    (state / "identity.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    os.chmod(state / "identity.key", 0o600)
    daemon = start_daemon(*FAST)
    assert daemon.wait(timeout=60) == ExitCode.IDENTITY
    errors = [line for line in daemon.log().splitlines() if "error" in line]
    assert len(errors) == 1 and "identity.key" in errors[0]


def test_unknown_task_exits_6(start_daemon) -> None:
    daemon = start_daemon("--solo", "--set", "task.name=no_such_module:build")
    assert daemon.wait(timeout=60) == ExitCode.TASK
    assert "no_such_module" in daemon.log()
