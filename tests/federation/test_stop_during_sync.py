"""A stop gives up a wait on peers (state sync fetch) instead of riding out its timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from fednode.node.federation.runner import FederationRunner, StoppingError

pytestmark = pytest.mark.timeout(30)


def test_a_stop_gives_up_a_fetch_that_hangs_and_cancels_it() -> None:
    async def scenario() -> None:
        stop = threading.Event()
        cancelled = asyncio.Event()

        async def fetch_from_a_peer_that_left() -> bytes:
            try:
                await asyncio.sleep(30)  # what a stream open to a vanished peer waits
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b"never"

        runner = SimpleNamespace(stop=stop)
        asyncio.get_running_loop().call_later(0.3, stop.set)  # SIGTERM arrives mid-fetch
        started = time.monotonic()
        with pytest.raises(StoppingError):
            await FederationRunner._unless_stopping(runner, fetch_from_a_peer_that_left())  # type: ignore[arg-type]
        assert time.monotonic() - started < 2.0
        await asyncio.wait_for(cancelled.wait(), 1.0)
        # Without a stop the work's own result (or error) comes back unchanged.
        stop.clear()

        async def quick() -> bytes:
            await asyncio.sleep(0.01)
            return b"snapshot"

        assert await FederationRunner._unless_stopping(runner, quick()) == b"snapshot"  # type: ignore[arg-type]

    asyncio.run(scenario())
