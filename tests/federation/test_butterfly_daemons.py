"""The butterfly exchange with real daemons (`fednode launch`: separate processes, py-libp2p on
127.0.0.1, the daemon/worker link): every round completes by parts, without falling back to
all-to-all, and every member ends with the bit-identical model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fednode.node.checkpoint import CheckpointStore

from .conftest import SMALL, launch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def final_state(state_dir: Path) -> tuple[int, torch.Tensor]:
    checkpoint = CheckpointStore(state_dir).load()
    assert checkpoint is not None, f"no checkpoint in {state_dir}"
    return checkpoint.round, checkpoint.parameters


def test_three_daemons_aggregate_by_parts_to_one_model(tmp_path: Path) -> None:
    summary = launch(tmp_path, "--nodes", "3", "--rounds", "4", "--min-participants", "3", *SMALL,
                     "--set", "federation.announce_interval=0.5", "--set", 'federation.exchange="butterfly"',
                     "--set", "federation.butterfly_parts=3", "--set", 'aggregation.rule="median"',
                     "--set", "aggregation.f=1", timeout=600)
    assert [node["rounds"] for node in summary["nodes"]] == [4, 4, 4]
    states = [final_state(tmp_path / "run" / f"node-{i}") for i in range(3)]
    for other in states[1:]:
        assert other[0] == states[0][0]
        assert torch.equal(other[1], states[0][1]), "the members' models differ"
    for i in range(3):
        log = (tmp_path / "run" / f"node-{i}.log").read_text()
        assert "butterfly exchange did not complete" not in log, log[-3000:]
        assert "false claim" not in log
