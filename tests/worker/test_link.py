"""The daemon <-> worker link (node/worker/link.py) over a real socketpair."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from fednode.node.mesh.errors import DialError
from fednode.node.worker.link import MAX_FRAME_BYTES, Link, LinkClosed, RemoteError, reply_body
from fednode.proto.v1 import worker_pb2

pytestmark = pytest.mark.timeout(60)


async def _pair(left_handler, right_handler) -> tuple[Link, Link, list[asyncio.Task[None]]]:
    a, b = socket.socketpair()
    left = await Link.over_socket(a, left_handler, "left")
    right = await Link.over_socket(b, right_handler, "right")
    return left, right, [asyncio.ensure_future(left.run()), asyncio.ensure_future(right.run())]


def _ignore(frame: worker_pb2.LinkFrame) -> None:
    return None


def test_requests_replies_errors_and_notification_order() -> None:
    async def scenario() -> None:
        served: list[bytes] = []

        async def daemon_side(frame: worker_pb2.LinkFrame):
            body = frame.WhichOneof("body")
            if body == "serve_blob":  # a notification: handled before the next frame is read
                served.append(bytes(frame.serve_blob.content_id))
                return None
            if body == "fetch_blob":
                if frame.fetch_blob.content_id not in served:
                    raise ValueError("BlobNotFoundError: not served")
                await asyncio.sleep(0.01)
                return "blob", worker_pb2.Blob(content_id=frame.fetch_blob.content_id, data=b"x" * 300_000)
            raise ValueError(f"unexpected {body}")

        worker, _daemon, tasks = await _pair(_ignore, daemon_side)
        worker.notify("serve_blob", worker_pb2.Blob(content_id=b"a" * 32, data=b""))
        reply = await worker.call("fetch_blob", worker_pb2.BlobFetch(content_id=b"a" * 32))
        assert reply_body(reply, "blob").data == b"x" * 300_000
        with pytest.raises(RemoteError, match="BlobNotFoundError"):
            await worker.call("fetch_blob", worker_pb2.BlobFetch(content_id=b"b" * 32))
        with pytest.raises(RemoteError, match="unexpected publish"):
            await worker.call("publish", worker_pb2.GossipOut(topic="t"))
        # Several calls in flight at once get their own replies.
        replies = await asyncio.gather(*(worker.call("fetch_blob", worker_pb2.BlobFetch(content_id=b"a" * 32))
                                         for _ in range(5)))
        assert {len(reply_body(r, "blob").data) for r in replies} == {300_000}
        with pytest.raises(ValueError, match="expected a peer_list reply"):
            reply_body(replies[0], "peer_list")
        worker.close()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_the_other_side_going_away_fails_pending_calls() -> None:
    async def scenario() -> None:
        never = asyncio.Event()

        async def stuck(frame: worker_pb2.LinkFrame):
            await never.wait()

        caller, callee, tasks = await _pair(_ignore, stuck)
        pending = asyncio.ensure_future(caller.call("publish", worker_pb2.GossipOut(topic="t")))
        await asyncio.sleep(0.05)
        callee.close()  # the process on the other end died
        with pytest.raises(LinkClosed):
            await pending
        await asyncio.gather(*tasks)
        assert caller.closed
        with pytest.raises(LinkClosed):
            caller.notify("serve_blob", worker_pb2.Blob())

    asyncio.run(scenario())


@pytest.mark.parametrize("garbage", [
    struct.pack(">I", MAX_FRAME_BYTES + 1),  # an absurd length prefix: never allocated
    struct.pack(">I", 3) + b"\xff\xff\xff",  # not a LinkFrame
])
def test_a_broken_frame_closes_the_link_without_crashing(garbage: bytes) -> None:
    async def scenario() -> None:
        a, b = socket.socketpair()
        link = await Link.over_socket(a, _ignore, "reader")
        reading = asyncio.ensure_future(link.run())
        b.sendall(garbage)
        await asyncio.wait_for(reading, 10)  # returns, does not raise
        assert link.closed
        b.close()

    asyncio.run(scenario())


def test_unread_bytes_are_visible_so_the_sender_can_stop_buffering() -> None:
    """The daemon drops mesh events for a worker that does not read (supervisor.py); it sees
    that through `buffered_bytes`."""
    async def scenario() -> None:
        a, b = socket.socketpair()
        sender = await Link.over_socket(a, _ignore, "sender")
        for _ in range(32):  # 32 MB: far more than the kernel's socket buffers hold
            sender.notify("serve_blob", worker_pb2.Blob(data=b"\0" * (1 << 20)))
        assert sender.buffered_bytes > 16 << 20
        reader = await Link.over_socket(b, _ignore, "reader")  # the other side starts reading
        reading = asyncio.ensure_future(reader.run())
        await asyncio.wait_for(sender.wait_drained(), 30)
        assert sender.buffered_bytes == 0
        sender.close()
        await asyncio.wait_for(reading, 10)

    asyncio.run(scenario())


def test_expected_failures_reach_the_caller_and_only_bugs_are_logged_with_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async def daemon_side(frame: worker_pb2.LinkFrame):
            if frame.WhichOneof("body") == "connect_peer":  # a member that left: out of reach
                raise DialError("cannot reach 12D3KooWgone: recently failed all addresses")
            raise AttributeError("a bug in the handler")

        worker, _daemon, tasks = await _pair(_ignore, daemon_side)
        with pytest.raises(RemoteError, match="cannot reach 12D3KooWgone"):
            await worker.call("connect_peer", worker_pb2.PeerList(peers=["12D3KooWgone"]))
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        with pytest.raises(RemoteError, match="a bug in the handler"):
            await worker.call("publish", worker_pb2.GossipOut(topic="t"))
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None and "publish" in errors[0].getMessage()
        worker.close()
        await asyncio.gather(*tasks)

    with caplog.at_level(logging.DEBUG, logger="fednode"):
        asyncio.run(scenario())
