"""The asyncio-facing Mesh object: the only thing the node uses (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from fednode.proto.v1 import transfer_pb2

from . import fastpath
from .bridge import TrioThread
from .config import MeshConfig
from .errors import (
    BlobNotFoundError,
    BlobTooLargeError,
    DialError,
    FastPathAuthError,
    FetchError,
    MeshClosedError,
    MeshError,
    MessageTooLargeError,
    StreamOpenError,
)
from .identity import NodeIdentity
from .libp2p import Libp2pNode
from .reachability import ReachabilityFacts, describe_reachability
from .transfer import CONTENT_ID_LEN, BlobStore, FetchState, ProviderRefused, TransferProtocolError
from .types import GossipMessage, MeshEvent, MeshStats, PeerInfo, Reachability, StatsCollector, Validator

log = logging.getLogger(__name__)
T = TypeVar("T")
_WILDCARD_HOSTS = {"0.0.0.0", "::"}
# Idle fast-path channels kept for the next fetch from the same peer; providers close channels
# idle for fastpath.SERVER_IDLE_S (60 s), so keep them for less than that.
_IDLE_CHANNEL_TTL_S = 30.0
_IDLE_CHANNELS_PER_PEER = 2


def _route_libp2p_logs() -> None:
    """Send py-libp2p's log records through the application's logging configuration.

    Unless LIBP2P_DEBUG is set, libp2p detaches its logger (propagate=False, no handler), so its
    warnings reach stderr through logging's last-resort handler, bypassing the daemon's format.
    Its warnings are mostly expected churn (a peer closing a DHT stream); keep errors only.
    """
    logger = logging.getLogger("libp2p")
    if logger.handlers or os.environ.get("LIBP2P_DEBUG"):
        return
    logger.propagate = True
    if logger.level < logging.ERROR:
        logger.setLevel(logging.ERROR)
    # This module sets INFO on itself and logs every few seconds while below 50 connections.
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.WARNING)
    relay_logger = logging.getLogger("libp2p.relay.circuit_v2.protocol")
    if not any(isinstance(f, _HopStreamClosedFilter) for f in relay_logger.filters):
        relay_logger.addFilter(_HopStreamClosedFilter())


class _HopStreamClosedFilter(logging.Filter):
    """Drop the relay's ERROR records about a hop stream the peer closed.

    A client closes its hop stream once its reservation is granted (go-libp2p does too); the
    0.8.1 relay then tries to read the next message, fails, tries to answer, fails, and logs
    three errors for every reservation and refresh (seen in the netns tests). They are noise
    that hides real errors; everything else from the relay still shows.
    """

    _BENIGN = ("Error reading from hop stream", "Unexpected error handling hop stream",
               "Error sending status message")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._BENIGN)


def _fast_path_host(listen_multiaddr: str) -> str:
    """The host part of a /ip4/<h>/tcp/<p> or /ip6/<h>/tcp/<p> listen address."""
    parts = listen_multiaddr.strip("/").split("/")
    if len(parts) >= 2 and parts[0] in ("ip4", "ip6"):
        return parts[1]
    return "0.0.0.0"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ProviderRefused):
        return exc.status
    if isinstance(exc, DialError):
        return f"unreachable: {exc}"[:200]
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, TransferProtocolError):
        return f"protocol: {exc}"[:200]
    if isinstance(exc, ConnectionError | OSError):
        return f"connection: {exc}"[:200]
    return f"{type(exc).__name__}: {exc}"[:200]


class Mesh:
    """One node's networking: libp2p host, gossip, DHT, blob transfer. Use from asyncio.

    Create it, ``await start()``, use it, ``await stop()``. Not reusable after stop().
    """

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self._identity = NodeIdentity(bytes(config.identity_key))
        #: This node's libp2p peer id ("12D3KooW..."), stable for a given identity key.
        self.peer_id: str = self._identity.peer_id
        #: Events for the node, oldest first. Bounded: drain it promptly; overflow is dropped and
        #: counted in stats().events_dropped rather than ever blocking the networking thread.
        self.events: asyncio.Queue[MeshEvent] = asyncio.Queue(maxsize=config.event_queue_size)
        self._stats = StatsCollector()
        self._store = BlobStore(config.max_blob_size, config.max_concurrent_uploads)
        self._bridge: TrioThread[Libp2pNode] | None = None
        self._node: Libp2pNode | None = None
        self._fast: fastpath.FastPathServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: dict[str, list[tuple[float, fastpath.SecureChannel]]] = {}
        # One channel per peer for pushes (sends serialised by its lock), with its last use.
        self._push_channels: dict[str, tuple[float, fastpath.SecureChannel]] = {}
        self._push_locks: dict[str, asyncio.Lock] = {}
        self._validators: dict[str, Validator] = {}  # subscribed topics, for pushed messages
        self._relay_admission = config.relay_admission
        self._serve_admission: Callable[[str], bool] | None = None
        self._blob_paths: dict[str, str] = {}  # peer -> last path a fetch from it used (for the log)
        self._state = "new"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen, dial the bootstrap peers, reserve relay slots, refresh the DHT.

        Returns once the host listens and bootstrap was attempted; bounded by
        ``config.start_timeout_s``. Unreachable bootstrap peers are logged, not raised (the
        maintenance loop keeps re-dialing them). Raises :class:`MeshError` if the host cannot
        start (bad address, port in use...), after cleaning up.
        """
        if self._state != "new":
            raise MeshError("a Mesh can be started once")
        self._state = "starting"
        _route_libp2p_logs()
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._loop = loop
        deadline = loop.time() + cfg.start_timeout_s
        try:
            info = transfer_pb2.FastPathInfo(version=fastpath.CHANNEL_VERSION, port=0)
            if cfg.fast_path:
                host = _fast_path_host(cfg.listen_multiaddrs[0])
                self._fast = fastpath.FastPathServer(
                    self._identity, self._store, self._stats, cfg.fetch_chunk_size, cfg.io_timeout_s,
                    max_connections=4 * cfg.max_concurrent_uploads,
                    on_push=self._on_push, max_push_size=cfg.gossip.max_message_size,
                )
                bound = await self._fast.start(host, cfg.fast_path_port)
                info.port = cfg.fast_path_announce_port or bound
                if host not in _WILDCARD_HOSTS and cfg.fast_path_announce_port is None:
                    info.hosts.append(host)
            if self._fast is not None:
                self._fast.serve_admission = self._serve_admission
            node = Libp2pNode(cfg, self._identity, self._store, self._stats, self._emit_threadsafe, info)
            node.relay_admission = self._relay_admission
            node.serve_admission = self._serve_admission
            self._node = node
            self._bridge = TrioThread(node.running, name=f"fednode-mesh-{self.peer_id[-8:]}")
            await self._bridge.start(timeout=max(1.0, deadline - loop.time()))
            self._state = "running"
            try:
                await asyncio.wait_for(self._bridge.call(Libp2pNode.bootstrap), max(0.5, deadline - loop.time()))
            except asyncio.TimeoutError:
                log.warning("bootstrap did not finish within %.0f s; continuing", cfg.start_timeout_s)
        except BaseException as exc:
            await self._shutdown()
            if isinstance(exc, Exception) and not isinstance(exc, MeshError):
                raise MeshError(f"the mesh failed to start: {exc}") from exc
            raise
        log.info("mesh %s listening on %s", self.peer_id, " ".join(self.listen_multiaddrs()))

    async def stop(self) -> None:
        """Close every connection and stream, stop the networking thread and the fast path.

        Bounded by ``config.stop_timeout_s``; idempotent.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._state = "stopping"
        budget = self.config.stop_timeout_s
        self._close_idle()
        if self._fast is not None:  # stop serving first: it is quick and frees the port
            try:
                await asyncio.wait_for(self._fast.close(), 2.0)
            except Exception as exc:  # stopping goes on: the bridge below still stops
                log.warning("closing the fast path failed: %s", str(exc) or type(exc).__name__)
        if self._bridge is not None and not await self._bridge.stop(timeout=max(1.0, budget - 2.5)):
            log.error("the networking thread did not stop within %.1f s", budget)
        self._state = "stopped"

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def max_gossip_bytes(self) -> int:
        """Largest message publish() and push() accept (``gossip.max_message_size``)."""
        return self.config.gossip.max_message_size

    @property
    def fast_path_port(self) -> int | None:
        """The bound fast-path TCP port (None when the fast path is off or not started)."""
        return self._fast.port if self._fast is not None and self._fast.port else None

    # ------------------------------------------------------------------ plumbing

    def _emit_threadsafe(self, event: MeshEvent) -> None:
        """Called in the networking thread: hand the event to the asyncio loop, never block."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: MeshEvent) -> None:
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self._stats.add("events_dropped")

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._state != "running" or self._bridge is None:
            raise MeshClosedError("the mesh is not running")
        return await self._bridge.call(fn, *args)

    def _require_running(self) -> Libp2pNode:
        if self._state != "running" or self._node is None:
            raise MeshClosedError("the mesh is not running")
        return self._node

    # ------------------------------------------------------------------ addresses and peers

    def listen_multiaddrs(self) -> list[str]:
        """Full dialable addresses others should use: ``/ip4/<ip>/tcp/<port>/p2p/<peer id>``.

        Wildcard listen addresses are expanded to this machine's interface addresses; announce
        addresses replace them when configured; relay (/p2p-circuit) addresses are added once a
        relay slot is reserved.
        """
        return self._node.listen_multiaddrs() if self._node is not None else []

    async def connect(self, multiaddr: str) -> str:
        """Connect to a full multiaddr (``.../p2p/<id>``, or a relay ``/p2p-circuit`` address).

        Returns the peer id. Raises :class:`DialError` (bounded by ``io_timeout_s``).
        """
        return await self._call(Libp2pNode.connect, multiaddr)

    async def connect_peer(self, peer_id: str) -> None:
        """Connect to a peer by id, using addresses learned from the DHT, identify or earlier
        dials (direct first, then relay addresses), else a DHT peer lookup. Raises DialError."""
        await self._call(Libp2pNode.connect_peer, peer_id)

    def peers(self) -> list[PeerInfo]:
        """Currently connected peers (connection type, addresses, latency, last seen)."""
        return self._node.peers() if self._node is not None else []

    def reachability(self) -> Reachability:
        """AutoNAT's verdict about this node, with the relay addresses it holds."""
        if self._node is None:
            return Reachability("unknown", 0, 0, (), None)
        return self._node.reachability()

    async def wait_for_reachability(self, timeout: float) -> Reachability:
        """The reachability once AutoNAT has a verdict ("public"/"private"), or after ``timeout``.

        Bounded; polls (cheap). For the start-up message: ``await`` this, then log
        :meth:`reachability_report`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while self.running and self.reachability().status == "unknown" and loop.time() < deadline:
            await asyncio.sleep(0.2)
        return self.reachability()

    def reachability_report(self) -> str:
        """One actionable sentence: is this node reachable, and what does it do about it.

        E.g. "reachable (public): 1 of 1 peer(s) asked could dial it back; peers can dial
        /ip4/.../p2p/... directly", or "behind NAT (private): ...; reserved a relay slot on
        ...; will try hole punching (DCUtR) with every peer that connects through it", or
        "reachability unknown yet (...)". See :mod:`.reachability`.
        """
        cfg = self.config
        addrs = self.listen_multiaddrs()
        port = None
        for addr in cfg.listen_multiaddrs:
            parts = addr.split("/")
            if "tcp" in parts and parts[parts.index("tcp") + 1].isdigit():
                port = int(parts[parts.index("tcp") + 1]) or None
                break
        if port is None:
            direct = [a for a in addrs if "/p2p-circuit" not in a and "/tcp/" in a]
            if direct:
                port = int(direct[0].split("/tcp/")[1].split("/")[0])
        facts = ReachabilityFacts(
            reachability=self.reachability(),
            direct_addrs=tuple(a for a in addrs if "/p2p-circuit" not in a),
            relay_hop=cfg.relay_hop,
            bootstrap_configured=bool(cfg.bootstrap_multiaddrs or cfg.peer_hints),
            relays=tuple(self._node.relays()) if self._node is not None else (),
            listen_port=port,
            dcutr=cfg.enable_dcutr,
        )
        return describe_reachability(facts)

    def set_relay_admission(self, admission: Callable[[str], bool] | None) -> None:
        """Decide who may use this node's relay (reservations and circuits, checked per request).

        ``admission(peer_id) -> bool`` runs in the networking thread: cheap, non-blocking,
        thread-safe; an exception refuses. None opens the relay to every peer (the default
        unless ``MeshConfig.relay_admission`` is set). Takes effect for the next request;
        works before and after start().
        """
        if self._node is not None:
            self._node.relay_admission = admission
        self._relay_admission = admission

    def set_serve_admission(self, admission: Callable[[str], bool] | None) -> None:
        """Decide who may fetch this node's blobs (model updates, snapshots), over the fast path
        and libp2p streams alike: others hear "not found". ``admission(peer_id) -> bool`` as for
        :meth:`set_relay_admission` (cheap, thread-safe; an exception refuses). None = any peer.
        Works before and after start()."""
        self._serve_admission = admission
        if self._node is not None:
            self._node.serve_admission = admission
        if self._fast is not None:
            self._fast.serve_admission = admission

    def stats(self) -> MeshStats:
        return self._stats.snapshot()

    # ------------------------------------------------------------------ gossip

    async def subscribe(self, topic: str, validator: Validator) -> None:
        """Join ``topic``; deliver its accepted messages to ``events`` as GossipMessage.

        ``validator(data, from_peer) -> None | reason`` runs in the networking thread for every
        message before delivery and forwarding (see :data:`~fednode.node.mesh.types.Validator`).
        Messages above ``gossip.max_message_size`` are rejected as "oversized" before it runs.
        Rejected messages are counted by reason in stats() and not propagated. Subscribing again
        replaces the validator.
        """
        await self._call(Libp2pNode.subscribe, topic, validator)
        self._validators[topic] = validator

    async def unsubscribe(self, topic: str) -> None:
        self._validators.pop(topic, None)
        await self._call(Libp2pNode.unsubscribe, topic)

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on ``topic`` (signed by this node's key).

        Raises :class:`MessageTooLargeError` above ``gossip.max_message_size`` instead of letting
        GossipSub drop the message silently. Delivery is best effort, as with any gossip.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("publish() takes bytes")
        if len(data) > self.config.gossip.max_message_size:
            raise MessageTooLargeError(
                f"gossip message of {len(data)} bytes exceeds max_message_size "
                f"{self.config.gossip.max_message_size}; gossip metadata and fetch the payload as a blob"
            )
        await self._call(Libp2pNode.publish, topic, bytes(data))

    async def push(self, topic: str, data: bytes, peers: Iterable[str]) -> list[str]:
        """Send ``data`` for ``topic`` straight to each of ``peers`` over the fast path; returns
        the peers it was handed to (their kernels have it; no acknowledgement).

        A latency shortcut next to :meth:`publish`: peers reachable only through a relay, peers
        without a fast path and failed sends are skipped, so publish the same bytes whenever the
        returned list misses a peer that must get them. Receivers validate and deliver a push exactly
        like a gossip message from this node, with ``GossipMessage.direct`` set, and recognise a
        gossip copy of it, if one is sent, as such. Pushes to one peer arrive in the order they were made. Bounded by
        ``io_timeout_s`` per peer; the peers are served concurrently. Raises
        :class:`MessageTooLargeError` like publish().
        """
        if len(data) > self.config.gossip.max_message_size:
            raise MessageTooLargeError(
                f"message of {len(data)} bytes exceeds max_message_size {self.config.gossip.max_message_size}"
            )
        if self._fast is None or self._state != "running":
            return []
        targets = [p for p in dict.fromkeys(peers) if p != self.peer_id]
        sent = await asyncio.gather(*(self._push_to(peer, topic, bytes(data)) for peer in targets))
        return [peer for peer, ok in zip(targets, sent, strict=True) if ok]

    async def _push_to(self, peer: str, topic: str, data: bytes) -> bool:
        lock = self._push_locks.setdefault(peer, asyncio.Lock())
        async with lock:
            io = self.config.io_timeout_s
            for attempt in range(2):  # a kept channel may have been closed meanwhile: one retry
                channel = self._push_channel(peer) if attempt == 0 else None
                if channel is None:
                    channel = await self._open_push_channel(peer)
                    if channel is None:
                        return False
                try:
                    await fastpath.push(channel, topic, data, io)
                except (OSError, asyncio.TimeoutError) as exc:
                    channel.close()
                    self._push_channels.pop(peer, None)
                    log.debug("push to %s failed: %s", peer, exc)
                    continue
                self._push_channels[peer] = (time.monotonic(), channel)
                self._stats.add("pushes_sent")
                self._stats.add("push_bytes_sent", len(data))
                return True
            return False

    def _push_channel(self, peer: str) -> fastpath.SecureChannel | None:
        """The peer's push channel unless it sat idle long enough for the peer to drop it (a
        send into a channel the peer closed would vanish without an error)."""
        kept = self._push_channels.get(peer)
        if kept is None:
            return None
        last_used, channel = kept
        if time.monotonic() - last_used < _IDLE_CHANNEL_TTL_S:
            return channel
        channel.close()
        del self._push_channels[peer]
        return None

    async def _open_push_channel(self, peer: str) -> fastpath.SecureChannel | None:
        if self._state != "running":
            return None
        try:
            target = await self._call(Libp2pNode.fastpath_target, peer)
        except MeshClosedError:
            return None
        if target is None:
            return None
        hosts, port = target
        try:
            return await fastpath.open_channel(hosts, port, self._identity, peer, self.config.io_timeout_s)
        except FastPathAuthError as exc:
            self._stats.add("fast_path_auth_failures")
            log.warning("fast path of %s refused: %s; pushes to it skipped", peer, exc)
            await self._call(Libp2pNode.forget_fastpath, peer)
        except (OSError, asyncio.TimeoutError) as exc:
            log.debug("fast path of %s unreachable for a push: %s", peer, exc)
            await self._call(Libp2pNode.forget_fastpath, peer, True)
        return None

    def _on_push(self, topic: str, data: bytes, from_peer: str) -> None:
        """A pushed message (fast-path server, event loop): the topic's validator, then events."""
        validator = self._validators.get(topic)
        if validator is None:
            self._stats.reject("unsubscribed_topic")
            return
        try:
            reason = validator(data, from_peer)
        except Exception:
            log.exception("validator raised on a pushed message; rejecting it")
            reason = "validator_error"
        if reason is not None:
            self._stats.reject(str(reason))
            return
        self._stats.add("pushes_received")
        self._stats.add("push_bytes_received", len(data))
        self._deliver(GossipMessage(topic, data, from_peer, time.time(), direct=True))

    # ------------------------------------------------------------------ requests

    def set_request_handler(self, handler: Callable[[str, bytes, str], Coroutine[Any, Any, bytes]] | None) -> None:
        """Answer /fednode/request/1.0.0 requests: ``await handler(kind, data, from_peer) -> bytes``
        runs on this event loop; raising an exception sends the peer its message as a refusal.
        One handler per node (it dispatches on ``kind``); requests are at most 1 MiB."""
        node = self._require_running()
        if handler is None:
            node.request_handler = None
            return
        loop = asyncio.get_running_loop()
        timeout = 3 * self.config.io_timeout_s

        def call_from_trio_worker(kind: str, data: bytes, peer: str) -> bytes:
            return asyncio.run_coroutine_threadsafe(handler(kind, data, peer), loop).result(timeout)

        node.request_handler = call_from_trio_worker

    async def request(self, target: str, kind: str, data: bytes, *, max_response: int = 1 << 20) -> bytes:
        """Send one request to ``target`` (a full multiaddr, or a peer id the node can reach)
        and return the answer. Raises DialError, TimeoutError or MeshError (refused)."""
        if len(data) > (1 << 20):
            raise MessageTooLargeError(f"request of {len(data)} bytes exceeds 1 MiB")
        return await self._call(Libp2pNode.request, target, kind, bytes(data), max_response)

    async def topic_peers(self, topic: str) -> list[str]:
        """Peers known to be subscribed to ``topic`` (useful to wait for a mesh to form)."""
        return await self._call(Libp2pNode.topic_peers, topic)

    # ------------------------------------------------------------------ DHT

    async def provide(self, key: bytes) -> None:
        """Announce on the DHT that this node provides ``key`` (re-announced periodically)."""
        await self._call(Libp2pNode.provide, bytes(key))

    async def find_providers(self, key: bytes, count: int = 20) -> list[str]:
        """Peer ids of providers of ``key`` (deduplicated, never this node), at most ``count``."""
        return await self._call(Libp2pNode.find_providers, bytes(key), count)

    async def put_record(self, key: str, value: bytes) -> None:
        """Store a record under ``key`` (``/<namespace>/...``, namespace registered in
        ``MeshConfig.record_validators``) here and at the closest DHT peers, bounded by
        ``2 * io_timeout_s``. Raises ValueError for a key or value its validator refuses."""
        if len(value) > self.config.max_record_size:
            raise ValueError(f"record of {len(value)} bytes exceeds {self.config.max_record_size}")
        try:
            await self._call(Libp2pNode.put_record, key, bytes(value))
        except MeshError:
            raise
        except Exception as exc:  # the library's InvalidRecordType and friends
            raise ValueError(f"record refused: {exc}") from exc

    async def get_records(self, key: str) -> list[bytes]:
        """Every distinct valid value of ``key`` held here or by the closest DHT peers (empty when
        none), bounded by ``2 * io_timeout_s``. Callers merge them (or pick with their selector)."""
        return await self._call(Libp2pNode.get_records, key)

    # ------------------------------------------------------------------ blobs

    def serve_blob(self, content_id: bytes, data: bytes | bytearray | memoryview) -> None:
        """Serve ``data`` to peers under ``content_id`` = sha256(data) (checked; a copy is kept).

        Raises ValueError if the hash does not match, MessageTooLargeError above max_blob_size.
        Works before start(). Blobs stay in memory until :meth:`unserve_blob`.
        """
        self._store.serve(bytes(content_id), data if isinstance(data, bytes) else bytes(data))

    def unserve_blob(self, content_id: bytes) -> bool:
        """Stop serving a blob (transfers in progress finish). True if it was served."""
        return self._store.unserve(bytes(content_id))

    def serving(self) -> list[bytes]:
        """Content ids currently served."""
        return self._store.content_ids()

    async def fetch_blob(
        self, content_id: bytes, providers: Iterable[str], *, max_size: int | None = None
    ) -> bytearray:
        """Fetch a blob by content id from the first provider that has it; sha256-verified.

        Providers are tried in order; the fast path first for directly connected peers, the
        libp2p stream otherwise or when the fast path fails. A provider dying mid-transfer costs
        nothing already received: the next attempt resumes at that offset. BUSY providers are
        retried once after the others. A hash mismatch discards the bytes and excludes the
        providers that sent them.

        Returns a fresh ``bytearray`` owned by the caller (bytes-like everywhere: hashlib,
        protobuf, zstd, numpy; returning ``bytes`` would copy the whole blob once more).
        Raises :class:`BlobTooLargeError` if the blob exceeds ``max_size`` (default and ceiling:
        ``config.max_blob_size``), :class:`BlobNotFoundError` if every provider lacks it, and
        :class:`FetchError` (with per-provider ``reasons``) otherwise.
        """
        self._require_running()
        content_id = bytes(content_id)
        if len(content_id) != CONTENT_ID_LEN:
            raise ValueError("content_id must be a 32-byte sha256")
        limit = self.config.max_blob_size if max_size is None else min(max_size, self.config.max_blob_size)
        local = self._store.get(content_id)
        if local is not None:
            if len(local) > limit:
                raise BlobTooLargeError(f"blob of {len(local)} bytes exceeds max_size {limit}")
            return bytearray(local)
        candidates = list(dict.fromkeys(p for p in providers if p != self.peer_id))
        if not candidates:
            self._stats.add("fetches_failed")
            raise FetchError("no provider to fetch from")
        try:
            return await self._fetch(content_id, candidates, limit)
        except FetchError:
            self._stats.add("fetches_failed")
            raise

    async def _fetch(self, content_id: bytes, candidates: list[str], limit: int) -> bytearray:
        state = FetchState(content_id, limit)
        reasons: dict[str, str] = {}
        excluded: set[str] = set()
        pending = deque(candidates)
        # Providers that answered "busy", or that we are connected to but could not open a stream
        # to (a relayed connection closing under us), get one more try after a short pause once
        # every other candidate was tried. Unreachable ones do not: a dead peer costs one dial.
        retry_later: list[str] = []
        retried = False
        while True:
            if not pending:
                if retry_later and not retried:
                    retried = True
                    pending.extend(retry_later)
                    retry_later.clear()
                    await asyncio.sleep(0.25)
                    continue
                break
            peer = pending.popleft()
            if peer in excluded:
                continue
            if state.received:
                self._stats.add("fetch_resumes")
            try:
                await self._fetch_from(peer, state)
            except ProviderRefused as refused:
                reasons[peer] = refused.status
                if refused.status == "too_large":
                    raise BlobTooLargeError(
                        f"blob is {refused.total_size} bytes, above max_size {limit}", reasons
                    ) from None
                if refused.status == "busy":
                    retry_later.append(peer)
                continue
            except (MeshClosedError, asyncio.CancelledError):
                raise
            except Exception as exc:
                reasons[peer] = _reason(exc)
                if isinstance(exc, StreamOpenError):
                    retry_later.append(peer)
                log.debug("fetch of %s from %s failed: %s", content_id.hex()[:12], peer, exc)
                continue
            if not state.complete:
                reasons[peer] = "incomplete"
                continue
            if state.verified():
                self._stats.add("fetches_ok")
                return state.buffer
            self._stats.add("fetch_hash_mismatches")
            bad = set(state.contributors) or {peer}
            for p in bad:
                reasons[p] = "hash_mismatch"
            excluded |= bad
            state.reset()
            pending = deque(p for p in candidates if p not in excluded and p not in reasons)
        if reasons and all(r == "not_found" for r in reasons.values()):
            raise BlobNotFoundError(f"no provider has {content_id.hex()}", reasons)
        raise FetchError(f"could not fetch {content_id.hex()}: {reasons}", reasons)

    async def _fetch_from(self, peer: str, state: FetchState) -> None:
        """One attempt with one provider: fast path first if possible, then the libp2p stream."""
        if self._fast is not None and await self._fetch_fast(peer, state):
            self._note_blob_path(peer, "fast-path")
            return
        self._stats.add("fetch_attempts_libp2p")
        await self._call(Libp2pNode.fetch_range, peer, state)
        self._note_blob_path(peer, "libp2p")

    def _note_blob_path(self, peer: str, transport: str) -> None:
        """Log (once per change) which path blobs from ``peer`` take: fast path, or a libp2p
        stream over a direct, hole-punched or relayed connection."""
        kind = next((p.connection for p in self.peers() if p.peer_id == peer), "none")
        path = "fast-path" if transport == "fast-path" else f"libp2p-{kind}"
        if self._blob_paths.get(peer) == path:
            return
        self._blob_paths[peer] = path
        log.info("blobs from %s now arrive over %s", peer, path,
                 extra={"event": "blob_path", "peer": peer, "path": path, "connection": kind})

    async def _fetch_fast(self, peer: str, state: FetchState, reuse: bool = True) -> bool:
        """Try the fast path; True when it delivered the range, False to fall back to libp2p.

        Channels are kept open after a transfer and reused by the next fetch from the same peer
        (no connect, no handshake); a stale one (closed by the provider meanwhile) is replaced
        by a fresh one at once.
        """
        io = self.config.io_timeout_s
        channel = self._take_idle(peer) if reuse else None
        reused = channel is not None
        if channel is None:
            target = await self._call(Libp2pNode.fastpath_target, peer)
            if target is None:
                return False
            hosts, port = target
            try:
                channel = await fastpath.open_channel(hosts, port, self._identity, peer, io)
            except FastPathAuthError as exc:
                self._stats.add("fetch_attempts_fast_path")
                self._stats.add("fast_path_auth_failures")
                log.warning("fast path of %s refused: %s; using libp2p", peer, exc)
                await self._call(Libp2pNode.forget_fastpath, peer)
                return False
            except (OSError, asyncio.TimeoutError) as exc:
                log.debug("fast path of %s unreachable: %s; using libp2p", peer, exc)
                # Remember it: a firewall that drops the SYNs would cost io_timeout_s per fetch.
                await self._call(Libp2pNode.forget_fastpath, peer, True)
                return False
        self._stats.add("fetch_attempts_fast_path")
        before = state.received
        try:
            await fastpath.fetch_range(channel, state, self._stats, io)
        except ProviderRefused:
            self._put_idle(peer, channel)  # the provider answered: the channel is still good
            raise
        except (TransferProtocolError, OSError, asyncio.TimeoutError) as exc:
            channel.close()
            if reused and state.received == before:
                return await self._fetch_fast(peer, state, reuse=False)
            log.debug("fast-path transfer from %s broke at %d: %s; using libp2p", peer, state.received, exc)
            return False
        except BaseException:
            channel.close()
            raise
        self._put_idle(peer, channel)
        return True

    def _take_idle(self, peer: str) -> fastpath.SecureChannel | None:
        idle = self._idle.get(peer)
        now = time.monotonic()
        while idle:
            since, channel = idle.pop()
            if now - since < _IDLE_CHANNEL_TTL_S:
                return channel
            channel.close()
        return None

    def _put_idle(self, peer: str, channel: fastpath.SecureChannel) -> None:
        if self._state != "running":
            channel.close()
            return
        idle = self._idle.setdefault(peer, [])
        if len(idle) >= _IDLE_CHANNELS_PER_PEER:
            channel.close()
            return
        idle.append((time.monotonic(), channel))

    def _close_idle(self) -> None:
        for idle in self._idle.values():
            for _, channel in idle:
                channel.close()
        self._idle.clear()
        for _, channel in self._push_channels.values():
            channel.close()
        self._push_channels.clear()
