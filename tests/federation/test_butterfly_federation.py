"""federation.exchange = "butterfly" with real runners (SimulatedFederation over the in-memory
mesh): the same models as the all-to-all exchange on the same federation, less traffic per
member, and a lying owner excluded by every honest member while the rounds go on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from fednode.node.config import FednodeConfig
from fednode.node.federation.butterfly import OwnerBehaviour
from fednode.node.federation.simulation import SimulatedFederation
from fednode.node.model import flatten_parameters

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(exchange: str, rule: str, f: int, members: int, **extra: Any) -> FednodeConfig:
    params = {"within_parts": members, "p": 2 * members} if rule == "gas" else {}
    return FednodeConfig.model_validate({
        "task": {"params": {"hidden": [64]}},
        "training": {"local_steps": 5},
        "aggregation": {"rule": rule, "f": f, "params": params},
        "compression": {"codec": "none"},
        "federation": {"id": "sim-butterfly", "announce_interval": 0.3, "min_participants": members,
                       "exchange": exchange, "butterfly_parts": members, "butterfly_grace": 0.5, **extra},
    })


async def run_federation(cfg: FednodeConfig, members: int, rounds: int, **options: Any) -> SimulatedFederation:
    federation = SimulatedFederation(cfg, members, seed=4, **options)
    async with federation:
        await federation.run(rounds, timeout=200)
    return federation


@pytest.mark.parametrize(("rule", "f", "members"), [("mean", 0, 5), ("median", 1, 5), ("multi_krum", 1, 5),
                                                    ("centered_clipping", 1, 5), ("flag", 1, 5), ("gas", 1, 7)])
def test_butterfly_federation_ends_on_the_all_to_all_model(rule: str, f: int, members: int) -> None:
    """Two rounds, each exchange on the same seeds: every butterfly member holds the same model,
    equal to the all-to-all members' model within float rounding (bit for bit for the mean), and
    with f = 0 received fewer bytes."""
    rounds = 2

    async def scenario() -> tuple[SimulatedFederation, SimulatedFederation]:
        a2a = await run_federation(config("all_to_all", rule, f, members), members, rounds)
        butterfly = await run_federation(config("butterfly", rule, f, members), members, rounds)
        return a2a, butterfly

    a2a, butterfly = asyncio.run(scenario())
    assert butterfly.rounds() == [rounds] * members
    assert len({m.model_digest() for m in butterfly.members}) == 1
    for member in butterfly.members:
        assert member.runner.butterfly is not None and member.runner.butterfly.fallbacks == 0
        assert all(len(o.participants) == members for o in member.outcomes)
    reference = flatten_parameters(a2a.members[0].runner.model)
    model = flatten_parameters(butterfly.members[0].runner.model)
    assert torch.allclose(model, reference, rtol=1e-4, atol=1e-6), (model - reference).abs().max()
    if rule == "mean":
        assert torch.equal(model, reference)
    a2a_in = sum(a2a.network.traffic(m.peer_id).bytes_received for m in a2a.members)
    butterfly_in = sum(butterfly.network.traffic(m.peer_id).bytes_received for m in butterfly.members)
    if f == 0:
        assert butterfly_in < a2a_in, (butterfly_in, a2a_in)


def test_a_lying_owner_is_excluded_and_the_rounds_go_on() -> None:
    """One of six members signs false partials and aggregated parts: every honest member
    recomputes its parts, records its signed false claim, excludes it (its later updates are
    refused) and all of them hold the same model."""
    members = 6
    cfg = config("butterfly", "multi_krum", 1, members, min_participants=5)

    async def scenario() -> SimulatedFederation:
        return await run_federation(cfg, members, 3, byzantine=1, owner_behaviour=OwnerBehaviour(lie=True))

    federation = asyncio.run(scenario())
    liar = federation.members[-1].peer_id
    honest = federation.honest()
    assert all(m.round == 3 for m in honest)
    assert len({m.model_digest() for m in honest}) == 1
    for member in honest:
        exchange = member.runner.butterfly
        assert exchange is not None and liar in exchange.excluded
        assert member.events["owner_false_claim"] >= 1
        assert [claim.owner for claim in exchange.false_claims] == [liar]
        assert member.rejections["settings_mismatch"] >= 1  # its next update refused
        assert liar not in member.outcomes[-1].participants
