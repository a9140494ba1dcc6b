"""Signing and opening `SignedEnvelope`s: the only way control messages enter or leave a node.

Signature input = SIGNING_DOMAIN || payload_type || 0x00 || payload (see envelope.proto). The
domain and type name make a signature valid for exactly one message kind of this protocol.
Opening checks, in order: size, parse, type, signature; any failure raises `Rejected` with the
`RejectReason` the node counts and reports. Nothing here trusts the sender before the signature
verifies.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from fednode.node.identity import Identity, peer_id_from_public_key, verify_signature
from fednode.proto.v1 import envelope_pb2, membership_pb2

SIGNING_DOMAIN = b"fednode/v1/envelope\x00"

RejectReason = envelope_pb2.RejectReason
M = TypeVar("M", bound=Message)


class Rejected(Exception):
    """Input refused for a protocol reason; `reason` is a RejectReason value."""

    def __init__(self, reason: int, detail: str) -> None:
        super().__init__(f"{reason_name(reason)}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)


def reason_name(reason: int) -> str:
    """RejectReason value -> its lower-case short name, e.g. REJECT_BAD_SIGNATURE -> "bad_signature"."""
    name = envelope_pb2.RejectReason.Name(reason)
    return name.removeprefix("REJECT_").lower()


def signing_input(payload_type: str, payload: bytes) -> bytes:
    return SIGNING_DOMAIN + payload_type.encode() + b"\x00" + payload


def seal(
    identity: Identity, message: Message, certificate: membership_pb2.MemberCertificate | None = None
) -> bytes:
    """Serialize and sign `message`; returns the serialized envelope."""
    payload = message.SerializeToString(deterministic=True)
    payload_type = message.DESCRIPTOR.full_name
    envelope = envelope_pb2.SignedEnvelope(
        sender_public_key=identity.public_key,
        payload_type=payload_type,
        payload=payload,
        signature=identity.sign(signing_input(payload_type, payload)),
    )
    if certificate is not None:
        envelope.certificate.CopyFrom(certificate)
    return envelope.SerializeToString(deterministic=True)


class OpenedEnvelope:
    """A verified envelope: the signer's key and peer id, the parsed message, the certificate."""

    def __init__(self, envelope: envelope_pb2.SignedEnvelope, message: Message) -> None:
        self.envelope = envelope
        self.message = message
        self.sender_public_key = bytes(envelope.sender_public_key)
        self.sender_peer_id = peer_id_from_public_key(self.sender_public_key)
        self.certificate = envelope.certificate if envelope.HasField("certificate") else None


def open_envelope(
    data: bytes, message_type: type[M], *, max_size: int, check_signature: bool = True
) -> OpenedEnvelope:
    """Verify and parse an envelope carrying a `message_type`; raises Rejected.

    `check_signature=False` only for bytes whose signature was verified already, by the same
    code in a process this one trusts (the daemon, for its training worker)."""
    if len(data) > max_size:
        raise Rejected(RejectReason.REJECT_OVERSIZED, f"{len(data)} bytes > cap {max_size}")
    try:
        envelope = envelope_pb2.SignedEnvelope.FromString(data)
    except DecodeError as exc:
        raise Rejected(RejectReason.REJECT_MALFORMED, f"envelope does not parse: {exc}") from exc
    expected_type = message_type.DESCRIPTOR.full_name
    if envelope.payload_type != expected_type:
        raise Rejected(RejectReason.REJECT_MALFORMED, f"payload type {envelope.payload_type!r}, expected {expected_type}")
    if len(envelope.sender_public_key) != 32 or len(envelope.signature) != 64:
        raise Rejected(RejectReason.REJECT_MALFORMED, "sender key or signature has the wrong length")
    if check_signature and not verify_signature(
        envelope.sender_public_key, envelope.signature, signing_input(envelope.payload_type, envelope.payload)
    ):
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "signature does not verify")
    try:
        message = message_type.FromString(envelope.payload)
    except DecodeError as exc:
        raise Rejected(RejectReason.REJECT_MALFORMED, f"payload does not parse: {exc}") from exc
    return OpenedEnvelope(envelope, message)
