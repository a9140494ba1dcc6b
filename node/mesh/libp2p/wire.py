"""Wire helpers shared by the protocol modules: varint-framed reads and writes on libp2p
streams (each step bounded by a time-out), closing streams and connections, and what a
connection is (relayed or direct, remote address, local port)."""

from __future__ import annotations

import contextlib
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.network.stream.exceptions import StreamEOF

from ..transfer import TransferProtocolError, encode_varint

_LIBP2P_WRITE = 65507  # one Yamux frame (12-byte header) per Noise message (<= 65519 bytes of plaintext)
_READ_SIZE = 1024 * 1024
WILDCARDS = {"0.0.0.0", "::", ""}


class FrameReader:
    """Reads varint-delimited frames from a libp2p stream, each step bounded by a time-out."""

    def __init__(self, stream: INetStream, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout
        self._buf = bytearray()

    async def _fill(self, want: int) -> None:
        while len(self._buf) < want:
            with trio.fail_after(self._timeout):
                try:
                    data = await self._stream.read(max(want - len(self._buf), _READ_SIZE))
                except StreamEOF:
                    data = b""
            if not data:
                raise TransferProtocolError("stream closed mid-frame")
            self._buf += data

    async def read_frame(self, max_size: int) -> bytes:
        length = 0
        shift = 0
        pos = 0
        while True:
            await self._fill(pos + 1)
            byte = self._buf[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 35:
                raise TransferProtocolError("bad varint")
        if length > max_size:
            raise TransferProtocolError(f"frame of {length} bytes exceeds {max_size}")
        await self._fill(pos + length)
        frame = bytes(memoryview(self._buf)[pos : pos + length])
        del self._buf[: pos + length]
        return frame


async def write_frame(stream: INetStream, payload: bytes | memoryview, timeout: float, prefix: bytes = b"") -> None:
    """Write ``varint(len(prefix + payload)) || prefix || payload`` in Noise-sized pieces."""
    head = encode_varint(len(prefix) + len(payload)) + prefix
    view = memoryview(payload)
    first = _LIBP2P_WRITE - len(head)
    with trio.fail_after(timeout):
        await stream.write(head + bytes(view[:first]))
    for start in range(first, len(view), _LIBP2P_WRITE):
        with trio.fail_after(timeout):
            await stream.write(bytes(view[start : start + _LIBP2P_WRITE]))


async def close_stream(stream: INetStream) -> None:
    """Half-close then close: the dialer side otherwise stays in SwarmConn.streams forever."""
    with trio.CancelScope(shield=True), trio.move_on_after(2.0):
        with contextlib.suppress(Exception):
            await stream.close_write()
        with contextlib.suppress(Exception):
            await stream.close()


async def close_conn(conn: INetConn) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2.0), contextlib.suppress(Exception):
        await conn.close()


def is_relayed(conn: INetConn) -> bool:
    muxed = getattr(conn, "muxed_conn", None)
    with contextlib.suppress(Exception):
        if muxed is not None and muxed.get_connection_type() == ConnectionType.RELAYED:
            return True
    with contextlib.suppress(Exception):
        if conn.get_connection_type() == ConnectionType.RELAYED:
            return True
    with contextlib.suppress(Exception):
        if muxed is not None:
            return any("/p2p-circuit" in str(a) for a in muxed.get_transport_addresses())
    return False


def remote_addr(conn: INetConn) -> str:
    muxed = getattr(conn, "muxed_conn", None)
    if is_relayed(conn):
        with contextlib.suppress(Exception):
            addrs = muxed.get_transport_addresses()  # type: ignore[union-attr]
            if addrs:
                return str(addrs[0])
        return "/p2p-circuit"
    with contextlib.suppress(Exception):
        ip, port = muxed.get_remote_address()  # type: ignore[union-attr]
        family = "ip6" if ":" in ip else "ip4"
        return f"/{family}/{ip}/tcp/{port}"
    return ""


def thin_waist(addr: multiaddr.Multiaddr) -> str:
    """``/ip4/<ip>/tcp/<port>`` of an address, without any /p2p/ part (for comparisons)."""
    text = str(addr)
    parts = text.split("/")
    return "/".join(parts[:5]) if len(parts) >= 5 and parts[3] == "tcp" else text


_SOCKET_PATH = ("muxed_conn", "secured_conn", "conn", "read_writer", "read_write_closer", "stream", "stream")


def local_port(conn: INetConn) -> int | None:
    """The local TCP port of a direct connection (walks the library's wrapper chain), or None."""
    obj: Any = conn
    for name in _SOCKET_PATH:
        sock = getattr(obj, "socket", None)
        if sock is not None and hasattr(sock, "getsockname"):
            break
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    with contextlib.suppress(Exception):
        return int(obj.socket.getsockname()[1])
    return None


def remote_ip(conn: INetConn) -> str | None:
    with contextlib.suppress(Exception):
        return str(conn.muxed_conn.get_remote_address()[0])  # type: ignore[attr-defined]
    return None

