"""The fast path on its own: identity binding, tamper detection, resumable ranges, statuses.

Real sockets on 127.0.0.1 and real keys; the "attackers" are ordinary clients that hold the wrong
key or lie about theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fednode.node.mesh import FastPathAuthError, fastpath
from fednode.node.mesh.identity import NodeIdentity
from fednode.node.mesh.transfer import BlobStore, FetchState, ProviderRefused, TransferProtocolError
from fednode.node.mesh.types import StatsCollector
from fednode.proto.v1 import transfer_pb2

pytestmark = pytest.mark.timeout(60)

CHUNK = 64 * 1024


class Provider:
    def __init__(self, identity: NodeIdentity, server: fastpath.FastPathServer, store: BlobStore,
                 stats: StatsCollector) -> None:
        self.identity = identity
        self.server = server
        self.store = store
        self.stats = stats


async def start_provider(max_uploads: int = 4) -> Provider:
    identity = NodeIdentity(os.urandom(32))
    store = BlobStore(1 << 30, max_uploads)
    stats = StatsCollector()
    server = fastpath.FastPathServer(identity, store, stats, CHUNK, io_timeout=5.0)
    await server.start("127.0.0.1", 0)
    return Provider(identity, server, store, stats)


def run(coro_fn) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(coro_fn(), 50))


def blob(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).digest()


def test_fetch_over_the_fast_path_is_verified_and_resumable() -> None:
    async def scenario() -> None:
        provider = await start_provider()
        me = NodeIdentity(os.urandom(32))
        try:
            data, cid = blob(1_000_003)
            provider.store.serve(cid, data)
            state = FetchState(cid, max_size=10_000_000)
            channel = await fastpath.open_channel(["127.0.0.1"], provider.server.port, me,
                                                  provider.identity.peer_id, 5.0)
            try:
                assert channel.remote_peer_id == provider.identity.peer_id
                await fastpath.fetch_range(channel, state, StatsCollector(), 5.0)
            finally:
                channel.close()
            assert state.verified() and bytes(state.buffer) == data

            # A previous attempt (another provider) delivered the first 300,000 bytes, exactly as
            # FetchState records them; this attempt must ask for and add only the rest.
            resumed = FetchState(cid, max_size=10_000_000)
            resumed.accept_response(_ok_response(len(data), 0, 300_000), "previous-provider")
            resumed.add(data[:300_000])
            channel = await fastpath.open_channel(["127.0.0.1"], provider.server.port, me,
                                                  provider.identity.peer_id, 5.0)
            try:
                await fastpath.fetch_range(channel, resumed, StatsCollector(), 5.0)
            finally:
                channel.close()
            assert resumed.verified() and bytes(resumed.buffer) == data
            assert provider.stats.snapshot().uploads_served == 2
        finally:
            await provider.server.close()

    run(scenario)


def _ok_response(total: int, offset: int, length: int) -> bytes:
    from fednode.proto.v1 import transfer_pb2

    return transfer_pb2.TransferResponse(
        status=transfer_pb2.TRANSFER_OK, total_size=total, offset=offset, length=length, chunk_size=CHUNK
    ).SerializeToString()


def test_listener_with_another_identity_is_refused() -> None:
    """The initiator refuses a listener that cannot prove the peer id it meant to reach."""

    async def scenario() -> None:
        provider = await start_provider()
        try:
            someone_else = NodeIdentity(os.urandom(32)).peer_id
            with pytest.raises(FastPathAuthError, match="expected"):
                await fastpath.open_channel(["127.0.0.1"], provider.server.port, NodeIdentity(os.urandom(32)),
                                            someone_else, 5.0)
        finally:
            await provider.server.close()

    run(scenario)


class Impostor:
    """Claims a victim's public key but can only sign with its own key."""

    def __init__(self, victim: NodeIdentity) -> None:
        self.public_key = victim.public_key
        self._own = NodeIdentity(os.urandom(32))

    def sign(self, message: bytes) -> bytes:
        return self._own.sign(message)


def test_initiator_claiming_someone_elses_key_is_refused() -> None:
    async def scenario() -> None:
        provider = await start_provider()
        try:
            victim = NodeIdentity(os.urandom(32))
            sock = socket.create_connection(("127.0.0.1", provider.server.port))
            sock.setblocking(False)
            try:
                channel = await fastpath.initiate(sock, Impostor(victim), provider.identity.peer_id)  # type: ignore[arg-type]
                # The responder drops the connection instead of answering the first record.
                with pytest.raises((fastpath.ChannelClosed, ConnectionError, TransferProtocolError)):
                    await channel.send_record(b"\x0a\x20" + b"\x00" * 32)
                    await channel.recv_record(4096, 5.0)
            finally:
                sock.close()
            await asyncio.sleep(0.1)
            assert provider.stats.snapshot().fast_path_auth_failures == 1
        finally:
            await provider.server.close()

    run(scenario)


def test_replayed_or_tampered_records_fail_authentication() -> None:
    async def scenario() -> None:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            key1, key2 = os.urandom(32), os.urandom(32)
            pub = NodeIdentity(os.urandom(32)).public_key
            sender = fastpath.SecureChannel(a, key1, key2, pub)
            receiver = fastpath.SecureChannel(b, key2, key1, pub)
            await sender.send_record(b"hello")
            assert await receiver.recv_record(100, 2.0) == b"hello"
            loop = asyncio.get_running_loop()
            header = struct.pack(">I", 5 + 16)
            # Replaying the first record fails: the nonce is the per-direction record counter.
            replay = AESGCM(key1).encrypt(b"\x00" * 12, b"hello", header)
            await loop.sock_sendall(a, header + replay)
            with pytest.raises(TransferProtocolError, match="authentication"):
                await receiver.recv_record(100, 2.0)
            # Flipping one ciphertext bit of a correctly numbered record fails too.
            ct = bytearray(AESGCM(key1).encrypt(b"\x00" * 4 + (1).to_bytes(8, "big"), b"world", header))
            ct[0] ^= 1
            await loop.sock_sendall(a, header + bytes(ct))
            with pytest.raises(TransferProtocolError, match="authentication"):
                await receiver.recv_record(100, 2.0)
        finally:
            a.close()
            b.close()

    run(scenario)


def test_provider_statuses_over_the_fast_path() -> None:
    async def scenario() -> None:
        provider = await start_provider()
        me = NodeIdentity(os.urandom(32))
        try:
            data, cid = blob(200_000)
            provider.store.serve(cid, data)
            for state, expected in (
                (FetchState(hashlib.sha256(b"missing").digest(), 10_000_000), "not_found"),
                (FetchState(cid, 100_000), "too_large"),
            ):
                channel = await fastpath.open_channel(["127.0.0.1"], provider.server.port, me,
                                                      provider.identity.peer_id, 5.0)
                try:
                    with pytest.raises(ProviderRefused) as refused:
                        await fastpath.fetch_range(channel, state, StatsCollector(), 5.0)
                    assert refused.value.status == expected
                finally:
                    channel.close()
            assert provider.stats.snapshot().uploads_refused == {"not_found": 1, "too_large": 1}
        finally:
            await provider.server.close()

    run(scenario)


def test_pushes_reach_the_handler_and_bad_records_change_nothing() -> None:
    """A push is handed on with the channel's authenticated peer id; oversized pushes, pushes to a
    provider that takes none and unparsable records are refused and counted, and the channel
    keeps serving fetches afterwards."""

    async def scenario() -> None:
        received: list[tuple[str, bytes, str]] = []
        identity = NodeIdentity(os.urandom(32))
        store, stats = BlobStore(1 << 30, 4), StatsCollector()
        server = fastpath.FastPathServer(identity, store, stats, CHUNK, io_timeout=5.0,
                                         on_push=lambda *m: received.append(m), max_push_size=1000)
        await server.start("127.0.0.1", 0)
        mute = await start_provider()  # no push handler
        me = NodeIdentity(os.urandom(32))
        try:
            data, cid = blob(50_000)
            store.serve(cid, data)
            channel = await fastpath.open_channel(["127.0.0.1"], server.port, me, identity.peer_id, 5.0)
            try:
                await fastpath.push(channel, "topic-a", b"first", 5.0)
                await fastpath.push(channel, "topic-a", b"x" * 1001, 5.0)  # above max_push_size
                await channel.send_record(b"\xff\xff not a protobuf")  # answered BAD_REQUEST
                response = transfer_pb2.TransferResponse.FromString(
                    await channel.recv_record(fastpath.MAX_HEADER_FRAME, 5.0))
                assert response.status == transfer_pb2.TRANSFER_BAD_REQUEST
                await fastpath.push(channel, "topic-b", b"second", 5.0)
                state = FetchState(cid, 1_000_000)
                await fastpath.fetch_range(channel, state, StatsCollector(), 5.0)  # same channel, still good
                assert state.verified()
            finally:
                channel.close()
            assert received == [("topic-a", b"first", me.peer_id), ("topic-b", b"second", me.peer_id)]
            assert stats.snapshot().gossip_rejected == {"oversized": 1}

            channel = await fastpath.open_channel(["127.0.0.1"], mute.server.port, me, mute.identity.peer_id, 5.0)
            try:
                await fastpath.push(channel, "topic-a", b"ignored", 5.0)
                state = FetchState(hashlib.sha256(b"missing").digest(), 1_000)
                with pytest.raises(ProviderRefused):  # a round trip: the push was processed before it
                    await fastpath.fetch_range(channel, state, StatsCollector(), 5.0)
            finally:
                channel.close()
            assert mute.stats.snapshot().gossip_rejected == {"push_refused": 1}
        finally:
            await server.close()
            await mute.server.close()

    run(scenario)
