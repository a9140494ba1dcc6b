"""Finding the other members again: after restarts, and after a member moved to another address.

The daemon runs one `Reconnector` per certified session. Every pass it

* publishes this member's signed address record in the DHT (`/fednode-addrs/<federation id>/
  <peer id>`, see fednode.node.membership.addresses) when its addresses changed, when it is
  connected to more members than at the last publication (the record then reaches the DHT nodes
  closest to its key), and every REPUBLISH_S (DHT records expire);
* dials the members it knows (peers.json, and those the running session heard from) that are not
  connected, up to TARGET_CONNECTED: first the addresses remembered for each, newest first, then
  the addresses its DHT record names; what answers is remembered (peers.json) for the next start.

A member that cannot be reached is tried again after BACKOFF_FIRST_S, doubling up to
BACKOFF_MAX_S, so members restarted in any order find each other within about BACKOFF_MAX_S of
the last start, as long as one of them is reachable at an address another one knows (members
that all change their addresses while all are down have nobody left to ask: a bootstrap node,
`fednode start --role bootstrap`, is the stable address such federations need).

The announcements members push and gossip every few seconds carry their current addresses too;
the daemon remembers those after every round (`Daemon._remember_peer_addresses`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from fednode.node.envelope import Rejected
from fednode.node.identity import Identity
from fednode.node.logs import best_effort
from fednode.node.membership.addresses import address_record_key, decode_address_record, make_address_record

log = logging.getLogger("fednode.reconnect")

PASS_S = 2.0
BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 30.0
REPUBLISH_S = 600.0
TARGET_CONNECTED = 8  # members this node keeps trying to be connected to
DIAL_CONCURRENCY = 4  # members dialled at once in a pass


class Reconnector:
    """See the module docstring. `run()` until cancelled."""

    def __init__(
        self,
        *,
        mesh: Any,  # fednode.node.mesh.Mesh
        identity: Identity,
        federation_id: str,
        certificate: Any,  # this member's MemberCertificate
        store: Any,  # MembershipStore
        trust: Any,  # TrustPolicy
        session_members: Callable[[], dict[str, list[str]]] = dict,
    ) -> None:
        self.mesh = mesh
        self.identity = identity
        self.federation_id = federation_id
        self.certificate = certificate
        self.store = store
        self.trust = trust
        self.session_members = session_members
        self._published: tuple[tuple[str, ...], int, float] = ((), -1, 0.0)  # addresses, members, when
        self._retry_at: dict[str, tuple[float, float]] = {}  # peer -> (monotonic time, current backoff)

    async def run(self) -> None:
        while True:
            for step in (self.publish, self.reach_members):
                try:
                    await step()
                except Exception as exc:  # networking trouble: the next pass tries again
                    log.debug("%s failed: %s", step.__name__, exc, exc_info=True)
            await asyncio.sleep(PASS_S)

    # ------------------------------------------------------------------------------ own record
    def _connected_members(self, known: dict[str, list[str]]) -> set[str]:
        return {peer.peer_id for peer in self.mesh.peers()} & set(known)

    async def publish(self, *, force: bool = False) -> bool:
        """Put this member's address record in the DHT if it is due; True when it was put."""
        addresses = tuple(self.mesh.listen_multiaddrs())
        if not addresses:
            return False
        connected = len(self._connected_members(self._known()))
        published, members, when = self._published
        due = (force or addresses != published or connected > members
               or time.monotonic() - when > REPUBLISH_S)
        if not due:
            return False
        record = make_address_record(self.identity, self.certificate, list(addresses))
        await self.mesh.put_record(address_record_key(self.federation_id, self.identity.peer_id),
                                   record.SerializeToString(deterministic=True))
        self._published = (addresses, connected, time.monotonic())
        log.debug("published the address record (%d address(es), %d member(s) connected)", len(addresses), connected)
        return True

    # ------------------------------------------------------------------------------ members
    def _known(self) -> dict[str, list[str]]:
        known = dict(self.store.member_addresses(self.federation_id))
        for peer, addresses in self.session_members().items():
            known[peer] = list(dict.fromkeys([*addresses, *known.get(peer, [])]))
        known.pop(self.identity.peer_id, None)
        return known

    async def reach_members(self) -> list[str]:
        """Dial the lost members that are due; returns those reached."""
        known = self._known()
        connected = self._connected_members(known)
        missing = TARGET_CONNECTED - len(connected)
        if missing <= 0:
            return []
        now = time.monotonic()
        due = [p for p in known if p not in connected and self._retry_at.get(p, (0.0, 0.0))[0] <= now][:missing]
        reached: list[str] = []
        for start in range(0, len(due), DIAL_CONCURRENCY):
            batch = due[start : start + DIAL_CONCURRENCY]
            results = await asyncio.gather(*(self.reach(peer, known[peer]) for peer in batch))
            reached += [peer for peer, ok in zip(batch, results, strict=True) if ok]
        return reached

    async def reach(self, peer: str, remembered: list[str]) -> bool:
        """Dial one member now: its `remembered` addresses, else those its DHT address record
        names (then remembered in peers.json). False when none answered (retried later)."""
        if any(p.peer_id == peer for p in self.mesh.peers()):
            return True  # connected meanwhile (e.g. by a DHT lookup): no address to learn from the dial
        address = await self._dial_any(remembered)
        source = "remembered address"
        if address is None:
            record_addresses = [a for a in await self.record_addresses(peer) if a not in remembered]
            address = await self._dial_any(record_addresses)
            source = "its DHT address record"
            if address is not None:
                with best_effort(log, "remembering a member's address"):
                    self.store.remember_members(self.federation_id, {peer: [address, *record_addresses]})
        if address is None:
            _, backoff = self._retry_at.get(peer, (0.0, 0.0))
            backoff = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, 2 * backoff))
            self._retry_at[peer] = (time.monotonic() + backoff, backoff)
            return False
        self._retry_at.pop(peer, None)
        log.info("reconnected to member %s at %s (%s)", peer, address, source,
                 extra={"event": "member_reconnected", "peer": peer, "address": address, "source": source})
        return True

    async def _dial_any(self, addresses: list[str]) -> str | None:
        """The first of `addresses` (direct ones first) that connects, dialled together."""
        ordered = sorted(addresses, key=lambda a: "/p2p-circuit" in a)[:8]
        if not ordered:
            return None
        results = await asyncio.gather(*(self.mesh.connect(a) for a in ordered), return_exceptions=True)
        for address, result in zip(ordered, results, strict=True):
            if not isinstance(result, BaseException):
                return address
        return None

    async def record_addresses(self, peer: str) -> list[str]:
        """The addresses of `peer`'s newest valid, unrevoked address record in the DHT."""
        try:
            values = await self.mesh.get_records(address_record_key(self.federation_id, peer))
        except Exception as exc:
            log.debug("no address record of %s: %s", peer, exc)
            return []
        best = None
        for value in values:
            try:
                record = decode_address_record(value, self.federation_id, peer)
                self.trust.verify(self.federation_id, bytes(record.certificate.member_public_key), record.certificate)
            except Rejected as rejected:
                log.debug("ignored an address record of %s: %s", peer, rejected)
                continue
            if best is None or record.issued_unix_ms > best.issued_unix_ms:
                best = record
        return list(best.multiaddrs) if best is not None else []
