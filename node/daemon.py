"""`fednode start`: the long-running node process.

Lifecycle: lock the state dir -> load or create the identity -> build the task and model ->
resume from the last checkpoint -> run rounds until a stop condition -> final checkpoint and
summary. SIGINT/SIGTERM request a graceful stop: the training thread stops between steps, a final
checkpoint is written, every thread ends, and the process exits 0 within
`node.shutdown_timeout` seconds, or is forced out with exit code 10. A second SIGINT forces it at
once.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import threading
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from fednode.node import __version__
from fednode.node.checkpoint import Checkpoint, CheckpointStore
from fednode.node.config import FednodeConfig
from fednode.node.durable import atomic_write_bytes, remove_stale_temp_files
from fednode.node.errors import ConfigError, ExitCode, StateDirError, TaskError
from fednode.node.identity import Identity, load_or_create_identity
from fednode.node.model import assign_parameters, flatten_parameters, model_layout
from fednode.node.tasks import Task, TaskContext, load_task
from fednode.node.trainer import LocalTrainer, resolve_device

log = logging.getLogger("fednode.daemon")

SUMMARY_FILE = "summary.json"
LOCK_FILE = "daemon.lock"


@dataclass
class RoundRecord:
    round: int
    model_version: int
    accuracy: float
    loss: float
    train_loss: float
    seconds: float


@dataclass
class RunSummary:
    peer_id: str
    version: str
    task: str
    device: str
    state_dir: str
    started_unix: float
    wall_seconds: float = 0.0
    rounds: int = 0
    model_version: int = 0
    accuracy: float = float("nan")
    loss: float = float("nan")
    best_accuracy: float = float("nan")
    stop_reason: str = ""
    resumed_from_round: int = 0
    history: list[RoundRecord] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, allow_nan=True).encode()


class StateDirLock:
    """Exclusive lock on a state dir: two daemons sharing one identity would corrupt each other.

    flock is released by the kernel when the process dies, even on kill -9, so a crash never
    leaves a stale lock behind.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held for the daemon's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StateDirError(
                f"another fednode daemon (pid {holder}) is using {self.path.parent}; "
                f"stop it (fednode stop) or pass a different --state-dir"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        # The file stays: unlinking it would let a waiting opener lock a deleted inode while a
        # third daemon locks a fresh file at the same path.
        if self._handle is not None:
            with suppress(OSError):
                self._handle.truncate(0)
            self._handle.close()
            self._handle = None


def prepare_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateDirError(f"cannot create state dir {state_dir}: {exc.strerror}; pass a writable --state-dir") from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StateDirError(f"state dir {state_dir} is not writable; pass a writable --state-dir")


def remove_interrupted_writes(state_dir: Path) -> None:
    """Temp files of writes a crash interrupted. Only the lock holder may do this: another
    daemon's temp files are writes in progress."""
    remove_stale_temp_files(state_dir)
    remove_stale_temp_files(state_dir / "checkpoints")


class Daemon:
    """One node. Construct, then `await run()`; returns the process exit code."""

    def __init__(self, config: FednodeConfig) -> None:
        self.config = config
        self.state_dir = config.resolved_state_dir()
        self.stop_event = threading.Event()  # threading: the training thread polls it between steps
        self.stop_reason = ""
        self._lock = StateDirLock(self.state_dir)
        self.identity: Identity | None = None
        self.task: Task | None = None
        self.model: torch.nn.Module | None = None
        self.trainer: LocalTrainer | None = None
        self.checkpoints = CheckpointStore(self.state_dir)
        self.round = 0
        self.model_version = 0
        self.summary: RunSummary | None = None

    # ----------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Everything that can fail on bad input, before any training starts."""
        prepare_state_dir(self.state_dir)
        self._lock.acquire()
        remove_interrupted_writes(self.state_dir)
        self.identity, created = load_or_create_identity(self.state_dir)
        log.info("%s identity %s (%s)", "created" if created else "loaded", self.identity.peer_id, self.state_dir)
        training = self.config.training
        if training.torch_threads:
            torch.set_num_threads(training.torch_threads)
        try:
            device = resolve_device(self.config.node.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        task_cfg = self.config.task
        context = TaskContext(task_cfg.shard_index, task_cfg.shard_count, task_cfg.seed)
        self.task = load_task(task_cfg.name, context, task_cfg.params)
        self.model = self.task.model_factory().to(device)
        self.layout = model_layout(self.model)
        self.trainer = LocalTrainer(
            self.task,
            device,
            batch_size=training.batch_size,
            lr=training.lr,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
            # Batches differ per shard but are reproducible for a given seed and shard.
            seed=task_cfg.seed * 1_000_003 + task_cfg.shard_index,
            slowdown=training.slowdown,
        )
        self.summary = RunSummary(
            peer_id=self.identity.peer_id,
            version=__version__,
            task=self.task.description or self.task.name,
            device=str(device),
            state_dir=str(self.state_dir),
            started_unix=time.time(),
        )
        self._resume()
        log.info(
            "task %s on %s: %d training examples, %d parameters",
            self.summary.task,
            device,
            self.trainer.num_train_samples,
            self.layout.numel,
        )

    def _resume(self) -> None:
        assert self.model is not None and self.trainer is not None and self.summary is not None
        checkpoint = self.checkpoints.load()
        if checkpoint is None:
            return
        if checkpoint.layout_digest != self.layout.digest:
            raise TaskError(
                f"the checkpoint in {self.checkpoints.directory} is for a different model "
                f"(layout {checkpoint.layout_digest[:12]}, task builds {self.layout.digest[:12]}); "
                f"move it away or use another --state-dir"
            )
        assign_parameters(self.model, checkpoint.parameters)
        self.round = checkpoint.round
        self.model_version = checkpoint.model_version
        generator_state = checkpoint.extra.get("train_generator")
        if isinstance(generator_state, torch.Tensor):
            self.trainer.set_generator_state(generator_state)
        self.summary.resumed_from_round = self.round
        log.info("resumed from checkpoint: round %d, model version %d", self.round, self.model_version)

    # ----------------------------------------------------------------------------- lifecycle
    def request_stop(self, reason: str) -> None:
        if self.stop_event.is_set():
            return
        self.stop_reason = reason
        self.stop_event.set()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if self.stop_event.is_set() and signum == signal.SIGINT:
                log.error("second SIGINT: exiting immediately without a final checkpoint")
                os._exit(ExitCode.FORCED_SHUTDOWN)
            log.info("%s received: stopping gracefully (send SIGINT again to force)", name)
            self.request_stop(name)
            loop.call_later(self.config.node.shutdown_timeout, self._force_exit)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)

    def _force_exit(self) -> None:
        log.error(
            "graceful stop took longer than node.shutdown_timeout = %.0f s; forcing exit",
            self.config.node.shutdown_timeout,
        )
        logging.shutdown()
        os._exit(ExitCode.FORCED_SHUTDOWN)

    async def run(self) -> ExitCode:
        loop = asyncio.get_running_loop()
        self._install_signal_handlers(loop)
        try:
            self.setup()
            await self._run_rounds()
            self._finish()
        finally:
            self._lock.release()
        return ExitCode.OK

    async def _run_rounds(self) -> None:
        assert self.model is not None and self.trainer is not None and self.summary is not None
        training = self.config.training
        started = time.perf_counter()
        while not self.stop_event.is_set():
            if training.rounds and self.round >= training.rounds:
                self.request_stop("rounds")
                break
            before = flatten_parameters(self.model)
            result = await asyncio.to_thread(
                self.trainer.train_round, self.model, training.local_steps, self.stop_event
            )
            if result.steps < training.local_steps:
                # Interrupted mid-round: keep the last complete state, as the checkpoint does.
                assign_parameters(self.model, before)
                break
            self.round += 1
            self.model_version += 1
            evaluation = self.trainer.evaluate(self.model)
            record = RoundRecord(
                round=self.round,
                model_version=self.model_version,
                accuracy=evaluation.accuracy,
                loss=evaluation.loss,
                train_loss=result.mean_loss,
                seconds=result.seconds,
            )
            self._record(record)
            self._save_checkpoint()
            if training.target_accuracy and evaluation.accuracy >= training.target_accuracy:
                self.request_stop("target_accuracy")
        self.summary.wall_seconds = time.perf_counter() - started

    def _record(self, record: RoundRecord) -> None:
        assert self.summary is not None
        summary = self.summary
        summary.history.append(record)
        summary.rounds = record.round
        summary.model_version = record.model_version
        summary.accuracy = record.accuracy
        summary.loss = record.loss
        if not summary.best_accuracy >= record.accuracy:  # also true while best is NaN
            summary.best_accuracy = record.accuracy
        target = self.config.training.rounds
        log.info(
            "round %d%s: test accuracy %.4f, test loss %.4f, train loss %.4f (%.2f s)",
            record.round,
            f"/{target}" if target else "",
            record.accuracy,
            record.loss,
            record.train_loss,
            record.seconds,
            extra={"round": record.round, "accuracy": record.accuracy, "loss": record.loss},
        )

    def _save_checkpoint(self) -> None:
        assert self.model is not None and self.trainer is not None
        metrics: dict[str, float] = {}
        if self.summary and self.summary.history:
            last = self.summary.history[-1]
            metrics = {"accuracy": last.accuracy, "loss": last.loss}
        self.checkpoints.save(
            Checkpoint(
                round=self.round,
                model_version=self.model_version,
                layout_digest=self.layout.digest,
                parameters=flatten_parameters(self.model),
                metrics=metrics,
                extra={"train_generator": self.trainer.generator_state()},
            )
        )

    def _finish(self) -> None:
        assert self.summary is not None
        self._save_checkpoint()
        self.summary.stop_reason = self.stop_reason or "stopped"
        atomic_write_bytes(self.state_dir / SUMMARY_FILE, self.summary.to_json(), mode=0o644)
        log.info(
            "stopped (%s) after round %d: test accuracy %.4f; summary in %s",
            self.summary.stop_reason,
            self.summary.rounds,
            self.summary.accuracy,
            self.state_dir / SUMMARY_FILE,
        )


def summary_from_file(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
