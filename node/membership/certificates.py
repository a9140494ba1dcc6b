"""Member certificates: issuing them, and verifying them offline against a federation id.

Verification is split in two so the gossip validator can cache the expensive part: the chain and
signatures (`verify_certificate_chain`, one or two Ed25519 verifications, ~100 us) never change
for given certificate bytes, while the time window and revocations must be checked on every
message (`VerifiedCertificate.time_reason`, nanoseconds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fednode.node.envelope import Rejected, RejectReason
from fednode.node.identity import peer_id_from_public_key
from fednode.node.membership.federation import Issuer, check_issuer
from fednode.node.membership.signing import KEY_BYTES, SIGNATURE_BYTES, now_ms, signature_valid
from fednode.proto.v1 import membership_pb2

Role = membership_pb2.MemberCertificate.Role
CONTRIBUTOR = membership_pb2.MemberCertificate.CONTRIBUTOR
OBSERVER = membership_pb2.MemberCertificate.OBSERVER
RELAY = membership_pb2.MemberCertificate.RELAY

SERIAL_BYTES = 16
DAY_MS = 24 * 3600 * 1000
#: A year: long enough that operators are not surprised, short enough that lost keys age out.
DEFAULT_CERTIFICATE_TTL_MS = 365 * DAY_MS
#: Clocks of honest peers differ; validity windows are widened by this much on both ends.
DEFAULT_CLOCK_SKEW_MS = 60_000
MAX_DISPLAY_NAME_CHARS = 128


@dataclass(frozen=True)
class VerifiedCertificate:
    """What a certificate proves once its chain and signatures verified.

    `not_before_ms`/`not_after_ms` are the effective window: the certificate's own window
    intersected with the issuing admin's delegation (not_after 0 = no end).
    """

    federation_id: str
    member_public_key: bytes
    member_peer_id: str
    serial: bytes
    role: int
    display_name: str
    issuer_public_key: bytes
    delegated: bool
    not_before_ms: int
    not_after_ms: int

    def time_reason(self, now_unix_ms: int, clock_skew_ms: int = 0) -> int | None:
        """None when valid at `now_unix_ms` (widened by the skew), else REJECT_CERT_EXPIRED."""
        if now_unix_ms + clock_skew_ms < self.not_before_ms:
            return RejectReason.REJECT_CERT_EXPIRED
        if self.not_after_ms and now_unix_ms - clock_skew_ms > self.not_after_ms:
            return RejectReason.REJECT_CERT_EXPIRED
        return None

    @property
    def role_name(self) -> str:
        return Role.Name(self.role).lower()


def _intersect(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    not_before = max(a[0], b[0])
    ends = [end for end in (a[1], b[1]) if end]
    return not_before, min(ends) if ends else 0


def issue_certificate(
    issuer: Issuer,
    member_public_key: bytes,
    *,
    role: int = CONTRIBUTOR,
    ttl_ms: int = DEFAULT_CERTIFICATE_TTL_MS,
    display_name: str = "",
    serial: bytes | None = None,
    now_unix_ms: int | None = None,
) -> membership_pb2.MemberCertificate:
    """Sign a certificate admitting `member_public_key` (a node identity key) to the federation.

    ttl_ms 0 means no expiry (only revocation ends it). An admin-issued certificate never outlives
    its delegation. `serial` is random unless given (re-issuing a lost certificate keeps its serial,
    so a revocation by serial still covers it).
    """
    now = now_ms() if now_unix_ms is None else now_unix_ms
    issuer.require_valid(now)
    if len(member_public_key) != KEY_BYTES:
        raise ValueError(f"a member key has {KEY_BYTES} bytes, got {len(member_public_key)}")
    if role not in (CONTRIBUTOR, OBSERVER, RELAY):
        raise ValueError(f"cannot issue a certificate with role {role}")
    if len(display_name) > MAX_DISPLAY_NAME_CHARS:
        raise ValueError(f"display name longer than {MAX_DISPLAY_NAME_CHARS} characters")
    if ttl_ms < 0:
        raise ValueError("ttl_ms must be >= 0")
    serial = os.urandom(SERIAL_BYTES) if serial is None else serial
    if len(serial) != SERIAL_BYTES:
        raise ValueError(f"a serial has {SERIAL_BYTES} bytes")
    not_after = now + ttl_ms if ttl_ms else 0
    delegation_end = issuer.validity()[1]
    if delegation_end and (not not_after or not_after > delegation_end):
        not_after = delegation_end
    certificate = membership_pb2.MemberCertificate(
        federation_id=issuer.federation_id,
        member_public_key=member_public_key,
        member_peer_id=peer_id_from_public_key(member_public_key),
        serial=serial,
        role=Role.Name(role),  # validated above; the name types as the enum
        not_before_unix_ms=now,
        not_after_unix_ms=not_after,
        display_name=display_name,
    )
    issuer.stamp(certificate)
    return certificate


def verify_certificate_chain(
    certificate: membership_pb2.MemberCertificate, federation_id: str
) -> VerifiedCertificate:
    """Structure, issuer chain and signatures, without time or revocation; raises Rejected."""
    if certificate.federation_id != federation_id:
        raise Rejected(RejectReason.REJECT_NOT_MEMBER, "certificate is for another federation")
    member_key = bytes(certificate.member_public_key)
    if len(member_key) != KEY_BYTES or len(certificate.signature) != SIGNATURE_BYTES:
        raise Rejected(RejectReason.REJECT_MALFORMED, "certificate key or signature has the wrong length")
    if len(certificate.serial) != SERIAL_BYTES:
        raise Rejected(RejectReason.REJECT_MALFORMED, f"certificate serial must have {SERIAL_BYTES} bytes")
    if certificate.role not in (CONTRIBUTOR, OBSERVER, RELAY):
        raise Rejected(RejectReason.REJECT_MALFORMED, "certificate has no valid role")
    peer_id = peer_id_from_public_key(member_key)
    if certificate.member_peer_id != peer_id:
        raise Rejected(RejectReason.REJECT_MALFORMED, "certificate member_peer_id does not match its key")
    delegation = certificate.delegation if certificate.HasField("delegation") else None
    issuer_key = bytes(certificate.issuer_public_key)
    window = check_issuer(federation_id, issuer_key, delegation)
    if not signature_valid(issuer_key, certificate):
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "certificate signature does not verify")
    not_before, not_after = _intersect(window, (certificate.not_before_unix_ms, certificate.not_after_unix_ms))
    return VerifiedCertificate(
        federation_id=federation_id,
        member_public_key=member_key,
        member_peer_id=peer_id,
        serial=bytes(certificate.serial),
        role=certificate.role,
        display_name=certificate.display_name,
        issuer_public_key=issuer_key,
        delegated=delegation is not None,
        not_before_ms=not_before,
        not_after_ms=not_after,
    )


def verify_certificate(
    certificate: membership_pb2.MemberCertificate,
    federation_id: str,
    *,
    now_unix_ms: int | None = None,
    clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
) -> VerifiedCertificate:
    """Full offline check (chain, signatures, validity now) with only the federation id; raises
    Rejected. Revocations are the TrustPolicy's business: it knows which ones have spread."""
    verified = verify_certificate_chain(certificate, federation_id)
    reason = verified.time_reason(now_ms() if now_unix_ms is None else now_unix_ms, clock_skew_ms)
    if reason is not None:
        raise Rejected(reason, "certificate (or its issuer's delegation) is not valid at this time")
    return verified
