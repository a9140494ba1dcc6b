"""The link's RPC is declared (node/worker/link.py) and checked against proto/v1/worker.proto: every
LinkFrame body has exactly one role (handled by the daemon, by the worker, or a reply), every
handled body has a handler on its side and no handler lacks a body; failures cross with a typed
kind, so the caller raises the mesh's own exception type without reading the message."""

from __future__ import annotations

import asyncio
import socket
import types

import pytest

from fednode.node.mesh.errors import BlobNotFoundError, BlobTooLargeError, FetchError, MeshError
from fednode.node.worker.link import DAEMON_HANDLES, REPLIES, WORKER_HANDLES, Link, RemoteError, error_kind
from fednode.node.worker.process import TrainingWorker
from fednode.node.worker.remote_mesh import RemoteMesh
from fednode.node.worker.supervisor import WorkerProcess
from fednode.proto.v1 import worker_pb2

pytestmark = pytest.mark.timeout(60)

BODIES = {field.name for field in worker_pb2.LinkFrame.DESCRIPTOR.oneofs_by_name["body"].fields}


def test_every_body_has_exactly_one_role() -> None:
    roles = [DAEMON_HANDLES, WORKER_HANDLES, REPLIES]
    assert set().union(*roles) == BODIES, "a LinkFrame body without a role, or a role without a body"
    assert sum(len(r) for r in roles) == len(BODIES), "a body declared in two roles"


def test_the_daemon_handles_exactly_its_bodies() -> None:
    async def table() -> set[str]:
        supervisor = WorkerProcess("{}", on_round=None, on_event=lambda event: None)  # type: ignore[arg-type]
        return set(supervisor.handlers())

    assert asyncio.run(table()) == DAEMON_HANDLES


def test_the_worker_handles_exactly_its_bodies() -> None:
    # handlers() only builds closures: nothing of the worker is touched until a frame arrives.
    handled = set(TrainingWorker.handlers(types.SimpleNamespace()))  # type: ignore[arg-type]
    assert handled | {"configure"} == WORKER_HANDLES  # "configure" is taken before the worker exists


@pytest.mark.parametrize(("raised", "kind"), [
    (BlobNotFoundError("gone"), worker_pb2.LINK_ERROR_BLOB_NOT_FOUND),
    (BlobTooLargeError("big"), worker_pb2.LINK_ERROR_BLOB_TOO_LARGE),
    (FetchError("nobody"), worker_pb2.LINK_ERROR_FETCH),
    (MeshError("down"), worker_pb2.LINK_ERROR_MESH),
    (ValueError("bad"), worker_pb2.LINK_ERROR_UNSPECIFIED),
])
def test_error_kinds_follow_the_exception_type(raised: Exception, kind: int) -> None:
    assert error_kind(raised) == kind


@pytest.mark.parametrize("raised", [BlobNotFoundError("not here"), BlobTooLargeError("too big"), FetchError("nobody")])
def test_a_fetch_failure_in_the_daemon_is_raised_with_its_type_in_the_worker(raised: FetchError) -> None:
    async def scenario() -> None:
        mesh = types.SimpleNamespace()

        async def fetch_blob(content_id: bytes, candidates: list[str], max_size: int | None = None) -> bytes:
            raise raised

        mesh.fetch_blob = fetch_blob
        a, b = socket.socketpair()
        supervisor = WorkerProcess("{}", on_round=None, on_event=lambda event: None)  # type: ignore[arg-type]
        supervisor.mesh = mesh
        daemon = await Link.over_socket(a, supervisor._handle, "daemon")
        worker = await Link.over_socket(b, lambda frame: None, "worker")
        tasks = [asyncio.ensure_future(daemon.run()), asyncio.ensure_future(worker.run())]
        with pytest.raises(RemoteError) as failed:
            await worker.call("fetch_blob", worker_pb2.BlobFetch(content_id=b"c" * 32))
        assert failed.value.kind == error_kind(raised)
        with pytest.raises(FetchError) as fetched:
            await RemoteMesh(worker).fetch_blob(b"c" * 32, ["peer"])
        assert type(fetched.value) is type(raised)
        assert str(fetched.value) == f"{type(raised).__name__}: {raised}"  # the message is unchanged
        worker.close()
        daemon.close()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
