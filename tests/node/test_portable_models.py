"""Models that travel and data that stays: `fednode task new`, `fednode task stats` and
federation-wide normalisation, per-node data and devices in `fednode launch`, and `fednode model
export` to safetensors or a state_dict with the metadata a model needs outside fednode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fednode.cli.launch import node_files, parse_devices
from fednode.node.errors import ConfigError, ExitCode
from fednode.node.tasks.files import feature_moments, merge_moments, read_tabular, standardization
from fednode.node.trainer import device_problem


def write_site(path: Path, rows: int, shift: float, seed: int) -> None:
    """A CSV whose feature scales differ by site: what per-site normalisation gets wrong."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=rows)
    centres = np.array([[0, 0, 0, 0], [3, 0, 0, 3], [0, 3, 3, 0]], dtype=float)
    features = centres[labels] + rng.normal(0, 1, size=(rows, 4))
    features = features * np.array([1.0, 10.0, 100.0, 0.1]) + shift
    table = np.column_stack([features, labels])
    header = "f0,f1,f2,f3,label"
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.6f")


# ------------------------------------------------------------------------------------- pure parts
def test_merged_moments_equal_the_moments_of_the_pooled_rows() -> None:
    rng = np.random.default_rng(3)
    sites = [rng.normal(loc, scale, size=(n, 5)) for loc, scale, n in ((0, 1, 40), (50, 10, 7), (-3, 0.1, 300))]
    merged = merge_moments([feature_moments(s) for s in sites])
    pooled = np.concatenate(sites)
    mean, std = standardization(merged)
    assert merged["count"] == len(pooled)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-10)
    with pytest.raises(ValueError, match="number of features"):
        merge_moments([feature_moments(sites[0]), feature_moments(sites[0][:, :3])])


def test_node_files_forms_and_errors(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"site-{i}.csv").write_text("x,label\n1,0\n")
    (tmp_path / "test.csv").write_text("x,label\n1,0\n")
    by_name = f"node-0={tmp_path}/site-2.csv,node-1={tmp_path}/site-0.csv,2={tmp_path}/site-1.csv"
    assert node_files(by_name, 3, "--data", shared_allowed=False) == [
        f"{tmp_path}/site-2.csv", f"{tmp_path}/site-0.csv", f"{tmp_path}/site-1.csv"]
    assert node_files(f"{tmp_path}/site-{{i}}.csv", 3, "--data", shared_allowed=False)[2].endswith("site-2.csv")
    assert node_files(f"{tmp_path}/site-*.csv", 3, "--data", shared_allowed=False)[0].endswith("site-0.csv")
    assert node_files(f"{tmp_path}/test.csv", 3, "--test-data", shared_allowed=True) == [f"{tmp_path}/test.csv"] * 3
    for spec, message in [(f"node-0={tmp_path}/site-0.csv", "no file for node-1, node-2"),
                          (f"{tmp_path}/site-{{i}}.csv", "no such file"),  # 4 nodes: site-3 missing
                          (f"{tmp_path}/site-*.csv", "matches 3 file(s) but there are 4 nodes"),
                          (f"{tmp_path}/test.csv", "needs one file per node"),
                          (f"node-9={tmp_path}/test.csv", "not one of the nodes")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            node_files(spec, 4, "--data", shared_allowed=False)


def test_devices_are_checked_against_the_machine() -> None:
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(ConfigError, match="must be"):
        parse_devices("gpu0")
    if torch.cuda.device_count() == 0:  # this machine: a clear verdict, before any node starts
        with pytest.raises(ConfigError, match="cuda:0"):
            parse_devices("cuda:0,cuda:1")
    # The rule itself, for every kind of machine.
    assert device_problem("cuda:1", 2, "12.6") is None
    assert "torch sees 2 CUDA device(s), cuda:0 to cuda:1" in device_problem("cuda:2", 2, "12.6")
    assert "sees no CUDA device" in device_problem("cuda", 0, "12.6")
    assert "CPU-only build" in device_problem("cuda:0", 0, None)
    assert device_problem("cpu", 0, None) is None


def test_launch_refuses_a_missing_gpu_before_starting_anything(tmp_path: Path, cli) -> None:
    result = cli("launch", "--nodes", "2", "--rounds", "1", "--devices", "cpu,cuda:3", "--out", str(tmp_path / "run"))
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    assert result.returncode == ExitCode.CONFIG, result.stdout + result.stderr
    assert "cuda:3" in result.stderr and not (tmp_path / "run").exists()


def test_task_stats_cli_merges_sites_exactly(tmp_path: Path, cli) -> None:
    for i in range(2):
        write_site(tmp_path / f"site-{i}.csv", 50 + 30 * i, shift=5.0 * i, seed=i)
    for i in range(2):
        made = cli("task", "stats", str(tmp_path / f"site-{i}.csv"), "--out", str(tmp_path / f"site-{i}.json"))
        assert made.returncode == 0, made.stderr
    merged = cli("task", "stats", str(tmp_path / "site-0.json"), str(tmp_path / "site-1.json"), "--format", "json")
    direct = cli("task", "stats", str(tmp_path / "site-0.csv"), str(tmp_path / "site-1.csv"), "--format", "json")
    a, b = json.loads(merged.stdout), json.loads(direct.stdout)
    assert a["count"] == b["count"] == 130 and a["sources"] == ["site-0.csv", "site-1.csv"]
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-12)
    np.testing.assert_allclose(a["m2"], b["m2"], rtol=1e-9)
    bad = cli("task", "stats", str(tmp_path / "site-0.json"), str(tmp_path / "nothing.csv"))
    assert bad.returncode == ExitCode.TASK and "does not exist" in bad.stderr


# ------------------------------------------------------------------------------------- real runs
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_task_new_scaffold_runs_from_anywhere_without_pythonpath(tmp_path: Path, cli) -> None:
    made = cli("task", "new", "clinic_task", "--dir", str(tmp_path / "work"), "--format", "json")
    assert made.returncode == 0, made.stderr
    written = json.loads(made.stdout)
    assert written["task"] == "clinic_task:build_task"
    again = cli("task", "new", "clinic_task", "--dir", str(tmp_path / "work"))
    assert again.returncode == ExitCode.USAGE and "--force" in again.stderr
    assert cli("task", "new", "json").returncode == ExitCode.USAGE  # would shadow the standard library
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_") and k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "fednode.cli.app", "start", "--config", written["config"],
                           "--state-dir", str(tmp_path / "state"), "--solo", "--rounds", "3"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["accuracy"] > 0.5  # 3 classes: chance is 1/3
    assert summary["task"].startswith("clinic_task:")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_launch_gives_each_node_its_file_federation_normalisation_and_a_report(tmp_path: Path) -> None:
    """One launch, as a user would run it: each node its own file, statistics agreed for all,
    devices round-robin, a NaN attacker; the run ends with its report."""
    for i in range(3):
        write_site(tmp_path / f"site-{i}.csv", 120, shift=20.0 * i, seed=i)
    write_site(tmp_path / "test.csv", 90, shift=10.0, seed=9)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
    done = subprocess.run([sys.executable, "-m", "fednode.cli.app", "launch", "--out", str(out), "--nodes", "3",
                           "--rounds", "4", "--data", str(tmp_path / "site-{i}.csv"), "--test-data",
                           str(tmp_path / "test.csv"), "--devices", "cpu,cpu", "--byzantine", "1", "--attack", "nan",
                           "--min-participants", "2",
                           "--set", 'task.params={normalization = "federation", hidden = [16]}',
                           "--set", "training.local_steps=5"], capture_output=True, text=True, env=env, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"]["devices"] == ["cpu", "cpu"]
    assert summary["plan"]["data"] == [str(tmp_path / f"site-{i}.csv") for i in range(3)]
    stats = json.loads((out / "normalization.json").read_text())
    pooled = np.concatenate([read_tabular(tmp_path / f"site-{i}.csv")[0] for i in range(3)]).astype(np.float64)
    np.testing.assert_allclose(standardization(stats)[0], pooled.mean(axis=0), rtol=1e-9)
    for i in range(3):
        node = json.loads((out / f"node-{i}" / "summary.json").read_text())
        assert node["device"] == "cpu" and f"site-{i}.csv" in node["task"], node["task"]
        assert node["rounds"] == 4
    # The report of the run: every plot, and the NaN updates the honest members refused.
    assert f"report: {out / 'report' / 'index.html'}" in done.stdout.replace("\n", "")
    from fednode.node.report import load_run
    from fednode.node.report.render import PLOTS

    assert all((out / "report" / f"{name}.png").read_bytes().startswith(b"\x89PNG") for name in PLOTS)
    assert (out / "report" / "index.html").read_text().count("data:image/png;base64,") == len(PLOTS)
    honest = [m for m in load_run(out).members if not m.byzantine]
    assert len(honest) == 2 and all(m.rounds for m in honest)
    assert all(any(r["reason"] == "non_finite" for r in m.rejections) for m in honest), [m.rejections for m in honest]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_model_export_safetensors_and_state_dict_with_metadata(tmp_path: Path, start_daemon, cli) -> None:
    for i in range(2):
        write_site(tmp_path / f"site-{i}.csv", 150, shift=20.0 * i, seed=i)
    write_site(tmp_path / "test.csv", 120, shift=10.0, seed=7)
    stats_file = tmp_path / "federation.json"
    assert cli("task", "stats", str(tmp_path / "site-0.csv"), str(tmp_path / "site-1.csv"), "--out",
               str(stats_file)).returncode == 0
    params = (f'task.params={{train = "{tmp_path / "site-0.csv"}", test = "{tmp_path / "test.csv"}", '
              f'normalization = "federation", stats = "{stats_file}", hidden = [16]}}')
    daemon = start_daemon("--log-format", "json", "--set", "task.name=fednode.node.tasks.files:build_task",
                          "--set", params, "--set", 'federation.id="export-test"', "--set", "federation.min_participants=1",
                          "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]', "--set", "training.local_steps=10",
                          "--set", "training.slowdown=20", name="node")
    daemon.wait_for_log('"round": 3', timeout=240)
    state = ["--state-dir", str(daemon.state_dir)]
    exported = cli("model", "export", str(tmp_path / "model.safetensors"), *state, "--format", "json")
    assert exported.returncode == 0, exported.stderr
    info = json.loads(exported.stdout)
    assert info["format"] == "safetensors" and info["metadata_file"] is None
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        header = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    metadata = json.loads(header["fednode"])
    assert metadata == info["metadata"]
    assert metadata["task"] == "fednode.node.tasks.files:build_task" and metadata["federation_id"] == "export-test"
    assert metadata["round"] >= 3 and len(metadata["layout_digest"]) == 64 and 0 < metadata["accuracy"] <= 1
    standardize = metadata["preprocessing"]["standardize"]
    assert standardize["scope"] == "federation" and standardize["count"] == 300
    import hashlib

    assert standardize["stats_sha256"] == hashlib.sha256(stats_file.read_bytes()).hexdigest()
    # Outside fednode: the user's own module, the exported statistics, the raw test file.
    from fednode.node.tasks.base import mlp

    model = mlp(4, [16], 3)
    model.load_state_dict(tensors)
    features, labels = read_tabular(tmp_path / "test.csv")
    inputs = (features - np.array(standardize["mean"])) / np.array(standardize["std"])
    with torch.no_grad():
        predicted = model(torch.from_numpy(inputs.astype(np.float32))).argmax(dim=1).numpy()
    # The model may have moved on by a round between the export and the accuracy it reports.
    assert abs((predicted == labels).mean() - metadata["accuracy"]) < 0.15, ((predicted == labels).mean(), metadata)
    # A state_dict gets its metadata beside it.
    plain = cli("model", "export", str(tmp_path / "model.pt"), *state, "--format", "json")
    assert plain.returncode == 0, plain.stderr
    plain_info = json.loads(plain.stdout)
    assert plain_info["format"] == "pt" and plain_info["metadata_file"] == str(tmp_path / "model.pt.json")
    sidecar = json.loads((tmp_path / "model.pt.json").read_text())
    assert sidecar["sha256"] == plain_info["sha256"] and sidecar["preprocessing"]["standardize"]["scope"] == "federation"
    state_dict = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state_dict) == set(tensors)
