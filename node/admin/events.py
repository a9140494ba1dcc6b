"""Fan-out of daemon events to `WatchEvents` subscribers.

Publishing never blocks the daemon: each subscriber has a bounded queue, and a subscriber that
falls behind loses its oldest events (counted in `dropped`), not the daemon's time. The last
RECENT_EVENTS events are kept, so a new subscriber (`fednode logs`) can start with what just
happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from fednode.proto.v1 import admin_pb2

QUEUE_SIZE = 1000
RECENT_EVENTS = 1000


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[admin_pb2.Event | None]] = set()
        self._recent: deque[admin_pb2.Event] = deque(maxlen=RECENT_EVENTS)
        self.dropped = 0
        self.closed = False

    def publish(self, kind: str, **fields: object) -> admin_pb2.Event:
        event = admin_pb2.Event(unix_ms=int(time.time() * 1000), kind=kind, **fields)  # type: ignore[arg-type]
        self._recent.append(event)
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)
        return event

    def recent(self, count: int, kinds: set[str] | None = None) -> list[admin_pb2.Event]:
        """Up to `count` of the latest events (of `kinds`, if given), oldest first."""
        if count <= 0:
            return []
        matching = [e for e in self._recent if not kinds or e.kind in kinds]
        return matching[-count:]

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
