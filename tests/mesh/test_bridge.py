"""The asyncio <-> trio bridge: results, errors and cancellation cross in both directions."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from fednode.node.mesh import MeshClosedError
from fednode.node.mesh.bridge import TrioThread, nothing
from fednode.node.mesh.testing import trio_raise, trio_sleep, trio_thread_name

pytestmark = pytest.mark.timeout(60)


def test_calls_run_in_the_trio_thread_and_errors_come_back() -> None:
    async def scenario() -> None:
        bridge: TrioThread[None] = TrioThread(nothing, name="fednode-mesh-test-bridge")
        await bridge.start(timeout=10)
        try:
            assert await bridge.call(trio_thread_name) == "fednode-mesh-test-bridge"
            with pytest.raises(ValueError, match="boom"):
                await bridge.call(trio_raise, "boom")
            started, cancelled = threading.Event(), threading.Event()
            assert await bridge.call(trio_sleep, 0.01, started, cancelled) == "slept"
        finally:
            assert await bridge.stop(timeout=5)

    asyncio.run(scenario())


def test_cancelling_the_asyncio_caller_cancels_the_trio_task() -> None:
    async def scenario() -> None:
        bridge: TrioThread[None] = TrioThread(nothing, name="fednode-mesh-test-bridge")
        await bridge.start(timeout=10)
        try:
            started, cancelled = threading.Event(), threading.Event()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(bridge.call(trio_sleep, 60, started, cancelled), 0.3)
            assert started.is_set()
            deadline = time.monotonic() + 5
            while not cancelled.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert cancelled.is_set(), "the trio task kept running after the asyncio caller gave up"
        finally:
            assert await bridge.stop(timeout=5)

    asyncio.run(scenario())


def test_stop_cancels_calls_in_flight_and_later_calls_fail_cleanly() -> None:
    async def scenario() -> None:
        bridge: TrioThread[None] = TrioThread(nothing, name="fednode-mesh-test-bridge")
        await bridge.start(timeout=10)
        started, cancelled = threading.Event(), threading.Event()
        pending = asyncio.ensure_future(bridge.call(trio_sleep, 60, started, cancelled))
        while not started.is_set():
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        assert await bridge.stop(timeout=5)
        assert time.monotonic() - t0 < 5
        with pytest.raises(MeshClosedError):
            await pending
        assert cancelled.is_set()
        with pytest.raises(MeshClosedError):
            await bridge.call(trio_thread_name)
        assert not [t for t in threading.enumerate() if t.name == "fednode-mesh-test-bridge"]

    asyncio.run(scenario())
