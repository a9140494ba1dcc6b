"""Verify each pubsub sender's signed peer record once, not on every message.

py-libp2p 0.8.1 attaches the sender's signed peer record to every pubsub RPC (messages, IHAVE,
IDONTWANT, ...) and checks it on every receipt, some RPCs twice (Pubsub and GossipSub each call
`maybe_consume_signed_record`): parse the envelope, verify its Ed25519 signature, update the
peerstore. In a 4-daemon federation on 2 cores that was 15 % of the networking thread's CPU
(py-spy), for a record that only changes when the sender's addresses do.

`install()` wraps the library's check, for the two pubsub modules that call it, with
`VerifiedRecordCache`: a record byte-identical to one that passed the full check for the same
host and sender within `refresh_s` is accepted without checking again. Anything else (a new
record, another sender, a failed check) takes the library's full path; failures are never
cached. Written here because the library has no switch for it; the wrapped function is the
library's own, so its rules (signature, peer id match, peerstore update) are unchanged.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
from libp2p.pubsub.utils import maybe_consume_signed_record

CheckRecord = Callable[[Any, Any, Any], bool]


class VerifiedRecordCache:
    """`(rpc, host, peer_id) -> bool` like the library's check, remembering recent successes."""

    def __init__(self, check: CheckRecord, refresh_s: float = 60.0, per_host: int = 1024) -> None:
        self.check = check
        self.refresh_s = refresh_s  # re-check this often anyway (refreshes the peerstore's TTL)
        self.per_host = per_host
        self.full_checks = 0
        self._lock = threading.Lock()  # hosts may live in different threads (tests run several)
        self._accepted: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[bytes, bytes], float]] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self, rpc: Any, host: Any, peer_id: Any) -> bool:
        if not rpc.HasField("senderRecord"):
            return True
        key = (peer_id.to_bytes(), bytes(rpc.senderRecord))
        now = time.monotonic()
        with self._lock:
            accepted = self._accepted.setdefault(host, OrderedDict())
            when = accepted.get(key)
            if when is not None and now - when < self.refresh_s:
                return True
            self.full_checks += 1
        if not self.check(rpc, host, peer_id):
            return False
        with self._lock:
            accepted[key] = now
            accepted.move_to_end(key)
            while len(accepted) > self.per_host:
                accepted.popitem(last=False)
        return True


_installed: VerifiedRecordCache | None = None


def install() -> VerifiedRecordCache:
    """Route the pubsub modules' peer-record checks through one cache (idempotent)."""
    global _installed
    if _installed is None:
        _installed = VerifiedRecordCache(maybe_consume_signed_record)
        _pubsub_module.maybe_consume_signed_record = _installed  # type: ignore[attr-defined]
        _gossipsub_module.maybe_consume_signed_record = _installed  # type: ignore[attr-defined]
    return _installed
