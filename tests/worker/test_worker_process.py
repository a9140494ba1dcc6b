"""The daemon and its training worker as real processes: neither outlives the other."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from fednode.node.checkpoint import CheckpointStore
from fednode.node.errors import ExitCode

pytestmark = pytest.mark.timeout(300)

FAST = ["--set", "task.params={hidden = [32]}", "--set", "training.local_steps=5", "--set", "training.slowdown=3",
        "--solo"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _wait_for_checkpoint(daemon, round_number: int, timeout: float = 60) -> None:
    """Wait until the checkpoint of `round_number` (or later) is on disk. The daemon logs a round
    before the worker writes its checkpoint (in the background), so the log line alone does not
    say a checkpoint of that round exists yet (a kill right after "round 2" can find round 1's)."""
    deadline = time.monotonic() + timeout
    while True:
        checkpoint = CheckpointStore(daemon.state_dir).load()
        if checkpoint is not None and checkpoint.round >= round_number:
            return
        assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.log()
        time.sleep(0.05)


def _worker_of(daemon, timeout: float = 30.0) -> int:
    """The daemon's one training worker (a child just forked shows the daemon's command line
    until it execs: wait for the worker's)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = daemon.children()
        assert len(workers) == 1, workers
        try:
            if "fednode.node.worker" in Path(f"/proc/{workers[0]}/cmdline").read_text():
                return workers[0]
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, f"child {workers[0]} is not a training worker"
        time.sleep(0.1)


def test_kill_9_of_the_daemon_takes_the_worker_with_it(start_daemon) -> None:
    daemon = start_daemon(*FAST)
    daemon.wait_for_log("round 2")
    _wait_for_checkpoint(daemon, 2)
    worker = _worker_of(daemon)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=10)
    # A worker left behind would keep writing checkpoints into a state dir a restarted daemon uses.
    assert _wait_gone(worker, 10), "the training worker outlived its daemon"
    restarted = start_daemon(*FAST, "--rounds", "1000", name="node")
    restarted.wait_for_log("resumed from checkpoint")
    restarted.signal(signal.SIGTERM)
    assert restarted.wait(timeout=60) == ExitCode.OK, restarted.log()


def _round_logged(daemon) -> int:
    rounds = re.findall(r"round (\d+)[:/]", daemon.log())
    return int(rounds[-1]) if rounds else 0


def test_a_dead_worker_is_restarted_from_the_checkpoint_then_given_up_on(start_daemon) -> None:
    daemon = start_daemon(*FAST)
    daemon.wait_for_log("round 2")
    _wait_for_checkpoint(daemon, 2)
    first = _worker_of(daemon)
    os.kill(first, signal.SIGKILL)  # what the kernel's OOM killer would do to the biggest process
    daemon.wait_for_log("restarting it from the last checkpoint")
    assert "exit code -9" in daemon.log()
    before = _round_logged(daemon)
    deadline = time.monotonic() + 60
    while _round_logged(daemon) <= before + 1:  # training goes on with the new worker
        assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.log()
        time.sleep(0.1)
    second = _worker_of(daemon)
    assert second != first and not _alive(first)
    resumed = re.findall(r"resumed from checkpoint: round (\d+)", daemon.log())
    assert len(resumed) == 1 and int(resumed[0]) >= 2, resumed  # the new worker went on from there
    # A worker that keeps dying ends the daemon with a clear message instead of a restart loop.
    for death in (2, 3, 4):
        current = _worker_of(daemon)
        os.kill(current, signal.SIGKILL)
        if death == 4:
            break
        deadline = time.monotonic() + 60
        # One read of the children per check: the dead worker is reaped between two reads.
        while not ((children := daemon.children()) and len(children) == 1 and children[0] != current):
            assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.log()
            time.sleep(0.05)
    code = daemon.wait(timeout=60)
    assert code == ExitCode.INTERNAL, daemon.log()
    last = daemon.log().strip().splitlines()[-1]
    assert "died 4 times" in last and "training worker" in last, last
    assert daemon.group_members() == []
    assert CheckpointStore(daemon.state_dir).load().round >= before  # the rounds before are kept


def test_worker_start_up_errors_keep_their_exit_code_and_message(start_daemon) -> None:
    """Device, task and model are checked in the worker; the daemon exits with its verdict."""
    no_gpu = start_daemon(*FAST, "--device", "cuda:7")
    assert no_gpu.wait(timeout=120) == ExitCode.CONFIG, no_gpu.log()
    last = no_gpu.log().strip().splitlines()[-1]
    assert "cuda:7" in last and ("CPU-only build" in last or "sees no CUDA device" in last), last
    no_task = start_daemon("--solo", "--set", "task.name=fednode.node.tasks.digits:no_such_builder", name="other")
    assert no_task.wait(timeout=120) == ExitCode.TASK, no_task.log()
    assert "no_such_builder" in no_task.log()
    bad_rule = start_daemon(*FAST, "--set", 'federation.id="x"', "--set", 'aggregation.params={no_such = 1}',
                            "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]', name="rule")
    assert bad_rule.wait(timeout=120) == ExitCode.CONFIG, bad_rule.log()
    assert "invalid aggregation settings" in bad_rule.log().strip().splitlines()[-1]
    bad_attack = start_daemon(*FAST, "--set", "attack.name=no_such_attack", name="attack")
    assert bad_attack.wait(timeout=120) == ExitCode.CONFIG, bad_attack.log()
    assert "invalid attack.name" in bad_attack.log().strip().splitlines()[-1]
    for daemon in (no_gpu, no_task, bad_rule, bad_attack):
        assert daemon.group_members() == []


def test_in_a_federation_torch_and_libp2p_each_load_in_one_process_only(start_federation) -> None:
    """The point of the split: the daemon (mesh) never maps libtorch, the worker never loads
    py-libp2p (its fastecdsa extension is the marker), while they train with a federation."""
    nodes = start_federation(2, *FAST[:4], "--set", "federation.min_participants=2")
    for node in nodes:
        node.wait_for_log('"participants": 2', timeout=120)
    for node in nodes:
        worker = _worker_of(node)
        daemon_maps = Path(f"/proc/{node.pid}/maps").read_text()
        worker_maps = Path(f"/proc/{worker}/maps").read_text()
        assert "fastecdsa" in daemon_maps and "libtorch" not in daemon_maps
        assert "libtorch" in worker_maps and "fastecdsa" not in worker_maps
    for node in nodes:
        node.signal(signal.SIGTERM)
    for node in nodes:
        assert node.wait(timeout=60) == ExitCode.OK, node.log()
        assert node.group_members() == []
