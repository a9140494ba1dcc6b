"""`fednode start`: the long-running node process.

Lifecycle: lock the state dir -> serve the admin API (status answers "starting" with its phase
from then on; health is NOT_SERVING until the node is ready) -> load or create the identity ->
start the mesh and, when the node trains, the training worker (it builds the task and model and
resumes from the last checkpoint) -> run sessions: in the node's federation, alone when asked
for (`--solo`), or idle (no worker) until a federation is created or joined -> final checkpoint
(by the worker) and summary. A node with `node.role = "bootstrap"` runs only the mesh (DHT and
relay) for others to dial. A federation's budget (descriptor) does not stop the daemon: a member
that reaches it reports "finished" and keeps serving the final model. SIGINT/SIGTERM request a graceful
stop: the worker's training stops between steps, a final checkpoint is written, the worker and
every thread end, and the process exits 0 within `node.shutdown_timeout` seconds, or is forced
out with exit code 10 (the worker dies with it). A second SIGINT forces it at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import json
import logging
import math
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
from fednode.node.federation.settings import FederationSettings
from fednode.node.identity import Identity, load_or_create_identity
from fednode.node.logs import (
    best_effort,
    current_rss_mb,
    log_task_stacks,
    note_failure,
    quiet_noisy_libraries,
)
from fednode.proto.v1 import worker_pb2

log = logging.getLogger("fednode.daemon")
AUDIT_SYNC_SECONDS = 1.0  # the audit log is fsynced this often (records are written at once)
AUDIT_FSYNC_EVERY = 1024  # ... or after this many records, whichever comes first

LINGER_REASONS = ("rounds", "target_accuracy")  # stops after which peers may still fetch from us
PHASES = ("identity", "mesh", "worker", "sync")  # what a starting node is busy with, in order
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.jsonl"
SUMMARY_HISTORY = 500  # rounds summary.json keeps in full (about 200 kB); history.jsonl has them all
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
    # Payload bytes through the mesh since it started (gossip, blobs, pushes), at the end of the round.
    bytes_sent: int = 0
    bytes_received: int = 0


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
    checkpoint_failures: int = 0  # checkpoint writes that failed (full disk, ...): each is also logged
    checkpoint_error: str = ""  # why the last failed write failed; empty once one succeeded again
    audit_failures: int = 0  # audit records that could not be written (each also logged as an error)
    audit_error: str = ""  # why the last one failed
    direct_deliveries: int = 0  # control messages that reached this node by push before gossip
    push_only_messages: int = 0  # control messages this node sent by push only (all members reached)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mb: float = 0.0  # the daemon process (no torch)
    idle_rss_mb: float = 0.0  # the daemon's resident memory once training started, before the first round
    worker_peak_rss_mb: float = 0.0  # the training worker process (torch, model, trainer)
    worker_idle_rss_mb: float = 0.0  # the worker's resident memory at the same moment
    # The latest SUMMARY_HISTORY rounds of this run; every round of every run is in history.jsonl
    # (HISTORY_FILE, rotated by size like the audit log), which `fednode report` reads.
    history: list[RoundRecord] = field(default_factory=list)
    history_dropped: int = 0  # older rounds of this run left out of `history` (they are in history.jsonl)
    history_file: str = "history.jsonl"

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
    (`fednode.node.worker`). In a federation (created or joined through the admin API, or an
    open one named by `federation.id`) the worker trains with it (`FederationRunner`, or
    `CompassRunner` when the schedule is "fedcompass") through the daemon's mesh. Without one
    the node idles, with the mesh up and no worker, unless `training.solo` asks it to train alone.
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
        self._ranks: list[Any] = []  # the training job's processes, as the worker last reported them
        self._worker_lock = asyncio.Lock()  # admin calls and the session loop may start it together
        self.round = 0
        self.model_version = 0
        self.summary: RunSummary | None = None
        self.mesh: Any = None
        self.progress: SessionProgress | None = None  # set while a federated session runs
        self._started = time.perf_counter()
        self.role = config.node.role
        self.activity = "starting"  # what `state` reports once ready: training, idle, finished, serving
        self.stopping = False
        self.ready = False  # health SERVING: every admin call can be answered
        self._starting: set[str] = {"identity"}  # PHASES still in progress
        self.finished: dict[str, Any] | None = None  # the current federation's budget was reached
        self.display_name = config.node.display_name
        self.session: FederationSession | None = None
        self.bootstrap_hints: list[str] = []
        self._saved_peer_addresses: dict[str, list[str]] = {}  # what _remember_peer_addresses wrote last
        self.store: Any = None  # MembershipStore
        self.trust: Any = None  # TrustPolicy
        self.audit: Any = None  # AuditLog
        self.audit_failures = 0  # records the audit log could not take (each one reported)
        self.history: Any = None  # JsonLinesLog of history.jsonl: every round, rotated by size
        self.tracking: Any = None  # Tracking ([tracking] sinks) or None
        self.metrics: Any = None  # NodeMetrics
        self.control: Any = None  # NodeControl (admin API backend)
        self.admin: Any = None  # AdminServer
        self._session_changed: asyncio.Event | None = None
        self._mesh_lock: asyncio.Lock | None = None
        self._ready_event: asyncio.Event | None = None
        self._alone_allowed = config.training.solo and self.role == "member"
        self.exit_code = ExitCode.OK  # what run() returns after a graceful stop
        self.checkpoint = worker_pb2.CheckpointHealth(written_round=-1)  # as the worker last reported

    @property
    def federated(self) -> bool:
        return bool(self.config.federation.id)

    @property
    def state(self) -> str:
        """"starting" (see `phase`), then "training", "idle", "finished" or "serving"
        (bootstrap role); "stopping" at the end."""
        if self.stopping:
            return "stopping"
        return self.activity if self.ready else "starting"

    @property
    def phase(self) -> str:
        """While starting: the first of PHASES still in progress ("" once ready)."""
        if self.ready:
            return ""
        return next((phase for phase in PHASES if phase in self._starting), "")

    def _mark_ready(self) -> None:
        """Every admin call can be answered now: health SERVING."""
        if self.ready:
            return
        self.ready = True
        self._starting.clear()
        if self._ready_event is not None:
            self._ready_event.set()
        if self.admin is not None:
            self._health_update = asyncio.ensure_future(self.admin.set_serving(True))
        log.info("ready (%s) after %.1f s", self.activity, time.perf_counter() - self._started,
                 extra={"event": "ready", "state": self.activity})

    async def wait_ready(self, timeout: float) -> bool:
        """True once the node is ready (False after `timeout` seconds, or when it stops)."""
        if self.ready:
            return True
        assert self._ready_event is not None
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        return self.ready and not self.stopping

    def _config_budget_applies(self) -> bool:
        """training.rounds / training.target_accuracy stop solo training and open federations
        (fednode launch); a certified federation's budget is in its descriptor."""
        if self.session is None:
            return self._alone_allowed
        return not self.session.certified

    # ----------------------------------------------------------------------------- set-up
    def claim_state_dir(self) -> None:
        """Create and lock the state dir (the admin socket lives there)."""
        prepare_state_dir(self.state_dir)
        self._lock.acquire()
        remove_interrupted_writes(self.state_dir)

    def setup(self) -> None:
        """What can fail on bad input in the daemon itself (the worker checks the rest)."""
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
        from fednode.node.rotation import JsonLinesLog

        rotation = self.config.rotation
        self.audit = AuditLog(self.state_dir / "audit.jsonl", fsync_every=AUDIT_FSYNC_EVERY,
                              max_bytes=int(rotation.audit_max_mb * 2**20))
        self.history = JsonLinesLog(self.state_dir / HISTORY_FILE, max_bytes=int(rotation.history_max_mb * 2**20))
        self.session = self._initial_session() if self.role == "member" else None
        self._warn_about_config_budget()
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
        if self.config.tracking.tensorboard or self.config.tracking.mlflow:
            from fednode.node.tracking import open_for_node

            self.tracking = open_for_node(self.config, self.state_dir, self.identity.peer_id, self.summary.started_unix,
                                          self.summary.federation_id)
        self._starting.discard("identity")

    def _warn_about_config_budget(self) -> None:
        training = self.config.training
        if (training.rounds or training.target_accuracy) and self.role == "member" and not self._config_budget_applies():
            log.warning("training.rounds / training.target_accuracy (--rounds, --target-accuracy) apply to --solo "
                        "training and open federations (fednode launch) only; a federation's budget is fixed when "
                        "it is created: fednode federation create NAME --rounds N --target-accuracy A --until TIME")

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
                summary.accuracy, summary.loss = ready.accuracy, ready.loss  # until the next round
            log.info("resumed from checkpoint: round %d, model version %d", ready.round, ready.model_version)
        log.info("task %s on %s: %d training examples, %d parameters%s", ready.task, ready.device,
                 ready.train_samples, ready.parameters,
                 f", {ready.world_size} training processes" if ready.world_size > 1 else "")
        if self.session is not None:
            await self._check_settings(self.session.settings, self.worker)  # fail fast on bad settings

    async def running_worker(self) -> Any:
        """The training worker, started again if the daemon stopped it while idle."""
        async with self._worker_lock:
            if self.worker is None:
                await self._start_worker()
            return self.worker

    async def release_worker_if_idle(self) -> None:
        """After an admin call started the worker for nothing (e.g. a refused federation), an
        idle node gives it back."""
        if self.session is None and not self._alone_allowed and self.activity == "idle":
            await self._park_worker()

    async def _park_worker(self) -> None:
        """An idle node (it left its federation) gives the worker's memory back: the worker
        writes a final checkpoint and exits; the next session or admin request starts it again."""
        async with self._worker_lock:
            if self.worker is None or not self.worker.alive:
                return
            self._note_worker_peak(await self.worker.shutdown(checkpoint=True))
            self._check_final_checkpoint(self.worker)
            self.worker = None
            log.info("idle: training worker stopped (model checkpointed); it starts again with the next session")

    def _check_final_checkpoint(self, worker: Any) -> None:
        """After the worker stopped: a final checkpoint that could not be written (retried by
        the worker) is the daemon's failure to save its state: exit code 5 once it stops."""
        self._note_checkpoint(worker.checkpoint_health)
        if worker.final_checkpoint_error:
            health = worker.checkpoint_health
            on_disk = f"round {health.written_round}" if health.written_round >= 0 else "none written by this run"
            log.error("the final checkpoint could not be written (%s); the newest checkpoint on disk is %s, so a "
                      "restart resumes from there. Free space in %s or move the state dir.",
                      worker.final_checkpoint_error, on_disk, self.state_dir,
                      extra={"event": "final_checkpoint_failed", "error": worker.final_checkpoint_error})
            self.exit_code = ExitCode.STATE_DIR

    def _note_worker_peak(self, peak_mb: float) -> None:
        if self.summary is not None and peak_mb == peak_mb:  # not NaN
            self.summary.worker_peak_rss_mb = max(self.summary.worker_peak_rss_mb, peak_mb)

    def _config_settings(self) -> FederationSettings:
        cfg = self.config
        return FederationSettings(
            rule=cfg.aggregation.rule, rule_params=dict(cfg.aggregation.params), f=cfg.aggregation.f,
            schedule=cfg.federation.schedule, min_participants=cfg.federation.min_participants,
            codec=cfg.compression.codec, codec_params=dict(cfg.compression.params),
            outer=cfg.aggregation.outer_config(), exchange=cfg.federation.exchange,
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
            max_rounds=descriptor.max_rounds, target_accuracy=descriptor.target_accuracy,
            until_unix_ms=descriptor.until_unix_ms,
            outer=outer, exchange=descriptor.exchange or self.config.federation.exchange,
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

    async def check_aggregation(self, rule: str, params: dict[str, Any], min_participants: int, codec: str,
                                schedule: str = "sync") -> None:
        """Raise ValueError when a federation's rule cannot work with its schedule and minimum
        participants, or its codec is unknown."""
        params = dict(params)
        f = int(params.pop("f", 0))
        same_codec = codec == self.config.compression.codec
        settings = FederationSettings(rule, params, f, schedule, min_participants, codec,
                                      dict(self.config.compression.params) if same_codec else {})
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
            # A member that reached its budget first serves members still catching up (linger).
            lingering = self.config.federation.linger if reason in LINGER_REASONS else 0.0
            asyncio.get_running_loop().call_later(self.config.node.shutdown_timeout + lingering, self._force_exit)
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
        self._ready_event = asyncio.Event()
        try:
            self.claim_state_dir()
            try:
                # The admin API first: `fednode status` answers "starting" (and its phase) while
                # the identity, the mesh and the worker (torch, seconds) come up.
                await self._start_services()
                self.setup()
                if self.role == "bootstrap":
                    self._label_and_restore_metrics()
                    await self._run_bootstrap()
                else:
                    await self._start_worker_and_mesh()
                    self._label_and_restore_metrics()
                    await self._run_sessions()
                await self._finish()
            finally:
                await self._stop_services()
                if self.worker is not None:
                    await self.worker.kill()
        finally:
            self._lock.release()
        return self.exit_code

    async def _run_sessions(self) -> None:
        """Train with the current federation, alone (training.solo) or idle; switch when a
        federation is created, joined or left through the admin API; return when the daemon stops."""
        assert self._session_changed is not None
        from fednode.node.worker.supervisor import WorkerGone

        while not self._done():
            self._session_changed.clear()
            session = self.session
            try:
                if session is not None:
                    await self.running_worker()
                    await self._run_federated(session)
                elif self._alone_allowed:
                    await self.running_worker()
                    self.activity = "training"
                    await self._run_alone()
                else:
                    # No federation: wait for one (or a stop) without a worker.
                    self.activity = "idle"
                    self._mark_ready()
                    await self._park_worker()
                    await self._wait_for_change()
            except WorkerGone as gone:
                await self._restart_worker(gone)

    async def _run_bootstrap(self) -> None:
        """`node.role = "bootstrap"`: the mesh only (DHT and relay), no worker, until stopped."""
        self._starting.add("mesh")
        mesh = await self.ensure_mesh()
        self._starting.discard("mesh")
        self.activity = "serving"
        addresses = [a for a in mesh.listen_multiaddrs() if "/p2p-circuit" not in a]
        shown = [a for a in addresses if not a.startswith(("/ip4/127.", "/ip6/::1/"))] or addresses
        log.info("bootstrap node: members and other nodes connect with --set 'mesh.bootstrap=[\"%s\"]' "
                 "(or mesh.bootstrap in their config)", shown[0] if shown else "?",
                 extra={"event": "bootstrap_ready", "multiaddrs": shown})
        self._mark_ready()
        while not self.stop_event.is_set():
            await asyncio.sleep(0.5)

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
        self.finished = None
        self._session_changed.set()
        if self.worker is not None:
            self.worker.stop_session("switch")

    async def _start_services(self) -> None:
        from fednode.node.admin import AdminServer, TcpListener
        from fednode.node.control import JOIN_REQUEST_KIND, NodeControl
        from fednode.node.metrics import NodeMetrics

        self.control = NodeControl(view=self, lifecycle=self)
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
        self.admin = AdminServer(self.control, self.state_dir, tcp, socket_path=admin.socket,
                                 socket_mode=admin.socket_mode, health_listen=admin.health_listen)
        from fednode.node.admin import AdminError

        try:
            await self.admin.start()  # health NOT_SERVING until _mark_ready
        except AdminError as exc:
            self.admin = None
            raise ConfigError(f"admin API: {exc.message}") from exc
        if self.config.metrics.port >= 0:
            self.metrics = NodeMetrics()  # labelled once the identity and the worker are known
            port = self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
            log.info("metrics on http://%s:%d/metrics", self.config.metrics.host, port,
                     extra={"event": "metrics", "port": port})

    def _label_and_restore_metrics(self) -> None:
        """fednode_node_info's labels, and the gauges of the checkpoint this node resumed from."""
        metrics, summary = self.metrics, self.summary
        if metrics is None:
            return
        assert self.identity is not None and summary is not None
        metrics.set_identity(version=__version__, peer_id=self.identity.peer_id, device=summary.device,
                             task=summary.task, display_name=self.display_name)
        metrics.training_world_size.set(self.config.training.world_size)
        federation_id = self._checkpoint_federation
        if summary.resumed_from_round and federation_id and (self.session is None
                                                             or self.session.federation_id == federation_id):
            metrics.restore(federation_id, round_number=self.round, model_version=self.model_version,
                            accuracy=summary.accuracy, loss=summary.loss)

    async def _stop_services(self) -> None:
        self.stopping = True
        if self._ready_event is not None:
            self._ready_event.set()  # admin calls waiting for readiness give up
        for task in (getattr(self, "_reachability_task", None), getattr(self, "_audit_sync_task", None)):
            if task is not None:
                task.cancel()
        # Stopping goes on past a part that fails: each failure is logged, the next part still stops.
        if self.admin is not None:
            with best_effort(log, "reporting NOT_SERVING to health checks"):
                await self.admin.set_serving(False)
        if self.mesh is not None:
            with best_effort(log, "stopping the mesh"):
                await self.mesh.stop()
            self.mesh = None
        if self.metrics is not None:
            with best_effort(log, "closing the metrics endpoint"):
                self.metrics.close()
        if self.audit is not None:
            try:
                self.audit.close()  # fsyncs what is not yet on disk
            except Exception as exc:
                self._audit_failed("last records (closing)", exc)
        if self.history is not None:
            with best_effort(log, "closing history.jsonl"):
                self.history.close()
        if self.tracking is not None:
            with best_effort(log, "closing the tracking sinks"):
                await asyncio.to_thread(self.tracking.close)
        if self.admin is not None:  # last: `status` says "stopping" until here
            with best_effort(log, "stopping the admin API"):
                await self.admin.stop()

    def _done(self) -> bool:
        """Stop conditions that do not come from a signal: the round budget of solo training
        and open federations."""
        rounds = self.config.training.rounds
        if rounds and self.round >= rounds and self._config_budget_applies():
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
        if ended.error and ended.stop_reason == "isolated" and self.worker.alive:
            # Nobody left to train with: stop gracefully (summary, final checkpoint), exit 7.
            log.error("%s", ended.error, extra={"event": "isolated"})
            self.exit_code = ExitCode(ended.exit_code)
            self.request_stop("isolated")
            return ended
        if ended.error:
            raise (WorkerError if self.worker.alive else WorkerGone)(ended.error, ended.exit_code)
        return ended

    def _session_started(self, worker_rss_mb: float) -> None:
        if self.summary is not None and not self.summary.idle_rss_mb:
            self.summary.idle_rss_mb = current_rss_mb()
            self.summary.worker_idle_rss_mb = worker_rss_mb
        self._starting.discard("sync")
        self._mark_ready()

    async def _start_worker_and_mesh(self) -> None:
        """The worker builds the model (torch, seconds) while the daemon starts the mesh: the two
        processes use both cores instead of one after the other. Solo training needs no mesh; a
        node without a federation needs no worker (it listens, to be invited or to create one)."""
        wants_worker = self.session is not None or self._alone_allowed
        wants_mesh = not (self.session is None and self._alone_allowed)
        mesh = None
        if wants_mesh:
            self._starting.add("mesh")
            mesh = asyncio.ensure_future(self._mesh_for(self.session) if self.session is not None else self.ensure_mesh())
            mesh.add_done_callback(lambda _: self._starting.discard("mesh"))
        try:
            if wants_worker:
                self._starting.add("worker")
                await self._start_worker()
                self._starting.discard("worker")
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
        from fednode.node.membership.addresses import (
            ADDRESS_RECORD_NAMESPACE,
            select_address_record,
            validate_address_record,
        )
        from fednode.node.membership.revocations import (
            REVOCATION_RECORD_NAMESPACE,
            select_revocation_record,
            validate_revocation_record,
        )
        # py-libp2p is ~900 modules: imported in a thread, so the admin API keeps answering.
        await asyncio.to_thread(importlib.import_module, "fednode.node.mesh.mesh")
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
                relay_hop=mesh_cfg.relay_hop or self.role == "bootstrap",
                record_validators={
                    REVOCATION_RECORD_NAMESPACE: RecordValidator(validate_revocation_record, select_revocation_record),
                    ADDRESS_RECORD_NAMESPACE: RecordValidator(validate_address_record, select_address_record),
                },
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
            raise NetworkError(f"cannot start networking: {exc}; check mesh.listen (another daemon on this machine "
                               f"needs another port, e.g. --set 'mesh.listen=[\"/ip4/0.0.0.0/tcp/7462\"]') "
                               f"and mesh.bootstrap") from exc
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
                try:
                    await asyncio.to_thread(self.audit.sync)
                except Exception as exc:
                    self._audit_failed("fsync", exc)

    async def _answer_request(self, kind: str, data: bytes, from_peer: str) -> bytes:
        if kind == self._join_kind and self.control is not None:
            return await self.control.answer_join(data, from_peer)
        raise ValueError(f"unknown request kind {kind!r}")

    async def _run_federated(self, session: FederationSession) -> None:
        from fednode.node.federation.protocol import ControlValidator

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

        start = worker_pb2.StartSession(federation_id=session.federation_id, settings=session.settings.to_proto(),
                                        certified=session.certified, display_name=self.display_name)
        if session.certificate is not None:
            start.certificate.CopyFrom(session.certificate)
        if session.certified:
            start.revocations.extend(self.trust.revocations(session.federation_id))
            self._restore_finished(session)
            start.finished = self.finished is not None
        self.activity = "finished" if self.finished is not None else "training"
        # A private federation's relay and payloads serve its members only (not an open proxy;
        # a revoked member cannot keep following the model).
        admission = self._member_admission(session.federation_id) if session.private else None
        mesh.set_relay_admission(admission)
        mesh.set_serve_admission(admission)
        self.progress = SessionProgress(session.federation_id,
                                        worker_pb2.SessionState(round=self.round, model_version=self.model_version))
        helpers: list[asyncio.Future[Any]] = []
        if session.certified and session.settings.until_unix_ms and self.finished is None:
            helpers.append(asyncio.ensure_future(self._finish_at(session, session.settings.until_unix_ms)))
        if session.certified and session.certificate is not None:
            from fednode.node.reconnect import Reconnector

            helpers.append(asyncio.ensure_future(Reconnector(
                mesh=mesh, identity=self.identity, federation_id=session.federation_id,
                certificate=session.certificate, store=self.store, trust=self.trust,
                session_members=self._session_member_addresses,
            ).run()))
        self._starting.add("sync")
        try:
            ended = await self._run_worker_session(start, mesh, validator_for)
            if ended is not None:
                self._checkpoint_federation = session.federation_id
                self._record_mesh_totals(ended)
        finally:
            self.progress = None
            for helper in helpers:
                helper.cancel()

    # ----------------------------------------------------------------------------- budget
    def _restore_finished(self, session: FederationSession) -> None:
        """A member that reached the budget before (finished.json), or whose checkpoint or clock
        is past it, starts as finished: it serves the final model and trains no more."""
        if self.finished is not None:
            return
        record = self.store.finished(session.federation_id)
        if record is not None:
            self.finished = record
            return
        round_number = self.round if self._checkpoint_federation == session.federation_id else 0
        settings = session.settings
        reason = settings.budget_reached(round_number, math.nan, int(time.time() * 1000))
        if reason:
            self._mark_finished(session, reason, round_number, math.nan)

    def _mark_finished(self, session: FederationSession, reason: str, round_number: int, accuracy: float) -> None:
        """This member reached its federation's budget: remember it (a restart keeps serving)."""
        if self.finished is not None:
            return
        record: dict[str, Any] = {"reason": reason, "round": round_number,
                                  "accuracy": accuracy if accuracy == accuracy else None,
                                  "finished_unix_ms": int(time.time() * 1000)}
        self.finished = record
        self.activity = "finished"
        try:
            self.store.save_finished(session.federation_id, record)
        except Exception as exc:  # it still finishes now; a restart would decide again from the budget
            log.error("cannot record that federation %s finished: %s", session.federation_id[:16], exc)
        log.info("federation %s finished (%s) at round %d%s: this member trains no more and serves the final "
                 "model until stopped", session.federation_id[:16], reason.replace("_", " "), round_number,
                 f", test accuracy {accuracy:.4f}" if accuracy == accuracy else "",
                 extra={"event": "finished", "reason": reason, "round": round_number})
        if self.control is not None:
            self.control.events.publish("finished", federation_id=session.federation_id, round=round_number,
                                        accuracy=accuracy, detail=f"budget reached: {reason}")

    async def _finish_at(self, session: FederationSession, until_unix_ms: int) -> None:
        """The time budget: finish at `until_unix_ms` even when no round closes then."""
        while time.time() * 1000 < until_unix_ms:
            await asyncio.sleep(min(60.0, max(0.05, until_unix_ms / 1000 - time.time())))
        if self.session is session and self.finished is None and not self.stop_event.is_set():
            self._mark_finished(session, "until", self.round, self.summary.accuracy if self.summary else math.nan)
            if self.worker is not None:
                self.worker.stop_session("until", finish=True)

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
            with best_effort(log, "refreshing the session state from the training worker", level=logging.DEBUG):
                progress.state = await self.worker.session_state()
        return progress

    def _note_ranks(self, ranks: list[Any]) -> None:
        """The training job's processes as the worker reported them: status and metrics."""
        self._ranks = ranks
        if self.metrics is not None:
            with suppress(Exception):
                self.metrics.record_ranks(ranks)

    async def training_ranks(self) -> list[Any]:
        """The training job's processes (worker_pb2.RankHealth) when training.world_size > 1: asked
        from the worker, else the last ones it reported; [] for one process or without a worker."""
        if self.config.training.world_size <= 1:
            return []
        if self.worker is not None and self.worker.alive:
            with suppress(Exception):
                self._note_ranks(list((await self.worker.session_state(timeout=2.0)).ranks))
                return self._ranks
        return list(self._ranks) if self.worker is not None and self.worker.alive else []

    async def member_public_key(self, peer_id: str) -> bytes | None:
        """The Ed25519 key a member signs with (seen in its messages), for revocations."""
        if self.progress is None or self.worker is None:
            return None
        return await self.worker.member_key(peer_id)

    def record_revocation(self, federation_id: str, revocation: Any) -> bool:
        """Remember a verified revocation (trust policy and store); True when it is new."""
        new = bool(self.trust.add_revocation(federation_id, revocation))
        if new:
            try:
                self.store.add_revocation(federation_id, revocation)
            except Exception as exc:  # in force for this run; a restart would forget it: say so
                note_failure(log, "storing a revocation (it applies until the daemon restarts)", exc, level=logging.ERROR)
            self.record_audit("member_revoked", "applied", event={"federation_id": federation_id,
                                                                   "reason": revocation.reason})
        return new

    def record_audit(self, action: str, status: str, **fields: Any) -> None:
        """Append an event (joins, revocations) to the audit log, if the node keeps one."""
        if self.audit is None:
            return
        try:
            self.audit.record(action, status, **fields)
        except Exception as exc:
            self._audit_failed(f"{action} record", exc)

    def _audit_failed(self, what: str, exc: Exception) -> None:
        """The audit log could not take a record: an error in the log (the 1st, 10th, 100th, ...
        time), counted in summary.json (audit_failures, audit_error)."""
        self.audit_failures += 1
        if self.summary is not None:
            self.summary.audit_failures = self.audit_failures
            self.summary.audit_error = f"{what}: {exc}"
        note_failure(log, f"audit log: writing the {what}", exc, level=logging.ERROR,
                     extra={"event": "audit_write_failed"})

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
            try:
                self.audit.record_update(
                    federation_id=federation_id, sender_peer_id=peer, round=event.round,
                    payload_sha256=event.payload_sha256.hex(),
                    accepted=kind != "update_rejected" and (event.selected or not event.has_selected),
                    reason=event.reason or None,
                    aggregator_score=event.score if event.has_score else None,
                    detail="aggregation" if kind == "update_aggregated" else None,
                )
            except Exception as exc:
                self._audit_failed("update record", exc)
        if kind in ("update_accepted", "update_rejected") and self.metrics is not None:
            with best_effort(log, "recording an update in the metrics"):
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
        """Say whether peers can dial this node and what it does about it, as soon as AutoNAT
        has a verdict; after 30 s without one, say why, and report again once it comes (a
        bootstrap node started first has nobody to ask until peers join)."""
        with best_effort(log, "reporting reachability"):
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
        if report.HasField("checkpoint"):
            self._note_checkpoint(report.checkpoint)
        if report.ranks:
            self._note_ranks(list(report.ranks))
        if report.synced:
            self._record_synced(report)
            finish = self._budget_verdict(report.round, report.accuracy)
            if finish is not None and not self._session_over():
                return finish
            return worker_pb2.RoundVerdict(stop=self._session_over(), reason=self.stop_reason or "switch")
        record = RoundRecord(
            round=report.round, model_version=report.model_version, accuracy=report.accuracy, loss=report.loss,
            train_loss=report.train_loss, seconds=report.train_seconds, round_seconds=report.round_seconds,
            participants=report.participants, left_out=report.left_out,
            daemon_cpu_seconds=time.process_time(), worker_cpu_seconds=report.cpu_seconds, finished_at=time.time(),
        )
        if self.mesh is not None:
            with best_effort(log, "reading the mesh traffic counters"):
                stats = self.mesh.stats()
                record.bytes_sent = stats.gossip_bytes_published + stats.blob_bytes_sent + stats.push_bytes_sent
                record.bytes_received = stats.gossip_bytes_received + stats.blob_bytes_received + stats.push_bytes_received
        self._record(record)
        progress = self.progress
        if report.federated and progress is not None:
            progress.state = report.state
            self._after_federated_round(report, record)
        finish = self._budget_verdict(report.round, record.accuracy)
        target = self.config.training.target_accuracy
        if target and record.accuracy >= target and self._config_budget_applies():
            self.request_stop("target_accuracy")
        self._done()  # the round budget
        if self._session_over():
            reason = self.stop_reason if self.stop_event.is_set() else "switch"
            return worker_pb2.RoundVerdict(stop=True, reason=reason, linger=reason in LINGER_REASONS)
        return finish or worker_pb2.RoundVerdict()

    def _round_budget(self) -> int:
        """The round budget shown in round logs: the federation's, or training.rounds."""
        if self.session is not None and self.session.certified:
            return self.session.settings.max_rounds
        return self.config.training.rounds if self._config_budget_applies() else 0

    def _budget_verdict(self, round_number: int, accuracy: float) -> Any:
        """RoundVerdict(finish) once a certified federation's budget is reached, else None."""
        session = self.session
        if session is None or not session.certified or self.progress is None:
            return None
        if self.finished is None:
            reason = session.settings.budget_reached(round_number, accuracy, int(time.time() * 1000))
            if not reason:
                return None
            self._mark_finished(session, reason, round_number, accuracy)
        assert self.finished is not None
        return worker_pb2.RoundVerdict(stop=True, reason=str(self.finished["reason"]), finish=True)

    def _note_checkpoint(self, health: Any) -> None:
        """The worker's checkpoint writes: summary, admin status and metrics show failures (the
        worker logs each one)."""
        self.checkpoint = health
        if self.summary is not None:
            self.summary.checkpoint_failures = max(self.summary.checkpoint_failures, health.failures_total)
            self.summary.checkpoint_error = health.error
        if self.metrics is not None:
            with best_effort(log, "recording the checkpoint in the metrics"):
                self.metrics.record_checkpoint(health.failures_total, health.written_round)

    def _after_federated_round(self, report: Any, record: RoundRecord) -> None:
        federation_id = self.session.federation_id if self.session is not None else ""
        self._remember_peer_addresses()
        if self.metrics is not None:
            with best_effort(log, "recording the round in the metrics"):
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
        """Save where the members were last seen (several recent addresses each, members seen
        lately first), so a restart reconnects without mesh.bootstrap. Writes only on change."""
        session = self.session
        if session is None or not session.certified:
            return
        seen = self._session_member_addresses()
        if seen == self._saved_peer_addresses:
            return  # the usual case: no disk access in the round path
        with best_effort(log, "remembering the members' addresses"):  # a hint: never worth failing a round over
            self.store.remember_members(session.federation_id, seen)
            self._saved_peer_addresses = seen

    def _session_member_addresses(self) -> dict[str, list[str]]:
        """{peer id: the addresses it announced, direct ones first} for the members the running
        session heard from, most recently seen first."""
        progress = self.progress
        if progress is None or self.identity is None:
            return {}
        members = sorted(progress.members.values(), key=lambda m: m.last_seen, reverse=True)
        return {m.peer_id: sorted(m.multiaddrs, key=lambda a: "/p2p-circuit" in a)
                for m in members if m.multiaddrs and m.peer_id != self.identity.peer_id}

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
        # history.jsonl (not the summary's history) keeps it too, marked: the model the node ended with.
        self._append_history(RoundRecord(round=report.round, model_version=report.model_version,
                                         accuracy=report.accuracy, loss=report.loss, train_loss=float("nan"),
                                         seconds=0.0, participants=0, finished_at=time.time()), synced=True)

    def _record(self, record: RoundRecord) -> None:
        assert self.summary is not None
        summary = self.summary
        summary.history.append(record)
        if len(summary.history) > SUMMARY_HISTORY:
            del summary.history[0]
            summary.history_dropped += 1
        self._append_history(record)
        if self.tracking is not None:
            self.tracking.record(record.round, asdict(record))
        summary.rounds = record.round
        summary.model_version = record.model_version
        summary.accuracy = record.accuracy
        summary.loss = record.loss
        if not summary.best_accuracy >= record.accuracy:  # also true while best is NaN
            summary.best_accuracy = record.accuracy
        target = self._round_budget()
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

    def _append_history(self, record: RoundRecord, *, synced: bool = False) -> None:
        """One line per round in history.jsonl, written at once (a kill -9 loses no round);
        `synced`: a model a state sync brought, not a round this node closed."""
        if self.history is None or self.summary is None:
            return
        try:
            self.history.append({"peer_id": self.summary.peer_id, "federation_id": self.summary.federation_id,
                                 "run_started_unix": self.summary.started_unix, **asdict(record),
                                 **({"synced": True} if synced else {})})
        except OSError as exc:
            log.error("round %d not written to %s: %s", record.round, self.history.path, exc,
                      extra={"event": "history_write_failed"})

    def _record_mesh_totals(self, ended: Any) -> None:
        if self.summary is None or self.mesh is None:
            return
        summary = self.summary
        with best_effort(log, "reading the mesh traffic counters"):
            stats = self.mesh.stats()
            summary.bytes_sent = stats.gossip_bytes_published + stats.blob_bytes_sent + stats.push_bytes_sent
            summary.bytes_received = stats.gossip_bytes_received + stats.blob_bytes_received + stats.push_bytes_received
        summary.rejected = dict(ended.rejections)
        with best_effort(log, "counting the messages the mesh refused"):
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
            self._check_final_checkpoint(self.worker)
        self.summary.wall_seconds = time.perf_counter() - self._started
        self.summary.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.summary.stop_reason = self.stop_reason or "stopped"
        try:
            atomic_write_bytes(self.state_dir / SUMMARY_FILE, self.summary.to_json(), mode=0o644)
        except OSError as exc:
            log.error("summary not written to %s: %s", self.state_dir / SUMMARY_FILE, exc,
                      extra={"event": "summary_failed"})
            self.exit_code = ExitCode.STATE_DIR
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
