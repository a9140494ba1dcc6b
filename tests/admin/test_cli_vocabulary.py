"""One CLI vocabulary: machine-readable JSON, validated options, hints that carry --state-dir,
tables that never cut an address, and config that reaches every node `fednode launch` starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fednode.node.errors import ExitCode

pytestmark = pytest.mark.timeout(400)

LOCAL = ["--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]', "--set", "task.params={hidden = [32]}",
         "--set", "training.local_steps=3"]


def _joined(text: str) -> str:
    """Table output with borders and line breaks removed (what a copy of a folded cell gives)."""
    return re.sub(r"[\s│┃|]", "", text)


def test_json_tables_hints_version_and_formats(start_daemon, cli, tmp_path: Path) -> None:
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("fednode ")
    for command in (["status"], ["config", "show"], ["federation", "list"]):
        refused = cli(*command, "--format", "yaml")
        assert refused.returncode == ExitCode.USAGE and "yaml" in refused.stderr, command
    # Hints carry the --state-dir they were given.
    empty = tmp_path / "nobody"
    for command in (["identity", "show"], ["status"]):
        result = cli(*command, "--state-dir", str(empty))
        assert result.returncode != 0 and f"--state-dir {empty}" in result.stderr, result.stderr

    daemon = start_daemon(*LOCAL)
    status = json.loads(cli("status", "--state-dir", str(daemon.state_dir), "--wait", "--format", "json").stdout)
    # Native numbers, null for what is not a number yet.
    assert status["round"] == 0 and isinstance(status["uptime_seconds"], int) and status["accuracy"] is None
    address = status["listen_multiaddrs"][0]
    # An 80-column terminal folds the address instead of cutting it.
    human = cli("status", "--state-dir", str(daemon.state_dir), env={"COLUMNS": "80"}).stdout
    assert "…" not in human and address in _joined(human), human

    created = cli("federation", "create", "lab", "--rule", "median", "--f", "0", "--min-participants", "1",
                  "--state-dir", str(daemon.state_dir))
    assert created.returncode == 0, created.stderr
    assert f"fednode federation invite {created.stdout.split(': ')[1][:16]} --state-dir {daemon.state_dir}" \
        in created.stdout, created.stdout
    listed = json.loads(cli("federation", "list", "--state-dir", str(daemon.state_dir), "--format", "json").stdout)
    assert listed[0]["descriptor"]["aggregator"] == "median" and listed[0]["round"] >= 0
    assert isinstance(listed[0]["descriptor"]["created_unix_ms"], int)
    # The table shows what the JSON says (participants included), nothing cut; its id prefix works.
    table = cli("federation", "list", "--state-dir", str(daemon.state_dir), env={"COLUMNS": "80"}).stdout
    federation_id = listed[0]["descriptor"]["federation_id"]
    assert "…" not in table and federation_id[:16] in table, table
    line = next(line for line in table.splitlines() if federation_id[:16] in line)
    assert f"members {len(listed[0]['participants'])}" in line and listed[0]["state"] in line, table
    row = json.loads(cli("federation", "show", federation_id[:16], "--state-dir", str(daemon.state_dir),
                         "--format", "json").stdout)
    assert row == {**listed[0], "round": row["round"], "model_version": row["model_version"],
                   "participants": row["participants"], "state": row["state"]}
    shown = cli("federation", "show", "lab", "--state-dir", str(daemon.state_dir), env={"COLUMNS": "80"}).stdout
    assert federation_id in _joined(shown) and "…" not in shown, shown


def test_launch_applies_the_config_file_to_every_node(cli, tmp_path: Path) -> None:
    config = tmp_path / "small.toml"
    config.write_text("[task.params]\nhidden = [16]\n[training]\nrounds = 2\nlocal_steps = 3\n")
    # --config with two nodes; $FEDNODE_CONFIG (the same path through the launcher) with one.
    for how, nodes, extra, env in (("flag", 2, ["--config", str(config)], {}),
                                   ("env", 1, [], {"FEDNODE_CONFIG": str(config)})):
        out = tmp_path / how
        result = cli("launch", "--nodes", str(nodes), "--out", str(out), *extra, env=env, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        for node in range(nodes):
            log = (out / f"node-{node}.log").read_text()
            assert "MLP 64-16-10" in log, log[-2000:]  # the config's task parameters, on every node
            assert json.loads((out / f"node-{node}" / "summary.json").read_text())["rounds"] == 2
