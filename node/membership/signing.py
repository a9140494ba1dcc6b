"""The membership signing rule, federation ids, and the clock.

Every membership object is signed the same way (see proto/v1/membership.proto):

    Ed25519(key, SIGNING_DOMAIN || full message type || 0x00 || message with `signature` cleared)

The message is serialized deterministically. The domain keeps these signatures apart from envelope
signatures (`fednode/v1/envelope`), and the type name keeps, say, a Revocation signature from being
presented as a MemberCertificate signature. Verification re-serializes the parsed message, so a
signature covers the meaning of the fields, not one particular byte encoding of them.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from fednode.node.identity import verify_signature

SIGNING_DOMAIN = b"fednode/v1/membership\x00"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
#: "now" used when re-checking stored objects: they were verified on arrival, and a clock stepped
#: back must not make them look dated in the future.
FAR_FUTURE_MS = 1 << 62
_FEDERATION_ID = re.compile(r"^[0-9a-f]{64}$")

M = TypeVar("M", bound=Message)


def now_ms() -> int:
    """Wall-clock time in unix milliseconds (what every *_unix_ms field holds)."""
    return time.time_ns() // 1_000_000


def federation_id_for(federation_public_key: bytes) -> str:
    """The federation id: lower-case hex sha256 of the raw 32-byte federation key."""
    if len(federation_public_key) != KEY_BYTES:
        raise ValueError(f"a federation key has {KEY_BYTES} bytes, got {len(federation_public_key)}")
    return hashlib.sha256(federation_public_key).hexdigest()


def is_federation_id(value: str) -> bool:
    """True for a well-formed id (64 lower-case hex characters); says nothing about membership."""
    return isinstance(value, str) and _FEDERATION_ID.match(value) is not None


def raw_public_key(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_input(message: Message) -> bytes:
    """The exact bytes a membership signature covers (the message itself is not modified)."""
    unsigned = type(message)()
    unsigned.CopyFrom(message)
    unsigned.ClearField("signature")  # type: ignore[arg-type]
    return (SIGNING_DOMAIN + message.DESCRIPTOR.full_name.encode() + b"\x00"
            + unsigned.SerializeToString(deterministic=True))


def sign(private_key: Ed25519PrivateKey, message: M) -> M:
    """Set `message.signature` in place and return the message."""
    message.signature = private_key.sign(signing_input(message))  # type: ignore[attr-defined]
    return message


def signature_valid(public_key: bytes, message: Message) -> bool:
    """True when `message.signature` is `public_key`'s signature of the message."""
    signature = bytes(message.signature)  # type: ignore[attr-defined]
    if len(public_key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    return verify_signature(public_key, signature, signing_input(message))
