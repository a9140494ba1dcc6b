"""Federated training over the mesh: synchronous k-of-n rounds, robust aggregation, state sync.

One `FederationRunner` per daemon and federation. It wires the pure parts together:

    trainer (local SGD) -> compressor (encode, error feedback) -> mesh (gossip header, serve payload)
    mesh events -> ControlValidator -> UpdateBook (fetch, decode, check) -> SyncRound (when to close)
    -> aggregator (robust rule over decoded updates, canonical peer order) -> model

Every round: train from the current model, announce the update (small payloads ride inline in
the signed header, larger ones are pulled by sha256 from the sender or anyone who fetched it),
wait until `SyncRound` says the round may close, aggregate what arrived in peer-id order with
a seed derived from (federation, round), apply, evaluate, checkpoint. Late joiners and
restarted nodes adopt the newest snapshot that most peers offer, fetched by hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from fednode.aggregators import AggregationError, AggregationResult, Aggregator, PreconditionError
from fednode.node import __version__
from fednode.node.compression import (
    DecodeLimits,
    PayloadError,
    UpdateCompressor,
    decode,
    derive_seed,
    is_finite,
)
from fednode.node.envelope import Rejected, RejectReason, reason_name, seal
from fednode.node.errors import NetworkError
from fednode.node.federation.attacker import WAIT_SHARE, Attacker
from fednode.node.federation.butterfly import (
    ButterflyConfig,
    ButterflyExchange,
    ButterflyFailed,
    OwnerBehaviour,
)
from fednode.node.federation.outer import (
    OuterConfig,
    OuterStateError,
    apply_outer,
    initial_state,
    state_from_dict,
    state_is_finite,
    state_to_dict,
)
from fednode.node.federation.protocol import (
    MAX_INLINE_PAYLOAD,
    ControlValidator,
    ValidControl,
    dht_key_for,
    now_ms,
    round_seed,
    topic_for,
)
from fednode.node.federation.revocation_record import REPUBLISH_INTERVAL_S, RevocationRecord
from fednode.node.federation.updates import (
    PeerContribution,
    ReceivedUpdate,
    UpdateBook,
    model_state_payload,
    read_model_state,
)
from fednode.node.identity import Identity
from fednode.node.mesh.port import MeshPort
from fednode.node.mesh.types import GossipMessage, PeerConnected, PeerDisconnected
from fednode.node.model import assign_parameters, flatten_parameters
from fednode.node.scheduler import SyncPolicy, SyncRound, adoptable_snapshot, byzantine_budget, outvoted_round
from fednode.node.trainer import LocalTrainer, TrainResult
from fednode.proto.v1 import control_pb2, model_pb2, tensor_pb2

log = logging.getLogger("fednode.federation")

TASK_STOP_SECONDS = 5.0  # background tasks get this long to finish once cancelled at close


async def _cancel_and_wait(tasks: set[asyncio.Task[Any]], timeout: float) -> None:
    """Cancel `tasks` and wait until they are done, cancelling again while any is left.

    Once is not enough: asyncio.wait_for (Python 3.11) returns the inner result when the
    cancellation lands just as the awaited thing completes, so a loop built on it (the steward's
    `wait_for(wakeup.wait(), ...)`, woken by the very manifest a leaving leader publishes) can
    swallow a single cancel() and run on. Bounded; tasks still running are logged.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.2, max(0.0, deadline - loop.time())))
    if pending:
        log.warning("%d background task(s) did not stop within %.0f s: %s", len(pending), timeout,
                    ", ".join(sorted(task.get_name() for task in pending)))


# The paths an envelope reached us by (see _seen_envelopes).
_VIA_GOSSIP = 1
_VIA_PUSH = 2
_VIA_BOTH = _VIA_GOSSIP | _VIA_PUSH
MAX_PUSH_PEERS = 32  # control messages are pushed to at most this many members (gossip reaches all)
# Bodies always gossiped, even when every member got the push: they are how members we have not
# heard from yet (newcomers, peers behind relays) learn of us, and how leaving and revocations
# reach everyone.
ALWAYS_GOSSIPED = frozenset({"announcement", "departure", "revocation"})

#: The initial sync ends early only once no new member has announced for this long.
ROSTER_SETTLE = 1.0
#: Least gap between two of our announcements (an answer to a new member comes after it).
ANSWER_FLOOR = 0.25
#: Known revocations are re-gossiped every this many announcements (about 20 s by default).
REVOCATION_REPEAT_EVERY = 10
# A snapshot whose fetch failed (no provider had it, wrong hash, bad content) is set aside for
# 2 s, twice as long after each further failure, up to 60 s: a provider that was busy is asked
# again soon, one that never serves it stops drawing the node away from its own rounds.
SNAPSHOT_RETRY_FIRST_S = 2.0
SNAPSHOT_RETRY_MAX_S = 60.0
MAX_OFFERS_PER_PROVIDER = 8  # bounds what one member's offers (claiming any rounds) can hold
# A provider a snapshot fetch could not reach is asked last for this long: a member just
# restarted, or overloaded, can take the whole I/O timeout per attempt to fail.
UNREACHABLE_PROVIDER_S = 30.0
# A round that cannot close for want of valid updates says why at once, then every this often.
SHORT_ROUND_REPORT_S = 30.0
# A member that comes back (silent for this many announcement intervals, or announcing an older
# round than before: it restarted) is expected again once it offers a round at most this far
# behind ours: it then has caught up by state sync and can contribute (SyncRound.rejoin).
RETURN_SILENCE_INTERVALS = 3.0
REJOIN_WINDOW = 16


@dataclass
class MemberView:
    """What this node knows about another member from its announcements."""

    peer_id: str
    round: int = 0
    model_version: int = 0
    multiaddrs: tuple[str, ...] = ()
    last_seen: float = 0.0  # time.time()
    announced_at: float = 0.0  # time.time() of its last announcement (0: none yet)
    display_name: str = ""
    public_key: bytes = b""  # the key its envelopes are signed with (for revocations)
    newest_sent_ms: int = 0  # sent_unix_ms of the newest message admitted from it
    departed_ms: int = 0  # sent_unix_ms of its departure, while it has not come back (0: none)
    announced_round: int = 0  # the round of its last announcement (round: the newest ever)
    returning: bool = False  # it came back (restart, long silence) and is not expected again yet

    def admit(self, body: str, sent_unix_ms: int) -> bool:
        """Order this member's messages around its departure, by its own clock: a message may
        arrive twice, by push and by gossip, and the copies of two messages in either order.

        False for a message it sent before the departure we already have (a late gossip copy
        of its last update or announcement must not bring it back: the others would wait for
        it for good), and for a departure older than a message we already have (it came back
        since). A newer message after a departure means it is back. Revocations are always
        admitted: whoever relays them, they stand on their own signature."""
        if body == "revocation":
            return True
        if body == "departure":
            if sent_unix_ms < self.newest_sent_ms:
                return False
            self.departed_ms = sent_unix_ms
        elif self.departed_ms and sent_unix_ms <= self.departed_ms:
            return False
        else:
            self.departed_ms = 0
        self.newest_sent_ms = max(self.newest_sent_ms, sent_unix_ms)
        return True


@dataclass
class SnapshotOffer:
    header: model_pb2.SnapshotHeader
    providers: set[str] = field(default_factory=set)


@dataclass
class RoundOutcome:
    round: int
    model_version: int
    participants: list[str]
    selected: list[str]
    rejected_by_aggregator: list[str]
    train: TrainResult
    aggregation_seconds: float
    round_seconds: float
    close_reason: str


T = TypeVar("T")


class StoppingError(Exception):
    """A wait on peers was given up because the node is stopping."""


class IsolatedError(NetworkError):
    """No member of the federation has been heard from for too long: the node stops (exit 7)
    instead of waiting forever for a round that cannot close."""

    stop_reason = "isolated"


class FederationRunner:
    """Runs rounds with the federation until `stop` is set; see the module docstring."""

    def __init__(
        self,
        *,
        federation_id: str,
        identity: Identity,
        mesh: MeshPort,  # the daemon's Mesh, the worker's RemoteMesh, or an InMemoryMesh
        model: torch.nn.Module,
        trainer: LocalTrainer,
        layout: model_pb2.ModelLayout,
        aggregator: Aggregator,
        compressor: UpdateCompressor,
        local_steps: int,
        policy: SyncPolicy,
        announce_interval: float,
        max_clock_skew: float,
        stop: Any,  # threading.Event shared with the trainer
        push: bool = True,
        attack: Attacker | None = None,
        on_round: Callable[[RoundOutcome], Awaitable[None]] | None = None,
        display_name: str = "",
        trust: Any = None,
        certificate: Any = None,
        on_event: Callable[..., None] | None = None,
        alone_timeout: float = 0.0,
        on_synced: Callable[[], None] | None = None,
        outer: OuterConfig | None = None,
        butterfly: ButterflyConfig | None = None,
        owner_behaviour: OwnerBehaviour | None = None,
    ) -> None:
        self.federation_id = federation_id
        self.identity = identity
        self.peer_id = identity.peer_id
        self.mesh = mesh
        self.model = model
        self.trainer = trainer
        self.layout = layout
        self.aggregator = aggregator
        self.compressor = compressor
        self.local_steps = local_steps
        self.announce_interval = announce_interval
        self.push = push
        self.stop = stop
        self.attack = attack.for_rule(aggregator) if attack is not None else None
        self.on_round = on_round
        # Awaited after every state sync that moved the model (the worker evaluates and reports it:
        # a synced model can reach the federation's budget without a round of this node's own).
        self.on_sync: Callable[[], Awaitable[None]] | None = None
        self.display_name = display_name
        # Stop (IsolatedError) after this long without hearing any member, once this node has
        # heard members in this session; 0 = never. A member resumed from a checkpoint that hears
        # nobody waits for them: members restart in any order.
        self.alone_timeout = alone_timeout
        self.on_synced = on_synced  # after a state sync adopted a model (the worker checkpoints it)
        self._had_members = False
        self._last_contact = 0.0  # loop time of the last message from another member
        self.topic = topic_for(federation_id)
        # How the model moves by a round's aggregate (fednode.node.federation.outer); its state is
        # replicated: every member applies the same step and holds the same state.
        self.outer = outer or OuterConfig()
        self.outer_state = initial_state(self.outer, layout.numel)
        self.validator = ControlValidator(federation_id, max_clock_skew, layout.digest, trust, self.outer.digest())
        self.certificate = certificate  # attached to every message of a certified federation
        # on_event(kind, **fields): daemon-side sink for admin events, the audit log and metrics
        self.on_event = on_event or (lambda kind, **fields: None)
        policy_of_trust = self.validator.policy
        self.revocation_record = None if policy_of_trust is None else RevocationRecord(
            mesh, federation_id,
            known=lambda: policy_of_trust.revocations(federation_id),
            learn=lambda revocation: self.on_event("revocation", revocation=revocation, peer_id=""),
        )
        self.rounds = SyncRound(self.peer_id, policy)
        self.book = UpdateBook()
        # federation.exchange = "butterfly": updates travel as parts to their owners
        # (fednode.node.federation.butterfly); None = all-to-all. Headers of a round's updates
        # (the round's roster) are kept here instead of fetched payloads.
        self.butterfly = None if butterfly is None else ButterflyExchange(
            peer_id=self.peer_id, federation_id=federation_id, numel=layout.numel, config=butterfly,
            transport=_ButterflyLink(self), on_event=self.on_event, behaviour=owner_behaviour,
        )
        self._part_headers: dict[int, dict[str, model_pb2.UpdateHeader]] = {}
        self.limits = DecodeLimits(max_numel=layout.numel)
        self.max_payload_bytes = 8 * layout.numel + 4096  # fp32 + headroom; larger is refused unread
        self.max_snapshot_bytes = self.max_payload_bytes + self.outer.state_bytes(layout.numel)
        self.round = 0
        self.model_version = 0
        self.aggregator_center: torch.Tensor | None = None
        self.members: dict[str, MemberView] = {}
        self.contributions: dict[str, PeerContribution] = {}
        self.offers: dict[bytes, SnapshotOffer] = {}
        # A snapshot is adopted only when f + 1 members offer it (f = aggregation.f, the Byzantine
        # members tolerated): see adoptable_snapshot. Failed fetches: digest -> (loop time it may
        # be offered again, how long it was set aside).
        self.snapshot_quorum = aggregator.f + 1
        self._unavailable_snapshots: dict[bytes, tuple[float, float]] = {}
        # The newest round a quorum of members offered a snapshot for whose fetch then failed:
        # they completed it, so this node must not close it with fewer updates of its own.
        self._completed_elsewhere = 0
        # Since when (loop time) this node, at its round, waits for that round's model.
        self._awaiting_since: float | None = None
        self._awaiting = (0, 0)
        self._unreachable_providers: dict[str, float] = {}  # peer -> loop time it is tried first again
        self._quorum_noted_at = float("-inf")
        self.rejections: Counter[str] = Counter()
        # Envelopes already processed: digest -> (the paths they came by, _VIA_*; their signer).
        # A sender never emits the same envelope twice (every message carries a fresh timestamp),
        # so the same bytes again are either expected (the other path's copy of a message its
        # signer pushed and gossiped, or GossipSub delivering the signer's publication twice) or
        # a replay: the bytes re-published by another gossip identity (see _on_gossip).
        self._seen_envelopes: dict[bytes, tuple[int, str]] = {}
        self.direct_deliveries = 0  # messages that reached us by push before their gossip copy
        self.push_only_messages = 0  # our messages every recent member got by push: not gossiped
        self.closing = False  # set by close(): from then on every message is sent before returning
        self.syncs = 0
        self._snapshot: tuple[model_pb2.SnapshotHeader, bytes | bytearray] | None = None
        self._own_hashes: dict[int, bytes] = {}  # round -> sha256 of our model after it (recent)
        self._served: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._announce_now = asyncio.Event()  # set when a member we had not heard from appears
        self._newcomer_at = 0.0  # loop time of the first announcement of the newest member
        # Our update for the round we last trained, kept while that round is open: after a failed
        # sync the round is run again and must go on with the same update (a second, different
        # one for the same round is equivocation to the others, and to our own book).
        self._published: tuple[int, ReceivedUpdate, TrainResult] | None = None
        self._previous_header: model_pb2.UpdateHeader | None = None  # our update for the round before
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_train_seconds = 1.0
        self._connected: set[str] = set()
        # Timing samples (seconds) for benchmarks and the summary: header delivery over gossip
        # (receive time minus the sender's timestamp; same-host clocks in local runs) and payload
        # fetch durations.
        self.timings: dict[str, deque[float]] = {"gossip_delivery": deque(maxlen=1000), "fetch": deque(maxlen=1000)}

    # ------------------------------------------------------------------------------ start / stop
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_contact = loop.time()

        def refused_in_network_thread(rejected: Rejected) -> None:
            sender = getattr(rejected, "sender", None)
            if sender is not None:  # anonymous garbage is counted by the mesh; signed refusals are audited
                # The mesh counts validator refusals itself (summary merges both): count=False.
                loop.call_soon_threadsafe(
                    functools.partial(self._reject, sender, rejected, getattr(rejected, "header", None), count=False)
                )

        self.validator.on_reject = refused_in_network_thread
        if self.revocation_record is not None:
            # Before subscribing: a member revoked while this node was offline must not get a
            # message accepted in the seconds before gossip repeats the revocation.
            await self._sync_revocation_record(store=False)
            self._spawn(self._keep_revocation_record(), "revocation-record")
        await self.mesh.subscribe(self.topic, self.validator.check)
        if self.round > 0 and self._snapshot is None:
            # Resumed from a checkpoint: offer that model at once. A member restarted ahead of
            # the others must not wait for a round of its own (which needs them) before they
            # can catch up with it.
            self._refresh_snapshot()
        self._spawn(self._pump_events(), "mesh-events")
        self._spawn(self._announce_periodically(), "announcer")
        self._spawn(self._discover_members(), "discovery")

    async def linger(self, max_seconds: float) -> None:
        """Before leaving, keep serving our last payloads until the members we know have closed
        our last round too (they may still be fetching from us) or left: while one of them is
        still heard from, up to `max_seconds` (federation.linger), else a few announcements."""
        loop = asyncio.get_running_loop()
        window = 2 * self.announce_interval + 1.0
        deadline = loop.time() + max_seconds
        quiet_deadline = loop.time() + min(window, max_seconds)
        # Members of our rounds, and members heard from lately that our rounds closed without (a
        # straggler the deadlines left out): it catches up by fetching our snapshot, so we stay.
        heard = {p for p, m in self.members.items() if time.time() - m.last_seen < window}
        recent = (self.rounds.expected() | heard) - {self.peer_id}
        while loop.time() < deadline:
            # A member that departed meanwhile (one that synced to the end left) is not waited for.
            behind = [p for p in recent
                      if not self.rounds.departed(p) and self.members.get(p, MemberView(p)).round < self.round]
            if not behind:
                return
            live = [p for p in behind if time.time() - self.members.get(p, MemberView(p)).last_seen < window]
            if not live and loop.time() >= quiet_deadline:
                return
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=0.2)

    async def serve_final(self, until: asyncio.Event) -> None:
        """The federation's budget is reached: train and send no more updates, but keep
        announcing our round and offering our model (members behind state-sync to it) until
        `until` is set."""
        if self._snapshot is None or self._snapshot[0].round != self.round:
            self._refresh_snapshot()
        with contextlib.suppress(Exception):
            await self._offer_snapshot()
        await until.wait()

    async def close(self) -> None:
        self.closing = True  # what we still send is awaited: background tasks are cancelled next
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._publish(control_pb2.ControlMessage(
                departure=control_pb2.Departure(peer_id=self.peer_id, reason="shutting down")), wait=True), timeout=2)
        await _cancel_and_wait(self._tasks, timeout=TASK_STOP_SECONDS)

    def _spawn(self, coroutine: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------------------------ state
    def restore(self, round_number: int, model_version: int, extra: dict[str, Any]) -> None:
        self.round = round_number
        self.model_version = model_version
        state = extra.get("compressor")
        if isinstance(state, dict):
            try:
                self.compressor.load_state_dict(state)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("compressor state in the checkpoint is unusable (%s); starting without residual", exc)
        center = extra.get("aggregator_center")
        if isinstance(center, torch.Tensor) and center.numel() == self.layout.numel:
            self.aggregator_center = center
        self._restore_outer(extra.get("outer_state"))

    def _restore_outer(self, saved: Any) -> None:
        if not self.outer.stateful:
            return
        if saved is None:
            if self.model_version:
                log.warning("the checkpoint holds no %s state; it starts from zero (this node then differs from "
                            "the federation until it adopts a snapshot)", self.outer.describe())
            return
        try:
            self.outer_state = state_from_dict(self.outer, saved, self.layout.numel)
        except OuterStateError as exc:
            log.warning("outer optimizer state in the checkpoint is unusable (%s); starting from zero", exc)

    def checkpoint_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"compressor": self.compressor.state_dict(), "federation_id": self.federation_id}
        if self.aggregator_center is not None:
            extra["aggregator_center"] = self.aggregator_center.clone()
        if self.outer.stateful:
            extra["outer_state"] = state_to_dict(self.outer, self.outer_state)
        return extra

    # ------------------------------------------------------------------------------ main loop
    def wake(self) -> None:
        """Re-evaluate waits now (e.g. after a stop request)."""
        self._wakeup.set()

    async def run(self, should_stop: Callable[[], bool]) -> None:
        """Run rounds until `should_stop()` (checked between rounds) or the stop event."""
        await self._initial_sync()
        while not should_stop():
            if self._peers_completed(self.round + 1) or self._outvoted():
                if await self._sync_from_peers():
                    # Say where we are now: members lingering for us can leave once we caught up.
                    with contextlib.suppress(Exception):
                        await self._offer_snapshot()
                continue
            if self.round < self._completed_elsewhere:
                await self._await_snapshot()
                continue
            outcome = await self._run_round(self.round + 1)
            if outcome is None:
                continue
            # Offer the new model at once (not at the next announcement): members compare model
            # hashes per round, and a peer left with a minority model adopts the majority's.
            with contextlib.suppress(Exception):
                await self._offer_snapshot()
            if self.on_round is not None:
                await self.on_round(outcome)

    async def _run_round(self, number: int) -> RoundOutcome | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.rounds.start(number, started, self._last_train_seconds)
        for sender in self.book.senders(number) | set(self._part_headers.get(number, {})):
            # Arrived before we started (butterfly: its header did): count as on time.
            self.rounds.record(sender, started, number, revive=not self._left(sender))
        base = flatten_parameters(self.model)
        if self._published is not None and self._published[0] == number:
            # Back in a round we already contributed to (its peers seemed done, the sync failed,
            # and the model has not moved since): go on with the update we published.
            _, own, result = self._published
            log.info("round %d: still open here; waiting again with the update already published", number)
            with contextlib.suppress(Exception):
                await self._publish(control_pb2.ControlMessage(update=own.header))
        else:
            result = await asyncio.to_thread(self.trainer.train_round, self.model, self.local_steps, self.stop)
            if result.steps < self.local_steps:
                assign_parameters(self.model, base)
                return None
            self._last_train_seconds = result.seconds
            delta = flatten_parameters(self.model) - base
            assign_parameters(self.model, base)  # the model moves only by the aggregate
            if not is_finite(delta):
                # Local training diverged (e.g. the federation's model was poisoned). Contribute a
                # zero update so rounds keep closing; others would reject a non-finite one anyway.
                log.error("round %d: local training produced a non-finite update; sending a zero update", number)
                delta = torch.zeros_like(delta)

            if self.attack is not None and self.attack.kind == "update":
                delta = await self._craft_attack(number, delta)
            own = await self._publish_update(number, delta, result)
            if self._published is not None and self._published[0] == number - 1:
                self._previous_header = self._published[1].header
            self._published = (number, own, result)
        self.book.add(own)
        self.rounds.record(self.peer_id, loop.time(), number)

        close_reason = await self._wait_for_close(number, own.header)
        if close_reason is None:
            return None  # stopped, or peers moved on and we must sync
        return await self._aggregate(number, base, result, started, close_reason)

    async def _wait_for_close(self, number: int, own_header: model_pb2.UpdateHeader | None) -> str | None:
        loop = asyncio.get_running_loop()
        republish_at = loop.time() + self.announce_interval
        reported_short: tuple[str, float] | None = None  # (reason, loop time) of the last "cannot close"
        while not self.stop.is_set():
            decision = self.rounds.decide(loop.time())
            if decision.close:
                if decision.missing:
                    log.info("round %d closes without %s: %s", number, ", ".join(p[-8:] for p in decision.missing), decision.reason)
                elif self.rounds.refused:
                    log.info("round %d closes without the refused update(s) of %s", number,
                             ", ".join(p[-8:] for p in sorted(self.rounds.refused)))
                return decision.reason
            if self.butterfly is not None and self.butterfly.roster_proposed(number, self._butterfly_headers(number)):
                # Butterfly: the round leader's roster decides who is in; owners wait for our offers.
                log.info("round %d closes on its leader's roster proposal", number)
                return "roster proposed"
            if decision.short and (reported_short is None or reported_short[0] != decision.reason
                                   or loop.time() - reported_short[1] >= SHORT_ROUND_REPORT_S):
                reported_short = (decision.reason, loop.time())
                log.warning("round %d cannot close yet: %s; waiting for more members (missing: %s)", number,
                            decision.reason, ", ".join(p[-8:] for p in decision.missing) or "none",
                            extra={"event": "round_waiting", "round": number, "reason": decision.reason})
            if self._peers_completed(number):
                log.info("peers completed round %d already; syncing instead of waiting", number)
                return None
            if number <= self._completed_elsewhere:
                return None  # their snapshot is retried (run); closing it here would fork the model
            self._check_isolation(number)
            if own_header is not None and loop.time() >= republish_at:
                # Gossip has no replay: a peer that joined after we published never saw our
                # update, and a push can be lost under load. Re-announcing it while the round is
                # open costs one small message per interval (on gossip too); receivers drop
                # duplicates by (sender, round, hash). Our previous round's update goes too while
                # a member still works on that round: without it, a member that missed it could
                # wait for it for good (we moved on, and too few of us may offer that round's
                # model for it to adopt).
                republish_at = loop.time() + self.announce_interval
                with contextlib.suppress(Exception):
                    await self._publish(control_pb2.ControlMessage(update=own_header), gossip=True)
                    previous = self._previous_header
                    if previous is not None and previous.round == number - 1 and self._members_behind(previous.round):
                        await self._publish(control_pb2.ControlMessage(update=previous), gossip=True)
            self._wakeup.clear()
            timeout = max(0.0, min(decision.wait_until, republish_at) - loop.time())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
        return None

    async def _aggregate(
        self, number: int, base: torch.Tensor, train: TrainResult, started: float, close_reason: str
    ) -> RoundOutcome:
        loop = asyncio.get_running_loop()
        agg_started = time.perf_counter()
        outcome = await self._aggregate_by_parts(number) if self.butterfly is not None else None
        if outcome is not None:
            senders, result, hashes = outcome
        else:
            senders, result, hashes = await self._aggregate_all_to_all(number)
        aggregation_seconds = time.perf_counter() - agg_started
        selected: list[str] = []
        dropped: list[str] = []
        if result is not None:
            # The outer step on the robust aggregate (plain FedAvg: base + aggregate).
            new, outer_state = apply_outer(self.outer, self.outer_state, base, result.aggregate)
            if not is_finite(new) or not state_is_finite(outer_state):
                log.error("round %d: the aggregate would make the model non-finite; keeping the model unchanged", number)
                result = None
        if result is not None:
            assign_parameters(self.model, new)
            self.outer_state = outer_state
            if self.aggregator.uses_center:
                self.aggregator_center = result.aggregate.detach().clone()
            selected, dropped = self._credit_contributions(senders, result)
            if dropped:
                log.info("round %d: aggregator left out %s", number, ", ".join(p[-8:] for p in dropped))
            for index, sender in enumerate(senders):
                self.on_event(
                    "update_aggregated", peer_id=sender, round=number,
                    payload_sha256=hashes[sender], selected=sender in selected,
                    score=float(result.scores[index]) if result.scores is not None else None,
                    reason="" if sender in selected else "aggregator_outlier",
                )
        if self.attack is not None:
            self.attack.remember(self._honest_updates(number))
        self.round = number
        self.model_version += 1
        self.book.prune(number)
        if self.butterfly is not None:
            self.butterfly.finish(number)
            self._part_headers = {n: h for n, h in self._part_headers.items() if n > number}
        self._refresh_snapshot()
        self._wakeup.set()
        return RoundOutcome(
            round=number,
            model_version=self.model_version,
            participants=senders,
            selected=selected,
            rejected_by_aggregator=dropped,
            train=train,
            aggregation_seconds=aggregation_seconds,
            round_seconds=loop.time() - started,
            close_reason=close_reason,
        )

    async def _aggregate_all_to_all(self, number: int) -> tuple[list[str], AggregationResult | None, dict[str, bytes]]:
        """The rule over every update of the round (canonical order), each fetched whole."""
        updates = self.book.for_round(number)
        senders = sorted(updates)  # canonical order: every peer stacks rows identically
        hashes = {s: bytes(updates[s].header.payload_sha256) for s in senders}
        rows = torch.stack([updates[s].delta for s in senders])
        kwargs: dict[str, Any] = {"seed": round_seed(self.federation_id, number)}
        if self.aggregator.uses_center:
            kwargs["center"] = self.aggregator_center
        try:
            rule = self._rule_for(number, len(senders))
            try:
                result = await asyncio.to_thread(rule, rows, **kwargs)
            except PreconditionError as exc:
                if not exc.rejected:
                    raise
                # The rule itself dropped rows (absurd norms): their senders are faulty too.
                rule = self._rule_for(number, len(senders) - exc.rejected)
                result = await asyncio.to_thread(rule, rows, **kwargs)
        except AggregationError as exc:
            log.error("round %d: aggregation failed (%s); keeping the model unchanged", number, exc)
            result = None
        return senders, result, hashes

    async def _aggregate_by_parts(self, number: int) -> tuple[list[str], AggregationResult | None, dict[str, bytes]] | None:
        """The butterfly exchange of round `number` over the roster the members agree on from the
        headers (ButterflyExchange.agree_roster); None when it cannot complete (then the round is
        aggregated all-to-all, after fetching every update of the headers we closed on whole)."""
        assert self.butterfly is not None
        butterfly = self.butterfly

        def headers_now() -> dict[str, model_pb2.UpdateHeader]:
            # Headers still arriving count: the agreed roster may list one we had not yet got.
            return self._butterfly_headers(number)

        headers = headers_now()
        try:
            rule = self._rule_for(number, len(headers))
            outcome = await butterfly.aggregate(
                number, headers_now, rule, seed=round_seed(self.federation_id, number),
                center=self.aggregator_center if self.aggregator.uses_center else None,
                rule_for=lambda n: self._rule_for(number, n))
            return outcome.roster, outcome.result, outcome.payload_sha256
        except ButterflyFailed as exc:
            butterfly.fallbacks += 1
            log.warning("round %d: butterfly exchange did not complete (%s); aggregating all-to-all", number, exc,
                        extra={"event": "butterfly_fallback", "round": number})
        except AggregationError as exc:
            log.error("round %d: aggregation failed (%s); keeping the model unchanged", number, exc)
            return sorted(headers), None, {s: bytes(h.payload_sha256) for s, h in headers.items()}
        missing = [s for s in sorted(headers) if s != self.peer_id and s not in self.book.senders(number)]
        await asyncio.gather(*(self._obtain_update(s, headers[s]) for s in missing))
        return None

    def _butterfly_headers(self, number: int) -> dict[str, model_pb2.UpdateHeader]:
        """Round `number`'s headers held now (ours included), without excluded senders."""
        assert self.butterfly is not None
        excluded = self.butterfly.excluded
        held = {s: h for s, h in self._part_headers.get(number, {}).items() if s not in excluded}
        own = self._published[1].header if self._published is not None and self._published[0] == number else None
        if own is not None:
            held[self.peer_id] = own
        return held

    def _rule_for(self, number: int, valid: int) -> Aggregator:
        """The rule told to tolerate as many Byzantine rows as `valid` rows allow, at most f
        (byzantine_budget). The round closed only once the members found unusable made that
        enough (SyncRound.decide); it depends on the row count alone, so every peer aggregating
        the same updates uses the same f."""
        f = self.aggregator.f
        budget = byzantine_budget(valid, f, self._rows_needed)
        if budget is None or budget == f:
            return self.aggregator  # too few rows for any f: the rule's precondition error says so
        log.info("round %d: %d valid update(s), so the rule tolerates %d Byzantine member(s) instead of f = %d "
                 "(the others of the f were found unusable)", number, valid, budget, f)
        return self.aggregator.with_f(budget)

    def _rows_needed(self, byzantine: int) -> int:
        return self.aggregator.with_f(byzantine).minimum_rows()

    # ------------------------------------------------------------------------------ sending
    def _credit_contributions(self, senders: list[str], result: AggregationResult) -> tuple[list[str], list[str]]:
        """Record each sender's score and whether the rule used its row (rows are in `senders`
        order). Returns (selected, dropped): dropped = rejected as non-finite/absurd or left out."""
        selected: list[str] = []
        dropped: list[str] = []
        chosen = set(range(len(senders))) if result.selected is None else {int(i) for i in result.selected}
        rejected = {int(i) for i in (result.rejected or [])}
        for index, sender in enumerate(senders):
            contribution = self.contributions.setdefault(sender, PeerContribution())
            if result.scores is not None:
                contribution.last_score = float(result.scores[index])
            if index in rejected:
                contribution.reject("non_finite_or_absurd")
                dropped.append(sender)
            elif index in chosen:
                contribution.selected += 1
                selected.append(sender)
            else:
                dropped.append(sender)
        return selected, dropped

    async def _publish_update(
        self, number: int, delta: torch.Tensor, train: TrainResult, *, group_id: bytes = b"",
        base_model_version: int | None = None,
    ) -> ReceivedUpdate:
        """Encode, serve and announce our update (fedcompass passes its group and the version
        its training started from)."""
        seed = derive_seed(self.federation_id, self.peer_id, round_number=number)
        if is_finite(delta):
            payload = self.compressor.compress(delta, seed=seed, step=number)
            # Aggregate exactly what the others will decode, so every peer sums the same rows.
            decoded = decode(payload, limits=self.limits, expected_numel=self.layout.numel).reshape(-1)
        else:
            # Only a node configured with a NaN/Inf attack gets here: send the raw non-finite
            # vector (codecs refuse it) so receivers' rejection of non-finite updates is exercised.
            payload = raw_float32_payload(delta)
            decoded = delta
        data = payload.SerializeToString(deterministic=True)
        digest = hashlib.sha256(data).digest()
        header = model_pb2.UpdateHeader(
            federation_id=self.federation_id,
            sender_peer_id=self.peer_id,
            round=number,
            base_model_version=self.model_version if base_model_version is None else base_model_version,
            group_id=group_id,
            layout_digest=self.layout.digest,
            payload_sha256=digest,
            payload_size=len(data),
            codec=payload.codec,
            num_samples=train.num_samples,
            local_steps=train.steps,
            train_loss=train.mean_loss,
            created_unix_ms=now_ms(),
            seconds_per_step=train.seconds_per_step,
            outer_digest=self.validator.outer_digest,
        )
        if self.butterfly is not None and not group_id:
            # Parts go to their owners; the whole payload is only served (for a round that falls
            # back to all-to-all), never inlined: every member would receive it with the header.
            header.parts_root, header.parts = self.butterfly.publish(number, decoded)
            self._serve(digest, data)
        elif len(data) <= MAX_INLINE_PAYLOAD:
            header.inline_payload = data
        else:
            self._serve(digest, data)
        self.book.claim(self.peer_id, number, digest)
        await self._publish(control_pb2.ControlMessage(update=header))
        return ReceivedUpdate(self.peer_id, number, header, decoded, asyncio.get_running_loop().time())

    async def _publish(self, message: control_pb2.ControlMessage, *, wait: bool = False, gossip: bool = False) -> None:
        """Sign and send a control message: pushed to the members we are connected to and
        gossiped to everyone (but see below). Once pushed, the gossip copy is sent in the background (the members
        waiting on it have it; handing it to the networking thread took 15-100 ms of a round on a
        busy host); with `wait`, and while closing, both copies are sent before this returns. Size
        errors are raised either way.

        Round traffic (everything but ALWAYS_GOSSIPED) that reached every member we heard from
        recently by push is not gossiped at all: the gossip copy cost each member two or three
        more deliveries through py-libp2p (Noise, Yamux, GossipSub forwarding and IDONTWANTs), most
        of the networking thread's CPU in a 4-daemon federation. A push that did not reach every
        such member (no fast path, relayed, a failed send) is followed by the gossip copy."""
        message.federation_id = self.federation_id
        message.sent_unix_ms = now_ms()
        data = seal(self.identity, message, self.certificate)
        self._remember_envelope(hashlib.sha256(data).digest(), _VIA_BOTH, self.peer_id)  # ours coming back is a replay
        targets = self._push_targets() if self.push else []
        if targets:
            if wait or self.closing:
                # Both copies before returning. A spawned push could still be waiting to run when
                # close() cancels the background tasks, right after publishing the departure; a
                # member that then missed the gossip copy would wait for the departed one for good.
                await asyncio.gather(self._push(data, targets), self.mesh.publish(self.topic, data))
                return
            if len(data) > self.mesh.max_gossip_bytes:
                self._spawn(self._push(data, targets), "push")
            else:
                push_only = (not gossip and message.WhichOneof("body") not in ALWAYS_GOSSIPED
                             and set(targets) >= self._recent_members())
                self._spawn(self._push_then_gossip(data, targets, push_only), "push")
                return
        await self.mesh.publish(self.topic, data)

    def _recent_members(self) -> set[str]:
        """Members (not us) heard from within three announcement intervals."""
        horizon = time.time() - 3 * self.announce_interval
        return {p for p, m in self.members.items() if p != self.peer_id and m.last_seen >= horizon}

    async def _push_then_gossip(self, data: bytes, targets: list[str], push_only: bool) -> None:
        """Push to `targets`, then gossip unless `push_only` and every target got the push."""
        delivered = await self._push(data, targets)
        if push_only and set(delivered) >= set(targets):
            self.push_only_messages += 1
            return
        await self._gossip(data)

    async def _gossip(self, data: bytes) -> None:
        try:
            await self.mesh.publish(self.topic, data)
        except Exception as exc:  # the pushed copies are out; the next announcement repeats state
            log.warning("gossip publish failed: %s", exc)

    def _push_targets(self) -> list[str]:
        """Members to push our control messages to: those we hear from, hold a connection to (the
        mesh skips relayed ones) and know no revocation of, in canonical order, at most
        MAX_PUSH_PEERS. Gossip reaches everyone else (see _publish)."""
        policy = self.validator.policy
        members = sorted(
            p for p, m in self.members.items()
            if p != self.peer_id and p in self._connected
            and not (policy is not None and m.public_key
                     and policy.is_revoked(self.federation_id, member_public_key=m.public_key))
        )
        return members[:MAX_PUSH_PEERS]

    async def _push(self, data: bytes, targets: list[str]) -> list[str]:
        """The targets the push was handed to (none if it failed)."""
        try:
            return await self.mesh.push(self.topic, data, targets)
        except Exception as exc:  # the gossip copy follows
            log.debug("push failed: %s", exc)
            return []

    def _reject_foreign_push(self, pusher: str, body: str, signer: str) -> None:
        """Members push only their own messages. The pusher is authenticated by the fast path, so
        this is held against it; the signer's genuine copy is unaffected."""
        self._reject(pusher, Rejected(RejectReason.REJECT_SENDER_MISMATCH,
                                      f"{pusher[-8:]} pushed a {body} of {signer[-8:]}"))

    def _remember_envelope(self, digest: bytes, paths: int, signer: str) -> None:
        self._seen_envelopes[digest] = (paths, signer)
        if len(self._seen_envelopes) > 20_000:
            for old in list(self._seen_envelopes)[:10_000]:
                del self._seen_envelopes[old]

    async def publish_revocation(self, revocation: Any) -> None:
        """Spread a revocation on the federation topic (receivers verify it themselves) and in the
        federation's DHT record (for members offline now)."""
        await self._publish(control_pb2.ControlMessage(revocation=revocation))
        if self.revocation_record is not None:
            self._spawn(self._sync_revocation_record(), "revocation-record-update")

    async def _sync_revocation_record(self, *, store: bool = True, republish: bool = False) -> None:
        assert self.revocation_record is not None
        try:
            await self.revocation_record.sync(store=store, republish=republish)
        except Exception as exc:  # networking trouble: the next sync (or gossip) covers it
            log.warning("revocation record not synchronised (%s); retrying in %.0f s", exc, REPUBLISH_INTERVAL_S,
                        extra={"event": "revocation_record_failed"})

    async def _keep_revocation_record(self) -> None:
        await self._sync_revocation_record()  # store what the record lacks (read at start)
        while True:
            await asyncio.sleep(REPUBLISH_INTERVAL_S)
            await self._sync_revocation_record(republish=True)

    def _serve(self, digest: bytes, data: bytes | bytearray) -> None:
        self.mesh.serve_blob(digest, data)
        self._served.append(digest)
        # Keep the last few payloads and snapshots available to late fetchers; drop the rest.
        while len(self._served) > 64:
            self.mesh.unserve_blob(self._served.popleft())

    def _refresh_snapshot(self) -> None:
        data = model_state_payload(flatten_parameters(self.model), self.outer, self.outer_state)
        digest = hashlib.sha256(data).digest()
        header = model_pb2.SnapshotHeader(
            federation_id=self.federation_id,
            model_version=self.model_version,
            round=self.round,
            layout_digest=self.layout.digest,
            payload_sha256=digest,
            payload_size=len(data),
            created_unix_ms=now_ms(),
            outer_digest=self.validator.outer_digest,
        )
        self._serve(digest, data)
        self._snapshot = (header, data)
        self._own_hashes[self.round] = digest
        for number in [n for n in self._own_hashes if n < self.round - 8]:
            del self._own_hashes[number]

    async def _announce_periodically(self) -> None:
        beat = 0
        while True:
            await self._announce()
            if beat % REVOCATION_REPEAT_EVERY == 0 and self.validator.policy is not None:
                # Anti-entropy: peers that were offline when a revocation was first gossiped learn
                # it from the next repetition (receivers drop the ones they know).
                with contextlib.suppress(Exception):
                    for revocation in self.validator.policy.revocations(self.federation_id):
                        await self._publish(control_pb2.ControlMessage(revocation=revocation))
            beat += 1
            # Sleep one interval, or less when a new member appeared: it learns of us (and of our
            # round) from this answer instead of waiting up to an interval. The floor bounds the
            # rate whatever joins.
            await asyncio.sleep(ANSWER_FLOOR)
            self._announce_now.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._announce_now.wait(), timeout=max(0.0, self.announce_interval - ANSWER_FLOOR))

    async def _offer_snapshot(self, *, gossip: bool = False) -> None:
        """Offer our model; `gossip`: also on gossip even when every member got the push (the
        periodic offer with each announcement: a member whose pushes get lost under load would
        otherwise never learn that the others completed a round, and wait for them for good)."""
        if self._snapshot is not None:
            await self._publish(control_pb2.ControlMessage(snapshot=control_pb2.SnapshotOffer(header=self._snapshot[0])),
                                gossip=gossip)

    async def _announce(self) -> None:
        announcement = control_pb2.PeerAnnouncement(
            peer_id=self.peer_id,
            multiaddrs=self.mesh.listen_multiaddrs(),
            model_version=self.model_version,
            round=self.round,
            reachability=self.mesh.reachability().status,
            capabilities=["snapshot"],
            display_name=self.display_name,
            software_version=__version__,
        )
        try:
            await self._publish(control_pb2.ControlMessage(announcement=announcement))
            await self._offer_snapshot(gossip=True)
        except Exception as exc:  # a failed announcement is retried at the next interval
            log.debug("announcement failed: %s", exc)

    # ------------------------------------------------------------------------------ receiving
    async def _pump_events(self) -> None:
        while True:
            event = await self.mesh.events.get()
            if isinstance(event, GossipMessage):
                if event.topic == self.topic:
                    self._on_gossip(event.data, event.from_peer, direct=event.direct,
                                    signature_verified=event.signature_verified)
            elif isinstance(event, PeerConnected):
                self._connected.add(event.peer_id)
            elif isinstance(event, PeerDisconnected):
                self._connected.discard(event.peer_id)

    def note_refusal(self, sender: str, rejected: Rejected, header: model_pb2.UpdateHeader | None) -> None:
        """A signed message the mesh's topic validator refused (it counted it already): reputation,
        event and audit, as for refusals found here. For validators running in another process."""
        self._reject(sender, rejected, header, count=False)

    def _reject(
        self, sender: str | None, rejected: Rejected, header: model_pb2.UpdateHeader | None = None, *, count: bool = True
    ) -> None:
        """Record a refusal: counters (unless the mesh already counted it), reputation, event, audit."""
        name = reason_name(rejected.reason)
        if count:
            self.rejections[name] += 1
        if sender:
            self.contributions.setdefault(sender, PeerContribution()).reject(name)
        log.info("rejected message from %s: %s", (sender or "?")[-8:], rejected, extra={"reject_reason": name})
        self.on_event("update_rejected", peer_id=sender or "", reason=name, detail=rejected.detail,
                      payload_sha256=bytes(header.payload_sha256) if header is not None else b"",
                      round=header.round if header is not None else 0)

    def _on_gossip(self, data: bytes, from_peer: str, *, direct: bool = False, signature_verified: bool = False) -> None:
        path = _VIA_PUSH if direct else _VIA_GOSSIP
        digest = hashlib.sha256(data).digest()
        seen = self._seen_envelopes.get(digest)
        if seen is not None and not seen[0] & path:
            # The other path's copy of a message already handled: expected, unless it was pushed by
            # someone other than its signer (checked against the signer we recorded).
            if not (direct and from_peer != seen[1]):
                self._seen_envelopes[digest] = (seen[0] | path, seen[1])
                return
            self._reject_foreign_push(from_peer, "message", seen[1])
            return
        try:
            valid = self.validator.open(data, digest, signature_verified=signature_verified)
        except Rejected as rejected:
            self._reject(None, rejected)
            return
        if direct and from_peer != valid.sender:
            self._reject_foreign_push(from_peer, valid.body, valid.sender)
            return
        if seen is not None:
            if from_peer == valid.sender:
                # The signer's own publication delivered twice by the same path: py-libp2p's
                # GossipSub marks a message seen only after validating it, so two copies in flight
                # from different neighbours can both get through. Not a replay.
                return
            # Someone else re-published the signer's bytes. Not held against the signer: whoever
            # re-published them is only known by its gossip identity.
            self._reject(None, Rejected(RejectReason.REJECT_REPLAY, f"replayed {valid.body} message of {valid.sender[-8:]}"))
            return
        self._remember_envelope(digest, path, valid.sender)
        if direct:
            self.direct_deliveries += 1
        if valid.sender == self.peer_id:
            return
        body = valid.body
        message = valid.message
        member = self.members.setdefault(valid.sender, MemberView(valid.sender))
        departed_before = member.departed_ms != 0
        if not member.admit(body, message.sent_unix_ms):
            return
        now_unix = time.time()
        self._had_members = True
        self._last_contact = asyncio.get_running_loop().time()
        if member.last_seen and (departed_before or now_unix - member.last_seen
                                 > RETURN_SILENCE_INTERVALS * self.announce_interval):
            member.returning = True  # back after leaving or a long silence (a restart)
        member.last_seen = now_unix
        member.public_key = valid.opened.sender_public_key
        if body == "announcement":
            announcement = message.announcement
            if member.announced_at == 0.0:
                self._announce_now.set()  # the first we hear of this member: answer with our state
                self._newcomer_at = asyncio.get_running_loop().time()
            member.announced_at = member.last_seen
            if announcement.round < member.announced_round:
                member.returning = True  # announcing an older round than before: it restarted
            member.announced_round = announcement.round
            member.round = max(member.round, announcement.round)
            self._maybe_rejoin(member, announcement.round)
            member.model_version = announcement.model_version
            member.multiaddrs = tuple(announcement.multiaddrs)
            member.display_name = announcement.display_name
            self.rounds.note_member(valid.sender, asyncio.get_running_loop().time())
            self._wakeup.set()
        elif body == "update":
            self._on_update_header(valid)
        elif body == "snapshot":
            self._on_snapshot_offer(valid)
        elif body == "departure":
            self.rounds.depart(valid.sender)
            self._wakeup.set()
            self.on_event("leave", peer_id=valid.sender, detail=message.departure.reason)
        elif body == "revocation":
            self.on_event("revocation", revocation=message.revocation, peer_id=valid.sender)
        elif body == "butterfly" and self.butterfly is not None:
            self.butterfly.on_message(valid.sender, message.butterfly, data)
            self._wakeup.set()
        self._on_control(valid)

    def _check_isolation(self, number: int) -> None:
        """Raise IsolatedError when this node, which trained with the federation before, has
        heard no member for alone_timeout (sooner when every member it knew has left): nobody
        is left to close round `number` with, and waiting forever helps no one."""
        if not self._had_members or not self.alone_timeout:
            return
        silent = asyncio.get_running_loop().time() - self._last_contact
        others = [p for p in self.rounds.roster() if p != self.peer_id]
        everyone_left = bool(others) and all(self.rounds.departed(p) for p in others)
        if silent < (min(self.alone_timeout, 2 * self.announce_interval + 1.0) if everyone_left else self.alone_timeout):
            return
        why = (f"every member it trained with has left the federation ({len(others)})" if everyone_left
               else f"no member of the federation has been heard from for {silent:.0f} s")
        raise IsolatedError(
            f"{why}; stopping at round {self.round} (round {number} cannot close alone). Start it again when "
            f"members are online, or check mesh.bootstrap (federation.alone_timeout = {self.alone_timeout:.0f} s)")

    def _members_behind(self, number: int) -> bool:
        """A member heard from lately (not departed) has not closed round `number` yet."""
        recent = self._recent_members()
        return any(m.round < number and not self.rounds.departed(p) for p, m in self.members.items() if p in recent)

    def _maybe_rejoin(self, member: MemberView, its_round: int) -> None:
        """A member that came back and has caught up (its round at most REJOIN_WINDOW behind
        ours) is expected again, so our rounds wait for it once (see SyncRound.rejoin). Members
        that never left (a straggler always behind) are not: waiting for them would cost every
        round its deadline."""
        if not member.returning or its_round < self.round - REJOIN_WINDOW:
            return
        member.returning = False
        if self.rounds.rejoin(member.peer_id, asyncio.get_running_loop().time()):
            log.info("member %s is back at round %d; rounds wait for it again", member.peer_id[-8:], its_round,
                     extra={"event": "member_rejoined", "peer_id": member.peer_id, "round": its_round})
            self._wakeup.set()

    def _refused(self, sender: str, number: int) -> None:
        """The sender's update for round `number` was refused: the round need not wait for it."""
        self.rounds.refuse(sender, number)
        self._wakeup.set()

    def _left(self, peer_id: str) -> bool:
        """The member's departure is the newest message we have from it."""
        member = self.members.get(peer_id)
        return member is not None and member.departed_ms != 0

    def _on_control(self, valid: ValidControl) -> None:
        """Every valid control message from another peer, after the handling above: a hook for
        schedules that need more (`CompassRunner`: schedule, group, manifest, departure)."""

    def _on_snapshot_offer(self, valid: ValidControl) -> None:
        header = valid.message.snapshot.header
        if header.layout_digest != self.layout.digest or len(header.payload_sha256) != 32:
            return
        if header.outer_digest != self.validator.outer_digest:
            return  # a model moved by other outer steps (and a state we could not use)
        if header.payload_size > self.max_snapshot_bytes:
            return
        digest = bytes(header.payload_sha256)
        now = asyncio.get_running_loop().time()
        if self._unavailable_snapshots.get(digest, (now, 0.0))[0] > now:
            return  # its fetch failed lately
        member = self.members[valid.sender]
        member.round = max(member.round, header.round)
        self._maybe_rejoin(member, header.round)
        offer = self.offers.setdefault(digest, SnapshotOffer(header))
        offer.providers.add(valid.sender)
        self._prune_offers(valid.sender)
        if header.round > self.round + 1 and len(offer.providers) < self.snapshot_quorum and now - self._quorum_noted_at > 30.0:
            self._quorum_noted_at = now
            log.info("a snapshot for round %d is offered by %d member(s); adopting one takes %d (aggregation.f + 1), "
                     "so it waits for more members to offer the same model", header.round, len(offer.providers),
                     self.snapshot_quorum)

    def _prune_offers(self, provider: str) -> None:
        """Keep offers for the last rounds before the newest adoptable one, and at most
        MAX_OFFERS_PER_PROVIDER per member (its newest): one member's offers, whatever rounds
        they claim, can neither push the others' out nor grow without bound."""
        mine = sorted((o for o in self.offers.values() if provider in o.providers), key=lambda o: o.header.round)
        for offer in mine[:-MAX_OFFERS_PER_PROVIDER]:
            offer.providers.discard(provider)
        best = self._best_offer()
        horizon = best.header.round - 4 if best is not None else None
        for digest in [d for d, o in self.offers.items()
                       if not o.providers or (horizon is not None and o.header.round < horizon)]:
            del self.offers[digest]

    def _on_update_header(self, valid: ValidControl) -> None:
        header = valid.message.update
        sender = valid.sender
        if header.payload_size > self.max_payload_bytes:
            self._reject(sender, Rejected(RejectReason.REJECT_OVERSIZED, f"{header.payload_size} byte payload"), header)
            self._refused(sender, header.round)
            return
        if header.round > self.round + 16:
            # We are behind (just started or restarted); state sync will catch us up. Not the
            # sender's fault, so not held against it.
            log.debug("ignoring update for round %d while at round %d", header.round, self.round)
            return
        try:
            if not self.book.claim(sender, header.round, header.payload_sha256):
                return  # a duplicate (gossip paths, or the sender re-announcing an open round)
        except Rejected as rejected:
            self._reject(sender, rejected, header)
            self._refused(sender, header.round)
            return
        if header.round <= self.round:
            self.rounds.record_late(sender, asyncio.get_running_loop().time(), header.round)  # admitted just now
            self._reject(sender, Rejected(RejectReason.REJECT_STALE, f"update for closed round {header.round}"), header)
            return
        self.rounds.note_member(sender, asyncio.get_running_loop().time())
        if self.butterfly is not None and not header.group_id:
            self._on_part_header(sender, header)
            return
        self._spawn(self._obtain_update(sender, header), f"update-{sender[-6:]}-{header.round}")

    def _on_part_header(self, sender: str, header: model_pb2.UpdateHeader) -> None:
        """Butterfly: the header itself puts its sender in the round (its parts go to owners)."""
        assert self.butterfly is not None
        problem = self.butterfly.header_problem(header)
        if problem is not None:
            self._reject(sender, Rejected(RejectReason.REJECT_SETTINGS_MISMATCH, problem), header)
            self._refused(sender, header.round)
            return
        self._part_headers.setdefault(header.round, {})[sender] = header
        self.contributions.setdefault(sender, PeerContribution()).accepted += 1
        self.on_event("update_accepted", peer_id=sender, round=header.round, payload_sha256=bytes(header.payload_sha256))
        self.rounds.record(sender, asyncio.get_running_loop().time(), header.round, revive=not self._left(sender))
        self._wakeup.set()

    async def _obtain_update(self, sender: str, header: model_pb2.UpdateHeader) -> None:
        delta = await self._receive_payload(sender, header)
        if delta is None:
            self._refused(sender, header.round)
            return
        if header.round <= self.round:
            self.rounds.record_late(sender, asyncio.get_running_loop().time(), header.round, revive=not self._left(sender))
            self._reject(sender, Rejected(RejectReason.REJECT_STALE, f"update for round {header.round} arrived after it closed"), header)
            return
        now = asyncio.get_running_loop().time()
        self.book.add(ReceivedUpdate(sender, header.round, header, delta, now))
        self.contributions.setdefault(sender, PeerContribution()).accepted += 1
        self.on_event("update_accepted", peer_id=sender, round=header.round,
                      payload_sha256=bytes(header.payload_sha256))
        # Its header came before any departure of the sender (admit() saw to that), but the fetch
        # may finish after one: then the update counts for its round without bringing it back.
        self.rounds.record(sender, now, header.round, revive=not self._left(sender))
        self._wakeup.set()

    async def _receive_payload(
        self, sender: str, header: model_pb2.UpdateHeader, providers: list[str] | None = None
    ) -> torch.Tensor | None:
        """The decoded update a validated header announces (inline, or fetched by hash from
        `providers`, default the sender), or None after counting the rejection. Shared by both
        schedules."""
        digest = bytes(header.payload_sha256)
        self.timings["gossip_delivery"].append(max(0.0, (now_ms() - header.created_unix_ms) / 1000))
        data: bytes | bytearray
        if header.inline_payload:
            data = bytes(header.inline_payload)  # hash checked by the validator
        else:
            try:
                fetch_started = time.perf_counter()
                data = await self.mesh.fetch_blob(digest, providers or [sender], max_size=self.max_payload_bytes)
                self.timings["fetch"].append(time.perf_counter() - fetch_started)
            except Exception as exc:
                self.book.release(sender, header.round)
                self._reject(sender, Rejected(RejectReason.REJECT_HASH_MISMATCH if "hash" in str(exc).lower()
                                              else RejectReason.REJECT_MALFORMED, f"payload fetch failed: {exc}"), header)
                return None
            self._serve(digest, data)  # peers that fetched an update can serve it
        try:
            payload = tensor_pb2.TensorPayload.FromString(data)  # type: ignore[arg-type]  # parses any buffer
            return decode(payload, limits=self.limits, expected_numel=self.layout.numel).reshape(-1)
        except PayloadError as exc:
            self._reject(sender, Rejected(exc.reject_reason, str(exc)), header)
        except Exception as exc:  # protobuf DecodeError and friends
            self._reject(sender, Rejected(RejectReason.REJECT_MALFORMED, f"payload does not parse: {exc}"), header)
        return None

    # ------------------------------------------------------------------------------ attacks
    async def _craft_attack(self, number: int, own: torch.Tensor) -> torch.Tensor:
        """The attacker's update for round `number` (see node/federation/attacker.py): in
        "current" timing it first waits for this round's honest updates, as long as its own can
        still arrive before the round closes."""
        attacker = self.attack
        assert attacker is not None
        if attacker.timing == "current":
            loop = asyncio.get_running_loop()
            while not self.stop.is_set():
                started = self.rounds.started_at
                if loop.time() >= started + WAIT_SHARE * (self.rounds.deadline() - started):
                    break
                names = self._member_names()
                honest = {p for p in self.rounds.expected() if not attacker.is_colluder(p, names.get(p, ""))}
                if set(self._honest_updates(number)) >= honest - {self.peer_id}:
                    break
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=0.05)
        return attacker.forge(number, self._honest_updates(number), own)

    def _honest_updates(self, number: int) -> dict[str, torch.Tensor]:
        """Round `number`'s updates from members that are not us or our colluders (attackers)."""
        assert self.attack is not None
        updates = {sender: update.delta for sender, update in self.book.for_round(number).items()}
        return self.attack.honest(updates, self.peer_id, self._member_names())

    def _member_names(self) -> dict[str, str]:
        return {peer: member.display_name for peer, member in self.members.items()}

    # ------------------------------------------------------------------------------ membership
    async def _discover_members(self) -> None:
        """Announce ourselves under the federation's DHT key and dial the members found there."""
        key = dht_key_for(self.federation_id)
        interval = max(5.0, 5 * self.announce_interval)
        while True:
            try:
                await self.mesh.provide(key)
                for peer in await self.mesh.find_providers(key):
                    if peer != self.peer_id and peer not in self._connected:
                        with contextlib.suppress(Exception):
                            await self.mesh.connect_peer(peer)
            except Exception as exc:
                log.debug("member discovery failed: %s", exc)
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------------------ state sync
    def _peers_completed(self, number: int) -> bool:
        """True when members already closed round `number`: our update for it would be stale and
        theirs may never reach us, so adopting their snapshot is the way forward."""
        best = self._best_offer()
        return best is not None and best.header.round >= number

    def _outvoted(self) -> bool:
        """True when most members hold another model than ours after a recent round (see
        outvoted_round) and a snapshot at least as new as our round is on offer to adopt."""
        number = outvoted_round(self._own_hashes, self._offer_counts())
        best = self._best_offer()
        if number is None or best is None or best.header.round < self.round:
            return False
        log.warning("after round %d most members hold another model than this node; adopting theirs", number,
                    extra={"event": "outvoted", "round": number})
        self._own_hashes = {n: h for n, h in self._own_hashes.items() if n > best.header.round}
        return True

    def _best_offer(self) -> SnapshotOffer | None:
        """The snapshot to adopt when behind: newest round at least snapshot_quorum members offer,
        the majority's hash for it (see adoptable_snapshot); None if there is none."""
        chosen = adoptable_snapshot(self._offer_counts(), self.snapshot_quorum)
        return None if chosen is None else self.offers[chosen[1]]

    def _offer_counts(self) -> list[tuple[int, bytes, int]]:
        """(round, sha256, members offering it) for every snapshot on offer."""
        return [(o.header.round, digest, len(o.providers)) for digest, o in self.offers.items()]

    async def _initial_sync(self) -> None:
        """Give announcements a moment to arrive, then catch up if the federation is ahead.

        The wait (at most two announcement intervals + 1 s) ends early when enough members to
        train with have announced, none of them is ahead of us (nobody has a newer model to
        offer) and no new member has appeared for ROSTER_SETTLE seconds (members started
        together start training together): a fresh federation starts at once. A member ahead
        of us keeps us waiting for its snapshot offer; one not heard from in time is caught up
        with later, like any peer that falls behind (its completed rounds or offers trigger a
        sync).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self.announce_interval + 1.0
        while loop.time() < deadline and not self.stop.is_set() and self._best_offer() is None:
            if self._level_with_quorum() and loop.time() - self._newcomer_at >= ROSTER_SETTLE:
                log.debug("initial sync: %d member(s) announced, none ahead; starting", len(self._heard_members()))
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=0.2)
        best = self._best_offer()
        if best is not None and best.header.round > self.round:
            await self._sync_from_peers()

    def _heard_members(self) -> list[MemberView]:
        """Members that announced since this node started (not ourselves)."""
        return [m for p, m in self.members.items() if p != self.peer_id and m.announced_at > 0.0]

    def _level_with_quorum(self) -> bool:
        """True when at least min_participants - 1 other members (at least one) have announced
        and none is past our round or model version."""
        heard = self._heard_members()
        needed = max(2, self.rounds.policy.min_participants) - 1
        return len(heard) >= needed and all(
            m.round <= self.round and m.model_version <= self.model_version for m in heard
        )

    async def _unless_stopping(self, work: Awaitable[T]) -> T:
        """Await `work`, but give it up (StoppingError) once the node stops: a stop must not wait on
        peers that are leaving too (a fetch from a vanished peer runs into a 30 s stream timeout,
        longer than the shutdown budget)."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.2)
                if done:
                    return task.result()
                if self.stop.is_set():
                    raise StoppingError("the node is stopping")
        finally:
            if not task.done():
                task.cancel()

    async def _await_snapshot(self) -> None:
        """Members completed a round this node has not (their snapshot's fetch failed and is
        set aside for a while): wait for an adoptable offer (it may come again, or a newer one)
        instead of closing that round with fewer updates, which would leave this node on a model
        of its own. Bounded like every wait on peers (federation.alone_timeout)."""
        log.info("members completed round %d; waiting to fetch their model instead of closing it without them",
                 self._completed_elsewhere)
        loop = asyncio.get_running_loop()
        if self._awaiting_since is None or self._awaiting != (self._completed_elsewhere, self.round):
            self._awaiting_since, self._awaiting = loop.time(), (self._completed_elsewhere, self.round)
        while not self.stop.is_set() and not self._peers_completed(self.round + 1):
            self._check_isolation(self.round + 1)
            waited = loop.time() - self._awaiting_since
            if self.alone_timeout and waited >= self.alone_timeout:
                # Members heard from (others behind too) do not make the model fetchable.
                raise IsolatedError(
                    f"members completed round {self._completed_elsewhere}, but its model could not be fetched from any "
                    f"member for {waited:.0f} s; stopping at round {self.round}. Start it again when members are "
                    f"online (federation.alone_timeout = {self.alone_timeout:.0f} s)")
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # offers come with announcements
                await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)

    def _mark_unavailable(self, digest: bytes) -> None:
        """Forget a snapshot whose fetch failed and ignore offers of it for a while (longer each
        time it fails again)."""
        offer = self.offers.get(digest)
        if offer is not None and len(offer.providers) >= self.snapshot_quorum:
            self._completed_elsewhere = max(self._completed_elsewhere, offer.header.round)
        now = asyncio.get_running_loop().time()
        _, last = self._unavailable_snapshots.get(digest, (now, 0.0))
        set_aside = SNAPSHOT_RETRY_FIRST_S if last == 0.0 else min(2 * last, SNAPSHOT_RETRY_MAX_S)
        # Entries are kept a little past their time, so a digest failing again backs off further.
        self._unavailable_snapshots = {d: (until, held) for d, (until, held) in self._unavailable_snapshots.items()
                                       if until + SNAPSHOT_RETRY_MAX_S > now}
        self._unavailable_snapshots[digest] = (now + set_aside, set_aside)
        self.offers.pop(digest, None)

    def _fetchable_offer(self) -> SnapshotOffer | None:
        """The snapshot to fetch: the best offer, unless none of its providers could be reached
        lately and an adoptable offer with a provider that could exists (a little older, as a
        rule: the newest round is often offered by one member only, a moment after it closed)."""
        best = self._best_offer()
        now = asyncio.get_running_loop().time()
        if best is None or any(self._unreachable_providers.get(p, 0.0) <= now for p in best.providers):
            return best
        reachable = [(o.header.round, digest, len(o.providers)) for digest, o in self.offers.items()
                     if any(self._unreachable_providers.get(p, 0.0) <= now for p in o.providers)]
        chosen = adoptable_snapshot(reachable, self.snapshot_quorum)
        return best if chosen is None else self.offers[chosen[1]]

    async def _sync_from_peers(self) -> bool:
        best = self._fetchable_offer()
        if best is None:
            return False
        header = best.header
        # Providers a fetch reached lately first, then directly connected ones (their fast path
        # answers at once; opening a stream to another can take the whole I/O timeout).
        now = asyncio.get_running_loop().time()
        providers = sorted(best.providers, key=lambda peer: (
            self._unreachable_providers.get(peer, 0.0) > now, peer not in self._connected, peer))
        digest = bytes(header.payload_sha256)
        try:
            data = await self._unless_stopping(self.mesh.fetch_blob(digest, providers, max_size=self.max_snapshot_bytes))
            parameters, outer_state = read_model_state(data, self.outer, limits=self.limits, numel=self.layout.numel)
        except Exception as exc:
            if self.stop.is_set():
                log.info("state sync given up: the node is stopping")
                return False
            log.warning("state sync from %d peer(s) failed (%s); will retry with another snapshot", len(providers), exc)
            failed_at = asyncio.get_running_loop().time()
            for peer, reason in (getattr(exc, "reasons", None) or {}).items():
                if reason != "not_found":
                    self._unreachable_providers[peer] = failed_at + UNREACHABLE_PROVIDER_S
            self._mark_unavailable(digest)
            await asyncio.sleep(min(self.announce_interval, 1.0))
            return False
        assign_parameters(self.model, parameters)
        if outer_state is not None:
            self.outer_state = outer_state  # adopted with the model: the same quorum vouched for both
        previous = self.round
        self.round = header.round
        self.model_version = header.model_version
        self.compressor.reset()  # the residual refers to a model we no longer have
        heard_lately = time.time() - RETURN_SILENCE_INTERVALS * self.announce_interval
        self.rounds.synced(previous, self.round,
                           live=[p for p, m in self.members.items() if m.last_seen >= heard_lately])
        self.book.prune(self.round + 1)
        self.offers = {d: o for d, o in self.offers.items() if o.header.round > self.round}
        self.syncs += 1
        if self.on_synced is not None:
            self.on_synced()
        self._serve(digest, data)
        self._snapshot = (header, data)
        self._own_hashes[self.round] = digest
        log.info(
            "synced model from %d peer(s): round %d -> %d, model version %d",
            len(providers), previous, self.round, self.model_version,
            extra={"event": "sync", "round": self.round},
        )
        if self.on_sync is not None:
            await self.on_sync()
        return True


def raw_float32_payload(vector: torch.Tensor) -> tensor_pb2.TensorPayload:
    """An uncompressed payload built without the codec's finiteness check (attack simulation)."""
    flat = vector.detach().to(torch.float32).contiguous()
    return tensor_pb2.TensorPayload(
        shape=[flat.numel()], dtype=tensor_pb2.DTYPE_FLOAT32, codec=tensor_pb2.CODEC_NONE,
        values=flat.numpy().astype("<f4").tobytes(),
    )


class _ButterflyLink:
    """The runner as the butterfly exchange's transport: signed messages (pushed to named
    owners, or to everyone like any control message) and blobs on the runner's mesh."""

    def __init__(self, runner: FederationRunner) -> None:
        self.runner = runner

    async def send(self, message: control_pb2.ButterflyMessage, to: Any) -> None:
        runner = self.runner
        control = control_pb2.ControlMessage(butterfly=message)
        if to is None:
            await runner._publish(control)
            return
        control.federation_id = runner.federation_id
        control.sent_unix_ms = now_ms()
        data = seal(runner.identity, control, runner.certificate)
        runner._remember_envelope(hashlib.sha256(data).digest(), _VIA_BOTH, runner.peer_id)
        targets = list(to)
        delivered = await runner._push(data, targets) if runner.push else []
        if not set(delivered) >= set(targets):
            await runner._gossip(data)  # an owner we hold no connection to hears it by gossip

    def serve(self, digest: bytes, data: bytes) -> None:
        self.runner.mesh.serve_blob(digest, data)

    def unserve(self, digest: bytes) -> None:
        self.runner.mesh.unserve_blob(digest)

    async def fetch(self, digest: bytes, providers: Any, max_size: int) -> bytes | bytearray:
        return await self.runner.mesh.fetch_blob(digest, list(providers), max_size=max_size)
