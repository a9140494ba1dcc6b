"""The host and its lifecycle: :class:`Libp2pNode` builds the hardened py-libp2p host and its
services, runs them, and composes one collaborator per protocol concern, which it owns:

* :class:`.connections.Connections`: the peer view, connection events, NAT-aware dialing;
* :class:`.relay.RelayClient`: slots on relays, circuit addresses;
* :class:`.liveness.Pinger` and :class:`.liveness.AutoNATReachability`: pings, reachability;
* :class:`.gossip.Gossip`: topics, validators, delivery;
* :class:`.discovery.Discovery`: bootstrap peers, the DHT, maintenance;
* :class:`.streams.Streams`: blob transfer, requests, the fast-path handshake.

They share one :class:`.context.HostContext` and react to each other through hooks this
module wires (a connection gone releases a relay slot, forgets fast-path info; a verdict
relabels connections), so none of them imports another's owner.

Public methods are coroutines the asyncio side runs through the bridge (``bridge.call(fn, ...)``,
where ``fn`` is one of them, unbound, and receives this node first). They take and return plain
Python values; libp2p exceptions are translated to :mod:`..errors` in the collaborators.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import cast

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, PROTOCOL_ID_V13, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.resources import RelayLimits as Libp2pRelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp.tcp import TCP

from fednode.proto.v1 import transfer_pb2

from ..config import MeshConfig
from ..errors import MeshError
from ..identity import NodeIdentity
from ..transfer import BlobStore, FetchState
from ..types import MeshEvent, PeerInfo, Reachability, StatsCollector, Validator
from . import peer_records
from .connections import Connections
from .context import HostContext
from .discovery import Discovery, SizedRecordValidator
from .gossip import Gossip
from .liveness import AutoNATReachability, Pinger
from .nat import AdmissionRelay, BoundedDCUtR, DialBackAutoNAT
from .relay import RelayClient
from .streams import Streams

log = logging.getLogger(__name__)

_AUTONAT_DIAL_TIMEOUT_S = 5.0  # a server's dial-back; the internet drops SYNs to closed NAT ports silently


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
        self.ctx = HostContext(config, stats, emit)
        #: Relay admission hook (see MeshConfig.relay_admission); replaced by Mesh.set_relay_admission.
        self.relay_admission = config.relay_admission
        self.connections = Connections(self.ctx)
        self.relay_client = RelayClient(self.ctx)
        self.pinger = Pinger(self.ctx, self.connections)
        self.reach = AutoNATReachability(self.ctx, self.connections)
        self.gossip = Gossip(self.ctx, self.connections)
        self.discovery = Discovery(self.ctx, self.connections, self.relay_client)
        self.streams = Streams(self.ctx, self.connections, store, fast_path_info)
        # The concerns react to each other through these hooks:
        self.connections.is_public = self.reach.is_public
        self.connections.on_new_peer = self.pinger.ping_later
        self.connections.on_direct_lost = self.relay_client.on_direct_lost
        self.connections.on_peer_gone = self.streams.peer_gone
        self.relay_client.on_relays_changed = self.reach.relays_changed
        # Built in running():
        self.host: BasicHost
        self.pubsub: Pubsub
        self.gossipsub: GossipSub
        self.dht: KadDHT
        self.relay: AdmissionRelay
        self.circuit: CircuitV2Transport
        self.dcutr: DCUtRProtocol | None = None

    # The asyncio side sets these through Mesh (set_serve_admission, set_request_handler).

    @property
    def serve_admission(self) -> Callable[[str], bool] | None:
        """Who may fetch blobs from this node; None = anyone."""
        return self.streams.serve_admission

    @serve_admission.setter
    def serve_admission(self, admission: Callable[[str], bool] | None) -> None:
        self.streams.serve_admission = admission

    @property
    def request_handler(self) -> Callable[[str, bytes, str], bytes] | None:
        """(kind, data, peer) -> response; None answers every request with "no handler"."""
        return self.streams.request_handler

    @request_handler.setter
    def request_handler(self, handler: Callable[[str, bytes, str], bytes] | None) -> None:
        self.streams.request_handler = handler

    @property
    def autonat(self) -> DialBackAutoNAT | None:
        return self.reach.autonat

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        cfg = self.config
        bootstrap_peers = self.discovery.bootstrap_peers
        for addr in cfg.bootstrap_multiaddrs:
            try:
                bootstrap_peers.append(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            except Exception as exc:
                raise MeshError(f"bad bootstrap multiaddr {addr!r}: {exc}") from exc
        by_peer = {info.peer_id: info for info in bootstrap_peers}
        for addr in cfg.peer_hints:
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            except Exception as exc:
                log.warning("ignoring unusable peer address %r: %s", addr[:200], exc)
                continue
            known = by_peer.get(info.peer_id)
            if known is None:
                by_peer[info.peer_id] = info
                bootstrap_peers.append(info)
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
                addrs_factory=self.ctx.advertised_addrs,
            ),
        )
        ctx = self.ctx
        ctx.host = self.host
        ctx.self_id_bytes = self.host.get_id().to_bytes()
        ctx.install_cached_get_addrs()
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
        self.pubsub = ctx.pubsub = Pubsub(self.host, self.gossipsub, strict_signing=True)
        self.dht = ctx.dht = KadDHT(self.host, DHTMode.SERVER, enable_random_walk=False)
        # Strict: only namespaces with a validator (ours, plus the library's pk and ipns) are
        # stored; the default accepts any key and value from anyone.
        for namespace, rules in cfg.record_validators.items():
            self.dht.set_namespace_validator(namespace, SizedRecordValidator(rules, cfg.max_record_size))
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
        # the relay as a side effect. Reservations are made explicitly (RelayClient.reserve).
        roles = RelayRole.STOP
        if cfg.relay_hop:
            roles |= RelayRole.HOP
        timeout = max(1, int(cfg.io_timeout_s))
        self.relay = AdmissionRelay(
            self.host, admission=lambda: self.relay_admission, max_circuits=limits.max_circuits,
            on_refused=self.relay_client.refused, limits=lp_limits, allow_hop=cfg.relay_hop, read_timeout=timeout,
            write_timeout=timeout,
        )
        self.circuit = ctx.circuit = CircuitV2Transport(
            self.host,
            self.relay,
            RelayConfig(roles=roles, limits=lp_limits, max_circuit_duration=limits.max_circuit_duration_s,
                        max_circuit_bytes=limits.max_circuit_bytes),
        )
        if cfg.enable_autonat:
            self.reach.autonat = DialBackAutoNAT(self.host, dial_timeout=min(cfg.io_timeout_s, _AUTONAT_DIAL_TIMEOUT_S),
                                                 serve=True, confirmations=cfg.autonat_confirmations)
        if cfg.enable_dcutr:
            self.dcutr = BoundedDCUtR(self.host, dial_timeout=timeout)
        self.streams.install()
        self.connections.install()

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
            self.ctx.nursery = nursery
            self.ctx.refresh_addrs()
            nursery.start_soon(self.discovery.maintenance_loop)
            nursery.start_soon(self.pinger.loop)
            if self.reach.autonat is not None:
                nursery.start_soon(self.reach.loop)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ snapshots (any thread)

    def listen_multiaddrs(self) -> list[str]:
        return self.ctx.listen_multiaddrs()

    def reachability(self) -> Reachability:
        return self.reach.reachability()

    def peers(self) -> list[PeerInfo]:
        return self.connections.peers()

    def relays(self) -> list[str]:
        """Peer ids of the relays holding a reservation for us."""
        return self.relay_client.relays()

    # ------------------------------------------------------------------ bridge calls (trio thread)

    async def connect(self, addr: str) -> str:
        return await self.connections.connect(addr)

    async def connect_peer(self, peer_key: str) -> None:
        await self.connections.connect_peer(peer_key)

    async def bootstrap(self) -> None:
        await self.discovery.bootstrap()

    async def subscribe(self, topic: str, validator: Validator) -> None:
        await self.gossip.subscribe(topic, validator)

    async def unsubscribe(self, topic: str) -> None:
        await self.gossip.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.gossip.publish(topic, data)

    async def topic_peers(self, topic: str) -> list[str]:
        return await self.gossip.topic_peers(topic)

    async def provide(self, key: bytes) -> None:
        await self.discovery.provide(key)

    async def find_providers(self, key: bytes, count: int) -> list[str]:
        return await self.discovery.find_providers(key, count)

    async def put_record(self, key: str, value: bytes) -> None:
        await self.discovery.put_record(key, value)

    async def get_records(self, key: str) -> list[bytes]:
        return await self.discovery.get_records(key)

    async def request(self, target: str, kind: str, data: bytes, max_response: int) -> bytes:
        return await self.streams.request(target, kind, data, max_response)

    async def fetch_range(self, peer_key: str, state: FetchState) -> None:
        await self.streams.fetch_range(peer_key, state)

    async def fastpath_target(self, peer_key: str) -> tuple[list[str], int] | None:
        return await self.streams.fastpath_target(peer_key)

    async def forget_fastpath(self, peer_key: str, unreachable: bool = False) -> None:
        await self.streams.forget_fastpath(peer_key, unreachable)
