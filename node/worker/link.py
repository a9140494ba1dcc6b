"""The daemon <-> training worker link: framed protobuf calls over one socketpair.

Written here rather than taken from gRPC on purpose: the link has exactly two ends, created as a
socketpair by the daemon and inherited by the worker, so there is no address to bind, nobody else
can connect, and either side sees EOF the moment the other dies. gRPC would need a socket path
and an HTTP/2 stack for that, and it costs a few hundred microseconds per call, a dozen times per
round. The protocol (proto/v1/worker.proto) is: uint32 big-endian length || LinkFrame.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import struct
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import DecodeError, Message

from fednode.node.mesh.errors import BlobNotFoundError, BlobTooLargeError, FetchError, MeshError
from fednode.proto.v1 import worker_pb2

log = logging.getLogger("fednode.worker.link")

#: protobuf's own limit on one message; a longer length prefix means a broken peer.
MAX_FRAME_BYTES = (1 << 31) - 1
_HEADER = struct.Struct(">I")

#: handler(frame) for a request returns (body field name, reply message) or raises; for a
#: notification it returns None. Requests may be coroutines (run as tasks, so a slow one does not
#: hold up the frames behind it); notifications run in arrival order before the next frame is read.
Handler = Callable[[worker_pb2.LinkFrame], Any]

# ---------------------------------------------------------------------------------- the RPC
# Every body of LinkFrame (proto/v1/worker.proto) is exactly one of these: handled by the daemon
# (sent by the worker), handled by the worker (sent by the daemon), or a reply.
# tests/worker/test_link_rpc.py checks the three sets against the oneof and against the handler
# tables of node/worker/supervisor.py and node/worker/process.py.

#: Bodies the daemon handles (WorkerSupervisor's table): the mesh on the worker's behalf, training.
DAEMON_HANDLES = frozenset({
    "subscribe", "publish", "push", "fetch_blob", "provide", "find_providers", "connect_peer", "put_record",
    "get_records", "serve_blob", "unserve_blob",
    "ready", "round_done", "runner_event", "session_ended", "failed",
})
#: Bodies the worker handles (TrainingWorker's table, plus "configure" before it exists).
WORKER_HANDLES = frozenset({
    "configure", "start_session", "stop_session", "check_settings", "export_model", "publish_revocation",
    "member_key", "shutdown", "session_state", "mesh_event", "mesh_info", "refused",
})
#: Reply bodies (a frame with reply_to).
REPLIES = frozenset({
    "empty", "peer_list", "blob", "key", "record_values", "round_verdict", "model_bytes", "worker_totals",
    "state",
})


def table_handler(table: Mapping[str, Handler], side: str, ignore_unknown_notifications: bool = False) -> Handler:
    """One Handler dispatching on the frame's body through ``table`` (body name -> handler).

    A body with no entry fails the request ("<side> does not handle ..."); a notification with no
    entry fails the same way (logged by the link) unless ``ignore_unknown_notifications``."""

    def handle(frame: worker_pb2.LinkFrame) -> Any:
        body = frame.WhichOneof("body")
        handler = table.get(body) if body is not None else None
        if handler is None:
            if ignore_unknown_notifications and not frame.call_id:
                return None
            raise ValueError(f"the {side} does not handle {body!r}")
        return handler(frame)

    return handle


# ---------------------------------------------------------------------------------- error kinds
#: Exception types that cross the link as a kind (most specific first), so the caller raises the
#: same type without reading the message.
_KINDS: tuple[tuple[type[BaseException], worker_pb2.LinkErrorKind], ...] = (
    (BlobNotFoundError, worker_pb2.LINK_ERROR_BLOB_NOT_FOUND),
    (BlobTooLargeError, worker_pb2.LINK_ERROR_BLOB_TOO_LARGE),
    (FetchError, worker_pb2.LINK_ERROR_FETCH),
    (MeshError, worker_pb2.LINK_ERROR_MESH),
)


def error_kind(exc: BaseException) -> worker_pb2.LinkErrorKind:
    """The LinkErrorKind of an exception: the one it carries (HandlerError, RemoteError), else by type."""
    if isinstance(exc, (HandlerError, RemoteError)):
        return exc.kind
    for cls, value in _KINDS:
        if isinstance(exc, cls):
            return value
    return worker_pb2.LINK_ERROR_UNSPECIFIED


class HandlerError(ValueError):
    """A handler's failure with an explicit kind (e.g. a mesh error reported as a one-line message)."""

    def __init__(self, message: str, kind: worker_pb2.LinkErrorKind) -> None:
        super().__init__(message)
        self.kind = kind


class LinkClosed(ConnectionError):
    """The other side went away (exited, crashed or closed the link)."""


class RemoteError(RuntimeError):
    """The other side answered a request with an error (its one-line message and its kind)."""

    def __init__(self, message: str, kind: worker_pb2.LinkErrorKind = worker_pb2.LINK_ERROR_UNSPECIFIED
                 ) -> None:
        super().__init__(message)
        self.kind = kind


class Link:
    """One end of the link. `run()` reads until EOF; `call()` and `notify()` send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                 name: str) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[worker_pb2.LinkFrame]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @classmethod
    async def over_socket(cls, sock: Any, handler: Handler, name: str) -> Link:
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer, handler, name)

    # ------------------------------------------------------------------------------ sending
    def _send(self, frame: worker_pb2.LinkFrame) -> None:
        if self.closed:
            raise LinkClosed(f"{self.name}: the link is closed")
        data = frame.SerializeToString()
        self._writer.write(_HEADER.pack(len(data)))
        self._writer.write(data)

    def notify(self, field: str, message: Message) -> None:
        """Send a notification (no reply). Raises LinkClosed when the link is down."""
        frame = worker_pb2.LinkFrame()
        getattr(frame, field).CopyFrom(message)
        self._send(frame)

    async def call(self, field: str, message: Message, timeout: float | None = None) -> worker_pb2.LinkFrame:
        """Send a request and return the reply frame; RemoteError if it failed over there."""
        call_id = next(self._ids)
        frame = worker_pb2.LinkFrame(call_id=call_id)
        getattr(frame, field).CopyFrom(message)
        reply: asyncio.Future[worker_pb2.LinkFrame] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = reply
        try:
            self._send(frame)
            await self._writer.drain()
            answer = await asyncio.wait_for(reply, timeout) if timeout is not None else await reply
        finally:
            self._pending.pop(call_id, None)
        if answer.error:
            raise RemoteError(answer.error, answer.error_kind)
        return answer

    # ------------------------------------------------------------------------------ receiving
    async def run(self) -> None:
        """Read and dispatch frames until the other side closes; then fail pending calls."""
        try:
            while True:
                try:
                    header = await self._reader.readexactly(_HEADER.size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                (length,) = _HEADER.unpack(header)
                if length > MAX_FRAME_BYTES:
                    log.error("%s: frame of %d bytes announced; closing the link", self.name, length)
                    return
                try:
                    data = await self._reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                frame = worker_pb2.LinkFrame()
                try:
                    frame.ParseFromString(data)
                except DecodeError:
                    log.error("%s: undecodable frame; closing the link", self.name)
                    return
                await self._dispatch(frame)
        finally:
            self.close()

    async def _dispatch(self, frame: worker_pb2.LinkFrame) -> None:
        if frame.reply_to:
            waiter = self._pending.get(frame.reply_to)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
            return
        if not frame.call_id:
            try:
                outcome = self._handler(frame)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # a bad notification must not take the link down
                log.exception("%s: notification %s failed", self.name, frame.WhichOneof("body"))
            return
        task = asyncio.ensure_future(self._answer(frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, frame: worker_pb2.LinkFrame) -> None:
        reply = worker_pb2.LinkFrame(reply_to=frame.call_id)
        try:
            outcome = self._handler(frame)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            field, message = outcome if outcome is not None else ("empty", worker_pb2.Empty())
            getattr(reply, field).CopyFrom(message)
        except asyncio.CancelledError:
            reply.error = "cancelled: the link is closing"
        except Exception as exc:  # the caller gets the one-line reason
            # Expected failures (bad input, a peer out of reach) are the caller's to report.
            if not isinstance(exc, (ValueError, LookupError, RemoteError, ConnectionError, TimeoutError, MeshError)):
                log.exception("%s: request %s failed", self.name, frame.WhichOneof("body"))
            reply.error = (str(exc) or type(exc).__name__)[:1000]
            reply.error_kind = error_kind(exc)
        with contextlib.suppress(LinkClosed):
            self._send(reply)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(LinkClosed(f"{self.name}: the other side closed the link"))
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()

    @property
    def buffered_bytes(self) -> int:
        """Bytes written but not yet taken by the other side (its reader is behind)."""
        transport = self._writer.transport
        return 0 if transport.is_closing() else transport.get_write_buffer_size()

    async def wait_drained(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()


def reply_body(frame: worker_pb2.LinkFrame, field: str) -> Any:
    """The reply message of `field`; ValueError when the other side answered something else."""
    if frame.WhichOneof("body") != field:
        raise ValueError(f"expected a {field} reply, got {frame.WhichOneof('body')}")
    return getattr(frame, field)


