"""Experiment tracking: every round to TensorBoard event files and/or an MLflow run (`[tracking]`,
off by default; the `tracking` extra installs tensorboardX and mlflow-skinny).

The daemon never waits for a sink: rounds go through a bounded queue to one thread that writes
them, so a slow or unreachable MLflow server costs the sink, not the federation. A sink that
fails is reported in the log (the first failure with its reason, then a count), never silently.
tensorboardX, not torch.utils.tensorboard: the daemon does not load torch (its worker does).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

from fednode.node.errors import ConfigError

log = logging.getLogger("fednode.tracking")

QUEUE_SIZE = 10_000
#: Round fields logged as metrics (the RoundRecord names), step = round.
METRICS = ("accuracy", "loss", "train_loss", "participants", "left_out", "round_seconds", "seconds",
           "bytes_sent", "bytes_received", "model_version")


class _TensorBoard:
    def __init__(self, directory: Path, run_name: str, params: dict[str, str]) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(directory / run_name), flush_secs=10)
        self.writer.add_text("fednode/params", "\n".join(f"    {k} = {v}" for k, v in sorted(params.items())), 0)

    def log(self, step: int, values: dict[str, float], wall: float) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"fednode/{key}", value, global_step=step, walltime=wall)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        import os

        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in "maintenance mode" behind this switch; a local run
            # without a tracking server or a database (sqlite needs the full mlflow) still wants it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in sorted(params.items())])

    def log(self, step: int, values: dict[str, float], wall: float) -> None:
        from mlflow.entities import Metric

        stamp = int(wall * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Tracking:
    """The configured sinks; `record()` is cheap and never raises."""

    def __init__(self, settings: Any, state_dir: Path, *, run_name: str, params: dict[str, Any],
                 tags: dict[str, str]) -> None:
        self._queue: queue.Queue[tuple[int, dict[str, float], float] | None] = queue.Queue(QUEUE_SIZE)
        self._sinks: list[Any] = []
        self.failures: dict[str, int] = {}
        self.dropped = 0
        flat = {k: str(v) for k, v in params.items()}
        if settings.tensorboard:
            directory = Path(settings.tensorboard_dir) if settings.tensorboard_dir else state_dir / "tensorboard"
            self._sinks.append(self._open("tensorboard", lambda: _TensorBoard(directory, run_name, flat),
                                          "tracking.tensorboard needs tensorboardX"))
            self.tensorboard_dir = directory / run_name
        if settings.mlflow:
            uri = settings.mlflow_tracking_uri or (state_dir / "mlruns").resolve().as_uri()
            self._sinks.append(self._open("mlflow", lambda: _MLflow(uri, settings.mlflow_experiment, run_name,
                                                                    flat, tags),
                                          "tracking.mlflow needs mlflow (mlflow-skinny)"))
            self.mlflow_uri = uri
        self._thread: threading.Thread | None = None
        if self._sinks:
            self._thread = threading.Thread(target=self._drain, name="tracking", daemon=True)
            self._thread.start()

    @staticmethod
    def _open(name: str, factory: Any, missing: str) -> Any:
        try:
            return factory()
        except ImportError as exc:
            raise ConfigError(f"{missing}: pip install 'fednode[tracking]' ({exc})") from exc
        except Exception as exc:  # an unreachable server, a bad URI: the operator must know at start
            raise ConfigError(f"cannot start the {name} tracking sink ({type(exc).__name__}: {exc}); check the "
                              f"tracking.{name}* settings or set tracking.{name} = false") from exc

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def record(self, step: int, record: dict[str, Any]) -> None:
        if not self._sinks:
            return
        values = {k: float(record[k]) for k in METRICS if isinstance(record.get(k), (int, float))
                  and math.isfinite(float(record[k]))}
        item = (step, values, float(record.get("finished_at") or time.time()))
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 100, 10_000):
                log.error("tracking is %d round(s) behind; rounds are being dropped (is the MLflow server slow?)",
                          QUEUE_SIZE)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            step, values, wall = item
            for sink in self._sinks:
                try:
                    sink.log(step, values, wall)
                except Exception as exc:  # a sink must never take the daemon down
                    name = type(sink).__name__.strip("_").lower()
                    self.failures[name] = self.failures.get(name, 0) + 1
                    if self.failures[name] == 1 or self.failures[name] % 100 == 0:
                        log.error("tracking sink %s failed (%d time(s)): %s", name, self.failures[name], exc,
                                  extra={"event": "tracking_failed", "sink": name})

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (bounded by `timeout`), then close every sink."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("closing tracking sink %s failed: %s", type(sink).__name__.strip("_").lower(), exc)


def open_for_node(config: Any, state_dir: Path, peer_id: str, started_unix: float, federation_id: str) -> Tracking:
    """The sinks of a daemon's [tracking] settings, its run named and described by its config."""
    import json

    from fednode.node import __version__

    settings = config.tracking
    name = settings.run_name or (f"{config.node.display_name or peer_id[-8:]}-"
                                 f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(started_unix))}")
    params = {"peer_id": peer_id, "task": config.task.name, "task.params": json.dumps(config.task.params),
              "shard": config.task.shard, "federation": federation_id, "rule": config.aggregation.rule,
              "f": config.aggregation.f, "schedule": config.federation.schedule, "codec": config.compression.codec,
              "local_steps": config.training.local_steps, "lr": config.training.lr,
              "batch_size": config.training.batch_size, "fednode_version": __version__}
    tracking = Tracking(settings, state_dir, run_name=name, params=params, tags={"fednode.peer_id": peer_id})
    where = [f"{kind} {place}" for kind, place in (("TensorBoard", getattr(tracking, "tensorboard_dir", None)),
                                                   ("MLflow", getattr(tracking, "mlflow_uri", None))) if place]
    log.info("tracking rounds to %s", ", ".join(where), extra={"event": "tracking"})
    return tracking
