"""The in-memory mesh keeps the real mesh's contract (validators, pushes, blobs, DHT, records, events)
over a simulated network whose latency, bandwidth, loss and partitions behave as configured."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fednode.node.mesh import (
    BlobNotFoundError,
    BlobTooLargeError,
    DialError,
    FetchError,
    GossipMessage,
    InMemoryMesh,
    InMemoryNetwork,
    LinkConditions,
    MeshClosedError,
    MessageTooLargeError,
    PeerConnected,
    PeerDisconnected,
    RecordValidator,
)

pytestmark = pytest.mark.timeout(60)
TOPIC = "/t"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def accept(data: bytes, from_peer: str) -> str | None:
    return None


async def members(network: InMemoryNetwork, count: int, *, connect: bool = True,
                  validator: Any = accept) -> list[InMemoryMesh]:
    meshes = [network.join(f"peer-{i:03d}") for i in range(count)]
    for mesh in meshes:
        await mesh.start()
    if connect:
        for i, a in enumerate(meshes):
            for b in meshes[i + 1:]:
                await a.connect_peer(b.peer_id)
    for mesh in meshes:
        await mesh.subscribe(TOPIC, validator)
    return meshes


async def next_gossip(mesh: InMemoryMesh, timeout: float = 5.0) -> GossipMessage:
    while True:
        event = await asyncio.wait_for(mesh.events.get(), timeout)
        if isinstance(event, GossipMessage):
            return event


def drain_gossip(mesh: InMemoryMesh) -> list[GossipMessage]:
    found = []
    while not mesh.events.empty():
        event = mesh.events.get_nowait()
        if isinstance(event, GossipMessage):
            found.append(event)
    return found


async def settle(network: InMemoryNetwork, seconds: float = 0.0) -> None:
    """Let scheduled deliveries (at most `seconds` of simulated delay) happen."""
    await asyncio.sleep(seconds)
    for _ in range(5):
        await asyncio.sleep(0)


def test_connections_raise_events_on_both_sides_and_close_with_stop() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(dial_timeout=0.01)
        a, b = await members(network, 2)
        assert [(type(e).__name__, e.peer_id) for e in [a.events.get_nowait()]] == [("PeerConnected", b.peer_id)]
        event = b.events.get_nowait()
        assert isinstance(event, PeerConnected) and event.peer_id == a.peer_id
        assert [p.peer_id for p in a.peers()] == [b.peer_id]
        await b.stop()
        assert a.events.get_nowait() == PeerDisconnected(b.peer_id)
        assert a.peers() == []
        with pytest.raises(DialError):
            await a.connect_peer(b.peer_id)
        with pytest.raises(MeshClosedError):
            await b.publish(TOPIC, b"x")

    run(scenario)


def test_gossip_reaches_every_subscriber_once_through_the_overlay_not_the_sender() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(gossip_degree=3, degree_low=2, degree_high=6)
        meshes = await members(network, 20)
        for mesh in meshes:
            assert 2 <= len(network.gossip_neighbours(TOPIC, mesh.peer_id)) <= 6
        await meshes[0].publish(TOPIC, b"hello")
        await settle(network)
        assert drain_gossip(meshes[0]) == []
        for mesh in meshes[1:]:
            got = drain_gossip(mesh)
            assert [(g.data, g.from_peer, g.direct) for g in got] == [(b"hello", meshes[0].peer_id, False)]
            assert mesh.stats().gossip_received == 1
        # Forwarding costs each member about D copies, not n: the publisher sends to its neighbours only.
        assert network.traffic(meshes[0].peer_id).sent["gossip"] == 5 * len(network.gossip_neighbours(TOPIC, meshes[0].peer_id))
        assert meshes[0].stats().gossip_published == 1

    run(scenario)


def test_the_validator_runs_before_delivery_and_refusals_are_counted_and_not_forwarded() -> None:
    async def scenario() -> None:
        seen: list[tuple[bytes, str]] = []

        def validator(data: bytes, from_peer: str) -> str | None:
            seen.append((data, from_peer))
            return "bad_signature" if data.startswith(b"bad") else None

        network = InMemoryNetwork()
        a, b, c = await members(network, 3, validator=validator)
        await a.publish(TOPIC, b"bad message")
        await a.publish(TOPIC, b"good message")
        await settle(network)
        for mesh in (b, c):
            assert [g.data for g in drain_gossip(mesh)] == [b"good message"]
            assert mesh.stats().gossip_rejected == {"bad_signature": 1}
        assert all(peer == a.peer_id for _, peer in seen)
        # A validator that raises refuses the message (as the real mesh does).
        await b.subscribe(TOPIC, lambda data, peer: 1 // 0)  # type: ignore[arg-type,return-value]
        await a.publish(TOPIC, b"again")
        await settle(network)
        assert drain_gossip(b) == [] and b.stats().gossip_rejected.get("validator_error") == 1

    run(scenario)


def test_oversized_messages_are_refused_before_sending() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(max_gossip_bytes=100)
        a, b = await members(network, 2)
        with pytest.raises(MessageTooLargeError):
            await a.publish(TOPIC, b"x" * 101)
        with pytest.raises(MessageTooLargeError):
            await a.push(TOPIC, b"x" * 101, [b.peer_id])
        assert a.stats().gossip_published == 0 and network.traffic(a.peer_id).bytes_sent == 0

    run(scenario)


def test_push_reaches_connected_peers_only_in_order_and_is_validated() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(conditions=LinkConditions(latency=0.01, bandwidth=1e6))
        a, b, c = await members(network, 3, connect=False, validator=lambda d, p: "no" if d == b"refuse" else None)
        await a.connect_peer(b.peer_id)
        handed = await a.push(TOPIC, b"one", [b.peer_id, c.peer_id, a.peer_id, b.peer_id])
        assert handed == [b.peer_id]  # c is not connected, ourselves and duplicates are skipped
        await a.push(TOPIC, b"refuse", [b.peer_id])
        await a.push(TOPIC, b"two" * 1000, [b.peer_id])  # larger, sent after: arrives after
        await a.push(TOPIC, b"three", [b.peer_id])
        got = [await next_gossip(b), await next_gossip(b), await next_gossip(b)]
        assert [g.data[:5] for g in got] == [b"one", b"twotw", b"three"]
        assert all(g.direct and g.from_peer == a.peer_id for g in got)
        assert b.stats().gossip_rejected == {"no": 1}
        assert b.stats().pushes_received == 3 and a.stats().pushes_sent == 4
        # A peer not subscribed to the topic refuses pushes for it.
        await b.unsubscribe(TOPIC)
        await a.push(TOPIC, b"four", [b.peer_id])
        await settle(network, 0.05)
        assert b.stats().gossip_rejected.get("unsubscribed_topic") == 1

    run(scenario)


def test_latency_and_bandwidth_delay_delivery_proportionally_to_bytes() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(conditions=LinkConditions(latency=0.05, bandwidth=100_000))
        a, b = await members(network, 2)
        loop = asyncio.get_running_loop()
        data = b"z" * 20_000  # 0.2 s on the wire + 0.05 s latency
        content_id = hashlib.sha256(data).digest()
        a.serve_blob(content_id, data)
        started = loop.time()
        assert await b.fetch_blob(content_id, [a.peer_id]) == data
        elapsed = loop.time() - started
        assert 0.29 <= elapsed < 5.0  # request 0.05 + transfer 0.2 + latency 0.05
        started = loop.time()
        await a.publish(TOPIC, b"m" * 10_000)  # 0.1 s + 0.05 s
        await next_gossip(b)
        assert 0.149 <= loop.time() - started < 5.0

    run(scenario)


def test_uplink_bandwidth_is_shared_by_a_members_transfers() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork()
        server = network.join("server", uplink_bandwidth=100_000)
        await server.start()
        clients = [network.join(f"client-{i}") for i in range(4)]
        data = b"q" * 10_000
        content_id = hashlib.sha256(data).digest()
        server.serve_blob(content_id, data)
        loop = asyncio.get_running_loop()
        for client in clients:
            await client.start([server.peer_id])
        started = loop.time()
        await asyncio.gather(*(c.fetch_blob(content_id, [server.peer_id]) for c in clients))
        assert loop.time() - started >= 0.399  # four transfers of 0.1 s each through one uplink
        assert network.traffic("server").sent["blob"] == 40_000
        assert server.stats().uploads_served == 4 and server.stats().blob_bytes_sent == 40_000

    run(scenario)


def test_fetch_semantics_match_the_real_mesh() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(dial_timeout=0.01, max_blob_size=50_000)
        a, b, c = await members(network, 3)
        data = b"payload" * 1000
        content_id = hashlib.sha256(data).digest()
        with pytest.raises(ValueError):
            a.serve_blob(hashlib.sha256(b"other").digest(), data)
        with pytest.raises(MessageTooLargeError):
            a.serve_blob(hashlib.sha256(b"y" * 60_000).digest(), b"y" * 60_000)
        with pytest.raises(ValueError):
            await c.fetch_blob(b"short", [a.peer_id])
        b.serve_blob(content_id, data)
        # Providers in order: a lacks it, b has it; the result is a fresh bytearray.
        got = await c.fetch_blob(content_id, [a.peer_id, b.peer_id])
        assert isinstance(got, bytearray) and got == data
        assert a.stats().uploads_refused == {"not_found": 1}
        with pytest.raises(BlobTooLargeError):
            await c.fetch_blob(content_id, [b.peer_id], max_size=100)
        with pytest.raises(BlobNotFoundError) as missing:
            await c.fetch_blob(hashlib.sha256(b"nobody").digest(), [a.peer_id, b.peer_id])
        assert missing.value.reasons == {a.peer_id: "not_found", b.peer_id: "not_found"}
        with pytest.raises(FetchError) as unknown:
            await c.fetch_blob(content_id, ["peer-that-never-was"])
        assert not isinstance(unknown.value, BlobNotFoundError)
        with pytest.raises(FetchError):
            await c.fetch_blob(content_id, [c.peer_id])  # no provider but ourselves
        assert b.unserve_blob(content_id) and not b.unserve_blob(content_id)
        with pytest.raises(BlobNotFoundError):
            await c.fetch_blob(content_id, [b.peer_id])
        # A blob served here is returned without a transfer.
        c.serve_blob(content_id, data)
        before = network.traffic(c.peer_id).received["blob"]
        assert await c.fetch_blob(content_id, [a.peer_id]) == data
        assert network.traffic(c.peer_id).received["blob"] == before

    run(scenario)


def test_a_transfer_that_breaks_resumes_with_the_next_provider() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(seed=3)
        a, b, c = await members(network, 3)
        network.set_link(a.peer_id, c.peer_id, LinkConditions(loss=0.999), both_ways=False)
        data = bytes(range(256)) * 400
        content_id = hashlib.sha256(data).digest()
        a.serve_blob(content_id, data)
        b.serve_blob(content_id, data)
        assert await c.fetch_blob(content_id, [a.peer_id, b.peer_id]) == data
        stats = c.stats()
        assert stats.fetch_resumes == 1 and stats.fetches_ok == 1
        # Only the bytes that were missing came from b; nothing was received twice.
        assert network.traffic(c.peer_id).received["blob"] == len(data)
        assert 0 < b.stats().blob_bytes_sent < len(data) or a.stats().blob_bytes_sent == 0
        # When every provider breaks, the fetch fails with the reasons.
        network.set_link(b.peer_id, c.peer_id, LinkConditions(loss=0.999), both_ways=False)
        c.unserve_blob(content_id)
        with pytest.raises(FetchError) as failed:
            await c.fetch_blob(content_id, [a.peer_id, b.peer_id])
        assert set(failed.value.reasons) == {a.peer_id, b.peer_id}

    run(scenario)


def test_loss_is_seeded_and_deterministic() -> None:
    async def delivered(seed: int) -> list[bytes]:
        network = InMemoryNetwork(seed=seed, conditions=LinkConditions(loss=0.5))
        a, b = await members(network, 2)
        for i in range(40):
            await a.publish(TOPIC, b"%d" % i)
        await settle(network)
        return [g.data for g in drain_gossip(b)]

    async def scenario() -> None:
        first, again, other = await delivered(1), await delivered(1), await delivered(2)
        assert first == again
        assert 5 < len(first) < 35 and first != other

    run(scenario)


def test_partitions_cut_gossip_pushes_dials_and_fetches_until_healed() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(dial_timeout=0.01)
        a, b, c, d = await members(network, 4)
        data = b"snapshot" * 100
        content_id = hashlib.sha256(data).digest()
        a.serve_blob(content_id, data)
        network.partition([a.peer_id, b.peer_id])  # c and d together on the other side
        assert network.reachable(c.peer_id, d.peer_id) and not network.reachable(a.peer_id, c.peer_id)
        await a.publish(TOPIC, b"inside")
        assert await a.push(TOPIC, b"pushed", [c.peer_id]) == []
        await settle(network)
        assert [g.data for g in drain_gossip(b)] == [b"inside"]
        assert drain_gossip(c) == [] and drain_gossip(d) == []
        with pytest.raises(FetchError):
            await c.fetch_blob(content_id, [a.peer_id])
        network.disconnect(c.peer_id, a.peer_id)
        with pytest.raises(DialError):
            await c.connect_peer(a.peer_id)
        network.heal()
        await c.connect_peer(a.peer_id)
        assert await c.fetch_blob(content_id, [a.peer_id]) == data
        await a.publish(TOPIC, b"after")
        await settle(network)
        assert [g.data for g in drain_gossip(c)] == [b"after"]

    run(scenario)


def test_providers_and_records_follow_the_dht_contract() -> None:
    def validate(key: str, value: bytes) -> None:
        if not value.startswith(b"v"):
            raise ValueError("not a version")

    def select(key: str, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: len(values[i]))

    async def scenario() -> None:
        network = InMemoryNetwork(record_validators={"ns": RecordValidator(validate, select)})
        a, b, c = await members(network, 3)
        await a.provide(b"key")
        await b.provide(b"key")
        assert sorted(await c.find_providers(b"key")) == sorted([a.peer_id, b.peer_id])
        assert await a.find_providers(b"key") == [b.peer_id]
        assert await a.find_providers(b"key", count=0) == []
        # Many providers: each member gets its own (seeded, repeatable) first `count`.
        for index in range(6):
            provider = network.join(f"provider-{index}")
            await provider.start()
            await provider.provide(b"many")
        firsts = {tuple(await m.find_providers(b"many", count=2)) for m in (a, b, c)}
        assert len(firsts) > 1 and firsts == {tuple(await m.find_providers(b"many", count=2)) for m in (a, b, c)}
        with pytest.raises(ValueError):
            await a.put_record("/other/x", b"v1")  # no validator for the namespace
        with pytest.raises(ValueError):
            await a.put_record("/ns/x", b"bad")
        await a.put_record("/ns/x", b"v11")
        assert await c.get_records("/ns/x") == [b"v11"]
        with pytest.raises(ValueError):
            await a.put_record("/ns/x", b"v1")  # a holds a better value
        await b.put_record("/ns/x", b"v1111")
        values = await c.get_records("/ns/x")
        assert b"v1111" in values and set(values) <= {b"v11", b"v1111"}
        assert await c.get_records("/ns/missing") == []

    run(scenario)


def test_a_full_event_queue_drops_and_counts() -> None:
    async def scenario() -> None:
        network = InMemoryNetwork(event_queue_size=2)
        a, b = await members(network, 2)  # one PeerConnected each already queued
        for i in range(3):
            await a.publish(TOPIC, b"%d" % i)
        await settle(network)
        assert b.events.qsize() == 2 and b.stats().events_dropped == 2

    run(scenario)
