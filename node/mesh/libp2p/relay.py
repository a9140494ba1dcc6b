"""Circuit relay v2, client side: hold a slot on every bootstrap relay, advertise the circuit
addresses, release a slot whose relay went away (the server side, with admission, is
:class:`.nat.AdmissionRelay`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as RELAY_HOP_PROTOCOL

from .context import HostContext
from .wire import close_stream

log = logging.getLogger(__name__)


class RelayClient:
    """Our reservations on relays; the circuit addresses live in ``ctx.relay_addrs``."""

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        #: Called after the set of circuit addresses changed (the reachability snapshot lists them).
        self.on_relays_changed: Callable[[], None] = lambda: None

    def wants_relay(self) -> bool:
        """Hold a slot on every bootstrap relay, whatever AutoNAT says (docs/nat-traversal.md).

        * Reserving at once makes a NATed node reachable within a second of start-up, not after
          the first AutoNAT round.
        * A "public" verdict in a small federation rests on one or two dial-backs, often by the
          relay itself, which may share a network with this node (a LAN, a data centre): it
          does not prove that every member can dial us. The slot keeps us reachable then.
        * It costs a public node nothing on the wire: dialers race direct addresses first and
          try the circuit only after ``connections.RELAY_DIAL_DELAY_S``. It costs the relay one slot per
          member: size ``RelayLimits.max_reservations`` to the federation.
        """
        cfg = self.ctx.config
        return cfg.enable_relay_client and not cfg.relay_hop

    def relay_key(self, circuit_addr: str) -> str:
        return circuit_addr.split("/p2p-circuit")[0].rsplit("/p2p/", 1)[-1]

    async def reserve(self, info: Libp2pPeerInfo) -> None:
        """Hold a reservation on ``info`` if it is a relay, and advertise the circuit address."""
        relay_key = info.peer_id.to_base58()
        if any(self.relay_key(a) == relay_key for a in self.ctx.relay_addrs):
            return
        assert self.ctx.nursery is not None
        stream = None
        try:
            with trio.fail_after(self.ctx.config.io_timeout_s):
                stream = await self.ctx.host.new_stream(info.peer_id, [RELAY_HOP_PROTOCOL])
                ok = await self.ctx.circuit.reserve(stream, info.peer_id, self.ctx.nursery)
        except Exception as exc:  # not a relay, or it refused: nothing to advertise
            log.debug("no relay reservation on %s: %s", relay_key, exc)
            return
        finally:
            if stream is not None:
                await close_stream(stream)
        if not ok:
            log.warning("relay %s refused a reservation (not admitted, or full)", relay_key,
                        extra={"event": "relay_reservation", "relay": relay_key, "status": "refused"})
            return
        addrs = info.addrs or list(self.ctx.host.get_peerstore().addrs(info.peer_id))
        circuits = [
            f"{a}/p2p/{relay_key}/p2p-circuit"
            for a in addrs
            if "/p2p-circuit" not in str(a) and "/p2p/" not in str(a)
        ]
        if not circuits or any(self.relay_key(a) == relay_key for a in self.ctx.relay_addrs):
            return
        self.ctx.relay_addrs.extend(circuits)
        self._publish()
        me = self.ctx.host.get_id().to_base58()
        log.info("reserved a relay slot on %s: reachable at %s/p2p/%s", relay_key, circuits[0], me,
                 extra={"event": "relay_reservation", "relay": relay_key, "status": "reserved",
                        "addrs": [f"{a}/p2p/{me}" for a in circuits]})

    def drop(self, relay_key: str | None, reason: str) -> None:
        """Stop advertising (and refreshing) the slot on one relay, or on every relay (None)."""
        dropped = [a for a in self.ctx.relay_addrs if relay_key is None or self.relay_key(a) == relay_key]
        if not dropped:
            return
        self.ctx.relay_addrs = [a for a in self.ctx.relay_addrs if a not in dropped]
        for key in {self.relay_key(a) for a in dropped}:
            with contextlib.suppress(Exception):
                # The library refreshes every reservation it knows until it expires; forget it.
                self.ctx.circuit._reservations.pop(ID.from_base58(key), None)
            log.info("released the relay slot on %s (%s)", key, reason,
                     extra={"event": "relay_reservation", "relay": key, "status": "released", "reason": reason})
        self._publish()

    def _publish(self) -> None:
        self.on_relays_changed()
        self.ctx.refresh_addrs()

    def relays(self) -> list[str]:
        """Peer ids of the relays holding a reservation for us."""
        return sorted({self.relay_key(a) for a in self.ctx.relay_addrs})

    def refused(self, peer: str, what: str) -> None:
        log.warning("relay refused peer %s (%s)", peer, what,
                    extra={"event": "relay_refused", "peer": peer, "reason": what})

    def on_direct_lost(self, peer: str) -> None:
        """No direct connection to ``peer`` is left: if it is one of our relays, the slot is gone."""
        if peer in self.relays():
            self.drop(peer, "connection to the relay closed")  # re-reserved by the maintenance loop
