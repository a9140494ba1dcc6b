"""GossipSub topics: subscribe with a validator that runs here, in the mesh thread, before a
message is delivered or forwarded; publish; deliver received messages to the asyncio side."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import trio
from libp2p.peer.id import ID

from ..types import GossipMessage, Validator
from .connections import Connections
from .context import HostContext

log = logging.getLogger(__name__)


class Gossip:
    """Our subscriptions on the context's Pubsub (GossipSub router)."""

    def __init__(self, ctx: HostContext, connections: Connections) -> None:
        self.ctx = ctx
        self.connections = connections
        self._subscriptions: dict[str, Any] = {}

    def _wrap_validator(self, validator: Validator) -> Callable[[ID, Any], bool]:
        max_size = self.ctx.config.gossip.max_message_size
        stats = self.ctx.stats
        self_id = self.ctx.self_id_bytes

        def check(_forwarder: ID, msg: Any) -> bool:
            if msg.from_id == self_id:
                return True  # our own publication; publish() checked the size
            data = msg.data
            if len(data) > max_size:
                stats.reject("oversized")
                return False
            try:
                sender = ID(msg.from_id).to_base58()
            except Exception:
                stats.reject("malformed")
                return False
            try:
                reason = validator(bytes(data), sender)
            except Exception:
                log.exception("gossip validator raised; rejecting the message")
                reason = "validator_error"
            if reason is None:
                return True
            stats.reject(str(reason))
            return False

        return check

    async def subscribe(self, topic: str, validator: Validator) -> None:
        self.ctx.pubsub.set_topic_validator(topic, self._wrap_validator(validator), False)
        if topic in self._subscriptions:
            return
        subscription = await self.ctx.pubsub.subscribe(topic)
        self._subscriptions[topic] = subscription
        assert self.ctx.nursery is not None
        self.ctx.nursery.start_soon(self._pump, topic, subscription)

    async def unsubscribe(self, topic: str) -> None:
        if self._subscriptions.pop(topic, None) is None:
            return
        await self.ctx.pubsub.unsubscribe(topic)
        self.ctx.pubsub.remove_topic_validator(topic)

    async def _pump(self, topic: str, subscription: Any) -> None:
        """Move delivered messages to the asyncio queue at once (the library's channel holds 32)."""
        with contextlib.suppress(trio.EndOfChannel, trio.ClosedResourceError):
            while topic in self._subscriptions:
                msg = await subscription.get()
                if msg.from_id == self.ctx.self_id_bytes:
                    continue
                try:
                    sender = ID(msg.from_id).to_base58()
                except Exception:
                    continue
                data = bytes(msg.data)
                self.ctx.stats.add("gossip_received")
                self.ctx.stats.add("gossip_bytes_received", len(data))
                self.connections.seen(sender)
                self.ctx.emit(GossipMessage(topic, data, sender, time.time()))

    async def publish(self, topic: str, data: bytes) -> None:
        await self.ctx.pubsub.publish(topic, data)
        self.ctx.stats.add("gossip_published")
        self.ctx.stats.add("gossip_bytes_published", len(data))

    async def topic_peers(self, topic: str) -> list[str]:
        return sorted(p.to_base58() for p in self.ctx.pubsub.peer_topics.get(topic, set()))

    # ------------------------------------------------------------------ DHT
