"""Fixtures for mesh tests: real meshes on 127.0.0.1 (port 0), always stopped, even on failure.

No pytest-asyncio here: a module-scoped fixture owns an event loop and runs coroutines on it, so
a few meshes can be shared by several tests (starting one costs ~0.5-1 s on a loaded machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from fednode.node.mesh import Mesh, MeshConfig

T = TypeVar("T")
LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


def config(**overrides: Any) -> MeshConfig:
    """A loopback MeshConfig with a fresh identity and test-friendly time-outs."""
    values: dict[str, Any] = {
        "identity_key": os.urandom(32),
        "listen_multiaddrs": LOOPBACK,
        "io_timeout_s": 5.0,
        "stop_timeout_s": 10.0,
        "autonat_interval_s": 5.0,
    }
    values.update(overrides)
    return MeshConfig(**values)


@contextlib.asynccontextmanager
async def started(*configs: MeshConfig) -> AsyncIterator[list[Mesh]]:
    """Start meshes in order (later ones may bootstrap from earlier ones); stop all on exit."""
    meshes: list[Mesh] = []
    try:
        for cfg in configs:
            mesh = Mesh(cfg)
            meshes.append(mesh)
            await mesh.start()
        yield meshes
    finally:
        await asyncio.gather(*(m.stop() for m in reversed(meshes)), return_exceptions=True)


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def drain(mesh: Mesh) -> list[Any]:
    events = []
    while not mesh.events.empty():
        events.append(mesh.events.get_nowait())
    return events


def mesh_threads() -> list[str]:
    """Threads a mesh may start (networking, hashing, test dialers, libp2p's cache sweepers)."""
    return [
        t.name for t in threading.enumerate()
        if t.name.startswith("fednode-mesh") or "_background_cleanup" in t.name or t.name.startswith("Trio")
    ]


class LoopRunner:
    """Runs coroutines on one long-lived event loop (for module-scoped meshes)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[T], timeout: float = 120.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopRunner]:
    loop_runner = LoopRunner()
    try:
        yield loop_runner
    finally:
        loop_runner.close()
