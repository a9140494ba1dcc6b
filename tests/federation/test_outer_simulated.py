"""Outer optimizers in real runners over the in-memory mesh (unit speed): members end with the
bit-identical model and optimizer state, a member that catches up by state sync adopts the
state with the model, and FedCompass members that applied the same groups agree."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
import torch

from fednode.node.config import FednodeConfig
from fednode.node.federation.outer import OPTIMIZERS, OuterConfig
from fednode.node.federation.simulation import SimulatedFederation, SimulatedMember
from fednode.node.mesh import InMemoryNetwork

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(outer: str, **federation: Any) -> FednodeConfig:
    return FednodeConfig.model_validate({
        "federation": {"id": "sim-outer", "announce_interval": 0.3, "min_participants": 3, **federation},
        "task": {"params": {"hidden": [64]}}, "training": {"local_steps": 10},
        "aggregation": {"outer": outer},
    })


def state_digest(member: SimulatedMember) -> str:
    """sha256 over the member's outer state: step count, bias-correction powers, buffers."""
    state = member.runner.outer_state
    digest = hashlib.sha256(repr((state.steps, state.beta1_power, state.beta2_power)).encode())
    for name in sorted(state.buffers):
        digest.update(name.encode() + state.buffers[name].numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("outer", OPTIMIZERS)
def test_every_member_ends_with_the_same_model_and_optimizer_state(outer: str) -> None:
    async def scenario() -> None:
        async with SimulatedFederation(config(outer), 3) as federation:
            await federation.run(6, timeout=240)
            members = federation.members
            assert len({m.model_digest() for m in members}) == 1
            assert len({state_digest(m) for m in members}) == 1
            state = members[0].runner.outer_state
            expected = OuterConfig.build(outer)
            assert members[0].runner.outer == expected
            if not expected.is_identity:
                assert state.steps == 6  # one outer step per round
            for buffer in state.buffers.values():
                assert buffer.dtype == torch.float64 and torch.count_nonzero(buffer) > 0
            assert min(federation.accuracies()) > 0.5

    asyncio.run(scenario())


def test_a_member_that_catches_up_by_state_sync_adopts_the_optimizer_state_with_the_model() -> None:
    """Partitioned away, then back: it adopts the others' snapshot (a ModelState: model and
    momentum under one hash) and from then on steps exactly like them."""
    async def scenario() -> None:
        network = InMemoryNetwork(seed=3)
        async with SimulatedFederation(config("nesterov"), 4, network=network) as federation:
            cut, rest = federation.members[3], federation.members[:3]
            federation.launch(rounds=1_000)
            await federation.wait_until(lambda: min(federation.rounds()) >= 2, 60, "round 2")
            network.partition([cut.peer_id])
            stuck_at = cut.round
            await federation.wait_until(lambda: min(m.round for m in rest) >= stuck_at + 3, 120, "3 rounds without it")
            network.heal()
            await federation.wait_until(lambda: cut.runner.syncs >= 1, 120, "the partitioned member syncs")
            target = max(federation.rounds()) + 3
            await federation.wait_until(lambda: min(federation.rounds()) >= target, 120, "3 more rounds together")
            for member in federation.members:
                member.stop.set()
            await federation.wait_until(lambda: all(t.done() for t in federation._runs), 60, "stopped")
            at_round = {}
            for member in federation.members:
                at_round.setdefault(member.round, []).append(member)
            # Members at the same round hold the same model and the same optimizer state, the
            # one that synced included (its momentum was adopted, not restarted from zero).
            for members in at_round.values():
                assert len({m.model_digest() for m in members}) == 1
                assert len({state_digest(m) for m in members}) == 1
            assert cut.runner.outer_state.steps == cut.round
            assert cut.peer_id in rest[0].outcomes[-1].participants

    asyncio.run(scenario())


@pytest.mark.parametrize("outer", ["momentum", "adam"])
def test_fedcompass_members_that_applied_the_same_groups_agree(outer: str) -> None:
    """FedCompass has no total order of groups: the outer steps are applied in a canonical order
    (replayed when a group arrives out of it), so equal sets of applied groups mean equal bits."""
    async def scenario() -> None:
        cfg = config(outer, schedule="fedcompass", min_participants=1, q_min=5, q_max=20)
        async with SimulatedFederation(cfg, 4, slowdowns=[1.0, 1.0, 2.0, 3.0]) as federation:
            await federation.run(15, timeout=240)
            views: dict[tuple[int, frozenset[bytes]], list[SimulatedMember]] = {}
            for member in federation.members:
                runner = member.runner
                key = (runner.model_version, frozenset(runner.applied_order))
                views.setdefault(key, []).append(member)
            assert max(len(group) for group in views.values()) >= 2, "no two members ended on the same groups"
            for members in views.values():
                assert len({m.model_digest() for m in members}) == 1
                assert len({state_digest(m) for m in members}) == 1
                assert len({bytes(m.runner.master.numpy().tobytes()) for m in members}) == 1
            assert min(federation.accuracies()) > 0.5

    asyncio.run(scenario())
