"""Outer optimizers with real daemons (separate processes, py-libp2p on 127.0.0.1): every member
ends with the bit-identical model and optimizer state, a kill -9 loses none of it, a late joiner
adopts it with the model, and a member with other outer settings is refused."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from fednode.node.checkpoint import CheckpointStore
from fednode.node.federation.outer import OPTIMIZERS, OuterConfig
from fednode.node.logs import read_json_log

from .conftest import SMALL, launch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def final_state(state_dir: Path) -> tuple[int, torch.Tensor, dict | None]:
    """(round, parameters, outer state) of a stopped daemon's last checkpoint."""
    checkpoint = CheckpointStore(state_dir).load()
    assert checkpoint is not None, f"no checkpoint in {state_dir}"
    return checkpoint.round, checkpoint.parameters, checkpoint.extra.get("outer_state")


def assert_same(a: tuple[int, torch.Tensor, dict | None], b: tuple[int, torch.Tensor, dict | None]) -> None:
    assert a[0] == b[0]
    assert torch.equal(a[1], b[1]), "the models differ"
    assert (a[2] is None) == (b[2] is None)
    if a[2] is not None and b[2] is not None:
        assert {k: v for k, v in a[2].items() if k != "buffers"} == {k: v for k, v in b[2].items() if k != "buffers"}
        assert a[2]["buffers"].keys() == b[2]["buffers"].keys()
        for name in a[2]["buffers"]:
            assert torch.equal(a[2]["buffers"][name], b[2]["buffers"][name]), f"outer buffer {name} differs"


def _rounds(log: str) -> list[dict]:
    return [r for r in read_json_log(log) if r.get("event") == "round"]


def _wait(predicate, what: str, daemons, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "\n".join(d.log()[-2000:] for d in daemons)
        for daemon in daemons:
            if daemon.process.poll() not in (None, 0):
                raise AssertionError(f"a daemon exited with {daemon.process.returncode}:\n{daemon.log()[-3000:]}")
        time.sleep(0.3)


@pytest.mark.parametrize("outer", OPTIMIZERS)
def test_three_daemons_end_bit_identical_with_each_outer_optimizer(tmp_path: Path, outer: str) -> None:
    """`fednode launch --outer X`: every round aggregates all three updates (min_participants 3),
    so every member must end with the same model and optimizer state, to the bit."""
    # Short announcement intervals: most of a run this small is start-up and the final linger.
    summary = launch(tmp_path, "--nodes", "3", "--rounds", "5", "--min-participants", "3", "--outer", outer,
                     *SMALL, "--set", "federation.announce_interval=0.5", timeout=400)
    assert [node["rounds"] for node in summary["nodes"]] == [5, 5, 5]
    states = [final_state(tmp_path / "run" / f"node-{i}") for i in range(3)]
    for other in states[1:]:
        assert_same(states[0], other)
    config = OuterConfig.build(outer)
    saved = states[0][2]
    if config.stateful:
        assert saved is not None and saved["optimizer"] == outer and saved["digest"] == config.digest()
        assert saved["steps"] == 5  # one step per round, none lost or repeated
        assert all(torch.count_nonzero(b) > 0 for b in saved["buffers"].values())
    else:
        assert saved is None  # sgd keeps no state
    log = (tmp_path / "run" / "node-0.log").read_text()
    if not config.is_identity:
        assert f"outer optimizer: {config.describe()}" in log


def test_a_member_killed_9_resumes_with_its_optimizer_state(start_daemon) -> None:
    """A one-member federation killed -9 mid-run and restarted ends bit-identical to an
    uninterrupted run of the same member: model, momentum and round all resumed from its
    checkpoint (nobody else could hand them over)."""
    args = [*SMALL, "--log-format", "json", "--rounds", "12", "--set", 'federation.id="solo-outer"',
            "--set", "federation.min_participants=1", "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]',
            "--set", 'aggregation.outer="nesterov"', "--set", "training.emulated_step_ms=30"]
    reference = start_daemon(*args, name="reference")
    assert reference.wait(timeout=300) == 0, reference.log()[-3000:]

    victim = start_daemon(*args, name="victim")
    _wait(lambda: bool(_rounds(victim.log())) and _rounds(victim.log())[-1]["round"] >= 5, "round 5", [victim])
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    killed_at = _rounds(victim.log())[-1]["round"]
    assert killed_at < 12
    restarted = start_daemon(*args, name="victim")
    assert restarted.wait(timeout=300) == 0, restarted.log()[-3000:]
    assert "resumed from checkpoint" in restarted.log()
    summary = json.loads((restarted.state_dir / "summary.json").read_text())
    assert summary["syncs"] == 0 and summary["resumed_from_round"] >= killed_at - 1, summary
    assert_same(final_state(reference.state_dir), final_state(restarted.state_dir))
    assert final_state(restarted.state_dir)[2]["steps"] == 12  # type: ignore[index]


def test_a_late_joiner_adopts_the_optimizer_state_and_other_settings_are_refused(start_federation, start_daemon,
                                                                                 multiaddr_of) -> None:
    """Three members train with outer Nesterov; a fourth joins at round 3 and adopts model and
    momentum by state sync, trains with them, and all four end bit-identical. A fifth, configured
    with Adam, is refused: its updates as settings_mismatch, its snapshots ignored.

    Rounds are padded to about 0.7 s (emulated steps, a sleep: the same under load), so the
    federation (70 s) outlasts the two newcomers' start-up on a loaded machine (23 s at load 10,
    40 s at load 15) by a wide margin."""
    rounds = 100
    args = [*SMALL, "--rounds", str(rounds), "--set", "federation.min_participants=3",
            "--set", 'aggregation.outer="nesterov"', "--set", "training.emulated_step_ms=60"]
    nodes = start_federation(3, *args)
    _wait(lambda: bool(_rounds(nodes[0].log())) and _rounds(nodes[0].log())[-1]["round"] >= 3, "round 3", nodes)
    common = ["--log-format", "json", "--set", 'federation.id="test-fed"', "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]',
              "--set", f'mesh.bootstrap=["{multiaddr_of(nodes[0])}"]']
    late = start_daemon("--shard", "1/3", *common, *args, name="late")
    other = start_daemon("--shard", "2/3", *common, *args, "--set", 'aggregation.outer="adam"', name="other")
    for node in [*nodes, late]:
        assert node.wait(timeout=600) == 0, node.log()[-3000:]
    late_summary = json.loads((late.state_dir / "summary.json").read_text())
    assert late_summary["syncs"] >= 1 and late_summary["rounds"] == rounds, late_summary
    assert late_summary["history"], "the late joiner closed rounds of its own after syncing"
    assert any(r["participants"] == 4 for r in _rounds(nodes[0].log())), "the late joiner's updates were aggregated"
    states = [final_state(node.state_dir) for node in [*nodes, late]]
    for state in states[1:]:
        assert_same(states[0], state)
    assert states[0][2] is not None and states[0][2]["steps"] == rounds
    refused = [json.loads((node.state_dir / "summary.json").read_text())["rejected"].get("settings_mismatch", 0)
               for node in [*nodes, late]]
    assert all(count > 0 for count in refused), refused
    assert not _rounds(other.log()), "the member with other settings never trained with the federation"
    assert "synced model" not in other.log()
    other.signal(signal.SIGTERM)
    assert other.wait(timeout=60) == 0, other.log()[-3000:]
