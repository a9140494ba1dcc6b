"""`MeshPort`: what federation code may use of a mesh, as a typed structural interface.

The federation runners (`fednode.node.federation.runner`, `.compass`, `.revocation_record`) are
written against this port and nothing else. Three implementations satisfy it, checked by a type
checker in the test suite (tests/mesh/test_port_types.py):

* `fednode.node.mesh.Mesh`: the daemon's libp2p mesh;
* `fednode.node.worker.remote_mesh.RemoteMesh`: the daemon's mesh as the training worker sees it,
  each call a request over the daemon/worker link;
* `fednode.node.mesh.memory.InMemoryMesh`: many members in one process, with simulated latency,
  bandwidth, loss and partitions (docs/simulation.md).

Semantics every implementation keeps (the runners depend on them):

* ``subscribe(topic, validator)``: the validator sees every message of the topic before it is
  delivered to ``events`` (or forwarded); a refusal is counted by its reason and never delivered.
  (RemoteMesh validates in the daemon, with the daemon's own validator.)
* ``publish`` is best-effort gossip to every member subscribed to the topic; ``push`` hands the
  message to the named peers it can reach directly and returns those; both raise
  ``MessageTooLargeError`` above ``max_gossip_bytes``. Neither delivers to the sender itself.
* ``serve_blob(sha256(data), data)`` makes a blob fetchable by others until ``unserve_blob``;
  ``fetch_blob`` tries ``providers`` in order, returns bytes whose sha256 is the content id, and
  raises ``BlobNotFoundError`` (no provider has it), ``BlobTooLargeError`` (above ``max_size``)
  or ``FetchError``.
* ``provide``/``find_providers`` is the federation's rendezvous; ``put_record``/``get_records``
  store and read validated DHT records (every distinct valid value is returned).
* ``events`` carries `GossipMessage`, `PeerConnected`, `PeerDisconnected` and
  `ReachabilityChanged` (fednode.node.mesh.types).

Lifecycle (start/stop), introspection (peers, stats) and the daemon-only surface (requests,
relay admission, reachability reports) are not part of the port: the runners never call them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from .types import MeshEvent, Validator


class ReachabilityView(Protocol):
    """The part of a reachability verdict federation code reads (announced to other members)."""

    @property
    def status(self) -> str: ...


class MeshPort(Protocol):
    """The mesh as federation code uses it; see the module docstring for the semantics."""

    @property
    def events(self) -> asyncio.Queue[MeshEvent]: ...

    @property
    def max_gossip_bytes(self) -> int: ...

    def listen_multiaddrs(self) -> list[str]: ...

    def reachability(self) -> ReachabilityView: ...

    # gossip and push
    async def subscribe(self, topic: str, validator: Validator) -> None: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def push(self, topic: str, data: bytes, peers: Iterable[str]) -> list[str]: ...

    # blobs
    def serve_blob(self, content_id: bytes, data: bytes | bytearray | memoryview) -> None: ...

    def unserve_blob(self, content_id: bytes) -> bool: ...

    async def fetch_blob(
        self, content_id: bytes, providers: Iterable[str], *, max_size: int | None = None
    ) -> bytes | bytearray: ...

    # discovery and records
    async def provide(self, key: bytes) -> None: ...

    async def find_providers(self, key: bytes, count: int = 20) -> list[str]: ...

    async def connect_peer(self, peer_id: str) -> None: ...

    async def put_record(self, key: str, value: bytes) -> None: ...

    async def get_records(self, key: str) -> list[bytes]: ...
