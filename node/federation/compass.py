"""FedCompass without a server: semi-asynchronous arrival groups over the mesh.

`CompassRunner` replaces the synchronous rounds of `FederationRunner` (whose networking,
validation, payload transfer, snapshots and state sync it reuses) with FedCompass
(../shared/docs/aggregation-spec.md §3, decisions in `fednode.node.scheduler.fedcompass`).
docs/fedcompass.md explains the design; in short:

* **Scheduling is replicated, each peer decides only for itself** (spec §3.4 option B). Every
  peer keeps a `CompassScheduler` view of the group table from what it hears: `GroupRecord`s
  (immutable, self-certifying ids), `ScheduleReport`s (who joined which group), update arrivals
  and manifests. After each of its local rounds a peer runs join-or-create for itself and
  announces the result. Divergent views only change which group a peer joins.
* **Speeds of others are measured, not believed**: a peer's seconds per step is the time between
  two of its updates reaching us (minus the wait for its group's manifest), which includes the
  network and cannot be faked downward. Claims are only a fallback, clamped to the observed range.
* **Each group's aggregation set is agreed through a signed manifest from its leader** (the
  creator; spec §3.4 option A for this part). The leader closes the group when every member's
  update arrived or at deadline + grace, and lists the updates (sender, seq, sha256, base
  version). If no manifest comes, arrived members take over one after another (ranked by
  sha256(group || peer)), `grace` apart. Several manifests for one group resolve deterministically
  (creator first, then the best-ranked fallback): every peer ends up applying the same one.
* **The global model is a commutative sum**, kept in int64 fixed point (2^-32): model = initial +
  the sum of every applied group's step. Integer addition is exact and order-free, so peers that
  applied the same manifests hold bit-identical models whatever order they heard them in, no
  total order of groups is needed, and replacing a fallback manifest by the creator's is exact.
* **A group's step is a pure function of its manifest and the updates it names**:
  alpha * (k / N) * AGR(rows) with one row per sender, row = the sum of s(tau) * delta over the
  sender's entries (tau = manifest version - base version). With AGR = mean this is exactly
  FedCompass's sum of alpha * s(tau_i) * delta_i / N. Staleness is scaled before the rule, and
  a group with fewer senders than the rule needs is deferred (spec §3.5).
* **Missed and deferred updates are re-addressed by their senders** to the open group expected to
  close first (the serverless general buffer), so each update belongs to exactly one group at a
  time, named in a header its sender signed.

Every wait is bounded: a member waits for its group's manifest at most until deadline + grace x
(members + 3) + 2 s, a leader waits at most until deadline + grace, fetches are bounded by the
mesh, a manifest whose updates cannot be obtained within MANIFEST_FETCH_SECONDS is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from fednode.aggregators import AggregationError, AggregationResult, Aggregator
from fednode.node.compression import is_finite
from fednode.node.envelope import Rejected, RejectReason
from fednode.node.federation.outer import OuterSequence
from fednode.node.federation.protocol import ValidControl, now_ms, round_seed
from fednode.node.federation.runner import FederationRunner, RoundOutcome
from fednode.node.federation.updates import PeerContribution
from fednode.node.model import assign_parameters, flatten_parameters
from fednode.node.scheduler import SyncPolicy
from fednode.node.scheduler.fedcompass import (
    Arrival,
    ArrivalGroup,
    ArrivalKind,
    Assignment,
    CompassPolicy,
    CompassScheduler,
    UpdateRef,
    staleness_weight,
)
from fednode.node.trainer import TrainResult
from fednode.proto.v1 import control_pb2, model_pb2

log = logging.getLogger("fednode.compass")

FIXED_POINT = float(2**32)  # model resolution 2^-32; |weights| up to 2^31 fit an int64
GROUP_ID_BYTES = 16
MAX_MANIFEST_ENTRIES = 256
MANIFEST_FETCH_SECONDS = 10.0  # a manifest whose updates stay unobtainable this long is skipped
MAX_READDRESS = 3  # a buffered update is re-addressed at most this often, then dropped
SYNC_LAG = 8  # adopt a snapshot when the newest one offered is this many versions ahead
HELD_PER_SENDER = 32  # at most this many updates kept per sender (consumed ones go sooner)
STEP_KEEP_SECONDS = 30.0  # an applied group's step is kept this long, so a preferred manifest can replace it
STEPS_KEPT = 32  # ... and for at most this many groups (memory: one int64 model-sized vector each)
SNAPSHOTS_SERVED = 4  # our newest snapshots kept available (a fetch in flight must not lose its blob)
SERVED_UPDATES = 256  # update payloads (ours and those we fetched) kept available to late fetchers
PUBLISH_TIMEOUT = 5.0  # a gossip publish stuck behind a dead peer's stream is given up (and re-sent)
MIN_GROUP_CAP_SECONDS = 60.0  # a group may always last this long (see _check_group_record)
TRAIN_NICENESS = 5  # the training thread yields the CPU to networking (see _train)
SINGLETON_SLACK = 1.0  # seconds a group of one may stay open after its ETA (and record slack)
OUTER_WINDOW = 8  # group steps a stateful outer optimizer can still reorder (16 bytes/parameter each)


def to_fixed(vector: torch.Tensor) -> torch.Tensor:
    """float -> int64 fixed point (2^-32 units), rounding to nearest."""
    return torch.round(vector.detach().to(torch.float64) * FIXED_POINT).to(torch.int64)


def from_fixed(master: torch.Tensor) -> torch.Tensor:
    """int64 fixed point -> the float32 model vector."""
    return (master.to(torch.float64) / FIXED_POINT).to(torch.float32)


def group_id_for(creator: str, created_unix_ms: int) -> bytes:
    """First 16 bytes of sha256(creator || created_unix_ms as 8-byte big-endian)."""
    return hashlib.sha256(creator.encode() + created_unix_ms.to_bytes(8, "big")).digest()[:GROUP_ID_BYTES]


def signer_rank(group_id: bytes, signer: str, creator: str) -> tuple[int, bytes]:
    """Preference among manifests for one group: the creator's, then fallbacks by a hash rank
    that nobody can choose (sha256(group || peer)); smaller is better."""
    if signer == creator:
        return (0, b"")
    return (1, hashlib.sha256(group_id + signer.encode()).digest())


@dataclass(frozen=True)
class StepResult:
    """A group's contribution to the model; `step` None when nothing is applied."""

    step: torch.Tensor | None
    senders: tuple[str, ...]
    result: AggregationResult | None = None
    error: str = ""


def compass_step(
    entries: Sequence[tuple[str, int, torch.Tensor, int]],
    *,
    policy: CompassPolicy,
    aggregator: Aggregator,
    federation_size: int,
    seed: int,
) -> StepResult:
    """alpha * (k / N) * AGR(rows): entries are (sender, seq, delta, tau); one row per sender, the
    sum of s(tau) * delta over its entries in seq order; rows in sender order; N is at least k.

    Pure and deterministic: the same entries give the bit-identical step on every peer (fixed
    order, seeded rule). Staleness is applied before the rule so stale updates cannot dominate
    its statistics (spec §3.5); with the mean it equals the reference sum of
    alpha * s(tau_i) * delta_i / N.
    """
    rows_by_sender: dict[str, torch.Tensor] = {}
    for sender, _seq, delta, tau in sorted(entries, key=lambda e: (e[0], e[1])):
        if tau > policy.max_staleness:
            continue
        scaled = delta.to(torch.float32) * staleness_weight(policy, tau)
        previous = rows_by_sender.get(sender)
        rows_by_sender[sender] = scaled if previous is None else previous + scaled
    senders = tuple(sorted(rows_by_sender))
    if not senders:
        return StepResult(None, (), error="no usable entries")
    rows = torch.stack([rows_by_sender[s] for s in senders])
    try:
        result = aggregator(rows, seed=seed)
    except AggregationError as exc:
        return StepResult(None, senders, error=f"aggregation failed: {exc}")
    n = max(int(federation_size), len(senders))
    step = result.aggregate.to(torch.float32) * float(policy.alpha * len(senders) / n)
    if not is_finite(step):
        return StepResult(None, senders, result, "non-finite aggregate")
    return StepResult(step, senders, result)


@dataclass
class Held:
    """An update announced by a peer (its latest label decides the group it belongs to)."""

    sender: str
    seq: int
    digest: bytes
    base_version: int
    local_steps: int
    group_id: bytes
    label_ms: int
    size: int = 0
    delta: torch.Tensor | None = None
    arrived_at: float | None = None
    fetching: bool = False

    def ref(self) -> UpdateRef:
        return UpdateRef(self.sender, self.seq, self.digest, self.base_version)


@dataclass
class Candidate:
    signer: str
    digest: bytes
    manifest: control_pb2.AggregationManifest
    received_at: float


@dataclass
class GroupOutcome:
    """The manifests heard for one group and the one applied."""

    creator: str
    candidates: dict[bytes, Candidate] = field(default_factory=dict)  # manifest digest -> manifest
    applied: Candidate | None = None
    step: torch.Tensor | None = None  # fixed-point step of `applied`, kept STEP_KEEP_SECONDS for swaps
    external: bool = False  # included in an adopted snapshot: never applied again
    outer_key: tuple[int, bytes] | None = None  # its place in the outer optimizer's order, once applied
    skipped: bool = False  # updates unobtainable: not applied (this peer drifts until it syncs)
    applied_at: float | None = None

    def best(self, group_id: bytes) -> Candidate | None:
        return min(self.candidates.values(),
                   key=lambda c: (signer_rank(group_id, c.signer, self.creator), c.digest), default=None)


@dataclass
class OwnPending:
    """One of our updates not yet aggregated."""

    seq: int
    header: model_pb2.UpdateHeader
    group_id: bytes
    labeled_at: float
    readdressed: int = 0
    missed: bool = False  # its group stopped waiting for it (registered after deadline + grace)


def policy_from_config(federation: Any, grace: float | None = None) -> CompassPolicy:
    """The scheduler policy from a `FederationSection`."""
    return CompassPolicy(
        q_min=federation.q_min,
        q_max=federation.q_max,
        q_upper=federation.q_upper,
        latest_time_factor=federation.latest_time_factor,
        speed_momentum=federation.speed_momentum,
        staleness=federation.staleness,
        staleness_exponent=federation.staleness_exponent,
        staleness_hinge=federation.staleness_hinge,
        max_staleness=federation.max_staleness,
        alpha=federation.alpha,
        grace=federation.delivery_grace if grace is None else grace,
    )


class CompassRunner(FederationRunner):
    """FedCompass over the mesh; see the module docstring. Same construction and lifecycle as
    `FederationRunner` (start, run, linger, close, restore, checkpoint_extra) plus `compass`."""

    def __init__(self, *, compass: CompassPolicy, **kwargs: Any) -> None:
        kwargs.setdefault("local_steps", compass.q_max)
        kwargs.setdefault("policy", SyncPolicy(min_participants=1))
        super().__init__(**kwargs)
        self.compass = compass
        self.min_grace = compass.grace
        self.sched = CompassScheduler(compass)
        self.master = to_fixed(flatten_parameters(self.model))
        self.work_model = copy.deepcopy(self.model)  # trained in a thread; self.model stays the global model
        self.seq = 0
        self.held: dict[tuple[str, int], Held] = {}
        self.seq_floor: dict[str, int] = {}  # per sender: seqs at or below were dropped; replays are stale
        self.outcomes: dict[bytes, GroupOutcome] = {}
        self.applied_order: deque[bytes] = deque(maxlen=64)
        self.led: set[bytes] = set()
        self.own: dict[int, OwnPending] = {}
        self.claimed_speed: dict[str, float] = {}
        self.pending_members: dict[bytes, list[tuple[str, int, int | None]]] = {}
        self.departed: dict[str, float] = {}
        self.last_update_of: dict[str, tuple[int, float, bytes]] = {}  # sender -> (seq, arrival, group)
        self.last_train: TrainResult | None = None
        self.closed_groups: deque[dict[str, Any]] = deque(maxlen=256)
        self._republish: dict[bytes, tuple[control_pb2.ControlMessage, float]] = {}
        self._last_apply_at = 0.0
        self._snapshot_version = -1
        self._snapshot_at = 0.0
        self._aggregations = 0
        self.group_created_ms: dict[bytes, int] = {}  # group -> its creator's created_unix_ms
        self.claim_only: set[str] = set()  # peers whose speed is still their (clamped) claim
        self.consumed: set[tuple[str, int]] = set()  # updates in a final (creator's) applied manifest
        self._served_snapshots: deque[bytes] = deque()
        self._next_sync_try = 0.0
        self._fetch_retry_at: dict[tuple[str, int], float] = {}
        self._steward_wakeup: asyncio.Event | None = None
        self._train_executor = ThreadPoolExecutor(1, thread_name_prefix="compass-train", initializer=_lower_priority)
        # A stateful outer optimizer depends on the order of the steps, and groups have none:
        # the sequence applies them in (manifest base version, group id) order (see _apply).
        self.outer_sequence = OuterSequence(self.outer, self.outer_state, window=OUTER_WINDOW)

    # ------------------------------------------------------------------------------ state
    def restore(self, round_number: int, model_version: int, extra: dict[str, Any]) -> None:
        super().restore(round_number, model_version, extra)
        master = extra.get("compass_master")
        if isinstance(master, torch.Tensor) and master.dtype == torch.int64 and master.numel() == self.layout.numel:
            self.master = master.clone()
        else:
            self.master = to_fixed(flatten_parameters(self.model))
        assign_parameters(self.model, from_fixed(self.master))
        self.sched.version = model_version
        self.round = model_version
        self.seq = int(extra.get("compass_seq", 0))
        self.outer_sequence.reset(self.outer_state)
        for hex_id in extra.get("compass_applied", []) or []:
            with contextlib.suppress(ValueError):
                self._mark_external(bytes.fromhex(hex_id))

    def checkpoint_extra(self) -> dict[str, Any]:
        extra = super().checkpoint_extra()
        extra["compass_master"] = self.master.clone()
        extra["compass_seq"] = self.seq
        extra["compass_applied"] = [g.hex() for g in self.applied_order]
        return extra

    def _mark_external(self, group_id: bytes) -> None:
        outcome = self.outcomes.setdefault(group_id, GroupOutcome(creator=""))
        outcome.external = True
        group = self.sched.groups.get(group_id)
        if group is not None:
            group.closed = True
        if group_id not in self.applied_order:
            self.applied_order.append(group_id)

    @property
    def grace(self) -> float:
        return self.sched.policy.grace

    def _refresh_grace(self) -> None:
        """Grace = the configured floor, raised to twice the recent p90 of header delivery plus
        payload fetch (what a member's on-time update needs to reach its leader), capped at 5 s."""
        measured = 0.0
        for name in ("gossip_delivery", "fetch"):
            samples = list(self.timings[name])[-100:]
            if len(samples) >= 5:
                measured += statistics.quantiles(samples, n=10)[-1]
        grace = min(max(self.min_grace, 2 * measured), max(self.min_grace, 5.0))
        if abs(grace - self.sched.policy.grace) > 1e-3:
            self.sched.policy = dataclasses.replace(self.sched.policy, grace=grace)

    def _federation_size(self) -> int:
        """N: members heard from recently and not departed since, plus this node."""
        horizon = time.time() - (3 * self.announce_interval + 5.0)
        live = {p for p, m in self.members.items()
                if m.last_seen >= horizon and m.last_seen > self.departed.get(p, 0.0)}
        return len(live - {self.peer_id}) + 1

    # ------------------------------------------------------------------------------ main loop
    async def run(self, should_stop: Callable[[], bool]) -> None:
        """Local rounds until `should_stop()` or the stop event; groups are closed and manifests
        applied by the steward task meanwhile."""
        await self._initial_sync()
        self._spawn(self._steward(), "compass-steward")
        loop = asyncio.get_running_loop()
        await self._wait_for_members(should_stop)
        self._last_apply_at = loop.time()
        while not should_stop() and not self.stop.is_set():
            best = self._best_offer()
            if best is not None and best.header.round > self.model_version + SYNC_LAG and loop.time() >= self._next_sync_try:
                log.info("peers are %d versions ahead; syncing", best.header.round - self.model_version)
                if not await self._sync_from_peers():
                    # Train meanwhile: a failing sync must not keep us from contributing.
                    self._next_sync_try = loop.time() + 2 * self.announce_interval
                continue
            await self._local_round(loop)

    async def _wait_for_members(self, should_stop: Callable[[], bool]) -> None:
        """Start training once `federation.min_participants` members (us included) are present,
        as synchronous rounds need them before aggregating: a peer that starts first would
        otherwise fit the global model to its own shard while the others are still starting.
        Checked at start only; afterwards FedCompass copes with members coming and going."""
        needed = self.rounds.policy.min_participants
        loop = asyncio.get_running_loop()
        reported = 0.0
        while self._federation_size() < needed and not should_stop() and not self.stop.is_set():
            if loop.time() >= reported:
                log.info("waiting for %d member(s) before training (%d present)", needed, self._federation_size())
                reported = loop.time() + 30.0
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=0.5)

    async def _local_round(self, loop: asyncio.AbstractEventLoop) -> None:
        assignment = await self._assign(loop.time())
        # The first round only calibrates our speed; q_min (the reference starts everyone at
        # q_max) keeps a straggler's first contribution from arriving q_max x its speed late.
        steps = assignment.local_steps if assignment is not None else self.compass.q_min
        started = loop.time()
        base = from_fixed(self.master)
        base_version = self.model_version
        assign_parameters(self.work_model, base)
        result = await self._train(self.work_model, steps)
        if result.steps < steps:
            return  # stopped mid-round
        self.last_train = result
        self._last_train_seconds = result.seconds
        delta = flatten_parameters(self.work_model) - base
        if not is_finite(delta):
            log.error("local training produced a non-finite update; sending a zero update")
            delta = torch.zeros_like(delta)
        if self.attack is not None and self.attack.kind == "update":
            delta = self._craft_compass_attack(delta)
        self.seq += 1
        now = loop.time()
        if assignment is None:
            # First report (spec §3.2): a FedAsync-style single update = a group of one that
            # closes at once; the node learns its speed from this round.
            group_id = await self._create_singleton(now)
            wait_for = group_id
        elif now > assignment.deadline + (self.grace if assignment.created else self.grace / 2):
            # Missed our own group: the update goes to the group expected to close first, and
            # we continue at once from the current global model (spec: missed -> buffer).
            group_id = await self._buffer_target(now, exclude=assignment.group_id)
            wait_for = None
            log.info("finished %.2f s after group %s's deadline; update re-addressed to %s",
                     now - assignment.deadline, assignment.group_id.hex()[:8], group_id.hex()[:8])
        else:
            group_id = assignment.group_id
            wait_for = group_id
        header, arrival = await self._publish_compass_update(self.seq, delta, result, group_id, base_version)
        missed = arrival.kind is ArrivalKind.MISSED
        if missed and wait_for == group_id:
            # Out on time by the check above, but publishing took us past deadline + grace: the
            # group no longer waits for us (it may have nothing to close), so neither do we;
            # _readdress_own moves the update on at once.
            wait_for = None
        self.own[self.seq] = OwnPending(self.seq, header, group_id, now, missed=missed)
        # Our speed as the reference server would measure it: from the assignment to the update
        # being out (training, encoding, publishing), so group ETAs include that overhead; a
        # one-off stall (a jammed publish) counts at most as much as the training itself.
        overhead = max(0.0, loop.time() - started - result.seconds)
        self.sched.speeds.observe(self.peer_id, result.seconds + min(overhead, max(0.5, result.seconds)), result.steps)
        self._poke()
        published = loop.time()
        if wait_for is not None:
            await self._wait_for_group(wait_for)
        log.info("local round %d: %d steps, training %.3f s, out after %.3f s, waited %.3f s for group %s",
                  self.seq, result.steps, result.seconds, published - started, loop.time() - published,
                  group_id.hex()[:8], extra={"event": "local_round", "seq": self.seq, "steps": result.steps,
                                             "train_seconds": round(result.seconds, 4),
                                             "wait_seconds": round(loop.time() - published, 4)})

    async def _train(self, model: torch.nn.Module, steps: int) -> TrainResult:
        """Local steps in our own lower-priority thread (nice +TRAIN_NICENESS). Unlike
        synchronous rounds, a fedcompass node trains back to back; at normal priority a fast node
        on a contended CPU (other daemons, as in a local federation) starves its own networking
        thread, and its peers' payload fetches and stream openings time out. The cost: on a
        contended host the training itself gets a smaller share."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._train_executor, self.trainer.train_round, model, steps, self.stop)

    async def _assign(self, now: float) -> Assignment | None:
        """join-or-create for ourselves over our view of the groups (None: first round)."""
        if self.sched.speeds.get(self.peer_id) is None:
            return None
        self._refresh_grace()
        created_ms = self._fresh_ms()
        assignment = self.sched.assign(self.peer_id, now, group_id_for(self.peer_id, created_ms))
        if assignment.created:
            self.led.add(assignment.group_id)
            await self._publish_group(assignment.group_id, created_ms)
        with contextlib.suppress(Exception):
            await self._publish(control_pb2.ControlMessage(schedule=control_pb2.ScheduleReport(
                peer_id=self.peer_id,
                seconds_per_step=self.sched.speeds.get(self.peer_id) or 0.0,
                assigned_local_steps=assignment.local_steps,
                group_id=assignment.group_id,
                expected_arrival_unix_ms=self._unix_ms(assignment.eta),
                base_model_version=self.model_version,
                round=self.seq + 1,
            )))
        self.sched.groups[assignment.group_id].expected_seq[self.peer_id] = self.seq + 1
        log.info("round %d: %s group %s for %d steps (eta in %.2f s)", self.seq + 1,
                 "created" if assignment.created else "joined", assignment.group_id.hex()[:8],
                 assignment.local_steps, assignment.eta - now,
                 extra={"event": "assigned", "seq": self.seq + 1, "group": assignment.group_id.hex()[:8],
                        "new_group": assignment.created, "steps": assignment.local_steps,
                        "eta_seconds": round(assignment.eta - now, 3)})
        return assignment

    def _fresh_ms(self) -> int:
        """A creation time unused by our previous groups (group ids derive from it)."""
        created = now_ms()
        while group_id_for(self.peer_id, created) in self.sched.groups:
            created += 1
        return created

    def _unix_ms(self, local: float) -> int:
        return max(0, now_ms() + round((local - asyncio.get_running_loop().time()) * 1000))

    async def _publish_group(self, group_id: bytes, created_ms: int) -> None:
        group = self.sched.groups[group_id]
        self.group_created_ms[group_id] = created_ms
        record = control_pb2.GroupRecord(
            group_id=group_id,
            creator_peer_id=self.peer_id,
            created_unix_ms=created_ms,
            expected_arrival_unix_ms=created_ms + round((group.eta - group.created_at) * 1000),
            deadline_unix_ms=created_ms + round((group.deadline - group.created_at) * 1000),
        )
        message = control_pb2.ControlMessage(group=record)
        until = group.deadline + self.grace
        self._republish[b"group" + group_id] = (message, until)
        with contextlib.suppress(Exception):
            await self._publish(message)

    async def _create_singleton(self, now: float) -> bytes:
        created_ms = self._fresh_ms()
        group_id = group_id_for(self.peer_id, created_ms)
        # ETA now (nobody can join: they would get 0 steps); a deadline a little later so our
        # own arrival, registered after publishing, is on time.
        # No members: our update's arrival completes it. (Adding us as a member would drop us
        # from the group we may be training for right now.)
        self.sched.add_group(ArrivalGroup(group_id, self.peer_id, now, now, now + SINGLETON_SLACK))
        self.led.add(group_id)
        await self._publish_group(group_id, created_ms)
        return group_id

    async def _buffer_target(self, now: float, exclude: bytes) -> bytes:
        target = self.sched.carry_target(now, exclude=[exclude])
        if target is not None:
            return target.group_id
        return await self._create_singleton(now)

    async def _wait_for_group(self, group_id: bytes) -> None:
        """Until our group's manifest is applied, bounded by its deadline plus the fallback
        leaders' turns and a fetch allowance."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            outcome = self.outcomes.get(group_id)
            if outcome is not None and (outcome.applied is not None or outcome.external or outcome.skipped):
                return
            group = self.sched.groups.get(group_id)
            if group is None:
                return
            bound = group.deadline + self.grace * (len(group.participants()) + 3) + 2.0
            if loop.time() >= bound:
                log.warning("no manifest for group %s %.1f s after its deadline; continuing without it",
                            group_id.hex()[:8], loop.time() - group.deadline)
                return
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=min(0.5, max(0.0, bound - loop.time())))

    # ------------------------------------------------------------------------------ steward
    async def _steward(self) -> None:
        """Closes the groups we lead, takes over for silent leaders, applies manifests,
        re-addresses our buffered updates, republishes what late joiners need."""
        loop = asyncio.get_running_loop()
        republish_at = loop.time() + self.announce_interval
        wakeup = asyncio.Event()
        self._steward_wakeup = wakeup
        while True:
            try:
                wakeup.clear()
                self._refresh_grace()
                now = loop.time()
                next_at = now + 0.5
                next_at = min(next_at, await self._close_due_groups(now))
                await self._apply_ready()
                await self._readdress_own(loop.time())
                if loop.time() >= republish_at:
                    republish_at = loop.time() + self.announce_interval
                    await self._republish_all(loop.time())
                self._maybe_refresh_snapshot(loop.time())
                self._prune()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not silently stop every group from closing
                log.exception("fedcompass steward step failed")
                next_at = loop.time() + 0.5
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=max(0.01, next_at - loop.time()))

    def wake(self) -> None:
        super().wake()
        if self._steward_wakeup is not None:
            self._steward_wakeup.set()

    def _poke(self) -> None:
        self._wakeup.set()
        if self._steward_wakeup is not None:
            self._steward_wakeup.set()

    async def _close_due_groups(self, now: float) -> float:
        """Close the groups we lead (and those whose leader went silent, in our fallback turn).
        Returns when to look again."""
        next_at = math.inf
        for group in list(self.sched.open_groups()):
            outcome = self.outcomes.get(group.group_id)
            if group.group_id in self.led:
                decision = self.sched.decide(group.group_id, now)
                if decision.close and not group.arrivals and now < group.deadline:
                    # Nothing arrived yet, so nothing to aggregate: closing early gains nothing and
                    # would race our own update into a singleton group (it is registered only
                    # once published, which on a loaded host can take a while).
                    next_at = min(next_at, group.deadline)
                    continue
                if decision.close:
                    await self._close_group(group, decision.reason, decision.missing, fallback=False)
                else:
                    next_at = min(next_at, decision.wait_until)
                continue
            # Fallback: only arrived members, only when no better-ranked manifest was heard.
            arrived = {ref.sender for ref in group.arrivals.values()}
            if self.peer_id not in arrived or group.creator == self.peer_id:
                continue
            ranked = sorted((p for p in arrived if p != group.creator),
                            key=lambda p: signer_rank(group.group_id, p, group.creator))
            turn = ranked.index(self.peer_id)
            due = group.deadline + self.grace * (2 + turn)
            better = outcome is not None and any(
                signer_rank(group.group_id, c.signer, group.creator) < signer_rank(group.group_id, self.peer_id, group.creator)
                for c in outcome.candidates.values())
            if better:
                continue
            if now >= due:
                log.warning("group %s: no manifest from its creator %s; closing it as fallback #%d",
                            group.group_id.hex()[:8], group.creator[-8:], turn + 1)
                missing = group.outstanding()
                await self._close_group(group, f"fallback #{turn + 1}", missing, fallback=True)
            else:
                next_at = min(next_at, due)
        return next_at

    async def _close_group(self, group: ArrivalGroup, reason: str, missing: tuple[str, ...], *, fallback: bool) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        cut = self.sched.cut(group.group_id, self.aggregator.minimum_rows(), include_buffer=False)
        manifest = control_pb2.AggregationManifest(
            group_id=group.group_id,
            base_model_version=self.sched.version,
            federation_size=self._federation_size(),
            deferred=cut.deferred,
            closed_unix_ms=now_ms(),
            creator_peer_id=group.creator,
            group_created_unix_ms=self._group_created_ms(group),
        )
        for ref in cut.entries[:MAX_MANIFEST_ENTRIES]:
            manifest.entries.add(sender_peer_id=ref.sender, payload_sha256=ref.digest,
                                 base_model_version=ref.base_version, round=ref.seq)
        self.led.discard(group.group_id)
        group.closed = True
        late_by = now - group.deadline
        info = {
            "event": "group_closed", "group": group.group_id.hex()[:8], "reason": reason,
            "members": sorted(p[-8:] for p in group.members), "missing": [p[-8:] for p in missing],
            "entries": len(cut.entries), "senders": len(cut.senders), "deferred": cut.deferred,
            "fallback": fallback, "open_seconds": round(now - group.created_at, 3),
            "after_deadline": round(late_by, 3), "grace": round(self.grace, 3),
            "deadline_seconds": round(group.deadline - group.created_at, 3),
        }
        self.closed_groups.append(info)
        log.info("group %s closes with %d update(s) from %d peer(s)%s: %s", info["group"], len(cut.entries),
                 len(cut.senders), " (deferred: too few for the rule)" if cut.deferred else "", reason, extra=info)
        message = control_pb2.ControlMessage(manifest=manifest)
        # The group's record stops being re-sent; its manifest is re-sent as long as the record
        # could still make a late peer join it.
        self._republish.pop(b"group" + group.group_id, None)
        until = max(now + 2 * self.announce_interval + 0.5, group.deadline + self.grace)
        self._republish[b"manifest" + group.group_id] = (message, until)
        with contextlib.suppress(Exception):
            await self._publish(message)
        self._on_manifest(self.peer_id, manifest)

    def _group_created_ms(self, group: ArrivalGroup) -> int:
        return self.group_created_ms.get(group.group_id) or self._unix_ms(group.created_at)

    # ------------------------------------------------------------------------------ manifests
    def _on_manifest(self, signer: str, manifest: control_pb2.AggregationManifest) -> None:
        group_id = bytes(manifest.group_id)
        if len(group_id) != GROUP_ID_BYTES or len(manifest.entries) > MAX_MANIFEST_ENTRIES:
            self._reject(signer, Rejected(RejectReason.REJECT_MALFORMED, "manifest group id or size out of bounds"))
            return
        creator = manifest.creator_peer_id
        if group_id_for(creator, manifest.group_created_unix_ms) != group_id:
            self._reject(signer, Rejected(RejectReason.REJECT_MALFORMED, "manifest group id does not match its creator"))
            return
        keys = [(e.sender_peer_id, e.round) for e in manifest.entries]
        if keys != sorted(keys) or len(set(keys)) != len(keys) or any(len(e.payload_sha256) != 32 for e in manifest.entries):
            self._reject(signer, Rejected(RejectReason.REJECT_MALFORMED, "manifest entries unsorted, repeated or malformed"))
            return
        group = self.sched.groups.get(group_id)
        now = asyncio.get_running_loop().time()
        # A fallback takes over only after the deadline (+ 2 grace). One that comes earlier by our
        # clock is kept (its sender's clock may run ahead) but neither closes the group nor is
        # applied before the deadline: the creator may still close it, and its manifest wins.
        premature = group is not None and signer != creator and not group.closed and now < group.deadline + self.grace
        outcome = self.outcomes.setdefault(group_id, GroupOutcome(creator=creator))
        outcome.creator = creator
        digest = hashlib.sha256(manifest.SerializeToString(deterministic=True)).digest()
        if digest in outcome.candidates:
            return  # the same manifest again (re-sent, or several gossip paths)
        if any(c.signer == signer for c in outcome.candidates.values()):
            # Equivocation: counted against the signer; every peer then prefers the smaller
            # digest, whatever order it heard them in.
            self._reject(signer, Rejected(RejectReason.REJECT_REPLAY, f"second, different manifest for group {group_id.hex()[:8]}"))
        outcome.candidates[digest] = Candidate(signer, digest, manifest, now)
        if group is not None and not premature:
            group.closed = True  # nobody joins a group that has a manifest
            self.led.discard(group_id)
        for entry in manifest.entries:
            self._ensure_entry(entry, providers=[entry.sender_peer_id, signer])
        self._poke()

    def _ensure_entry(self, entry: control_pb2.AggregationManifest.Entry, providers: list[str]) -> None:
        """Make sure we hold (or are fetching) an update a manifest names, even if its header
        never reached us."""
        key = (entry.sender_peer_id, entry.round)
        held = self.held.get(key)
        if held is not None and (held.delta is not None or held.fetching) and held.digest == bytes(entry.payload_sha256):
            return
        now = asyncio.get_running_loop().time()
        if held is None and self._fetch_retry_at.get(key, 0.0) > now:
            return
        self._fetch_retry_at[key] = now + 1.0
        if len(self._fetch_retry_at) > 4096:
            self._fetch_retry_at = {k: t for k, t in self._fetch_retry_at.items() if t > now}
        if held is not None and held.digest != bytes(entry.payload_sha256):
            return  # the manifest names another payload than the sender announced: unobtainable
        header = model_pb2.UpdateHeader(
            federation_id=self.federation_id, sender_peer_id=entry.sender_peer_id, round=entry.round,
            base_model_version=entry.base_model_version, layout_digest=self.layout.digest,
            payload_sha256=entry.payload_sha256, created_unix_ms=now_ms(),
        )
        held = Held(entry.sender_peer_id, entry.round, bytes(entry.payload_sha256), entry.base_model_version,
                    0, b"", 0, fetching=True)
        self.held[key] = held
        self._spawn(self._obtain_compass(held, header, providers), f"entry-{entry.sender_peer_id[-6:]}-{entry.round}")

    async def _apply_ready(self) -> None:
        """Apply every group whose preferred manifest changed and whose updates we hold.

        Nothing once the node is stopping: the model stays the one the stop was decided on (the
        target accuracy reached, the round budget spent, a signal). The steward still closes the
        groups we lead and the node still serves its payloads while it lingers; only our own model
        stops moving (otherwise a node that reached its target accuracy could apply more groups
        while it lingers and report a lower one than it stopped for)."""
        loop = asyncio.get_running_loop()
        for group_id, outcome in list(self.outcomes.items()):
            if self.stop.is_set():
                return
            if outcome.external:
                continue
            best = outcome.best(group_id)
            if best is None or (outcome.applied is not None and outcome.applied.digest == best.digest):
                continue
            group = self.sched.groups.get(group_id)
            if (best.signer != outcome.creator and group is not None and not group.closed
                    and loop.time() < group.deadline + self.grace):
                continue  # a premature fallback manifest: give the creator its chance
            # Not ready: an update we do not hold yet, or one whose sender addressed it to another
            # group (a leader may only aggregate what was sent to its group; a re-addressing
            # header may still be on its way, so this waits like a missing payload).
            missing = [e for e in best.manifest.entries
                       if (h := self.held.get((e.sender_peer_id, e.round))) is None or h.delta is None
                       or h.digest != bytes(e.payload_sha256) or (h.label_ms and h.group_id != group_id)]
            if missing:
                for entry in missing:  # fetches that failed are retried (backed off) until the allowance ends
                    self._ensure_entry(entry, providers=[entry.sender_peer_id, best.signer])
                if loop.time() - best.received_at > MANIFEST_FETCH_SECONDS and not outcome.skipped:
                    outcome.skipped = True
                    log.warning("group %s: %d update(s) of its manifest unobtainable; not applied (will sync if behind)",
                                group_id.hex()[:8], len(missing))
                    self._poke()
                continue
            if outcome.applied is not None and outcome.step is None:
                log.warning("group %s: a preferred manifest arrived %.0f s after another was applied; keeping that one",
                            group_id.hex()[:8], STEP_KEEP_SECONDS)
                outcome.candidates = {outcome.applied.digest: outcome.applied}
                continue
            await self._apply(group_id, outcome, best)

    async def _apply(self, group_id: bytes, outcome: GroupOutcome, candidate: Candidate) -> None:
        loop = asyncio.get_running_loop()
        manifest = candidate.manifest
        entries = []
        for e in manifest.entries:
            held = self.held[(e.sender_peer_id, e.round)]
            assert held.delta is not None
            tau = max(0, int(manifest.base_model_version) - int(e.base_model_version))
            entries.append((e.sender_peer_id, int(e.round), held.delta, tau))
        started = time.perf_counter()
        seed = round_seed(self.federation_id, int(manifest.base_model_version), group_id)
        if manifest.deferred:
            result = StepResult(None, tuple(sorted({e[0] for e in entries})), error="deferred")
        else:
            result = await asyncio.to_thread(
                compass_step, entries, policy=self.compass, aggregator=self.aggregator,
                federation_size=manifest.federation_size, seed=seed,
            )
        aggregation_seconds = time.perf_counter() - started
        step = to_fixed(result.step) if result.step is not None else None
        swap = outcome.applied is not None
        if self.outer.is_identity:
            if swap and outcome.step is not None:
                self.master -= outcome.step
            if step is not None:
                self.master += step
        elif not self._apply_outer(group_id, outcome, manifest, step, swap):
            return
        # Kept for a while: a preferred manifest (the creator's after a fallback's, or the smaller
        # of an equivocating signer's two) replaces this one exactly.
        final = candidate.signer == outcome.creator
        outcome.step = step if step is not None else torch.zeros_like(self.master)
        outcome.applied = candidate
        if final and not manifest.deferred:
            self.consumed.update((e.sender_peer_id, int(e.round)) for e in manifest.entries)
        outcome.applied_at = loop.time()
        assign_parameters(self.model, from_fixed(self.master))
        if result.error and result.error != "deferred":
            log.error("group %s: %s; its step is zero on every peer", group_id.hex()[:8], result.error)
        if swap:
            log.info("group %s: replaced the applied manifest by the preferred one from %s",
                     group_id.hex()[:8], candidate.signer[-8:])
            self._poke()
            return
        refs = [UpdateRef(e[0], e[1], bytes(m.payload_sha256), int(m.base_model_version))
                for e, m in zip(entries, manifest.entries, strict=True)]
        self.sched.apply(group_id if group_id in self.sched.groups else None, refs, deferred=manifest.deferred)
        self.sched.buffer.clear()  # the general buffer lives with the senders (they re-address)
        self.applied_order.append(group_id)
        self._poke()
        if manifest.deferred:
            return
        self.model_version = self.sched.version
        self.round = self.model_version
        self._aggregations += 1
        selected, dropped = self._account(result)
        now = loop.time()
        outcome_record = RoundOutcome(
            round=self.round, model_version=self.model_version, participants=list(result.senders),
            selected=selected, rejected_by_aggregator=dropped,
            train=self.last_train or TrainResult(0, 0, math.nan, 0.0),
            aggregation_seconds=aggregation_seconds, round_seconds=now - self._last_apply_at,
            close_reason=f"group {group_id.hex()[:8]}",
        )
        self._last_apply_at = now
        if self.on_round is not None:
            await self.on_round(outcome_record)

    def _apply_outer(self, group_id: bytes, outcome: GroupOutcome, manifest: control_pb2.AggregationManifest,
                     step: torch.Tensor | None, swap: bool) -> bool:
        """The outer optimizer's step on a group's step (its pseudo-gradient is the step negated:
        the staleness-weighted alpha * (k/N) * AGR(...), exactly what plain FedCompass adds), in the
        sequence's canonical order; the master moves by every update that changed. False when a
        swap comes too late (the step it replaces is settled): the applied manifest stays."""
        if swap and outcome.outer_key is not None and outcome.outer_key not in self.outer_sequence:
            log.warning("group %s: a preferred manifest arrived after the outer optimizer settled the applied one; "
                        "keeping that one", group_id.hex()[:8])
            assert outcome.applied is not None
            outcome.candidates = {outcome.applied.digest: outcome.applied}
            return False
        key = (int(manifest.base_model_version), group_id)
        add = None if step is None else (key, torch.neg(step.to(torch.float64) / FIXED_POINT))
        changes = self.outer_sequence.change(remove=outcome.outer_key if swap else None, add=add)
        for change in changes:
            if change.old is not None:
                self.master -= to_fixed(change.old)
            if change.new is not None:
                self.master += to_fixed(change.new)
        if len(changes) > 1 + int(swap):
            log.debug("group %s came before %d applied group(s) in the outer order; replayed them",
                      group_id.hex()[:8], len(changes) - 1)
        outcome.outer_key = None if step is None else key
        self.outer_state = self.outer_sequence.state
        return True

    def _account(self, result: StepResult) -> tuple[list[str], list[str]]:
        if result.result is None:
            return [], list(result.senders)
        return self._credit_contributions(list(result.senders), result.result)

    # ------------------------------------------------------------------------------ our buffered updates
    async def _readdress_own(self, now: float) -> None:
        """Our updates whose group closed without them (missed, deferred, or a lost leader) go to
        the open group expected to close first, at most MAX_READDRESS times."""
        for seq, pending in list(self.own.items()):
            outcome = self.outcomes.get(pending.group_id)
            if outcome is not None and outcome.external:
                del self.own[seq]
                continue
            best = outcome.best(pending.group_id) if outcome is not None else None
            if best is not None:
                included = any(e.sender_peer_id == self.peer_id and e.round == seq for e in best.manifest.entries)
                if included and not best.manifest.deferred:
                    if outcome is not None and best.signer == outcome.creator:
                        del self.own[seq]  # in the creator's manifest: final
                    continue
                # The group closed without it, or was deferred: re-address below.
            elif not pending.missed:
                group = self.sched.groups.get(pending.group_id)
                if group is not None:
                    bound = group.deadline + self.grace * (len(group.participants()) + 3) + 2.0
                    if now < bound:
                        continue  # open, or a (fallback) manifest may still come
                elif now - pending.labeled_at < 5.0:
                    continue  # group not known yet (its record may still arrive)
            base = int(pending.header.base_model_version)
            if pending.readdressed >= MAX_READDRESS or self.sched.version - base > self.compass.max_staleness:
                log.info("dropping our update %d: re-addressed %d times, staleness %d",
                         seq, pending.readdressed, self.sched.version - base)
                del self.own[seq]
                continue
            target = await self._buffer_target(now, exclude=pending.group_id)
            header = model_pb2.UpdateHeader()
            header.CopyFrom(pending.header)
            header.group_id = target
            header.created_unix_ms = max(now_ms(), pending.header.created_unix_ms + 1)
            pending.header = header
            pending.group_id = target
            pending.labeled_at = now
            pending.readdressed += 1
            own_held = self.held.get((self.peer_id, seq))
            if own_held is not None:
                own_held.group_id = target
                own_held.label_ms = int(header.created_unix_ms)
                pending.missed = self.sched.on_update(own_held.ref(), target, now).kind is ArrivalKind.MISSED
            log.info("our update %d re-addressed to group %s", seq, target.hex()[:8])
            with contextlib.suppress(Exception):
                await self._publish(control_pb2.ControlMessage(update=header))

    async def _republish_all(self, now: float) -> None:
        """Gossip has no replay: re-send what a late or briefly disconnected peer needs (our open
        groups, our pending updates, our recent manifests); receivers drop duplicates."""
        for key, (message, until) in list(self._republish.items()):
            if now > until:
                del self._republish[key]
                continue
            with contextlib.suppress(Exception):
                await self._publish(message)
        for pending in list(self.own.values()):
            with contextlib.suppress(Exception):
                await self._publish(control_pb2.ControlMessage(update=pending.header))

    # ------------------------------------------------------------------------------ sending
    async def _publish_compass_update(
        self, seq: int, delta: torch.Tensor, train: TrainResult, group_id: bytes, base_version: int
    ) -> tuple[model_pb2.UpdateHeader, Arrival]:
        received = await self._publish_update(seq, delta, train, group_id=group_id, base_model_version=base_version)
        header = received.header
        if header.inline_payload:
            # Served too: a peer that missed this header can still fetch what a manifest names.
            self._serve(bytes(header.payload_sha256), bytes(header.inline_payload))
        now = asyncio.get_running_loop().time()
        held = Held(self.peer_id, seq, bytes(header.payload_sha256), base_version, train.steps, group_id,
                    int(header.created_unix_ms), int(header.payload_size), received.delta, now)
        self.held[(self.peer_id, seq)] = held
        return header, self.sched.on_update(held.ref(), group_id, now)

    def _craft_compass_attack(self, own: torch.Tensor) -> torch.Tensor:
        """An omniscient attacker forges its update from the newest honest update of each peer
        (FedCompass has no shared round to wait for: what it holds is what it knows)."""
        assert self.attack is not None
        newest: dict[str, Held] = {}
        for held in self.held.values():
            if held.delta is not None and (held.sender not in newest or held.seq > newest[held.sender].seq):
                newest[held.sender] = held
        updates = {sender: held.delta for sender, held in newest.items() if held.delta is not None}
        return self.attack.forge(self.seq + 1, self.attack.honest(updates, self.peer_id, self._member_names()), own)

    # ------------------------------------------------------------------------------ receiving
    def _on_control(self, valid: ValidControl) -> None:
        body = valid.body
        if body == "group":
            self._on_group_record(valid)
        elif body == "schedule":
            self._on_schedule_report(valid)
        elif body == "manifest":
            self._on_manifest(valid.sender, valid.message.manifest)
        elif body == "departure":
            self.departed[valid.sender] = time.time()
            self.sched.depart(valid.sender)
            self._poke()

    def _local_time(self, unix_ms: int, valid: ValidControl) -> float:
        """A sender-clock instant on our monotonic clock: the earlier of two estimates.

        Relative to the message's own send time, clock skew cancels out but the delivery delay
        is added (a message that took 6 s to arrive would show a group as open for 6 s too
        long); read against our clock, the delay cancels but the skew is added. The earlier one
        errs only towards "that group is already over" (we then create a group instead of
        joining one), never towards waiting for a group that is gone.
        """
        now = asyncio.get_running_loop().time()
        relative = now + (int(unix_ms) - int(valid.message.sent_unix_ms)) / 1000
        absolute = now + (int(unix_ms) - now_ms()) / 1000
        return min(relative, absolute)

    def _check_group_record(self, record: control_pb2.GroupRecord) -> str | None:
        if group_id_for(record.creator_peer_id, record.created_unix_ms) != bytes(record.group_id):
            return "group id does not match creator and creation time"
        if not record.created_unix_ms <= record.expected_arrival_unix_ms <= record.deadline_unix_ms:
            return "group times out of order"
        expected = record.expected_arrival_unix_ms - record.created_unix_ms
        if record.deadline_unix_ms - record.created_unix_ms > self.compass.latest_time_factor * expected + SINGLETON_SLACK * 1000:
            return "deadline beyond lambda x the expected duration"
        # A liar's group may not hold its members long: at most 4 x q_max x the slowest speed we
        # measured (or MIN_GROUP_CAP_SECONDS while we know none).
        speeds = list(self.sched.speeds.known().values())
        cap = max(MIN_GROUP_CAP_SECONDS, 4 * self.compass.q_max * max(speeds, default=0.0))
        if expected / 1000 > cap:
            return f"group lasts {expected / 1000:.0f} s, more than the {cap:.0f} s allowed"
        return None

    def _on_group_record(self, valid: ValidControl) -> None:
        record = valid.message.group
        group_id = bytes(record.group_id)
        if group_id in self.sched.groups or group_id in self.outcomes:
            return
        problem = self._check_group_record(record)
        if problem is not None:
            self._reject(valid.sender, Rejected(RejectReason.REJECT_MALFORMED, f"group record: {problem}"))
            return
        created = self._local_time(record.created_unix_ms, valid)
        group = ArrivalGroup(group_id, record.creator_peer_id, created,
                             self._local_time(record.expected_arrival_unix_ms, valid),
                             self._local_time(record.deadline_unix_ms, valid))
        self.group_created_ms[group_id] = int(record.created_unix_ms)
        self.sched.add_group(group)
        for peer, steps, seq in self.pending_members.pop(group_id, []):
            self.sched.add_member(group_id, peer, steps, seq)
        # Updates labeled with this group before we knew it.
        now = asyncio.get_running_loop().time()
        for held in self.held.values():
            if held.group_id == group_id and held.delta is not None:
                self.sched.on_update(held.ref(), group_id, now)
        self._poke()

    def _on_schedule_report(self, valid: ValidControl) -> None:
        report = valid.message.schedule
        group_id = bytes(report.group_id)
        if len(group_id) != GROUP_ID_BYTES or not 1 <= report.assigned_local_steps <= 10 * self.compass.upper:
            self._reject(valid.sender, Rejected(RejectReason.REJECT_MALFORMED, "schedule report out of bounds"))
            return
        if math.isfinite(report.seconds_per_step) and report.seconds_per_step > 0:
            self.claimed_speed[valid.sender] = report.seconds_per_step
            if self.sched.speeds.get(valid.sender) is None:
                # Not measured yet: use the claim, clamped to the range we measured for others.
                measured = [s for p, s in self.sched.speeds.known().items() if p != valid.sender]
                claim = report.seconds_per_step
                if measured:
                    claim = min(max(claim, min(measured)), max(measured))
                self.sched.speeds.observe(valid.sender, claim, 1)
                self.claim_only.add(valid.sender)
        if group_id in self.sched.groups:
            self.sched.add_member(group_id, valid.sender, report.assigned_local_steps, report.round or None)
        elif group_id not in self.outcomes:
            self.pending_members.setdefault(group_id, []).append(
                (valid.sender, report.assigned_local_steps, report.round or None))
            if len(self.pending_members) > 256:
                self.pending_members.pop(next(iter(self.pending_members)))
        self._poke()

    def _on_update_header(self, valid: ValidControl) -> None:
        header = valid.message.update
        sender = valid.sender
        if header.payload_size > self.max_payload_bytes:
            self._reject(sender, Rejected(RejectReason.REJECT_OVERSIZED, f"{header.payload_size} byte payload"))
            return
        group_id = bytes(header.group_id)
        if len(group_id) != GROUP_ID_BYTES:
            # A peer on the sync schedule in a fedcompass federation (misconfigured): its
            # updates belong to no group.
            self._reject(sender, Rejected(RejectReason.REJECT_MALFORMED, "update without a fedcompass group"))
            return
        key = (sender, int(header.round))
        held = self.held.get(key)
        if held is None and header.round <= self.seq_floor.get(sender, 0):
            # An update we already used or dropped, announced again (its sender re-sends pending
            # updates; gossip also delivers late): not held against the sender.
            return
        if self.sched.version - int(header.base_model_version) > self.compass.max_staleness:
            return  # too stale to be aggregated; not the sender's fault (it may have been slow)
        digest = bytes(header.payload_sha256)
        if held is not None:
            if held.digest != digest:
                self._reject(sender, Rejected(RejectReason.REJECT_REPLAY, f"second, different update {header.round}"))
                return
            if held.label_ms == 0:  # known only from a manifest so far: take the header's facts
                held.base_version = int(header.base_model_version)
                held.local_steps = int(header.local_steps)
            if header.created_unix_ms > held.label_ms and group_id != held.group_id:
                held.group_id = group_id
                held.label_ms = int(header.created_unix_ms)
                if held.delta is not None:
                    self.sched.on_update(held.ref(), group_id, asyncio.get_running_loop().time())
                    self._poke()
            return
        held = Held(sender, int(header.round), digest, int(header.base_model_version), int(header.local_steps),
                    group_id, int(header.created_unix_ms), int(header.payload_size), fetching=True)
        self.held[key] = held
        self._spawn(self._obtain_compass(held, header, [sender]), f"update-{sender[-6:]}-{header.round}")

    async def _obtain_compass(self, held: Held, header: model_pb2.UpdateHeader, providers: list[str]) -> None:
        delta = await self._receive_payload(held.sender, header, providers)
        held.fetching = False
        if delta is None:
            if self.held.get((held.sender, held.seq)) is held:
                del self.held[(held.sender, held.seq)]  # a re-announcement or manifest may retry
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        held.delta = delta
        held.arrived_at = now
        if header.inline_payload:
            self._serve(held.digest, bytes(header.inline_payload))  # we can provide it to others now
        self.contributions.setdefault(held.sender, PeerContribution()).accepted += 1
        self._measure_speed(held, now)
        if held.group_id:
            self.sched.on_update(held.ref(), held.group_id, now)
        self._poke()

    def _measure_speed(self, held: Held, now: float) -> None:
        """Seconds per step of another peer as we observe it: from its previous update's arrival
        (or the manifest that released it, if later) to this arrival."""
        previous = self.last_update_of.get(held.sender)
        if held.label_ms:
            self.last_update_of[held.sender] = (held.seq, now, held.group_id)
        if previous is None or held.seq != previous[0] + 1 or held.local_steps < 1:
            return
        start = previous[1]
        released = self.outcomes.get(previous[2])
        if released is not None and released.applied_at is not None:
            start = max(start, released.applied_at)
        steps = min(max(held.local_steps, self.compass.q_min), self.compass.upper)
        if now > start:
            if held.sender in self.claim_only:
                self.sched.speeds.forget(held.sender)  # the first measurement replaces the claim
                self.claim_only.discard(held.sender)
            self.sched.speeds.observe(held.sender, now - start, steps)

    # ------------------------------------------------------------------------------ housekeeping
    def _prune(self) -> None:
        now = asyncio.get_running_loop().time()
        kept = sorted((o for o in self.outcomes.values() if o.step is not None), key=lambda o: o.applied_at or 0.0)
        for index, outcome in enumerate(kept):
            too_old = outcome.applied_at is not None and now - outcome.applied_at > STEP_KEEP_SECONDS
            if too_old or index < len(kept) - STEPS_KEPT:
                outcome.step = None  # final from now on
        self.sched.prune(keep_closed=128)
        known = set(self.sched.groups)
        for group_id in [g for g in self.group_created_ms if g not in known]:
            del self.group_created_ms[group_id]
        for group_id in [g for g, o in self.outcomes.items()
                         if g not in known and (o.step is None or o.external) and len(self.outcomes) > 256]:
            del self.outcomes[group_id]
            if len(self.outcomes) <= 256:
                break
        by_sender: dict[str, list[int]] = {}
        for sender, seq in self.held:
            by_sender.setdefault(sender, []).append(seq)
        for sender, seqs in by_sender.items():
            newest = set(sorted(seqs)[-HELD_PER_SENDER:])
            for seq in seqs:
                key = (sender, seq)
                held = self.held[key]
                if held.fetching or (sender == self.peer_id and seq in self.own):
                    continue
                too_stale = self.sched.version - held.base_version > self.compass.max_staleness
                if key in self.consumed or too_stale or seq not in newest:
                    del self.held[key]
                    self.consumed.discard(key)
                    self.seq_floor[sender] = max(self.seq_floor.get(sender, 0), seq)

    def _maybe_refresh_snapshot(self, now: float) -> None:
        """A new snapshot at most once per announcement (it is offered with each one)."""
        if self.model_version != self._snapshot_version and now - self._snapshot_at >= self.announce_interval:
            self._refresh_snapshot()
            self._snapshot_version = self.model_version
            self._snapshot_at = now

    async def close(self) -> None:
        """Before leaving, close the groups we lead that others already delivered to, so their
        members do not wait for a fallback leader."""
        self.closing = True
        for group_id in list(self.led):
            group = self.sched.groups.get(group_id)
            if group is not None and not group.closed and group.arrivals:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._close_group(group, "leader leaving", group.outstanding(), fallback=False),
                                           timeout=PUBLISH_TIMEOUT)
        await super().close()
        self._train_executor.shutdown(wait=False, cancel_futures=True)

    def _refresh_snapshot(self) -> None:
        super()._refresh_snapshot()
        if self._snapshot is None:
            return
        self._snapshot[0].applied_groups.extend(self.applied_order)
        # Serve our newest few snapshots only (kept apart from the update payloads, which they
        # would otherwise push out of the served set).
        digest = bytes(self._snapshot[0].payload_sha256)
        with contextlib.suppress(ValueError):
            self._served.remove(digest)
        if digest not in self._served_snapshots:
            self._served_snapshots.append(digest)
        while len(self._served_snapshots) > SNAPSHOTS_SERVED:
            self.mesh.unserve_blob(self._served_snapshots.popleft())

    def _serve(self, digest: bytes, data: bytes | bytearray) -> None:
        """As the base, but keeping SERVED_UPDATES payloads (fedcompass produces many)."""
        if digest in self._served:
            return
        self.mesh.serve_blob(digest, data)
        self._served.append(digest)
        while len(self._served) > SERVED_UPDATES:
            self.mesh.unserve_blob(self._served.popleft())

    async def _publish(self, message: control_pb2.ControlMessage, *, wait: bool = False, gossip: bool = False) -> None:
        """Bounded: a publish stuck behind a peer's jammed stream must not stall our rounds.
        Whatever still matters is re-sent by `_republish_all`."""
        started = time.perf_counter()
        try:
            await asyncio.wait_for(super()._publish(message, wait=wait, gossip=gossip), timeout=PUBLISH_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("publishing a %s message took over %.0f s; given up (re-sent later if still needed)",
                        message.WhichOneof("body"), PUBLISH_TIMEOUT)
            return
        elapsed = time.perf_counter() - started
        if elapsed > 1.0:
            log.info("publishing a %s message took %.1f s", message.WhichOneof("body"), elapsed)

    async def _sync_from_peers(self) -> bool:
        before = set(self.applied_order)
        if not await super()._sync_from_peers():
            return False
        assert self._snapshot is not None
        header = self._snapshot[0]
        self.master = to_fixed(flatten_parameters(self.model))
        self.outer_sequence.reset(self.outer_state)  # the snapshot's state, adopted with its model
        self.sched.version = self.model_version
        self.round = self.model_version
        included = {bytes(g) for g in header.applied_groups}
        self.applied_order.clear()
        for group_id in header.applied_groups:
            self._mark_external(bytes(group_id))
        # Groups we applied that the snapshot does not list are not in the adopted model: apply
        # them again (the peers that made the snapshot will apply them too).
        for group_id in before - included:
            outcome = self.outcomes.get(group_id)
            if outcome is not None:
                outcome.applied, outcome.step, outcome.external, outcome.outer_key = None, None, False, None
        self._snapshot_version = self.model_version
        self._poke()
        return True

    def summary(self) -> dict[str, Any]:
        """Figures for benchmarks and tests."""
        return {"aggregations": self._aggregations, "closed_groups": list(self.closed_groups)}


def _lower_priority() -> None:
    """Raise this thread's nice value (Linux applies nice per thread); best effort elsewhere."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAIN_NICENESS)
