"""The butterfly exchange: robust aggregation over parts, with traffic per member independent of n.

With ``federation.exchange = "butterfly"`` a sync round runs as follows (docs/butterfly.md):

1. Every member cuts its decoded dense update into m contiguous parts (`PartLayout(d, m)`),
   serves each part as a blob (content id = sha256 of its raw little-endian float32 values) and
   gossips its `UpdateHeader` with the Merkle root over the parts (`merkle_root`). No member
   fetches another's whole update.
2. When the round closes, the roster is the senders whose headers arrived (canonical order).
   `assign_owners` (a seed from (federation, round)) gives every part r = f + 1 owners. Each
   member pushes to every owner a signed `PartOffer` (its parts' hashes and Merkle proofs), and
   each owner fetches its parts from their senders: the reduce-scatter.
3. The owners run the partwise session of the rule (fednode.aggregators.partwise): for every
   request each owner serves the canonical partial of its parts and gossips a signed
   `OwnerClaim` with the partials' hashes; every member fetches each part's partial from one
   owner whose hash the other owners confirm, and derives the same next request, then the same
   decision. The last step's claims carry the hashes of the aggregated parts, which every member
   fetches from one owner (all-gather) and assembles into the aggregate.
4. Owners that disagree (a partial or aggregated part of two owners differ) make every member
   recompute that part itself from the n input parts (pulled from their senders, checked
   against the Merkle roots); every owner whose signed claim is then false beyond the float64
   rounding bound (fednode.aggregators.partwise.verify) is reported with its signed claim as
   proof (`owner_false_claim` event) and excluded from the exchange. An owner that stays silent
   is waited for `grace` seconds after the first claim of its part; the others' claims decide.

Anything that cannot complete (an offer or part that never comes, owners that disagree about
the roster, no claim at all for a part) raises `ButterflyFailed`; the runner then aggregates
that round all-to-all (the senders also serve their whole encoded payloads).

The in-process plumbing (signing, validation, push or gossip) is the runner's: this module sees
a small `ButterflyTransport`. Why not hivemind's averager: it has no Byzantine robustness, no
Gram-based rules and its own DHT and transport; the partwise rules and this protocol are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from fednode.aggregators import AggregationError, AggregationResult, Aggregator
from fednode.aggregators.partwise import (
    PartInput,
    PartLayout,
    Session,
    apply_decision,
    compute_partial,
    decode_partial,
    encode_partial,
)
from fednode.aggregators.partwise.verify import check_aggregated_part, check_partial
from fednode.node.scheduler.owners import PartOwners, assign_owners, leader_order
from fednode.proto.v1 import control_pb2, model_pb2

log = logging.getLogger("fednode.federation.butterfly")

EXCHANGES = ("all_to_all", "butterfly")
_LEAF = b"\x00fednode/v1/part-leaf"
_NODE = b"\x01"
# Rounds this far ahead of the newest one aggregated are not buffered (bounds what a peer can
# make a member hold).
MAX_ROUNDS_AHEAD = 16


class ButterflyFailed(Exception):
    """The round cannot be aggregated by parts (the runner falls back to all-to-all)."""


# ---------------------------------------------------------------------- Merkle commitments


def part_bytes(values: torch.Tensor) -> bytes:
    """Canonical bytes of a part: raw little-endian float32."""
    return values.detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def part_values(data: bytes | bytearray, width: int) -> torch.Tensor:
    if len(data) != 4 * width:
        raise ButterflyFailed(f"a part of {width} values must have {4 * width} bytes, got {len(data)}")
    return torch.from_numpy(np.frombuffer(bytes(data), dtype="<f4").astype(np.float32))


def _leaf(index: int, part_sha256: bytes) -> bytes:
    return hashlib.sha256(_LEAF + index.to_bytes(4, "little") + bytes(part_sha256)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _levels(part_digests: Sequence[bytes]) -> list[list[bytes]]:
    level = [_leaf(j, digest) for j, digest in enumerate(part_digests)]
    levels = [level]
    while len(level) > 1:
        # An odd last node is promoted unchanged to the next level.
        level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def merkle_root(part_digests: Sequence[bytes]) -> bytes:
    """Root over the parts' sha256 (leaves bind each part's index)."""
    if not part_digests:
        raise ValueError("merkle_root needs at least one part")
    return _levels(part_digests)[-1][0]


def merkle_proof(part_digests: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling hashes from part `index`'s leaf to the root (levels without a sibling skipped)."""
    proof = []
    for level in _levels(part_digests)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


def verify_proof(root: bytes, index: int, parts: int, part_sha256: bytes, proof: Sequence[bytes]) -> bool:
    """True when `proof` takes part `index`'s leaf (of `parts`) to `root`."""
    if not 0 <= index < parts or len(part_sha256) != 32:
        return False
    node, width, used = _leaf(index, part_sha256), parts, 0
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if used >= len(proof) or len(proof[used]) != 32:
                return False
            node = _node(node, bytes(proof[used])) if index % 2 == 0 else _node(bytes(proof[used]), node)
            used += 1
        index //= 2
        width = (width + 1) // 2
    return used == len(proof) and node == bytes(root)


def roster_digest(roster: Sequence[tuple[str, bytes]]) -> bytes:
    """sha256 over the roster's (sender id, parts root) pairs, in the given (canonical) order."""
    digest = hashlib.sha256(b"fednode/v1/butterfly-roster")
    for peer, root in roster:
        encoded = peer.encode()
        digest.update(len(encoded).to_bytes(4, "little") + encoded + bytes(root))
    return digest.digest()


# ---------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ButterflyConfig:
    """`parts`: m, the same for every member (a header with another count is refused);
    `replicas`: owners per part (None: the rule's f + 1); `grace`: seconds an owner's claim is
    waited for after the first claim of its part; `timeout`: seconds any one wait of the exchange
    may take before the round falls back to all-to-all; `roster_wait`: seconds each round leader's
    roster proposal is waited for before the next leader's is taken (`agree_roster`)."""

    parts: int
    replicas: int | None = None
    grace: float = 1.0
    timeout: float = 60.0
    roster_wait: float = 20.0

    def __post_init__(self) -> None:
        if self.parts < 1:
            raise ValueError(f"butterfly parts must be >= 1, got {self.parts}")
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"butterfly replicas must be >= 1, got {self.replicas}")
        if not self.roster_wait > 0:
            raise ValueError(f"butterfly roster_wait must be > 0 seconds, got {self.roster_wait}")


def butterfly_config(federation: Any) -> ButterflyConfig | None:
    """The exchange's settings from a config's federation section (None: all-to-all)."""
    if federation.exchange != "butterfly":
        return None
    return ButterflyConfig(
        parts=federation.butterfly_parts or federation.min_participants,
        replicas=federation.butterfly_replicas or None,
        grace=federation.butterfly_grace,
        timeout=federation.butterfly_timeout,
        roster_wait=federation.butterfly_roster_wait,
    )


@dataclass(frozen=True)
class OwnerBehaviour:
    """How a Byzantine member misbehaves as an owner (tests, simulation, benchmarks): `lie`
    perturbs every partial and aggregated part it claims; `silent_from_step` stops its claims
    (and serving) from that step of the session on; `withhold_roster` / `forge_roster`: as a round
    leader it proposes no roster, or one with a parts root its sender did not sign."""

    lie: bool = False
    silent_from_step: int | None = None
    withhold_roster: bool = False  # as a round leader, proposes no roster
    forge_roster: bool = False  # as a round leader, proposes a wrong parts root for another member


class ButterflyTransport(Protocol):
    """What the exchange needs from its runner: signed sends and content-addressed blobs."""

    async def send(self, message: control_pb2.ButterflyMessage, to: Sequence[str] | None) -> None:
        """Sign and deliver to the peers `to` (None: every member)."""

    def serve(self, digest: bytes, data: bytes) -> None: ...

    def unserve(self, digest: bytes) -> None: ...

    async def fetch(self, digest: bytes, providers: Sequence[str], max_size: int) -> bytes | bytearray: ...


# ---------------------------------------------------------------------- per-round state


@dataclass
class _Received:
    # sender -> part -> its offer entry. Offers a sender could not push to their owner travel by
    # gossip and reach everyone: a member merges every offer of a sender (the Merkle proofs, not
    # the addressing, make an entry usable).
    offers: dict[str, dict[int, control_pb2.PartOffer.Entry]] = field(default_factory=dict)
    offer_rosters: dict[str, bytes] = field(default_factory=dict)  # sender -> its offers' roster digest
    claims: dict[tuple[str, int], tuple[control_pb2.OwnerClaim, bytes, float]] = field(default_factory=dict)
    proposals: dict[str, bytes] = field(default_factory=dict)  # leader -> its first roster proposal (serialized)
    equivocated: set[str] = field(default_factory=set)  # leaders that signed two different proposals
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _OwnPublication:
    dense: torch.Tensor
    digests: list[bytes]
    root: bytes


@dataclass
class ButterflyOutcome:
    """The aggregate and what the exchange saw: the roster, the parts recomputed locally, the
    owners caught in a false claim."""

    result: AggregationResult
    roster: list[str]
    recomputed_parts: list[int]
    false_claims: list[str]
    steps: int
    payload_sha256: dict[str, bytes] = field(default_factory=dict)  # roster member -> its header's payload hash


@dataclass(frozen=True)
class FalseClaim:
    """An owner's signed claim that recomputation from the inputs refuted."""

    owner: str
    round: int
    step: int
    part: int
    detail: str
    envelope: bytes  # the owner's signed OwnerClaim (the proof)


class ButterflyExchange:
    """One member's side of the butterfly exchange, across rounds (see the module docstring)."""

    def __init__(
        self,
        *,
        peer_id: str,
        federation_id: str,
        numel: int,
        config: ButterflyConfig,
        transport: ButterflyTransport,
        on_event: Callable[..., None] | None = None,
        behaviour: OwnerBehaviour | None = None,
    ) -> None:
        if config.parts > numel:
            raise ValueError(f"butterfly parts ({config.parts}) cannot exceed the model's {numel} parameters")
        self.peer_id = peer_id
        self.federation_id = federation_id
        self.config = config
        self.layout = PartLayout(numel, config.parts)
        self.transport = transport
        self.on_event = on_event or (lambda kind, **fields: None)
        self.behaviour = behaviour or OwnerBehaviour()
        self.excluded: set[str] = set()  # owners caught in a false claim: their messages are ignored
        self.false_claims: list[FalseClaim] = []
        self._received: dict[int, _Received] = {}
        self._own: dict[int, _OwnPublication] = {}
        self._served: dict[int, list[bytes]] = {}
        self._newest = 0
        self._agreed: dict[int, list[str]] = {}  # rounds aggregated by parts -> their (agreed) roster
        self.fallbacks = 0

    # ------------------------------------------------------------------ sender side
    def publish(self, number: int, dense: torch.Tensor) -> tuple[bytes, int]:
        """Cut our round-`number` update into parts and serve them; (parts root, m) for the header."""
        flat = dense.detach().reshape(-1).to(torch.float32)
        if flat.numel() != self.layout.d:
            raise ValueError(f"update has {flat.numel()} values, the layout {self.layout.d}")
        digests = []
        for j in range(self.layout.m):
            data = part_bytes(flat[self.layout.part(j)])
            digest = hashlib.sha256(data).digest()
            self._serve(number, digest, data)
            digests.append(digest)
        root = merkle_root(digests)
        self._own[number] = _OwnPublication(flat, digests, root)
        return root, self.layout.m

    def header_problem(self, header: model_pb2.UpdateHeader) -> str | None:
        """Why a header cannot take part in the exchange (None: it can)."""
        if header.sender_peer_id in self.excluded:
            return "sender was excluded for a false owner claim"
        if header.parts != self.layout.m:
            return f"update cut into {header.parts} parts, the federation uses {self.layout.m} (federation.butterfly_parts)"
        if len(header.parts_root) != 32:
            return "parts_root must have 32 bytes"
        return None

    # ------------------------------------------------------------------ receiving
    def on_message(self, sender: str, message: control_pb2.ButterflyMessage, envelope: bytes) -> None:
        """A valid, signed butterfly message from `sender` (the runner checked the envelope)."""
        if sender in self.excluded:
            return
        body = message.WhichOneof("body")
        number = (message.offer.round if body == "offer" else message.claim.round if body == "claim"
                  else message.proposal.round if body == "proposal" else None)
        if number is None or number + 2 < self._newest or number > self._newest + MAX_ROUNDS_AHEAD:
            return
        state = self._received.setdefault(number, _Received())
        if body == "proposal":
            data = message.proposal.SerializeToString(deterministic=True)
            first = state.proposals.setdefault(sender, data)
            if first != data and sender not in state.equivocated:
                state.equivocated.add(sender)
                log.warning("round %d: leader %s signed two different roster proposals; it is not followed",
                            number, sender[-8:], extra={"event": "roster_equivocation", "round": number,
                                                        "peer_id": sender})
                self.on_event("roster_equivocation", peer_id=sender, round=number, proof=envelope)
        elif body == "offer":
            entries = state.offers.setdefault(sender, {})
            for entry in message.offer.entries:
                entries.setdefault(entry.part, entry)
            state.offer_rosters.setdefault(sender, bytes(message.offer.roster_sha256))
        else:
            key = (sender, message.claim.step)
            if key not in state.claims:  # the first claim of an owner for a step is the one it stands by
                state.claims[key] = (message.claim, envelope, time.monotonic())
        state.changed.set()

    def finish(self, number: int) -> None:
        """Round `number` is over here: drop its state and stop serving rounds before it."""
        self._newest = max(self._newest, number)
        for old in [n for n in self._received if n <= number]:
            del self._received[old]
        for old in [n for n in self._own if n <= number]:
            del self._own[old]
        for old in [n for n in self._agreed if n < number]:
            del self._agreed[old]
        for old in [n for n in self._served if n < number]:
            for digest in self._served.pop(old):
                self.transport.unserve(digest)

    def _serve(self, number: int, digest: bytes, data: bytes) -> None:
        self.transport.serve(digest, data)
        self._served.setdefault(number, []).append(digest)

    # ------------------------------------------------------------------ roster agreement
    def _usable(self, headers: Mapping[str, model_pb2.UpdateHeader]) -> dict[str, model_pb2.UpdateHeader]:
        return {p: h for p, h in headers.items() if p not in self.excluded and self.header_problem(h) is None}

    async def _propose(self, number: int, headers: Mapping[str, model_pb2.UpdateHeader]) -> None:
        """As round `number`'s leader: sign and send the roster we closed the round on."""
        proposal = control_pb2.RosterProposal(round=number)
        for peer, header in sorted(self._usable(headers).items()):
            root = bytes(header.parts_root)
            if self.behaviour.forge_roster and peer != self.peer_id:
                root = hashlib.sha256(b"forged" + root).digest()
            proposal.entries.add(sender_peer_id=peer, parts_root=root)
        state = self._received.setdefault(number, _Received())
        state.proposals.setdefault(self.peer_id, proposal.SerializeToString(deterministic=True))
        if self.behaviour.withhold_roster:
            return
        await self.transport.send(control_pb2.ButterflyMessage(proposal=proposal), None)

    def _proposal_verdict(
        self, number: int, leader: str, headers: Mapping[str, model_pb2.UpdateHeader],
    ) -> tuple[str, str, dict[str, model_pb2.UpdateHeader]]:
        """("ok" | "pending" | "invalid", why, the roster's headers) for `leader`'s proposal. The
        verdict "invalid" is the same on every honest member (it rests on signed messages alone:
        the proposal and the senders' headers), "pending" waits for headers still on their way."""
        state = self._received.setdefault(number, _Received())
        if leader in state.equivocated:
            return "invalid", "it signed two different proposals", {}
        data = state.proposals.get(leader)
        if data is None:
            return "pending", "no proposal yet", {}
        proposal = control_pb2.RosterProposal.FromString(data)
        peers = [e.sender_peer_id for e in proposal.entries]
        if not peers or peers != sorted(set(peers)):
            return "invalid", "its roster is empty or not in canonical order", {}
        chosen: dict[str, model_pb2.UpdateHeader] = {}
        missing = []
        for entry in proposal.entries:
            peer = entry.sender_peer_id
            if peer in self.excluded:
                return "invalid", f"it lists {peer[-8:]}, excluded for a false owner claim", {}
            header = headers.get(peer)
            if header is None:
                missing.append(peer)
                continue
            if bytes(header.parts_root) != bytes(entry.parts_root):
                return "invalid", f"it lists a parts root {peer[-8:]} did not sign", {}
            problem = self.header_problem(header)
            if problem is not None:
                return "invalid", f"it lists {peer[-8:]}, whose header is unusable ({problem})", {}
            chosen[peer] = header
        if missing:
            return "pending", f"headers of {', '.join(p[-8:] for p in missing)} not here yet", {}
        return "ok", "", chosen

    def roster_proposed(self, number: int, headers: Mapping[str, model_pb2.UpdateHeader]) -> bool:
        """A round leader's usable roster proposal for round `number` is here: a member may close
        the round on it rather than wait for its own deadline (the senders in that roster wait
        for nothing else to send their offers)."""
        state = self._received.get(number)
        if state is None or not state.proposals:
            return False
        return any(p in state.proposals and self._proposal_verdict(number, p, headers)[0] == "ok"
                   for p in self._leaders(number, headers, None))

    def _leaders(self, number: int, headers: Mapping[str, model_pb2.UpdateHeader], leaders: int | None) -> list[str]:
        """Round `number`'s leaders in turn order: the previous round's agreed roster ranked,
        its first `leaders`; without one (first round, after a fallback), every sender whose
        header or proposal is here, ranked (members with other headers then converge on the
        best-ranked proposer, since every proposer's proposal reaches everyone)."""
        previous = self._agreed.get(number - 1)
        if previous is not None:
            pool = [p for p in previous if p not in self.excluded]
            ranked = leader_order(pool, federation_id=self.federation_id, round_number=number)
            return ranked[:max(1, leaders)] if leaders is not None else ranked
        state = self._received.get(number)
        proposers = set(state.proposals) if state is not None else set()
        pool = [p for p in set(self._usable(headers)) | proposers if p not in self.excluded]
        return leader_order(pool, federation_id=self.federation_id, round_number=number)

    async def agree_roster(
        self, number: int, headers: Callable[[], Mapping[str, model_pb2.UpdateHeader]], leaders: int,
    ) -> tuple[list[str], dict[str, model_pb2.UpdateHeader], str]:
        """Round `number`'s roster, the same on every honest member under the precondition below:
        (roster in canonical order, its headers, the leader whose proposal it is).

        Leaders (`_leaders`): the previous round's agreed roster (the one aggregated by parts
        here) ranked by `leader_order` (federation, round), first `leaders` of them (f + 1: at
        least one honest one); without one, every sender whose header or proposal is here. Leader i's turn ends `roster_wait` x (i + 1) after
        we closed the round (one `roster_wait` later when its proposal is here but lists headers
        not yet here); a proposal every honest member finds invalid from signed messages alone
        (a root its sender did not sign, two different proposals, an excluded member) ends it at
        once, and so does a later leader's proposal when this leader's is absent (that later
        leader gave up on it). We adopt the first usable proposal in leader order among the
        leaders whose turn is not over, else the first usable one at all (a late leader's is
        still taken while no later leader proposed), waiting up to the exchange's timeout. Each
        leader proposes the headers it holds once the turns before its own are over.
        Precondition for agreement: the previous round's roster is agreed, and the adopted
        leader's proposal reaches every honest member before a later leader's does. When it does
        not hold, members adopt different rosters, the roster digests of offers and claims
        differ, and the round falls back to all-to-all (ButterflyFailed), as without this step;
        f faulty leaders delay a round by at most f x roster_wait."""
        loop = asyncio.get_running_loop()
        state = self._received.setdefault(number, _Received())
        ranked = self._leaders(number, headers(), leaders)
        if not ranked:
            raise ButterflyFailed(f"round {number}: no member to lead the roster agreement")
        wait = self.config.roster_wait
        start = loop.time()
        # No usable proposal at all: keep waiting (a late leader's proposal is still adopted when
        # no later leader's came) up to the exchange's timeout, or every leader's turn.
        end = start + max(self.config.timeout, wait * len(ranked))
        skipped: dict[str, str] = {}
        while True:
            now = loop.time()
            ranked = self._leaders(number, headers(), leaders)  # grows with proposals without an agreed pool
            for i, leader in enumerate(ranked):
                if leader != self.peer_id or leader in state.proposals or now < start + i * wait:
                    continue
                better = [p for p in ranked[:i] if self._proposal_verdict(number, p, headers())[0] != "invalid"
                          and p in state.proposals]
                if not better:
                    await self._propose(number, headers())  # our turn: the leaders before us gave up or lied
            for i, leader in enumerate(ranked):
                verdict, why, chosen = self._proposal_verdict(number, leader, headers())
                turn_over = now >= start + (i + 1) * wait + (wait if leader in state.proposals else 0.0)
                later = any(p in state.proposals for p in ranked[i + 1:])
                if verdict == "ok" and not (turn_over and later):
                    if i:
                        log.info("round %d: roster of leader %s (turn %d) adopted", number, leader[-8:], i + 1)
                    return sorted(chosen), chosen, leader
                if verdict != "pending" or turn_over or (later and leader not in state.proposals):
                    if leader not in skipped:
                        skipped[leader] = why if verdict == "invalid" or not later else "a later leader proposed"
                        log.info("round %d: roster of leader %s passed over (%s)", number, leader[-8:], skipped[leader],
                                 extra={"event": "roster_leader_skipped", "round": number, "peer_id": leader})
                    continue
                break  # this leader's turn is still on: wait for it
            if now >= end:
                raise ButterflyFailed(f"round {number}: none of the {len(ranked)} round leaders' roster proposals "
                                      f"was usable within {end - start:.0f} s")
            state.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.changed.wait(), timeout=min(0.5, max(0.0, end - loop.time())))

    # ------------------------------------------------------------------ the round
    async def aggregate(
        self,
        number: int,
        headers: Mapping[str, model_pb2.UpdateHeader] | Callable[[], Mapping[str, model_pb2.UpdateHeader]],
        rule: Aggregator,
        *,
        seed: int | None,
        center: torch.Tensor | None = None,
        rule_for: Callable[[int], Aggregator] | None = None,
    ) -> ButterflyOutcome:
        """Aggregate round `number` by parts over the roster agreed from `headers` (sender -> its
        header, ours included; or a callable giving the headers held now, which may grow while
        the roster is agreed); what `rule(rows, seed=, center=)` returns on the decoded rows in
        canonical order, up to the bound documented in fednode.aggregators.partwise. `rule_for`
        (n): the rule for an agreed roster of n members (default: `rule`)."""
        view: Callable[[], Mapping[str, model_pb2.UpdateHeader]] = (
            headers if callable(headers) else (lambda: headers))  # type: ignore[assignment,return-value]
        leaders = self.config.replicas or (rule.f + 1)
        roster, chosen, _ = await self.agree_roster(number, view, leaders)
        if rule_for is not None:
            rule = rule_for(len(roster))
        own = self._own.get(number)
        if self.peer_id in roster and own is None:
            raise ButterflyFailed(f"round {number}: no update of ours was cut into parts")
        n, m = len(roster), self.layout.m
        replicas = min(n, self.config.replicas or (rule.f + 1))
        owners = assign_owners(roster, m, federation_id=self.federation_id, round_number=number, replicas=replicas)
        digest = roster_digest([(p, bytes(chosen[p].parts_root)) for p in roster])
        round_ = _Round(self, number, roster, chosen, owners, digest, own, rule, seed, center)
        outcome = await round_.run()
        outcome.payload_sha256 = {p: bytes(chosen[p].payload_sha256) for p in roster}
        self._agreed[number] = roster
        return outcome


class _Round:
    """One member's run of one round's exchange (state that lives only while it runs)."""

    def __init__(
        self, exchange: ButterflyExchange, number: int, roster: list[str], headers: dict[str, model_pb2.UpdateHeader],
        owners: PartOwners, digest: bytes, own: _OwnPublication | None, rule: Aggregator, seed: int | None,
        center: torch.Tensor | None,
    ) -> None:
        self.x = exchange
        self.number = number
        self.roster = roster
        self.headers = headers
        self.owners = owners
        self.roster_sha256 = digest
        self.own = own
        self.rule = rule
        self.seed = seed
        self.center = center
        self.layout = exchange.layout
        self.me = exchange.peer_id
        self.mine = owners.parts_of(self.me)
        self.state = exchange._received.setdefault(number, _Received())
        self.inputs: dict[int, PartInput] = {}
        self.inputs_blob: dict[int, tuple[bytes, bytes]] = {}  # part -> (sha256, serialized PartInputs)
        self.recomputed: list[int] = []
        self.caught: list[str] = []
        self.behaviour = exchange.behaviour

    # -------------------------------------------------------------- helpers
    async def _wait(self, ready: Callable[[], bool], what: str, deadline: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        end = deadline if deadline is not None else loop.time() + self.x.config.timeout
        while not ready():
            if loop.time() >= end:
                raise ButterflyFailed(f"round {self.number}: {what} not within {self.x.config.timeout:.0f} s")
            self.state.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.state.changed.wait(), timeout=min(0.5, max(0.0, end - loop.time())))

    def _silent(self, step: int) -> bool:
        silent = self.behaviour.silent_from_step
        return silent is not None and step >= silent

    # -------------------------------------------------------------- reduce-scatter
    async def _send_offers(self) -> None:
        if self.own is None or self.me not in self.roster:
            return  # our update is not in the agreed roster: we only fetch the aggregate
        own = self.own
        by_owner: dict[str, list[int]] = {}
        for j, part_owners in enumerate(self.owners.owners):
            for owner in part_owners:
                if owner != self.me:
                    by_owner.setdefault(owner, []).append(j)
        sends = []
        for owner, parts in sorted(by_owner.items()):
            offer = control_pb2.PartOffer(round=self.number, parts_root=own.root, roster_sha256=self.roster_sha256)
            for j in parts:
                offer.entries.add(part=j, part_sha256=own.digests[j], proof=merkle_proof(own.digests, j))
            sends.append(self.x.transport.send(control_pb2.ButterflyMessage(offer=offer), [owner]))
        await asyncio.gather(*sends)

    def _offer_entry(self, sender: str, part: int) -> control_pb2.PartOffer.Entry | None:
        return self.state.offers.get(sender, {}).get(part)

    async def _gather_inputs(self) -> None:
        """As an owner: every roster member's parts of ours, checked against its parts root."""
        needed = [s for s in self.roster if s != self.me]
        def offered() -> bool:
            return all(self.state.offer_rosters.get(s, self.roster_sha256) != self.roster_sha256
                       or all(j in self.state.offers.get(s, {}) for j in self.mine) for s in needed)

        await self._wait(offered, "parts offers from every sender")
        for j in self.mine:
            self.layout.width(j)
            entries: list[tuple[str, bytes, list[bytes]]] = []
            for sender in self.roster:
                if sender == self.me:
                    assert self.own is not None  # we are in the roster only with an update of ours
                    entries.append((sender, self.own.digests[j], merkle_proof(self.own.digests, j)))
                    continue
                if self.state.offer_rosters[sender] != self.roster_sha256:
                    raise ButterflyFailed(f"round {self.number}: {sender[-8:]} closed the round with another roster "
                                          f"than ours ({len(self.roster)} members)")
                entry = self._offer_entry(sender, j)
                root = bytes(self.headers[sender].parts_root)
                if entry is None or not verify_proof(root, j, self.layout.m, bytes(entry.part_sha256), list(entry.proof)):
                    # A sender that offers no valid part cannot be aggregated by parts this round.
                    raise ButterflyFailed(f"round {self.number}: {sender[-8:]} offered no valid part {j}")
                entries.append((sender, bytes(entry.part_sha256), [bytes(p) for p in entry.proof]))
            rows = await asyncio.gather(*(self._fetch_part(sender, j, digest, [sender]) for sender, digest, _ in entries))
            self.inputs[j] = self._part_input(j, list(rows))
            message = control_pb2.PartInputs(round=self.number, part=j)
            for sender, digest, proof in entries:
                message.entries.add(sender_peer_id=sender, part_sha256=digest, proof=proof)
            data = message.SerializeToString(deterministic=True)
            blob_digest = hashlib.sha256(data).digest()
            self.x._serve(self.number, blob_digest, data)
            self.inputs_blob[j] = (blob_digest, data)

    async def _fetch_part(self, sender: str, j: int, digest: bytes, providers: list[str]) -> torch.Tensor:
        if sender == self.me:
            assert self.own is not None
            return self.own.dense[self.layout.part(j)]
        width = self.layout.width(j)
        try:
            data = await asyncio.wait_for(self.x.transport.fetch(digest, providers, 4 * width), self.x.config.timeout)
        except Exception as exc:
            raise ButterflyFailed(f"round {self.number}: part of {sender[-8:]} not fetched: {exc}") from exc
        return part_values(data, width)

    def _part_input(self, j: int, rows: list[torch.Tensor]) -> PartInput:
        center = None if self.center is None else self.center[self.layout.part(j)]
        return PartInput(self.layout, j, torch.stack(rows), center)

    # -------------------------------------------------------------- claims
    async def _claim(self, step: int, values: dict[int, bytes], kind: str) -> None:
        if self._silent(step):
            return
        claim = control_pb2.OwnerClaim(round=self.number, step=step, roster_sha256=self.roster_sha256)
        for j in sorted(values):
            data = self._perturb(values[j])  # a lying owner serves and signs its false value
            digest = hashlib.sha256(data).digest()
            self.x._serve(self.number, digest, data)
            entry = claim.entries.add(part=j, inputs_sha256=self.inputs_blob[j][0])
            if kind == "partial":
                entry.partial_sha256 = digest
            else:
                entry.result_sha256 = digest
        await self.x.transport.send(control_pb2.ButterflyMessage(claim=claim), None)

    def _claims_for(self, step: int, part: int, kind: str) -> dict[str, tuple[bytes, bytes, bytes]]:
        """Owner -> (claimed sha256, inputs sha256, signed envelope) for `part` at `step`, from
        owners of the part that are not excluded and agree with our roster."""
        found = {}
        for owner in self.owners.owners[part]:
            if owner == self.me or owner in self.x.excluded:
                continue
            received = self.state.claims.get((owner, step))
            if received is None:
                continue
            claim, envelope, _ = received
            if claim.roster_sha256 != self.roster_sha256:
                continue  # another view of the round's roster: not comparable (treated as silence)
            for entry in claim.entries:
                if entry.part == part:
                    digest = bytes(entry.partial_sha256 if kind == "partial" else entry.result_sha256)
                    if len(digest) == 32:
                        found[owner] = (digest, bytes(entry.inputs_sha256), envelope)
                    break
        return found

    async def _collect(
        self, step: int, kind: str, own_values: dict[int, bytes],
        recompute: Callable[[PartInput], bytes], check: Callable[[PartInput, bytes], Any], max_size: Callable[[int], int],
    ) -> list[bytes]:
        """Every part's agreed value at `step`: ours for our parts; else fetched from an owner
        once every owner claimed it (or `grace` passed after the first claim) and the claims agree;
        recomputed from the inputs when they disagree (owners refuted by `check` are reported)."""
        loop = asyncio.get_running_loop()
        grace = self.x.config.grace
        others = [j for j in range(self.layout.m) if j not in own_values]
        # The grace runs from the first claim of a part; for our own parts, from our own claim.
        first_seen: dict[int, float] = {j: loop.time() for j in own_values}
        # Our own parts too: a co-owner's false claim about a part we own is seen by us as by
        # every non-owner, so every honest member excludes the same owners.

        def settled(j: int) -> bool:
            claims = self._claims_for(step, j, kind)
            expected = [o for o in self.owners.owners[j] if o != self.me and o not in self.x.excluded]
            if len(claims) >= len(expected):
                return True
            if claims:
                first_seen.setdefault(j, loop.time())
            return j in first_seen and loop.time() - first_seen[j] >= grace

        await self._wait(lambda: all(settled(j) for j in range(self.layout.m)), f"step {step} claims for every part")
        values = dict(own_values)
        for j, data in own_values.items():
            digest = hashlib.sha256(data).digest()
            for owner, (claimed_digest, _, envelope) in sorted(self._claims_for(step, j, kind).items()):
                if claimed_digest != digest:
                    await self._refute(owner, step, j, kind, claimed_digest, envelope, self.inputs[j], check, max_size)

        async def resolve(j: int) -> None:
            claims = self._claims_for(step, j, kind)
            if not claims:
                raise ButterflyFailed(f"round {self.number}: no owner claimed part {j} at step {step}")
            digests = {digest for digest, _, _ in claims.values()}
            if len(digests) == 1:
                digest = next(iter(digests))
                try:
                    data = await asyncio.wait_for(self.x.transport.fetch(digest, sorted(claims), max_size(j)),
                                                  self.x.config.timeout)
                    values[j] = bytes(data)
                    return
                except Exception as exc:
                    log.warning("round %d: part %d's %s not fetched from its owners (%s); recomputing it",
                                self.number, j, kind, exc)
            values[j] = await self._dispute(step, j, kind, claims, recompute, check, max_size)

        await asyncio.gather(*(resolve(j) for j in others))
        return [values[j] for j in range(self.layout.m)]

    async def _dispute(
        self, step: int, j: int, kind: str, claims: dict[str, tuple[bytes, bytes, bytes]],
        recompute: Callable[[PartInput], bytes], check: Callable[[PartInput, bytes], Any], max_size: Callable[[int], int],
    ) -> bytes:
        """Recompute part `j` from its inputs; report every owner whose claim is false."""
        part = await self._local_inputs(j, claims)
        truth = recompute(part)
        self.recomputed.append(j)
        for owner, (digest, _, envelope) in sorted(claims.items()):
            if digest != hashlib.sha256(truth).digest():
                await self._refute(owner, step, j, kind, digest, envelope, part, check, max_size)
        return truth

    async def _refute(
        self, owner: str, step: int, j: int, kind: str, digest: bytes, envelope: bytes, part: PartInput,
        check: Callable[[PartInput, bytes], Any], max_size: Callable[[int], int],
    ) -> None:
        """Check an owner's claimed value (other than ours) against the inputs; report it if false."""
        try:
            claimed = bytes(await asyncio.wait_for(self.x.transport.fetch(digest, [owner], max_size(j)),
                                                   self.x.config.timeout))
            verdict = check(part, claimed)
            refuted, detail = not verdict.ok, verdict.detail
        except Exception as exc:
            # It signed a hash and does not serve, or serves what does not parse: the hash of
            # the correct value is known, and its claim is not that.
            refuted, detail = True, f"claimed {kind} {digest.hex()[:16]} does not match the recomputation ({exc})"
        if refuted:
            self._report(owner, step, j, detail, envelope)

    async def _local_inputs(self, j: int, claims: dict[str, tuple[bytes, bytes, bytes]]) -> PartInput:
        """Part `j`'s n input parts, from an owner's PartInputs whose every proof checks against
        the senders' roots, fetched from their senders (or the claiming owners)."""
        if j in self.inputs:
            return self.inputs[j]
        for inputs_digest in sorted({inputs for _, inputs, _ in claims.values()}):
            providers = sorted(o for o, (_, inputs, _) in claims.items() if inputs == inputs_digest)
            try:
                data = await self.x.transport.fetch(inputs_digest, providers, 256 * len(self.roster) * 64)
                message = control_pb2.PartInputs.FromString(bytes(data))
            except Exception as exc:
                log.info("round %d: inputs of part %d not usable from %s: %s", self.number, j, providers, exc)
                continue
            senders = [e.sender_peer_id for e in message.entries]
            if message.part != j or message.round != self.number or senders != self.roster or not all(
                verify_proof(bytes(self.headers[e.sender_peer_id].parts_root), j, self.layout.m,
                             bytes(e.part_sha256), list(e.proof)) for e in message.entries):
                continue
            rows = await asyncio.gather(*(
                self._fetch_part(e.sender_peer_id, j, bytes(e.part_sha256), [e.sender_peer_id, *providers])
                for e in message.entries))
            part = self._part_input(j, list(rows))
            self.inputs[j] = part
            return part
        raise ButterflyFailed(f"round {self.number}: no owner of part {j} gave inputs that check against the roots")

    def _report(self, owner: str, step: int, part: int, detail: str, envelope: bytes) -> None:
        if owner in self.x.excluded:
            return
        claim = FalseClaim(owner, self.number, step, part, detail, envelope)
        self.x.false_claims.append(claim)
        self.x.excluded.add(owner)
        self.caught.append(owner)
        log.warning("round %d: owner %s signed a false claim for part %d (step %d): %s; it is excluded",
                    self.number, owner[-8:], part, step, detail,
                    extra={"event": "owner_false_claim", "round": self.number, "peer_id": owner})
        self.x.on_event("owner_false_claim", peer_id=owner, round=self.number, part=part, step=step,
                        detail=detail, proof=envelope)

    # -------------------------------------------------------------- the session
    def _perturb(self, data: bytes) -> bytes:
        """A lying owner's version of its value: same size, different numbers."""
        if not self.behaviour.lie:
            return data
        raw = bytearray(data)
        tail = len(raw) - (len(raw) % 8)
        values = np.frombuffer(bytes(raw[len(raw) - tail:]), dtype=np.uint8).copy()
        if values.size:
            values[-8:] ^= 0x5A  # flips bits of the last value (a float64 partial, or two float32s)
            raw[len(raw) - tail:] = values.tobytes()
        return bytes(raw)

    async def run(self) -> ButterflyOutcome:
        await self._send_offers()
        if self.mine:
            await self._gather_inputs()
        session = Session(self.rule, self.layout, len(self.roster), dtype=torch.float32, seed=self.seed)
        step = 0
        while session.request is not None:
            request = session.request
            # The numerics run off the event loop (as the all-to-all rule does): a large part's
            # Gram matrix takes long enough to delay every message this member handles.
            def own_partials(request: Any = request) -> dict[int, bytes]:
                return {j: encode_partial(compute_partial(request, self.inputs[j])) for j in self.mine}

            own = await asyncio.to_thread(own_partials)
            await self._claim(step, own, "partial")
            if self._silent(step):
                raise ButterflyFailed(f"round {self.number}: this owner went silent (owner behaviour)")
            shapes = {j: session.expected_shapes(j) for j in range(self.layout.m)}

            def recompute_partial(part: PartInput, request: Any = request) -> bytes:
                return encode_partial(compute_partial(request, part))

            def check(part: PartInput, claimed: bytes, request: Any = request, shapes: Any = shapes) -> Any:
                return check_partial(request, part, decode_partial(claimed, shapes[part.index]))

            def partial_size(j: int, shapes: Any = shapes) -> int:
                return 64 + sum(8 * int(np.prod(s)) for s in shapes[j].values())

            encoded = await self._collect(step, "partial", own, recompute_partial, check, partial_size)
            try:
                partials = [decode_partial(encoded[j], shapes[j]) for j in range(self.layout.m)]
                session.receive(partials)
            except AggregationError as exc:
                raise ButterflyFailed(f"round {self.number}: partials unusable: {exc}") from exc
            step += 1
        decision = session.outcome.decision
        own_parts = await asyncio.to_thread(
            lambda: {j: part_bytes(apply_decision(decision, self.inputs[j])) for j in self.mine})
        await self._claim(step, own_parts, "result")
        if self._silent(step):
            raise ButterflyFailed(f"round {self.number}: this owner went silent (owner behaviour)")

        def recompute_result(part: PartInput) -> bytes:
            return part_bytes(apply_decision(decision, part))

        def check_result(part: PartInput, claimed: bytes) -> Any:
            return check_aggregated_part(decision, part, part_values(claimed, part.layout.width(part.index)))

        encoded = await self._collect(step, "result", own_parts, recompute_result, check_result, lambda j: 4 * self.layout.width(j))
        parts = [part_values(encoded[j], self.layout.width(j)) for j in range(self.layout.m)]
        result = session.assemble(parts)
        return ButterflyOutcome(result, self.roster, sorted(set(self.recomputed)), self.caught, step + 1)
