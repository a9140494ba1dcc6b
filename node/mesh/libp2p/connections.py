"""Connections and dialing: who we are connected to and how (direct, relayed, hole-punched),
the peer view the asyncio side reads, connect/disconnect events, and every dial of the host
(NAT-aware: direct and relayed legs race; a named peer is retried past the swarm's 60 s
negative cache).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from ..errors import DialError, MeshError
from ..types import ConnectionKind, PeerConnected, PeerDisconnected, PeerInfo
from .context import HostContext
from .wire import close_conn, is_relayed, local_port, remote_addr, thin_waist

log = logging.getLogger(__name__)

# A relay dial starts this long after the direct dials (go-libp2p's dial ranker waits 500 ms too):
# a reachable direct address usually answers well within it, an unreachable one never does.
RELAY_DIAL_DELAY_S = 0.5


@dataclass
class _PeerRecord:
    latency_ms: float | None = None
    last_seen: float = field(default_factory=time.time)
    was_relayed: bool = False  # a relayed connection existed before the direct one: hole-punched


class _Notifee(INotifee):
    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._connections.on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._connections.on_disconnected(conn)

    async def listen(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None


def _nothing(_: Any) -> None:
    return None


class Connections:
    """Peer bookkeeping (read from the asyncio thread under the context's lock) and dialing.

    The hooks are set by the node that owns this object (the other concerns react to
    connection changes through them, without this module knowing them).
    """

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self._peers: dict[str, _PeerRecord] = {}
        self._peer_view: dict[str, PeerInfo] = {}
        #: Is this node publicly reachable (AutoNAT)? A direct connection is then never "hole-punched".
        self.is_public: Callable[[], bool] = lambda: False
        #: Started in the node's nursery for each new peer (a first ping).
        self.on_new_peer: Callable[[ID], Awaitable[None]] | None = None
        #: Called with a peer id when no direct connection to it is left (a relay's slot is gone).
        self.on_direct_lost: Callable[[str], None] = _nothing
        #: Called with a peer id when its last connection closed.
        self.on_peer_gone: Callable[[str], None] = _nothing

    def install(self) -> None:
        """Follow the host's connections and route its dials through the NAT-aware dialer."""
        self.ctx.host.get_network().register_notifee(_Notifee(self))
        self._install_nat_aware_dialer()

    # ------------------------------------------------------------------ peer view

    def peers(self) -> list[PeerInfo]:
        with self.ctx.lock:
            return list(self._peer_view.values())

    def live_conns(self, peer: ID) -> list[INetConn]:
        conns = self.ctx.host.get_network().connections.get(peer) or []
        if not isinstance(conns, list):
            conns = [conns]
        return [c for c in conns if not getattr(c, "is_closed", False)]

    def update_peer_view(self, peer: ID, closing: INetConn | None = None) -> None:
        """Recompute the asyncio-visible view of one peer (trio thread only).

        Logs a ``peer_connection`` record whenever the best connection kind to a peer changes
        (first connection, relayed -> hole-punched, direct -> relayed after a drop, gone), so an
        operator or a test can follow NAT traversal from the logs alone.
        """
        key = peer.to_base58()
        conns = [c for c in self.live_conns(peer) if c is not closing]
        with self.ctx.lock:
            record = self._peers.get(key)
            previous = self._peer_view.get(key)
            if not conns or record is None:
                self._peer_view.pop(key, None)
                view = None
            else:
                direct = [c for c in conns if not is_relayed(c)]
                kind: ConnectionKind = "relayed"
                if direct:
                    kind = "hole-punched" if record.was_relayed and self._punched(peer, direct) else "direct"
                view = PeerInfo(
                    peer_id=key,
                    addrs=tuple(remote_addr(c) for c in conns),
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
        if self.is_public():
            return False
        advertised: set[str] = set()
        with contextlib.suppress(Exception):
            envelope = self.ctx.host.get_peerstore().get_peer_record(peer)
            if envelope is not None:
                advertised = {thin_waist(a) for a in envelope.record().addrs}
        listen_ports = {int(a.value_for_protocol("tcp")) for a in self.ctx.host.get_transport_addrs()
                        if "/tcp/" in str(a)}
        for conn in direct:
            remote = remote_addr(conn)
            if remote and thin_waist(multiaddr.Multiaddr(remote)) in advertised:
                return False
        return any(local_port(c) in listen_ports for c in direct)

    def on_connected(self, conn: INetConn) -> None:
        try:
            peer = conn.muxed_conn.peer_id
        except Exception:
            return
        if peer == self.ctx.host.get_id():
            # Dialing one of our own addresses (a stale peer record, a DHT entry) reaches us;
            # Noise accepts it since both ends hold the key. Never a peer: close it.
            if self.ctx.nursery is not None:
                with contextlib.suppress(RuntimeError):
                    self.ctx.nursery.start_soon(close_conn, conn)
            return
        key = peer.to_base58()
        with self.ctx.lock:
            new = key not in self._peer_view
            record = self._peers.setdefault(key, _PeerRecord())
            record.last_seen = time.time()
        if is_relayed(conn) and not any(not is_relayed(c) for c in self.live_conns(peer)):
            record.was_relayed = True  # a direct connection appearing later is an upgrade
        self.update_peer_view(peer)
        if new and self.ctx.nursery is not None and self.on_new_peer is not None:
            with contextlib.suppress(RuntimeError):
                self.ctx.nursery.start_soon(self.on_new_peer, peer)
        if new:
            view = self._peer_view.get(key)
            kind: ConnectionKind = view.connection if view else ("relayed" if is_relayed(conn) else "direct")
            self.ctx.emit(PeerConnected(key, kind, remote_addr(conn)))

    def on_disconnected(self, conn: INetConn) -> None:
        try:
            peer = conn.muxed_conn.peer_id
        except Exception:
            return
        if peer == self.ctx.host.get_id():
            return
        key = peer.to_base58()
        remaining = [c for c in self.live_conns(peer) if c is not conn]
        if not any(not is_relayed(c) for c in remaining):
            self.on_direct_lost(key)  # a relay's slot went with it (re-reserved by the maintenance loop)
        if remaining:
            self.update_peer_view(peer, closing=conn)
            return
        with self.ctx.lock:
            known = key in self._peer_view
        self.update_peer_view(peer, closing=conn)  # logs the change to "none"
        with self.ctx.lock:
            record = self._peers.get(key)
            if record is not None:
                record.was_relayed = False
        self.on_peer_gone(key)
        if known:
            self.ctx.emit(PeerDisconnected(key))

    def seen(self, key: str) -> None:
        with self.ctx.lock:
            record = self._peers.get(key)
            view = self._peer_view.get(key)
            if record is not None:
                record.last_seen = time.time()
            if view is not None and record is not None:
                self._peer_view[key] = PeerInfo(view.peer_id, view.addrs, view.connection, record.latency_ms,
                                                record.last_seen)

    def record_latency(self, peer: ID, rtt_ms: float) -> None:
        """A ping answered: note its round trip and update the view."""
        key = peer.to_base58()
        with self.ctx.lock:
            record = self._peers.get(key)
            if record is not None:
                record.latency_ms = rtt_ms
                record.last_seen = time.time()
        self.update_peer_view(peer)

    def refresh_views(self) -> None:
        """Recompute every peer's view (the hole-punched/direct label depends on AutoNAT's verdict)."""
        for peer in list(self.ctx.host.get_network().connections):
            self.update_peer_view(peer)

    # ------------------------------------------------------------------ dialing

    async def dial_circuit(self, maddr: multiaddr.Multiaddr) -> ID:
        """Dial a /p2p-circuit address (the swarm's own dialer skips them)."""
        _, dest = self.ctx.circuit.parse_circuit_ma(maddr)
        self.ctx.host.get_peerstore().add_addrs(dest, [maddr], 3600)
        await self.ctx.circuit.dial(maddr)
        return dest

    async def ensure_connected(self, peer: ID) -> None:
        """Reuse a connection, else dial (NAT-aware, see _install_nat_aware_dialer), else ask the DHT
        and retry.
        The retry ignores the swarm's 60 s negative cache: our callers name a peer they heard
        from lately and back off themselves, and a peer that failed once under load would
        otherwise be refused for a minute (a member catching up then found nobody to fetch from)."""
        if self.live_conns(peer):
            return
        network = self.ctx.host.get_network()
        errors: list[str] = []
        for attempt in range(2):
            try:
                await network.dial_peer(peer)
                if self.live_conns(peer):
                    return
            except Exception as exc:
                errors.append(str(exc) or type(exc).__name__)
            if attempt == 0:
                self.forget_failed_dials(peer)
                with contextlib.suppress(Exception):
                    found = await self.ctx.dht.find_peer(peer)
                    if found is not None and found.addrs:
                        self.ctx.host.get_peerstore().add_addrs(peer, found.addrs, 3600)
                continue
            break
        raise DialError(f"cannot reach {peer.to_base58()}: {'; '.join(errors) or 'no known address'}")

    def _install_nat_aware_dialer(self) -> None:
        """Route every dial of the host (DHT, pubsub, identify, our streams) through a NAT-aware
        ``dial_peer``.

        The swarm's own ``dial_peer`` skips /p2p-circuit addresses, so the DHT and every
        ``new_stream`` could never reach a NATed peer that was not connected yet; and it dials
        a NATed peer's private LAN address, which the internet drops silently, until its time-out.
        Overridden on this host instance only, like ``get_addrs``.
        """
        network = self.ctx.host.get_network()
        plain_dial_peer = network.dial_peer

        async def dial_peer(peer: ID) -> list[INetConn]:
            live = self.live_conns(peer)
            if live:
                return live
            if peer == self.ctx.host.get_id():
                raise SwarmException("refusing to dial this node itself")
            try:
                addrs = list(self.ctx.host.get_peerstore().addrs(peer))
            except Exception:
                addrs = []
            relayed = [a for a in addrs if "/p2p-circuit" in str(a)]
            if not relayed:
                return await plain_dial_peer(peer)
            own = {thin_waist(a) for a in self.ctx.host.get_addrs()}
            direct = [a for a in addrs if "/p2p-circuit" not in str(a) and thin_waist(a) not in own]
            errors: list[str] = []
            try:
                await self._dial_race(peer, plain_dial_peer, bool(direct), relayed, errors)
            finally:
                # A direct dial that reaches the wrong peer (another site's identical private
                # address) makes the swarm clear *all* of this peer's addresses: restore them.
                with contextlib.suppress(Exception):
                    self.ctx.host.get_peerstore().add_addrs(peer, addrs, 3600)
            live = self.live_conns(peer)
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
        starts ``RELAY_DIAL_DELAY_S`` after the direct one (at once without direct addresses)
        and the first connection wins. The direct dial runs in the node's nursery, not the
        caller's: when the relay wins, a direct connection that completes later (same LAN, a
        slow but open path) is still kept, and preferred for transfers.
        """
        pending = {"direct": has_direct, "relayed": bool(relayed)}

        async def direct_leg() -> None:
            try:
                with trio.fail_after(self.ctx.config.io_timeout_s):
                    await dial_direct(peer)
            except Exception as exc:
                errors.append(f"direct: {exc or type(exc).__name__}")
            finally:
                pending["direct"] = False

        async def relayed_leg() -> None:
            try:
                deadline = trio.current_time() + (RELAY_DIAL_DELAY_S if has_direct else 0.0)
                while pending["direct"] and trio.current_time() < deadline and not self.live_conns(peer):
                    await trio.sleep(0.02)
                for addr in relayed:
                    if self.live_conns(peer):
                        return
                    try:
                        with trio.fail_after(self.ctx.config.io_timeout_s):
                            await self.dial_circuit(addr)
                        return
                    except Exception as exc:
                        errors.append(f"relay: {exc or type(exc).__name__}")
            finally:
                pending["relayed"] = False

        background = self.ctx.nursery
        if has_direct and background is not None:
            background.start_soon(direct_leg)
        async with trio.open_nursery() as nursery:
            if has_direct and background is None:
                nursery.start_soon(direct_leg)
            if relayed:
                nursery.start_soon(relayed_leg)
            while not self.live_conns(peer) and (pending["direct"] or pending["relayed"]):
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        return bool(self.live_conns(peer))

    async def connect(self, addr: str) -> str:
        """Dial a full multiaddr (direct or /p2p-circuit); return the peer id."""
        try:
            maddr = multiaddr.Multiaddr(addr)
        except Exception as exc:
            raise DialError(f"bad multiaddr {addr!r}: {exc}") from exc
        try:
            with trio.fail_after(self.ctx.config.io_timeout_s):
                if "/p2p-circuit" in addr:
                    peer = await self.dial_circuit(maddr)
                else:
                    info = info_from_p2p_addr(maddr)
                    peer = info.peer_id
                    self.forget_failed_dials(peer)  # an address given explicitly is always tried
                    await self.ctx.host.connect(info)
        except trio.TooSlowError as exc:
            raise DialError(f"dialing {addr} timed out") from exc
        except MeshError:
            raise
        except Exception as exc:
            raise DialError(f"cannot dial {addr}: {exc}") from exc
        with contextlib.suppress(Exception):
            await self.ctx.dht.add_peer(peer)
        return peer.to_base58()

    async def connect_peer(self, peer_key: str) -> None:
        """Connect to a peer by id: known addresses first (direct, then relay), then the DHT."""
        try:
            peer = ID.from_base58(peer_key)
        except Exception as exc:
            raise DialError(f"bad peer id {peer_key!r}") from exc
        try:
            with trio.fail_after(self.ctx.config.io_timeout_s):
                await self.ensure_connected(peer)
        except trio.TooSlowError as exc:
            raise DialError(f"connecting to {peer_key} timed out") from exc
        with contextlib.suppress(Exception):
            await self.ctx.dht.add_peer(peer)

    # ------------------------------------------------------------------ start-up and maintenance

    def forget_failed_dials(self, peer: ID) -> None:
        """The swarm refuses, for 60 s, any dial of a peer whose addresses all failed (its
        "negative cache"). Bootstrap re-dials come every dht_refresh_interval_s (60 s too) and
        explicit dials name an address that may be new: both would be refused for good."""
        with contextlib.suppress(Exception):
            self.ctx.host.get_network().unblock_peer(peer)
