"""Discovery: joining the network through the bootstrap peers (and keeping them), the Kademlia
DHT (provider records, signed records) and its periodic maintenance."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.records.validator import Validator as Libp2pRecordValidator

from ..errors import MeshError
from ..types import RecordValidator
from .connections import Connections
from .context import HostContext
from .relay import RelayClient

log = logging.getLogger(__name__)


class Discovery:
    """Bootstrap peers, DHT reads and writes, the maintenance loop."""

    def __init__(self, ctx: HostContext, connections: Connections, relay: RelayClient) -> None:
        self.ctx = ctx
        self.connections = connections
        self.relay = relay
        self.bootstrap_peers: list[Libp2pPeerInfo] = []
        self._provided: set[bytes] = set()

    # ------------------------------------------------------------------ start-up and maintenance

    async def bootstrap(self) -> None:
        """Dial the bootstrap peers, reserve relay slots on those that are relays, refresh the DHT."""
        async with trio.open_nursery() as nursery:
            for info in self.bootstrap_peers:
                nursery.start_soon(self._join_bootstrap_peer, info)
        with trio.move_on_after(self.ctx.config.io_timeout_s), contextlib.suppress(Exception):
            await self.ctx.dht.refresh_routing_table()
        self.ctx.refresh_addrs()

    async def _join_bootstrap_peer(self, info: Libp2pPeerInfo) -> None:
        if info.peer_id == self.ctx.host.get_id():
            return
        self.connections.forget_failed_dials(info.peer_id)
        try:
            with trio.fail_after(self.ctx.config.io_timeout_s):
                await self.ctx.host.connect(info)
                await self.ctx.dht.add_peer(info.peer_id)
        except Exception as exc:
            log.warning("bootstrap peer %s unreachable: %s", info.peer_id, exc)
            return
        if self.relay.wants_relay():
            await self.relay.reserve(info)

    # ------------------------------------------------------------------ relay client

    async def maintenance_loop(self) -> None:
        """Periodic routing-table refresh, bootstrap re-dial, relay re-reservation, re-provide."""
        cfg = self.ctx.config
        while True:
            await trio.sleep(cfg.dht_refresh_interval_s)
            self._rejoin_bootstrap_peers()
            with trio.move_on_after(cfg.io_timeout_s), contextlib.suppress(Exception):
                await self.ctx.dht.refresh_routing_table()
            for key in list(self._provided):
                with trio.move_on_after(cfg.io_timeout_s), contextlib.suppress(Exception):
                    await self.ctx.dht.provider_store.provide(key)
            self.ctx.refresh_addrs()

    def _rejoin_bootstrap_peers(self) -> None:
        """Re-dial lost bootstrap peers; re-reserve relay slots we need and lost (relay restart)."""
        assert self.ctx.nursery is not None
        for info in self.bootstrap_peers:
            if info.peer_id == self.ctx.host.get_id():
                continue
            if not self.connections.live_conns(info.peer_id):
                self.ctx.nursery.start_soon(self._join_bootstrap_peer, info)
            elif self.relay.wants_relay() and info.peer_id.to_base58() not in self.relay.relays():
                self.ctx.nursery.start_soon(self.relay.reserve, info)

    # ------------------------------------------------------------------ DHT

    async def provide(self, key: bytes) -> None:
        self._provided.add(bytes(key))
        with trio.move_on_after(2 * self.ctx.config.io_timeout_s):
            await self.ctx.dht.provider_store.provide(bytes(key))

    async def find_providers(self, key: bytes, count: int) -> list[str]:
        """Providers known locally plus those the closest peers know.

        The library's find_providers() returns only the local record as soon as there is one (for
        instance when this node provides the key itself) and never asks the network; a
        federation key is provided by every member, so ask the closest peers every time.
        """
        key = bytes(key)
        store = self.ctx.dht.provider_store
        found: dict[ID, Libp2pPeerInfo] = {}
        for info in store.get_providers(key):
            found.setdefault(info.peer_id, info)

        async def providers_from(peer: ID) -> None:
            providers, _ = await store._get_providers_from_peer_with_closers(peer, key)
            for info in providers:
                found.setdefault(info.peer_id, info)

        await self._with_closest_peers(key, providers_from)
        me = self.ctx.host.get_id()
        peerstore = self.ctx.host.get_peerstore()
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
        validator = self.ctx.dht.validator
        validator.validate(key, value)  # raises ValueError / InvalidRecordType
        key_bytes = key.encode()
        held = self.ctx.dht.value_store.get(key_bytes)
        if held is not None and held.value != value and validator.select(key, [value, held.value]) != 0:
            raise ValueError("this node holds a better record for the key; merge it first")
        self.ctx.dht.value_store.put(key_bytes, value)

        async def store_at(peer: ID) -> None:
            await self.ctx.dht.value_store._store_at_peer(peer, key_bytes, value)

        await self._with_closest_peers(key_bytes, store_at)

    async def get_records(self, key: str) -> list[bytes]:
        """Every distinct valid value of ``key``: the local one plus those the closest peers hold.

        The library's get_value() returns the local record as soon as there is one and never asks
        the network (as find_providers does), and keeps only one "best" value; a reader that merges
        records (revocation lists are sets) wants them all.
        """
        key_bytes = key.encode()
        validator = self.ctx.dht.validator
        values: list[bytes] = []

        def keep(value: bytes | None) -> None:
            if value is None or value in values:
                return
            with contextlib.suppress(Exception):
                validator.validate(key, value)
                values.append(value)

        local = self.ctx.dht.value_store.get(key_bytes)
        keep(local.value if local is not None else None)

        async def read_from(peer: ID) -> None:
            value = await self.ctx.dht.value_store._get_from_peer(peer, key_bytes)
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
        io = self.ctx.config.io_timeout_s
        nursery = self.ctx.nursery
        if nursery is None:
            raise MeshError("the mesh is not running")
        asked: set[ID] = {self.ctx.host.get_id()}
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
                    ask(list(await self.ctx.dht.peer_routing.find_closest_peers_network(key)))
            finally:
                finished()

        ask(list(self.ctx.dht.routing_table.find_local_closest_peers(key, 20)))
        nursery.start_soon(lookup)
        with trio.move_on_after(2 * io):
            await all_done.wait()


class SizedRecordValidator(Libp2pRecordValidator):
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
