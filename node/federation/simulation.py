"""Federations simulated in one process: the real round code over an in-memory mesh.

`SimulatedFederation(config, members)` builds, for every member, what a daemon's training
worker builds (node/worker/process.py): the task on the member's shard, the model, the local
trainer, the aggregator, the compressor, an attack for Byzantine members, and a
`FederationRunner` (or `CompassRunner` for ``federation.schedule = "fedcompass"``) given an
`InMemoryMesh` of one shared `InMemoryNetwork` instead of the daemon's mesh. Everything runs in
the caller's asyncio loop; training and aggregation run in the loop's default thread pool, as
in the worker. Used by tests (round logic at unit speed) and bench/simulate.py (64-256 members).

What differs from real daemons: no daemon/worker link (its copies and its second validation),
no libp2p (see docs/simulation.md for what the in-memory network models), one process-wide
torch thread pool, and open federations only (no certificates).

    config = FednodeConfig.model_validate({"federation": {"id": "sim", "announce_interval": 0.3}})
    async with SimulatedFederation(config, members=16) as federation:
        await federation.run(rounds=5, timeout=120)
        print(federation.accuracies())
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fednode.aggregators import AggregationError
from fednode.aggregators import build as build_aggregator
from fednode.node.compression import UpdateCompressor, build_codec
from fednode.node.config import FednodeConfig
from fednode.node.federation.attacker import build_attacker
from fednode.node.federation.butterfly import OwnerBehaviour, butterfly_config
from fednode.node.federation.runner import FederationRunner, RoundOutcome
from fednode.node.identity import Identity
from fednode.node.mesh.memory import InMemoryMesh, InMemoryNetwork, Traffic
from fednode.node.model import flatten_parameters, model_layout
from fednode.node.scheduler import SyncPolicy
from fednode.node.tasks import Task, TaskContext, load_task
from fednode.node.trainer import EvalResult, LocalTrainer, resolve_inner_optimizer

DEFAULT_FEDERATION_ID = "simulation"


@dataclass
class SimulatedMember:
    """One member: its mesh, runner and trainer, and what happened to it."""

    index: int
    identity: Identity
    mesh: InMemoryMesh
    runner: FederationRunner
    trainer: LocalTrainer
    task: Task
    byzantine: bool
    stop: threading.Event
    outcomes: list[RoundOutcome] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)  # runner events by kind
    rejections: Counter[str] = field(default_factory=Counter)  # update_rejected events by reason
    traffic_at_round: dict[int, Traffic] = field(default_factory=dict)  # network traffic when each round closed

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def round(self) -> int:
        return self.runner.round

    def payload_bytes(self) -> int:
        """Size of this member's last encoded update (0 before its first)."""
        published = self.runner._published  # the runner keeps its open round's update there
        return int(published[1].header.payload_size) if published is not None else 0

    def model_digest(self) -> bytes:
        """sha256 of the model parameters (members that aggregated the same rows agree)."""
        return hashlib.sha256(flatten_parameters(self.runner.model).numpy().tobytes()).digest()


def member_identity(seed: int, index: int) -> Identity:
    """A deterministic identity per (seed, member index)."""
    return Identity.from_seed(hashlib.sha256(f"fednode-simulation:{seed}:{index}".encode()).digest())


class SimulatedFederation:
    """`members` runners over one in-memory network; see the module docstring.

    The last `byzantine` members run ``config.attack`` (as ``fednode launch --byzantine`` does)
    and, with the butterfly exchange, `owner_behaviour` as owners (lying or silent owners).
    Members train on ``shards`` Dirichlet shards of the task's data (default: one per member, at
    most 64, so digits' 1,437 training examples give every shard ten or more); member i uses
    shard i mod shards. ``slowdowns[i mod len]`` sets each member's training slowdown.
    """

    def __init__(
        self,
        config: FednodeConfig,
        members: int,
        *,
        byzantine: int = 0,
        network: InMemoryNetwork | None = None,
        shards: int | None = None,
        slowdowns: Sequence[float] = (),
        seed: int = 0,
        owner_behaviour: OwnerBehaviour | None = None,
    ) -> None:
        if members < 1:
            raise ValueError("a federation needs at least one member")
        if not 0 <= byzantine <= members:
            raise ValueError(f"byzantine must be in 0..{members}")
        if byzantine and not config.attack.name and owner_behaviour is None:
            raise ValueError("byzantine members need an attack: set attack.name")
        self.config = config
        self.federation_id = config.federation.id or DEFAULT_FEDERATION_ID
        self.network = network or InMemoryNetwork(seed=seed)
        self.shards = shards or min(members, 64)
        self.members: list[SimulatedMember] = []
        self._progress = asyncio.Event()
        self._runs: list[asyncio.Task[None]] = []
        self._target_round = 0
        self.owner_behaviour = owner_behaviour  # how Byzantine members misbehave as butterfly owners
        for index in range(members):
            slowdown = slowdowns[index % len(slowdowns)] if slowdowns else None
            self.members.append(self._build_member(index, index >= members - byzantine, seed, slowdown))

    # ------------------------------------------------------------------------------ building
    def _components(self) -> tuple[Any, UpdateCompressor]:
        """Aggregator and compressor, as the worker builds them (TrainingWorker.components)."""
        aggregation, compression = self.config.aggregation, self.config.compression
        try:
            aggregator = build_aggregator(aggregation.rule, f=aggregation.f, **aggregation.params)
        except (AggregationError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid aggregation settings: {exc}") from exc
        needed = aggregator.minimum_rows()
        if self.config.federation.min_participants < needed:
            raise ValueError(
                f"aggregation rule {aggregation.rule!r} with f = {aggregation.f} needs at least {needed} updates per "
                f"round, but federation.min_participants = {self.config.federation.min_participants}"
            )
        codec = build_codec(compression.codec, **compression.params)
        return aggregator, UpdateCompressor(codec, error_feedback=compression.error_feedback)

    def _build_member(self, index: int, byzantine: bool, seed: int, slowdown: float | None) -> SimulatedMember:
        config = self.config
        task_cfg, training, federation = config.task, config.training, config.federation
        shard = index % self.shards
        task = load_task(task_cfg.name, TaskContext(shard, self.shards, task_cfg.seed), dict(task_cfg.params))
        attack = (build_attacker(config.attack.name, dict(config.attack.params), config.attack.timing,
                                 list(config.attack.colluders)) if byzantine and config.attack.name else None)
        if attack is not None and attack.kind == "data":
            labels = getattr(task.train_data, "labels", None)
            if not isinstance(labels, torch.Tensor):
                raise ValueError(f"attack {config.attack.name!r} needs a task whose training data has .labels")
            task.train_data.labels = attack.attack.transform_labels(labels)  # type: ignore[attr-defined]
        model = task.model_factory()
        layout = model_layout(model)
        trainer = LocalTrainer(
            task, torch.device("cpu"), batch_size=training.batch_size, lr=training.lr, momentum=training.momentum,
            weight_decay=training.weight_decay, seed=task_cfg.seed * 1_000_003 + index,
            slowdown=training.slowdown if slowdown is None else slowdown,
            emulated_step_seconds=training.emulated_step_ms / 1000.0,
            optimizer=resolve_inner_optimizer(training.optimizer, task, lr=training.lr, momentum=training.momentum,
                                              weight_decay=training.weight_decay),
        )
        aggregator, compressor = self._components()
        identity = member_identity(seed, index)
        mesh = self.network.join(identity.peer_id)
        stop = threading.Event()
        runner_class: type[FederationRunner] = FederationRunner
        options: dict[str, Any] = {}
        if federation.schedule == "fedcompass":
            from fednode.node.federation.compass import CompassRunner, policy_from_config

            runner_class = CompassRunner
            options["compass"] = policy_from_config(federation)
        member_box: list[SimulatedMember] = []

        async def on_round(outcome: RoundOutcome) -> None:
            member = member_box[0]
            member.outcomes.append(outcome)
            member.traffic_at_round[outcome.round] = self.network.traffic(member.peer_id)
            self._progress.set()

        def on_event(kind: str, **fields: Any) -> None:
            member = member_box[0]
            member.events[kind] += 1
            if kind == "update_rejected":
                member.rejections[str(fields.get("reason", ""))] += 1

        runner = runner_class(
            federation_id=self.federation_id, identity=identity, mesh=mesh, model=model, trainer=trainer,
            layout=layout, aggregator=aggregator, compressor=compressor, local_steps=training.local_steps,
            policy=SyncPolicy(min_participants=federation.min_participants),
            announce_interval=federation.announce_interval, max_clock_skew=federation.max_clock_skew,
            stop=stop, push=federation.push, attack=attack, on_round=on_round, display_name=f"member-{index}",
            on_event=on_event, outer=config.aggregation.outer_config(), butterfly=butterfly_config(federation),
            owner_behaviour=self.owner_behaviour if byzantine else None, **options,
        )
        member = SimulatedMember(index, identity, mesh, runner, trainer, task, byzantine, stop)
        member_box.append(member)
        return member

    # ------------------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> SimulatedFederation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every mesh (each dials member 0, as `fednode launch` bootstraps from node 0) and
        every runner (subscribe, announce, discover)."""
        first = self.members[0].peer_id
        for member in self.members:
            await member.mesh.start([] if member.index == 0 else [first])
        for member in self.members:
            await member.runner.start()

    def launch(self, rounds: int) -> None:
        """Run every member's rounds in the background until it reached round `rounds`."""
        self._target_round = rounds
        for member in self.members:
            if member.index < len(self._runs) and not self._runs[member.index].done():
                continue
            self._launch(member)

    def _launch(self, member: SimulatedMember) -> None:
        def should_stop() -> bool:
            # As the worker's: the stop event ends the run too (the runner checks only this).
            return member.stop.is_set() or member.runner.round >= self._target_round

        async def run() -> None:
            await member.runner.run(should_stop)
            self._progress.set()

        task = asyncio.ensure_future(run())
        task.set_name(f"simulated-member-{member.index}")
        if member.index < len(self._runs):
            self._runs[member.index] = task
        else:
            self._runs.append(task)

    async def wait_until(self, condition: Callable[[], bool], timeout: float, what: str = "the condition") -> None:
        """Wait (woken by every closed round) until `condition()` holds; TimeoutError with every
        member's round otherwise. A member whose run failed raises its error here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            for task in self._runs:
                failure = task.exception() if task.done() and not task.cancelled() else None
                if failure is not None:
                    raise failure
            if loop.time() >= deadline:
                raise TimeoutError(f"{what} not reached within {timeout:.0f} s; rounds: {self.rounds()}")
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), timeout=min(0.5, max(0.0, deadline - loop.time())))

    async def run(self, rounds: int, timeout: float) -> None:
        """Every member runs until it reached round `rounds` (bounded by `timeout` seconds)."""
        self.launch(rounds)
        await self.wait_until(lambda: all(t.done() for t in self._runs), timeout, f"round {rounds} everywhere")
        for task in self._runs:
            task.result()

    async def close(self) -> None:
        """Stop training, say goodbye (departures), stop the meshes. Idempotent."""
        for member in self.members:
            member.stop.set()
            member.runner.wake()
        if self._runs:
            await asyncio.wait(self._runs, timeout=30)
        for task in self._runs:
            task.cancel()
        await asyncio.gather(*(member.runner.close() for member in self.members), return_exceptions=True)
        for member in self.members:
            await member.mesh.stop()

    # ------------------------------------------------------------------------------ results
    def rounds(self) -> list[int]:
        return [member.round for member in self.members]

    def honest(self) -> list[SimulatedMember]:
        return [member for member in self.members if not member.byzantine]

    def accuracies(self, members: Sequence[SimulatedMember] | None = None) -> list[float]:
        """Test accuracy of each member's current model (the task's shared test set)."""
        chosen = self.members if members is None else members
        return [self._evaluate(member).accuracy for member in chosen]

    def _evaluate(self, member: SimulatedMember) -> EvalResult:
        result: EvalResult = member.trainer.evaluate(member.runner.model)
        return result

    def bytes_per_round(self, member: SimulatedMember, first: int, last: int) -> tuple[float, float]:
        """(sent, received) payload bytes per round between the closes of rounds `first` and
        `last` at this member."""
        start, end = member.traffic_at_round[first], member.traffic_at_round[last]
        span = last - first
        return (end.bytes_sent - start.bytes_sent) / span, (end.bytes_received - start.bytes_received) / span
