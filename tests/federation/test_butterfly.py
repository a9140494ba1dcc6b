"""The butterfly exchange (fednode.node.federation.butterfly) between members on the in-memory
mesh, with real signatures and the real control validator: results equal the all-to-all call of
each rule on the same rows; a lying owner is refuted and excluded with its signed claim as proof;
a silent owner is replaced by the other owners of its parts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from fednode.aggregators import build
from fednode.node.envelope import open_envelope, seal
from fednode.node.federation.butterfly import (
    ButterflyConfig,
    ButterflyExchange,
    ButterflyFailed,
    OwnerBehaviour,
    merkle_proof,
    merkle_root,
    verify_proof,
)
from fednode.node.federation.protocol import (
    MAX_CONTROL_BYTES,
    ControlValidator,
    now_ms,
    round_seed,
    topic_for,
)
from fednode.node.federation.simulation import member_identity
from fednode.node.mesh.memory import InMemoryNetwork
from fednode.node.scheduler.owners import leader_order
from fednode.proto.v1 import control_pb2, model_pb2

pytestmark = pytest.mark.timeout(120)

FEDERATION = "butterfly-test"
LAYOUT_DIGEST = "layout"


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8, 13])
def test_merkle_proofs_bind_each_part_to_its_index(parts: int) -> None:
    digests = [hashlib.sha256(bytes([j])).digest() for j in range(parts)]
    root = merkle_root(digests)
    for j in range(parts):
        proof = merkle_proof(digests, j)
        assert verify_proof(root, j, parts, digests[j], proof)
        other = (j + 1) % parts
        if other != j:
            assert not verify_proof(root, other, parts, digests[j], proof)  # another index
            assert not verify_proof(root, j, parts, digests[other], proof)  # another part's data
        if proof:
            assert not verify_proof(root, j, parts, digests[j], proof[:-1])
            assert not verify_proof(root, j, parts, digests[j], [bytes(32), *proof[1:]])


class MeshLink:
    """A member's transport: sealed control messages on the in-memory mesh, as the runner sends them."""

    def __init__(self, identity: Any, mesh: Any, members: Sequence[str]) -> None:
        self.identity, self.mesh, self.members = identity, mesh, members

    async def send(self, message: control_pb2.ButterflyMessage, to: Sequence[str] | None) -> None:
        control = control_pb2.ControlMessage(federation_id=FEDERATION, sent_unix_ms=now_ms(), butterfly=message)
        data = seal(self.identity, control)
        targets = [p for p in self.members if p != self.identity.peer_id] if to is None else list(to)
        await self.mesh.push(topic_for(FEDERATION), data, targets)

    def serve(self, digest: bytes, data: bytes) -> None:
        self.mesh.serve_blob(digest, data)

    def unserve(self, digest: bytes) -> None:
        self.mesh.unserve_blob(digest)

    async def fetch(self, digest: bytes, providers: Sequence[str], max_size: int) -> bytes | bytearray:
        return await self.mesh.fetch_blob(digest, list(providers), max_size=max_size)


async def exchange_round(
    rows: torch.Tensor, rule: Any, *, parts: int, behaviours: dict[int, OwnerBehaviour] | None = None,
    center: torch.Tensor | None = None, grace: float = 0.2, links: dict[int, type[MeshLink]] | None = None,
    hidden: dict[int, tuple[set[int], float]] | None = None, roster_wait: float = 5.0,
) -> tuple[list[str], list[Any], list[ButterflyExchange]]:
    """Member i sends rows[i]; every member runs the exchange of round 1. Returns the canonical
    peer order, each member's outcome (or exception) and the exchanges. `hidden[i] = (senders,
    seconds)`: member i closes the round without those senders' headers, which reach it that many
    seconds later (a straggler's header under load; inf: never)."""
    n = rows.shape[0]
    identities = [member_identity(7, i) for i in range(n)]
    peers = [identity.peer_id for identity in identities]
    network = InMemoryNetwork(seed=1)
    meshes = [network.join(peer) for peer in peers]
    for i, mesh in enumerate(meshes):
        await mesh.start([] if i == 0 else [peers[0]])
    for mesh in meshes:
        for peer in peers:
            if peer != mesh.peer_id:
                await mesh.connect_peer(peer)
    config = ButterflyConfig(parts=parts, grace=grace, timeout=20.0, roster_wait=roster_wait)
    exchanges = [
        ButterflyExchange(peer_id=peers[i], federation_id=FEDERATION, numel=rows.shape[1], config=config,
                          transport=(links or {}).get(i, MeshLink)(identities[i], meshes[i], peers),
                          behaviour=(behaviours or {}).get(i))
        for i in range(n)
    ]
    pumps = []
    for mesh, exchange in zip(meshes, exchanges, strict=True):
        validator = ControlValidator(FEDERATION, 60.0, LAYOUT_DIGEST)
        await mesh.subscribe(topic_for(FEDERATION), validator.check)

        async def pump(mesh: Any = mesh, exchange: ButterflyExchange = exchange, validator: Any = validator) -> None:
            while True:
                event = await mesh.events.get()
                if type(event).__name__ == "GossipMessage":
                    valid = validator.open(event.data)
                    exchange.on_message(valid.sender, valid.message.butterfly, event.data)

        pumps.append(asyncio.ensure_future(pump()))
    headers = {}
    for i, exchange in enumerate(exchanges):
        root, m = exchange.publish(1, rows[i])
        headers[peers[i]] = model_pb2.UpdateHeader(federation_id=FEDERATION, sender_peer_id=peers[i], round=1,
                                                   parts_root=root, parts=m)
    loop = asyncio.get_running_loop()
    started = loop.time()

    def view(i: int) -> Any:
        senders, delay = (hidden or {}).get(i, (set(), 0.0))

        def held() -> dict[str, model_pb2.UpdateHeader]:
            late = loop.time() - started < delay
            return {p: h for k, (p, h) in enumerate(headers.items()) if not (late and k in senders)}

        return held

    try:
        outcomes = await asyncio.gather(
            *(exchange.aggregate(1, view(i), rule, seed=round_seed(FEDERATION, 1), center=center)
              for i, exchange in enumerate(exchanges)),
            return_exceptions=True)
    finally:
        for task in pumps:
            task.cancel()
        for mesh in meshes:
            await mesh.stop()
    return peers, list(outcomes), exchanges


def canonical(rows: torch.Tensor, peers: list[str]) -> torch.Tensor:
    """The all-to-all runner stacks rows in sorted peer-id order."""
    order = sorted(range(len(peers)), key=lambda i: peers[i])
    return rows[order]


def sample_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d, generator=generator)
    rows[-1] = rows[-1] * 8 + 3  # an outlier for the robust rules to act on
    return rows


RULES = [
    ("mean", 0, {}, True),
    ("median", 1, {}, True),
    ("trimmed_mean", 1, {}, True),
    ("krum", 1, {}, False),
    ("multi_krum", 1, {}, False),
    ("bulyan", 1, {}, False),
    ("centered_clipping", 1, {}, False),
    ("geometric_median", 1, {}, False),
    ("flag", 1, {}, False),
    ("gas", 1, {"within_parts": 5}, False),
]


@pytest.mark.parametrize(("name", "f", "params", "bitwise"), RULES, ids=[r[0] for r in RULES])
def test_butterfly_equals_all_to_all(name: str, f: int, params: dict[str, Any], bitwise: bool) -> None:
    """Every member ends with rule(rows) of the all-to-all call: bit for bit for coordinate-wise
    rules, within float64 rounding for Gram-based ones (same selections)."""
    rows = sample_rows(7, 50, seed=3)
    rule = build(name, f=f, **params)
    center = torch.linspace(-0.1, 0.1, 50) if name == "centered_clipping" else None
    peers, outcomes, _ = asyncio.run(exchange_round(rows, rule, parts=5, center=center))
    kwargs: dict[str, Any] = {"seed": round_seed(FEDERATION, 1)}
    if center is not None:
        kwargs["center"] = center
    expected = rule(canonical(rows, peers), **kwargs)
    aggregates = []
    for outcome in outcomes:
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.roster == sorted(peers) and not outcome.false_claims and not outcome.recomputed_parts
        if bitwise:
            assert torch.equal(outcome.result.aggregate, expected.aggregate)
        else:
            assert torch.allclose(outcome.result.aggregate, expected.aggregate, rtol=1e-5, atol=1e-6)
        assert outcome.result.selected == expected.selected
        aggregates.append(outcome.result.aggregate)
    # Members agree with each other bit for bit whatever the bound.
    assert all(torch.equal(a, aggregates[0]) for a in aggregates)


@pytest.mark.parametrize("name", ["mean", "multi_krum"])
def test_a_lying_owner_is_refuted_and_excluded_with_its_signed_claim(name: str) -> None:
    rows = sample_rows(7, 60, seed=5)
    rule = build(name, f=1)  # r = 2 owners per part
    liar = 2
    peers, outcomes, exchanges = asyncio.run(
        exchange_round(rows, rule, parts=7, behaviours={liar: OwnerBehaviour(lie=True)}))
    expected = rule(canonical(rows, peers), seed=round_seed(FEDERATION, 1))
    for i, (outcome, exchange) in enumerate(zip(outcomes, exchanges, strict=True)):
        if i == liar:
            continue
        assert not isinstance(outcome, BaseException), outcome
        assert torch.allclose(outcome.result.aggregate, expected.aggregate, rtol=1e-5, atol=1e-6)
        # Non-owners of the liar's parts recompute them; its co-owners refute it from their inputs.
        assert outcome.false_claims == [peers[liar]] and peers[liar] in exchange.excluded
        proof = exchange.false_claims[0]
        opened = open_envelope(proof.envelope, control_pb2.ControlMessage, max_size=MAX_CONTROL_BYTES)
        # The proof verifies for anyone: signed by the liar, about the part and round refuted.
        assert opened.sender_peer_id == peers[liar]
        claim = opened.message.butterfly.claim
        assert claim.round == 1 and proof.part in [e.part for e in claim.entries]
    honest = [outcome for i, outcome in enumerate(outcomes) if i != liar]
    assert sum(bool(outcome.recomputed_parts) for outcome in honest) >= len(honest) - 2


def test_a_silent_owner_is_replaced_by_the_other_owners() -> None:
    """An owner that stops after the first step: the round completes from its co-owners' claims."""
    rows = sample_rows(7, 40, seed=9)
    rule = build("multi_krum", f=1)
    silent = 4
    peers, outcomes, _ = asyncio.run(
        exchange_round(rows, rule, parts=7, behaviours={silent: OwnerBehaviour(silent_from_step=1)}))
    expected = rule(canonical(rows, peers), seed=round_seed(FEDERATION, 1))
    assert isinstance(outcomes[silent], ButterflyFailed)
    for i, outcome in enumerate(outcomes):
        if i != silent:
            assert not isinstance(outcome, BaseException), outcome
            assert torch.allclose(outcome.result.aggregate, expected.aggregate, rtol=1e-5, atol=1e-6)
            assert not outcome.false_claims


class DyingLink(MeshLink):
    """A member whose mesh stops (as at kill -9: no more messages, its blobs gone) right after it
    sent its first claim."""

    async def send(self, message: control_pb2.ButterflyMessage, to: Sequence[str] | None) -> None:
        await super().send(message, to)
        if message.WhichOneof("body") == "claim":
            await self.mesh.stop()


def test_an_owner_whose_mesh_dies_mid_round_is_replaced() -> None:
    rows = sample_rows(7, 40, seed=11)
    rule = build("multi_krum", f=1)
    dying = 1

    peers, outcomes, _ = asyncio.run(exchange_round(rows, rule, parts=7, links={dying: DyingLink}))
    expected = rule(canonical(rows, peers), seed=round_seed(FEDERATION, 1))
    for i, outcome in enumerate(outcomes):
        if i != dying:
            assert not isinstance(outcome, BaseException), outcome
            assert torch.allclose(outcome.result.aggregate, expected.aggregate, rtol=1e-5, atol=1e-6)
            assert not outcome.false_claims


def test_an_update_cut_into_other_parts_is_refused_clearly() -> None:
    exchange = ButterflyExchange(peer_id="a", federation_id=FEDERATION, numel=10, config=ButterflyConfig(parts=4),
                                 transport=MeshLink(None, None, []))
    header = model_pb2.UpdateHeader(sender_peer_id="b", parts=3, parts_root=bytes(32))
    assert "3 parts" in (exchange.header_problem(header) or "")
    assert exchange.header_problem(model_pb2.UpdateHeader(sender_peer_id="b", parts=4, parts_root=b"x")) is not None
    assert exchange.header_problem(model_pb2.UpdateHeader(sender_peer_id="b", parts=4, parts_root=bytes(32))) is None
    with pytest.raises(ValueError, match="cannot exceed"):
        ButterflyExchange(peer_id="a", federation_id=FEDERATION, numel=3, config=ButterflyConfig(parts=4),
                          transport=MeshLink(None, None, []))


def test_config_refuses_butterfly_settings_that_cannot_work() -> None:
    from pydantic import ValidationError

    from fednode.node.config import FednodeConfig
    from fednode.node.federation.butterfly import butterfly_config

    base = {"id": "x", "exchange": "butterfly", "min_participants": 4}
    assert FednodeConfig.model_validate({}).federation.exchange == "all_to_all"
    assert butterfly_config(FednodeConfig.model_validate({}).federation) is None
    chosen = butterfly_config(FednodeConfig.model_validate({"federation": {**base, "butterfly_replicas": 3}}).federation)
    assert chosen == ButterflyConfig(parts=4, replicas=3, grace=1.0, timeout=60.0, roster_wait=20.0)  # parts = min_participants
    with pytest.raises(ValidationError, match="butterfly_roster_wait"):
        FednodeConfig.model_validate({"federation": {**base, "butterfly_roster_wait": 0}})
    with pytest.raises(ValidationError, match="schedule"):
        FednodeConfig.model_validate({"federation": {**base, "schedule": "fedcompass"}})
    with pytest.raises(ValidationError, match="within_parts = 6"):
        FednodeConfig.model_validate({"federation": {**base, "butterfly_parts": 6},
                                      "aggregation": {"rule": "gas", "f": 1, "params": {"within_parts": 4}}})
    with pytest.raises(ValidationError, match="exchange"):
        FednodeConfig.model_validate({"federation": {**base, "exchange": "ring"}})


# ---------------------------------------------------------------------- roster agreement


def leaders_of(peers: list[str]) -> list[str]:
    return leader_order(peers, federation_id=FEDERATION, round_number=1)


def assert_all_equal_rule(outcomes: list[Any], rows: torch.Tensor, peers: list[str], rule: Any,
                          roster: list[str], skip: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """Every member (but `skip`) ends with rule(rows of `roster`), with `roster` as its roster."""
    index = {p: i for i, p in enumerate(peers)}
    expected = rule(rows[[index[p] for p in sorted(roster)]], seed=round_seed(FEDERATION, 1))
    for i, outcome in enumerate(outcomes):
        if i in skip:
            continue
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.roster == sorted(roster)
        assert torch.allclose(outcome.result.aggregate, expected.aggregate, rtol=1e-5, atol=1e-6)
        assert torch.equal(outcome.result.aggregate, outcomes[min(set(range(len(outcomes))) - set(skip))].result.aggregate)


@pytest.mark.parametrize("leader_has_it", [True, False])
def test_members_that_closed_on_different_headers_agree_on_the_leaders_roster(leader_has_it: bool) -> None:
    """Half the members close the round without a straggler's header (it reaches them 1 s later).
    Before roster agreement they derived other owners and the round fell back to all-to-all; now
    every member adopts the first leader's roster: with the straggler when the leader had its
    header (the others wait for it), without it otherwise (the straggler then only fetches the
    aggregate)."""
    rows = sample_rows(7, 40, seed=13)
    rule = build("median", f=1)
    peers = [member_identity(7, i).peer_id for i in range(7)]
    leader = peers.index(leaders_of(peers)[0])
    straggler = next(i for i in range(7) if i != leader)
    lagging = [i for i in range(7) if i not in (leader, straggler)][:3]
    if not leader_has_it:
        lagging.append(leader)
    hidden = {i: ({straggler}, 1.0 if i != leader else float("inf")) for i in lagging}
    peers, outcomes, exchanges = asyncio.run(exchange_round(rows, rule, parts=7, hidden=hidden))
    roster = peers if leader_has_it else [p for k, p in enumerate(peers) if k != straggler]
    assert_all_equal_rule(outcomes, rows, peers, rule, roster)
    assert all(exchange.fallbacks == 0 for exchange in exchanges)


@pytest.mark.parametrize("fault", ["withhold", "forge"])
def test_a_faulty_leader_passes_the_turn_to_the_next(fault: str) -> None:
    """A first leader that proposes nothing, or a roster with a parts root its sender did not
    sign: every member takes the second leader's roster (f = 1: two leaders)."""
    rows = sample_rows(7, 40, seed=17)
    rule = build("multi_krum", f=1)
    peers = [member_identity(7, i).peer_id for i in range(7)]
    leader = peers.index(leaders_of(peers)[0])
    behaviour = OwnerBehaviour(withhold_roster=True) if fault == "withhold" else OwnerBehaviour(forge_roster=True)
    peers, outcomes, _ = asyncio.run(
        exchange_round(rows, rule, parts=7, behaviours={leader: behaviour}, roster_wait=0.5))
    # The forger checks its own proposal against the signed headers like everyone else.
    assert_all_equal_rule(outcomes, rows, peers, rule, peers)


def test_a_leader_that_signs_two_rosters_is_not_followed() -> None:
    exchange = ButterflyExchange(peer_id="a", federation_id=FEDERATION, numel=10, config=ButterflyConfig(parts=2),
                                 transport=MeshLink(None, None, []))
    header = model_pb2.UpdateHeader(sender_peer_id="b", parts=2, parts_root=bytes(32))
    one = control_pb2.RosterProposal(round=1)
    one.entries.add(sender_peer_id="b", parts_root=bytes(32))
    exchange.on_message("L", control_pb2.ButterflyMessage(proposal=one), b"first")
    assert exchange._proposal_verdict(1, "L", {"b": header})[0] == "ok"
    assert exchange._proposal_verdict(1, "L", {})[0] == "pending"  # b's header not here yet
    two = control_pb2.RosterProposal(round=1)
    two.entries.add(sender_peer_id="b", parts_root=bytes(32))
    two.entries.add(sender_peer_id="c", parts_root=bytes(32))
    exchange.on_message("L", control_pb2.ButterflyMessage(proposal=two), b"second")
    assert exchange._proposal_verdict(1, "L", {"b": header})[0] == "invalid"


def test_leader_order_is_a_pure_function_of_the_ids_federation_and_round() -> None:
    peers = [f"peer-{i}" for i in range(20)]
    first = leader_order(peers, federation_id="f", round_number=3)
    assert first == leader_order(list(reversed(peers)), federation_id="f", round_number=3)
    assert sorted(first) == sorted(peers)
    assert first != leader_order(peers, federation_id="f", round_number=4)


class LateLeaderLink(MeshLink):
    """A leader whose proposal goes out well after every member's turn for it ended (a slow member)."""

    async def send(self, message: control_pb2.ButterflyMessage, to: Sequence[str] | None) -> None:
        if message.WhichOneof("body") == "proposal":
            await asyncio.sleep(1.5)
        await super().send(message, to)


def test_a_late_leader_is_still_followed_while_no_later_leader_proposed() -> None:
    """f = 0: one leader. Its proposal arrives after its turn (roster_wait 0.3 s) ended; with no
    other leader to take the turn, every member still adopts it instead of falling back."""
    rows = sample_rows(6, 30, seed=19)
    rule = build("mean", f=0)
    peers = [member_identity(7, i).peer_id for i in range(6)]
    leader = peers.index(leaders_of(peers)[0])
    peers, outcomes, exchanges = asyncio.run(
        exchange_round(rows, rule, parts=6, links={leader: LateLeaderLink}, roster_wait=0.3))
    assert_all_equal_rule(outcomes, rows, peers, rule, peers)
    assert all(exchange.fallbacks == 0 for exchange in exchanges)
