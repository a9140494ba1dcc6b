"""Small, immutable values the mesh hands to the node: events, peer views, reachability, stats.

Everything here is plain Python (str, bytes, float) so the node never sees a libp2p object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

ConnectionKind = Literal["direct", "relayed", "hole-punched"]
ReachabilityStatus = Literal["unknown", "public", "private"]

#: A topic validator: ``validator(data, from_peer)`` returns None to accept the message, or a short
#: reason (e.g. "bad_signature") to reject it. It runs in the networking thread for every message
#: before it is delivered or forwarded, so it must be cheap, must not block, and must be thread-safe.
Validator = Callable[[bytes, str], "str | None"]


@dataclass(frozen=True)
class RecordValidator:
    """Rules for the DHT records of one namespace (keys ``/<namespace>/...``).

    ``validate(key, value)`` raises ValueError for a record that must not be stored or returned;
    ``select(key, values)`` returns the index of the best of several valid values (every node must
    pick the same). Both run in the networking thread for every record put to or read from this
    node: cheap, non-blocking, thread-safe. Keys of namespaces without a validator are refused.
    """

    validate: Callable[[str, bytes], None]
    select: Callable[[str, list[bytes]], int]


@dataclass(frozen=True)
class GossipMessage:
    """A validated message on a subscribed topic (never one this node published): from GossipSub,
    or pushed straight to us over the fast path (`direct`), in which case the same bytes usually
    arrive by gossip too."""

    topic: str
    data: bytes
    # Gossip: the originator (GossipSub signatures are checked by the library). Push: the peer the
    # fast path authenticated, which honest peers only use for their own messages.
    from_peer: str
    received_at: float  # time.time() when the message was delivered
    direct: bool = False  # pushed over the fast path (Mesh.push), not gossiped
    # The topic's validator accepted these bytes in another process (the daemon, for the training
    # worker's RemoteMesh): their envelope signature needs no second verification.
    signature_verified: bool = False


@dataclass(frozen=True)
class PeerConnected:
    """The first connection to a peer opened (further parallel connections are not reported)."""

    peer_id: str
    connection: ConnectionKind
    address: str  # the remote multiaddr of that connection


@dataclass(frozen=True)
class PeerDisconnected:
    """The last connection to a peer closed."""

    peer_id: str


@dataclass(frozen=True)
class ReachabilityChanged:
    """AutoNAT changed its verdict about this node."""

    status: ReachabilityStatus


MeshEvent = GossipMessage | PeerConnected | PeerDisconnected | ReachabilityChanged


@dataclass(frozen=True)
class PeerInfo:
    """What the mesh knows about a connected peer."""

    peer_id: str
    addrs: tuple[str, ...]  # remote multiaddrs of the open connections
    connection: ConnectionKind  # best open connection: direct or hole-punched beats relayed
    latency_ms: float | None  # last ping round trip; None until measured
    last_seen: float  # time.time() of the last connection, ping or message from this peer


@dataclass(frozen=True)
class Reachability:
    """AutoNAT's verdict: can other peers dial this node directly?"""

    status: ReachabilityStatus
    public_votes: int  # peers that dialed us back successfully
    private_votes: int  # peers that tried and failed
    relay_addrs: tuple[str, ...]  # /p2p-circuit addresses reserved on relays, if any
    checked_at: float | None  # time.time() of the last check; None before the first


@dataclass(frozen=True)
class MeshStats:
    """Counters since start(). Bytes are payload bytes (gossip data, blob content)."""

    gossip_published: int
    gossip_bytes_published: int
    gossip_received: int
    gossip_bytes_received: int
    gossip_rejected: dict[str, int]  # reason -> count (validator reasons, "oversized", ...), pushes included
    blob_bytes_sent: int
    blob_bytes_received: int
    uploads_served: int  # transfer requests answered OK (both paths)
    uploads_refused: dict[str, int]  # status -> count ("not_found", "busy", "too_large", ...)
    fetches_ok: int
    fetches_failed: int
    fetch_resumes: int  # times a fetch continued from an offset with another attempt
    fetch_hash_mismatches: int
    fetch_attempts_fast_path: int
    fetch_attempts_libp2p: int
    fast_path_auth_failures: int
    events_dropped: int  # events lost because the queue was full
    pushes_sent: int = 0  # messages pushed to a peer over the fast path (Mesh.push)
    push_bytes_sent: int = 0
    pushes_received: int = 0  # pushed messages accepted and delivered (rejections: gossip_rejected)
    push_bytes_received: int = 0


# Bounds on caller-supplied reject reasons, so a buggy validator cannot grow the stats without limit.
_MAX_REASON_LEN = 64
_MAX_REASONS = 64


@dataclass
class StatsCollector:
    """Thread-safe counters written by the networking thread and the asyncio side."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    counters: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + amount

    def reject(self, reason: str) -> None:
        reason = (reason or "rejected")[:_MAX_REASON_LEN]
        with self._lock:
            if reason not in self.rejected and len(self.rejected) >= _MAX_REASONS:
                reason = "other"
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def refuse(self, status: str) -> None:
        with self._lock:
            self.refused[status] = self.refused.get(status, 0) + 1

    def snapshot(self) -> MeshStats:
        with self._lock:
            c = dict(self.counters)
            rejected = dict(self.rejected)
            refused = dict(self.refused)
        return MeshStats(
            gossip_published=c.get("gossip_published", 0),
            gossip_bytes_published=c.get("gossip_bytes_published", 0),
            gossip_received=c.get("gossip_received", 0),
            gossip_bytes_received=c.get("gossip_bytes_received", 0),
            gossip_rejected=rejected,
            blob_bytes_sent=c.get("blob_bytes_sent", 0),
            blob_bytes_received=c.get("blob_bytes_received", 0),
            uploads_served=c.get("uploads_served", 0),
            uploads_refused=refused,
            fetches_ok=c.get("fetches_ok", 0),
            fetches_failed=c.get("fetches_failed", 0),
            fetch_resumes=c.get("fetch_resumes", 0),
            fetch_hash_mismatches=c.get("fetch_hash_mismatches", 0),
            fetch_attempts_fast_path=c.get("fetch_attempts_fast_path", 0),
            fetch_attempts_libp2p=c.get("fetch_attempts_libp2p", 0),
            fast_path_auth_failures=c.get("fast_path_auth_failures", 0),
            events_dropped=c.get("events_dropped", 0),
            pushes_sent=c.get("pushes_sent", 0),
            push_bytes_sent=c.get("push_bytes_sent", 0),
            pushes_received=c.get("pushes_received", 0),
            push_bytes_received=c.get("push_bytes_received", 0),
        )
