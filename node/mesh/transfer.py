"""Blob transfer, independent of the transport: the blob store, request handling, fetch state.

Both transports (the libp2p stream and the fast path) speak the messages of
proto/v1/transfer.proto and share everything in this module: the provider answers a
TransferRequest with :func:`answer_request`, then streams chunks; the requester accumulates them
in a :class:`FetchState`, which survives a provider dying mid-transfer so the next attempt resumes
at ``state.received``. Pure Python, no libp2p, safe to use from either thread.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from fednode.proto.v1 import transfer_pb2

from .errors import MessageTooLargeError

TRANSFER_PROTOCOL = "/fednode/transfer/1.0.0"
FASTPATH_INFO_PROTOCOL = "/fednode/fastpath/1.0.0"
MAX_HEADER_FRAME = 4096  # TransferRequest / TransferResponse / FastPathInfo / FastPathHello
CONTENT_ID_LEN = 32

STATUS_NAMES: dict[int, str] = {
    transfer_pb2.TRANSFER_OK: "ok",
    transfer_pb2.TRANSFER_NOT_FOUND: "not_found",
    transfer_pb2.TRANSFER_TOO_LARGE: "too_large",
    transfer_pb2.TRANSFER_BAD_REQUEST: "bad_request",
    transfer_pb2.TRANSFER_BUSY: "busy",
    transfer_pb2.TRANSFER_INTERNAL: "internal",
}


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, "bad_request")


class TransferProtocolError(Exception):
    """The other end broke the transfer protocol (bad frame, wrong size, unexpected message)."""


class ProviderRefused(Exception):
    """The provider answered with a non-OK status; ``status`` is its lower-case name."""

    def __init__(self, status: str, total_size: int = 0, detail: str = "") -> None:
        super().__init__(f"{status}{': ' + detail if detail else ''}")
        self.status = status
        self.total_size = total_size


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def chunk_prefix(length: int) -> bytes:
    """The bytes that precede ``data`` in a serialized TransferChunk (tag 1, wire type 2)."""
    return b"\x0a" + encode_varint(length)


def parse_chunk(frame: bytes | memoryview) -> memoryview:
    """Return the data of a serialized TransferChunk without copying it."""
    view = memoryview(frame)
    if len(view) < 2 or view[0] != 0x0A:
        raise TransferProtocolError("chunk frame is not a TransferChunk")
    length = 0
    shift = 0
    pos = 1
    while True:
        if pos >= len(view) or shift > 35:
            raise TransferProtocolError("bad varint in chunk frame")
        byte = view[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    if pos + length != len(view):
        raise TransferProtocolError("chunk frame length mismatch")
    return view[pos:]


class BlobStore:
    """Blobs this node serves, keyed by content id (sha256), shared by both transports.

    Thread-safe: the libp2p thread and the asyncio side both read it. Blobs are immutable bytes;
    a lookup hands out a reference, so unserve() never disturbs a transfer in progress.
    """

    def __init__(self, max_blob_size: int, max_concurrent_uploads: int) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[bytes, bytes] = {}
        self._max_blob_size = max_blob_size
        self._max_uploads = max_concurrent_uploads
        self._uploads = 0

    def serve(self, content_id: bytes, data: bytes) -> None:
        if len(data) > self._max_blob_size:
            raise MessageTooLargeError(f"blob of {len(data)} bytes exceeds max_blob_size {self._max_blob_size}")
        if len(content_id) != CONTENT_ID_LEN or hashlib.sha256(data).digest() != content_id:
            raise ValueError("content_id must be the sha256 of data")
        blob = bytes(data)
        with self._lock:
            self._blobs[bytes(content_id)] = blob

    def unserve(self, content_id: bytes) -> bool:
        with self._lock:
            return self._blobs.pop(bytes(content_id), None) is not None

    def get(self, content_id: bytes) -> bytes | None:
        with self._lock:
            return self._blobs.get(bytes(content_id))

    def __contains__(self, content_id: object) -> bool:
        with self._lock:
            return content_id in self._blobs

    def content_ids(self) -> list[bytes]:
        with self._lock:
            return list(self._blobs)

    def try_begin_upload(self) -> bool:
        with self._lock:
            if self._uploads >= self._max_uploads:
                return False
            self._uploads += 1
            return True

    def end_upload(self) -> None:
        with self._lock:
            self._uploads -= 1


@dataclass
class Answer:
    """What a provider sends for a request: the response and, when OK, the range to stream."""

    response: transfer_pb2.TransferResponse
    data: memoryview | None = None  # the exact bytes to send as chunks
    upload_slot: bool = False  # an upload slot was taken; release it with store.end_upload()


def admits(admission: Callable[[str], bool] | None, peer: str) -> bool:
    """Ask an admission hook (None admits everyone); a hook that raises refuses."""
    if admission is None:
        return True
    try:
        return bool(admission(peer))
    except Exception:
        return False


def answer_request(store: BlobStore, frame: bytes | transfer_pb2.TransferRequest, chunk_size: int,
                   admitted: bool = True) -> Answer:
    """Decide the provider's answer to one TransferRequest (serialized, or parsed already).
    A requester that is not `admitted` (see Mesh.set_serve_admission) hears NOT_FOUND: whether
    this node holds a blob is not told to strangers."""
    resp = transfer_pb2.TransferResponse()
    if not admitted:
        resp.status = transfer_pb2.TRANSFER_NOT_FOUND
        resp.detail = "this node serves its federation's members only"
        return Answer(resp)
    if isinstance(frame, transfer_pb2.TransferRequest):
        req = frame
    else:
        try:
            req = transfer_pb2.TransferRequest.FromString(frame)
        except Exception:
            resp.status = transfer_pb2.TRANSFER_BAD_REQUEST
            resp.detail = "unparsable request"
            return Answer(resp)
    if len(req.content_id) != CONTENT_ID_LEN:
        resp.status = transfer_pb2.TRANSFER_BAD_REQUEST
        resp.detail = "content_id must be 32 bytes"
        return Answer(resp)
    blob = store.get(req.content_id)
    if blob is None:
        resp.status = transfer_pb2.TRANSFER_NOT_FOUND
        return Answer(resp)
    total = len(blob)
    if req.max_total_size and total > req.max_total_size:
        resp.status = transfer_pb2.TRANSFER_TOO_LARGE
        resp.total_size = total
        return Answer(resp)
    if req.offset > total:
        resp.status = transfer_pb2.TRANSFER_BAD_REQUEST
        resp.detail = "offset beyond the end of the blob"
        return Answer(resp)
    if not store.try_begin_upload():
        resp.status = transfer_pb2.TRANSFER_BUSY
        return Answer(resp)
    length = total - req.offset
    if req.max_length:
        length = min(length, req.max_length)
    resp.status = transfer_pb2.TRANSFER_OK
    resp.total_size = total
    resp.offset = req.offset
    resp.length = length
    resp.chunk_size = chunk_size
    return Answer(resp, memoryview(blob)[req.offset : req.offset + length], upload_slot=True)


def transfer_request(state: FetchState, max_length: int = 0) -> transfer_pb2.TransferRequest:
    """The request for ``state``'s missing tail."""
    return transfer_pb2.TransferRequest(
        content_id=state.content_id,
        offset=state.received,
        max_length=max_length,
        max_total_size=state.max_size,
    )


def build_request(state: FetchState, max_length: int = 0) -> bytes:
    return transfer_request(state, max_length).SerializeToString()


@dataclass
class FetchState:
    """A blob being fetched: bytes received so far (always a prefix) and their running hash.

    Only one attempt touches it at a time (the fetch loop runs attempts one after the other), so
    it needs no lock even though libp2p attempts run in the networking thread. The whole blob is
    received into one buffer allocated when its size is known, so no chunk is copied twice.
    """

    content_id: bytes
    max_size: int
    total: int | None = None
    received: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)  # type: ignore[name-defined]
    contributors: set[str] = field(default_factory=set)

    def accept_response(self, frame: bytes, peer: str) -> tuple[int, int]:
        """Check a TransferResponse frame; return (length, chunk_size) of the range that follows."""
        try:
            resp = transfer_pb2.TransferResponse.FromString(frame)
        except Exception as exc:
            raise TransferProtocolError("unparsable TransferResponse") from exc
        if resp.status != transfer_pb2.TRANSFER_OK:
            raise ProviderRefused(status_name(resp.status), resp.total_size, resp.detail[:200])
        if resp.total_size > self.max_size:
            raise ProviderRefused("too_large", resp.total_size)
        if self.total is None:
            self.total = resp.total_size
            self.buffer = bytearray(resp.total_size)
        elif resp.total_size != self.total:
            raise TransferProtocolError(f"provider reports size {resp.total_size}, expected {self.total}")
        if resp.offset != self.received or resp.offset + resp.length > self.total:
            raise TransferProtocolError("provider answered another range than requested")
        if not 0 < resp.chunk_size <= 16 * 1024 * 1024:
            raise TransferProtocolError("bad chunk_size")
        if resp.length:
            self.contributors.add(peer)
        return resp.length, resp.chunk_size

    def slot(self, n: int) -> memoryview:
        """The buffer region for the next ``n`` bytes: fill it, then :meth:`commit` it."""
        end = self.received + n
        if self.total is None or end > self.total:
            raise TransferProtocolError("more bytes than the blob holds")
        return memoryview(self.buffer)[self.received : end]

    def commit(self, n: int) -> None:
        """The next ``n`` bytes (written into :meth:`slot`) arrived: hash them, move on."""
        self.hasher.update(self.slot(n))
        self.received += n

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Copy the next bytes of the blob in and hash them."""
        self.slot(len(data))[:] = data
        self.commit(len(data))

    @property
    def complete(self) -> bool:
        return self.total is not None and self.received == self.total

    def verified(self) -> bool:
        return self.complete and self.hasher.digest() == self.content_id

    def result(self) -> bytes:
        return bytes(self.buffer)

    def reset(self) -> None:
        """Forget everything received (after a hash mismatch) and start over."""
        self.total = None
        self.received = 0
        self.buffer = bytearray()
        self.hasher = hashlib.sha256()
        self.contributors = set()
