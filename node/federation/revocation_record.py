"""A federation's revocation list as a DHT record: the path for peers that missed the gossip.

Gossip reaches the members online when a revocation is issued (and anti-entropy repeats it); a
member that was offline, or a daemon restarted from its state dir, reads the record instead, and
does so before it subscribes to the federation topic, so it never accepts a message from a member
revoked while it was away. Every member that knows revocations merges the record with what it
knows (revocations only accumulate) and stores the union, after issuing or learning one and every
``REPUBLISH_INTERVAL_S`` (DHT holders drop records after 24 h and come and go).

Record format, validation and selection: fednode.node.membership.revocations (pure code, also
registered as the DHT validator of the namespace, so holders refuse forged or shorter lists).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fednode.node.envelope import Rejected
from fednode.node.membership import (
    decode_revocation_list,
    encode_revocation_list,
    revocation_record_key,
)
from fednode.node.membership.revocations import revocation_digest
from fednode.node.mesh.port import MeshPort
from fednode.proto.v1 import membership_pb2

log = logging.getLogger(__name__)

#: How often a member re-reads, merges and re-stores the record (well inside the 24 h record TTL).
REPUBLISH_INTERVAL_S = 600.0


@dataclass(frozen=True)
class RecordSync:
    """What one synchronisation did."""

    records: int  # distinct valid records found (here and at the closest peers)
    learned: int  # revocations this node did not know
    stored: bool  # whether this node stored the merged list


class RevocationRecord:
    """Keeps the DHT record of one federation in step with the revocations this node knows.

    ``known()`` returns the revocations this node holds; ``learn(revocation)`` hands over one it
    did not know (the node verifies and records it, exactly as one received by gossip).
    """

    def __init__(
        self,
        mesh: MeshPort,
        federation_id: str,
        *,
        known: Callable[[], Sequence[membership_pb2.Revocation]],
        learn: Callable[[membership_pb2.Revocation], None],
    ) -> None:
        self.mesh = mesh
        self.federation_id = federation_id
        self.key = revocation_record_key(federation_id)
        self.known = known
        self.learn = learn

    async def sync(self, *, store: bool = True, republish: bool = False) -> RecordSync:
        """Read every copy of the record, learn what is new, and (``store``) store the union when
        the record lacks something we know, or always with ``republish``. Network errors
        propagate (callers retry)."""
        values = await self.mesh.get_records(self.key)
        known_digests = {revocation_digest(r) for r in self.known()}
        learned = 0
        for value in values:
            try:
                # The mesh validated it already; decoding again keeps this module self-contained
                # and costs one signature check per entry (a few hundred at most).
                revocations = decode_revocation_list(value, self.federation_id)
            except Rejected:
                continue
            for revocation in revocations:
                digest = revocation_digest(revocation)
                if digest not in known_digests:
                    known_digests.add(digest)
                    self.learn(revocation)
                    learned += 1
        known_now = list(self.known())
        stored = False
        if store and known_now:
            merged = encode_revocation_list(self.federation_id, known_now)
            if republish or merged not in values:
                await self.mesh.put_record(self.key, merged)
                stored = True
        outcome = RecordSync(records=len(values), learned=learned, stored=stored)
        if learned or stored:
            log.info(
                "revocation record: %d learned, %s (%d revocations known)",
                learned, "stored the merged list" if stored else "nothing to store", len(known_now),
                extra={"event": "revocation_record", "learned": learned, "stored": stored,
                       "records": len(values), "known": len(known_now)},
            )
        return outcome
