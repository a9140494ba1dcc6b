"""`fednode start`: the long-running node process.

Lifecycle: lock the state dir -> load or create the identity -> start the training worker (it
builds the task and model and resumes from the last checkpoint) -> run rounds until a stop
condition -> final checkpoint (by the worker) and summary. SIGINT/SIGTERM request a graceful
stop: the worker's training stops between steps, a final checkpoint is written, the worker and
every thread end, and the process exits 0 within `node.shutdown_timeout` seconds, or is forced
out with exit code 10 (the worker dies with it). A second SIGINT forces it at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import resource
import signal
import threading
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from fednode.node import __version__
from fednode.node.config import FednodeConfig
from fednode.node.durable import atomic_write_bytes, remove_stale_temp_files
from fednode.node.errors import ConfigError, ExitCode, NetworkError, StateDirError
from fednode.node.identity import Identity, load_or_create_identity
from fednode.node.logs import current_rss_mb, log_task_stacks, quiet_noisy_libraries
from fednode.proto.v1 import worker_pb2

log = logging.getLogger("fednode.daemon")
AUDIT_SYNC_SECONDS = 1.0  # the audit log is fsynced this often (records are written at once)
AUDIT_FSYNC_EVERY = 1024  # ... or after this many records, whichever comes first

LINGER_REASONS = ("rounds", "target_accuracy")  # stops after which peers may still fetch from us
SUMMARY_FILE = "summary.json"
# A training worker that dies (killed, out of memory) is restarted from the last checkpoint, up
# to this many times within the window; one that keeps dying ends the daemon (exit code 1).
WORKER_RESTARTS = 3
WORKER_RESTART_WINDOW_S = 600.0
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
    # CPU time (user + system, all threads) of the daemon and of its training worker since each
    # started, at the end of this round: the difference between two rounds is what they cost.
    daemon_cpu_seconds: float = 0.0
    worker_cpu_seconds: float = 0.0
    finished_at: float = 0.0  # unix time the daemon recorded the round


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
    peak_rss_mb: float = 0.0  # the daemon process (no torch)
    idle_rss_mb: float = 0.0  # the daemon's resident memory once training started, before the first round
    worker_peak_rss_mb: float = 0.0  # the training worker process (torch, model, trainer)
    worker_idle_rss_mb: float = 0.0  # the worker's resident memory at the same moment
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
    outer: Any = None  # OuterConfig (fednode.node.federation.outer_config); None = plain FedAvg


@dataclass(frozen=True)
class FederationSession:
    """The federation this node trains in now."""

    federation_id: str
    settings: FederationSettings
    certificate: Any = None  # MemberCertificate for certified federations
    certified: bool = False  # membership enforced (created/joined via the admin API)
    private: bool = False  # relays and payload servers serve members only


@dataclass
class SessionProgress:
    """Where the federated session stands, as the training worker last reported it."""

    federation_id: str
    state: Any = field(default_factory=worker_pb2.SessionState)  # worker_pb2.SessionState

    @property
    def members(self) -> dict[str, Any]:
        return {m.peer_id: m for m in self.state.members}

    @property
    def contributions(self) -> dict[str, Any]:
        return {c.peer_id: c for c in self.state.contributions}


class Daemon:
    """One node. Construct, then `await run()`; returns the process exit code.

    The daemon holds identity, mesh, admin API, membership and audit log, and no torch: task,
    model, trainer and checkpoints live in the training worker it starts
    (`fednode.node.worker`). Without `federation.id` the node trains alone. With it, the node
    joins the mesh and the worker trains with the federation (`FederationRunner`, or
    `CompassRunner` when `federation.schedule = "fedcompass"`) through the daemon's mesh.
    """

    def __init__(self, config: FednodeConfig) -> None:
        self.config = config
        self.state_dir = config.resolved_state_dir()
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self._lock = StateDirLock(self.state_dir)
        self.identity: Identity | None = None
        self.worker: Any = None  # WorkerProcess
        self.layout_digest = ""
        self._checkpoint_federation = ""  # the federation the worker's checkpoint is from
        self._worker_deaths: list[float] = []  # time.monotonic() of each unexpected worker exit
        self._worker_lock = asyncio.Lock()  # admin calls and the session loop may start it together
        self.round = 0
        self.model_version = 0
        self.summary: RunSummary | None = None
        self.mesh: Any = None
        self.progress: SessionProgress | None = None  # set while a federated session runs
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
        """What can fail on bad input in the daemon itself (the worker checks the rest)."""
        prepare_state_dir(self.state_dir)
        self._lock.acquire()
        remove_interrupted_writes(self.state_dir)
        self.identity, created = load_or_create_identity(self.state_dir)
        log.info("%s identity %s (%s)", "created" if created else "loaded", self.identity.peer_id, self.state_dir)
        if self.config.attack.name:
            log.warning("this node is BYZANTINE for testing: attack %r %s", self.config.attack.name,
                        dict(self.config.attack.params))
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
        self.summary = RunSummary(
            peer_id=self.identity.peer_id,
            version=__version__,
            task=self.config.task.name,
            device="",
            state_dir=str(self.state_dir),
            started_unix=time.time(),
            federation_id=self.session.federation_id if self.session else "",
            attack=self.config.attack.name,
        )

    async def _start_worker(self) -> None:
        """Start the training worker; it builds task and model and resumes from the checkpoint."""
        from fednode.node.worker.supervisor import WorkerProcess

        assert self.summary is not None
        self.worker = WorkerProcess(self.config.model_dump_json(), on_round=self._on_worker_round,
                                    on_event=self._on_runner_event)
        ready = await self.worker.start()
        self.layout_digest = ready.layout_digest
        self.round, self.model_version = ready.round, ready.model_version
        self._checkpoint_federation = ready.checkpoint_federation_id
        summary = self.summary
        summary.task, summary.device = ready.task, ready.device
        if ready.resumed:
            if not self._worker_deaths:  # the daemon's start, not a restart after a worker died
                summary.resumed_from_round = ready.round
            log.info("resumed from checkpoint: round %d, model version %d", ready.round, ready.model_version)
        log.info("task %s on %s: %d training examples, %d parameters", ready.task, ready.device,
                 ready.train_samples, ready.parameters)
        if self.session is not None:
            await self._check_settings(self.session.settings, self.worker)  # fail fast on bad settings

    async def running_worker(self) -> Any:
        """The training worker, started again if the daemon stopped it while idle."""
        async with self._worker_lock:
            if self.worker is None:
                await self._start_worker()
            return self.worker

    async def _park_worker(self) -> None:
        """An idle node (it left its federation) gives the worker's memory back: the worker
        writes a final checkpoint and exits; the next session or admin request starts it again."""
        async with self._worker_lock:
            if self.worker is None or not self.worker.alive:
                return
            self._note_worker_peak(await self.worker.shutdown(checkpoint=True))
            self.worker = None
            log.info("idle: training worker stopped (model checkpointed); it starts again with the next session")

    def _note_worker_peak(self, peak_mb: float) -> None:
        if self.summary is not None and peak_mb == peak_mb:  # not NaN
            self.summary.worker_peak_rss_mb = max(self.summary.worker_peak_rss_mb, peak_mb)

    def _config_settings(self) -> FederationSettings:
        cfg = self.config
        return FederationSettings(
            rule=cfg.aggregation.rule, rule_params=dict(cfg.aggregation.params), f=cfg.aggregation.f,
            schedule=cfg.federation.schedule, min_participants=cfg.federation.min_participants,
            codec=cfg.compression.codec, codec_params=dict(cfg.compression.params),
            outer=cfg.aggregation.outer_config(),
        )

    def _descriptor_settings(self, descriptor: Any) -> FederationSettings:
        from fednode.node.federation.outer_config import config_from_proto

        params = json.loads(descriptor.aggregator_params_json or "{}")
        f = int(params.pop("f", 0))
        same_codec = descriptor.codec in ("", self.config.compression.codec)
        try:
            # The descriptor's, whatever this node's config says: every member applies the same.
            outer = config_from_proto(descriptor.outer if descriptor.HasField("outer") else None)
        except ValueError as exc:
            raise ConfigError(f"the federation's descriptor names an unusable outer optimizer ({exc}); "
                              f"this fednode may be older than the federation's creator's: upgrade it") from exc
        return FederationSettings(
            rule=descriptor.aggregator or self.config.aggregation.rule, rule_params=params, f=f,
            schedule=descriptor.schedule or self.config.federation.schedule,
            min_participants=max(1, descriptor.min_participants or self.config.federation.min_participants),
            codec=descriptor.codec or self.config.compression.codec,
            codec_params=dict(self.config.compression.params) if same_codec else {},
            outer=outer,
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

    async def check_aggregation(self, rule: str, params: dict[str, Any], min_participants: int) -> None:
        """Raise ValueError when a federation's rule cannot work with its minimum participants."""
        params = dict(params)
        f = int(params.pop("f", 0))
        settings = FederationSettings(rule, params, f, "sync", min_participants, self.config.compression.codec,
                                      dict(self.config.compression.params))
        await (await self.running_worker()).check_settings(settings)

    async def _check_settings(self, settings: FederationSettings, worker: Any) -> None:
        try:
            await worker.check_settings(settings)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

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
        if self.worker is not None:
            self.worker.stop_session(reason, linger=reason in LINGER_REASONS)

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if self.stop_event.is_set() and signum == signal.SIGINT:
                log.error("second SIGINT: exiting immediately without a final checkpoint")
                os._exit(ExitCode.FORCED_SHUTDOWN)  # the worker dies with us (PR_SET_PDEATHSIG)
            log.info("%s received: stopping gracefully (send SIGINT again to force)", name)
            self.request_stop(name)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        # `kill -USR1 <pid>`: log where every asyncio task is waiting (for a daemon that seems stuck).
        loop.add_signal_handler(signal.SIGUSR1, log_task_stacks, loop)

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
            try:
                await self._start_worker_and_mesh()
                await self._start_services()
                try:
                    await self._run_sessions()
                    await self._finish()
                finally:
                    await self._stop_services()
            finally:
                if self.worker is not None:
                    await self.worker.kill()
        finally:
            self._lock.release()
        return ExitCode.OK

    async def _run_sessions(self) -> None:
        """Train alone, or with the current federation; switch when a federation is created,
        joined or left through the admin API; return when the daemon stops."""
        assert self._session_changed is not None
        from fednode.node.worker.supervisor import WorkerGone

        while not self._done():
            self._session_changed.clear()
            session = self.session
            try:
                if session is not None:
                    await self.running_worker()
                    self.state = "training"
                    await self._run_federated(session)
                elif self._alone_allowed:
                    await self.running_worker()
                    self.state = "training"
                    await self._run_alone()
                else:
                    self.state = "idle"  # left its federation: wait for a new one, or a stop
                    await self._park_worker()
                    await self._wait_for_change()
            except WorkerGone as gone:
                await self._restart_worker(gone)

    async def _restart_worker(self, gone: Exception) -> None:
        """Start a new training worker after one died; it resumes from the last checkpoint."""
        from fednode.node.worker.supervisor import WorkerError, WorkerGone

        while True:
            now = time.monotonic()
            self._worker_deaths = [t for t in self._worker_deaths if now - t < WORKER_RESTART_WINDOW_S] + [now]
            if len(self._worker_deaths) > WORKER_RESTARTS:
                raise WorkerError(f"{gone}; it died {len(self._worker_deaths)} times within "
                                  f"{WORKER_RESTART_WINDOW_S / 60:.0f} min, so the daemon stops (see the log lines above)")
            log.error("%s; restarting it from the last checkpoint (restart %d of at most %d within %.0f min)", gone,
                      len(self._worker_deaths), WORKER_RESTARTS, WORKER_RESTART_WINDOW_S / 60,
                      extra={"event": "worker_restart"})
            await self.worker.kill()
            try:
                await self._start_worker()  # a worker that reports a start-up error is not retried
                return
            except WorkerGone as again:  # died again while starting
                gone = again

    async def _wait_for_change(self) -> None:
        assert self._session_changed is not None
        while not self.stop_event.is_set() and not self._session_changed.is_set():
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._session_changed.wait(), timeout=0.5)

    async def switch_federation(self, federation_id: str | None) -> None:
        """Make `federation_id` (certified, in the store) the one this node trains in; None = none."""
        assert self._session_changed is not None
        session = self._certified_session(federation_id) if federation_id else None
        if session is not None:
            await self._check_settings(session.settings, await self.running_worker())
        self.session = session
        self._alone_allowed = False
        self._session_changed.set()
        if self.worker is not None:
            self.worker.stop_session("switch")

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
        rounds = self.config.training.rounds
        if rounds and self.round >= rounds:
            self.request_stop("rounds")
        return self.stop_event.is_set()

    def _session_over(self) -> bool:
        return self._done() or (self._session_changed is not None and self._session_changed.is_set())

    async def _run_alone(self) -> None:
        await self._run_worker_session(worker_pb2.StartSession(), mesh=None)

    async def _run_worker_session(self, start: Any, mesh: Any, validator_factory: Any = None) -> Any:
        """Run one session in the worker; raise what ended it badly."""
        from fednode.node.worker.supervisor import WorkerError, WorkerGone

        if self._session_over():
            return None
        ended = await self.worker.run_session(start, mesh, validator_factory, on_started=self._session_started)
        self.round = max(self.round, ended.round)
        self.model_version = max(self.model_version, ended.model_version)
        if ended.stop_reason == "rounds" and not self.stop_event.is_set():
            self.request_stop("rounds")
        if ended.error:
            raise (WorkerError if self.worker.alive else WorkerGone)(ended.error, ended.exit_code)
        return ended

    def _session_started(self, worker_rss_mb: float) -> None:
        if self.summary is not None and not self.summary.idle_rss_mb:
            self.summary.idle_rss_mb = current_rss_mb()
            self.summary.worker_idle_rss_mb = worker_rss_mb

    async def _start_worker_and_mesh(self) -> None:
        """The worker builds the model (torch, seconds) while the daemon starts the mesh a
        federation needs: the two processes use both cores instead of one after the other."""
        mesh = asyncio.ensure_future(self._mesh_for(self.session)) if self.session is not None else None
        try:
            await self._start_worker()
        except BaseException:
            if mesh is not None:
                mesh.cancel()
                with suppress(BaseException):
                    await mesh
            raise
        if mesh is not None:
            await mesh

    async def _mesh_for(self, session: FederationSession) -> Any:
        assert self.identity is not None
        if session.certified and self.mesh is None:
            # Where members were last seen: a restarted member needs no mesh.bootstrap.
            own = f"/p2p/{self.identity.peer_id}"
            saved = [a for a in self.store.peer_addresses(session.federation_id) if not a.endswith(own)]
            self.bootstrap_hints = list(dict.fromkeys([*self.bootstrap_hints, *saved]))
        return await self.ensure_mesh()

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
        from fednode.node.federation.protocol import ControlValidator
        from fednode.node.worker.supervisor import settings_to_proto

        assert self.identity is not None
        federation = self.config.federation
        mesh = await self._mesh_for(session)
        if self._checkpoint_federation != session.federation_id:
            # A federation this node has no checkpoint for: its rounds count from zero (peers
            # that are ahead are caught up with by state sync).
            self.round = self.model_version = 0
        if self.summary is not None:
            self.summary.federation_id = session.federation_id
        trust = self.trust if session.certified else None

        def validator_for(topic: str) -> ControlValidator:
            # Every message is checked here, in the daemon, before the mesh delivers or forwards it.
            return ControlValidator(session.federation_id, federation.max_clock_skew, self.layout_digest, trust,
                                    session.settings.outer.digest() if session.settings.outer is not None else "")

        start = worker_pb2.StartSession(federation_id=session.federation_id, settings=settings_to_proto(session.settings),
                                        certified=session.certified, display_name=self.display_name)
        if session.certificate is not None:
            start.certificate.CopyFrom(session.certificate)
        if session.certified:
            start.revocations.extend(self.trust.revocations(session.federation_id))
        # A private federation's relay serves its members only (not an open proxy).
        mesh.set_relay_admission(self._member_admission(session.federation_id) if session.private else None)
        self.progress = SessionProgress(session.federation_id,
                                        worker_pb2.SessionState(round=self.round, model_version=self.model_version))
        try:
            ended = await self._run_worker_session(start, mesh, validator_for)
            if ended is not None:
                self._checkpoint_federation = session.federation_id
                self._record_mesh_totals(ended)
        finally:
            self.progress = None

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

    async def session_progress(self) -> SessionProgress | None:
        """The running federated session, refreshed from the worker (the last report if it does
        not answer at once)."""
        progress = self.progress
        if progress is not None and self.worker is not None:
            with suppress(Exception):
                progress.state = await self.worker.session_state()
        return progress

    async def member_public_key(self, peer_id: str) -> bytes | None:
        """The Ed25519 key a member signs with (seen in its messages), for revocations."""
        if self.progress is None or self.worker is None:
            return None
        return await self.worker.member_key(peer_id)

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
        if spread and self.progress is not None and self.progress.federation_id == federation_id:
            await self.worker.publish_revocation(revocation)
        return new

    def _on_runner_event(self, event: Any) -> None:
        """Runner events (from the worker) -> admin WatchEvents, the audit log and metrics."""
        kind = event.kind
        session = self.session
        federation_id = session.federation_id if session is not None else ""
        peer = event.peer_id
        if kind in ("update_accepted", "update_rejected", "update_aggregated") and self.audit is not None:
            with suppress(Exception):
                self.audit.record_update(
                    federation_id=federation_id, sender_peer_id=peer, round=event.round,
                    payload_sha256=event.payload_sha256.hex(),
                    accepted=kind != "update_rejected" and (event.selected or not event.has_selected),
                    reason=event.reason or None,
                    aggregator_score=event.score if event.has_score else None,
                    detail="aggregation" if kind == "update_aggregated" else None,
                )
        if kind in ("update_accepted", "update_rejected") and self.metrics is not None:
            with suppress(Exception):
                self.metrics.record_update(federation_id, accepted=kind == "update_accepted",
                                           reason=event.reason or None)
        if kind == "revocation":
            if event.HasField("revocation") and federation_id:
                self.record_revocation(federation_id, event.revocation)
            kind_detail = "revocation received"
        else:
            kind_detail = event.detail
        if self.control is not None and kind not in ("update_accepted", "update_aggregated"):
            self.control.events.publish(
                kind, federation_id=federation_id, peer_id=peer, reason=event.reason,
                round=event.round, detail=kind_detail[:500],
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

    async def _on_worker_round(self, report: Any) -> Any:
        """A round the worker closed: record it, and tell the worker whether to go on."""
        self.round, self.model_version = report.round, report.model_version
        if report.synced:
            self._record_synced(report)
            return worker_pb2.RoundVerdict(stop=self._session_over(), reason=self.stop_reason or "switch")
        record = RoundRecord(
            round=report.round, model_version=report.model_version, accuracy=report.accuracy, loss=report.loss,
            train_loss=report.train_loss, seconds=report.train_seconds, round_seconds=report.round_seconds,
            participants=report.participants, left_out=report.left_out,
            daemon_cpu_seconds=time.process_time(), worker_cpu_seconds=report.cpu_seconds, finished_at=time.time(),
        )
        self._record(record)
        progress = self.progress
        if report.federated and progress is not None:
            progress.state = report.state
            self._after_federated_round(report, record)
        target = self.config.training.target_accuracy
        if target and record.accuracy >= target:
            self.request_stop("target_accuracy")
        self._done()  # the round budget
        if self._session_over():
            reason = self.stop_reason if self.stop_event.is_set() else "switch"
            return worker_pb2.RoundVerdict(stop=True, reason=reason, linger=reason in LINGER_REASONS)
        return worker_pb2.RoundVerdict()

    def _after_federated_round(self, report: Any, record: RoundRecord) -> None:
        federation_id = self.session.federation_id if self.session is not None else ""
        self._remember_peer_addresses()
        if self.metrics is not None:
            with suppress(Exception):
                self.metrics.record_round(
                    federation_id, report.round, model_version=report.model_version, accuracy=record.accuracy,
                    loss=record.loss, train_loss=record.train_loss, aggregation_seconds=report.aggregation_seconds,
                    participants=report.participants,
                )
                if self.mesh is not None:
                    self.metrics.observe_mesh_stats(self.mesh.stats())
                    kinds: dict[str, int] = {}
                    for peer in self.mesh.peers():
                        kinds[peer.connection] = kinds.get(peer.connection, 0) + 1
                    self.metrics.set_peers(kinds)
                    self.metrics.set_reachability(self.mesh.reachability().status)
        if self.control is not None:
            self.control.events.publish(
                "round", federation_id=federation_id, round=report.round, model_version=report.model_version,
                accuracy=record.accuracy, detail=f"{report.participants} participant(s); {report.close_reason}",
            )

    def _remember_peer_addresses(self) -> None:
        """Save where the members were last seen (most recent first), so a restart reconnects
        without mesh.bootstrap. Writes only on change."""
        session, progress = self.session, self.progress
        if session is None or not session.certified or progress is None:
            return
        members = sorted(progress.members.values(), key=lambda m: m.last_seen, reverse=True)
        # Relayed addresses are left out: a relay is reached through its own direct address.
        addresses = [a for m in members for a in m.multiaddrs if "/p2p-circuit" not in a]
        if addresses == self._saved_peer_addresses:
            return  # the usual case: no disk access in the round path
        with suppress(Exception):  # a hint: never worth failing a round over
            self.store.save_peer_addresses(session.federation_id, addresses)
            self._saved_peer_addresses = addresses

    def _record_synced(self, report: Any) -> None:
        """The session ended on a model a state sync brought (peers closed the last round
        first): the summary describes that model; the history keeps the rounds this node closed."""
        assert self.summary is not None
        summary = self.summary
        summary.rounds, summary.model_version = report.round, report.model_version
        summary.accuracy, summary.loss = report.accuracy, report.loss
        if not summary.best_accuracy >= report.accuracy:
            summary.best_accuracy = report.accuracy
        log.info("synced to round %d: test accuracy %.4f, test loss %.4f", report.round, report.accuracy,
                 report.loss, extra={"event": "synced_round", "round": report.round, "accuracy": report.accuracy})

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

    def _record_mesh_totals(self, ended: Any) -> None:
        if self.summary is None or self.mesh is None:
            return
        summary = self.summary
        with suppress(Exception):
            stats = self.mesh.stats()
            summary.bytes_sent = stats.gossip_bytes_published + stats.blob_bytes_sent + stats.push_bytes_sent
            summary.bytes_received = stats.gossip_bytes_received + stats.blob_bytes_received + stats.push_bytes_received
        summary.rejected = dict(ended.rejections)
        with suppress(Exception):
            # Messages the mesh's validator refused never reach the runner; count them too.
            for reason, count in self.mesh.stats().gossip_rejected.items():
                summary.rejected[reason] = summary.rejected.get(reason, 0) + count
        summary.syncs = ended.syncs
        # A state sync can carry the node past rounds it never closed itself (to the last one,
        # when it fell behind at the end): the summary reports the round its model is at.
        summary.rounds = max(summary.rounds, ended.round)
        summary.model_version = max(summary.model_version, ended.model_version)
        summary.direct_deliveries = ended.direct_deliveries
        summary.push_only_messages = ended.push_only_messages
        summary.timings = {name: {"median": t.median, "p90": t.p90, "count": t.count}
                           for name, t in sorted(ended.timings.items())}
        summary.contributions = {
            c.peer_id: {"accepted": c.accepted, "selected": c.selected, "rejected": dict(sorted(c.rejected.items())),
                        "reputation": c.reputation}
            for c in ended.contributions
        }

    async def _finish(self) -> None:
        assert self.summary is not None
        if self.worker is not None:  # not parked while idle (that wrote the final checkpoint)
            self._note_worker_peak(await self.worker.shutdown(checkpoint=True))
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


def summary_from_file(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
