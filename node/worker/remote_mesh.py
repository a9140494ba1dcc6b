"""The daemon's mesh as the training worker's runners see it: the `Mesh` methods they use, each
one a call over the link (node/worker/link.py), and the mesh's events as they arrive from it.

Topic validation stays in the daemon (it holds the trust policy the mesh checks every message
against before anything is delivered or forwarded), so `subscribe` ignores its validator: what
reaches `events` passed the daemon's, and is marked `signature_verified`. The runners open each
message again (freshness, membership and revocations are checked again; the Ed25519 signature,
already verified by the daemon, is not: it was 5 % of a worker's CPU).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from fednode.node.mesh.errors import BlobNotFoundError, BlobTooLargeError, FetchError, MeshError
from fednode.node.mesh.types import (
    GossipMessage,
    MeshEvent,
    PeerConnected,
    PeerDisconnected,
    ReachabilityChanged,
    Validator,
)
from fednode.node.worker.link import Link, RemoteError, reply_body
from fednode.proto.v1 import worker_pb2

log = logging.getLogger("fednode.worker")

EVENT_QUEUE_SIZE = 10_000  # as the daemon's own mesh queue: overflow is dropped and logged


@dataclass(frozen=True)
class RemoteReachability:
    status: str


def event_from_proto(message: worker_pb2.MeshEvent) -> MeshEvent | None:
    kind = message.WhichOneof("kind")
    if kind == "gossip":
        g = message.gossip
        # Only messages the daemon's validator accepted are sent over the link.
        return GossipMessage(g.topic, bytes(g.data), g.from_peer, g.received_at, g.direct, signature_verified=True)
    if kind == "peer_connected":
        return PeerConnected(message.peer_connected, message.connection or "direct", message.address)  # type: ignore[arg-type]
    if kind == "peer_disconnected":
        return PeerDisconnected(message.peer_disconnected)
    if kind == "reachability":
        return ReachabilityChanged(message.reachability)  # type: ignore[arg-type]
    return None


def event_to_proto(event: MeshEvent) -> worker_pb2.MeshEvent:
    if isinstance(event, GossipMessage):
        return worker_pb2.MeshEvent(gossip=worker_pb2.GossipIn(
            topic=event.topic, data=event.data, from_peer=event.from_peer, received_at=event.received_at,
            direct=event.direct))
    if isinstance(event, PeerConnected):
        return worker_pb2.MeshEvent(peer_connected=event.peer_id, connection=event.connection, address=event.address)
    if isinstance(event, PeerDisconnected):
        return worker_pb2.MeshEvent(peer_disconnected=event.peer_id)
    return worker_pb2.MeshEvent(reachability=event.status)


_FETCH_ERRORS: dict[worker_pb2.LinkErrorKind, type[FetchError]] = {
    worker_pb2.LINK_ERROR_BLOB_NOT_FOUND: BlobNotFoundError,
    worker_pb2.LINK_ERROR_BLOB_TOO_LARGE: BlobTooLargeError,
}


def _fetch_error(exc: RemoteError) -> FetchError:
    """The daemon's fetch failure, as the exception type the mesh itself would raise (by its kind)."""
    return _FETCH_ERRORS.get(exc.kind, FetchError)(str(exc))


class RemoteMesh:
    """`Mesh` for code running in the training worker (see the module docstring)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.events: asyncio.Queue[MeshEvent] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._info = worker_pb2.MeshInfo(reachability="unknown", max_gossip_bytes=64 * 1024)
        self.events_dropped = 0

    # ------------------------------------------------------------------ fed by the link
    def update_info(self, info: worker_pb2.MeshInfo) -> None:
        self._info.CopyFrom(info)

    def deliver(self, message: worker_pb2.MeshEvent) -> None:
        event = event_from_proto(message)
        if event is None:
            return
        if isinstance(event, ReachabilityChanged):
            self._info.reachability = event.status
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self.events_dropped += 1
            if self.events_dropped == 1 or self.events_dropped % 1000 == 0:
                log.warning("training worker: %d mesh events dropped (queue full)", self.events_dropped)

    # ------------------------------------------------------------------ Mesh interface
    @property
    def max_gossip_bytes(self) -> int:
        return self._info.max_gossip_bytes

    def listen_multiaddrs(self) -> list[str]:
        return list(self._info.listen_multiaddrs)

    def reachability(self) -> RemoteReachability:
        return RemoteReachability(self._info.reachability or "unknown")

    async def _call(self, field: str, message: object) -> worker_pb2.LinkFrame:
        try:
            return await self.link.call(field, message)  # type: ignore[arg-type]
        except RemoteError as exc:
            raise MeshError(str(exc)) from None

    async def subscribe(self, topic: str, validator: Validator | None = None) -> None:
        await self._call("subscribe", worker_pb2.Subscribe(topic=topic))

    async def publish(self, topic: str, data: bytes) -> None:
        await self._call("publish", worker_pb2.GossipOut(topic=topic, data=data))

    async def push(self, topic: str, data: bytes, peers: Iterable[str]) -> list[str]:
        reply = await self._call("push", worker_pb2.PushOut(topic=topic, data=data, peers=list(peers)))
        return list(reply_body(reply, "peer_list").peers)

    def serve_blob(self, content_id: bytes, data: bytes | bytearray | memoryview) -> None:
        self.link.notify("serve_blob", worker_pb2.Blob(content_id=bytes(content_id), data=bytes(data)))

    def unserve_blob(self, content_id: bytes) -> bool:
        self.link.notify("unserve_blob", worker_pb2.Key(key=bytes(content_id)))
        return True

    async def fetch_blob(self, content_id: bytes, providers: Iterable[str], *, max_size: int | None = None) -> bytes:
        request = worker_pb2.BlobFetch(content_id=bytes(content_id), candidates=list(providers),
                                       max_size=max_size or 0)
        try:
            reply = await self.link.call("fetch_blob", request)
        except RemoteError as exc:
            raise _fetch_error(exc) from None
        return reply_body(reply, "blob").data

    async def provide(self, key: bytes) -> None:
        await self._call("provide", worker_pb2.Key(key=key))

    async def find_providers(self, key: bytes, count: int = 20) -> list[str]:
        reply = await self._call("find_providers", worker_pb2.ProviderQuery(key=key, count=count))
        return list(reply_body(reply, "peer_list").peers)

    async def connect_peer(self, peer_id: str) -> None:
        await self._call("connect_peer", worker_pb2.PeerList(peers=[peer_id]))

    async def put_record(self, key: str, value: bytes) -> None:
        await self._call("put_record", worker_pb2.Record(key=key, value=value))

    async def get_records(self, key: str) -> list[bytes]:
        reply = await self._call("get_records", worker_pb2.Key(key=key.encode()))
        return list(reply_body(reply, "record_values").values)
