"""The training worker: the half of a node that needs torch.

The daemon (node/daemon.py) starts one worker with `python -m fednode.node.worker --link-fd N`
and drives it over the link (proto/v1/worker.proto). The worker builds the task, model and
trainer, resumes from the last checkpoint, and runs sessions on the daemon's command: alone, or
in a federation through `FederationRunner` / `CompassRunner` with the daemon's mesh behind a
`RemoteMesh`. After each round it evaluates, reports the round (the daemon records it and says
whether to stop) and checkpoints. It never touches the membership store except to read it, and
it exits when the daemon says so or the link closes (the daemon died).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import os
import resource
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from fednode.aggregators import AggregationError
from fednode.aggregators import build as build_aggregator
from fednode.node.checkpoint import Checkpoint, CheckpointStore
from fednode.node.config import FednodeConfig
from fednode.node.errors import ConfigError, ExitCode, FednodeError, TaskError
from fednode.node.federation.settings import FederationSettings, exchange_problem
from fednode.node.identity import identity_path, load_identity
from fednode.node.logs import best_effort, current_rss_mb
from fednode.node.model import assign_parameters, flatten_parameters, model_layout
from fednode.node.parent_death import die_with_parent
from fednode.node.tasks import TaskContext, load_task
from fednode.node.trainer import LocalTrainer, resolve_device, resolve_inner_optimizer
from fednode.node.worker.link import Link, table_handler
from fednode.node.worker.remote_mesh import RemoteMesh
from fednode.proto.v1 import worker_pb2

log = logging.getLogger("fednode.worker")
# The final checkpoint (at shutdown) is tried this many times, this long apart, before the
# daemon is told it failed (it then exits non-zero): a full disk may be cleared meanwhile.
FINAL_CHECKPOINT_RETRIES = (0.5, 1.0, 2.0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_for_rank(config: FednodeConfig, local_rank: int) -> torch.device:
    """The device a training process uses: node.device, and on CUDA with several processes on
    this host, one GPU per local rank (cuda:<local rank>, as torchrun's LOCAL_RANK convention)."""
    if config.training.torch_threads:
        torch.set_num_threads(config.training.torch_threads)
    try:
        device = resolve_device(config.node.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if device.type == "cuda" and config.training.local_processes > 1:
        count = torch.cuda.device_count()
        if config.training.local_processes > count:
            raise ConfigError(f"training.nproc_per_node = {config.training.local_processes} processes on CUDA need "
                              f"as many GPUs; torch sees {count}. Lower nproc_per_node or use node.device = \"cpu\"")
        device = torch.device("cuda", local_rank)
    return device


def build_local_training(config: FednodeConfig, device: torch.device) -> tuple[Any, Any, LocalTrainer]:
    """(task, attack or None, trainer) of this member, as every rank of its job builds them: the
    same data, labels and seed on each, so each rank draws the same batches."""
    training, task_cfg = config.training, config.task
    task = load_task(task_cfg.name, TaskContext(task_cfg.shard_index, task_cfg.shard_count, task_cfg.seed),
                     task_cfg.params, search_path=task_cfg.path)
    attack = build_attack(config)
    if attack is not None and attack.kind == "data":
        labels = getattr(task.train_data, "labels", None)
        if not isinstance(labels, torch.Tensor):
            raise ConfigError(f"attack {config.attack.name!r} needs a task whose training data has .labels")
        task.train_data.labels = attack.attack.transform_labels(labels)
    try:
        inner = resolve_inner_optimizer(training.optimizer, task, lr=training.lr, momentum=training.momentum,
                                        weight_decay=training.weight_decay)
    except ValueError as exc:
        raise TaskError(str(exc)) from exc
    trainer = LocalTrainer(
        task, device, batch_size=training.batch_size, lr=training.lr, momentum=training.momentum,
        weight_decay=training.weight_decay,
        # Batches differ per shard but are reproducible for a given seed and shard.
        seed=task_cfg.seed * 1_000_003 + task_cfg.shard_index,
        slowdown=training.slowdown, emulated_step_seconds=training.emulated_step_ms / 1000.0, optimizer=inner,
    )
    return task, attack, trainer


def build_attack(config: FednodeConfig) -> Any:
    from fednode.node.federation.attacker import build_attacker

    spec = config.attack
    if not spec.name:
        return None
    try:
        return build_attacker(spec.name, dict(spec.params), spec.timing, list(spec.colluders))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid attack.name / attack.params: {exc}") from exc


class TrainingWorker:
    """Model, trainer and runners of one node; see the module docstring."""

    def __init__(self, config: FednodeConfig, link: Link, group: Any = None) -> None:
        self.config = config
        self.link = link
        self.group = group  # the RankGroup of a job of several processes (training.world_size > 1)
        self.state_dir = config.resolved_state_dir()
        self.mesh = RemoteMesh(link)
        self._dispatch: Callable[[worker_pb2.LinkFrame], Any] | None = None  # from handlers(), on first use
        self.checkpoints = CheckpointStore(self.state_dir)
        self._checkpoint_writer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self.round = 0
        self.model_version = 0
        self.extra_state: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.runner: Any = None
        self.session_stop = threading.Event()  # the trainer polls it between steps
        self.stop_reason = ""
        self.linger = False
        # A certified federation's budget: reached -> stop training, keep serving the final model
        # (announcements, snapshot offers, payloads) until serve_stop (the daemon stops or switches).
        self.max_rounds = 0
        self.certified = False
        self.finishing = False
        self.serve_stop = asyncio.Event()
        self._session: asyncio.Task[None] | None = None
        self._reported_round = 0  # the last round reported to the daemon
        self.exit = asyncio.Event()
        # Checkpoint writes (updated by the writer thread; read by the event loop)
        self.checkpoint_health = worker_pb2.CheckpointHealth(written_round=-1)

    # ------------------------------------------------------------------------------ set-up
    def setup(self) -> worker_pb2.WorkerReady:
        self.identity = load_identity(identity_path(self.state_dir))
        training = self.config.training
        self.device = device_for_rank(self.config, 0)
        self.task, self.attack, local = build_local_training(self.config, self.device)
        self.model = self.task.model_factory().to(self.device)
        self.layout = model_layout(self.model)
        self.trainer: Any = local
        if self.group is not None:
            from fednode.node.worker.distributed import DistributedTrainer

            # Blocks until every rank of the job has joined (or the join times out).
            self.trainer = DistributedTrainer(local, self.group.join(self.device), self.task.model_factory)
        resumed = self._resume()
        return worker_pb2.WorkerReady(
            layout_digest=self.layout.digest, parameters=self.layout.numel, device=str(self.device),
            task=self.task.description or self.task.name, train_samples=self.trainer.num_train_samples,
            round=self.round, model_version=self.model_version,
            checkpoint_federation_id=str(self.extra_state.get("federation_id", "")), resumed=resumed,
            rss_mb=current_rss_mb(), accuracy=float(self.metrics.get("accuracy", float("nan"))),
            loss=float(self.metrics.get("loss", float("nan"))), world_size=training.world_size,
        )

    def _resume(self) -> bool:
        checkpoint = self.checkpoints.load()
        if checkpoint is None:
            return False
        if checkpoint.layout_digest != self.layout.digest:
            raise TaskError(
                f"the checkpoint in {self.checkpoints.directory} is for a different model "
                f"(layout {checkpoint.layout_digest[:12]}, task builds {self.layout.digest[:12]}); "
                f"move it away or use another --state-dir"
            )
        assign_parameters(self.model, checkpoint.parameters)
        self.round = checkpoint.round
        self.model_version = checkpoint.model_version
        self.extra_state = dict(checkpoint.extra)
        self.metrics = dict(checkpoint.metrics)
        generator_state = checkpoint.extra.get("train_generator")
        if isinstance(generator_state, torch.Tensor):
            self.trainer.set_generator_state(generator_state)
        return True

    def components(self, settings: FederationSettings) -> tuple[Any, Any]:
        """(aggregator, compressor) for a federation; ConfigError with what to change."""
        from fednode.node.compression import UpdateCompressor, build_codec

        try:
            aggregator = build_aggregator(settings.rule, f=settings.f, **settings.rule_params)
        except (AggregationError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid aggregation settings: {exc}") from exc
        needed = aggregator.minimum_rows()
        # Synchronous rounds work out per round what the rule needs (the members found faulty are
        # no longer among the valid updates, see SyncRound.needed): a floor of 2f+3 for Krum would
        # let f crashed members of a 2f+3-member federation stall it. FedCompass groups still
        # wait for min_participants members before training, so it must cover the rule.
        if settings.schedule == "fedcompass" and settings.min_participants < needed:
            raise ConfigError(
                f"aggregation rule {settings.rule!r} with f = {settings.f} needs at least {needed} updates "
                f"per round, but min_participants = {settings.min_participants}; raise min_participants or lower f"
            )
        federation = self.config.federation
        problem = exchange_problem(settings.exchange, settings.schedule, settings.rule, settings.rule_params,
                                   federation.butterfly_parts or settings.min_participants)
        if problem is not None:
            raise ConfigError(f"invalid exchange settings: {problem}")
        try:
            compressor = UpdateCompressor(build_codec(settings.codec, **settings.codec_params),
                                          error_feedback=self.config.compression.error_feedback)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid compression settings: {exc}") from exc
        return aggregator, compressor

    # ------------------------------------------------------------------------------ link
    async def handle(self, frame: worker_pb2.LinkFrame) -> Any:
        """Dispatch a frame from the daemon through the worker's side of the link RPC (handlers())."""
        if self._dispatch is None:
            self._dispatch = table_handler(self.handlers(), "training worker", ignore_unknown_notifications=True)
        outcome = self._dispatch(frame)
        return await outcome if inspect.isawaitable(outcome) else outcome

    def handlers(self) -> dict[str, Callable[[worker_pb2.LinkFrame], Any]]:
        """Body -> handler for what the daemon sends (``link.WORKER_HANDLES``, but "configure",
        which run() takes before this worker exists). A handler returns (reply body, message), or
        None for an Empty reply or a notification; it may be a coroutine."""

        async def check_settings(frame: worker_pb2.LinkFrame) -> None:
            try:
                self.components(FederationSettings.from_proto(frame.check_settings))
            except ConfigError as exc:
                raise ValueError(exc.message) from None

        def member_key(frame: worker_pb2.LinkFrame) -> Any:
            member = self.runner.members.get(frame.member_key.peers[0]) if self.runner and frame.member_key.peers else None
            return "key", worker_pb2.Key(key=member.public_key if member is not None else b"")

        async def start_session(frame: worker_pb2.LinkFrame) -> Any:
            return await self.start_session(frame.start_session)

        async def shutdown(frame: worker_pb2.LinkFrame) -> Any:
            return "worker_totals", await self.shutdown(frame.shutdown)

        return {
            "mesh_event": lambda frame: self.mesh.deliver(frame.mesh_event),
            "mesh_info": lambda frame: self.mesh.update_info(frame.mesh_info),
            "refused": lambda frame: self._note_refusal(frame.refused),
            "stop_session": lambda frame: self.stop_session(frame.stop_session.reason, frame.stop_session.linger,
                                                            frame.stop_session.finish),
            "start_session": start_session,
            "check_settings": check_settings,
            "export_model": lambda frame: ("model_bytes", self.export_model(frame.export_model.format)),
            "publish_revocation": lambda frame: self.publish_revocation(frame.publish_revocation),
            "member_key": member_key,
            "session_state": lambda frame: ("state", self.session_state()),
            "shutdown": shutdown,
        }

    def _note_refusal(self, refusal: worker_pb2.ValidatorRefusal) -> None:
        from fednode.node.envelope import Rejected
        from fednode.proto.v1 import model_pb2

        if self.runner is None:
            return
        header = None
        if refusal.update_header:
            header = model_pb2.UpdateHeader()
            header.ParseFromString(refusal.update_header)
        self.runner.note_refusal(refusal.sender, Rejected(refusal.reason, refusal.message), header)  # type: ignore[arg-type]

    def export_metadata(self, fmt: str) -> dict[str, Any]:
        """What a model file needs to travel: where it comes from and how to feed it."""
        from fednode.node import __version__

        def number(value: Any) -> float | None:
            return float(value) if isinstance(value, (int, float)) and value == value else None

        federation_id = self.runner.federation_id if self.runner is not None else self.extra_state.get("federation_id", "")
        return {
            "fednode_version": __version__, "format": fmt or "pt", "task": self.config.task.name,
            "task_description": self.task.description, "task_params": dict(self.config.task.params),
            "layout_digest": self.layout.digest, "parameters": int(self.layout.numel),
            "federation_id": str(federation_id or ""), "round": self.round, "model_version": self.model_version,
            "accuracy": number(self.metrics.get("accuracy")), "loss": number(self.metrics.get("loss")),
            "peer_id": self.identity.peer_id, "exported_unix": time.time(),
            "preprocessing": dict(self.task.preprocessing),
        }

    def export_model(self, fmt: str) -> worker_pb2.ModelBytes:
        metadata = self.export_metadata(fmt)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if fmt in ("", "pt"):
            buffer = io.BytesIO()
            torch.save(state, buffer)
            data = buffer.getvalue()
        elif fmt == "safetensors":
            try:
                from safetensors.torch import save
            except ImportError:
                raise ValueError("safetensors export needs the safetensors package on the node: "
                                 "pip install 'fednode[export]'") from None
            # Header metadata is str -> str: the full record as JSON, plus the keys tools look for.
            data = save(state, metadata={"format": "pt", "fednode": json.dumps(metadata, allow_nan=False)})
        elif fmt == "raw":
            data = self._raw_model()
        else:
            raise ValueError(f'format must be "pt", "safetensors" or "raw", got {fmt!r}')
        return worker_pb2.ModelBytes(data=data, model_version=self.model_version,
                                     metadata_json=json.dumps(metadata, allow_nan=False))

    def _raw_model(self) -> bytes:
        """The lossless model as state sync serves it: with the outer optimizer's state when the
        federation's optimizer keeps one (a ModelState), else a TensorPayload."""
        from fednode.node.federation.outer import OuterConfig, OuterStateError, saved_state
        from fednode.node.federation.updates import model_state_payload

        parameters = flatten_parameters(self.model)
        if self.runner is not None:
            return model_state_payload(parameters, self.runner.outer, self.runner.outer_state)
        saved = self.extra_state.get("outer_state")
        if saved is not None:  # the last session's (checkpointed) state
            try:
                return model_state_payload(parameters, *saved_state(saved, self.layout.numel))
            except OuterStateError as exc:
                log.warning("exporting the model without its outer optimizer state: %s", exc)
        return model_state_payload(parameters, OuterConfig(), None)

    async def publish_revocation(self, revocation: Any) -> None:
        runner = self.runner
        if runner is None or runner.validator.policy is None:
            return
        runner.validator.policy.add_revocation(runner.federation_id, revocation)
        await runner.publish_revocation(revocation)

    # ------------------------------------------------------------------------------ sessions
    async def start_session(self, start: worker_pb2.StartSession) -> tuple[str, worker_pb2.WorkerTotals]:
        if self._session is not None and not self._session.done():
            raise ValueError("a session is running; stop it first")
        self.session_stop.clear()
        self.serve_stop.clear()
        self.stop_reason, self.linger, self.finishing = "", False, bool(start.finished)
        self.certified = bool(start.federation_id and start.certified)
        self.max_rounds = int(start.settings.max_rounds) if self.certified else 0
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._session = asyncio.ensure_future(self._run_session(start, started))
        await started
        return "worker_totals", worker_pb2.WorkerTotals(peak_rss_mb=peak_rss_mb(), rss_mb=current_rss_mb())

    def stop_session(self, reason: str, linger: bool = False, finish: bool = False) -> None:
        """End the session's training. `finish`: the federation's budget is reached; the session
        then serves the final model until a stop without `finish` (which also ends that)."""
        if not finish:
            self.serve_stop.set()
        if not self.session_stop.is_set():
            self.stop_reason, self.linger = reason, linger and not finish
            self.finishing = self.finishing or finish
            self.session_stop.set()
        if self.runner is not None:
            self.runner.wake()

    def _should_stop(self) -> bool:
        rounds = self.max_rounds if self.certified else self.config.training.rounds
        current = max(self.round, self.runner.round if self.runner is not None else 0)
        if rounds and current >= rounds and not self.session_stop.is_set():
            # A state sync can carry the runner past the last round without a round of its own.
            self.stop_session("rounds", linger=not self.certified, finish=self.certified)
        return self.session_stop.is_set()

    async def _run_session(self, start: worker_pb2.StartSession, started: asyncio.Future[None]) -> None:
        ended = worker_pb2.SessionEnded(federation_id=start.federation_id)
        try:
            if start.federation_id:
                await self._run_federated(start, started, ended)
            else:
                if not started.done():
                    started.set_result(None)
                await self._run_alone()
        except FednodeError as exc:
            ended.error, ended.exit_code = exc.message, int(exc.exit_code)
            ended.stop_reason = getattr(exc, "stop_reason", "") or ended.stop_reason
        except Exception as exc:
            log.exception("training session failed")
            ended.error, ended.exit_code = f"training failed: {exc}", int(ExitCode.INTERNAL)
        finally:
            if not started.done():
                started.set_exception(ValueError(ended.error or "the session ended before it started"))
            ended.round, ended.model_version = self.round, self.model_version
            with best_effort(log, "telling the daemon the session ended"):
                self.link.notify("session_ended", ended)

    async def _run_alone(self) -> None:
        steps = self.config.training.local_steps
        while not self._should_stop():
            before = flatten_parameters(self.model)
            result = await asyncio.to_thread(self.trainer.train_round, self.model, steps, self.session_stop)
            if result.steps < steps:
                assign_parameters(self.model, before)  # interrupted: keep the last complete state
                break
            self.round += 1
            self.model_version += 1
            await self._after_round(worker_pb2.RoundDone(
                round=self.round, model_version=self.model_version, train_loss=result.mean_loss,
                train_seconds=result.seconds, round_seconds=result.seconds, participants=1))

    async def _run_federated(self, start: worker_pb2.StartSession, started: asyncio.Future[None],
                             ended: worker_pb2.SessionEnded) -> None:
        from fednode.node.federation.butterfly import butterfly_config
        from fednode.node.federation.runner import FederationRunner
        from fednode.node.scheduler import SyncPolicy

        settings = FederationSettings.from_proto(start.settings)
        aggregator, compressor = self.components(settings)
        if settings.f and aggregator.caveats():
            log.warning("aggregation rule %r: %s", settings.rule, aggregator.caveats(),
                        extra={"event": "rule_caveat", "rule": settings.rule})
        federation = self.config.federation
        if settings.exchange and settings.exchange != federation.exchange:
            # The federation's descriptor names the exchange: every member uses the same.
            federation = federation.model_copy(update={"exchange": settings.exchange})
        runner_class: Any = FederationRunner
        options: dict[str, Any] = {}
        if settings.schedule == "fedcompass":
            from fednode.node.federation.compass import CompassRunner, policy_from_config

            try:
                options["compass"] = policy_from_config(federation)
            except ValueError as exc:
                raise ConfigError(f"invalid fedcompass settings in [federation]: {exc}") from exc
            runner_class = CompassRunner
        trust = None
        if start.certified:
            from fednode.node.membership import TrustPolicy
            from fednode.node.membership.policy import FAR_FUTURE_MS

            # The membership store is the daemon's: the worker never opens it (the store tidies
            # its directory on open). The daemon hands over the revocations it verified.
            trust = TrustPolicy()
            for revocation in start.revocations:
                trust.add_revocation(start.federation_id, revocation, now_unix_ms=FAR_FUTURE_MS)
        self.runner = runner_class(
            federation_id=start.federation_id, identity=self.identity, mesh=self.mesh, model=self.model,
            trainer=self.trainer, layout=self.layout, aggregator=aggregator, compressor=compressor,
            local_steps=self.config.training.local_steps,
            policy=SyncPolicy(min_participants=settings.min_participants, f=settings.f,
                              rows_needed=lambda byzantine: aggregator.with_f(byzantine).minimum_rows()),
            announce_interval=federation.announce_interval, push=federation.push,
            max_clock_skew=federation.max_clock_skew, stop=self.session_stop, attack=self.attack,
            on_round=self._on_federated_round, display_name=start.display_name, trust=trust,
            certificate=start.certificate if start.HasField("certificate") else None,
            on_event=self._forward_event, alone_timeout=federation.alone_timeout, outer=settings.outer,
            butterfly=butterfly_config(federation) if settings.schedule == "sync" else None, **options,
            # FedCompass keeps its own model state (master copy, schedule): it checkpoints after
            # its aggregations only.
            on_synced=self._on_synced if settings.schedule == "sync" else None,
        )
        self.runner.on_sync = self._record_synced_model
        if not settings.outer.is_identity:
            log.info("outer optimizer: %s", settings.outer.describe())
        if self.extra_state.get("federation_id") == start.federation_id:
            self.runner.restore(self.round, self.model_version, self.extra_state)
        else:
            # A federation this node has no checkpoint for: its rounds count from zero (peers
            # that are ahead are caught up with by state sync).
            self.round = self.model_version = 0
        self._reported_round = self.round
        try:
            await self.runner.start()
            started.set_result(None)
            if not self.finishing and not self._should_stop():
                await self.runner.run(should_stop=self._should_stop)
            await self._record_synced_model()
            if self.finishing and not self.serve_stop.is_set():
                log.info("finished: serving the final model (round %d) to members until stopped", self.runner.round)
                await self.runner.serve_final(self.serve_stop)
        finally:
            runner = self.runner
            self.round, self.model_version = runner.round, runner.model_version
            if self.linger and self.stop_reason in ("rounds", "target_accuracy"):
                # federation.linger is granted on top of the shutdown budget (the daemon's bound).
                await runner.linger(self.config.federation.linger)
            self._fill_session_totals(ended)
            await runner.close()
            self.extra_state = {**self.extra_state, **runner.checkpoint_extra()}
            self.runner = None

    def _on_synced(self) -> None:
        """A state sync moved the model: checkpoint it, as after a round (a member that only ever
        synced would otherwise restart from wherever its last own round was, or from zero)."""
        if self.runner is not None:
            self.round, self.model_version = self.runner.round, self.runner.model_version
            self.save_checkpoint(background=True)

    async def _record_synced_model(self) -> None:
        """A state sync can carry the model past the last round this node closed itself (the
        others finished it first, typically the last round). Record the model the session ends
        with, so the summary and the checkpoint describe it rather than the one before."""
        runner = self.runner
        if runner.round <= self._reported_round:
            return
        self.round, self.model_version = runner.round, runner.model_version
        await self._after_round(worker_pb2.RoundDone(
            round=runner.round, model_version=runner.model_version, train_loss=float("nan"),
            close_reason="state sync", federated=True, synced=True, state=self.session_state()))

    def _fill_session_totals(self, ended: worker_pb2.SessionEnded) -> None:
        runner = self.runner
        for reason, count in runner.rejections.items():
            ended.rejections[reason] = count
        ended.syncs = runner.syncs
        ended.direct_deliveries = runner.direct_deliveries
        ended.push_only_messages = runner.push_only_messages
        for name, samples in runner.timings.items():
            if samples:
                ordered = sorted(samples)
                ended.timings[name].CopyFrom(worker_pb2.Timing(
                    median=statistics.median(ordered), p90=ordered[int(0.9 * (len(ordered) - 1))], count=len(ordered)))
        ended.contributions.extend(self._contributions())
        ended.stop_reason = self.stop_reason

    def _contributions(self) -> list[worker_pb2.Contribution]:
        runner = self.runner
        if runner is None:
            return []
        return [worker_pb2.Contribution(peer_id=peer, accepted=c.accepted, selected=c.selected,
                                        rejected=dict(c.rejected), reputation=c.reputation)
                for peer, c in sorted(runner.contributions.items())]

    def _forward_event(self, kind: str, **fields: Any) -> None:
        """Runner events -> the daemon (admin events, audit log, metrics)."""
        revocation = fields.get("revocation")
        if kind == "revocation" and revocation is not None and self.runner is not None:
            policy = self.runner.validator.policy
            if policy is not None:
                with best_effort(log, "applying a revocation to the worker's trust policy"):
                    policy.add_revocation(self.runner.federation_id, revocation)
        event = worker_pb2.RunnerEvent(
            kind=kind, peer_id=str(fields.get("peer_id", "")), round=int(fields.get("round", 0) or 0),
            payload_sha256=bytes(fields.get("payload_sha256", b"") or b""), reason=str(fields.get("reason", "") or ""),
            detail=str(fields.get("detail", "") or "")[:2000],
        )
        if "selected" in fields:
            event.selected, event.has_selected = bool(fields["selected"]), True
        if fields.get("score") is not None:
            event.score, event.has_score = float(fields["score"]), True
        if revocation is not None:
            event.revocation.CopyFrom(revocation)
        with best_effort(log, f"forwarding a {kind} event to the daemon (audit log, metrics)"):
            self.link.notify("runner_event", event)

    async def _on_federated_round(self, outcome: Any) -> None:
        self.round, self.model_version = outcome.round, outcome.model_version
        report = worker_pb2.RoundDone(
            round=outcome.round, model_version=outcome.model_version, train_loss=outcome.train.mean_loss,
            train_seconds=outcome.train.seconds, round_seconds=outcome.round_seconds,
            participants=len(outcome.participants), left_out=len(outcome.rejected_by_aggregator),
            aggregation_seconds=outcome.aggregation_seconds, close_reason=outcome.close_reason, federated=True,
            state=self.session_state(),
        )
        await self._after_round(report)

    def session_state(self) -> worker_pb2.SessionState:
        runner = self.runner
        if runner is None:
            state = worker_pb2.SessionState(round=self.round, model_version=self.model_version)
            state.ranks.extend(self.rank_health())
            return state
        state = worker_pb2.SessionState(
            round=runner.round, model_version=runner.model_version, expected=sorted(runner.rounds.expected()),
            group_id=bytes(getattr(runner, "current_group_id", b"") or b""), contributions=self._contributions())
        state.ranks.extend(self.rank_health())
        for member in runner.members.values():
            state.members.append(worker_pb2.Member(
                peer_id=member.peer_id, public_key=member.public_key, multiaddrs=list(member.multiaddrs),
                last_seen=member.last_seen, display_name=member.display_name, model_version=member.model_version,
                round=member.round))
        return state

    def rank_health(self) -> list[worker_pb2.RankHealth]:
        """The training job's processes (none when this worker trains alone)."""
        if self.group is None:
            return []
        return [worker_pb2.RankHealth(rank=r["rank"], local_rank=r["local_rank"], host=r["host"], pid=r["pid"],
                                      state=r["state"], heartbeat_age=r["heartbeat_age"], rounds=r["rounds"])
                for r in self.group.health()]

    async def _after_round(self, report: worker_pb2.RoundDone) -> None:
        evaluation = self.trainer.evaluate(self.model)
        report.accuracy, report.loss = evaluation.accuracy, evaluation.loss
        report.rss_mb = current_rss_mb()
        report.cpu_seconds = time.process_time()
        report.checkpoint.CopyFrom(self.checkpoint_health)  # up to the last round's write
        report.ranks.extend(self.rank_health())
        self.metrics = {"accuracy": evaluation.accuracy, "loss": evaluation.loss}
        reply = await self.link.call("round_done", report)
        self._reported_round = report.round
        verdict = reply.round_verdict
        self.save_checkpoint(background=True)
        if verdict.stop:
            self.stop_session(verdict.reason, verdict.linger, verdict.finish)

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, background: bool = False) -> None:
        """Serialize now; write (fsync, rename) in the checkpoint thread, in order. A failed
        write is logged and counted (`checkpoint_health`, reported with every round); in the
        background the next round's write is the retry, otherwise the error is raised."""
        extra: dict[str, Any] = dict(self.extra_state)
        extra["train_generator"] = self.trainer.generator_state()
        if self.runner is not None:
            extra.update(self.runner.checkpoint_extra())
        data = Checkpoint(round=self.round, model_version=self.model_version, layout_digest=self.layout.digest,
                          parameters=flatten_parameters(self.model), metrics=dict(self.metrics),
                          extra=extra).to_bytes()
        queued: Future[None] = self._checkpoint_writer.submit(self._write_checkpoint, data, self.round)
        if background:
            queued.add_done_callback(lambda written: written.exception())  # reported by _write_checkpoint
        else:
            queued.result()

    def _write_checkpoint(self, data: bytes, round_number: int) -> None:
        """In the checkpoint thread: write, and keep the health record that reports it."""
        health = self.checkpoint_health
        try:
            self.checkpoints.write(data)
        except Exception as exc:
            health.failures += 1
            health.failures_total += 1
            health.error = f"{type(exc).__name__}: {exc}"
            on_disk = f"round {health.written_round}" if health.written_round >= 0 else "none from this run"
            log.error("checkpoint of round %d not written (%s, %d failure(s) in a row) in %s; the newest one on "
                      "disk is %s; the next one is tried after the next round. Free space or fix the state dir.",
                      round_number, health.error, health.failures, self.checkpoints.directory, on_disk,
                      extra={"event": "checkpoint_failed", "round": round_number, "error": health.error})
            raise
        if health.failures:
            log.warning("checkpoint written again (round %d) after %d failed write(s)", round_number, health.failures,
                        extra={"event": "checkpoint_recovered", "round": round_number})
        health.failures, health.error, health.written_round = 0, "", round_number

    async def shutdown(self, request: worker_pb2.Shutdown) -> worker_pb2.WorkerTotals:
        self.stop_session(self.stop_reason or "shutdown")
        if self._session is not None:
            with best_effort(log, "ending the session before shutdown"):
                await self._session
        totals = worker_pb2.WorkerTotals(peak_rss_mb=peak_rss_mb())
        if request.checkpoint:
            totals.checkpoint_error = await self._final_checkpoint()
        totals.checkpoint.CopyFrom(self.checkpoint_health)
        self.exit.set()
        return totals

    async def _final_checkpoint(self) -> str:
        """Write the final checkpoint, retrying a failed write a few times; "" or why it failed."""
        for pause in (*FINAL_CHECKPOINT_RETRIES, None):
            try:
                await asyncio.to_thread(self.save_checkpoint)
                return ""
            except Exception:
                if pause is None:
                    break
                await asyncio.sleep(pause)
        return self.checkpoint_health.error or "the final checkpoint could not be written"


async def serve(link_fd: int) -> int:
    """Run the worker until the daemon shuts it down or goes away; returns the exit code."""
    from fednode.node.logs import configure_logging, log_task_stacks

    sock = socket.socket(fileno=link_fd)
    # `kill -USR1 <worker pid>`: log where every asyncio task waits, as the daemon does.
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_task_stacks, asyncio.get_running_loop())
    configure_frame: asyncio.Future[worker_pb2.Configure] = asyncio.get_running_loop().create_future()
    worker: TrainingWorker | None = None

    async def handle(frame: worker_pb2.LinkFrame) -> Any:
        if frame.WhichOneof("body") == "configure":
            if not configure_frame.done():
                configure_frame.set_result(frame.configure)
            return None
        if worker is None:
            if frame.WhichOneof("body") == "stop_session":
                return None  # no session runs yet: nothing to stop (the daemon's shutdown follows)
            raise ValueError("the training worker is still starting")
        return await worker.handle(frame)

    link = await Link.over_socket(sock, handle, "training worker")
    reading = asyncio.ensure_future(link.run())
    first: set[asyncio.Future[Any]] = {configure_frame, reading}
    done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if configure_frame not in done:
        return int(ExitCode.INTERNAL)  # the daemon went away before configuring us
    config = FednodeConfig.model_validate_json(configure_frame.result().config_json)
    configure_logging(config.node.log_format, config.node.log_level)
    group: Any = None
    watching: asyncio.Task[None] | None = None
    try:
        if config.training.world_size > 1:
            from fednode.node.worker.distributed import RankGroup

            # On this (the main) thread: the local ranks die with the thread that started them.
            group = RankGroup(config)
            watching = asyncio.ensure_future(_watch_ranks(group))
        worker = TrainingWorker(config, link, group)
        ready = await asyncio.to_thread(worker.setup)
    except FednodeError as exc:
        link.notify("failed", worker_pb2.WorkerFailed(exit_code=int(exc.exit_code), message=exc.message))
        await link.wait_drained()
        if group is not None:
            group.close()
        return int(exc.exit_code)
    link.notify("ready", ready)
    exit_requested = asyncio.ensure_future(worker.exit.wait())
    await asyncio.wait({reading, exit_requested}, return_when=asyncio.FIRST_COMPLETED)
    if watching is not None:
        watching.cancel()
    if not exit_requested.done():
        # The daemon is gone without a shutdown: stop at once (its kill -9 would SIGKILL us anyway).
        worker.stop_session("daemon gone")
        if group is not None:
            group.close()
        return int(ExitCode.INTERNAL)
    if group is not None:
        await asyncio.to_thread(group.close)
    await asyncio.sleep(0)  # let the shutdown reply go out
    await link.wait_drained()
    link.close()
    return int(ExitCode.OK)


async def _watch_ranks(group: Any) -> None:
    """A local rank that exits, or any rank silent for longer than training.rank_timeout (hung,
    stopped, or cut off), ends the job at once, between rounds too (a round in progress fails
    with it): the daemon then restarts this worker, and with it the job, from the checkpoint."""
    from fednode.node.worker.distributed import fail_job

    while True:
        await asyncio.sleep(0.5)
        failures = group.failures()
        if failures:
            fail_job(group)("a rank of the training job exited: " + "; ".join(failures))
        try:
            hung = group.hung_ranks()
        except Exception as exc:  # the store is ours: a failed read is a broken job, seen below
            log.debug("reading the ranks' heartbeats: %s", exc)
            continue
        if hung:
            rank, silent, beat = hung[0]
            where = f"pid {beat.get('pid', '?')} on {beat.get('host', '?')}"
            fail_job(group, "rank_hung", rank=rank, silent_seconds=round(silent, 1))(
                f"rank {rank} of the training job ({where}) sent no heartbeat for {silent:.1f} s "
                f"(training.rank_timeout = {group.rank_timeout:g} s): it is hung, stopped or unreachable"
                + "".join(f"; rank {r} silent for {s:.1f} s" for r, s, _ in hung[1:]))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fednode.node.worker",
                                     description="fednode's training worker (started by `fednode start`)")
    parser.add_argument("--link-fd", type=int, required=True, help="inherited socket to the daemon")
    args = parser.parse_args(argv)
    if not die_with_parent(signal.SIGKILL):  # the daemon's death also closes the link: we stop on EOF
        log.debug("PR_SET_PDEATHSIG unavailable; the worker stops when its link to the daemon closes")
    # Ctrl-C reaches the whole process group; the daemon decides how the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = time.perf_counter()
    code = asyncio.run(serve(args.link_fd))
    log.debug("training worker exits (%d) after %.1f s", code, time.perf_counter() - started)
    logging.shutdown()
    os._exit(code)  # threads (checkpoint writer, torch pools) must not keep the process alive
