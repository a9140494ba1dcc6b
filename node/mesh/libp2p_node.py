"""Everything that touches py-libp2p. Lives in the networking (trio) thread, never in asyncio.

The host is hardened as ../shared/docs/libp2p-notes.md §4 recommends: TCP only (QUIC is broken in
0.8.1), Noise only (the library also accepts plaintext and SECIO inbound by default, which lets a
peer claim any identity), Yamux only, GossipSub with a 1 s heartbeat, an explicit spam limit and
adaptive gossip off (it stretches the heartbeat to 60 s on a "poor health" small mesh), a Kademlia
DHT in server mode, circuit relay v2, AutoNAT and DCUtR.

Public methods are coroutines the asyncio side runs through the bridge (``bridge.call(fn, ...)``,
where ``fn`` is one of them, unbound, and receives this node first). They take and return plain
Python values; libp2p exceptions are translated to :mod:`.errors` here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.connection_types import ConnectionType
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
from libp2p.host.autonat.pb.autonat_pb2 import Message as AutoNATMessage
from libp2p.host.basic_host import BasicHost
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, PROTOCOL_ID_V13, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.records.validator import Validator as Libp2pRecordValidator
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as RELAY_HOP_PROTOCOL
from libp2p.relay.circuit_v2.resources import RelayLimits as Libp2pRelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp.tcp import TCP
from libp2p.utils.address_validation import expand_wildcard_address

from fednode.proto.v1 import transfer_pb2

from . import peer_records
from .config import MeshConfig
from .errors import DialError, MeshError, StreamOpenError
from .fastpath import CHANNEL_VERSION
from .identity import NodeIdentity
from .nat import AdmissionRelay, BoundedDCUtR, DialBackAutoNAT
from .transfer import (
    FASTPATH_INFO_PROTOCOL,
    MAX_HEADER_FRAME,
    TRANSFER_PROTOCOL,
    BlobStore,
    FetchState,
    TransferProtocolError,
    admits,
    answer_request,
    build_request,
    chunk_prefix,
    encode_varint,
    parse_chunk,
    status_name,
)
from .types import (
    ConnectionKind,
    GossipMessage,
    MeshEvent,
    PeerConnected,
    PeerDisconnected,
    PeerInfo,
    Reachability,
    ReachabilityChanged,
    ReachabilityStatus,
    RecordValidator,
    StatsCollector,
    Validator,
)

log = logging.getLogger(__name__)

PING_PROTOCOL = TProtocol("/ipfs/ping/1.0.0")
REQUEST_PROTOCOL = "/fednode/request/1.0.0"  # small request/response exchanges (e.g. joining)
MAX_REQUEST_FRAME = 1 << 20
_LIBP2P_WRITE = 65507  # one Yamux frame (12-byte header) per Noise message (<= 65519 bytes of plaintext)
_READ_SIZE = 1024 * 1024
_WILDCARDS = {"0.0.0.0", "::", ""}
_FASTPATH_INFO_TTL_S = 300.0
_AUTONAT_MAX_SERVERS = 5
_AUTONAT_DIAL_TIMEOUT_S = 5.0  # a server's dial-back; the internet drops SYNs to closed NAT ports silently
_FASTPATH_RETRY_S = 300.0  # after a failed fast-path connect, use libp2p streams with that peer this long
# After a failed FastPathInfo request (typically a time-out while the peer is busy starting up or
# training), ask again this soon: caching the failure for _FASTPATH_INFO_TTL_S would leave the
# pair on libp2p streams, which time out under the same load, for five minutes.
_FASTPATH_INFO_RETRY_S = 5.0
# A relay dial starts this long after the direct dials (go-libp2p's dial ranker waits 500 ms too):
# a reachable direct address usually answers well within it, an unreachable one never does.
_RELAY_DIAL_DELAY_S = 0.5
_ADDRS_CACHE_S = 1.0  # how long our advertised addresses are reused (see get_addrs in _build)


# --------------------------------------------------------------------------------------------
# Stream helpers
# --------------------------------------------------------------------------------------------


class _FrameReader:
    """Reads varint-delimited frames from a libp2p stream, each step bounded by a time-out."""

    def __init__(self, stream: INetStream, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout
        self._buf = bytearray()

    async def _fill(self, want: int) -> None:
        while len(self._buf) < want:
            with trio.fail_after(self._timeout):
                try:
                    data = await self._stream.read(max(want - len(self._buf), _READ_SIZE))
                except StreamEOF:
                    data = b""
            if not data:
                raise TransferProtocolError("stream closed mid-frame")
            self._buf += data

    async def read_frame(self, max_size: int) -> bytes:
        length = 0
        shift = 0
        pos = 0
        while True:
            await self._fill(pos + 1)
            byte = self._buf[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 35:
                raise TransferProtocolError("bad varint")
        if length > max_size:
            raise TransferProtocolError(f"frame of {length} bytes exceeds {max_size}")
        await self._fill(pos + length)
        frame = bytes(memoryview(self._buf)[pos : pos + length])
        del self._buf[: pos + length]
        return frame


async def _write_frame(stream: INetStream, payload: bytes | memoryview, timeout: float, prefix: bytes = b"") -> None:
    """Write ``varint(len(prefix + payload)) || prefix || payload`` in Noise-sized pieces."""
    head = encode_varint(len(prefix) + len(payload)) + prefix
    view = memoryview(payload)
    first = _LIBP2P_WRITE - len(head)
    with trio.fail_after(timeout):
        await stream.write(head + bytes(view[:first]))
    for start in range(first, len(view), _LIBP2P_WRITE):
        with trio.fail_after(timeout):
            await stream.write(bytes(view[start : start + _LIBP2P_WRITE]))


async def _close_stream(stream: INetStream) -> None:
    """Half-close then close: the dialer side otherwise stays in SwarmConn.streams forever."""
    with trio.CancelScope(shield=True), trio.move_on_after(2.0):
        with contextlib.suppress(Exception):
            await stream.close_write()
        with contextlib.suppress(Exception):
            await stream.close()


async def _close_conn(conn: INetConn) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2.0), contextlib.suppress(Exception):
        await conn.close()


def _is_relayed(conn: INetConn) -> bool:
    muxed = getattr(conn, "muxed_conn", None)
    with contextlib.suppress(Exception):
        if muxed is not None and muxed.get_connection_type() == ConnectionType.RELAYED:
            return True
    with contextlib.suppress(Exception):
        if conn.get_connection_type() == ConnectionType.RELAYED:
            return True
    with contextlib.suppress(Exception):
        if muxed is not None:
            return any("/p2p-circuit" in str(a) for a in muxed.get_transport_addresses())
    return False


def _remote_addr(conn: INetConn) -> str:
    muxed = getattr(conn, "muxed_conn", None)
    if _is_relayed(conn):
        with contextlib.suppress(Exception):
            addrs = muxed.get_transport_addresses()  # type: ignore[union-attr]
            if addrs:
                return str(addrs[0])
        return "/p2p-circuit"
    with contextlib.suppress(Exception):
        ip, port = muxed.get_remote_address()  # type: ignore[union-attr]
        family = "ip6" if ":" in ip else "ip4"
        return f"/{family}/{ip}/tcp/{port}"
    return ""


def _thin_waist(addr: multiaddr.Multiaddr) -> str:
    """``/ip4/<ip>/tcp/<port>`` of an address, without any /p2p/ part (for comparisons)."""
    text = str(addr)
    parts = text.split("/")
    return "/".join(parts[:5]) if len(parts) >= 5 and parts[3] == "tcp" else text


_SOCKET_PATH = ("muxed_conn", "secured_conn", "conn", "read_writer", "read_write_closer", "stream", "stream")


def _local_port(conn: INetConn) -> int | None:
    """The local TCP port of a direct connection (walks the library's wrapper chain), or None."""
    obj: Any = conn
    for name in _SOCKET_PATH:
        sock = getattr(obj, "socket", None)
        if sock is not None and hasattr(sock, "getsockname"):
            break
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    with contextlib.suppress(Exception):
        return int(obj.socket.getsockname()[1])
    return None


def _remote_ip(conn: INetConn) -> str | None:
    with contextlib.suppress(Exception):
        return str(conn.muxed_conn.get_remote_address()[0])  # type: ignore[attr-defined]
    return None


# --------------------------------------------------------------------------------------------
# Peer bookkeeping (read from the asyncio thread under a lock)
# --------------------------------------------------------------------------------------------


@dataclass
class _PeerRecord:
    latency_ms: float | None = None
    last_seen: float = field(default_factory=time.time)
    was_relayed: bool = False  # a relayed connection existed before the direct one: hole-punched


class _Notifee(INotifee):
    def __init__(self, node: Libp2pNode) -> None:
        self._node = node

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._node._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._node._on_disconnected(conn)

    async def listen(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None


class Libp2pNode:
    """The libp2p host and its services; see the module docstring."""

    def __init__(
        self,
        config: MeshConfig,
        identity: NodeIdentity,
        store: BlobStore,
        stats: StatsCollector,
        emit: Callable[[MeshEvent], None],
        fast_path_info: transfer_pb2.FastPathInfo,
    ) -> None:
        self.config = config
        self.identity = identity
        self.store = store
        self.stats = stats
        self._emit = emit
        self._fast_path_info = fast_path_info.SerializeToString()
        self._lock = threading.Lock()  # guards the snapshots read by the asyncio thread
        self._peers: dict[str, _PeerRecord] = {}
        self._peer_view: dict[str, PeerInfo] = {}
        self._addrs: list[str] = []
        self._relay_addrs: list[str] = []  # "<relay addr>/p2p/<relay>/p2p-circuit" we hold a slot on
        self._reachability = Reachability("unknown", 0, 0, (), None)
        self._autonat_votes: dict[str, bool] = {}  # server peer id -> it could dial us back
        self._public_addrs: list[str] = []  # addresses AutoNAT servers reached that we did not advertise
        self._fastpath_cache: dict[str, tuple[float, transfer_pb2.FastPathInfo]] = {}
        self._fastpath_unreachable: dict[str, float] = {}  # peer -> monotonic time of the failure
        #: Relay admission hook (see MeshConfig.relay_admission); replaced by Mesh.set_relay_admission.
        self.relay_admission = config.relay_admission
        #: Who may fetch blobs from this node (Mesh.set_serve_admission); None = anyone.
        self.serve_admission: Callable[[str], bool] | None = None
        #: Request handler (see Mesh.set_request_handler): (kind, data, peer) -> response, called
        #: through the asyncio loop; None answers every request with "no handler".
        self.request_handler: Callable[[str, bytes, str], bytes] | None = None
        self._provided: set[bytes] = set()
        self._subscriptions: dict[str, Any] = {}
        self._bootstrap_peers: list[Libp2pPeerInfo] = []
        self._nursery: trio.Nursery | None = None
        self._self_id_bytes = b""
        # Built in running():
        self.host: BasicHost
        self.pubsub: Pubsub
        self.gossipsub: GossipSub
        self.dht: KadDHT
        self.relay: AdmissionRelay
        self.circuit: CircuitV2Transport
        self.autonat: DialBackAutoNAT | None = None
        self.dcutr: DCUtRProtocol | None = None

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        cfg = self.config
        for addr in cfg.bootstrap_multiaddrs:
            try:
                self._bootstrap_peers.append(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            except Exception as exc:
                raise MeshError(f"bad bootstrap multiaddr {addr!r}: {exc}") from exc
        by_peer = {info.peer_id: info for info in self._bootstrap_peers}
        for addr in cfg.peer_hints:
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            except Exception as exc:
                log.warning("ignoring unusable peer address %r: %s", addr[:200], exc)
                continue
            known = by_peer.get(info.peer_id)
            if known is None:
                by_peer[info.peer_id] = info
                self._bootstrap_peers.append(info)
            else:  # every address of a peer is dialled (it may have moved since the first one)
                known.addrs.extend(a for a in info.addrs if a not in known.addrs)
        key_pair = self.identity.libp2p_key_pair()
        self.host = cast(
            BasicHost,
            new_host(
                key_pair=key_pair,
                # Noise only: the default list also has TLS, SECIO and /plaintext/2.0.0.
                sec_opt={
                    TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(
                        key_pair, noise_privkey=create_x25519_key_pair().private_key
                    )
                },
                muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},  # Yamux only (Mplex is 6-8x slower)
                transports=[TCP()],  # TCP only: QUIC truncates transfers silently in 0.8.1
                enable_quic=False,
                enable_mDNS=False,
                enable_upnp=False,
                addrs_factory=self._advertised_addrs,
            ),
        )
        self._self_id_bytes = self.host.get_id().to_bytes()
        # BasicHost.get_addrs() strips the first /p2p/ component of every address and appends
        # our id, which turns "<relay>/p2p/<R>/p2p-circuit" into "<relay>/p2p/<us>" (0.8.1).
        # Append the circuit addresses after it instead, on this instance only, so identify,
        # the DHT and listen_multiaddrs() all advertise them correctly.
        #
        # Cached for _ADDRS_CACHE_S: py-libp2p calls get_addrs() for every pubsub RPC it sends
        # (to attach our signed peer record), and a call walks the listeners, the observed
        # addresses and the interfaces (8 % of the networking thread's CPU in a 4-daemon run).
        # Relay slots, AutoNAT-confirmed addresses and listeners invalidate the cache at once.
        plain_get_addrs = self.host.get_addrs
        me = self.host.get_id().to_base58()
        network = self.host.get_network()
        cached_key: tuple[Any, ...] | None = None
        cached_at = 0.0
        cached_addrs: list[multiaddr.Multiaddr] = []

        def get_addrs() -> list[multiaddr.Multiaddr]:
            nonlocal cached_key, cached_at, cached_addrs
            key = (tuple(self._relay_addrs), tuple(self._public_addrs), tuple(network.listeners))
            now = time.monotonic()
            if key != cached_key or now - cached_at > _ADDRS_CACHE_S:
                circuits = [multiaddr.Multiaddr(f"{a}/p2p/{me}") for a in self._relay_addrs]
                cached_key, cached_at, cached_addrs = key, now, list(plain_get_addrs()) + circuits
            return list(cached_addrs)

        self.host.get_addrs = get_addrs  # type: ignore[method-assign]
        gossip = cfg.gossip
        self.gossipsub = GossipSub(
            protocols=[PROTOCOL_ID_V13, PROTOCOL_ID_V12, PROTOCOL_ID_V11, GOSSIPSUB_V10],
            degree=gossip.degree,
            degree_low=gossip.degree_low,
            degree_high=gossip.degree_high,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=gossip.heartbeat_interval_s,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=True,
            max_messages_per_topic_per_second=gossip.max_messages_per_topic_per_second,
        )
        peer_records.install()  # each sender's signed peer record is verified once, not per RPC
        self.pubsub = Pubsub(self.host, self.gossipsub, strict_signing=True)
        self.dht = KadDHT(self.host, DHTMode.SERVER, enable_random_walk=False)
        # Strict: only namespaces with a validator (ours, plus the library's pk and ipns) are
        # stored; the default accepts any key and value from anyone.
        for namespace, rules in cfg.record_validators.items():
            self.dht.set_namespace_validator(namespace, _SizedRecordValidator(rules, cfg.max_record_size))
        self.dht.strict_validation = True
        limits = cfg.relay_limits
        lp_limits = Libp2pRelayLimits(
            duration=limits.max_circuit_duration_s,
            data=limits.max_circuit_bytes,
            max_circuit_conns=limits.max_circuits,
            max_reservations=limits.max_reservations,
            reservation_ttl=limits.reservation_ttl_s,
        )
        # No CLIENT role flag: in 0.8.1 it only makes every relayed *dial* take a reservation on
        # the relay as a side effect. Reservations are made explicitly (_reserve_relay).
        roles = RelayRole.STOP
        if cfg.relay_hop:
            roles |= RelayRole.HOP
        timeout = max(1, int(cfg.io_timeout_s))
        self.relay = AdmissionRelay(
            self.host, admission=lambda: self.relay_admission, max_circuits=limits.max_circuits,
            on_refused=self._relay_refused, limits=lp_limits, allow_hop=cfg.relay_hop, read_timeout=timeout,
            write_timeout=timeout,
        )
        self.circuit = CircuitV2Transport(
            self.host,
            self.relay,
            RelayConfig(roles=roles, limits=lp_limits, max_circuit_duration=limits.max_circuit_duration_s,
                        max_circuit_bytes=limits.max_circuit_bytes),
        )
        if cfg.enable_autonat:
            self.autonat = DialBackAutoNAT(self.host, dial_timeout=min(cfg.io_timeout_s, _AUTONAT_DIAL_TIMEOUT_S),
                                           serve=True, confirmations=cfg.autonat_confirmations)
        if cfg.enable_dcutr:
            self.dcutr = BoundedDCUtR(self.host, dial_timeout=timeout)
        self.host.set_stream_handler(TProtocol(TRANSFER_PROTOCOL), self._handle_transfer)
        self.host.set_stream_handler(TProtocol(FASTPATH_INFO_PROTOCOL), self._handle_fastpath_info)
        self.host.set_stream_handler(TProtocol(REQUEST_PROTOCOL), self._handle_request)
        self.host.get_network().register_notifee(_Notifee(self))
        self._install_nat_aware_dialer()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Libp2pNode]:
        """Build the host, listen, run every service; yield the running node."""
        try:
            self._build()
            async with self._services():
                yield self
        finally:
            # Pubsub's seen-message cache runs a sweeper *thread* nobody stops (0.8.1); it
            # starts in the constructor, so stop it even when start-up failed.
            pubsub = getattr(self, "pubsub", None)
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.seen_messages.stop()

    @contextlib.asynccontextmanager
    async def _services(self) -> AsyncIterator[None]:
        listen = [multiaddr.Multiaddr(a) for a in self.config.listen_multiaddrs]
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.host.run(listen_addrs=listen))
            # BasicHost.run() logs a failed listen (port in use, bad address) and carries on.
            bound = self.host.get_transport_addrs()
            if not bound:
                raise MeshError(f"could not listen on {', '.join(self.config.listen_multiaddrs)}")
            if len(bound) < len(listen):
                log.warning("listening on %s only (asked for %s)", bound, self.config.listen_multiaddrs)
            await stack.enter_async_context(background_trio_service(self.pubsub))
            await stack.enter_async_context(background_trio_service(self.gossipsub))
            await stack.enter_async_context(background_trio_service(self.dht))
            await stack.enter_async_context(background_trio_service(self.relay))
            if self.dcutr is not None:
                await stack.enter_async_context(background_trio_service(self.dcutr))
            with trio.fail_after(self.config.io_timeout_s):
                await self.pubsub.wait_until_ready()
            nursery = await stack.enter_async_context(trio.open_nursery())
            self._nursery = nursery
            self._refresh_addrs()
            nursery.start_soon(self._maintenance_loop)
            nursery.start_soon(self._ping_loop)
            if self.autonat is not None:
                nursery.start_soon(self._autonat_loop)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ addresses

    def _advertised_addrs(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        """What identify, the DHT and listen_multiaddrs() advertise (without /p2p/<self>)."""
        if self.config.announce_multiaddrs is not None:
            base = [multiaddr.Multiaddr(a) for a in self.config.announce_multiaddrs]
        else:
            base = []
            for addr in candidates:
                ip = addr.value_for_protocol("ip4") if "/ip4/" in str(addr) else None
                if ip in _WILDCARDS or (ip is None and "/ip6/::/" in str(addr)):
                    base.extend(expand_wildcard_address(addr))
                else:
                    base.append(addr)
            # Public addresses AutoNAT servers reached that the interfaces do not show (a port
            # forward on the NAT router): advertise them, so peers dial directly.
            base.extend(multiaddr.Multiaddr(a) for a in self._public_addrs)
        seen: set[str] = set()
        result = []
        for addr in base:
            if str(addr) not in seen:
                seen.add(str(addr))
                result.append(addr)
        return result

    def _refresh_addrs(self) -> None:
        addrs = [str(a) for a in self.host.get_addrs()]
        with self._lock:
            self._addrs = addrs

    def listen_multiaddrs(self) -> list[str]:
        with self._lock:
            return list(self._addrs)

    def reachability(self) -> Reachability:
        with self._lock:
            return self._reachability

    def peers(self) -> list[PeerInfo]:
        with self._lock:
            return list(self._peer_view.values())

    # ------------------------------------------------------------------ connections

    def _live_conns(self, peer: ID) -> list[INetConn]:
        conns = self.host.get_network().connections.get(peer) or []
        if not isinstance(conns, list):
            conns = [conns]
        return [c for c in conns if not getattr(c, "is_closed", False)]

    def _update_peer_view(self, peer: ID, closing: INetConn | None = None) -> None:
        """Recompute the asyncio-visible view of one peer (trio thread only).

        Logs a ``peer_connection`` record whenever the best connection kind to a peer changes
        (first connection, relayed -> hole-punched, direct -> relayed after a drop, gone), so an
        operator or a test can follow NAT traversal from the logs alone.
        """
        key = peer.to_base58()
        conns = [c for c in self._live_conns(peer) if c is not closing]
        with self._lock:
            record = self._peers.get(key)
            previous = self._peer_view.get(key)
            if not conns or record is None:
                self._peer_view.pop(key, None)
                view = None
            else:
                direct = [c for c in conns if not _is_relayed(c)]
                kind: ConnectionKind = "relayed"
                if direct:
                    kind = "hole-punched" if record.was_relayed and self._punched(peer, direct) else "direct"
                view = PeerInfo(
                    peer_id=key,
                    addrs=tuple(_remote_addr(c) for c in conns),
                    connection=kind,
                    latency_ms=record.latency_ms,
                    last_seen=record.last_seen,
                )
                self._peer_view[key] = view
        before = previous.connection if previous is not None else "none"
        after = view.connection if view is not None else "none"
        if before != after:
            log.info(
                "peer %s: connection %s -> %s%s", key, before, after,
                f" ({', '.join(view.addrs)})" if view is not None else "",
                extra={"event": "peer_connection", "peer": key, "connection": after, "previous": before,
                       "addrs": list(view.addrs) if view is not None else []},
            )

    def _punched(self, peer: ID, direct: list[INetConn]) -> bool:
        """Was this direct connection (opened after a relayed one) made by hole punching?

        Not when either end is simply dialable: the peer, if we reach it at an address it
        advertises itself (its signed peer record: DCUtR's predicted addresses are not in it);
        this node, if AutoNAT says public. Otherwise, yes when the connection uses our listen
        port: DCUtR binds its hole-punch dials to it (the NAT must map that port), an ordinary
        outgoing dial uses an ephemeral one. Recomputed with every view update, so the label
        follows AutoNAT's verdict.
        """
        if self._reachability.status == "public":
            return False
        advertised: set[str] = set()
        with contextlib.suppress(Exception):
            envelope = self.host.get_peerstore().get_peer_record(peer)
            if envelope is not None:
                advertised = {_thin_waist(a) for a in envelope.record().addrs}
        listen_ports = {int(a.value_for_protocol("tcp")) for a in self.host.get_transport_addrs()
                        if "/tcp/" in str(a)}
        for conn in direct:
            remote = _remote_addr(conn)
            if remote and _thin_waist(multiaddr.Multiaddr(remote)) in advertised:
                return False
        return any(_local_port(c) in listen_ports for c in direct)

    def _on_connected(self, conn: INetConn) -> None:
        try:
            peer = conn.muxed_conn.peer_id
        except Exception:
            return
        if peer == self.host.get_id():
            # Dialing one of our own addresses (a stale peer record, a DHT entry) reaches us;
            # Noise accepts it since both ends hold the key. Never a peer: close it.
            if self._nursery is not None:
                with contextlib.suppress(RuntimeError):
                    self._nursery.start_soon(_close_conn, conn)
            return
        key = peer.to_base58()
        with self._lock:
            new = key not in self._peer_view
            record = self._peers.setdefault(key, _PeerRecord())
            record.last_seen = time.time()
        if _is_relayed(conn) and not any(not _is_relayed(c) for c in self._live_conns(peer)):
            record.was_relayed = True  # a direct connection appearing later is an upgrade
        self._update_peer_view(peer)
        if new and self._nursery is not None:
            with contextlib.suppress(RuntimeError):
                self._nursery.start_soon(self._ping_later, peer)
        if new:
            view = self._peer_view.get(key)
            kind: ConnectionKind = view.connection if view else ("relayed" if _is_relayed(conn) else "direct")
            self._emit(PeerConnected(key, kind, _remote_addr(conn)))

    def _on_disconnected(self, conn: INetConn) -> None:
        try:
            peer = conn.muxed_conn.peer_id
        except Exception:
            return
        if peer == self.host.get_id():
            return
        key = peer.to_base58()
        remaining = [c for c in self._live_conns(peer) if c is not conn]
        if not any(not _is_relayed(c) for c in remaining) and key in self.relays():
            self._drop_relay(key, "connection to the relay closed")  # re-reserved by the maintenance loop
        if remaining:
            self._update_peer_view(peer, closing=conn)
            return
        with self._lock:
            known = key in self._peer_view
        self._update_peer_view(peer, closing=conn)  # logs the change to "none"
        with self._lock:
            record = self._peers.get(key)
            if record is not None:
                record.was_relayed = False
        self._fastpath_cache.pop(key, None)
        if known:
            self._emit(PeerDisconnected(key))

    def _seen(self, key: str) -> None:
        with self._lock:
            record = self._peers.get(key)
            view = self._peer_view.get(key)
            if record is not None:
                record.last_seen = time.time()
            if view is not None and record is not None:
                self._peer_view[key] = PeerInfo(view.peer_id, view.addrs, view.connection, record.latency_ms,
                                                record.last_seen)

    async def _dial_circuit(self, maddr: multiaddr.Multiaddr) -> ID:
        """Dial a /p2p-circuit address (the swarm's own dialer skips them)."""
        _, dest = self.circuit.parse_circuit_ma(maddr)
        self.host.get_peerstore().add_addrs(dest, [maddr], 3600)
        await self.circuit.dial(maddr)
        return dest

    async def _ensure_connected(self, peer: ID) -> None:
        """Reuse a connection, else dial (NAT-aware, see _dial_peer), else ask the DHT and retry.
        The retry ignores the swarm's 60 s negative cache: our callers name a peer they heard
        from lately and back off themselves, and a peer that failed once under load would
        otherwise be refused for a minute (a member catching up then found nobody to fetch from)."""
        if self._live_conns(peer):
            return
        network = self.host.get_network()
        errors: list[str] = []
        for attempt in range(2):
            try:
                await network.dial_peer(peer)
                if self._live_conns(peer):
                    return
            except Exception as exc:
                errors.append(str(exc) or type(exc).__name__)
            if attempt == 0:
                self._forget_failed_dials(peer)
                with contextlib.suppress(Exception):
                    found = await self.dht.find_peer(peer)
                    if found is not None and found.addrs:
                        self.host.get_peerstore().add_addrs(peer, found.addrs, 3600)
                continue
            break
        raise DialError(f"cannot reach {peer.to_base58()}: {'; '.join(errors) or 'no known address'}")

    def _install_nat_aware_dialer(self) -> None:
        """Route every dial of the host (DHT, pubsub, identify, our streams) through _dial_peer.

        The swarm's own ``dial_peer`` skips /p2p-circuit addresses, so the DHT and every
        ``new_stream`` could never reach a NATed peer that was not connected yet; and it dials
        a NATed peer's private LAN address, which the internet drops silently, until its time-out.
        Overridden on this host instance only, like ``get_addrs``.
        """
        network = self.host.get_network()
        plain_dial_peer = network.dial_peer

        async def dial_peer(peer: ID) -> list[INetConn]:
            live = self._live_conns(peer)
            if live:
                return live
            if peer == self.host.get_id():
                raise SwarmException("refusing to dial this node itself")
            try:
                addrs = list(self.host.get_peerstore().addrs(peer))
            except Exception:
                addrs = []
            relayed = [a for a in addrs if "/p2p-circuit" in str(a)]
            if not relayed:
                return await plain_dial_peer(peer)
            own = {_thin_waist(a) for a in self.host.get_addrs()}
            direct = [a for a in addrs if "/p2p-circuit" not in str(a) and _thin_waist(a) not in own]
            errors: list[str] = []
            try:
                await self._dial_race(peer, plain_dial_peer, bool(direct), relayed, errors)
            finally:
                # A direct dial that reaches the wrong peer (another site's identical private
                # address) makes the swarm clear *all* of this peer's addresses: restore them.
                with contextlib.suppress(Exception):
                    self.host.get_peerstore().add_addrs(peer, addrs, 3600)
            live = self._live_conns(peer)
            if not live:
                raise SwarmException(f"cannot reach {peer.to_base58()}: {'; '.join(errors)}")
            return live

        network.dial_peer = dial_peer  # type: ignore[method-assign]

    async def _dial_race(self, peer: ID, dial_direct: Callable[[ID], Any], has_direct: bool,
                         relayed: list[multiaddr.Multiaddr], errors: list[str]) -> bool:
        """Dial directly now and through relays a little later; True once any connection is up.

        A NATed peer advertises its private LAN address next to its relay address. Dialing the
        direct addresses first and the relay only after they failed made every connection to a
        NATed peer wait out the whole time-out (tests/netns). Here the relay dial
        starts ``_RELAY_DIAL_DELAY_S`` after the direct one (at once without direct addresses)
        and the first connection wins. The direct dial runs in the node's nursery, not the
        caller's: when the relay wins, a direct connection that completes later (same LAN, a
        slow but open path) is still kept, and preferred for transfers.
        """
        pending = {"direct": has_direct, "relayed": bool(relayed)}

        async def direct_leg() -> None:
            try:
                with trio.fail_after(self.config.io_timeout_s):
                    await dial_direct(peer)
            except Exception as exc:
                errors.append(f"direct: {exc or type(exc).__name__}")
            finally:
                pending["direct"] = False

        async def relayed_leg() -> None:
            try:
                deadline = trio.current_time() + (_RELAY_DIAL_DELAY_S if has_direct else 0.0)
                while pending["direct"] and trio.current_time() < deadline and not self._live_conns(peer):
                    await trio.sleep(0.02)
                for addr in relayed:
                    if self._live_conns(peer):
                        return
                    try:
                        with trio.fail_after(self.config.io_timeout_s):
                            await self._dial_circuit(addr)
                        return
                    except Exception as exc:
                        errors.append(f"relay: {exc or type(exc).__name__}")
            finally:
                pending["relayed"] = False

        background = self._nursery
        if has_direct and background is not None:
            background.start_soon(direct_leg)
        async with trio.open_nursery() as nursery:
            if has_direct and background is None:
                nursery.start_soon(direct_leg)
            if relayed:
                nursery.start_soon(relayed_leg)
            while not self._live_conns(peer) and (pending["direct"] or pending["relayed"]):
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        return bool(self._live_conns(peer))

    async def connect(self, addr: str) -> str:
        """Dial a full multiaddr (direct or /p2p-circuit); return the peer id."""
        try:
            maddr = multiaddr.Multiaddr(addr)
        except Exception as exc:
            raise DialError(f"bad multiaddr {addr!r}: {exc}") from exc
        try:
            with trio.fail_after(self.config.io_timeout_s):
                if "/p2p-circuit" in addr:
                    peer = await self._dial_circuit(maddr)
                else:
                    info = info_from_p2p_addr(maddr)
                    peer = info.peer_id
                    self._forget_failed_dials(peer)  # an address given explicitly is always tried
                    await self.host.connect(info)
        except trio.TooSlowError as exc:
            raise DialError(f"dialing {addr} timed out") from exc
        except MeshError:
            raise
        except Exception as exc:
            raise DialError(f"cannot dial {addr}: {exc}") from exc
        with contextlib.suppress(Exception):
            await self.dht.add_peer(peer)
        return peer.to_base58()

    async def connect_peer(self, peer_key: str) -> None:
        """Connect to a peer by id: known addresses first (direct, then relay), then the DHT."""
        try:
            peer = ID.from_base58(peer_key)
        except Exception as exc:
            raise DialError(f"bad peer id {peer_key!r}") from exc
        try:
            with trio.fail_after(self.config.io_timeout_s):
                await self._ensure_connected(peer)
        except trio.TooSlowError as exc:
            raise DialError(f"connecting to {peer_key} timed out") from exc
        with contextlib.suppress(Exception):
            await self.dht.add_peer(peer)

    # ------------------------------------------------------------------ start-up and maintenance

    async def bootstrap(self) -> None:
        """Dial the bootstrap peers, reserve relay slots on those that are relays, refresh the DHT."""
        async with trio.open_nursery() as nursery:
            for info in self._bootstrap_peers:
                nursery.start_soon(self._join_bootstrap_peer, info)
        with trio.move_on_after(self.config.io_timeout_s), contextlib.suppress(Exception):
            await self.dht.refresh_routing_table()
        self._refresh_addrs()

    def _forget_failed_dials(self, peer: ID) -> None:
        """The swarm refuses, for 60 s, any dial of a peer whose addresses all failed (its
        "negative cache"). Bootstrap re-dials come every dht_refresh_interval_s (60 s too) and
        explicit dials name an address that may be new: both would be refused for good."""
        with contextlib.suppress(Exception):
            self.host.get_network().unblock_peer(peer)

    async def _join_bootstrap_peer(self, info: Libp2pPeerInfo) -> None:
        if info.peer_id == self.host.get_id():
            return
        self._forget_failed_dials(info.peer_id)
        try:
            with trio.fail_after(self.config.io_timeout_s):
                await self.host.connect(info)
                await self.dht.add_peer(info.peer_id)
        except Exception as exc:
            log.warning("bootstrap peer %s unreachable: %s", info.peer_id, exc)
            return
        if self._wants_relay():
            await self._reserve_relay(info)

    # ------------------------------------------------------------------ relay client

    def _wants_relay(self) -> bool:
        """Hold a slot on every bootstrap relay, whatever AutoNAT says (docs/nat-traversal.md).

        * Reserving at once makes a NATed node reachable within a second of start-up, not after
          the first AutoNAT round.
        * A "public" verdict in a small federation rests on one or two dial-backs, often by the
          relay itself, which may share a network with this node (a LAN, a data centre): it
          does not prove that every member can dial us. The slot keeps us reachable then.
        * It costs a public node nothing on the wire: dialers race direct addresses first and
          try the circuit only after ``_RELAY_DIAL_DELAY_S``. It costs the relay one slot per
          member: size ``RelayLimits.max_reservations`` to the federation.
        """
        cfg = self.config
        return cfg.enable_relay_client and not cfg.relay_hop

    def _relay_key(self, circuit_addr: str) -> str:
        return circuit_addr.split("/p2p-circuit")[0].rsplit("/p2p/", 1)[-1]

    async def _reserve_relay(self, info: Libp2pPeerInfo) -> None:
        """Hold a reservation on ``info`` if it is a relay, and advertise the circuit address."""
        relay_key = info.peer_id.to_base58()
        if any(self._relay_key(a) == relay_key for a in self._relay_addrs):
            return
        assert self._nursery is not None
        stream = None
        try:
            with trio.fail_after(self.config.io_timeout_s):
                stream = await self.host.new_stream(info.peer_id, [RELAY_HOP_PROTOCOL])
                ok = await self.circuit.reserve(stream, info.peer_id, self._nursery)
        except Exception as exc:  # not a relay, or it refused: nothing to advertise
            log.debug("no relay reservation on %s: %s", relay_key, exc)
            return
        finally:
            if stream is not None:
                await _close_stream(stream)
        if not ok:
            log.warning("relay %s refused a reservation (not admitted, or full)", relay_key,
                        extra={"event": "relay_reservation", "relay": relay_key, "status": "refused"})
            return
        addrs = info.addrs or list(self.host.get_peerstore().addrs(info.peer_id))
        circuits = [
            f"{a}/p2p/{relay_key}/p2p-circuit"
            for a in addrs
            if "/p2p-circuit" not in str(a) and "/p2p/" not in str(a)
        ]
        if not circuits or any(self._relay_key(a) == relay_key for a in self._relay_addrs):
            return
        self._relay_addrs.extend(circuits)
        self._publish_relay_addrs()
        me = self.host.get_id().to_base58()
        log.info("reserved a relay slot on %s: reachable at %s/p2p/%s", relay_key, circuits[0], me,
                 extra={"event": "relay_reservation", "relay": relay_key, "status": "reserved",
                        "addrs": [f"{a}/p2p/{me}" for a in circuits]})

    def _drop_relay(self, relay_key: str | None, reason: str) -> None:
        """Stop advertising (and refreshing) the slot on one relay, or on every relay (None)."""
        dropped = [a for a in self._relay_addrs if relay_key is None or self._relay_key(a) == relay_key]
        if not dropped:
            return
        self._relay_addrs = [a for a in self._relay_addrs if a not in dropped]
        for key in {self._relay_key(a) for a in dropped}:
            with contextlib.suppress(Exception):
                # The library refreshes every reservation it knows until it expires; forget it.
                self.circuit._reservations.pop(ID.from_base58(key), None)
            log.info("released the relay slot on %s (%s)", key, reason,
                     extra={"event": "relay_reservation", "relay": key, "status": "released", "reason": reason})
        self._publish_relay_addrs()

    def _publish_relay_addrs(self) -> None:
        with self._lock:
            r = self._reachability
            self._reachability = Reachability(r.status, r.public_votes, r.private_votes, tuple(self._relay_addrs),
                                              r.checked_at)
        self._refresh_addrs()

    def relays(self) -> list[str]:
        """Peer ids of the relays holding a reservation for us."""
        return sorted({self._relay_key(a) for a in self._relay_addrs})

    def _relay_refused(self, peer: str, what: str) -> None:
        log.warning("relay refused peer %s (%s)", peer, what,
                    extra={"event": "relay_refused", "peer": peer, "reason": what})

    async def _maintenance_loop(self) -> None:
        """Periodic routing-table refresh, bootstrap re-dial, relay re-reservation, re-provide."""
        cfg = self.config
        while True:
            await trio.sleep(cfg.dht_refresh_interval_s)
            self._rejoin_bootstrap_peers()
            with trio.move_on_after(cfg.io_timeout_s), contextlib.suppress(Exception):
                await self.dht.refresh_routing_table()
            for key in list(self._provided):
                with trio.move_on_after(cfg.io_timeout_s), contextlib.suppress(Exception):
                    await self.dht.provider_store.provide(key)
            self._refresh_addrs()

    def _rejoin_bootstrap_peers(self) -> None:
        """Re-dial lost bootstrap peers; re-reserve relay slots we need and lost (relay restart)."""
        assert self._nursery is not None
        for info in self._bootstrap_peers:
            if info.peer_id == self.host.get_id():
                continue
            if not self._live_conns(info.peer_id):
                self._nursery.start_soon(self._join_bootstrap_peer, info)
            elif self._wants_relay() and info.peer_id.to_base58() not in self.relays():
                self._nursery.start_soon(self._reserve_relay, info)

    async def _ping_loop(self) -> None:
        while True:
            async with trio.open_nursery() as nursery:
                for peer in list(self.host.get_network().connections):
                    nursery.start_soon(self._ping, peer)
            await trio.sleep(self.config.ping_interval_s)

    async def _ping_later(self, peer: ID) -> None:
        await trio.sleep(0.5)  # let identify and the rest of the connection set-up go first
        await self._ping(peer)

    async def _ping(self, peer: ID) -> None:
        stream = None
        try:
            with trio.fail_after(self.config.io_timeout_s):
                stream = await self.host.new_stream(peer, [PING_PROTOCOL])
                payload = os.urandom(32)
                started = time.perf_counter()
                await stream.write(payload)
                echo = b""
                while len(echo) < 32:
                    piece = await stream.read(32 - len(echo))
                    if not piece:
                        return
                    echo += piece
                rtt_ms = (time.perf_counter() - started) * 1000.0
        except Exception:
            return
        finally:
            if stream is not None:
                await _close_stream(stream)
        if echo != payload:
            return
        key = peer.to_base58()
        with self._lock:
            record = self._peers.get(key)
            if record is not None:
                record.latency_ms = rtt_ms
                record.last_seen = time.time()
        self._update_peer_view(peer)

    async def _autonat_loop(self) -> None:
        """Ask directly connected peers to dial us back; turn their answers into a verdict.

        Differences from the library's ``check_reachability`` (what tests/netns showed it needs):

        * the verdict needs ``min(autonat_confirmations, servers that answered)`` agreeing
          votes: a federation behind one bootstrap node has a single AutoNAT server, and with
          the fixed 3 the verdict stayed "unknown" forever;
        * only answers count: a server that times out (a loaded machine) proves nothing, while
          the library counted it as "private";
        * besides the advertised addresses it offers predicted public ones (each observed
          public IP with our listen port), so a NAT with a port forward is found reachable,
          and the address the server reached is then advertised.
        """
        assert self.autonat is not None
        cfg = self.config
        await trio.sleep(min(1.0, cfg.autonat_interval_s))
        while True:
            servers = self._autonat_servers()
            if servers:
                with trio.move_on_after(2 * cfg.io_timeout_s):
                    await self._check_reachability(servers)
            decided = self._reachability.status != "unknown"
            await trio.sleep(cfg.autonat_interval_s if decided else min(3.0, cfg.autonat_interval_s))

    def _autonat_servers(self) -> list[ID]:
        servers: list[ID] = []
        for peer in list(self.host.get_network().connections):
            if len(servers) >= _AUTONAT_MAX_SERVERS:
                break
            if peer == self.host.get_id() or not any(not _is_relayed(c) for c in self._live_conns(peer)):
                continue  # AutoNAT servers refuse requests arriving over a relay
            with contextlib.suppress(Exception):
                if AUTONAT_PROTOCOL_ID in (self.host.get_peerstore().get_protocols(peer) or []):
                    servers.append(peer)
        return servers

    def _autonat_candidates(self) -> list[bytes]:
        """Our advertised direct addresses plus predicted public ones (observed IP, listen port)."""
        addrs = [a for a in self._advertised_addrs(list(self.host.get_transport_addrs()))
                 if "/p2p-circuit" not in str(a)]
        seen = {_thin_waist(a) for a in addrs}
        ports = sorted({a.value_for_protocol("tcp") for a in self.host.get_transport_addrs()
                        if "/tcp/" in str(a)})
        manager = getattr(self.host, "_observed_addr_manager", None)
        observed: list[multiaddr.Multiaddr] = []
        with contextlib.suppress(Exception):
            observed = list(manager.addrs(min_observers=1)) if manager is not None else []
        for obs in observed:
            text = str(obs)
            if not text.startswith("/ip4/") or "/p2p-circuit" in text:
                continue
            ip = text.split("/")[2]
            for port in ports:
                candidate = multiaddr.Multiaddr(f"/ip4/{ip}/tcp/{port}")
                if _thin_waist(candidate) not in seen:
                    seen.add(_thin_waist(candidate))
                    addrs.append(candidate)
        return [a.to_bytes() for a in addrs]

    async def _check_reachability(self, servers: list[ID]) -> None:
        assert self.autonat is not None
        candidates = self._autonat_candidates()
        reached: list[str] = []

        autonat = self.autonat
        assert autonat is not None

        async def ask(server: ID) -> None:
            try:
                status, addr = await autonat.query_server(server, candidates, timeout=2 * self.config.io_timeout_s)
            except Exception as exc:
                log.debug("AutoNAT query to %s failed: %s", server, exc)
                return
            if status == AutoNATMessage.OK:
                self._autonat_votes[server.to_base58()] = True
                if addr:
                    with contextlib.suppress(Exception):
                        reached.append(_thin_waist(multiaddr.Multiaddr(addr)))
            elif status in (AutoNATMessage.E_DIAL_ERROR, AutoNATMessage.E_DIAL_REFUSED):
                # E_DIAL_REFUSED: none of our addresses carries the IP the server sees us at.
                self._autonat_votes[server.to_base58()] = False

        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(ask, server)
        votes = dict(self._autonat_votes)
        public = sum(1 for ok in votes.values() if ok)
        private = len(votes) - public
        required = max(1, min(self.config.autonat_confirmations, len(votes)))
        status: ReachabilityStatus = self._reachability.status
        if public >= required and public > private:
            status = "public"
        elif private >= required and private > public:
            status = "private"
        advertised = {_thin_waist(a) for a in self._advertised_addrs(list(self.host.get_transport_addrs()))}
        new_public = [a for a in reached if a not in advertised and a not in self._public_addrs]
        if status == "public" and new_public:
            self._public_addrs.extend(new_public)  # e.g. a port forward: advertise what was reached
            self._refresh_addrs()
        self._set_reachability(status, public, private)

    def _set_reachability(self, status: ReachabilityStatus, public: int, private: int) -> None:
        with self._lock:
            previous = self._reachability.status
            self._reachability = Reachability(status, public, private, tuple(self._relay_addrs), time.time())
        if status == previous:
            return
        log.info("AutoNAT: this node is %s (%d peer(s) dialed back, %d could not)", status, public, private,
                 extra={"event": "reachability", "status": status, "public_votes": public,
                        "private_votes": private})
        self._emit(ReachabilityChanged(status))
        self._refresh_addrs()
        for peer in list(self.host.get_network().connections):
            self._update_peer_view(peer)  # the hole-punched/direct label depends on the verdict

    # ------------------------------------------------------------------ gossip

    def _wrap_validator(self, validator: Validator) -> Callable[[ID, Any], bool]:
        max_size = self.config.gossip.max_message_size
        stats = self.stats
        self_id = self._self_id_bytes

        def check(_forwarder: ID, msg: Any) -> bool:
            if msg.from_id == self_id:
                return True  # our own publication; publish() checked the size
            data = msg.data
            if len(data) > max_size:
                stats.reject("oversized")
                return False
            try:
                sender = ID(msg.from_id).to_base58()
            except Exception:
                stats.reject("malformed")
                return False
            try:
                reason = validator(bytes(data), sender)
            except Exception:
                log.exception("gossip validator raised; rejecting the message")
                reason = "validator_error"
            if reason is None:
                return True
            stats.reject(str(reason))
            return False

        return check

    async def subscribe(self, topic: str, validator: Validator) -> None:
        self.pubsub.set_topic_validator(topic, self._wrap_validator(validator), False)
        if topic in self._subscriptions:
            return
        subscription = await self.pubsub.subscribe(topic)
        self._subscriptions[topic] = subscription
        assert self._nursery is not None
        self._nursery.start_soon(self._pump, topic, subscription)

    async def unsubscribe(self, topic: str) -> None:
        if self._subscriptions.pop(topic, None) is None:
            return
        await self.pubsub.unsubscribe(topic)
        self.pubsub.remove_topic_validator(topic)

    async def _pump(self, topic: str, subscription: Any) -> None:
        """Move delivered messages to the asyncio queue at once (the library's channel holds 32)."""
        with contextlib.suppress(trio.EndOfChannel, trio.ClosedResourceError):
            while topic in self._subscriptions:
                msg = await subscription.get()
                if msg.from_id == self._self_id_bytes:
                    continue
                try:
                    sender = ID(msg.from_id).to_base58()
                except Exception:
                    continue
                data = bytes(msg.data)
                self.stats.add("gossip_received")
                self.stats.add("gossip_bytes_received", len(data))
                self._seen(sender)
                self._emit(GossipMessage(topic, data, sender, time.time()))

    async def publish(self, topic: str, data: bytes) -> None:
        await self.pubsub.publish(topic, data)
        self.stats.add("gossip_published")
        self.stats.add("gossip_bytes_published", len(data))

    async def topic_peers(self, topic: str) -> list[str]:
        return sorted(p.to_base58() for p in self.pubsub.peer_topics.get(topic, set()))

    # ------------------------------------------------------------------ DHT

    async def provide(self, key: bytes) -> None:
        self._provided.add(bytes(key))
        with trio.move_on_after(2 * self.config.io_timeout_s):
            await self.dht.provider_store.provide(bytes(key))

    async def find_providers(self, key: bytes, count: int) -> list[str]:
        """Providers known locally plus those the closest peers know.

        The library's find_providers() returns only the local record as soon as there is one (for
        instance when this node provides the key itself) and never asks the network; a
        federation key is provided by every member, so ask the closest peers every time.
        """
        key = bytes(key)
        store = self.dht.provider_store
        found: dict[ID, Libp2pPeerInfo] = {}
        for info in store.get_providers(key):
            found.setdefault(info.peer_id, info)

        async def providers_from(peer: ID) -> None:
            providers, _ = await store._get_providers_from_peer_with_closers(peer, key)
            for info in providers:
                found.setdefault(info.peer_id, info)

        await self._with_closest_peers(key, providers_from)
        me = self.host.get_id()
        peerstore = self.host.get_peerstore()
        result = []
        for peer, info in found.items():
            if peer == me:
                continue
            if info.addrs:
                with contextlib.suppress(Exception):
                    peerstore.add_addrs(peer, info.addrs, 3600)
            result.append(peer.to_base58())
            if len(result) >= count:
                break
        return result

    async def put_record(self, key: str, value: bytes) -> None:
        """Validate, store here and at the closest peers (each validates and refuses a worse value).

        Not the library's put_value(): its network lookup can spend the whole budget on dead
        peers from the routing table before storing anywhere (see _with_closest_peers).
        """
        validator = self.dht.validator
        validator.validate(key, value)  # raises ValueError / InvalidRecordType
        key_bytes = key.encode()
        held = self.dht.value_store.get(key_bytes)
        if held is not None and held.value != value and validator.select(key, [value, held.value]) != 0:
            raise ValueError("this node holds a better record for the key; merge it first")
        self.dht.value_store.put(key_bytes, value)

        async def store_at(peer: ID) -> None:
            await self.dht.value_store._store_at_peer(peer, key_bytes, value)

        await self._with_closest_peers(key_bytes, store_at)

    async def get_records(self, key: str) -> list[bytes]:
        """Every distinct valid value of ``key``: the local one plus those the closest peers hold.

        The library's get_value() returns the local record as soon as there is one and never asks
        the network (as find_providers does), and keeps only one "best" value; a reader that merges
        records (revocation lists are sets) wants them all.
        """
        key_bytes = key.encode()
        validator = self.dht.validator
        values: list[bytes] = []

        def keep(value: bytes | None) -> None:
            if value is None or value in values:
                return
            with contextlib.suppress(Exception):
                validator.validate(key, value)
                values.append(value)

        local = self.dht.value_store.get(key_bytes)
        keep(local.value if local is not None else None)

        async def read_from(peer: ID) -> None:
            value = await self.dht.value_store._get_from_peer(peer, key_bytes)
            keep(value if isinstance(value, bytes) else None)

        await self._with_closest_peers(key_bytes, read_from)
        return list(values)  # a copy: an action that outlived the deadline may still append

    async def _with_closest_peers(self, key: bytes, action: Callable[[ID], Awaitable[None]]) -> None:
        """Run ``action(peer)`` for the 20 peers closest to ``key``: those of the routing table at
        once, those a network lookup finds as soon as it returns. Each action is bounded by
        io_timeout_s and its errors ignored; this returns after 2 x io_timeout_s at the latest.

        Starting with the routing table matters: the iterative lookup dials stale entries (peers
        that left) and can take the whole budget, leaving the live peers unasked. The actions run
        in the node's nursery, not in one of ours: a library stream clean-up is shielded from
        cancellation and was seen to outlive its deadline, which would hold a local nursery open.
        """
        io = self.config.io_timeout_s
        nursery = self._nursery
        if nursery is None:
            raise MeshError("the mesh is not running")
        asked: set[ID] = {self.host.get_id()}
        outstanding = [1]  # the network lookup, plus one per asked peer
        all_done = trio.Event()

        def finished() -> None:
            outstanding[0] -= 1
            if outstanding[0] == 0:
                all_done.set()

        async def bounded(peer: ID) -> None:
            try:
                with trio.move_on_after(io), contextlib.suppress(Exception):
                    await action(peer)
            finally:
                finished()

        def ask(peers: list[ID]) -> None:
            for peer in peers:
                if len(asked) > 20:
                    return
                if peer not in asked:
                    asked.add(peer)
                    outstanding[0] += 1
                    nursery.start_soon(bounded, peer)

        async def lookup() -> None:
            try:
                with trio.move_on_after(io), contextlib.suppress(Exception):
                    ask(list(await self.dht.peer_routing.find_closest_peers_network(key)))
            finally:
                finished()

        ask(list(self.dht.routing_table.find_local_closest_peers(key, 20)))
        nursery.start_soon(lookup)
        with trio.move_on_after(2 * io):
            await all_done.wait()

    # ------------------------------------------------------------------ blob transfer

    async def _handle_transfer(self, stream: INetStream) -> None:
        """Provider side of /fednode/transfer/1.0.0: one request per stream."""
        io = self.config.io_timeout_s
        answer = None
        try:
            reader = _FrameReader(stream, io)
            frame = await reader.read_frame(MAX_HEADER_FRAME)
            requester = stream.muxed_conn.peer_id.to_base58()
            answer = answer_request(self.store, frame, self.config.fetch_chunk_size, admits(self.serve_admission, requester))
            await _write_frame(stream, answer.response.SerializeToString(), io)
            if answer.data is None:
                self.stats.refuse(status_name(answer.response.status))
                return
            view = answer.data
            chunk = self.config.fetch_chunk_size
            for start in range(0, len(view), chunk):
                piece = view[start : start + chunk]
                await _write_frame(stream, piece, io, prefix=chunk_prefix(len(piece)))
                self.stats.add("blob_bytes_sent", len(piece))
            self.stats.add("uploads_served")
        except Exception as exc:
            log.debug("transfer stream dropped: %s", exc)
            with contextlib.suppress(Exception):
                await stream.reset()
        finally:
            if answer is not None and answer.upload_slot:
                self.store.end_upload()
            await _close_stream(stream)

    async def _handle_request(self, stream: INetStream) -> None:
        """Responder side of /fednode/request/1.0.0: frame 1 = kind, frame 2 = request; the
        answer is one frame: status byte (0 = ok, 1 = error) then the response or the error text.
        The handler runs on the asyncio side; a worker thread waits for it so trio stays free."""
        io = self.config.io_timeout_s
        peer = str(stream.muxed_conn.peer_id)
        try:
            reader = _FrameReader(stream, io)
            kind = (await reader.read_frame(64)).decode("utf-8", "replace")
            data = await reader.read_frame(MAX_REQUEST_FRAME)
            handler = self.request_handler
            if handler is None:
                answer = b"\x01no request handler on this node"
            else:
                try:
                    # trio-typing's stubs (a libp2p dependency) shadow trio's own types and predate abandon_on_cancel
                    result = await trio.to_thread.run_sync(  # type: ignore[call-arg]
                        handler, kind, data, peer, abandon_on_cancel=True)
                    answer = b"\x00" + result
                except Exception as exc:
                    answer = b"\x01" + str(exc)[:500].encode()
            await _write_frame(stream, answer, io)
        except Exception as exc:
            log.debug("request stream from %s dropped: %s", peer, exc)
            with contextlib.suppress(Exception):
                await stream.reset()
        finally:
            await _close_stream(stream)

    async def _open_stream(self, resolve_peer: Callable[[], Awaitable[ID]], protocol: str, timeout: float, what: str) -> Any:
        """Resolve the peer, connect if needed and open a stream for `protocol`, all within
        `timeout`; failures become DialError (MeshError subclasses pass through)."""
        try:
            with trio.fail_after(timeout):
                peer = await resolve_peer()
                await self._ensure_connected(peer)
                try:
                    return await self.host.new_stream(peer, [TProtocol(protocol)])
                except (trio.TooSlowError, MeshError):
                    raise
                except Exception as exc:
                    raise StreamOpenError(f"cannot open {what}: {exc}") from exc
        except trio.TooSlowError as exc:
            raise DialError(f"opening {what} timed out") from exc
        except MeshError:
            raise
        except Exception as exc:
            raise DialError(f"cannot open {what}: {exc}") from exc

    async def request(self, target: str, kind: str, data: bytes, max_response: int) -> bytes:
        """Requester side: dial `target` (a full multiaddr or a peer id), send, read the answer."""
        io = self.config.io_timeout_s

        async def peer_of_target() -> ID:
            return ID.from_base58(await self.connect(target)) if target.startswith("/") else ID.from_base58(target)

        stream = await self._open_stream(peer_of_target, REQUEST_PROTOCOL, 3 * io, f"a request stream to {target}")
        try:
            await _write_frame(stream, kind.encode(), io)
            await _write_frame(stream, data, io)
            with trio.fail_after(io), contextlib.suppress(Exception):
                await stream.close_write()
            # The responder may take a while (e.g. an fsync before answering): allow 3 steps.
            answer = await _FrameReader(stream, 3 * io).read_frame(max_response + 1)
        except trio.TooSlowError as exc:
            raise TimeoutError(f"no answer from {target} within {3 * io:.0f} s") from exc
        finally:
            await _close_stream(stream)
        if not answer:
            raise TransferProtocolError("empty answer")
        if answer[0] != 0:
            raise MeshError(f"{target} refused the request: {answer[1:].decode('utf-8', 'replace')}")
        return answer[1:]

    async def fetch_range(self, peer_key: str, state: FetchState) -> None:
        """Requester side over a libp2p stream: fill ``state`` from ``state.received`` on."""
        io = self.config.io_timeout_s

        async def peer_of_key() -> ID:
            return ID.from_base58(peer_key)

        stream = await self._open_stream(peer_of_key, TRANSFER_PROTOCOL, io, f"a transfer stream to {peer_key}")
        try:
            await _write_frame(stream, build_request(state), io)
            with trio.fail_after(io), contextlib.suppress(Exception):
                await stream.close_write()  # one request per stream: tell the provider so
            reader = _FrameReader(stream, io)
            remaining, chunk_size = state.accept_response(await reader.read_frame(MAX_HEADER_FRAME), peer_key)
            while remaining > 0:
                data = parse_chunk(await reader.read_frame(chunk_size + 8))
                if not 0 < len(data) <= min(remaining, chunk_size):
                    raise TransferProtocolError("chunk outside the announced range")
                state.add(data)
                remaining -= len(data)
                self.stats.add("blob_bytes_received", len(data))
        except trio.TooSlowError as exc:
            raise TimeoutError(f"transfer from {peer_key} stalled for {io} s") from exc
        finally:
            await _close_stream(stream)

    async def _handle_fastpath_info(self, stream: INetStream) -> None:
        try:
            await _write_frame(stream, self._fastpath_info_for_peers(), self.config.io_timeout_s)
        except Exception as exc:
            log.debug("fast-path info stream dropped: %s", exc)
        finally:
            await _close_stream(stream)

    def _fastpath_info_for_peers(self) -> bytes:
        """Our FastPathInfo; for a wildcard listener, ``hosts`` lists the IPs we advertise.

        A requester dials the fast path only where we say we listen (see fastpath_target), so a
        node behind a NAT (advertising its LAN address) is not dialed at its router's public
        address, where the fast-path port is not forwarded and the SYN would be dropped.
        """
        info = transfer_pb2.FastPathInfo.FromString(self._fast_path_info)
        if info.port and not info.hosts and self.config.fast_path_announce_port is None:
            for addr in self.listen_multiaddrs():
                parts = addr.split("/")
                direct = "/p2p-circuit" not in addr and len(parts) > 2 and parts[1] in ("ip4", "ip6")
                if direct and parts[2] not in info.hosts:
                    info.hosts.append(parts[2])
        return info.SerializeToString()

    async def fastpath_target(self, peer_key: str) -> tuple[list[str], int] | None:
        """Where to reach ``peer_key``'s fast path, or None (use the libp2p stream).

        None when the connection is relayed only, the peer has no fast path, a fast-path
        connect to it failed in the last ``_FASTPATH_RETRY_S``, or the address we reach it at
        is not one it listens on: a NATed peer reached through its router's public address
        (hole-punched, or dialing us) has only its libp2p port mapped, never the fast path's.
        """
        io = self.config.io_timeout_s
        peer = ID.from_base58(peer_key)
        failed = self._fastpath_unreachable.get(peer_key)
        if failed is not None and time.monotonic() - failed < _FASTPATH_RETRY_S:
            return None
        try:
            with trio.fail_after(io):
                await self._ensure_connected(peer)
        except Exception:
            return None
        direct = [c for c in self._live_conns(peer) if not _is_relayed(c)]
        if not direct:
            return None
        conn_ips = [ip for ip in (_remote_ip(c) for c in direct) if ip]
        cached = self._fastpath_cache.get(peer_key)
        if cached is not None and time.monotonic() - cached[0] < _FASTPATH_INFO_TTL_S:
            info = cached[1]
        else:
            info = transfer_pb2.FastPathInfo()
            stream = None
            fetched_at = time.monotonic()
            try:
                with trio.fail_after(io):
                    stream = await self.host.new_stream(peer, [TProtocol(FASTPATH_INFO_PROTOCOL)])
                    info = transfer_pb2.FastPathInfo.FromString(
                        await _FrameReader(stream, io).read_frame(MAX_HEADER_FRAME)
                    )
            except Exception as exc:  # an older or foreign peer, or a busy one: no fast path for now
                log.debug("no fast-path info from %s: %r", peer_key, exc)
                fetched_at -= _FASTPATH_INFO_TTL_S - _FASTPATH_INFO_RETRY_S  # expires in _FASTPATH_INFO_RETRY_S
            finally:
                if stream is not None:
                    await _close_stream(stream)
            self._fastpath_cache[peer_key] = (fetched_at, info)
        if not info.port or info.version != CHANNEL_VERSION:
            return None
        listed = [h for h in info.hosts if h not in _WILDCARDS]
        # No hosts listed: "use the connection's address" (e.g. a forwarded fast-path port).
        hosts = [ip for ip in dict.fromkeys(conn_ips) if ip in listed] if listed else conn_ips[:1]
        return (hosts, info.port) if hosts else None

    async def forget_fastpath(self, peer_key: str, unreachable: bool = False) -> None:
        """Drop the cached fast-path info; ``unreachable``: also skip the fast path for a while."""
        self._fastpath_cache.pop(peer_key, None)
        if unreachable:
            self._fastpath_unreachable[peer_key] = time.monotonic()


class _SizedRecordValidator(Libp2pRecordValidator):
    """A RecordValidator behind the library's Validator interface, with a size cap first (so an
    oversized value is refused before anything parses it)."""

    def __init__(self, rules: RecordValidator, max_size: int) -> None:
        self.rules = rules
        self.max_size = max_size

    def validate(self, key: str, value: bytes) -> None:
        if len(value) > self.max_size:
            raise ValueError(f"record of {len(value)} bytes > {self.max_size}")
        self.rules.validate(key, bytes(value))

    def select(self, key: str, values: list[bytes]) -> int:
        return self.rules.select(key, [bytes(v) for v in values])
