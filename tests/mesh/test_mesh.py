"""Real meshes on 127.0.0.1: discovery, gossip, blob transfer on both paths, relay, security, shutdown.

A module-scoped federation (A: bootstrap and relay; B, C: full nodes; D: fast path off) serves
the tests that only read or add state; tests that stop nodes or need odd configs start their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fednode.node.mesh import (
    BlobNotFoundError,
    BlobTooLargeError,
    FetchError,
    GossipConfig,
    GossipMessage,
    Mesh,
    MeshClosedError,
    MeshError,
    MessageTooLargeError,
    PeerConnected,
    peer_id_from_public_key,
)
from fednode.node.mesh.testing import plaintext_dial

from .conftest import LoopRunner, config, drain, started, wait_until

pytestmark = pytest.mark.timeout(120)

TOPIC = "/fednode/v1/fed/test"


@dataclass
class Federation:
    a: Mesh  # bootstrap + relay (hop)
    b: Mesh
    c: Mesh
    d: Mesh  # fast path disabled: always the libp2p stream

    @property
    def all(self) -> list[Mesh]:
        return [self.a, self.b, self.c, self.d]


@pytest.fixture(scope="module")
def fed(runner: LoopRunner) -> Iterator[Federation]:
    meshes: list[Mesh] = []

    async def start(**overrides: object) -> Mesh:
        mesh = Mesh(config(autonat_confirmations=1, **overrides))
        meshes.append(mesh)
        await mesh.start()
        return mesh

    try:
        a = runner.run(start(relay_hop=True))
        boot = tuple(a.listen_multiaddrs())
        b = runner.run(start(bootstrap_multiaddrs=boot))
        c = runner.run(start(bootstrap_multiaddrs=boot))
        d = runner.run(start(bootstrap_multiaddrs=boot, fast_path=False))
        yield Federation(a, b, c, d)
    finally:
        runner.run(stop_all(meshes))


async def stop_all(meshes: list[Mesh]) -> None:
    await asyncio.gather(*(m.stop() for m in reversed(meshes)), return_exceptions=True)


def blob(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).digest()


def reject_garbage(data: bytes, from_peer: str) -> str | None:
    return "garbage" if data.startswith(b"garbage") else None


# ------------------------------------------------------------------ identity, addresses, discovery


def test_identity_is_the_given_key_and_stable_across_restarts(runner: LoopRunner) -> None:
    seed = os.urandom(32)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    expected = peer_id_from_public_key(public)

    async def scenario() -> list[str]:
        ids = []
        for _ in range(2):
            async with started(config(identity_key=seed, fast_path=False)) as (mesh,):
                ids.append(mesh.peer_id)
                addrs = mesh.listen_multiaddrs()
                assert addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") and a.endswith(f"/p2p/{expected}")
                                     for a in addrs)
        return ids

    assert runner.run(scenario()) == [expected, expected]


def test_members_find_each_other_through_dht_providers(fed: Federation, runner: LoopRunner) -> None:
    key = hashlib.sha256(b"fednode federation test-fed").digest()

    async def scenario() -> None:
        for mesh in (fed.b, fed.c, fed.d):
            await mesh.provide(key)
        for mesh in (fed.b, fed.c, fed.d):
            others = {m.peer_id for m in (fed.b, fed.c, fed.d)} - {mesh.peer_id}

            async def found_all(mesh: Mesh = mesh, others: set[str] = others) -> bool:
                providers = await mesh.find_providers(key)
                assert len(providers) == len(set(providers)), "duplicate providers"
                assert mesh.peer_id not in providers
                return others <= set(providers)

            await wait_until(found_all, 20, f"{mesh.peer_id[-6:]} to find the other providers")
        # The bootstrap node does not provide the key but finds all three members.
        assert {fed.b.peer_id, fed.c.peer_id, fed.d.peer_id} <= set(await fed.a.find_providers(key))
        # Discovery connected the members to each other, not only to the bootstrap node.
        await wait_until(lambda: {p.peer_id for p in fed.b.peers()} >= {fed.c.peer_id, fed.d.peer_id}, 20,
                         "B connected to C and D")

    runner.run(scenario())


def test_peers_report_direct_connections_latency_and_reachability(fed: Federation, runner: LoopRunner) -> None:
    async def scenario() -> None:
        await wait_until(lambda: any(p.peer_id == fed.a.peer_id and p.latency_ms is not None
                                     for p in fed.b.peers()), 20, "a ping to the bootstrap node")
        view = {p.peer_id: p for p in fed.b.peers()}[fed.a.peer_id]
        assert view.connection == "direct" and view.addrs[0].startswith("/ip4/127.0.0.1/tcp/")
        assert view.last_seen <= time.time()
        await wait_until(lambda: fed.b.reachability().status == "public", 30, "AutoNAT verdict")
        assert fed.b.reachability().public_votes >= 1
        # B holds a relay slot on A and advertises the circuit address.
        relay = [a for a in fed.b.listen_multiaddrs() if "/p2p-circuit/" in a]
        assert relay and relay[0].endswith(f"/p2p/{fed.a.peer_id}/p2p-circuit/p2p/{fed.b.peer_id}")
        assert any(isinstance(e, PeerConnected) and e.peer_id == fed.a.peer_id for e in drain(fed.b))

    runner.run(scenario())


# ------------------------------------------------------------------ gossip


def test_gossip_delivery_validator_rejections_and_size_cap(fed: Federation, runner: LoopRunner) -> None:
    async def scenario() -> None:
        for mesh in fed.all:
            await mesh.subscribe(TOPIC, reject_garbage)
            drain(mesh)
        # E allows bigger messages than everyone else: the only way to put one on the wire.
        big_sender_config = config(bootstrap_multiaddrs=tuple(fed.a.listen_multiaddrs()),
                                   gossip=GossipConfig(max_message_size=256 * 1024), fast_path=False)
        async with started(big_sender_config) as (e,):
            await e.subscribe(TOPIC, reject_garbage)
            for mesh in [*fed.all, e]:
                others = {m.peer_id for m in [*fed.all, e]} - {mesh.peer_id}
                await wait_until(lambda mesh=mesh, others=others: _subscribed(mesh, others), 20,
                                 "subscriptions to propagate")
            before = {m.peer_id: m.stats() for m in fed.all}
            await fed.b.publish(TOPIC, b"hello federation")
            await fed.b.publish(TOPIC, b"garbage \x00\xff")
            await e.publish(TOPIC, b"x" * (100 * 1024))  # within E's cap, above everyone else's
            with pytest.raises(MessageTooLargeError):
                await fed.b.publish(TOPIC, b"y" * (64 * 1024 + 1))

            receivers = [fed.a, fed.c, fed.d]
            got: dict[str, list[GossipMessage]] = {m.peer_id: [] for m in receivers}

            def delivered() -> bool:
                for mesh in receivers:
                    got[mesh.peer_id] += [ev for ev in drain(mesh) if isinstance(ev, GossipMessage)]
                return all(any(m.data == b"hello federation" for m in got[r.peer_id]) for r in receivers) and all(
                    r.stats().gossip_rejected.get("oversized", 0) > before[r.peer_id].gossip_rejected.get("oversized", 0)
                    and r.stats().gossip_rejected.get("garbage", 0) > before[r.peer_id].gossip_rejected.get("garbage", 0)
                    for r in receivers
                )

            await wait_until(delivered, 20, "delivery and rejections at every receiver")
            for mesh in receivers:
                messages = got[mesh.peer_id]
                hello = [m for m in messages if m.data == b"hello federation"]
                assert hello[0].from_peer == fed.b.peer_id and hello[0].topic == TOPIC
                assert not [m for m in messages if m.data.startswith(b"garbage") or len(m.data) > 64 * 1024]
            assert fed.b.stats().gossip_published == before[fed.b.peer_id].gossip_published + 2

    runner.run(scenario())


def test_pushed_messages_are_validated_ordered_and_only_reach_fast_path_peers(fed: Federation, runner: LoopRunner) -> None:
    """Mesh.push: straight to the peer over the fast path, through the same validator as gossip,
    in order, from the authenticated sender; refused without a fast path, for an unsubscribed
    topic and above the size cap; never a crash."""
    topic = "fednode-test-push"

    async def scenario() -> None:
        await fed.c.subscribe(topic, reject_garbage)
        await fed.d.subscribe(topic, reject_garbage)
        drain(fed.c)
        before = fed.c.stats()
        pushed = [f"message {i}".encode() for i in range(20)]
        for data in pushed[:10]:
            assert await fed.b.push(topic, data, [fed.c.peer_id, fed.d.peer_id, fed.b.peer_id]) == [fed.c.peer_id]
        # Concurrent pushes to one peer still arrive in the order they were made.
        results = await asyncio.gather(*(fed.b.push(topic, data, [fed.c.peer_id]) for data in pushed[10:]))
        assert all(r == [fed.c.peer_id] for r in results)
        assert await fed.b.push(topic, b"garbage \x00", [fed.c.peer_id]) == [fed.c.peer_id]
        assert await fed.b.push("fednode-test-not-subscribed", b"hello", [fed.c.peer_id]) == [fed.c.peer_id]
        with pytest.raises(MessageTooLargeError):
            await fed.b.push(topic, b"y" * (64 * 1024 + 1), [fed.c.peer_id])
        got: list[GossipMessage] = []

        def arrived() -> bool:
            got.extend(ev for ev in drain(fed.c) if isinstance(ev, GossipMessage))
            rejected = fed.c.stats().gossip_rejected
            return (len(got) >= len(pushed) and rejected.get("garbage", 0) > before.gossip_rejected.get("garbage", 0)
                    and rejected.get("unsubscribed_topic", 0) > before.gossip_rejected.get("unsubscribed_topic", 0))

        await wait_until(arrived, 10, "the pushes and their rejections at C")
        assert [m.data for m in got] == pushed
        assert all(m.direct and m.from_peer == fed.b.peer_id and m.topic == topic for m in got)
        after_c, after_b = fed.c.stats(), fed.b.stats()
        assert after_c.pushes_received == before.pushes_received + len(pushed)
        assert after_b.pushes_sent >= len(pushed) + 2
        # D runs without a fast path: nothing was pushed to it (gossip is its way).
        assert not [ev for ev in drain(fed.d) if isinstance(ev, GossipMessage) and ev.direct]
        # A fast-path-less sender pushes nothing and says so.
        assert await fed.d.push(topic, b"hello", [fed.c.peer_id]) == []
        await fed.c.unsubscribe(topic)
        await fed.d.unsubscribe(topic)

    runner.run(scenario())


async def _subscribed(mesh: Mesh, others: set[str]) -> bool:
    return others <= set(await mesh.topic_peers(TOPIC))


# ------------------------------------------------------------------ blobs


def test_fetch_is_verified_and_identical_on_both_paths(fed: Federation, runner: LoopRunner) -> None:
    data, cid = blob(6_000_000)

    async def scenario() -> None:
        fed.b.serve_blob(cid, data)
        try:
            fast_before = fed.c.stats().fetch_attempts_fast_path
            via_fast = await fed.c.fetch_blob(cid, [fed.b.peer_id])
            assert via_fast == data and isinstance(via_fast, bytearray)
            assert fed.c.stats().fetch_attempts_fast_path == fast_before + 1

            libp2p_before = fed.d.stats().fetch_attempts_libp2p
            via_libp2p = await fed.d.fetch_blob(cid, [fed.b.peer_id])
            assert via_libp2p == data
            assert fed.d.stats().fetch_attempts_libp2p == libp2p_before + 1

            # A peer that fetched a blob serves it: D pulls it from C, which got it from B.
            fed.c.serve_blob(cid, via_fast)
            fed.d.unserve_blob(cid)
            again = await fed.d.fetch_blob(cid, [fed.c.peer_id])
            assert again == data
        finally:
            for mesh in (fed.b, fed.c):
                mesh.unserve_blob(cid)

    runner.run(scenario())


def test_size_limits(fed: Federation, runner: LoopRunner) -> None:
    data, cid = blob(2_000_000)

    async def scenario() -> None:
        fed.b.serve_blob(cid, data)
        try:
            for fetcher in (fed.c, fed.d):  # fast path and libp2p stream
                with pytest.raises(BlobTooLargeError):
                    await fetcher.fetch_blob(cid, [fed.b.peer_id], max_size=1_000_000)
            # The provider counts a refusal after answering it: give its thread a moment.
            for _ in range(50):
                if fed.b.stats().uploads_refused.get("too_large", 0) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert fed.b.stats().uploads_refused.get("too_large", 0) >= 2
            with pytest.raises(ValueError):
                fed.b.serve_blob(hashlib.sha256(b"other").digest(), data)
        finally:
            fed.b.unserve_blob(cid)
        async with started(config(max_blob_size=1_000_000, fast_path=False)) as (small,):
            with pytest.raises(MessageTooLargeError):
                small.serve_blob(cid, data)

    runner.run(scenario())


def test_unknown_content_reports_not_found_cleanly(fed: Federation, runner: LoopRunner) -> None:
    async def scenario() -> None:
        missing = hashlib.sha256(b"nobody has this").digest()
        with pytest.raises(BlobNotFoundError) as error:
            await fed.c.fetch_blob(missing, [fed.b.peer_id, fed.d.peer_id])
        assert error.value.reasons == {fed.b.peer_id: "not_found", fed.d.peer_id: "not_found"}
        # Nothing broke: the same peers still serve real content.
        data, cid = blob(10_000)
        fed.d.serve_blob(cid, data)
        try:
            assert await fed.c.fetch_blob(cid, [fed.d.peer_id]) == data
        finally:
            fed.d.unserve_blob(cid)

    runner.run(scenario())


@pytest.mark.parametrize("path", ["fast", "libp2p"])
def test_fetch_resumes_from_another_provider_when_one_stops(runner: LoopRunner, path: str) -> None:
    size = 96_000_000 if path == "fast" else 24_000_000
    data, cid = blob(size)

    async def scenario() -> None:
        async with started(config(), config(), config(fast_path=(path == "fast"), fetch_chunk_size=256 * 1024)) as (
            first, second, fetcher
        ):
            for provider in (first, second):
                provider.serve_blob(cid, data)
                await fetcher.connect(provider.listen_multiaddrs()[0])
            task = asyncio.ensure_future(fetcher.fetch_blob(cid, [first.peer_id, second.peer_id]))
            try:
                await wait_until(lambda: fetcher.stats().blob_bytes_received >= 2 * 1024 * 1024 or task.done(),
                                 30, "the transfer to start")
                assert not task.done(), "transfer finished before the provider could be stopped"
                await first.stop()
                result = await asyncio.wait_for(task, 60)
            finally:
                task.cancel()
            assert result == data
            stats = fetcher.stats()
            assert stats.fetch_resumes >= 1 and stats.fetches_ok == 1
            served = second.stats()
            assert served.uploads_served == 1
            assert 0 < served.blob_bytes_sent < size, "the second provider should send only the tail"

    runner.run(scenario(), timeout=110)


def test_wrong_bytes_from_a_provider_are_discarded_and_it_is_excluded(runner: LoopRunner) -> None:
    data, cid = blob(2_000_000)
    tampered = bytearray(data)
    tampered[1_234_567] ^= 0xFF

    async def scenario() -> None:
        async with started(config(), config(), config()) as (liar, honest, fetcher):
            honest.serve_blob(cid, data)
            # The public API refuses to serve bytes that do not hash to their id, so a corrupted or
            # malicious provider is made by writing its store directly.
            liar._store._blobs[cid] = bytes(tampered)
            for provider in (liar, honest):
                await fetcher.connect(provider.listen_multiaddrs()[0])
            assert await fetcher.fetch_blob(cid, [liar.peer_id, honest.peer_id]) == data
            stats = fetcher.stats()
            assert stats.fetch_hash_mismatches == 1 and stats.fetches_ok == 1
            liar.unserve_blob(cid)
            liar._store._blobs[cid] = bytes(tampered)
            with pytest.raises(FetchError) as error:  # only the liar: nothing trustworthy to return
                await fetcher.fetch_blob(cid, [liar.peer_id])
            assert error.value.reasons == {liar.peer_id: "hash_mismatch"}

    runner.run(scenario())


def test_busy_provider_is_skipped(runner: LoopRunner) -> None:
    data, cid = blob(24_000_000)

    async def scenario() -> None:
        async with started(config(max_concurrent_uploads=1), config(), config(fast_path=False),
                           config(fast_path=False)) as (busy, other, first, second):
            busy.serve_blob(cid, data)
            other.serve_blob(cid, data)
            for fetcher in (first, second):
                for provider in (busy, other):
                    await fetcher.connect(provider.listen_multiaddrs()[0])
            long_fetch = asyncio.ensure_future(first.fetch_blob(cid, [busy.peer_id]))
            try:
                await wait_until(lambda: first.stats().blob_bytes_received > 0, 20, "the first transfer")
                assert await second.fetch_blob(cid, [busy.peer_id, other.peer_id]) == data
                assert busy.stats().uploads_refused.get("busy", 0) >= 1
                assert other.stats().uploads_served == 1
                assert await asyncio.wait_for(long_fetch, 60) == data
            finally:
                long_fetch.cancel()

    runner.run(scenario())


# ------------------------------------------------------------------ security


def test_plaintext_only_dialer_is_refused(fed: Federation, runner: LoopRunner) -> None:
    result = runner.run(plaintext_dial(fed.b.listen_multiaddrs()[0], timeout=8))
    # Control: the same dialer gets into a py-libp2p host with library defaults, in plaintext.
    assert result.control_connected and "plaintext" in result.control_security
    assert not result.target_connected, "the mesh accepted a plaintext connection"
    assert fed.b.running


def test_fast_path_listener_with_wrong_identity_is_refused_and_libp2p_delivers(runner: LoopRunner) -> None:
    """A provider whose fast-path port is someone else's (a stale port forward, a squatter)."""
    data, cid = blob(3_000_000)

    async def scenario() -> None:
        async with started(config()) as (squatter,):
            assert squatter.fast_path_port is not None
            async with started(config(fast_path_announce_port=squatter.fast_path_port), config()) as (
                provider, fetcher
            ):
                provider.serve_blob(cid, data)
                await fetcher.connect(provider.listen_multiaddrs()[0])
                assert await fetcher.fetch_blob(cid, [provider.peer_id]) == data
                stats = fetcher.stats()
                assert stats.fast_path_auth_failures == 1
                assert stats.fetch_attempts_fast_path == 1 and stats.fetch_attempts_libp2p == 1

    runner.run(scenario())


# ------------------------------------------------------------------ relay, DCUtR


def test_relayed_connection_and_fetch_through_a_hop_node(fed: Federation, runner: LoopRunner) -> None:
    data, cid = blob(1_000_000)

    async def scenario() -> None:
        boot = tuple(fed.a.listen_multiaddrs())
        async with started(config(bootstrap_multiaddrs=boot, enable_dcutr=False),
                           config(enable_dcutr=False)) as (behind, dialer):
            circuit = [a for a in behind.listen_multiaddrs() if "/p2p-circuit/" in a]
            assert circuit, "no relay reservation on the bootstrap relay"
            assert await dialer.connect(circuit[0]) == behind.peer_id
            view = {p.peer_id: p for p in dialer.peers()}[behind.peer_id]
            assert view.connection == "relayed"
            behind.serve_blob(cid, data)
            assert await dialer.fetch_blob(cid, [behind.peer_id]) == data
            stats = dialer.stats()
            assert stats.fetch_attempts_fast_path == 0 and stats.fetch_attempts_libp2p == 1
            assert {p.peer_id: p for p in dialer.peers()}[behind.peer_id].connection == "relayed"

    runner.run(scenario())


def test_dcutr_upgrades_a_relayed_connection(fed: Federation, runner: LoopRunner) -> None:
    """On loopback DCUtR's first step (a plain direct dial of an advertised address) succeeds,
    so the upgrade is labelled "direct": no NAT was traversed. Real hole punching through
    emulated NATs ("hole-punched") is proven in tests/netns (issue 8)."""

    async def scenario() -> None:
        boot = tuple(fed.a.listen_multiaddrs())
        async with started(config(bootstrap_multiaddrs=boot), config()) as (behind, dialer):
            circuit = [a for a in behind.listen_multiaddrs() if "/p2p-circuit/" in a]
            await dialer.connect(circuit[0])
            assert {p.peer_id: p.connection for p in dialer.peers()}[behind.peer_id] == "relayed"

            def upgraded() -> bool:
                view = {p.peer_id: p for p in dialer.peers()}.get(behind.peer_id)
                return view is not None and view.connection == "direct" and any(
                    "/p2p-circuit" not in a for a in view.addrs)

            await wait_until(upgraded, 20, "the relayed connection to be upgraded")

    runner.run(scenario())


# ------------------------------------------------------------------ shutdown


@pytest.mark.timeout(60)
@pytest.mark.parametrize("failure", ["fast path port taken", "libp2p port taken", "bad bootstrap address"])
def test_start_failure_raises_cleanly(runner: LoopRunner, failure: str) -> None:
    before = {t.ident for t in threading.enumerate()}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> None:
            if failure == "fast path port taken":
                mesh = Mesh(config(fast_path_port=port))
            elif failure == "libp2p port taken":
                mesh = Mesh(config(listen_multiaddrs=(f"/ip4/127.0.0.1/tcp/{port}",), fast_path=False))
            else:
                mesh = Mesh(config(bootstrap_multiaddrs=("/ip4/127.0.0.1/tcp/1",)))  # no /p2p/<id>
            with pytest.raises(MeshError):
                await mesh.start()
            assert not mesh.running
            with pytest.raises(MeshClosedError):
                await mesh.publish(TOPIC, b"x")
            await mesh.stop()

        runner.run(scenario())
    assert not [t.name for t in threading.enumerate() if t.ident not in before]


@pytest.mark.timeout(60)
def test_stop_is_bounded_and_leaves_no_thread_behind(runner: LoopRunner) -> None:
    data, cid = blob(20_000_000)
    before = {t.ident for t in threading.enumerate()}

    async def scenario() -> None:
        meshes = [Mesh(config(fast_path=False)), Mesh(config(fast_path=False))]
        try:
            for mesh in meshes:
                await mesh.start()
            provider, fetcher = meshes
            provider.serve_blob(cid, data)
            await fetcher.connect(provider.listen_multiaddrs()[0])
            # Stop both while a transfer is in flight.
            task = asyncio.ensure_future(fetcher.fetch_blob(cid, [provider.peer_id]))
            await wait_until(lambda: fetcher.stats().blob_bytes_received > 0 or task.done(), 20, "a transfer")
            for mesh in meshes:
                t0 = time.monotonic()
                await mesh.stop()
                assert time.monotonic() - t0 < 10
            with pytest.raises(Exception):  # noqa: B017 - any clean error: the mesh went away
                await asyncio.wait_for(task, 5)
        finally:
            for mesh in meshes:
                await mesh.stop()

    runner.run(scenario())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leftover = [t.name for t in threading.enumerate() if t.ident not in before]
        if not leftover:
            break
        time.sleep(0.05)
    assert not leftover, f"threads left behind: {leftover}"


def test_saved_peer_hints_are_dialed_and_unusable_ones_skipped(runner: LoopRunner) -> None:
    async def scenario() -> None:
        async with started(config(fast_path=False)) as (first,):
            hints = ("/ip4/127.0.0.1/tcp/1/p2p/not-a-peer-id", "garbage", *first.listen_multiaddrs())
            async with started(config(fast_path=False, peer_hints=hints)) as (second,):
                await wait_until(lambda: any(p.peer_id == first.peer_id for p in second.peers()), 20,
                                 "the hinted peer connected")
            with pytest.raises(MeshError, match="bootstrap"):
                async with started(config(fast_path=False, bootstrap_multiaddrs=("garbage",))):
                    pass

    runner.run(scenario())
