"""What every protocol module of the node shares: the configuration, the libp2p host and the
services built on it, the node's nursery, the lock guarding the snapshots the asyncio thread
reads, and this node's addresses (listen, relay circuits, AutoNAT-confirmed public ones).

One :class:`HostContext` per node; :mod:`.node` builds the host into it and hands it to each
collaborator (connections, relay, liveness, gossip, discovery, streams).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.host.basic_host import BasicHost
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.pubsub.pubsub import Pubsub
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.utils.address_validation import expand_wildcard_address

from ..config import MeshConfig
from ..errors import MeshError
from ..types import MeshEvent, StatsCollector
from .wire import WILDCARDS

_ADDRS_CACHE_S = 1.0  # how long our advertised addresses are reused (see install_cached_get_addrs)


class HostContext:
    """Shared state of one node (trio thread; the snapshots under ``lock`` are read from asyncio)."""

    def __init__(self, config: MeshConfig, stats: StatsCollector, emit: Callable[[MeshEvent], None]) -> None:
        self.config = config
        self.stats = stats
        self.emit = emit
        self.lock = threading.Lock()  # guards the snapshots read by the asyncio thread
        self.nursery: trio.Nursery | None = None  # the node's, while it runs
        self.self_id_bytes = b""
        self.addrs: list[str] = []  # what listen_multiaddrs() returns
        self.relay_addrs: list[str] = []  # "<relay addr>/p2p/<relay>/p2p-circuit" we hold a slot on
        self.public_addrs: list[str] = []  # addresses AutoNAT servers reached that we did not advertise
        # Built by the node (node.py, _build):
        self.host: BasicHost
        self.pubsub: Pubsub
        self.dht: KadDHT
        self.circuit: CircuitV2Transport

    def running_nursery(self) -> trio.Nursery:
        if self.nursery is None:
            raise MeshError("the mesh is not running")
        return self.nursery

    # ------------------------------------------------------------------ addresses

    def advertised_addrs(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        """What identify, the DHT and listen_multiaddrs() advertise (without /p2p/<self>)."""
        if self.config.announce_multiaddrs is not None:
            base = [multiaddr.Multiaddr(a) for a in self.config.announce_multiaddrs]
        else:
            base = []
            for addr in candidates:
                ip = addr.value_for_protocol("ip4") if "/ip4/" in str(addr) else None
                if ip in WILDCARDS or (ip is None and "/ip6/::/" in str(addr)):
                    base.extend(expand_wildcard_address(addr))
                else:
                    base.append(addr)
            # Public addresses AutoNAT servers reached that the interfaces do not show (a port
            # forward on the NAT router): advertise them, so peers dial directly.
            base.extend(multiaddr.Multiaddr(a) for a in self.public_addrs)
        seen: set[str] = set()
        result = []
        for addr in base:
            if str(addr) not in seen:
                seen.add(str(addr))
                result.append(addr)
        return result

    def install_cached_get_addrs(self) -> None:
        """Make the host advertise our relay circuits, and cache its addresses briefly.

        BasicHost.get_addrs() strips the first /p2p/ component of every address and appends
        our id, which turns "<relay>/p2p/<R>/p2p-circuit" into "<relay>/p2p/<us>" (0.8.1).
        Append the circuit addresses after it instead, on this instance only, so identify,
        the DHT and listen_multiaddrs() all advertise them correctly.

        Cached for _ADDRS_CACHE_S: py-libp2p calls get_addrs() for every pubsub RPC it sends
        (to attach our signed peer record), and a call walks the listeners, the observed
        addresses and the interfaces (8 % of the networking thread's CPU in a 4-daemon run).
        Relay slots, AutoNAT-confirmed addresses and listeners invalidate the cache at once.
        """
        plain_get_addrs = self.host.get_addrs
        me = self.host.get_id().to_base58()
        network = self.host.get_network()
        cached_key: tuple[Any, ...] | None = None
        cached_at = 0.0
        cached_addrs: list[multiaddr.Multiaddr] = []

        def get_addrs() -> list[multiaddr.Multiaddr]:
            nonlocal cached_key, cached_at, cached_addrs
            key = (tuple(self.relay_addrs), tuple(self.public_addrs), tuple(network.listeners))
            now = time.monotonic()
            if key != cached_key or now - cached_at > _ADDRS_CACHE_S:
                circuits = [multiaddr.Multiaddr(f"{a}/p2p/{me}") for a in self.relay_addrs]
                cached_key, cached_at, cached_addrs = key, now, list(plain_get_addrs()) + circuits
            return list(cached_addrs)

        self.host.get_addrs = get_addrs  # type: ignore[method-assign]

    def refresh_addrs(self) -> None:
        addrs = [str(a) for a in self.host.get_addrs()]
        with self.lock:
            self.addrs = addrs

    def listen_multiaddrs(self) -> list[str]:
        with self.lock:
            return list(self.addrs)
