"""fednode's networking layer: one asyncio interface over py-libp2p, bytes in and bytes out.

The node (daemon, rounds, membership, signatures, protobuf semantics) uses only what this package
exports; nothing outside ``fednode.node.mesh`` imports libp2p or trio. The mesh does transport,
framing, integrity (sha256 of blobs) and limits; it never interprets message contents.

Interface
---------
``MeshConfig(identity_key=seed32, listen_multiaddrs=..., bootstrap_multiaddrs=..., ...)``
    Frozen dataclass; see :mod:`.config` for every field and its safe default.

``mesh = Mesh(config)``; ``await mesh.start()`` ... ``await mesh.stop()`` (or ``async with``)
    ``start()`` returns once the host listens and the bootstrap dials and a DHT refresh were
    attempted (bounded by ``3 * io_timeout_s``); ``stop()`` closes everything and joins the
    networking thread (bounded by ``stop_timeout_s``, 10 s).

Identity and addresses
    ``mesh.peer_id`` (str), ``mesh.listen_multiaddrs() -> list[str]`` (full
    ``/ip4/.../tcp/.../p2p/<id>`` addresses, plus ``/p2p-circuit`` ones once a relay slot is
    held), ``await mesh.connect(multiaddr) -> peer_id``, ``await mesh.connect_peer(peer_id)``
    (addresses from the DHT or earlier dials), ``peer_id_from_public_key(raw32)``.

Gossip (control messages, <= ``gossip.max_message_size``, 64 KiB by default)
    ``await mesh.subscribe(topic, validator)`` with ``validator(data, from_peer) -> None | reason``
    (runs in the networking thread: cheap, non-blocking, thread-safe; rejections are counted by
    reason and not forwarded); ``await mesh.publish(topic, data)`` (raises
    ``MessageTooLargeError`` above the cap); ``await mesh.unsubscribe(topic)``;
    ``await mesh.topic_peers(topic)``.

Events
    ``mesh.events``: a bounded ``asyncio.Queue`` of ``GossipMessage(topic, data, from_peer,
    received_at)``, ``PeerConnected(peer_id, connection, address)``, ``PeerDisconnected(peer_id)``
    and ``ReachabilityChanged(status)``. Drain it promptly: overflow is dropped and counted.

Blobs (model updates, snapshots): content id = sha256(blob)
    ``mesh.serve_blob(content_id, data)`` (hash checked), ``mesh.unserve_blob(content_id)``,
    ``await mesh.fetch_blob(content_id, providers, max_size=None) -> bytearray``: tries the
    providers in order, sha256-verified, size-limited, resumes at the received offset with the
    next provider when one dies mid-transfer; raises ``BlobNotFoundError``,
    ``BlobTooLargeError`` or ``FetchError`` (per-provider ``reasons``). A node that fetched a
    blob serves it by calling ``serve_blob`` afterwards.

DHT
    ``await mesh.provide(key)``, ``await mesh.find_providers(key) -> list[peer_id]``
    (deduplicated, never this node). The node finds its federation by providing and looking up
    a key it derives from the federation id. Routing-table refresh, bootstrap re-dials and
    provider re-announcements run every ``dht_refresh_interval_s``.
    ``await mesh.put_record(key, value)`` and ``await mesh.get_records(key) -> list[bytes]``
    (every distinct valid value held here or by the closest peers) for keys
    ``/<namespace>/...`` whose namespace has a ``RecordValidator`` in
    ``MeshConfig.record_validators``; records of other namespaces are refused, put or received.

Introspection
    ``mesh.peers() -> list[PeerInfo]`` (connection "direct" / "relayed" / "hole-punched",
    addresses, ping latency, last seen), ``mesh.reachability() -> Reachability`` (AutoNAT
    verdict, relay addresses), ``mesh.stats() -> MeshStats`` (gossip and blob bytes, rejections
    by reason, fetch counters, fast-path use). ``await mesh.wait_for_reachability(timeout)``
    returns once AutoNAT has a verdict (bounded); ``mesh.reachability_report() -> str`` says in
    one actionable sentence whether peers can dial this node and what it does about it.
    Connection-kind changes, verdicts, relay slots, hole punches and blob paths are also logged
    (records with ``event`` = peer_connection, reachability, relay_reservation, relay_refused,
    hole_punch, blob_path).

NAT traversal (docs/nat-traversal.md)
    Every dial races direct addresses against relay (/p2p-circuit) ones; non-hop nodes hold a
    slot on every bootstrap relay and advertise it; DCUtR upgrades relayed connections by TCP
    hole punching. A relay (``relay_hop``) applies ``RelayLimits`` and asks
    ``MeshConfig.relay_admission(peer_id) -> bool`` (or the hook given to
    ``mesh.set_relay_admission``) before every reservation and circuit; no hook = open relay.

Port and in-memory mesh (docs/simulation.md)
    ``MeshPort`` (:mod:`.port`) is the typed subset federation code uses; ``Mesh``, the worker's
    ``RemoteMesh`` and ``InMemoryMesh`` implement it. ``InMemoryNetwork`` (:mod:`.memory`) runs
    many members in one asyncio loop over a simulated network (latency, bandwidth, loss,
    partitions) for unit-speed tests and simulations at scale; it imports no libp2p.

Design (details in docs/mesh.md)
--------------------------------
* py-libp2p 0.8.1 runs in a dedicated ``trio.run`` thread (:mod:`.bridge`); calls cross with
  cancellation both ways, events come back with ``call_soon_threadsafe``.
* The host is hardened (:mod:`.libp2p`, one module per protocol concern): TCP only, Noise only (plaintext/SECIO refused),
  Yamux only, QUIC off; GossipSub with explicit heartbeat, degree, size and spam limits; Kademlia
  DHT (server mode); circuit relay v2 (client everywhere, hop when ``relay_hop``), AutoNAT, DCUtR.
* Blobs move over the fast path (:mod:`.fastpath`: asyncio TCP, X25519 + Ed25519 handshake bound
  to both libp2p identities, AES-256-GCM records) with directly connected peers, and over a
  libp2p stream otherwise; both speak proto/v1/transfer.proto.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import GossipConfig, MeshConfig, RelayLimits
from .errors import (
    BlobNotFoundError,
    BlobTooLargeError,
    DialError,
    FastPathAuthError,
    FetchError,
    MeshClosedError,
    MeshError,
    MessageTooLargeError,
    StreamOpenError,
)
from .memory import InMemoryMesh, InMemoryNetwork, LinkConditions, Traffic
from .port import MeshPort, ReachabilityView
from .types import (
    ConnectionKind,
    GossipMessage,
    MeshEvent,
    MeshStats,
    PeerConnected,
    PeerDisconnected,
    PeerInfo,
    Reachability,
    ReachabilityChanged,
    ReachabilityStatus,
    RecordValidator,
    Validator,
)

__all__ = [
    "BlobNotFoundError",
    "BlobTooLargeError",
    "ConnectionKind",
    "DialError",
    "FastPathAuthError",
    "FetchError",
    "GossipConfig",
    "GossipMessage",
    "InMemoryMesh",
    "InMemoryNetwork",
    "LinkConditions",
    "Mesh",
    "MeshClosedError",
    "MeshConfig",
    "MeshError",
    "MeshEvent",
    "MeshPort",
    "MeshStats",
    "MessageTooLargeError",
    "PeerConnected",
    "PeerDisconnected",
    "PeerInfo",
    "Reachability",
    "ReachabilityChanged",
    "ReachabilityStatus",
    "ReachabilityView",
    "RecordValidator",
    "RelayLimits",
    "StreamOpenError",
    "Traffic",
    "Validator",
    "peer_id_from_public_key",
]

if TYPE_CHECKING:  # at run time loaded on first use (below)
    from .identity import peer_id_from_public_key
    from .mesh import Mesh


def __getattr__(name: str) -> object:
    """`Mesh` and `peer_id_from_public_key` import py-libp2p (50 MB, 900 modules); load them on
    first use, so the training worker can use this package's types without them."""
    if name == "Mesh":
        from .mesh import Mesh

        return Mesh
    if name == "peer_id_from_public_key":
        from .identity import peer_id_from_public_key

        return peer_id_from_public_key
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

