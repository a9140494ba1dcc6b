"""`TrustPolicy`: "is this sender a valid, unrevoked member of federation F now?", cheaply.

Built for the gossip validator, which runs in the networking thread for every message:

* a certificate's chain and signatures are verified once, then cached under its exact canonical
  bytes (not just serial + signature: a cache keyed on less than the signed content could be
  fooled by a certificate that copies a genuine serial and signature next to other fields);
* the per-message work is one deterministic serialization, one dict lookup, the time window and
  two frozenset lookups for revocations -- a few microseconds, no signature verification;
* revocation sets are immutable snapshots replaced whole under a lock (readers never lock), and
  the caches are plain dicts mutated under the same lock; reads of a dict are atomic under the
  GIL, so `check` is safe from any thread while others add revocations.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

from fednode.node.envelope import Rejected, RejectReason
from fednode.node.membership.certificates import (
    DEFAULT_CLOCK_SKEW_MS,
    VerifiedCertificate,
    verify_certificate_chain,
)
from fednode.node.membership.revocations import canonical_revocations, revocation_digest, verify_revocation
from fednode.node.membership.signing import FAR_FUTURE_MS, now_ms
from fednode.node.membership.store import MembershipStore
from fednode.proto.v1 import membership_pb2


@dataclass(frozen=True)
class _Revoked:
    serials: frozenset[bytes] = frozenset()
    keys: frozenset[bytes] = frozenset()
    digests: frozenset[bytes] = frozenset()
    entries: tuple[membership_pb2.Revocation, ...] = ()

    def covers(self, certificate: VerifiedCertificate) -> bool:
        return (certificate.serial in self.serials or certificate.member_public_key in self.keys
                or (certificate.delegated and certificate.issuer_public_key in self.keys))


_EMPTY = _Revoked()


class TrustPolicy:
    """Membership decisions for any number of federations, trusting only their ids.

    Nothing needs registering: a certificate is checked against the federation id the caller
    passes (the topic's or the payload's), which is the hash of the key the chain must end at.
    Feed it the revocations this node knows (`add_revocation`, from the store at start and from
    gossip / the DHT afterwards).
    """

    def __init__(
        self,
        *,
        clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
        cache_size: int = 4096,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self.clock_skew_ms = clock_skew_ms
        self._cache_size = cache_size
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: dict[str, _Revoked] = {}
        self._verified: dict[tuple[str, bytes], VerifiedCertificate] = {}
        self._members: dict[tuple[str, bytes], VerifiedCertificate] = {}

    # ---------------------------------------------------------------------------------- checks
    def check(
        self,
        federation_id: str,
        sender_public_key: bytes,
        certificate: membership_pb2.MemberCertificate | None,
        *,
        now_unix_ms: int | None = None,
        roles: Collection[int] | None = None,
    ) -> int | None:
        """None if the sender may act in the federation, else the RejectReason value."""
        try:
            self.verify(federation_id, sender_public_key, certificate, now_unix_ms=now_unix_ms, roles=roles)
        except Rejected as rejected:
            return rejected.reason
        return None

    def verify(
        self,
        federation_id: str,
        sender_public_key: bytes,
        certificate: membership_pb2.MemberCertificate | None,
        *,
        now_unix_ms: int | None = None,
        roles: Collection[int] | None = None,
    ) -> VerifiedCertificate:
        """Like `check` but returns what the certificate proves, or raises Rejected with detail.

        `certificate` None uses the last certificate this key presented in this federation (peers
        may omit it after an announcement). `roles`, when given, are the roles allowed to do what
        the message does (e.g. {CONTRIBUTOR} for updates).
        """
        sender_public_key = bytes(sender_public_key)
        if certificate is None:
            verified = self._members.get((federation_id, sender_public_key))
            if verified is None:
                raise Rejected(RejectReason.REJECT_NOT_MEMBER, "no certificate presented or known for this sender")
        else:
            cache_key = (federation_id, certificate.SerializeToString(deterministic=True))
            verified = self._verified.get(cache_key)
            if verified is None:
                verified = verify_certificate_chain(certificate, federation_id)
                self._insert(self._verified, cache_key, verified)
        if verified.member_public_key != sender_public_key:
            raise Rejected(RejectReason.REJECT_NOT_MEMBER, "the certificate belongs to another key than the sender's")
        now = self._clock() if now_unix_ms is None else now_unix_ms
        if verified.time_reason(now, self.clock_skew_ms) is not None:
            raise Rejected(RejectReason.REJECT_CERT_EXPIRED, "certificate not valid at this time")
        if self._revoked.get(federation_id, _EMPTY).covers(verified):
            raise Rejected(RejectReason.REJECT_REVOKED, "certificate or key revoked")
        if roles is not None and verified.role not in roles:
            raise Rejected(RejectReason.REJECT_NOT_MEMBER, f"a {verified.role_name} may not do this")
        member_key = (federation_id, sender_public_key)
        if certificate is not None and self._members.get(member_key) is not verified:
            self._insert(self._members, member_key, verified)
        return verified

    def _insert(self, table: dict, key: tuple[str, bytes], value: VerifiedCertificate) -> None:
        with self._lock:
            if key not in table and len(table) >= self._cache_size:
                del table[next(iter(table))]  # oldest first: plain FIFO, no per-hit bookkeeping
            table[key] = value

    # ----------------------------------------------------------------------------- revocations
    def add_revocation(
        self, federation_id: str, revocation: membership_pb2.Revocation, *, now_unix_ms: int | None = None
    ) -> bool:
        """Verify and apply a revocation received for `federation_id` (the topic's or the DHT
        key's); True if it is new (spread it further), False if known. Raises Rejected for an
        invalid one, including one of another federation (do not relay it)."""
        now = self._clock() if now_unix_ms is None else now_unix_ms
        verify_revocation(revocation, federation_id, now_unix_ms=now, clock_skew_ms=self.clock_skew_ms)
        digest = revocation_digest(revocation)
        with self._lock:
            current = self._revoked.get(federation_id, _EMPTY)
            if digest in current.digests:
                return False
            copy = membership_pb2.Revocation()
            copy.CopyFrom(revocation)
            serial, key = bytes(copy.serial), bytes(copy.member_public_key)
            self._revoked[federation_id] = _Revoked(
                serials=(current.serials | {serial}) if serial else current.serials,
                keys=(current.keys | {key}) if key else current.keys,
                digests=current.digests | {digest},
                entries=(*current.entries, copy),
            )
        return True

    def load_store(self, store: MembershipStore) -> int:
        """Apply every revocation the store holds (at daemon start); returns how many were new.
        Stored entries were verified on arrival; only the future-date check is skipped, so a
        clock stepped back cannot drop a revocation. Raises MembershipStateError on damage."""
        added = 0
        for federation_id in store.federation_ids():
            for revocation in store.revocations(federation_id):
                added += self.add_revocation(federation_id, revocation, now_unix_ms=FAR_FUTURE_MS)
        return added

    def revocations(self, federation_id: str) -> list[membership_pb2.Revocation]:
        """Known revocations of a federation, canonical order (for the DHT record and JoinResponse)."""
        return canonical_revocations(list(self._revoked.get(federation_id, _EMPTY).entries))

    def is_revoked(self, federation_id: str, *, serial: bytes = b"", member_public_key: bytes = b"") -> bool:
        revoked = self._revoked.get(federation_id, _EMPTY)
        return (bool(serial) and serial in revoked.serials) or (bool(member_public_key) and member_public_key in revoked.keys)

    # ---------------------------------------------------------------------------------- members
    def member(self, federation_id: str, public_key: bytes) -> VerifiedCertificate | None:
        """The last verified certificate a key presented (display name, role), valid or not now."""
        return self._members.get((federation_id, bytes(public_key)))

    def forget(self, federation_id: str) -> None:
        """Drop everything about a federation (after leaving it)."""
        with self._lock:
            self._revoked.pop(federation_id, None)
            for table in (self._verified, self._members):
                for key in [k for k in table if k[0] == federation_id]:
                    del table[key]

    @property
    def cached_certificates(self) -> int:
        return len(self._verified)
