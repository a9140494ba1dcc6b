"""NAT traversal pieces of py-libp2p 0.8.1, corrected where the netns tests showed they fail.

Each class subclasses the library's own service and changes only what experiments on emulated
NATs (tests/netns) proved wrong or unsafe; docs/nat-traversal.md has the evidence.

* :class:`AdmissionRelay` (circuit relay v2 hop): asks an admission hook before it grants a
  reservation or opens a circuit, so the relay of a private federation is no open proxy; caps
  the circuits carried at once for the whole relay (the library's ``max_circuit_conns`` is per
  reservation); refuses a RESERVE that names another peer than the one asking.
* :class:`DialBackAutoNAT` (AutoNAT v1 server): dials the requester back on a *fresh*
  connection. The library answers with ``host.connect()``, which returns the connection the
  request arrived on, so every server said "reachable" to anyone whose advertised IP matched
  the observed one (a firewalled public host, a NAT with an announce address) without dialing.
* :class:`BoundedDCUtR`: the library's first step (a plain dial of every known address before
  the hole punch) waits out the full dial time-out on a NATed peer's private address, which
  the internet drops silently; bounding it lets the actual hole punch start seconds earlier.

Everything here runs in the networking (trio) thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.host.autonat import AutoNATService
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from multiaddr import Multiaddr

log = logging.getLogger(__name__)

#: ``admission(peer_id) -> bool``: may this peer use our relay? Runs in the networking thread
#: for every reservation and circuit request: cheap, non-blocking, thread-safe.
RelayAdmission = Callable[[str], bool]

_UNILATERAL_DIAL_TIMEOUT_S = 3.0  # a reachable address answers well within it


class AdmissionRelay(CircuitV2Protocol):
    """Circuit relay v2 with an admission hook and a relay-wide circuit cap."""

    def __init__(self, host: Any, *, admission: Callable[[], RelayAdmission | None], max_circuits: int,
                 on_refused: Callable[[str, str], None], **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._admission = admission  # read on every request: the hook may be set after start
        self._max_circuits = max_circuits
        self._on_refused = on_refused
        self.active_circuits = 0

    def _admits(self, peer: ID) -> bool:
        hook = self._admission()
        if hook is None:
            return True  # no membership known: an open relay (the documented default)
        try:
            return bool(hook(peer.to_base58()))
        except Exception:
            log.exception("relay admission hook raised; refusing %s", peer)
            return False  # fail closed: a broken hook must not open the relay

    async def _refuse(self, stream: INetStream, peer: ID, what: str, code: StatusCode, reason: str) -> None:
        self._on_refused(peer.to_base58(), f"{what}: {reason}")
        await self._send_status(stream, code, reason)
        # Close, not reset: a reset can overtake the status, and the client should learn why.
        with trio.move_on_after(2.0), contextlib.suppress(Exception):
            await stream.close()

    async def _handle_reserve(self, stream: INetStream, msg: Any) -> None:
        peer = stream.muxed_conn.peer_id
        if msg.HasField("peer") and msg.peer.id and ID(msg.peer.id) != peer:
            # The library would reserve for whichever id the message names.
            await self._refuse(stream, peer, "reservation", StatusCode.PERMISSION_DENIED,
                               "a reservation is only for the peer asking")
            return
        if not self._admits(peer):
            await self._refuse(stream, peer, "reservation", StatusCode.PERMISSION_DENIED, "not admitted")
            return
        await super()._handle_reserve(stream, msg)

    async def _handle_connect(self, stream: INetStream, msg: Any) -> None:
        source = stream.muxed_conn.peer_id
        try:
            target = ID(msg.peer.id)
        except Exception:
            target = source
        if not self._admits(source) or not self._admits(target):
            # The target is checked too: it may have lost its membership since it reserved.
            await self._refuse(stream, source, "circuit", StatusCode.PERMISSION_DENIED, "not admitted")
            return
        if self.active_circuits >= self._max_circuits:
            await self._refuse(stream, source, "circuit", StatusCode.RESOURCE_LIMIT_EXCEEDED,
                               f"relay carries {self._max_circuits} circuits already")
            return
        self.active_circuits += 1
        try:
            await super()._handle_connect(stream, msg)  # returns when the circuit ends
        finally:
            self.active_circuits -= 1


class DialBackAutoNAT(AutoNATService):
    """AutoNAT whose server side really dials the requester back (see the module docstring)."""

    def __init__(self, host: Any, *, dial_timeout: float, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._dial_timeout = dial_timeout

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        network = self.host.get_network()
        for raw in addrs:
            try:
                addr = Multiaddr(raw)
            except Exception:
                continue
            if "/p2p-circuit" in str(addr):
                continue
            conn = None
            try:
                with trio.fail_after(self._dial_timeout):
                    conn = await network.dial_addr(addr, peer_id)
            except Exception as exc:
                log.debug("AutoNAT dial-back to %s at %s failed: %s", peer_id, addr, exc)
                continue
            finally:
                if conn is not None:
                    # The requester keeps the connection it asked on; this one only proved a point.
                    with trio.CancelScope(shield=True), trio.move_on_after(2.0), contextlib.suppress(Exception):
                        await conn.close()
            return bytes(raw)
        return None


class BoundedDCUtR(DCUtRProtocol):
    """DCUtR whose pre-punch direct dial gives up after a few seconds (see the module docstring).

    Also logs every hole-punch attempt and its outcome (event ``hole_punch``): the library logs
    them at levels the daemon does not show, and without them a relayed connection that stays
    relayed cannot be told from one that was never tried.
    """

    async def _perform_hole_punch(self, peer_id: ID, addrs: list[Multiaddr], as_responder: bool = False) -> bool:
        started = trio.current_time()
        ok = False
        try:
            ok = await super()._perform_hole_punch(peer_id, addrs, as_responder=as_responder)
            return ok
        finally:
            targets = [str(a) for a in addrs if "/p2p-circuit" not in str(a)]
            log.info("hole punch with %s %s after %.1f s (dialed %s)", peer_id, "succeeded" if ok else "failed",
                     trio.current_time() - started, ", ".join(targets) or "no address",
                     extra={"event": "hole_punch", "peer": peer_id.to_base58(), "success": ok,
                            "seconds": round(trio.current_time() - started, 3), "targets": targets,
                            "role": "initiator" if as_responder else "responder"})

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        # The library's step 0, with its own bound instead of the (shared) dial time-out.
        try:
            addrs = [a for a in self.host.get_peerstore().addrs(peer_id) if "/p2p-circuit" not in str(a)]
        except Exception:
            return False
        if not addrs:
            return False
        with trio.move_on_after(_UNILATERAL_DIAL_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    nursery.start_soon(self._dial_peer, peer_id, addr)
        return await self._verify_direct_connection(peer_id)
