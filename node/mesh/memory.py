"""An in-memory mesh: many members in one process and one asyncio loop, on a simulated network.

`InMemoryNetwork` holds the members and the network between them; ``network.join(peer_id)``
makes an `InMemoryMesh`, which implements `MeshPort` (fednode.node.mesh.port) with the real
mesh's semantics where federation code depends on them, so the same round code runs over it at
unit speed and federations of hundreds of members fit on one machine. docs/simulation.md says
what it models and what it does not.

Network conditions are injectable, seeded and deterministic for a given sequence of calls:

* per directed link (`LinkConditions`): one-way latency, bandwidth (a transfer occupies the link
  for ``bytes / bandwidth`` seconds; transfers on one link queue behind each other, so the
  messages of a link arrive in the order they were sent) and loss (a gossip hop or a push is
  dropped; a blob transfer breaks part way and the fetch resumes from the next provider, as the
  real mesh does); optional per-member uplink bandwidth shared by all its outgoing transfers;
* partitions: groups of members that cannot reach each other (``partition``/``heal``, at any
  time); messages across are lost, dials and fetches across fail after ``dial_timeout``.

Loss and the gossip overlay are drawn from generators seeded by (seed, link) and (seed, topic,
member), so one link's draws do not depend on traffic elsewhere. Time is the event loop's clock.

Why not a library: what is needed is the mesh's own contract (validators before delivery,
providers, resumable fetches, record validators) over a simulated network inside one asyncio
loop; network simulators (ns-3, simpy) model packets or processes, not this contract.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import (
    BlobNotFoundError,
    BlobTooLargeError,
    DialError,
    FetchError,
    MeshClosedError,
    MeshError,
    MessageTooLargeError,
)
from .types import (
    GossipMessage,
    MeshEvent,
    MeshStats,
    PeerConnected,
    PeerDisconnected,
    PeerInfo,
    Reachability,
    RecordValidator,
    StatsCollector,
    Validator,
)

log = logging.getLogger(__name__)

KIB = 1024
CONTENT_ID_LEN = 32
DHT_REPLICATION = 20  # records are stored at and read from this many closest members (Kademlia's k)
_SEEN_CACHE = 100_000  # gossip message ids a member remembers (duplicates are dropped unvalidated)


@dataclass(frozen=True)
class LinkConditions:
    """One direction of a link between two members."""

    latency: float = 0.0  # seconds, one way
    bandwidth: float | None = None  # bytes per second; None = unlimited
    loss: float = 0.0  # probability that a gossip hop or a push is lost, or that a blob transfer breaks

    def __post_init__(self) -> None:
        if not self.latency >= 0.0:
            raise ValueError(f"latency must be >= 0 seconds, got {self.latency}")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s or None, got {self.bandwidth}")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")


@dataclass
class Traffic:
    """Payload bytes one member sent and received, by kind (what the real mesh's stats count:
    gossip data, pushed messages, blob content; no framing, encryption or DHT traffic)."""

    sent: dict[str, int] = field(default_factory=lambda: {"gossip": 0, "push": 0, "blob": 0})
    received: dict[str, int] = field(default_factory=lambda: {"gossip": 0, "push": 0, "blob": 0})

    @property
    def bytes_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def bytes_received(self) -> int:
        return sum(self.received.values())

    def copy(self) -> Traffic:
        return Traffic(dict(self.sent), dict(self.received))


class InMemoryNetwork:
    """The simulated network and its members; see the module docstring.

    ``gossip_degree`` is GossipSub's D: each member forwards a topic's messages to about that many
    subscribed neighbours (never fewer than ``degree_low`` while it has enough connections,
    never more than ``degree_high``), so a member's gossip traffic does not grow with the
    federation, as with the real mesh.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        conditions: LinkConditions | None = None,
        gossip_degree: int = 6,
        degree_low: int = 4,
        degree_high: int = 12,
        max_gossip_bytes: int = 64 * KIB,
        max_blob_size: int = 1 << 30,
        record_validators: Mapping[str, RecordValidator] | None = None,
        max_record_size: int = 128 * KIB,
        dial_timeout: float = 1.0,
        event_queue_size: int = 10_000,
    ) -> None:
        if not 0 < degree_low <= gossip_degree <= degree_high:
            raise ValueError("need 0 < degree_low <= gossip_degree <= degree_high")
        if dial_timeout < 0:
            raise ValueError("dial_timeout must be >= 0")
        self.seed = seed
        self.default_conditions = conditions or LinkConditions()
        self.degree = gossip_degree
        self.degree_low = degree_low
        self.degree_high = degree_high
        self.max_gossip_bytes = max_gossip_bytes
        self.max_blob_size = max_blob_size
        self.record_validators = dict(record_validators or {})
        self.max_record_size = max_record_size
        self.dial_timeout = dial_timeout
        self.event_queue_size = event_queue_size
        self.members: dict[str, InMemoryMesh] = {}
        self._links: dict[tuple[str, str], LinkConditions] = {}
        self._link_rng: dict[tuple[str, str], random.Random] = {}
        self._link_free_at: dict[tuple[str, str], float] = {}
        self._uplink: dict[str, float] = {}
        self._uplink_free_at: dict[str, float] = {}
        self._component: dict[str, int] = {}  # member -> partition group (absent: group 0)
        self._connections: dict[str, set[str]] = {}
        self._overlay: dict[str, dict[str, set[str]]] = {}  # topic -> member -> gossip neighbours
        self._providers: dict[bytes, set[str]] = {}
        self._traffic: dict[str, Traffic] = {}

    # ------------------------------------------------------------------ members
    def join(self, peer_id: str, *, uplink_bandwidth: float | None = None) -> InMemoryMesh:
        """A new member (call ``await mesh.start()`` before using it). A peer id may join again
        once its previous mesh stopped (a restarted node)."""
        current = self.members.get(peer_id)
        if current is not None and current.state != "stopped":
            raise MeshError(f"{peer_id} is already a member of this network")
        if uplink_bandwidth is not None:
            if not uplink_bandwidth > 0:
                raise ValueError("uplink_bandwidth must be > 0 bytes/s")
            self._uplink[peer_id] = uplink_bandwidth
        mesh = InMemoryMesh(self, peer_id)
        self.members[peer_id] = mesh
        self._traffic.setdefault(peer_id, Traffic())
        return mesh

    def running(self) -> list[InMemoryMesh]:
        return [m for m in self.members.values() if m.state == "running"]

    def traffic(self, peer_id: str) -> Traffic:
        """Bytes this member sent and received so far (a copy)."""
        return self._traffic.get(peer_id, Traffic()).copy()

    # ------------------------------------------------------------------ conditions
    def set_conditions(self, conditions: LinkConditions) -> None:
        """The conditions of every link not set with `set_link`."""
        self.default_conditions = conditions

    def set_link(self, a: str, b: str, conditions: LinkConditions, *, both_ways: bool = True) -> None:
        self._links[(a, b)] = conditions
        if both_ways:
            self._links[(b, a)] = conditions

    def link(self, src: str, dst: str) -> LinkConditions:
        return self._links.get((src, dst), self.default_conditions)

    def partition(self, *groups: Iterable[str]) -> None:
        """Members of different groups cannot reach each other from now on; members named in no
        group form one more group together. Replaces any earlier partition. Connections stay
        open (as through a short outage): what is sent across them is lost."""
        self._component = {}
        for index, group in enumerate(groups, start=1):
            for member in group:
                self._component[member] = index

    def heal(self) -> None:
        """Every member can reach every other again."""
        self._component = {}

    def reachable(self, a: str, b: str) -> bool:
        return self._component.get(a, 0) == self._component.get(b, 0)

    def _rng(self, src: str, dst: str) -> random.Random:
        rng = self._link_rng.get((src, dst))
        if rng is None:
            rng = self._link_rng[(src, dst)] = random.Random(f"{self.seed}:{src}:{dst}")
        return rng

    def _transmit(self, src: str, dst: str, size: int, kind: str) -> float:
        """Occupy the link (and the sender's uplink) for `size` bytes starting when both are
        free; returns the seconds from now until the last byte arrives. Counts the bytes."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        link = self.link(src, dst)
        rates = [r for r in (link.bandwidth, self._uplink.get(src)) if r is not None]
        start = max(now, self._link_free_at.get((src, dst), now), self._uplink_free_at.get(src, now))
        finish = start + (size / min(rates) if rates else 0.0)
        if rates:
            self._link_free_at[(src, dst)] = finish
            if src in self._uplink:
                self._uplink_free_at[src] = finish
        self._traffic[src].sent[kind] += size
        return finish + link.latency - now

    def _lost(self, src: str, dst: str) -> bool:
        loss = self.link(src, dst).loss
        return loss > 0.0 and self._rng(src, dst).random() < loss

    # ------------------------------------------------------------------ connections
    def _connect(self, a: str, b: str) -> None:
        peers = self._connections.setdefault(a, set())
        if b in peers:
            return
        peers.add(b)
        self._connections.setdefault(b, set()).add(a)
        for topic in self._overlay:
            self._graft(topic, a)
            self._graft(topic, b)
        self.members[a]._emit(PeerConnected(b, "direct", _address(b)))
        self.members[b]._emit(PeerConnected(a, "direct", _address(a)))

    def disconnect(self, a: str, b: str) -> None:
        """Close the connection between two members (both see PeerDisconnected)."""
        if b not in self._connections.get(a, set()):
            return
        self._connections[a].discard(b)
        self._connections[b].discard(a)
        for topic, overlay in self._overlay.items():
            overlay.get(a, set()).discard(b)
            overlay.get(b, set()).discard(a)
            self._graft(topic, a)
            self._graft(topic, b)
        for member, other in ((a, b), (b, a)):
            mesh = self.members.get(member)
            if mesh is not None and mesh.state == "running":
                mesh._emit(PeerDisconnected(other))

    def connected(self, peer_id: str) -> set[str]:
        return set(self._connections.get(peer_id, set()))

    # ------------------------------------------------------------------ gossip overlay
    def _subscribed(self, topic: str, peer_id: str) -> bool:
        mesh = self.members.get(peer_id)
        return mesh is not None and mesh.state == "running" and topic in mesh._validators

    def _graft(self, topic: str, member: str) -> None:
        """Bring `member`'s gossip neighbours on `topic` up to D from its connected subscribers
        (seeded choice), never past D_high for either side (GossipSub's graft)."""
        overlay = self._overlay.setdefault(topic, {})
        if not self._subscribed(topic, member):
            return
        mine = overlay.setdefault(member, set())
        if len(mine) >= self.degree_low:
            return
        candidates = sorted(
            p for p in self._connections.get(member, set())
            if p not in mine and self._subscribed(topic, p) and len(overlay.get(p, set())) < self.degree_high
        )
        random.Random(f"{self.seed}:{topic}:{member}:{len(mine)}").shuffle(candidates)
        for peer in candidates[: self.degree - len(mine)]:
            mine.add(peer)
            overlay.setdefault(peer, set()).add(member)

    def _leave_overlay(self, topic: str, member: str) -> None:
        overlay = self._overlay.get(topic, {})
        for peer in overlay.pop(member, set()):
            overlay.get(peer, set()).discard(member)
            self._graft(topic, peer)

    def gossip_neighbours(self, topic: str, peer_id: str) -> set[str]:
        return set(self._overlay.get(topic, {}).get(peer_id, set()))

    def _forward(self, sender: str, topic: str, data: bytes, origin: str, message_id: tuple[str, int],
                 exclude: str | None) -> None:
        targets = self._overlay.get(topic, {}).get(sender, set())
        if not targets and sender == origin:
            # Not subscribed (or no neighbours yet): GossipSub's fanout to connected subscribers.
            targets = {p for p in self._connections.get(sender, set()) if self._subscribed(topic, p)}
        loop = asyncio.get_running_loop()
        for peer in sorted(targets):
            if peer in (exclude, origin) or not self.reachable(sender, peer):
                continue
            delay = self._transmit(sender, peer, len(data), "gossip")
            if self._lost(sender, peer):
                continue
            loop.call_later(delay, self._gossip_arrives, sender, peer, topic, data, origin, message_id)

    def _gossip_arrives(self, sender: str, receiver: str, topic: str, data: bytes, origin: str,
                        message_id: tuple[str, int]) -> None:
        mesh = self.members.get(receiver)
        if mesh is None or mesh.state != "running" or not self.reachable(sender, receiver):
            return
        self._traffic[receiver].received["gossip"] += len(data)
        if mesh._seen(message_id):
            return  # a duplicate from another neighbour: dropped before validation
        validator = mesh._validators.get(topic)
        if validator is None:
            return
        if not mesh._accept(validator, data, origin):
            return  # refused: counted, neither delivered nor forwarded
        mesh._stats.add("gossip_received")
        mesh._stats.add("gossip_bytes_received", len(data))
        mesh._emit(GossipMessage(topic, data, origin, time.time()))
        self._forward(receiver, topic, data, origin, message_id, exclude=sender)

    # ------------------------------------------------------------------ DHT
    def _closest(self, key: bytes, to: str) -> list[InMemoryMesh]:
        """The running members closest to `key` by XOR distance that `to` can reach (itself excluded)."""
        target = int.from_bytes(hashlib.sha256(key).digest(), "big")
        reachable = [m for m in self.running() if m.peer_id != to and self.reachable(to, m.peer_id)]
        reachable.sort(key=lambda m: int.from_bytes(hashlib.sha256(m.peer_id.encode()).digest(), "big") ^ target)
        return reachable[:DHT_REPLICATION]

    def _record_validator(self, key: str) -> RecordValidator:
        parts = key.split("/")
        namespace = parts[1] if len(parts) > 2 and parts[0] == "" else ""
        rules = self.record_validators.get(namespace)
        if rules is None:
            raise ValueError(f"record refused: no validator for the namespace of {key!r}")
        return rules

    def _valid_record(self, key: str, value: bytes) -> bool:
        try:
            if len(value) > self.max_record_size:
                return False
            self._record_validator(key).validate(key, value)
        except Exception:
            return False
        return True


def _address(peer_id: str) -> str:
    return f"/memory/p2p/{peer_id}"


class InMemoryMesh:
    """One member of an `InMemoryNetwork`; implements `MeshPort`, plus the introspection the
    real `Mesh` offers (peers, stats, serving, topic_peers). Use from the network's event loop."""

    def __init__(self, network: InMemoryNetwork, peer_id: str) -> None:
        self.network = network
        self.peer_id = peer_id
        self.events: asyncio.Queue[MeshEvent] = asyncio.Queue(maxsize=network.event_queue_size)
        self.state = "new"
        self._stats = StatsCollector()
        self._validators: dict[str, Validator] = {}
        self._blobs: dict[bytes, bytes] = {}
        self._records: dict[str, bytes] = {}
        self._seen_ids: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._sequence = 0
        self._connected_at: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self, bootstrap: Iterable[str] = ()) -> None:
        """Start, then dial the `bootstrap` members (unreachable ones are logged, not raised)."""
        if self.state != "new":
            raise MeshError("a mesh can be started once")
        self.state = "running"
        for peer in bootstrap:
            try:
                await self.connect_peer(peer)
            except DialError as exc:
                log.info("bootstrap peer %s unreachable: %s", peer[-8:], exc)

    async def stop(self) -> None:
        """Leave the network: connections close (peers see PeerDisconnected), blobs and records
        held here are gone, provider records stay (as DHT records outlive their node)."""
        if self.state == "stopped":
            return
        self.state = "stopped"
        net = self.network
        for topic in list(net._overlay):
            net._leave_overlay(topic, self.peer_id)
        for peer in sorted(net._connections.get(self.peer_id, set())):
            net.disconnect(self.peer_id, peer)
        self._validators.clear()
        self._blobs.clear()
        self._records.clear()

    async def __aenter__(self) -> InMemoryMesh:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def _require_running(self) -> None:
        if self.state != "running":
            raise MeshClosedError("the mesh is not running")

    def _emit(self, event: MeshEvent) -> None:
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self._stats.add("events_dropped")

    def _seen(self, message_id: tuple[str, int]) -> bool:
        if message_id in self._seen_ids:
            return True
        self._seen_ids[message_id] = None
        if len(self._seen_ids) > _SEEN_CACHE:
            self._seen_ids.popitem(last=False)
        return False

    def _accept(self, validator: Validator, data: bytes, from_peer: str) -> bool:
        """The topic validator's verdict, with the real mesh's counting of refusals."""
        if len(data) > self.network.max_gossip_bytes:
            self._stats.reject("oversized")
            return False
        try:
            reason = validator(data, from_peer)
        except Exception:
            log.exception("validator raised; rejecting the message")
            reason = "validator_error"
        if reason is None:
            return True
        self._stats.reject(str(reason))
        return False

    # ------------------------------------------------------------------ introspection
    @property
    def max_gossip_bytes(self) -> int:
        return self.network.max_gossip_bytes

    def listen_multiaddrs(self) -> list[str]:
        return [_address(self.peer_id)] if self.running else []

    def reachability(self) -> Reachability:
        return Reachability("public", 0, 0, (), None)

    def peers(self) -> list[PeerInfo]:
        net = self.network
        result = []
        for peer in sorted(net._connections.get(self.peer_id, set())):
            latency = net.link(self.peer_id, peer).latency + net.link(peer, self.peer_id).latency
            result.append(PeerInfo(peer, (_address(peer),), "direct", 1000 * latency,
                                   self._connected_at.get(peer, 0.0)))
        return result

    def stats(self) -> MeshStats:
        return self._stats.snapshot()

    def serving(self) -> list[bytes]:
        return list(self._blobs)

    async def topic_peers(self, topic: str) -> list[str]:
        net = self.network
        return sorted(p for p in net._connections.get(self.peer_id, set()) if net._subscribed(topic, p))

    async def connect_peer(self, peer_id: str) -> None:
        """Connect to a member (one round trip). Raises DialError when it is not running or not
        reachable (after the network's dial_timeout)."""
        self._require_running()
        net = self.network
        if peer_id == self.peer_id:
            raise DialError("cannot dial ourselves")
        if peer_id in net._connections.get(self.peer_id, set()):
            return
        other = net.members.get(peer_id)
        if other is None or other.state != "running" or not net.reachable(self.peer_id, peer_id):
            await asyncio.sleep(net.dial_timeout)
            raise DialError(f"{peer_id} is unreachable")
        await asyncio.sleep(net.link(self.peer_id, peer_id).latency + net.link(peer_id, self.peer_id).latency)
        if other.state != "running" or self.state != "running" or not net.reachable(self.peer_id, peer_id):
            raise DialError(f"{peer_id} went away while connecting")
        now = time.time()
        self._connected_at[peer_id] = other._connected_at[self.peer_id] = now
        net._connect(self.peer_id, peer_id)

    # ------------------------------------------------------------------ gossip and push
    async def subscribe(self, topic: str, validator: Validator) -> None:
        """Join `topic`: its messages reach `events` once `validator` accepted them. Subscribing
        again replaces the validator."""
        self._require_running()
        self._validators[topic] = validator
        net = self.network
        net._graft(topic, self.peer_id)
        for peer in sorted(net._connections.get(self.peer_id, set())):
            net._graft(topic, peer)

    async def unsubscribe(self, topic: str) -> None:
        if self._validators.pop(topic, None) is not None:
            self.network._leave_overlay(topic, self.peer_id)

    async def publish(self, topic: str, data: bytes) -> None:
        """Gossip `data` on `topic`: every reachable subscriber gets it once, by flooding over
        the gossip overlay (each hop delayed, and possibly lost, by its link)."""
        self._require_running()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("publish() takes bytes")
        if len(data) > self.network.max_gossip_bytes:
            raise MessageTooLargeError(
                f"gossip message of {len(data)} bytes exceeds max_message_size {self.network.max_gossip_bytes}; "
                "gossip metadata and fetch the payload as a blob"
            )
        data = bytes(data)
        self._sequence += 1
        message_id = (self.peer_id, self._sequence)
        self._seen(message_id)
        self._stats.add("gossip_published")
        self._stats.add("gossip_bytes_published", len(data))
        self.network._forward(self.peer_id, topic, data, self.peer_id, message_id, exclude=None)

    async def push(self, topic: str, data: bytes, peers: Iterable[str]) -> list[str]:
        """Send `data` straight to each connected, reachable peer of `peers`; returns those it was
        handed to (no acknowledgement: a lossy link may still drop it). Receivers validate it
        like gossip and deliver it with ``direct`` set."""
        if len(data) > self.network.max_gossip_bytes:
            raise MessageTooLargeError(
                f"message of {len(data)} bytes exceeds max_message_size {self.network.max_gossip_bytes}"
            )
        if self.state != "running":
            return []
        net = self.network
        data = bytes(data)
        loop = asyncio.get_running_loop()
        handed = []
        for peer in dict.fromkeys(peers):
            if peer == self.peer_id or peer not in net._connections.get(self.peer_id, set()):
                continue
            if not net.reachable(self.peer_id, peer):
                continue  # the kernel takes the bytes; they never arrive
            delay = net._transmit(self.peer_id, peer, len(data), "push")
            self._stats.add("pushes_sent")
            self._stats.add("push_bytes_sent", len(data))
            handed.append(peer)
            if not net._lost(self.peer_id, peer):
                loop.call_later(delay, self._push_arrives, peer, topic, data)
        return handed

    def _push_arrives(self, receiver: str, topic: str, data: bytes) -> None:
        net = self.network
        mesh = net.members.get(receiver)
        if mesh is None or mesh.state != "running" or not net.reachable(self.peer_id, receiver):
            return
        net._traffic[receiver].received["push"] += len(data)
        validator = mesh._validators.get(topic)
        if validator is None:
            mesh._stats.reject("unsubscribed_topic")
            return
        if not mesh._accept(validator, data, self.peer_id):
            return
        mesh._stats.add("pushes_received")
        mesh._stats.add("push_bytes_received", len(data))
        mesh._emit(GossipMessage(topic, data, self.peer_id, time.time(), direct=True))

    # ------------------------------------------------------------------ blobs
    def serve_blob(self, content_id: bytes, data: bytes | bytearray | memoryview) -> None:
        """Serve `data` under ``content_id = sha256(data)`` (checked; a copy is kept)."""
        if len(data) > self.network.max_blob_size:
            raise MessageTooLargeError(f"blob of {len(data)} bytes exceeds max_blob_size {self.network.max_blob_size}")
        blob = bytes(data)
        if len(content_id) != CONTENT_ID_LEN or hashlib.sha256(blob).digest() != bytes(content_id):
            raise ValueError("content_id must be the sha256 of data")
        self._blobs[bytes(content_id)] = blob

    def unserve_blob(self, content_id: bytes) -> bool:
        return self._blobs.pop(bytes(content_id), None) is not None

    async def fetch_blob(
        self, content_id: bytes, providers: Iterable[str], *, max_size: int | None = None
    ) -> bytearray:
        """Fetch a blob from the first provider that has it, as the real mesh does: providers in
        order; a transfer that breaks (loss, partition) resumes at the received offset with the
        next provider. Raises BlobTooLargeError above `max_size`, BlobNotFoundError when every
        provider lacks it, FetchError (with per-provider reasons) otherwise."""
        self._require_running()
        content_id = bytes(content_id)
        if len(content_id) != CONTENT_ID_LEN:
            raise ValueError("content_id must be a 32-byte sha256")
        net = self.network
        limit = net.max_blob_size if max_size is None else min(max_size, net.max_blob_size)
        local = self._blobs.get(content_id)
        if local is not None:
            if len(local) > limit:
                raise BlobTooLargeError(f"blob of {len(local)} bytes exceeds max_size {limit}")
            return bytearray(local)
        candidates = list(dict.fromkeys(p for p in providers if p != self.peer_id))
        if not candidates:
            self._stats.add("fetches_failed")
            raise FetchError("no provider to fetch from")
        reasons: dict[str, str] = {}
        received = 0
        for peer in candidates:
            if received:
                self._stats.add("fetch_resumes")
            provider = net.members.get(peer)
            if provider is None or provider.state != "running" or not net.reachable(self.peer_id, peer):
                await asyncio.sleep(net.dial_timeout)
                reasons[peer] = "unreachable: no route to the peer"
                continue
            await asyncio.sleep(net.link(self.peer_id, peer).latency)  # the request
            self._require_running()
            blob = provider._blobs.get(content_id) if provider.state == "running" else None
            if blob is None:
                provider._stats.refuse("not_found")
                reasons[peer] = "not_found"
                continue
            if len(blob) > limit:
                provider._stats.refuse("too_large")
                reasons[peer] = "too_large"
                self._stats.add("fetches_failed")
                raise BlobTooLargeError(f"blob is {len(blob)} bytes, above max_size {limit}", reasons)
            remaining = len(blob) - received
            breaks = net._lost(peer, self.peer_id)
            moved = int(remaining * net._rng(peer, self.peer_id).random()) if breaks else remaining
            await asyncio.sleep(net._transmit(peer, self.peer_id, moved, "blob"))
            self._require_running()
            if not net.reachable(self.peer_id, peer):
                reasons[peer] = "connection: the peer became unreachable mid-transfer"
                continue  # what was in flight is lost
            net._traffic[self.peer_id].received["blob"] += moved
            provider._stats.add("blob_bytes_sent", moved)
            self._stats.add("blob_bytes_received", moved)
            self._stats.add("fetch_attempts_fast_path")
            received += moved
            if breaks:
                reasons[peer] = "connection: the transfer broke"
                continue
            provider._stats.add("uploads_served")
            self._stats.add("fetches_ok")
            return bytearray(blob)
        self._stats.add("fetches_failed")
        if all(r == "not_found" for r in reasons.values()):
            raise BlobNotFoundError(f"no provider has {content_id.hex()}", reasons)
        raise FetchError(f"could not fetch {content_id.hex()}: {reasons}", reasons)

    # ------------------------------------------------------------------ DHT
    async def provide(self, key: bytes) -> None:
        self._require_running()
        self.network._providers.setdefault(bytes(key), set()).add(self.peer_id)

    async def find_providers(self, key: bytes, count: int = 20) -> list[str]:
        """At most `count` members that provided `key` (never this one), stopped ones included:
        provider records outlive their node, as on the real DHT. Each member gets them in its
        own seeded order, as lookups from different places of the DHT do (were every member
        given the same first `count`, every connection would go to the same few members)."""
        self._require_running()
        found = sorted(self.network._providers.get(bytes(key), set()) - {self.peer_id})
        random.Random(f"{self.network.seed}:{self.peer_id}:{bytes(key).hex()}").shuffle(found)
        return found[:count]

    async def put_record(self, key: str, value: bytes) -> None:
        """Validate and store `value` here and at the closest reachable members (each keeps the
        better of its value and this one, by the namespace's `select`). Raises ValueError for a
        value the namespace's validator refuses, or when this member holds a better one."""
        self._require_running()
        net = self.network
        value = bytes(value)
        if len(value) > net.max_record_size:
            raise ValueError(f"record of {len(value)} bytes exceeds {net.max_record_size}")
        rules = net._record_validator(key)
        try:
            rules.validate(key, value)
        except Exception as exc:
            raise ValueError(f"record refused: {exc}") from exc
        held = self._records.get(key)
        if held is not None and held != value and rules.select(key, [value, held]) != 0:
            raise ValueError("this node holds a better record for the key; merge it first")
        self._records[key] = value
        holders = net._closest(key.encode(), self.peer_id)
        # The holders are asked in parallel: the slowest one-way latency among them.
        await asyncio.sleep(max((net.link(self.peer_id, h.peer_id).latency for h in holders), default=0.0))
        for holder in holders:
            if holder.state != "running" or not net.reachable(self.peer_id, holder.peer_id):
                continue
            theirs = holder._records.get(key)
            if theirs is None or (theirs != value and rules.select(key, [value, theirs]) == 0):
                holder._records[key] = value

    async def get_records(self, key: str) -> list[bytes]:
        """Every distinct valid value of `key` held here or by the closest reachable members."""
        self._require_running()
        net = self.network
        net._record_validator(key)
        values: list[bytes] = []
        others = net._closest(key.encode(), self.peer_id)
        # The holders are asked in parallel: the slowest round trip among them.
        await asyncio.sleep(max((net.link(self.peer_id, h.peer_id).latency + net.link(h.peer_id, self.peer_id).latency
                                 for h in others), default=0.0))
        self._require_running()
        for holder in [self, *others]:
            if holder is not self and (holder.state != "running" or not net.reachable(self.peer_id, holder.peer_id)):
                continue
            value = holder._records.get(key)
            if value is not None and value not in values and net._valid_record(key, value):
                values.append(value)
        return values


__all__ = ["InMemoryMesh", "InMemoryNetwork", "LinkConditions", "Traffic"]
