"""A member whose training is a torch.distributed job (training.world_size > 1), on CPU with gloo:
real rank processes, real daemons, real kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from fednode.node.config import FednodeConfig
from fednode.node.errors import ExitCode

pytestmark = pytest.mark.timeout(300)

TINY = ["--set", "task.params={hidden = [32]}", "--set", "training.local_steps=5"]
# float32 sums in another order (DDP averages two half-batch gradients instead of one mean): the
# parameters of world_size 2 and 1 after 30 steps differ by ~3e-8 here; 1e-5 leaves room for
# other CPUs' vector widths and still fails on any real difference (a wrong share or batch).
PARAMETER_TOLERANCE = 1e-5


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_until(condition, timeout: float, what: str, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s\n{log()}"
        time.sleep(0.1)


@pytest.mark.parametrize(("settings", "message"), [
    ({"world_size": 3}, "batch_size (32) must be a multiple of training.world_size (3)"),
    ({"world_size": 2, "nproc_per_node": 3}, "must equal training.nproc_per_node (3) x training.nnodes (1)"),
    ({"world_size": 4, "nnodes": 2}, "needs training.rdzv_endpoint"),
    ({"world_size": 4, "nnodes": 2, "rdzv_endpoint": "10.0.0.5:0"}, "needs a fixed port"),
    ({"world_size": 2, "rdzv_endpoint": "no-port"}, 'must be "host:port"'),
    ({"world_size": 3, "nnodes": 2, "batch_size": 36, "rdzv_endpoint": "h:1"}, "not a multiple of training.nnodes"),
    ({"world_size": 2, "rank_timeout": 3}, "training.rank_timeout (3) must be 0 (off) or at least 10 s"),
    ({"world_size": 2, "parallel": "zero"}, "parallel"),
])
def test_a_job_that_cannot_work_is_refused_with_what_to_change(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FednodeConfig(training=settings)


def test_world_sizes_that_work_are_accepted() -> None:
    assert FednodeConfig(training={"world_size": 2}).training.local_processes == 2
    spread = FednodeConfig(training={"world_size": 4, "nnodes": 2, "rdzv_endpoint": "[::1]:29400"}).training
    assert spread.local_processes == 2


JOB = textwrap.dedent('''
    import sys, torch, torch.distributed
    from fednode.node.config import FednodeConfig
    from fednode.node.model import flatten_parameters
    from fednode.node.worker.distributed import DistributedTrainer, RankGroup
    from fednode.node.worker.process import build_local_training, device_for_rank

    results = {}
    for label, world_size, parallel in (("one", 1, "ddp"), ("ddp", 2, "ddp"), ("fsdp", 2, "fsdp")):
        config = FednodeConfig(task={"params": {"hidden": [32]}},
                               training={"world_size": world_size, "batch_size": 32, "parallel": parallel})
        device = device_for_rank(config, 0)
        task, _, trainer = build_local_training(config, device)
        torch.manual_seed(0)
        model, start = task.model_factory(), None
        start = flatten_parameters(model)
        group = None
        if world_size > 1:
            group = RankGroup(config)
            trainer = DistributedTrainer(trainer, group.join(device), task.model_factory)
            health = group.health()
        losses = [trainer.train_round(model, 10).mean_loss for _ in range(3)]
        # A round that rank 0 stops at once trains nothing, on any rank.
        import threading
        stop = threading.Event(); stop.set()
        stopped = trainer.train_round(model, 10, stop).steps
        results[label] = (flatten_parameters(model), start, losses, stopped)
        if group is not None:
            ranks = [(r["rank"], r["pid"]) for r in group.health()]
            group.close()
            torch.distributed.destroy_process_group()
            saved_ranks, saved_health = (ranks, health) if label == "ddp" else (saved_ranks, saved_health)
    torch.save({"results": results, "ranks": saved_ranks, "health": saved_health}, sys.argv[1])
''')


def test_world_size_2_trains_the_model_one_process_trains(tmp_path: Path) -> None:
    """Same global batch (32), same steps, same seed: world_size 2 (each rank computes 16 examples
    of each batch, DDP averages the gradients) ends with the parameters of one process; so does
    world_size 2 with parallel = "fsdp" (each rank holds half of every parameter, the gradients are
    reduce-scattered, the result gathered whole on rank 0)."""
    import torch

    out = tmp_path / "result.pt"
    process = subprocess.Popen([sys.executable, "-c", JOB, str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # its rank 1 dies with it (PR_SET_PDEATHSIG)
            process.wait()
    assert process.returncode == 0, output
    saved = torch.load(out)
    (one, start, losses_one, stopped_one), (two, start_two, losses_two, stopped_two) = (
        saved["results"]["one"], saved["results"]["ddp"])
    assert torch.equal(start, start_two)
    assert (one - start).abs().max() > 0.01  # it trained
    assert (one - two).abs().max() <= PARAMETER_TOLERANCE, (one - two).abs().max()
    assert losses_two == pytest.approx(losses_one, rel=1e-5)  # the job's mean loss over both halves
    assert stopped_one == stopped_two == 0
    sharded, start_sharded, losses_sharded, stopped_sharded = saved["results"]["fsdp"]
    assert torch.equal(start, start_sharded)
    assert (one - sharded).abs().max() <= PARAMETER_TOLERANCE, (one - sharded).abs().max()
    assert losses_sharded == pytest.approx(losses_one, rel=1e-5)
    assert stopped_sharded == 0
    assert [rank for rank, _ in saved["ranks"]] == [0, 1]
    rank_one_pid = saved["ranks"][1][1]
    assert rank_one_pid > 0 and not _alive(rank_one_pid)  # close() ended it
    # Its heartbeat may not have arrived yet right after the join; its process was there.
    assert saved["health"][1]["state"] in ("running", "starting"), saved["health"]


def _status(daemon) -> dict:
    """GetStatus over the daemon's admin socket, in this process (a CLI run per poll costs seconds
    of a loaded CPU): world size and ranks."""
    import grpc

    from fednode.proto.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(f"unix:{daemon.state_dir}/admin.sock") as channel:
        reply = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=30)
    return {"world_size": reply.world_size,
            "ranks": [{"rank": r.rank, "pid": r.pid, "state": r.state} for r in reply.ranks]}


def _rounds_logged(daemon) -> int:
    return max([int(n) for n in re.findall(r'"round": (\d+)', daemon.log())] or [0])


def test_kill_9_of_rank_1_mid_training_restarts_the_job_from_the_checkpoint(start_daemon, cli) -> None:
    """A solo member with world_size 2: status shows both ranks; kill -9 of rank 1 ends the job,
    the daemon restarts its worker (and with it rank 1) from the last checkpoint, training goes
    on, and a stop leaves no rank behind."""
    daemon = start_daemon(*TINY, "--solo", "--set", "training.world_size=2", "--set", "training.slowdown=3",
                          "--set", "metrics.port=0", "--log-format", "json")
    _wait_until(lambda: _rounds_logged(daemon) >= 2, 120, "round 2", daemon.log)

    def ranks_running() -> list[dict]:
        status = _status(daemon)
        ranks = status.get("ranks", [])
        return ranks if len(ranks) == 2 and all(r.get("state") == "running" for r in ranks) else []

    _wait_until(ranks_running, 60, "both ranks running in status", daemon.log)
    shown = cli("status", "--state-dir", str(daemon.state_dir), "--format", "json")
    status = json.loads(shown.stdout)
    assert status["world_size"] == 2
    first = {r["rank"]: r["pid"] for r in status["ranks"]}
    assert first[0] != first[1] and _alive(first[1])
    human = cli("status", "--state-dir", str(daemon.state_dir))
    assert "2 processes" in human.stdout and "rank 1: running" in human.stdout, human.stdout
    port = next(json.loads(line)["port"] for line in daemon.log().splitlines()
                if line.startswith("{") and '"event": "metrics"' in line)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "fednode_training_world_size 2.0" in metrics
    assert 'fednode_training_rank_up{rank="1"} 1.0' in metrics, metrics

    os.kill(first[1], signal.SIGKILL)
    daemon.wait_for_log("restarting it from the last checkpoint", timeout=60)
    assert "rank_failed" in daemon.log()
    _wait_until(lambda: not _alive(first[0]), 30, "the old rank 0 gone", daemon.log)
    before = _rounds_logged(daemon)
    _wait_until(lambda: _rounds_logged(daemon) >= before + 2, 120, "two more rounds", daemon.log)
    assert re.search(r"resumed from checkpoint: round \d+", daemon.log())
    _wait_until(ranks_running, 60, "both new ranks running", daemon.log)
    second = {r["rank"]: r["pid"] for r in _status(daemon)["ranks"]}
    assert second[1] != first[1] and second[0] != first[0]

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == ExitCode.OK, daemon.log()
    _wait_until(lambda: not any(_alive(pid) for pid in second.values()), 30, "every rank gone")


def _events(daemon, name: str) -> list[dict]:
    return [json.loads(line) for line in daemon.log().splitlines()
            if line.startswith("{") and f'"event": "{name}"' in line]


def test_a_hung_rank_is_found_by_its_heartbeat_and_the_job_restarts(start_daemon) -> None:
    """SIGSTOP of rank 1 (alive, silent): after training.rank_timeout without its heartbeat, rank 0
    names it and how long it was silent, ends the job, and the daemon restarts it from the last
    checkpoint with new ranks; training goes on (no 600 s collective timeout). The job is sharded
    (parallel = fsdp), so this also runs FSDP in a real daemon: rounds, checkpoint, resume."""
    timeout = 10
    daemon = start_daemon(*TINY, "--solo", "--set", "training.world_size=2", "--set", "training.slowdown=3",
                          "--set", f"training.rank_timeout={timeout}", "--set", 'training.parallel="fsdp"',
                          "--log-format", "json")
    stopped = 0
    try:
        _wait_until(lambda: _rounds_logged(daemon) >= 2, 120, "round 2", daemon.log)

        def ranks_running() -> list[dict]:
            ranks = _status(daemon)["ranks"]
            return ranks if len(ranks) == 2 and all(r["state"] == "running" for r in ranks) else []

        _wait_until(ranks_running, 60, "both ranks running in status", daemon.log)
        first = {r["rank"]: r["pid"] for r in _status(daemon)["ranks"]}
        stopped = first[1]
        os.kill(stopped, signal.SIGSTOP)
        stopped_at = time.monotonic()
        daemon.wait_for_log("restarting it from the last checkpoint", timeout=180)
        noticed_after = time.monotonic() - stopped_at
        hung = _events(daemon, "rank_hung")
        assert len(hung) == 1, daemon.log()
        assert not _events(daemon, "rank_failed"), daemon.log()  # one reason, not the kill it caused
        assert hung[0]["rank"] == 1 and hung[0]["silent_seconds"] >= timeout, hung  # rounded to 0.1 s
        assert f"rank 1 of the training job (pid {stopped} on " in hung[0]["msg"], hung
        assert "sent no heartbeat for" in hung[0]["msg"] and "rank_timeout = 10 s" in hung[0]["msg"], hung
        assert noticed_after < 300, noticed_after  # the heartbeat, not the 600 s collective timeout
        _wait_until(lambda: not _alive(stopped), 30, "the stopped rank killed with its job", daemon.log)
        _wait_until(lambda: not _alive(first[0]), 30, "the old rank 0 gone", daemon.log)
        before = _rounds_logged(daemon)
        _wait_until(lambda: _rounds_logged(daemon) >= before + 2, 180, "two more rounds", daemon.log)
        assert re.search(r"resumed from checkpoint: round \d+", daemon.log())
        _wait_until(ranks_running, 60, "both new ranks running", daemon.log)
        second = {r["rank"]: r["pid"] for r in _status(daemon)["ranks"]}
        assert second[1] != first[1] and second[0] != first[0]
        assert len(_events(daemon, "rank_hung")) == 1  # the new job is healthy
        assert all(e["parallel"] == "fsdp" for e in _events(daemon, "job_started")), daemon.log()
        assert len(_events(daemon, "job_started")) == 2
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == ExitCode.OK, daemon.log()
        _wait_until(lambda: not any(_alive(pid) for pid in second.values()), 30, "every rank gone")
    finally:
        if stopped and _alive(stopped):
            os.kill(stopped, signal.SIGCONT)
            os.kill(stopped, signal.SIGKILL)


def test_a_federation_with_a_member_of_world_size_2_trains_as_usual(tmp_path: Path) -> None:
    """`fednode launch --node-set 0:training.world_size=2`: two members, one a job of two
    processes; both reach the accuracy the other federation tests ask, with the same model."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fednode.cli.app", "launch", "--nodes", "2", "--rounds", "8", "--out", str(out),
               "--set", "task.params={hidden = [64]}", "--set", "training.local_steps=10",
               "--node-set", "0:training.world_size=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=280)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # daemons and ranks die with it (PR_SET_PDEATHSIG)
            process.wait()
    logs = "".join(p.read_text()[-3000:] for p in sorted(out.glob("node-*.log")))
    assert process.returncode == 0, output + logs
    summary = json.loads((out / "summary.json").read_text())
    for node in summary["nodes"]:
        assert node["exit_code"] == 0 and node["rounds"] == 8, node
        assert node["accuracy"] >= 0.85, node
    assert len({node["accuracy"] for node in summary["nodes"]}) == 1
    assert "training job: 2 processes" in (out / "node-0.log").read_text()
    assert "training job" not in (out / "node-1.log").read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_job_across_two_hosts_joins_through_the_rendezvous_endpoint(start_daemon, cli, tmp_path: Path) -> None:
    """nnodes = 2 on one machine: the daemon's rank 0 hosts the rendezvous on rdzv_endpoint, a
    host launcher (`python -m fednode.node.worker.rank --node-rank 1 ...`) brings rank 1; training
    runs, status shows the launcher's rank; when the daemon stops, the launcher waits to rejoin and
    stops cleanly on SIGTERM."""
    port = _free_port()
    daemon = start_daemon(*TINY, "--solo", "--set", "training.world_size=2", "--set", "training.nnodes=2",
                          "--set", f'training.rdzv_endpoint="127.0.0.1:{port}"', "--set", "training.slowdown=3",
                          "--log-format", "json")
    launcher_log = tmp_path / "host-1.log"
    with open(launcher_log, "w") as out:
        launcher = subprocess.Popen([sys.executable, "-m", "fednode.node.worker.rank", "--node-rank", "1", "--nnodes",
                                     "2", "--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until(lambda: _rounds_logged(daemon) >= 2, 120, "round 2", daemon.log)
        log = daemon.log()
        assert "training job: 2 processes (1 on this host, 2 host(s))" in log
        assert "2 training processes" in log
        _wait_until(lambda: any(r.get("rank") == 1 and r.get("state") == "running"
                                for r in _status(daemon)["ranks"]), 60, "rank 1 running", daemon.log)
        rank_one = next(r for r in _status(daemon)["ranks"] if r.get("rank") == 1)["pid"]
        assert Path(f"/proc/{rank_one}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(launcher.pid)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == ExitCode.OK, daemon.log()
        _wait_until(lambda: "joining its next run" in launcher_log.read_text(), 60, "the launcher waiting to rejoin",
                    launcher_log.read_text)
        assert not _alive(rank_one)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0, launcher_log.read_text()
        assert "host 1: stopped" in launcher_log.read_text()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def test_a_hung_rank_of_another_host_is_replaced_when_the_job_restarts(start_daemon, tmp_path: Path) -> None:
    """nnodes = 2: SIGSTOP of the host launcher's rank. Rank 0 finds it by its heartbeat and the
    daemon restarts the job; the launcher sees the run end, kills its stopped rank and starts a
    new one, which joins the new run: training goes on with both hosts."""
    port = _free_port()
    daemon = start_daemon(*TINY, "--solo", "--set", "training.world_size=2", "--set", "training.nnodes=2",
                          "--set", f'training.rdzv_endpoint="127.0.0.1:{port}"', "--set", "training.slowdown=3",
                          "--set", "training.rank_timeout=10", "--log-format", "json")
    launcher_log = tmp_path / "host-1.log"
    with open(launcher_log, "w") as out:
        launcher = subprocess.Popen([sys.executable, "-m", "fednode.node.worker.rank", "--node-rank", "1", "--nnodes",
                                     "2", "--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stopped = 0
    try:
        _wait_until(lambda: _rounds_logged(daemon) >= 2, 120, "round 2", daemon.log)
        _wait_until(lambda: any(r["rank"] == 1 and r["state"] == "running" for r in _status(daemon)["ranks"]), 60,
                    "rank 1 running", daemon.log)
        stopped = next(r for r in _status(daemon)["ranks"] if r["rank"] == 1)["pid"]
        os.kill(stopped, signal.SIGSTOP)
        daemon.wait_for_log("restarting it from the last checkpoint", timeout=180)
        assert [e["rank"] for e in _events(daemon, "rank_hung")] == [1], daemon.log()
        _wait_until(lambda: f"rank 0 ended the run; stopping rank 1 (pid {stopped})" in launcher_log.read_text(),
                    60, "the launcher stopping its hung rank", launcher_log.read_text)
        _wait_until(lambda: not _alive(stopped), 30, "the stopped rank killed by its launcher", launcher_log.read_text)
        before = _rounds_logged(daemon)
        _wait_until(lambda: _rounds_logged(daemon) >= before + 2, 240, "two more rounds with a new rank 1",
                    lambda: daemon.log() + launcher_log.read_text())
        new = next(r for r in _status(daemon)["ranks"] if r["rank"] == 1)["pid"]
        assert new != stopped and Path(f"/proc/{new}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(
            launcher.pid)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == ExitCode.OK, daemon.log()
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0, launcher_log.read_text()
    finally:
        if stopped and _alive(stopped):
            os.kill(stopped, signal.SIGCONT)
            os.kill(stopped, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
