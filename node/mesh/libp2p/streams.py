"""Streams: blob transfer (/fednode/transfer/1.0.0, provider and requester sides), small
request/response exchanges (/fednode/request/1.0.0), and the fast-path handshake (where a
peer's encrypted TCP fast path listens, cached per peer)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from fednode.proto.v1 import transfer_pb2

from ..errors import DialError, MeshError, StreamOpenError
from ..fastpath import CHANNEL_VERSION
from ..transfer import (
    FASTPATH_INFO_PROTOCOL,
    MAX_HEADER_FRAME,
    TRANSFER_PROTOCOL,
    BlobStore,
    FetchState,
    TransferProtocolError,
    admits,
    answer_request,
    build_request,
    chunk_prefix,
    parse_chunk,
    status_name,
)
from .connections import Connections
from .context import HostContext
from .wire import WILDCARDS, FrameReader, close_stream, is_relayed, remote_ip, write_frame

log = logging.getLogger(__name__)

REQUEST_PROTOCOL = "/fednode/request/1.0.0"  # small request/response exchanges (e.g. joining)
MAX_REQUEST_FRAME = 1 << 20
_FASTPATH_INFO_TTL_S = 300.0
_FASTPATH_RETRY_S = 300.0  # after a failed fast-path connect, use libp2p streams with that peer this long
# After a failed FastPathInfo request (typically a time-out while the peer is busy starting up or
# training), ask again this soon: caching the failure for _FASTPATH_INFO_TTL_S would leave the
# pair on libp2p streams, which time out under the same load, for five minutes.
_FASTPATH_INFO_RETRY_S = 5.0


class Streams:
    """The node's stream protocols (handlers registered on the host by :meth:`install`)."""

    def __init__(self, ctx: HostContext, connections: Connections, store: BlobStore,
                 fast_path_info: transfer_pb2.FastPathInfo) -> None:
        self.ctx = ctx
        self.connections = connections
        self.store = store
        self._fast_path_info = fast_path_info.SerializeToString()
        self._fastpath_cache: dict[str, tuple[float, transfer_pb2.FastPathInfo]] = {}
        self._fastpath_unreachable: dict[str, float] = {}  # peer -> monotonic time of the failure
        #: Who may fetch blobs from this node (Mesh.set_serve_admission); None = anyone.
        self.serve_admission: Callable[[str], bool] | None = None
        #: Request handler (see Mesh.set_request_handler): (kind, data, peer) -> response, called
        #: through the asyncio loop; None answers every request with "no handler".
        self.request_handler: Callable[[str, bytes, str], bytes] | None = None

    def install(self) -> None:
        host = self.ctx.host
        host.set_stream_handler(TProtocol(TRANSFER_PROTOCOL), self._handle_transfer)
        host.set_stream_handler(TProtocol(FASTPATH_INFO_PROTOCOL), self._handle_fastpath_info)
        host.set_stream_handler(TProtocol(REQUEST_PROTOCOL), self._handle_request)

    def peer_gone(self, peer: str) -> None:
        """The last connection to ``peer`` closed: its fast-path info may be stale."""
        self._fastpath_cache.pop(peer, None)

    async def _handle_transfer(self, stream: INetStream) -> None:
        """Provider side of /fednode/transfer/1.0.0: one request per stream."""
        io = self.ctx.config.io_timeout_s
        answer = None
        try:
            reader = FrameReader(stream, io)
            frame = await reader.read_frame(MAX_HEADER_FRAME)
            requester = stream.muxed_conn.peer_id.to_base58()
            answer = answer_request(self.store, frame, self.ctx.config.fetch_chunk_size,
                                    admits(self.serve_admission, requester))
            await write_frame(stream, answer.response.SerializeToString(), io)
            if answer.data is None:
                self.ctx.stats.refuse(status_name(answer.response.status))
                return
            view = answer.data
            chunk = self.ctx.config.fetch_chunk_size
            for start in range(0, len(view), chunk):
                piece = view[start : start + chunk]
                await write_frame(stream, piece, io, prefix=chunk_prefix(len(piece)))
                self.ctx.stats.add("blob_bytes_sent", len(piece))
            self.ctx.stats.add("uploads_served")
        except Exception as exc:
            log.debug("transfer stream dropped: %s", exc)
            with contextlib.suppress(Exception):
                await stream.reset()
        finally:
            if answer is not None and answer.upload_slot:
                self.store.end_upload()
            await close_stream(stream)

    async def _handle_request(self, stream: INetStream) -> None:
        """Responder side of /fednode/request/1.0.0: frame 1 = kind, frame 2 = request; the
        answer is one frame: status byte (0 = ok, 1 = error) then the response or the error text.
        The handler runs on the asyncio side; a worker thread waits for it so trio stays free."""
        io = self.ctx.config.io_timeout_s
        peer = str(stream.muxed_conn.peer_id)
        try:
            reader = FrameReader(stream, io)
            kind = (await reader.read_frame(64)).decode("utf-8", "replace")
            data = await reader.read_frame(MAX_REQUEST_FRAME)
            handler = self.request_handler
            if handler is None:
                answer = b"\x01no request handler on this node"
            else:
                try:
                    # trio-typing's stubs (a libp2p dependency) shadow trio's own types and predate abandon_on_cancel
                    result = await trio.to_thread.run_sync(  # type: ignore[call-arg]
                        handler, kind, data, peer, abandon_on_cancel=True)
                    answer = b"\x00" + result
                except Exception as exc:
                    answer = b"\x01" + str(exc)[:500].encode()
            await write_frame(stream, answer, io)
        except Exception as exc:
            log.debug("request stream from %s dropped: %s", peer, exc)
            with contextlib.suppress(Exception):
                await stream.reset()
        finally:
            await close_stream(stream)

    async def _open_stream(self, resolve_peer: Callable[[], Awaitable[ID]], protocol: str, timeout: float,
                           what: str) -> Any:
        """Resolve the peer, connect if needed and open a stream for `protocol`, all within
        `timeout`; failures become DialError (MeshError subclasses pass through)."""
        try:
            with trio.fail_after(timeout):
                peer = await resolve_peer()
                await self.connections.ensure_connected(peer)
                try:
                    return await self.ctx.host.new_stream(peer, [TProtocol(protocol)])
                except (trio.TooSlowError, MeshError):
                    raise
                except Exception as exc:
                    raise StreamOpenError(f"cannot open {what}: {exc}") from exc
        except trio.TooSlowError as exc:
            raise DialError(f"opening {what} timed out") from exc
        except MeshError:
            raise
        except Exception as exc:
            raise DialError(f"cannot open {what}: {exc}") from exc

    async def request(self, target: str, kind: str, data: bytes, max_response: int) -> bytes:
        """Requester side: dial `target` (a full multiaddr or a peer id), send, read the answer."""
        io = self.ctx.config.io_timeout_s

        async def peer_of_target() -> ID:
            if target.startswith("/"):
                return ID.from_base58(await self.connections.connect(target))
            return ID.from_base58(target)

        stream = await self._open_stream(peer_of_target, REQUEST_PROTOCOL, 3 * io, f"a request stream to {target}")
        try:
            await write_frame(stream, kind.encode(), io)
            await write_frame(stream, data, io)
            with trio.fail_after(io), contextlib.suppress(Exception):
                await stream.close_write()
            # The responder may take a while (e.g. an fsync before answering): allow 3 steps.
            answer = await FrameReader(stream, 3 * io).read_frame(max_response + 1)
        except trio.TooSlowError as exc:
            raise TimeoutError(f"no answer from {target} within {3 * io:.0f} s") from exc
        finally:
            await close_stream(stream)
        if not answer:
            raise TransferProtocolError("empty answer")
        if answer[0] != 0:
            raise MeshError(f"{target} refused the request: {answer[1:].decode('utf-8', 'replace')}")
        return answer[1:]

    async def fetch_range(self, peer_key: str, state: FetchState) -> None:
        """Requester side over a libp2p stream: fill ``state`` from ``state.received`` on."""
        io = self.ctx.config.io_timeout_s

        async def peer_of_key() -> ID:
            return ID.from_base58(peer_key)

        stream = await self._open_stream(peer_of_key, TRANSFER_PROTOCOL, io, f"a transfer stream to {peer_key}")
        try:
            await write_frame(stream, build_request(state), io)
            with trio.fail_after(io), contextlib.suppress(Exception):
                await stream.close_write()  # one request per stream: tell the provider so
            reader = FrameReader(stream, io)
            remaining, chunk_size = state.accept_response(await reader.read_frame(MAX_HEADER_FRAME), peer_key)
            while remaining > 0:
                data = parse_chunk(await reader.read_frame(chunk_size + 8))
                if not 0 < len(data) <= min(remaining, chunk_size):
                    raise TransferProtocolError("chunk outside the announced range")
                state.add(data)
                remaining -= len(data)
                self.ctx.stats.add("blob_bytes_received", len(data))
        except trio.TooSlowError as exc:
            raise TimeoutError(f"transfer from {peer_key} stalled for {io} s") from exc
        finally:
            await close_stream(stream)

    async def _handle_fastpath_info(self, stream: INetStream) -> None:
        try:
            await write_frame(stream, self._fastpath_info_for_peers(), self.ctx.config.io_timeout_s)
        except Exception as exc:
            log.debug("fast-path info stream dropped: %s", exc)
        finally:
            await close_stream(stream)

    def _fastpath_info_for_peers(self) -> bytes:
        """Our FastPathInfo; for a wildcard listener, ``hosts`` lists the IPs we advertise.

        A requester dials the fast path only where we say we listen (see fastpath_target), so a
        node behind a NAT (advertising its LAN address) is not dialed at its router's public
        address, where the fast-path port is not forwarded and the SYN would be dropped.
        """
        info = transfer_pb2.FastPathInfo.FromString(self._fast_path_info)
        if info.port and not info.hosts and self.ctx.config.fast_path_announce_port is None:
            for addr in self.ctx.listen_multiaddrs():
                parts = addr.split("/")
                direct = "/p2p-circuit" not in addr and len(parts) > 2 and parts[1] in ("ip4", "ip6")
                if direct and parts[2] not in info.hosts:
                    info.hosts.append(parts[2])
        return info.SerializeToString()

    async def fastpath_target(self, peer_key: str) -> tuple[list[str], int] | None:
        """Where to reach ``peer_key``'s fast path, or None (use the libp2p stream).

        None when the connection is relayed only, the peer has no fast path, a fast-path
        connect to it failed in the last ``_FASTPATH_RETRY_S``, or the address we reach it at
        is not one it listens on: a NATed peer reached through its router's public address
        (hole-punched, or dialing us) has only its libp2p port mapped, never the fast path's.
        """
        io = self.ctx.config.io_timeout_s
        peer = ID.from_base58(peer_key)
        failed = self._fastpath_unreachable.get(peer_key)
        if failed is not None and time.monotonic() - failed < _FASTPATH_RETRY_S:
            return None
        try:
            with trio.fail_after(io):
                await self.connections.ensure_connected(peer)
        except Exception:
            return None
        direct = [c for c in self.connections.live_conns(peer) if not is_relayed(c)]
        if not direct:
            return None
        conn_ips = [ip for ip in (remote_ip(c) for c in direct) if ip]
        cached = self._fastpath_cache.get(peer_key)
        if cached is not None and time.monotonic() - cached[0] < _FASTPATH_INFO_TTL_S:
            info = cached[1]
        else:
            info = transfer_pb2.FastPathInfo()
            stream = None
            fetched_at = time.monotonic()
            try:
                with trio.fail_after(io):
                    stream = await self.ctx.host.new_stream(peer, [TProtocol(FASTPATH_INFO_PROTOCOL)])
                    info = transfer_pb2.FastPathInfo.FromString(
                        await FrameReader(stream, io).read_frame(MAX_HEADER_FRAME)
                    )
            except Exception as exc:  # an older or foreign peer, or a busy one: no fast path for now
                log.debug("no fast-path info from %s: %r", peer_key, exc)
                fetched_at -= _FASTPATH_INFO_TTL_S - _FASTPATH_INFO_RETRY_S  # expires in _FASTPATH_INFO_RETRY_S
            finally:
                if stream is not None:
                    await close_stream(stream)
            self._fastpath_cache[peer_key] = (fetched_at, info)
        if not info.port or info.version != CHANNEL_VERSION:
            return None
        listed = [h for h in info.hosts if h not in WILDCARDS]
        # No hosts listed: "use the connection's address" (e.g. a forwarded fast-path port).
        hosts = [ip for ip in dict.fromkeys(conn_ips) if ip in listed] if listed else conn_ips[:1]
        return (hosts, info.port) if hosts else None

    async def forget_fastpath(self, peer_key: str, unreachable: bool = False) -> None:
        """Drop the cached fast-path info; ``unreachable``: also skip the fast path for a while."""
        self._fastpath_cache.pop(peer_key, None)
        if unreachable:
            self._fastpath_unreachable[peer_key] = time.monotonic()

