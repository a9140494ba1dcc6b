"""Liveness and reachability: pings (round-trip time, last seen) to every connected peer, and
the AutoNAT loop that turns dial-back answers into this node's reachability verdict
(public / private / unknown)."""

from __future__ import annotations

import contextlib
import logging
import os
import time

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
from libp2p.host.autonat.pb.autonat_pb2 import Message as AutoNATMessage
from libp2p.peer.id import ID

from ..types import Reachability, ReachabilityChanged, ReachabilityStatus
from .connections import Connections
from .context import HostContext
from .nat import DialBackAutoNAT
from .wire import close_stream, is_relayed, thin_waist

log = logging.getLogger(__name__)

PING_PROTOCOL = TProtocol("/ipfs/ping/1.0.0")
_AUTONAT_MAX_SERVERS = 5


class Pinger:
    """Pings every connected peer each ``ping_interval_s`` (and a new one soon after it connects)."""

    def __init__(self, ctx: HostContext, connections: Connections) -> None:
        self.ctx = ctx
        self.connections = connections

    async def loop(self) -> None:
        while True:
            async with trio.open_nursery() as nursery:
                for peer in list(self.ctx.host.get_network().connections):
                    nursery.start_soon(self.ping, peer)
            await trio.sleep(self.ctx.config.ping_interval_s)

    async def ping_later(self, peer: ID) -> None:
        await trio.sleep(0.5)  # let identify and the rest of the connection set-up go first
        await self.ping(peer)

    async def ping(self, peer: ID) -> None:
        stream = None
        try:
            with trio.fail_after(self.ctx.config.io_timeout_s):
                stream = await self.ctx.host.new_stream(peer, [PING_PROTOCOL])
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
                await close_stream(stream)
        if echo != payload:
            return
        self.connections.record_latency(peer, rtt_ms)


class AutoNATReachability:
    """This node's reachability: AutoNAT servers' votes, the verdict, the snapshot the asyncio side reads."""

    def __init__(self, ctx: HostContext, connections: Connections) -> None:
        self.ctx = ctx
        self.connections = connections
        self._reachability = Reachability("unknown", 0, 0, (), None)
        self._autonat_votes: dict[str, bool] = {}  # server peer id -> it could dial us back
        self.autonat: DialBackAutoNAT | None = None  # built by the node when enabled

    def reachability(self) -> Reachability:
        with self.ctx.lock:
            return self._reachability

    def is_public(self) -> bool:
        return self._reachability.status == "public"

    def relays_changed(self) -> None:
        """The relay slots changed: the snapshot lists them."""
        with self.ctx.lock:
            r = self._reachability
            self._reachability = Reachability(r.status, r.public_votes, r.private_votes, tuple(self.ctx.relay_addrs),
                                              r.checked_at)

    async def loop(self) -> None:
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
        cfg = self.ctx.config
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
        for peer in list(self.ctx.host.get_network().connections):
            if len(servers) >= _AUTONAT_MAX_SERVERS:
                break
            if peer == self.ctx.host.get_id() or not any(not is_relayed(c) for c in self.connections.live_conns(peer)):
                continue  # AutoNAT servers refuse requests arriving over a relay
            with contextlib.suppress(Exception):
                if AUTONAT_PROTOCOL_ID in (self.ctx.host.get_peerstore().get_protocols(peer) or []):
                    servers.append(peer)
        return servers

    def _autonat_candidates(self) -> list[bytes]:
        """Our advertised direct addresses plus predicted public ones (observed IP, listen port)."""
        addrs = [a for a in self.ctx.advertised_addrs(list(self.ctx.host.get_transport_addrs()))
                 if "/p2p-circuit" not in str(a)]
        seen = {thin_waist(a) for a in addrs}
        ports = sorted({a.value_for_protocol("tcp") for a in self.ctx.host.get_transport_addrs()
                        if "/tcp/" in str(a)})
        manager = getattr(self.ctx.host, "_observed_addr_manager", None)
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
                if thin_waist(candidate) not in seen:
                    seen.add(thin_waist(candidate))
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
                status, addr = await autonat.query_server(server, candidates, timeout=2 * self.ctx.config.io_timeout_s)
            except Exception as exc:
                log.debug("AutoNAT query to %s failed: %s", server, exc)
                return
            if status == AutoNATMessage.OK:
                self._autonat_votes[server.to_base58()] = True
                if addr:
                    with contextlib.suppress(Exception):
                        reached.append(thin_waist(multiaddr.Multiaddr(addr)))
            elif status in (AutoNATMessage.E_DIAL_ERROR, AutoNATMessage.E_DIAL_REFUSED):
                # E_DIAL_REFUSED: none of our addresses carries the IP the server sees us at.
                self._autonat_votes[server.to_base58()] = False

        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(ask, server)
        votes = dict(self._autonat_votes)
        public = sum(1 for ok in votes.values() if ok)
        private = len(votes) - public
        required = max(1, min(self.ctx.config.autonat_confirmations, len(votes)))
        status: ReachabilityStatus = self._reachability.status
        if public >= required and public > private:
            status = "public"
        elif private >= required and private > public:
            status = "private"
        advertised = {thin_waist(a) for a in self.ctx.advertised_addrs(list(self.ctx.host.get_transport_addrs()))}
        new_public = [a for a in reached if a not in advertised and a not in self.ctx.public_addrs]
        if status == "public" and new_public:
            self.ctx.public_addrs.extend(new_public)  # e.g. a port forward: advertise what was reached
            self.ctx.refresh_addrs()
        self._set_reachability(status, public, private)

    def _set_reachability(self, status: ReachabilityStatus, public: int, private: int) -> None:
        with self.ctx.lock:
            previous = self._reachability.status
            self._reachability = Reachability(status, public, private, tuple(self.ctx.relay_addrs), time.time())
        if status == previous:
            return
        log.info("AutoNAT: this node is %s (%d peer(s) dialed back, %d could not)", status, public, private,
                 extra={"event": "reachability", "status": status, "public_votes": public,
                        "private_votes": private})
        self.ctx.emit(ReachabilityChanged(status))
        self.ctx.refresh_addrs()
        self.connections.refresh_views()  # the hole-punched/direct label depends on the verdict

    # ------------------------------------------------------------------ gossip
