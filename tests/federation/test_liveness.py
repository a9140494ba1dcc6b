"""Liveness under f faults with real daemons: members whose updates are refused do not stall a
round the rule tolerates, and a launch whose rounds cannot close ends with an error that says
why (issue 22)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from fednode.cli.launch import LaunchPlan, LocalFederation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SMALL = ["task.params={hidden = [64]}", "training.local_steps=10"]


def run_launch(plan: LaunchPlan) -> tuple[int, str, dict]:
    console = Console(file=io.StringIO(), width=240)
    code = LocalFederation(plan, console).run()
    return code, console.file.getvalue(), json.loads((plan.out_dir / "summary.json").read_text())


def test_members_sending_nan_do_not_stall_rounds_the_rule_tolerates(tmp_path: Path) -> None:
    """Five members, Multi-Krum with f = 1 (2f+3 = 5 rows), one sends NaN. Its refused update
    is an answer, and with it found faulty the four valid updates hold no Byzantine one: rounds
    close with them (f' = 0) instead of waiting forever for a fifth valid update. The launch
    derives min_participants = min(majority, n - f) = 3 (it was 2f+3 = 5 = every member)."""
    plan = LaunchPlan(nodes=5, rounds=4, rule="multi_krum", f=1, byzantine=1, attack="nan",
                      out_dir=tmp_path / "run", settings=SMALL)
    assert plan.derived_min_participants() == 3
    code, output, summary = run_launch(plan)
    assert code == 0, output
    honest = [node for node in summary["nodes"] if not node["byzantine"]]
    assert len(honest) == 4
    for node in honest:
        assert node["rounds"] == 4 and node["accuracy"] >= 0.85, node
        assert node["rejected"].get("non_finite", 0) >= 1, node
    history = json.loads((Path(honest[0]["state_dir"]) / "summary.json").read_text())["history"]
    assert all(record["participants"] == 4 for record in history), history
    log = (plan.out_dir / "node-0.log").read_text()
    assert "so the rule tolerates 0 Byzantine member(s) instead of f = 1" in log


def test_a_launch_whose_rounds_cannot_close_ends_with_an_error_saying_why(tmp_path: Path) -> None:
    """min_participants = 4 of 4 members and one sends NaN: no round can ever have 4 valid
    updates. Each node says why it waits, and the launch stops them all and fails within its
    progress bound instead of running forever."""
    plan = LaunchPlan(nodes=4, rounds=3, rule="krum", f=1, byzantine=1, attack="nan", min_participants=4,
                      out_dir=tmp_path / "run", settings=SMALL, progress_floor=20.0)
    code, output, summary = run_launch(plan)
    assert code == 1, output
    assert "no node made a round for 20 s" in output
    assert "have 3 valid update(s) of 4 known member(s), 4 needed" in output
    assert "(federation.min_participants = 4)" in output
    assert summary["stuck"] and all(node["rounds"] == 0 for node in summary["nodes"] if not node["byzantine"])


def test_attackers_deliver_on_time_and_alie_needs_no_parameters(tmp_path: Path) -> None:
    """Two ALIE attackers (z_max from the launch's n and number of attackers: no
    --attack-params) among five members, mean rule. Colluders do not wait for each other and
    forge before the round's deadline, so every one of their updates reaches the honest members
    before the round closes: the table measures the rule, not the attackers' timing."""
    plan = LaunchPlan(nodes=5, rounds=6, byzantine=2, attack="alie", out_dir=tmp_path / "run", settings=SMALL)
    assert plan.attack_settings() == {"n": 5, "f": 2}
    code, output, summary = run_launch(plan)
    assert code == 0, output
    attackers = {node["peer_id"] for node in summary["nodes"] if node["byzantine"]}
    assert len(attackers) == 2 and all(attackers)
    for node in summary["nodes"]:
        if node["byzantine"]:
            continue
        own = json.loads((Path(node["state_dir"]) / "summary.json").read_text())
        assert node["rounds"] == 6 and len(own["history"]) >= 4, own["history"]
        # Every round this node closed itself (one it synced past had closed elsewhere) had all
        # five updates, the attackers' included.
        assert all(record["participants"] == 5 for record in own["history"]), own["history"]
        for attacker in attackers:
            assert own["contributions"][attacker]["accepted"] >= len(own["history"]), own["contributions"]
