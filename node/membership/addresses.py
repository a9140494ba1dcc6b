"""Signed address records: where a member can be dialled now, checkable by anyone offline.

A member signs an `AddressRecord` (its certificate, its current multiaddrs, a timestamp) with its
node key and stores it in the DHT under `/fednode-addrs/<sha256 of "<federation id>/<member peer
id>">` (hashed: DHT keys are at most 128 bytes, the two names alone take 116). A
member that restarted on another port (or host) is found again through it: the others look the
record up when none of the addresses they saved answers. DHT nodes validate every record before
storing or returning it (`validate_address_record`): the key's federation id must root the
certificate, the key's peer id must be the certificate's key, and that key must have signed the
record (the key is recomputed from the record); of several valid records the newest wins
(`select_address_record`). Readers also check
time and revocation with their `TrustPolicy` (a DHT node knows neither).
"""

from __future__ import annotations

import hashlib

from google.protobuf.message import DecodeError

from fednode.node.envelope import Rejected, RejectReason
from fednode.node.identity import Identity, peer_id_from_public_key
from fednode.node.membership.certificates import verify_certificate_chain
from fednode.node.membership.signing import is_federation_id, now_ms, signature_valid, signing_input
from fednode.proto.v1 import membership_pb2

#: DHT record namespace ("/<namespace>/<hex sha256 of federation id/peer id>"); libp2p picks
#: validators by namespace.
ADDRESS_RECORD_NAMESPACE = "fednode-addrs"
MAX_RECORD_ADDRESSES = 16
MAX_ADDRESS_CHARS = 256
MAX_ADDRESS_RECORD_BYTES = 8 * 1024
#: A record dated further ahead than this is refused (a member cannot pin its record with a
#: timestamp far in the future).
MAX_FUTURE_SKEW_MS = 10 * 60 * 1000


def address_record_key(federation_id: str, peer_id: str) -> str:
    """The DHT key of a member's address record."""
    if not is_federation_id(federation_id) or not peer_id or "/" in peer_id:
        raise ValueError("an address record key needs a federation id and a peer id")
    digest = hashlib.sha256(f"{federation_id}/{peer_id}".encode()).hexdigest()
    return f"/{ADDRESS_RECORD_NAMESPACE}/{digest}"


def make_address_record(
    identity: Identity,
    certificate: membership_pb2.MemberCertificate,
    multiaddrs: list[str],
    *,
    now_unix_ms: int | None = None,
) -> membership_pb2.AddressRecord:
    """This member's signed record (at most MAX_RECORD_ADDRESSES well-formed addresses, in order)."""
    if bytes(certificate.member_public_key) != identity.public_key:
        raise ValueError("the certificate belongs to another key than this node's")
    usable = [a for a in dict.fromkeys(multiaddrs) if _usable(a)][:MAX_RECORD_ADDRESSES]
    record = membership_pb2.AddressRecord(
        federation_id=certificate.federation_id, multiaddrs=usable,
        issued_unix_ms=now_ms() if now_unix_ms is None else now_unix_ms,
    )
    record.certificate.CopyFrom(certificate)
    record.signature = identity.sign(signing_input(record))
    return record


def _usable(address: str) -> bool:
    return isinstance(address, str) and address.startswith("/") and len(address) <= MAX_ADDRESS_CHARS


def decode_address_record(
    data: bytes, federation_id: str, peer_id: str, *, now_unix_ms: int | None = None
) -> membership_pb2.AddressRecord:
    """Parse and verify a record of `peer_id` in `federation_id` (structure, certificate chain,
    signature, not dated in the future; not the certificate's validity now or revocation: the
    reader's TrustPolicy judges those). Raises Rejected."""
    if len(data) > MAX_ADDRESS_RECORD_BYTES:
        raise Rejected(RejectReason.REJECT_OVERSIZED, f"address record of {len(data)} bytes > {MAX_ADDRESS_RECORD_BYTES}")
    try:
        record = membership_pb2.AddressRecord.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise Rejected(RejectReason.REJECT_MALFORMED, "address record does not parse") from exc
    if record.federation_id != federation_id or not record.HasField("certificate"):
        raise Rejected(RejectReason.REJECT_WRONG_FEDERATION, "address record of another federation")
    verified = verify_certificate_chain(record.certificate, federation_id)
    if peer_id_from_public_key(verified.member_public_key) != peer_id:
        raise Rejected(RejectReason.REJECT_SENDER_MISMATCH, "address record of another member than its key names")
    if len(record.multiaddrs) > MAX_RECORD_ADDRESSES or not all(_usable(a) for a in record.multiaddrs):
        raise Rejected(RejectReason.REJECT_MALFORMED, "address record addresses are malformed or too many")
    now = now_ms() if now_unix_ms is None else now_unix_ms
    if record.issued_unix_ms > now + MAX_FUTURE_SKEW_MS:
        raise Rejected(RejectReason.REJECT_STALE, "address record is dated in the future")
    if not signature_valid(verified.member_public_key, record):
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "address record signature does not verify")
    return record


def _record_of_key(key: str, value: bytes) -> membership_pb2.AddressRecord:
    """Verify `value` as the record stored under `key`; raises Rejected (ValueError for a key
    that is no address record key)."""
    prefix = f"/{ADDRESS_RECORD_NAMESPACE}/"
    if not key.startswith(prefix) or len(key) != len(prefix) + 64:
        raise ValueError(f"not an address record key: {key[:160]!r}")
    try:
        record = membership_pb2.AddressRecord.FromString(value[: MAX_ADDRESS_RECORD_BYTES + 1])
        peer_id = peer_id_from_public_key(bytes(record.certificate.member_public_key))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise Rejected(RejectReason.REJECT_MALFORMED, "address record does not parse") from exc
    if not is_federation_id(record.federation_id) or address_record_key(record.federation_id, peer_id) != key:
        raise Rejected(RejectReason.REJECT_SENDER_MISMATCH, "address record stored under another member's key")
    return decode_address_record(value, record.federation_id, peer_id)


def validate_address_record(key: str, value: bytes) -> None:
    """DHT validator hook (`RecordValidator.validate`): raises ValueError if `value` is not a
    valid record of the member and federation `key` names. Needs no membership: any DHT node can
    run it."""
    try:
        _record_of_key(key, value)
    except Rejected as exc:
        raise ValueError(f"invalid address record: {exc}") from exc


def select_address_record(key: str, values: list[bytes]) -> int:
    """DHT selector hook (`RecordValidator.select`): index of the newest valid record (ties: the
    smallest bytes, so every node picks the same)."""
    best, best_rank = 0, None
    for index, value in enumerate(values):
        try:
            issued = _record_of_key(key, value).issued_unix_ms
        except (Rejected, ValueError):
            continue
        rank = (-issued, value)
        if best_rank is None or rank < best_rank:
            best, best_rank = index, rank
    return best
