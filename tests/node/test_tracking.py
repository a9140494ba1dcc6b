"""[tracking]: a real daemon's rounds in TensorBoard event files (read back with TensorBoard's own
reader) and in an MLflow run (read back with MLflow's client); off by default; a bad sink is a
clear start-up error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fednode.node.config import TrackingSection
from fednode.node.errors import ConfigError, ExitCode
from fednode.node.rotation import read_json_lines
from fednode.node.tracking import Tracking

pytestmark = pytest.mark.timeout(300)


def test_daemon_rounds_reach_tensorboard_and_mlflow(start_daemon) -> None:
    daemon = start_daemon("--solo", "--rounds", "4", "--set", "task.params={hidden = [16]}", "--set", "training.local_steps=5",
                          "--set", "tracking.tensorboard=true", "--set", "tracking.mlflow=true",
                          "--set", 'tracking.run_name="trial-7"', "--log-format", "json")
    assert daemon.wait(timeout=240) == ExitCode.OK, daemon.log()
    rounds = list(read_json_lines(daemon.state_dir / "history.jsonl"))
    accuracies = [r["accuracy"] for r in rounds]
    assert len(accuracies) == 4
    # TensorBoard: the event file TensorBoard itself reads.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = daemon.state_dir / "tensorboard" / "trial-7"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = events.Scalars("fednode/accuracy")
    assert [s.step for s in scalars] == [1, 2, 3, 4]
    assert [s.value for s in scalars] == pytest.approx(accuracies, rel=1e-6)
    assert "fednode/train_loss" in events.Tags()["scalars"] and "fednode/bytes_sent" in events.Tags()["scalars"]
    # MLflow: one run, named, with the parameters and every round's metrics.
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(daemon.state_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("fednode")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "trial-7" and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["task"] == "fednode.node.tasks.digits:build_task"
    history = client.get_metric_history(runs[0].info.run_id, "accuracy")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx(accuracies, rel=1e-9)
    assert json.loads(runs[0].data.params["task.params"]) == {"hidden": [16]}


def test_tracking_is_off_by_default_and_bad_sinks_fail_at_start(tmp_path: Path) -> None:
    off = Tracking(TrackingSection(), tmp_path, run_name="x", params={}, tags={})
    assert not off.enabled
    off.record(1, {"accuracy": 0.5})
    off.close()
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "mlruns").exists()
    with pytest.raises(ConfigError, match=r"tracking\.mlflow"):
        Tracking(TrackingSection(mlflow=True, mlflow_tracking_uri="nosuchscheme://nowhere"), tmp_path,
                 run_name="x", params={}, tags={})


def test_a_failing_sink_is_reported_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracking = Tracking(TrackingSection(tensorboard=True), tmp_path, run_name="run", params={"a": 1}, tags={})
    sink = tracking._sinks[0]

    def broken(step, values, wall):
        raise OSError("disk full")

    sink.log = broken
    with caplog.at_level("ERROR", logger="fednode.tracking"):
        for step in range(1, 4):
            tracking.record(step, {"accuracy": 0.5, "loss": float("nan")})
        tracking.close()
    assert tracking.failures == {"tensorboard": 3}
    assert sum("disk full" in r.getMessage() for r in caplog.records) == 1  # the first failure, with its reason
