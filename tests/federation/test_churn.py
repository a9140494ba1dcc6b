"""Churn with real daemons: members killed with kill -9 and restarted catch up with the
federation and finish with it (issue 22)."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from fednode.node.logs import read_json_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROUNDS = 60
# Small model; 5 steps of 200 ms each (emulated: a sleep, no CPU) pace rounds at about a second,
# so the restarted members come back while the federation is still training.
ARGS = ["--set", "task.params={hidden = [64]}", "--set", "training.local_steps=5",
        "--set", "training.emulated_step_ms=200", "--rounds", str(ROUNDS)]


def _last_round(daemon) -> int:
    """The round its model is at: closed by itself, or adopted from peers that closed it first."""
    rounds = [r["round"] for r in read_json_log(daemon.log()) if r.get("event") in ("round", "sync", "synced_round")]
    return max(rounds, default=0)


def _wait_round(daemon, number: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _last_round(daemon) < number:
        assert time.monotonic() < deadline, f"round {number} not reached:\n{daemon.log()[-3000:]}"
        assert daemon.process.poll() is None, f"daemon exited early:\n{daemon.log()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.xfail(strict=False, reason=(
    "fails on the 2-core machine under load: a member left behind when the others finish cannot fetch the final "
    "model over libp2p while they linger (a fetch tries providers one after the other, and stream negotiation on "
    "a half-dead connection takes the whole I/O timeout); open in issue 22"))
def test_two_of_eight_members_killed_and_restarted_finish_with_the_federation(start_federation, start_daemon,
                                                                                multiaddr_of) -> None:
    seed = random.randrange(1 << 16)
    rng = random.Random(seed)
    nodes = start_federation(8, *ARGS)
    victims = rng.sample(range(1, 8), 2)  # node 0 is the bootstrap the others dial
    first = rng.randrange(5, 12)
    kill_at = [first, first + rng.randrange(2, 8)]
    bootstrap = multiaddr_of(nodes[0])
    for index, at in zip(victims, kill_at, strict=True):
        _wait_round(nodes[index], at)
        nodes[index].process.send_signal(signal.SIGKILL)
        nodes[index].process.wait(timeout=10)
        time.sleep(5)
        nodes[index] = start_daemon("--shard", f"{index}/8", "--log-format", "json", "--set", 'federation.id="test-fed"',
                                    "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]', *ARGS,
                                    "--set", f'mesh.bootstrap=["{bootstrap}"]', name=f"node-{index}")
    for index, node in enumerate(nodes):
        assert node.wait(timeout=420) == 0, f"seed {seed}, node {index}:\n{node.log()[-3000:]}"
    summaries = [json.loads((node.state_dir / "summary.json").read_text()) for node in nodes]
    assert all(s["rounds"] == ROUNDS for s in summaries), (seed, [s["rounds"] for s in summaries])
    # Everyone ends on the federation's model, the restarted members too.
    assert len({s["accuracy"] for s in summaries}) == 1, (seed, [s["accuracy"] for s in summaries])
    survivor = summaries[0]
    for index, at in zip(victims, kill_at, strict=True):
        restarted = summaries[index]
        assert restarted["resumed_from_round"] >= 1 and restarted["syncs"] >= 1, (seed, restarted)
        # It trained with the others again after catching up, not only adopted their models: a
        # member that never left accepted more of its updates than it could send before the kill.
        accepted = survivor["contributions"][restarted["peer_id"]]["accepted"]
        assert accepted >= at + 5, (seed, index, at, accepted)


def test_a_member_left_alone_stops_with_a_clear_message(start_federation) -> None:
    """Its only peer is killed: its round can never close. It stops after
    federation.alone_timeout with exit code 7, a message saying why and what to do, and a
    summary whose stop reason says so (it used to wait forever)."""
    args = ["--set", "task.params={hidden = [64]}", "--set", "training.local_steps=5", "--rounds", "100000",
            "--set", "federation.alone_timeout=8"]
    nodes = start_federation(2, *args)
    _wait_round(nodes[1], 3)
    nodes[0].process.send_signal(signal.SIGKILL)
    nodes[0].process.wait(timeout=10)
    killed = time.monotonic()
    assert nodes[1].wait(timeout=120) == 7, nodes[1].log()[-3000:]
    assert time.monotonic() - killed < 60
    log = nodes[1].log()
    assert "no member of the federation has been heard from for" in log
    assert "Start it again when members are online, or check mesh.bootstrap" in log
    summary = json.loads((nodes[1].state_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "isolated" and summary["rounds"] >= 3
