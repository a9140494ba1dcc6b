"""Revocations, and the DHT record that lets them reach peers that missed the gossip.

A revocation names a certificate serial or a key and is signed like every membership object, so
any peer can check it offline and relay it without being trusted. Revocations only accumulate:
sets merge by union, nothing un-revokes (issue a new certificate with a new serial instead).

Revoking a key withdraws every certificate OF that key and, when the key is a delegated admin key,
every certificate ISSUED BY it (what a compromised admin key calls for). The federation key itself
cannot be revoked: a new federation is the only remedy for its loss.
"""

from __future__ import annotations

import hashlib

from google.protobuf.message import DecodeError

from fednode.node.envelope import Rejected, RejectReason
from fednode.node.membership.certificates import DEFAULT_CLOCK_SKEW_MS, SERIAL_BYTES
from fednode.node.membership.federation import Issuer, check_issuer
from fednode.node.membership.signing import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    federation_id_for,
    is_federation_id,
    now_ms,
    signature_valid,
)
from fednode.proto.v1 import membership_pb2

MAX_REASON_CHARS = 256
#: DHT record namespace ("/<namespace>/<federation id>"); libp2p picks validators by namespace.
REVOCATION_RECORD_NAMESPACE = "fednode-revocations"
#: Cap on a DHT record (~250 revocations with delegations, ~400 without). Beyond it, revoke keys
#: rather than serials, or rotate the federation.
MAX_REVOCATION_RECORD_BYTES = 96 * 1024


def revoke(
    issuer: Issuer,
    *,
    serial: bytes = b"",
    member_public_key: bytes = b"",
    reason: str = "",
    now_unix_ms: int | None = None,
) -> membership_pb2.Revocation:
    """Sign a revocation of one certificate (`serial`) or of every certificate of a key."""
    if bool(serial) == bool(member_public_key):
        raise ValueError("revoke either a serial or a member key, exactly one of them")
    if serial and len(serial) != SERIAL_BYTES:
        raise ValueError(f"a serial has {SERIAL_BYTES} bytes")
    if member_public_key and len(member_public_key) != KEY_BYTES:
        raise ValueError(f"a member key has {KEY_BYTES} bytes")
    if member_public_key and federation_id_for(member_public_key) == issuer.federation_id:
        raise ValueError("the federation key cannot be revoked; create a new federation instead")
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason longer than {MAX_REASON_CHARS} characters")
    now = now_ms() if now_unix_ms is None else now_unix_ms
    issuer.require_valid(now)
    revocation = membership_pb2.Revocation(
        federation_id=issuer.federation_id,
        serial=serial,
        member_public_key=member_public_key,
        reason=reason,
        revoked_unix_ms=now,
    )
    issuer.stamp(revocation)
    return revocation


def verify_revocation(
    revocation: membership_pb2.Revocation,
    federation_id: str,
    *,
    now_unix_ms: int | None = None,
    clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
) -> None:
    """Check a revocation offline; raises Rejected.

    An admin's revocation must fall inside its delegation (judged at revoked_unix_ms, so it stays
    valid after the delegation ends). A revocation dated in the future beyond the skew is refused,
    which limits how far an admin can pre-date its authority.
    """
    if revocation.federation_id != federation_id:
        raise Rejected(RejectReason.REJECT_WRONG_FEDERATION, "revocation for another federation")
    serial, key = bytes(revocation.serial), bytes(revocation.member_public_key)
    if bool(serial) == bool(key) or (serial and len(serial) != SERIAL_BYTES) or (key and len(key) != KEY_BYTES):
        raise Rejected(RejectReason.REJECT_MALFORMED, "a revocation names exactly one 16-byte serial or 32-byte key")
    if len(revocation.signature) != SIGNATURE_BYTES or len(revocation.reason) > MAX_REASON_CHARS:
        raise Rejected(RejectReason.REJECT_MALFORMED, "revocation signature or reason has the wrong size")
    now = now_ms() if now_unix_ms is None else now_unix_ms
    if revocation.revoked_unix_ms > now + clock_skew_ms:
        raise Rejected(RejectReason.REJECT_STALE, "revocation is dated in the future")
    delegation = revocation.delegation if revocation.HasField("delegation") else None
    issuer_key = bytes(revocation.issuer_public_key)
    not_before, not_after = check_issuer(federation_id, issuer_key, delegation)
    if revocation.revoked_unix_ms < not_before or (not_after and revocation.revoked_unix_ms > not_after):
        raise Rejected(RejectReason.REJECT_CERT_EXPIRED, "revocation made outside its issuer's delegation")
    if not signature_valid(issuer_key, revocation):
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "revocation signature does not verify")


def revocation_digest(revocation: membership_pb2.Revocation) -> bytes:
    """Identity of a revocation for deduplication: sha256 of its canonical encoding."""
    return hashlib.sha256(revocation.SerializeToString(deterministic=True)).digest()


def canonical_revocations(revocations: list[membership_pb2.Revocation]) -> list[membership_pb2.Revocation]:
    """Deduplicated and sorted by signature: equal sets encode to equal bytes on every peer."""
    unique = {revocation_digest(r): r for r in revocations}
    return sorted(unique.values(), key=lambda r: (bytes(r.signature), revocation_digest(r)))


def revocation_record_key(federation_id: str) -> str:
    """The DHT key of a federation's revocation record."""
    if not is_federation_id(federation_id):
        raise ValueError("not a federation id")
    return f"/{REVOCATION_RECORD_NAMESPACE}/{federation_id}"


def encode_revocation_list(federation_id: str, revocations: list[membership_pb2.Revocation]) -> bytes:
    """Serialized RevocationList (canonical order): the DHT record value and the on-disk file."""
    message = membership_pb2.RevocationList(federation_id=federation_id,
                                            revocations=canonical_revocations(revocations))
    return message.SerializeToString(deterministic=True)


def decode_revocation_list(
    data: bytes,
    federation_id: str,
    *,
    max_bytes: int = MAX_REVOCATION_RECORD_BYTES,
    now_unix_ms: int | None = None,
) -> list[membership_pb2.Revocation]:
    """Parse and verify every entry; all or nothing (honest writers only store verified entries,
    so one bad entry means the record is forged). Raises Rejected."""
    if len(data) > max_bytes:
        raise Rejected(RejectReason.REJECT_OVERSIZED, f"revocation list of {len(data)} bytes > {max_bytes}")
    try:
        message = membership_pb2.RevocationList.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise Rejected(RejectReason.REJECT_MALFORMED, "revocation list does not parse") from exc
    if message.federation_id != federation_id:
        raise Rejected(RejectReason.REJECT_WRONG_FEDERATION, "revocation list of another federation")
    for revocation in message.revocations:
        verify_revocation(revocation, federation_id, now_unix_ms=now_unix_ms)
    return list(message.revocations)


def _record_federation(key: str) -> str:
    prefix = f"/{REVOCATION_RECORD_NAMESPACE}/"
    federation_id = key[len(prefix):] if key.startswith(prefix) else ""
    if not is_federation_id(federation_id):
        raise ValueError(f"not a revocation record key: {key[:100]!r}")
    return federation_id


def validate_revocation_record(key: str, value: bytes) -> None:
    """DHT validator hook (`Validator.validate` of libp2p records): raises ValueError if `value`
    is not a valid revocation list for the federation in `key`. Any DHT node can run it: it needs
    no membership, only the id in the key."""
    federation_id = _record_federation(key)
    try:
        decode_revocation_list(value, federation_id)
    except Rejected as exc:
        raise ValueError(f"invalid revocation record: {exc}") from exc


def select_revocation_record(key: str, values: list[bytes]) -> int:
    """DHT selector hook (`Validator.select`): index of the best record, the valid one with the
    most revocations (ties: smallest bytes, so every node picks the same). Readers still merge
    what they get with what they know, so a stale record never un-revokes anything."""
    federation_id = _record_federation(key)
    best, best_rank = 0, None
    for index, value in enumerate(values):
        try:
            count = len(decode_revocation_list(value, federation_id))
        except Rejected:
            continue
        rank = (-count, value)
        if best_rank is None or rank < best_rank:
            best, best_rank = index, rank
    return best
