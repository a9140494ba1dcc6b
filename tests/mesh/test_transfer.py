"""Transfer framing and provider decisions, independent of any transport."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.node.mesh import MessageTooLargeError
from fednode.node.mesh.transfer import (
    BlobStore,
    FetchState,
    ProviderRefused,
    TransferProtocolError,
    answer_request,
    build_request,
    chunk_prefix,
    parse_chunk,
)
from fednode.proto.v1 import transfer_pb2

DATA = bytes(range(256)) * 40
CID = hashlib.sha256(DATA).digest()


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=70_000))
def test_hand_written_chunk_encoding_is_the_protobuf_encoding(data: bytes) -> None:
    wire = chunk_prefix(len(data)) + data
    assert wire == transfer_pb2.TransferChunk(data=data).SerializeToString()
    assert bytes(parse_chunk(wire)) == data


@pytest.mark.parametrize("frame", [b"", b"\x0a", b"\x12\x01x", b"\x0a\x05abc", b"\x0a\x01ab", b"\x0a" + b"\xff" * 7])
def test_malformed_chunk_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(TransferProtocolError):
        parse_chunk(frame)


def request(**fields: object) -> bytes:
    return transfer_pb2.TransferRequest(**fields).SerializeToString()  # type: ignore[arg-type]


def test_provider_answers() -> None:
    store = BlobStore(max_blob_size=1 << 20, max_concurrent_uploads=1)
    store.serve(CID, DATA)
    ok = answer_request(store, request(content_id=CID, offset=100, max_length=1000), 4096)
    assert ok.response.status == transfer_pb2.TRANSFER_OK and ok.upload_slot
    assert (ok.response.total_size, ok.response.offset, ok.response.length) == (len(DATA), 100, 1000)
    assert bytes(ok.data) == DATA[100:1100]  # type: ignore[arg-type]
    # The single upload slot is taken: the next request is told to come back later.
    assert answer_request(store, request(content_id=CID), 4096).response.status == transfer_pb2.TRANSFER_BUSY
    store.end_upload()
    statuses = {
        "not_found": request(content_id=hashlib.sha256(b"x").digest()),
        "too_large": request(content_id=CID, max_total_size=len(DATA) - 1),
        "bad_request": request(content_id=CID[:31]),
    }
    for name, frame in statuses.items():
        answer = answer_request(store, frame, 4096)
        assert answer.data is None and not answer.upload_slot, name
    assert answer_request(store, request(content_id=CID, offset=len(DATA) + 1), 4096).response.status == (
        transfer_pb2.TRANSFER_BAD_REQUEST
    )
    assert answer_request(store, b"\xff\xff\xff", 4096).response.status == transfer_pb2.TRANSFER_BAD_REQUEST
    tail = answer_request(store, request(content_id=CID, offset=len(DATA)), 4096)
    assert tail.response.status == transfer_pb2.TRANSFER_OK and tail.response.length == 0


def test_store_checks_hash_and_size() -> None:
    store = BlobStore(max_blob_size=len(DATA) - 1, max_concurrent_uploads=4)
    with pytest.raises(MessageTooLargeError):
        store.serve(CID, DATA)
    small = DATA[:100]
    with pytest.raises(ValueError):
        store.serve(CID, small)
    store.serve(hashlib.sha256(small).digest(), small)
    assert store.unserve(hashlib.sha256(small).digest()) and not store.unserve(CID)


def response(**fields: object) -> bytes:
    return transfer_pb2.TransferResponse(**fields).SerializeToString()  # type: ignore[arg-type]


def test_fetch_state_resumes_and_verifies() -> None:
    state = FetchState(CID, max_size=1 << 20)
    assert transfer_pb2.TransferRequest.FromString(build_request(state)).offset == 0
    length, _ = state.accept_response(
        response(status=transfer_pb2.TRANSFER_OK, total_size=len(DATA), offset=0, length=4000, chunk_size=1000),
        "p1",
    )
    for start in range(0, length, 1000):
        state.add(DATA[start : start + 1000])
    # p1 died after 4000 bytes: the next request asks for the rest only.
    assert transfer_pb2.TransferRequest.FromString(build_request(state)).offset == 4000
    with pytest.raises(TransferProtocolError):  # a provider that answers another range
        state.accept_response(response(status=1, total_size=len(DATA), offset=0, length=10, chunk_size=10), "p2")
    with pytest.raises(TransferProtocolError):  # or claims another size for the same content
        state.accept_response(response(status=1, total_size=len(DATA) + 1, offset=4000, length=10, chunk_size=10),
                              "p2")
    state.accept_response(
        response(status=1, total_size=len(DATA), offset=4000, length=len(DATA) - 4000, chunk_size=1 << 20), "p2"
    )
    state.add(DATA[4000:])
    assert state.verified() and state.contributors == {"p1", "p2"} and bytes(state.buffer) == DATA
    with pytest.raises(TransferProtocolError):
        state.add(b"x")


def test_fetch_state_refusals_and_mismatch() -> None:
    state = FetchState(CID, max_size=100)
    with pytest.raises(ProviderRefused) as refused:
        state.accept_response(response(status=transfer_pb2.TRANSFER_OK, total_size=len(DATA), length=len(DATA),
                                       chunk_size=10), "p")
    assert refused.value.status == "too_large"
    with pytest.raises(ProviderRefused) as refused:
        state.accept_response(response(status=transfer_pb2.TRANSFER_BUSY), "p")
    assert refused.value.status == "busy"
    wrong = FetchState(hashlib.sha256(b"other").digest(), max_size=1 << 20)
    wrong.accept_response(response(status=1, total_size=3, length=3, chunk_size=3), "liar")
    wrong.add(b"abc")
    assert wrong.complete and not wrong.verified()
    wrong.reset()
    assert wrong.received == 0 and wrong.total is None and not wrong.contributors
