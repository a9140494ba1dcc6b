"""Real runners (models, trainers, aggregators, compressors built as the worker builds them) in one
process over the in-memory mesh: the round logic at unit speed, beside the real-daemon tests of
test_federation.py and test_compass_federation.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

from fednode.node.config import FednodeConfig
from fednode.node.federation.simulation import SimulatedFederation
from fednode.node.mesh import InMemoryNetwork, LinkConditions

pytestmark = pytest.mark.timeout(300)

SMALL = {"task": {"params": {"hidden": [64]}}, "training": {"local_steps": 10}}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """As the worker (training.torch_threads = 1): members share the process's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**sections: dict[str, Any]) -> FednodeConfig:
    tree: dict[str, Any] = {"federation": {"id": "sim", "announce_interval": 0.3}}
    for name, values in {**SMALL, **sections}.items():
        tree[name] = {**tree.get(name, {}), **values}
    return FednodeConfig.model_validate(tree)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_four_members_converge_to_one_model_like_a_launch() -> None:
    """The README's launch (4 members, default digits model, int8), 12 rounds: >= 0.90 everywhere
    and the same model on every member; payloads (85 KB) go by blob fetch, control by push."""
    async def scenario() -> None:
        cfg = config(task={"params": {}}, federation={"id": "sim", "announce_interval": 0.3, "min_participants": 3})
        async with SimulatedFederation(cfg, 4) as federation:
            await federation.run(12, timeout=240)
            assert federation.rounds() == [12] * 4
            assert min(federation.accuracies()) >= 0.90, federation.accuracies()
            assert len({m.model_digest() for m in federation.members}) == 1
            for member in federation.members:
                stats = member.mesh.stats()
                assert stats.fetches_ok >= 3 * 11 and stats.fetches_failed == 0, stats
                assert stats.pushes_received > 0 and stats.gossip_rejected == {}
                assert member.runner.push_only_messages > 0 and not member.rejections
                assert all(len(o.participants) == 4 for o in member.outcomes[1:])

    run(scenario)


@pytest.mark.parametrize(("rule", "robust"), [("mean", False), ("multi_krum", True)])
def test_a_byzantine_member_breaks_the_mean_but_not_a_robust_rule(rule: str, robust: bool) -> None:
    """As test_federation's launch test: one of five sends -10 x the honest mean every round."""
    async def scenario() -> None:
        cfg = config(
            aggregation={"rule": rule, "f": 1 if robust else 0},
            attack={"name": "negative_mean", "params": {"k": 10}},
            federation={"id": "sim", "announce_interval": 0.3, "min_participants": 5},
        )
        async with SimulatedFederation(cfg, 5, byzantine=1) as federation:
            await federation.run(12, timeout=240)
            honest = federation.accuracies(federation.honest())
            if robust:
                assert min(honest) >= 0.88, honest
                attacker = federation.members[-1].peer_id
                for member in federation.honest():
                    left_out = [o for o in member.outcomes if attacker in o.rejected_by_aggregator]
                    assert len(left_out) >= 10, member.outcomes
            else:
                assert max(honest) < 0.6, honest

    run(scenario)


def test_a_partitioned_member_rejoins_by_state_sync() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(seed=1)
        cfg = config(federation={"id": "sim", "announce_interval": 0.3, "min_participants": 3})
        async with SimulatedFederation(cfg, 5, network=network) as federation:
            cut = federation.members[4]
            rest = federation.members[:4]
            federation.launch(rounds=1_000)
            await federation.wait_until(lambda: min(federation.rounds()) >= 2, 60, "round 2")
            network.partition([cut.peer_id])
            stuck_at = cut.round
            # Alone, it cannot close a round (min_participants = 3); the others go on without it.
            await federation.wait_until(lambda: min(m.round for m in rest) >= stuck_at + 4, 120, "4 rounds without it")
            assert cut.round <= stuck_at + 1
            assert all(cut.peer_id not in m.outcomes[-1].participants for m in rest)
            network.heal()
            target = max(m.round for m in rest) + 3
            await federation.wait_until(lambda: cut.runner.syncs >= 1 and min(federation.rounds()) >= target,
                                        120, "the partitioned member back in step")
            assert cut.runner.syncs >= 1
            # Back as a member: the others aggregate its updates again.
            await federation.wait_until(
                lambda: all(cut.peer_id in m.outcomes[-1].participants for m in rest), 60, "its updates aggregated")

    run(scenario)


def test_a_slow_lossy_network_still_completes_rounds() -> None:
    """20 ms one way, 2 MB/s per link, 10 % of gossip hops and pushes lost and of blob transfers
    broken: rounds still close on every member and the model still learns."""
    async def scenario() -> None:
        network = InMemoryNetwork(seed=7, conditions=LinkConditions(latency=0.02, bandwidth=2e6, loss=0.1),
                                  dial_timeout=0.2)
        # fp32 updates of 12k parameters (48 KB): too large to ride inline, so they are fetched.
        cfg = config(task={"params": {"hidden": [160]}}, compression={"codec": "none"},
                     federation={"id": "sim", "announce_interval": 0.3, "min_participants": 3})
        async with SimulatedFederation(cfg, 4, network=network) as federation:
            await federation.run(8, timeout=240)
            assert federation.rounds() == [8] * 4
            assert min(federation.accuracies()) >= 0.85, federation.accuracies()
            # Transfers did break (a payload is fetched from its sender: a broken fetch fails, and
            # the round goes on without that update; a snapshot resumes from another provider).
            broken = sum(m.mesh.stats().fetches_failed + m.mesh.stats().fetch_resumes for m in federation.members)
            assert broken > 0

    run(scenario)


def test_fedcompass_runs_over_the_in_memory_mesh() -> None:
    """Two fast and two 3x slower members: groups close and every member's model improves."""
    async def scenario() -> None:
        cfg = config(federation={"id": "sim", "announce_interval": 0.3, "schedule": "fedcompass",
                                 "min_participants": 1, "q_min": 5, "q_max": 20})
        async with SimulatedFederation(cfg, 4, slowdowns=[1.0, 1.0, 3.0, 3.0]) as federation:
            await federation.run(20, timeout=240)
            assert min(federation.rounds()) >= 20
            assert min(federation.accuracies()) >= 0.85, federation.accuracies()
            # Every member's updates were aggregated somewhere, the slow ones' included.
            aggregated = set().union(*(set(o.participants) for m in federation.members for o in m.outcomes))
            assert aggregated == {m.peer_id for m in federation.members}

    run(scenario)
