"""Fan-out of daemon events to `WatchEvents` subscribers.

Publishing never blocks the daemon: each subscriber has a bounded queue, and a subscriber that
falls behind loses its oldest events (counted in `dropped`), not the daemon's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from fednode.proto.v1 import admin_pb2

QUEUE_SIZE = 1000


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[admin_pb2.Event | None]] = set()
        self.dropped = 0
        self.closed = False

    def publish(self, kind: str, **fields: object) -> admin_pb2.Event:
        event = admin_pb2.Event(unix_ms=int(time.time() * 1000), kind=kind, **fields)  # type: ignore[arg-type]
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)
        return event

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[admin_pb2.Event | None]]:
        queue: asyncio.Queue[admin_pb2.Event | None] = asyncio.Queue(QUEUE_SIZE)
        if self.closed:
            queue.put_nowait(None)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        """Ends every subscription (a None sentinel), e.g. when the daemon stops."""
        self.closed = True
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(None)
