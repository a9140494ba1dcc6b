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
import resource
import signal
import statistics
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from fednode.aggregators import AggregationError
from fednode.aggregators import build as build_aggregator
from fednode.node import __version__
from fednode.node.checkpoint import Checkpoint, CheckpointStore
from fednode.node.config import FednodeConfig
from fednode.node.durable import atomic_write_bytes, remove_stale_temp_files
from fednode.node.errors import ConfigError, ExitCode, NetworkError, StateDirError, TaskError
from fednode.node.identity import Identity, load_or_create_identity
from fednode.node.logs import quiet_noisy_libraries
from fednode.node.model import assign_parameters, flatten_parameters, model_layout
from fednode.node.tasks import Task, TaskContext, load_task
from fednode.node.trainer import LocalTrainer, resolve_device

log = logging.getLogger("fednode.daemon")
AUDIT_SYNC_SECONDS = 1.0  # the audit log is fsynced this often (records are written at once)
AUDIT_FSYNC_EVERY = 1024  # ... or after this many records, whichever comes first

SUMMARY_FILE = "summary.json"
LOCK_FILE = "daemon.lock"


@dataclass
class RoundRecord:
    round: int
    model_version: int
    accuracy: float
    loss: float
    train_loss: float
    seconds: float  # local training time
    round_seconds: float = 0.0  # whole round: training, exchange, aggregation
    participants: int = 1
    left_out: int = 0  # updates the aggregator did not use


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
    federation_id: str = ""
    attack: str = ""
    multiaddrs: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    contributions: dict[str, dict[str, Any]] = field(default_factory=dict)
    syncs: int = 0
    direct_deliveries: int = 0  # control messages that reached this node by push before gossip
    push_only_messages: int = 0  # control messages this node sent by push only (all members reached)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    idle_rss_mb: float = 0.0  # resident memory after start-up, before the first round
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


@dataclass(frozen=True)
class FederationSettings:
    """How a federation trains: from its signed descriptor, or from config for an open one."""

    rule: str
    rule_params: dict[str, Any]
    f: int
    schedule: str
    min_participants: int
    codec: str
    codec_params: dict[str, Any]


@dataclass(frozen=True)
class FederationSession:
    """The federation this node trains in now."""

    federation_id: str
    settings: FederationSettings
    certificate: Any = None  # MemberCertificate for certified federations
    certified: bool = False  # membership enforced (created/joined via the admin API)
    private: bool = False  # relays and payload servers serve members only


class Daemon:
    """One node. Construct, then `await run()`; returns the process exit code.

    Without `federation.id` the node trains alone. With it, the node joins the mesh and trains
    with the federation (`fednode.node.federation.FederationRunner`, or `CompassRunner` when
    `federation.schedule = "fedcompass"`).
    """

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
        self._checkpoint_writer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self.round = 0
        self.model_version = 0
        self.summary: RunSummary | None = None
        self.extra_state: dict[str, Any] = {}
        self.mesh: Any = None
        self.runner: Any = None
        self._started = time.perf_counter()
        self.state = "starting"
        self.display_name = config.node.display_name
        self.session: FederationSession | None = None
        self.bootstrap_hints: list[str] = []
        self._saved_peer_addresses: list[str] = []  # what _remember_peer_addresses wrote last
        self.store: Any = None  # MembershipStore
        self.trust: Any = None  # TrustPolicy
        self.audit: Any = None  # AuditLog
        self.metrics: Any = None  # NodeMetrics
        self.control: Any = None  # NodeControl (admin API backend)
        self.admin: Any = None  # AdminServer
        self._session_changed: asyncio.Event | None = None
        self._mesh_lock: asyncio.Lock | None = None
        self._alone_allowed = True

    @property
    def federated(self) -> bool:
        return bool(self.config.federation.id)

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
        self.attack = self._build_attack()
        if self.attack is not None and self.attack.kind == "data":
            self._poison_training_data()
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
            emulated_step_seconds=training.emulated_step_ms / 1000.0,
        )
        from fednode.node.membership import AuditLog, MembershipStore, TrustPolicy

        self.store = MembershipStore(self.state_dir)
        self.trust = TrustPolicy()
        self.trust.load_store(self.store)
        # Each record is written (so it survives kill -9) before the call returns; fsyncs are
        # batched on a 1 s timer (see _sync_audit_log) instead of one per record, which cost a
        # synchronous fsync in the event loop for every update of every round (8 per round with
        # 4 members, tens of ms).
        self.audit = AuditLog(self.state_dir / "audit.jsonl", fsync_every=AUDIT_FSYNC_EVERY)
        self.session = self._initial_session()
        if self.session is not None:
            self._alone_allowed = False
            self._federation_components(self.session.settings)  # fail fast on bad settings
        self.summary = RunSummary(
            peer_id=self.identity.peer_id,
            version=__version__,
            task=self.task.description or self.task.name,
            device=str(device),
            state_dir=str(self.state_dir),
            started_unix=time.time(),
            federation_id=self.session.federation_id if self.session else "",
            attack=self.config.attack.name,
        )
        self._resume()
        log.info(
            "task %s on %s: %d training examples, %d parameters",
            self.summary.task,
            device,
            self.trainer.num_train_samples,
            self.layout.numel,
        )

    def _build_attack(self) -> Any:
        from fednode.node.federation import build_attack

        spec = self.config.attack
        if not spec.name:
            return None
        try:
            attack = build_attack(spec.name, dict(spec.params))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid attack.name / attack.params: {exc}") from exc
        log.warning("this node is BYZANTINE for testing: attack %r %s", spec.name, dict(spec.params))
        return attack

    def _poison_training_data(self) -> None:
        """Data attacks (label flip) change what this node trains on."""
        assert self.task is not None
        data = self.task.train_data
        labels = getattr(data, "labels", None)
        if not isinstance(labels, torch.Tensor):
            raise ConfigError(f"attack {self.config.attack.name!r} needs a task whose training data has .labels")
        data.labels = self.attack.transform_labels(labels)

    def _config_settings(self) -> FederationSettings:
        cfg = self.config
        return FederationSettings(
            rule=cfg.aggregation.rule, rule_params=dict(cfg.aggregation.params), f=cfg.aggregation.f,
            schedule=cfg.federation.schedule, min_participants=cfg.federation.min_participants,
            codec=cfg.compression.codec, codec_params=dict(cfg.compression.params),
        )

    def _descriptor_settings(self, descriptor: Any) -> FederationSettings:
        params = json.loads(descriptor.aggregator_params_json or "{}")
        f = int(params.pop("f", 0))
        same_codec = descriptor.codec in ("", self.config.compression.codec)
        return FederationSettings(
            rule=descriptor.aggregator or self.config.aggregation.rule, rule_params=params, f=f,
            schedule=descriptor.schedule or self.config.federation.schedule,
            min_participants=max(1, descriptor.min_participants or self.config.federation.min_participants),
            codec=descriptor.codec or self.config.compression.codec,
            codec_params=dict(self.config.compression.params) if same_codec else {},
        )

    def _initial_session(self) -> FederationSession | None:
        """config `federation.id`, else the federation this node created or joined before."""
        wanted = self.config.federation.id
        stored = [fid for fid in self.store.federation_ids() if self.store.load(fid).certificate is not None]
        if wanted and wanted not in stored:
            return FederationSession(wanted, self._config_settings())  # open federation (experiments)
        if wanted or stored:
            return self._certified_session(wanted or stored[0])
        return None

    def _certified_session(self, federation_id: str) -> FederationSession:
        state = self.store.load(federation_id)
        if state.descriptor is None or state.certificate is None:
            raise StateDirError(f"membership of {federation_id[:16]} in {self.state_dir} is incomplete; "
                                f"leave and join it again (fednode federation leave/join)")
        return FederationSession(federation_id, self._descriptor_settings(state.descriptor),
                                 certificate=state.certificate, certified=True, private=state.descriptor.private)

    def check_aggregation(self, rule: str, params: dict[str, Any], min_participants: int) -> None:
        """Raise ValueError when a federation's rule cannot work with its minimum participants."""
        params = dict(params)
        f = int(params.pop("f", 0))
        settings = FederationSettings(rule, params, f, "sync", min_participants, self.config.compression.codec,
                                      dict(self.config.compression.params))
        try:
            self._federation_components(settings)
        except ConfigError as exc:
            raise ValueError(exc.message) from exc

    def _federation_components(self, settings: FederationSettings) -> tuple[Any, Any]:
        """(aggregator, compressor) for a federation; ConfigError with what to change."""
        from fednode.node.compression import UpdateCompressor, build_codec

        try:
            aggregator = build_aggregator(settings.rule, f=settings.f, **settings.rule_params)
        except (AggregationError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid aggregation settings: {exc}") from exc
        needed = aggregator.minimum_rows()
        if settings.min_participants < needed:
            raise ConfigError(
                f"aggregation rule {settings.rule!r} with f = {settings.f} needs at least {needed} updates "
                f"per round, but min_participants = {settings.min_participants}; raise min_participants or lower f"
            )
        try:
            compressor = UpdateCompressor(
                build_codec(settings.codec, **settings.codec_params), error_feedback=self.config.compression.error_feedback
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid compression settings: {exc}") from exc
        return aggregator, compressor

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
        self.extra_state = dict(checkpoint.extra)
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
        # Whatever asked for the stop (a signal, the round budget, the target accuracy, the admin
        # API), the graceful part is bounded: a stuck step must not keep the process alive.
        with suppress(RuntimeError):  # no running loop (tests driving the daemon synchronously)
            asyncio.get_running_loop().call_later(self.config.node.shutdown_timeout, self._force_exit)
        if self.runner is not None:
            self.runner.wake()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if self.stop_event.is_set() and signum == signal.SIGINT:
                log.error("second SIGINT: exiting immediately without a final checkpoint")
                os._exit(ExitCode.FORCED_SHUTDOWN)
            log.info("%s received: stopping gracefully (send SIGINT again to force)", name)
            self.request_stop(name)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        # `kill -USR1 <pid>`: log where every asyncio task is waiting (for a daemon that seems stuck).
        loop.add_signal_handler(signal.SIGUSR1, _log_task_stacks, loop)

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
        self._session_changed = asyncio.Event()
        try:
            self.setup()
            await self._start_services()
            try:
                await self._run_sessions()
                self._finish()
            finally:
                await self._stop_services()
        finally:
            self._lock.release()
        return ExitCode.OK

    async def _run_sessions(self) -> None:
        """Train alone, or with the current federation; switch when a federation is created,
        joined or left through the admin API; return when the daemon stops."""
        assert self._session_changed is not None
        while not self._done():
            self._session_changed.clear()
            session = self.session
            if session is not None:
                self.state = "training"
                await self._run_federated(session)
            elif self._alone_allowed:
                self.state = "training"
                await self._run_alone()
            else:
                self.state = "idle"  # left its federation: wait for a new one, or a stop
                await self._wait_for_change()

    async def _wait_for_change(self) -> None:
        assert self._session_changed is not None
        while not self.stop_event.is_set() and not self._session_changed.is_set():
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._session_changed.wait(), timeout=0.5)

    async def switch_federation(self, federation_id: str | None) -> None:
        """Make `federation_id` (certified, in the store) the one this node trains in; None = none."""
        assert self._session_changed is not None
        self.session = self._certified_session(federation_id) if federation_id else None
        self._alone_allowed = False
        if self.session is not None:
            self._federation_components(self.session.settings)
        self._session_changed.set()
        if self.runner is not None:
            self.runner.wake()

    async def _start_services(self) -> None:
        from fednode.node.admin import AdminServer, TcpListener
        from fednode.node.control import JOIN_REQUEST_KIND, NodeControl
        from fednode.node.metrics import NodeMetrics

        self.control = NodeControl(self)
        self._join_kind = JOIN_REQUEST_KIND
        admin = self.config.admin
        tcp = None
        if admin.listen:
            token = admin.token_file.read_text().strip() if admin.token_file else None
            tcp = TcpListener(
                address=admin.listen,
                certificate=admin.tls_cert.read_bytes() if admin.tls_cert else None,
                private_key=admin.tls_key.read_bytes() if admin.tls_key else None,
                token=token,
                insecure=admin.insecure,
            )
        self.admin = AdminServer(self.control, self.state_dir, tcp)
        from fednode.node.admin import AdminError

        try:
            await self.admin.start()
        except AdminError as exc:
            raise ConfigError(f"admin API: {exc.message}") from exc
        if self.config.metrics.port >= 0:
            self.metrics = NodeMetrics()
            port = self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
            log.info("metrics on http://%s:%d/metrics", self.config.metrics.host, port,
                     extra={"event": "metrics", "port": port})

    async def _stop_services(self) -> None:
        self.state = "stopping"
        for task in (getattr(self, "_reachability_task", None), getattr(self, "_audit_sync_task", None)):
            if task is not None:
                task.cancel()
        if self.admin is not None:
            with suppress(Exception):
                await self.admin.stop()
        if self.mesh is not None:
            with suppress(Exception):
                await self.mesh.stop()
            self.mesh = None
        if self.metrics is not None:
            with suppress(Exception):
                self.metrics.close()
        if self.audit is not None:
            with suppress(Exception):
                self.audit.close()

    def _done(self) -> bool:
        """Stop conditions that do not come from a signal."""
        training = self.config.training
        # A state sync can carry the runner past the last round without a round of its own.
        current = max(self.round, self.runner.round if self.runner is not None else 0)
        if training.rounds and current >= training.rounds:
            self.request_stop("rounds")
        return self.stop_event.is_set()

    def _session_over(self) -> bool:
        return self._done() or (self._session_changed is not None and self._session_changed.is_set())

    async def _run_alone(self) -> None:
        assert self.model is not None and self.trainer is not None
        training = self.config.training
        while not self._session_over():
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
            self._after_round(result.mean_loss, result.seconds, result.seconds, participants=1, left_out=0)

    async def ensure_mesh(self) -> Any:
        """The mesh, started on first use and kept for the daemon's life."""
        if self._mesh_lock is None:
            self._mesh_lock = asyncio.Lock()
        async with self._mesh_lock:  # admin calls and the session loop may both get here first
            if self.mesh is None:
                await self._start_mesh()
            return self.mesh

    async def _start_mesh(self) -> None:
        from fednode.node.membership.revocations import (
            REVOCATION_RECORD_NAMESPACE,
            select_revocation_record,
            validate_revocation_record,
        )
        from fednode.node.mesh import Mesh, MeshConfig, MeshError, RecordValidator, RelayLimits

        assert self.identity is not None
        mesh_cfg = self.config.mesh
        try:
            mesh_config = MeshConfig(
                identity_key=self.identity.private_seed,
                listen_multiaddrs=tuple(mesh_cfg.listen),
                announce_multiaddrs=tuple(mesh_cfg.announce) or None,
                bootstrap_multiaddrs=tuple(mesh_cfg.bootstrap),
                peer_hints=tuple(self.bootstrap_hints),
                relay_hop=mesh_cfg.relay_hop,
                record_validators={REVOCATION_RECORD_NAMESPACE: RecordValidator(validate_revocation_record,
                                                                                select_revocation_record)},
                fast_path=mesh_cfg.fast_path,
                fast_path_port=mesh_cfg.fast_path_port,
                relay_limits=RelayLimits(
                    max_circuit_duration_s=mesh_cfg.relay_max_circuit_duration,
                    max_circuit_bytes=mesh_cfg.relay_max_circuit_bytes,
                    max_reservations=mesh_cfg.relay_max_reservations,
                    max_circuits=mesh_cfg.relay_max_circuits,
                ),
            )
        except ValueError as exc:
            raise ConfigError(f"invalid [mesh] settings: {exc}") from exc
        mesh = Mesh(mesh_config)
        quiet_noisy_libraries()
        try:
            await mesh.start()
        except MeshError as exc:
            raise NetworkError(f"cannot start networking: {exc}; check mesh.listen and mesh.bootstrap") from exc
        self.mesh = mesh
        mesh.set_request_handler(self._answer_request)
        addresses = mesh.listen_multiaddrs()
        if self.summary is not None:
            self.summary.multiaddrs = list(addresses)
        log.info(
            "listening; to connect other peers to this one use: --set 'mesh.bootstrap=[\"%s\"]'",
            addresses[0] if addresses else "?",
            extra={"event": "listening", "multiaddrs": addresses},
        )
        self._reachability_task = asyncio.ensure_future(self._report_reachability())
        self._audit_sync_task = asyncio.ensure_future(self._sync_audit_log())

    async def _sync_audit_log(self) -> None:
        """fsync the audit log every AUDIT_SYNC_SECONDS, off the event loop (a power cut loses at
        most that much; a killed process loses nothing, the records are already written)."""
        while True:
            await asyncio.sleep(AUDIT_SYNC_SECONDS)
            if self.audit is not None:
                with suppress(Exception):
                    await asyncio.to_thread(self.audit.sync)

    async def _answer_request(self, kind: str, data: bytes, from_peer: str) -> bytes:
        if kind == self._join_kind and self.control is not None:
            return await self.control.answer_join(data, from_peer)
        raise ValueError(f"unknown request kind {kind!r}")

    async def _run_federated(self, session: FederationSession) -> None:
        from fednode.node.federation import FederationRunner
        from fednode.node.scheduler import SyncPolicy

        assert self.identity is not None and self.model is not None and self.trainer is not None
        federation = self.config.federation
        settings = session.settings
        aggregator, compressor = self._federation_components(settings)
        if session.certified and self.mesh is None:
            # Where members were last seen: a restarted member needs no mesh.bootstrap.
            own = f"/p2p/{self.identity.peer_id}"
            saved = [a for a in self.store.peer_addresses(session.federation_id) if not a.endswith(own)]
            self.bootstrap_hints = list(dict.fromkeys([*self.bootstrap_hints, *saved]))
        mesh = await self.ensure_mesh()
        runner_class: Any = FederationRunner
        schedule_options: dict[str, Any] = {}
        if settings.schedule == "fedcompass":
            from fednode.node.federation.compass import CompassRunner, policy_from_config

            try:
                schedule_options["compass"] = policy_from_config(federation)
            except ValueError as exc:
                raise ConfigError(f"invalid fedcompass settings in [federation]: {exc}") from exc
            runner_class = CompassRunner
        self.runner = runner_class(
            federation_id=session.federation_id,
            identity=self.identity,
            mesh=mesh,
            model=self.model,
            trainer=self.trainer,
            layout=self.layout,
            aggregator=aggregator,
            compressor=compressor,
            local_steps=self.config.training.local_steps,
            policy=SyncPolicy(min_participants=settings.min_participants),
            announce_interval=federation.announce_interval,
            push=federation.push,
            max_clock_skew=federation.max_clock_skew,
            stop=self.stop_event,
            attack=self.attack,
            on_round=self._on_federated_round,
            display_name=self.display_name,
            trust=self.trust if session.certified else None,
            certificate=session.certificate,
            on_event=self._on_runner_event,
            **schedule_options,
        )
        if self.extra_state.get("federation_id") == session.federation_id:
            self.runner.restore(self.round, self.model_version, self.extra_state)
        else:
            # A federation this node has no checkpoint for: its rounds count from zero (peers
            # that are ahead are caught up with by state sync).
            self.round = self.model_version = 0
        if self.summary is not None:
            self.summary.federation_id = session.federation_id
        # A private federation's relay serves its members only (not an open proxy).
        mesh.set_relay_admission(self._member_admission(session.federation_id) if session.private else None)
        try:
            await self.runner.start()
            if self.summary is not None:
                self.summary.idle_rss_mb = current_rss_mb()
            if not self._session_over():
                await self.runner.run(should_stop=self._session_over)
        finally:
            self.round, self.model_version = self.runner.round, self.runner.model_version
            if self.stop_reason in ("rounds", "target_accuracy"):
                # Half the shutdown budget: the final checkpoint and the mesh's stop need the rest.
                await self.runner.linger(self.config.node.shutdown_timeout / 2)
            self._record_mesh_totals()
            await self.runner.close()
            self.runner = None

    def _member_admission(self, federation_id: str) -> Any:
        """Relay admission for a private federation: peers whose valid, unrevoked certificate
        this node has verified (from their messages). Runs in the networking thread."""
        from fednode.node.identity import public_key_from_peer_id

        trust = self.trust

        def admitted(peer_id: str) -> bool:
            key = public_key_from_peer_id(peer_id)
            if key is None or trust.is_revoked(federation_id, member_public_key=key):
                return False
            return trust.member(federation_id, key) is not None

        return admitted

    def member_public_key(self, peer_id: str) -> bytes | None:
        """The Ed25519 key a member signs with (seen in its messages), for revocations."""
        runner = self.runner
        member = runner.members.get(peer_id) if runner is not None else None
        return member.public_key if member is not None and member.public_key else None

    def record_revocation(self, federation_id: str, revocation: Any) -> bool:
        """Remember a verified revocation (trust policy and store); True when it is new."""
        new = bool(self.trust.add_revocation(federation_id, revocation))
        if new:
            with suppress(Exception):
                self.store.add_revocation(federation_id, revocation)
            if self.audit is not None:
                with suppress(Exception):
                    self.audit.record("member_revoked", "applied", event={"federation_id": federation_id,
                                                                          "reason": revocation.reason})
        return new

    async def apply_revocation(self, federation_id: str, revocation: Any, *, spread: bool) -> bool:
        """Record a revocation this node issued and gossip it to the federation."""
        new = self.record_revocation(federation_id, revocation)
        if spread and self.runner is not None and self.runner.federation_id == federation_id:
            await self.runner.publish_revocation(revocation)
        return new

    def _on_runner_event(self, kind: str, **fields: Any) -> None:
        """Runner events -> admin WatchEvents, the audit log and metrics."""
        session = self.session
        federation_id = session.federation_id if session is not None else ""
        peer = str(fields.get("peer_id", ""))
        if kind in ("update_accepted", "update_rejected", "update_aggregated") and self.audit is not None:
            with suppress(Exception):
                score = fields.get("score")
                self.audit.record_update(
                    federation_id=federation_id, sender_peer_id=peer, round=int(fields.get("round", 0)),
                    payload_sha256=bytes(fields.get("payload_sha256", b"")).hex(),
                    accepted=kind != "update_rejected" and bool(fields.get("selected", True)),
                    reason=str(fields.get("reason", "")) or None,
                    aggregator_score=float(score) if score is not None else None,
                    detail="aggregation" if kind == "update_aggregated" else None,
                )
        if kind in ("update_accepted", "update_rejected") and self.metrics is not None:
            with suppress(Exception):
                self.metrics.record_update(federation_id, accepted=kind == "update_accepted",
                                           reason=fields.get("reason") or None)
        if kind == "revocation":
            revocation = fields.get("revocation")
            if revocation is not None and federation_id:
                self.record_revocation(federation_id, revocation)
            kind_detail = "revocation received"
        else:
            kind_detail = str(fields.get("detail", ""))
        if self.control is not None and kind not in ("update_accepted", "update_aggregated"):
            self.control.events.publish(
                kind, federation_id=federation_id, peer_id=peer, reason=str(fields.get("reason", "")),
                round=int(fields.get("round", 0)), detail=kind_detail[:500],
            )

    async def _report_reachability(self) -> None:
        """Say whether peers can dial this node and what it does about it (issue 8), as soon as
        AutoNAT has a verdict; after 30 s without one, say why, and report again once it comes
        (a bootstrap node started first has nobody to ask until peers join)."""
        with suppress(Exception):
            reachability = await self.mesh.wait_for_reachability(timeout=30.0)
            log.info("%s", self.mesh.reachability_report(),
                     extra={"event": "reachability_report", "status": reachability.status})
            if reachability.status == "unknown":
                reachability = await self.mesh.wait_for_reachability(timeout=3600.0)
                if reachability.status != "unknown":
                    log.info("%s", self.mesh.reachability_report(),
                             extra={"event": "reachability_report", "status": reachability.status})

    async def _on_federated_round(self, outcome: Any) -> None:
        self.round = outcome.round
        self.model_version = outcome.model_version
        self._after_round(
            outcome.train.mean_loss,
            outcome.train.seconds,
            outcome.round_seconds,
            participants=len(outcome.participants),
            left_out=len(outcome.rejected_by_aggregator),
        )
        federation_id = self.session.federation_id if self.session is not None else ""
        self._remember_peer_addresses()
        last = self.summary.history[-1] if self.summary and self.summary.history else None
        if self.metrics is not None and last is not None:
            with suppress(Exception):
                self.metrics.record_round(
                    federation_id, outcome.round, model_version=outcome.model_version, accuracy=last.accuracy,
                    loss=last.loss, train_loss=last.train_loss, aggregation_seconds=outcome.aggregation_seconds,
                    participants=len(outcome.participants),
                )
                if self.mesh is not None:
                    self.metrics.observe_mesh_stats(self.mesh.stats())
                    kinds: dict[str, int] = {}
                    for peer in self.mesh.peers():
                        kinds[peer.connection] = kinds.get(peer.connection, 0) + 1
                    self.metrics.set_peers(kinds)
                    self.metrics.set_reachability(self.mesh.reachability().status)
        if self.control is not None and last is not None:
            self.control.events.publish(
                "round", federation_id=federation_id, round=outcome.round, model_version=outcome.model_version,
                accuracy=last.accuracy, detail=f"{len(outcome.participants)} participant(s); {outcome.close_reason}",
            )

    def _remember_peer_addresses(self) -> None:
        """Save where the members were last seen (most recent first), so a restart reconnects
        without mesh.bootstrap. Writes only on change."""
        session, runner = self.session, self.runner
        if session is None or not session.certified or runner is None:
            return
        members = sorted(runner.members.values(), key=lambda m: m.last_seen, reverse=True)
        # Relayed addresses are left out: a relay is reached through its own direct address.
        addresses = [a for m in members for a in m.multiaddrs if "/p2p-circuit" not in a]
        if addresses == self._saved_peer_addresses:
            return  # the usual case: no disk access in the round path
        with suppress(Exception):  # a hint: never worth failing a round over
            self.store.save_peer_addresses(session.federation_id, addresses)
            self._saved_peer_addresses = addresses

    def _after_round(
        self, train_loss: float, train_seconds: float, round_seconds: float, *, participants: int, left_out: int
    ) -> None:
        assert self.model is not None and self.trainer is not None
        evaluation = self.trainer.evaluate(self.model)
        record = RoundRecord(
            round=self.round,
            model_version=self.model_version,
            accuracy=evaluation.accuracy,
            loss=evaluation.loss,
            train_loss=train_loss,
            seconds=train_seconds,
            round_seconds=round_seconds,
            participants=participants,
            left_out=left_out,
        )
        self._record(record)
        self._save_checkpoint(background=True)
        target = self.config.training.target_accuracy
        if target and evaluation.accuracy >= target:
            self.request_stop("target_accuracy")

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
            "round %d%s: test accuracy %.4f, test loss %.4f, train loss %.4f, %d participant(s) (%.2f s)",
            record.round,
            f"/{target}" if target else "",
            record.accuracy,
            record.loss,
            record.train_loss,
            record.participants,
            record.round_seconds,
            extra={"event": "round", "round": record.round, "accuracy": record.accuracy, "loss": record.loss,
                   "participants": record.participants},
        )

    def _record_mesh_totals(self) -> None:
        if self.summary is None or self.mesh is None or self.runner is None:
            return
        with suppress(Exception):
            stats = self.mesh.stats()
            self.summary.bytes_sent = stats.gossip_bytes_published + stats.blob_bytes_sent + stats.push_bytes_sent
            self.summary.bytes_received = stats.gossip_bytes_received + stats.blob_bytes_received + stats.push_bytes_received
        self.summary.rejected = dict(self.runner.rejections)
        with suppress(Exception):
            # Messages the mesh's validator refused never reach the runner; count them too.
            for reason, count in self.mesh.stats().gossip_rejected.items():
                self.summary.rejected[reason] = self.summary.rejected.get(reason, 0) + count
        self.summary.syncs = self.runner.syncs
        # A state sync can carry the node past rounds it never closed itself (to the last one,
        # when it fell behind at the end): the summary reports the round its model is at.
        self.summary.rounds = max(self.summary.rounds, self.runner.round)
        self.summary.model_version = max(self.summary.model_version, self.runner.model_version)
        self.summary.direct_deliveries = self.runner.direct_deliveries
        self.summary.push_only_messages = self.runner.push_only_messages
        self.summary.timings = {
            name: {"median": statistics.median(samples), "p90": sorted(samples)[int(0.9 * (len(samples) - 1))],
                   "count": len(samples)}
            for name, samples in self.runner.timings.items() if samples
        }
        self.summary.contributions = {
            peer: {"accepted": c.accepted, "selected": c.selected, "rejected": dict(c.rejected),
                   "reputation": c.reputation}
            for peer, c in sorted(self.runner.contributions.items())
        }

    def _save_checkpoint(self, background: bool = False) -> None:
        """Checkpoint the current state. `background`: serialize now, write (fsync, rename) in the
        checkpoint thread, so a round does not wait for the disk; writes stay in order, and a
        synchronous save waits for the ones queued before it."""
        assert self.model is not None and self.trainer is not None
        metrics: dict[str, float] = {}
        if self.summary and self.summary.history:
            last = self.summary.history[-1]
            metrics = {"accuracy": last.accuracy, "loss": last.loss}
        extra: dict[str, Any] = {"train_generator": self.trainer.generator_state()}
        if self.runner is not None:
            extra.update(self.runner.checkpoint_extra())
        data = Checkpoint(
            round=self.round,
            model_version=self.model_version,
            layout_digest=self.layout.digest,
            parameters=flatten_parameters(self.model),
            metrics=metrics,
            extra=extra,
        ).to_bytes()
        queued = self._checkpoint_writer.submit(self.checkpoints.write, data)
        if background:
            queued.add_done_callback(_log_checkpoint_failure)
        else:
            queued.result()

    def _finish(self) -> None:
        assert self.summary is not None
        self._save_checkpoint()
        self.summary.wall_seconds = time.perf_counter() - self._started
        self.summary.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.summary.stop_reason = self.stop_reason or "stopped"
        atomic_write_bytes(self.state_dir / SUMMARY_FILE, self.summary.to_json(), mode=0o644)
        log.info(
            "stopped (%s) after round %d: test accuracy %.4f; summary in %s",
            self.summary.stop_reason,
            self.summary.rounds,
            self.summary.accuracy,
            self.state_dir / SUMMARY_FILE,
            extra={"event": "stopped", "summary_file": str(self.state_dir / SUMMARY_FILE)},
        )


def _log_checkpoint_failure(written: Future[None]) -> None:
    """A background checkpoint write failed (full or failing disk): say so; training goes on and
    the next round's checkpoint tries again."""
    exc = written.exception()
    if exc is not None:
        log.error("checkpoint not written: %s", exc)


def _log_task_stacks(loop: asyncio.AbstractEventLoop) -> None:
    """Log where each asyncio task of the daemon is waiting (innermost frame last)."""
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        # Task.get_stack() shows one frame of a suspended coroutine; follow the await chain.
        where, awaited = [], task.get_coro()
        while awaited is not None and len(where) < 16:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is None:
                where.append(type(awaited).__name__)
                break
            where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        log.warning("task %s waits in %s", task.get_name(), " > ".join(where) or "(done)")


def current_rss_mb() -> float:
    """Resident set size of this process now (Linux /proc), in MiB; NaN where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def summary_from_file(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
