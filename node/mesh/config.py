"""Configuration of a mesh node: few knobs, safe defaults, everything else derived.

The defaults fix py-libp2p 0.8.1's unsafe or surprising defaults (see
../shared/docs/libp2p-notes.md §4): GossipSub's 120 s heartbeat and 10 msg/s/topic silent spam
filter, the 1 GiB / 1 h relay circuits, and the absent size check before publish.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .types import RecordValidator

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class RelayLimits:
    """Resource limits a relay (hop) node applies to the circuits it carries for others.

    Bounded so a relay cannot be turned into an unmetered proxy: a relayed peer is expected to
    move model updates (tens of MB) over a circuit when hole punching fails, not bulk traffic.
    """

    max_circuit_duration_s: int = 3600  # a circuit is torn down after this long
    max_circuit_bytes: int = 256 * MIB  # ... or after this many bytes, per circuit (both directions)
    max_reservations: int = 32  # peers that may hold a reservation (slot) at once
    max_circuits: int = 16  # relayed connections carried at once, by the whole relay
    reservation_ttl_s: int = 3600  # a reservation must be refreshed after this long

    def __post_init__(self) -> None:
        for name in ("max_circuit_duration_s", "max_circuit_bytes", "max_reservations", "max_circuits",
                     "reservation_ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RelayLimits.{name} must be positive")


@dataclass(frozen=True)
class GossipConfig:
    """GossipSub parameters, all set explicitly (the library defaults drop messages silently)."""

    heartbeat_interval_s: int = 1  # library default 120 s: the mesh would form in minutes
    degree: int = 6  # D: target mesh degree
    degree_low: int = 4  # D_low: graft below this
    degree_high: int = 12  # D_high: prune above this
    max_message_size: int = 64 * KIB  # publish() raises above it; receivers reject above it
    # Per forwarding peer and topic. The library default (10/s) silently drops bursts; a peer
    # forwards everyone's messages, so the limit must cover the whole federation's rate.
    max_messages_per_topic_per_second: float = 500.0

    def __post_init__(self) -> None:
        if not 0 < self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("GossipConfig needs 0 < degree_low <= degree <= degree_high")
        if self.heartbeat_interval_s < 1:
            raise ValueError("GossipConfig.heartbeat_interval_s must be >= 1 (the library takes whole seconds)")
        # The library's outbound RPC cap is a fixed 1 MiB; anything above would be dropped silently.
        if not 0 < self.max_message_size <= 1000 * KIB:
            raise ValueError("GossipConfig.max_message_size must be in 1 .. 1,024,000 bytes")
        if self.max_messages_per_topic_per_second <= 0:
            raise ValueError("GossipConfig.max_messages_per_topic_per_second must be positive")


@dataclass(frozen=True)
class MeshConfig:
    """Everything a :class:`~fednode.node.mesh.Mesh` needs; only ``identity_key`` is required.

    Addresses are libp2p multiaddr strings. Time-outs derive from ``io_timeout_s``: dials,
    stream opens, handshakes and every read or write of a transfer must make progress within it
    (a transfer as a whole has no deadline: a large blob on a slow link is fine while bytes
    flow); ``start()`` is bounded by 3x and ``stop()`` by ``stop_timeout_s``.
    """

    identity_key: bytes  # 32-byte Ed25519 seed (the daemon's identity); the peer id derives from it
    listen_multiaddrs: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    # Addresses to advertise instead of the listen addresses (e.g. a public IP or a port mapping).
    announce_multiaddrs: tuple[str, ...] | None = None
    bootstrap_multiaddrs: tuple[str, ...] = ()  # full /ip4/.../tcp/.../p2p/<id> addresses
    # Dialed like bootstrap peers, but best effort: addresses saved from earlier runs (members
    # last seen) may be stale or damaged; unparsable ones are skipped with a warning.
    peer_hints: tuple[str, ...] = ()
    relay_hop: bool = False  # act as a circuit relay v2 for others (bootstrap/relay nodes)
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    # Who may use this node's relay: ``relay_admission(peer_id) -> bool`` is asked for every
    # reservation and every circuit (both ends), in the networking thread (cheap, non-blocking,
    # thread-safe; an exception refuses). None = any peer (fine for an open federation; a
    # private federation passes its membership check so the relay is no open proxy).
    # Mesh.set_relay_admission() replaces it at run time.
    relay_admission: Callable[[str], bool] | None = None
    # Reserve a slot on every relay among the bootstrap peers (whatever AutoNAT says: see
    # RelayClient.wants_relay in node/mesh/libp2p/relay.py and docs/nat-traversal.md).
    enable_relay_client: bool = True
    enable_autonat: bool = True  # ask connected peers to dial us back; serve their requests
    enable_dcutr: bool = True  # upgrade relayed connections to direct ones (hole punching)
    autonat_confirmations: int = 3  # agreeing verdicts before reachability flips
    gossip: GossipConfig = field(default_factory=GossipConfig)
    # DHT record namespaces this node stores and reads (``put_record``/``get_records``), with their
    # validators. Every other key is refused (the library would otherwise store anything anyone
    # puts: free storage for strangers).
    record_validators: Mapping[str, RecordValidator] = field(default_factory=dict)
    max_record_size: int = 128 * KIB  # records above it are refused, put or received
    max_blob_size: int = 1 * GIB  # hard cap for serve_blob() and fetch_blob()
    fetch_chunk_size: int = 1 * MIB  # bytes per chunk frame
    # The fast path: an authenticated, encrypted asyncio TCP data channel used for blob transfer
    # with directly reachable peers (py-libp2p streams reach about 0.1x a raw socket). Its
    # listener binds the host of the first TCP listen address on this port (0 = any free port).
    fast_path: bool = True
    fast_path_port: int = 0
    # Port peers should dial for the fast path when it differs from the bound one (a port
    # forward on a NAT router, like announce_multiaddrs for libp2p). None = the bound port.
    fast_path_announce_port: int | None = None
    io_timeout_s: float = 10.0
    stop_timeout_s: float = 10.0
    max_concurrent_uploads: int = 16  # above it, providers answer BUSY
    event_queue_size: int = 10_000  # events beyond it are dropped (and counted): drain promptly
    dht_refresh_interval_s: float = 60.0  # routing-table refresh, bootstrap re-dial, re-provide
    ping_interval_s: float = 15.0  # latency measurement of connected peers
    autonat_interval_s: float = 120.0

    def __post_init__(self) -> None:
        if not isinstance(self.identity_key, bytes | bytearray) or len(self.identity_key) != 32:
            raise ValueError("MeshConfig.identity_key must be the 32-byte Ed25519 seed")
        if not self.listen_multiaddrs:
            raise ValueError("MeshConfig.listen_multiaddrs must not be empty")
        for addr in self.listen_multiaddrs:
            if "/tcp/" not in addr or "/quic" in addr or "/ws" in addr:
                raise ValueError(f"only TCP listen addresses are supported (QUIC is off): {addr}")
        if not 1 * KIB <= self.fetch_chunk_size <= 16 * MIB:
            raise ValueError("MeshConfig.fetch_chunk_size must be in 1 KiB .. 16 MiB")
        if self.max_blob_size <= 0:
            raise ValueError("MeshConfig.max_blob_size must be positive")
        if self.io_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ValueError("time-outs must be positive")
        if self.max_concurrent_uploads <= 0 or self.event_queue_size <= 0:
            raise ValueError("MeshConfig limits must be positive")
        for namespace in self.record_validators:
            if not namespace or "/" in namespace or namespace in ("pk", "ipns"):
                raise ValueError(f"MeshConfig.record_validators: bad namespace {namespace!r}")
        if not 0 < self.max_record_size <= 1 * MIB:
            raise ValueError("MeshConfig.max_record_size must be in 1 .. 1 MiB")
        if self.autonat_confirmations <= 0:
            raise ValueError("MeshConfig.autonat_confirmations must be positive")
        if not 0 <= self.fast_path_port <= 65535:
            raise ValueError("MeshConfig.fast_path_port must be a TCP port (0 = any)")
        if self.fast_path_announce_port is not None and not 0 < self.fast_path_announce_port <= 65535:
            raise ValueError("MeshConfig.fast_path_announce_port must be a TCP port")

    @property
    def start_timeout_s(self) -> float:
        """Bound on ``Mesh.start()``: listen, bootstrap dials and one DHT refresh."""
        return 3 * self.io_timeout_s
