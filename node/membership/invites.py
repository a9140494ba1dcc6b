"""Invites: issuing them, the token string, redeeming them at the issuer, and checking the answer.

Flow: the issuer calls `issue_invite` (keeps the `InviteRecord`, which holds only sha256(secret)),
hands `encode_token(invite)` to the joiner out of band; the joiner runs `parse_token`, sends
`make_join_request(...)` to an issuer multiaddr; the issuer answers with `redeem_invite` (through
`MembershipStore.redeem`, which persists the use count before answering); the joiner checks the
answer with `accept_join_response`. The token is a bearer secret: whoever holds it can join.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf.message import DecodeError

from fednode.node.envelope import Rejected
from fednode.node.membership.certificates import (
    CONTRIBUTOR,
    DEFAULT_CERTIFICATE_TTL_MS,
    DEFAULT_CLOCK_SKEW_MS,
    MAX_DISPLAY_NAME_CHARS,
    OBSERVER,
    RELAY,
    issue_certificate,
    verify_certificate,
)
from fednode.node.membership.errors import InvalidInvite, JoinRefused, MembershipError
from fednode.node.membership.federation import Issuer, check_issuer, verify_descriptor
from fednode.node.membership.signing import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    is_federation_id,
    now_ms,
    signature_valid,
)
from fednode.proto.v1 import membership_pb2

Status = membership_pb2.JoinResponse.Status

INVITE_ID_BYTES = 16
SECRET_BYTES = 32
DEFAULT_INVITE_TTL_MS = 24 * 3600 * 1000
#: A join request's timestamp may differ this much from the issuer's clock.
DEFAULT_JOIN_SKEW_MS = 5 * 60 * 1000
MAX_TOKEN_CHARS = 8192
MAX_MULTIADDRS = 16
MAX_MULTIADDR_CHARS = 512
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


@dataclass(frozen=True)
class Redemption:
    """One successful redemption: who joined, and the serial their certificate got."""

    member_public_key: bytes
    serial: bytes
    redeemed_unix_ms: int


@dataclass(frozen=True)
class InviteRecord:
    """The issuer's memory of an invite. Holds sha256(secret), never the secret: a leaked state
    directory does not leak usable invites."""

    federation_id: str
    invite_id: bytes
    secret_sha256: bytes
    expires_unix_ms: int
    max_uses: int
    role: int = CONTRIBUTOR
    certificate_ttl_ms: int = DEFAULT_CERTIFICATE_TTL_MS
    created_unix_ms: int = 0
    redemptions: tuple[Redemption, ...] = field(default=())

    @property
    def uses(self) -> int:
        return len(self.redemptions)

    def exhausted(self) -> bool:
        return bool(self.max_uses) and self.uses >= self.max_uses

    def to_json(self) -> dict[str, Any]:
        return {
            "federation_id": self.federation_id,
            "invite_id": self.invite_id.hex(),
            "secret_sha256": self.secret_sha256.hex(),
            "expires_unix_ms": self.expires_unix_ms,
            "max_uses": self.max_uses,
            "role": membership_pb2.MemberCertificate.Role.Name(self.role),
            "certificate_ttl_ms": self.certificate_ttl_ms,
            "created_unix_ms": self.created_unix_ms,
            "redemptions": [
                {"member_public_key": r.member_public_key.hex(), "serial": r.serial.hex(),
                 "redeemed_unix_ms": r.redeemed_unix_ms}
                for r in self.redemptions
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> InviteRecord:
        """Parse `to_json` output; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("invite record is not a JSON object")
        try:
            record = cls(
                federation_id=_str(data["federation_id"]),
                invite_id=bytes.fromhex(_str(data["invite_id"])),
                secret_sha256=bytes.fromhex(_str(data["secret_sha256"])),
                expires_unix_ms=_uint(data["expires_unix_ms"]),
                max_uses=_uint(data["max_uses"]),
                role=membership_pb2.MemberCertificate.Role.Value(_str(data["role"])),
                certificate_ttl_ms=_uint(data["certificate_ttl_ms"]),
                created_unix_ms=_uint(data["created_unix_ms"]),
                redemptions=tuple(
                    Redemption(bytes.fromhex(_str(r["member_public_key"])), bytes.fromhex(_str(r["serial"])),
                               _uint(r["redeemed_unix_ms"]))
                    for r in data["redemptions"]
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invite record misses or mistypes a field ({exc})") from exc
        if not is_federation_id(record.federation_id) or len(record.invite_id) != INVITE_ID_BYTES \
                or len(record.secret_sha256) != 32 or record.role not in (CONTRIBUTOR, OBSERVER, RELAY):
            raise ValueError("invite record has a malformed id, hash or role")
        return record


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _uint(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return value


def issue_invite(
    issuer: Issuer,
    *,
    ttl_ms: int = DEFAULT_INVITE_TTL_MS,
    max_uses: int = 1,
    issuer_multiaddrs: tuple[str, ...] | list[str] = (),
    issuer_peer_id: str = "",
    role: int = CONTRIBUTOR,
    certificate_ttl_ms: int = DEFAULT_CERTIFICATE_TTL_MS,
    now_unix_ms: int | None = None,
) -> tuple[membership_pb2.Invite, InviteRecord]:
    """A signed invite (give `encode_token(invite)` to the joiner) and the record to store.

    max_uses 0 = unlimited until expiry, 1 = single use. `issuer_multiaddrs` are full dialable
    addresses of the issuing daemon, where the joiner sends its JoinRequest.
    """
    now = now_ms() if now_unix_ms is None else now_unix_ms
    issuer.require_valid(now)
    if ttl_ms <= 0:
        raise ValueError("an invite needs a positive time to live")
    if max_uses < 0:
        raise ValueError("max_uses must be >= 0 (0 = unlimited until expiry)")
    if role not in (CONTRIBUTOR, OBSERVER, RELAY):
        raise ValueError(f"cannot invite with role {role}")
    addresses = list(issuer_multiaddrs)
    if len(addresses) > MAX_MULTIADDRS or any(len(a) > MAX_MULTIADDR_CHARS for a in addresses):
        raise ValueError(f"at most {MAX_MULTIADDRS} issuer multiaddrs of <= {MAX_MULTIADDR_CHARS} characters")
    secret = os.urandom(SECRET_BYTES)
    invite = membership_pb2.Invite(
        federation_id=issuer.federation_id,
        invite_id=os.urandom(INVITE_ID_BYTES),
        secret=secret,
        expires_unix_ms=now + ttl_ms,
        max_uses=max_uses,
        issuer_multiaddrs=addresses,
        issuer_peer_id=issuer_peer_id,
    )
    issuer.stamp(invite)
    record = InviteRecord(
        federation_id=issuer.federation_id,
        invite_id=bytes(invite.invite_id),
        secret_sha256=hashlib.sha256(secret).digest(),
        expires_unix_ms=invite.expires_unix_ms,
        max_uses=max_uses,
        role=role,
        certificate_ttl_ms=certificate_ttl_ms,
        created_unix_ms=now,
    )
    return invite, record


def encode_token(invite: membership_pb2.Invite) -> str:
    """base64url (RFC 4648 section 5, no padding) of the serialized Invite: safe in URLs and shells."""
    return base64.urlsafe_b64encode(invite.SerializeToString(deterministic=True)).rstrip(b"=").decode("ascii")


def parse_token(token: str, *, now_unix_ms: int | None = None) -> membership_pb2.Invite:
    """Decode and check a token (structure, signature, issuer chain, expiry); raises InvalidInvite
    with a message telling the operator what is wrong."""
    if not isinstance(token, str):
        raise InvalidInvite("an invite token is a string")
    text = "".join(token.split())  # tokens pasted from e-mail may be wrapped
    if not text:
        raise InvalidInvite("the invite token is empty; paste the whole token printed by `fednode federation invite`")
    if len(text) > MAX_TOKEN_CHARS:
        raise InvalidInvite(f"the invite token is {len(text)} characters, longer than any real token ({MAX_TOKEN_CHARS})")
    if not _BASE64URL.match(text):
        raise InvalidInvite("the invite token contains characters outside base64url (A-Z a-z 0-9 - _); was it mangled?")
    unpadded = text.rstrip("=")
    try:
        data = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInvite("the invite token is not valid base64url; it may be truncated, copy it again") from exc
    try:
        invite = membership_pb2.Invite.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidInvite("the invite token does not decode to an invite; it may be truncated, copy it again") from exc
    verify_invite(invite, now_unix_ms=now_unix_ms)
    return invite


def verify_invite(invite: membership_pb2.Invite, *, now_unix_ms: int | None = None) -> None:
    """Joiner-side check of an invite; raises InvalidInvite."""
    if not is_federation_id(invite.federation_id):
        raise InvalidInvite("the invite does not name a valid federation id; it may be truncated, copy it again")
    if len(invite.invite_id) != INVITE_ID_BYTES or len(invite.secret) != SECRET_BYTES:
        raise InvalidInvite("the invite's id or secret has the wrong length; it may be truncated, copy it again")
    if len(invite.signature) != SIGNATURE_BYTES or len(invite.issuer_public_key) != KEY_BYTES:
        raise InvalidInvite("the invite is not signed; it may be truncated, copy it again")
    if len(invite.issuer_multiaddrs) > MAX_MULTIADDRS:
        raise InvalidInvite("the invite lists too many issuer addresses")
    delegation = invite.delegation if invite.HasField("delegation") else None
    try:
        not_before, not_after = check_issuer(invite.federation_id, bytes(invite.issuer_public_key), delegation)
    except Rejected as exc:
        raise InvalidInvite(f"the invite was not issued by the federation it names ({exc.detail}); do not use it") from exc
    if not signature_valid(bytes(invite.issuer_public_key), invite):
        raise InvalidInvite("the invite's signature does not verify: it was altered or forged; ask for a new one")
    now = now_ms() if now_unix_ms is None else now_unix_ms
    if now > invite.expires_unix_ms:
        raise InvalidInvite("the invite has expired; ask the federation owner for a new one")
    if now < not_before or (not_after and now > not_after):
        raise InvalidInvite("the admin who issued this invite is no longer delegated; ask for a new invite")


def make_join_request(
    invite: membership_pb2.Invite,
    member_public_key: bytes,
    *,
    display_name: str = "",
    now_unix_ms: int | None = None,
) -> membership_pb2.JoinRequest:
    """The request the joiner sends to the issuer; `member_public_key` is the node identity key."""
    return membership_pb2.JoinRequest(
        federation_id=invite.federation_id,
        invite_id=invite.invite_id,
        secret=invite.secret,
        member_public_key=member_public_key,
        display_name=display_name,
        requested_unix_ms=now_ms() if now_unix_ms is None else now_unix_ms,
    )


def _refuse(status: int, message: str) -> membership_pb2.JoinResponse:
    return membership_pb2.JoinResponse(status=status, message=message)  # type: ignore[arg-type]


def redeem_invite(
    issuer: Issuer,
    descriptor: membership_pb2.FederationDescriptor,
    record: InviteRecord | None,
    request: membership_pb2.JoinRequest,
    *,
    now_unix_ms: int | None = None,
    max_clock_skew_ms: int = DEFAULT_JOIN_SKEW_MS,
    bootstrap_multiaddrs: tuple[str, ...] | list[str] = (),
    revocations: tuple[membership_pb2.Revocation, ...] | list[membership_pb2.Revocation] = (),
    signer_public_key: bytes | None = None,
) -> tuple[membership_pb2.JoinResponse, InviteRecord | None]:
    """Issuer-side decision on a JoinRequest: (response, updated record or None if unchanged).

    Pure: the caller must persist the updated record BEFORE sending the response, and must run
    this under a lock per invite (MembershipStore.redeem does both), or a single-use invite could
    be redeemed twice. A retry by a key that already redeemed this invite (its answer was lost) gets
    a fresh certificate with the same serial and does not use the invite up further.

    `signer_public_key`: the key that signed the envelope the request came in. When given it must
    be the member key (proof that the joiner holds the key it asks a certificate for).
    """
    now = now_ms() if now_unix_ms is None else now_unix_ms
    if len(request.member_public_key) != KEY_BYTES:
        return _refuse(Status.BAD_REQUEST, "member_public_key must be a 32-byte Ed25519 key"), None
    if signer_public_key is not None and bytes(signer_public_key) != bytes(request.member_public_key):
        return _refuse(Status.BAD_REQUEST, "the request must be signed by the key it asks a certificate for"), None
    if len(request.display_name) > MAX_DISPLAY_NAME_CHARS:
        return _refuse(Status.BAD_REQUEST, f"display name longer than {MAX_DISPLAY_NAME_CHARS} characters"), None
    if request.federation_id != issuer.federation_id or (record is not None and record.federation_id != request.federation_id):
        return _refuse(Status.WRONG_FEDERATION,
                       "this issuer does not admit to that federation; check the token is the one you were given"), None
    if abs(request.requested_unix_ms - now) > max_clock_skew_ms:
        return _refuse(Status.CLOCK_SKEW,
                       f"your clock differs from the issuer's by more than {max_clock_skew_ms // 1000} s; "
                       "synchronize it (NTP) and retry"), None
    if record is None or not hmac.compare_digest(record.invite_id, bytes(request.invite_id)):
        return _refuse(Status.UNKNOWN_INVITE, "the issuer does not know this invite; ask for a new one"), None
    if not hmac.compare_digest(hashlib.sha256(bytes(request.secret)).digest(), record.secret_sha256):
        return _refuse(Status.BAD_SECRET, "the invite secret does not match; copy the whole token again"), None
    if now > record.expires_unix_ms:
        return _refuse(Status.EXPIRED, "the invite has expired; ask the federation owner for a new one"), None
    member_key = bytes(request.member_public_key)
    previous = next((r for r in record.redemptions if r.member_public_key == member_key), None)
    if previous is None and record.exhausted():
        return _refuse(Status.EXHAUSTED, "the invite was already used up; ask the federation owner for a new one"), None
    try:
        certificate = issue_certificate(
            issuer, member_key, role=record.role, ttl_ms=record.certificate_ttl_ms,
            display_name=request.display_name, now_unix_ms=now,
            serial=None if previous is None else previous.serial,
        )
    except (MembershipError, ValueError) as exc:  # an expired admin delegation, mostly
        return _refuse(Status.INTERNAL, f"the issuer cannot sign certificates now ({exc}); retry later"), None
    response = membership_pb2.JoinResponse(
        status=Status.OK,
        message="welcome",
        certificate=certificate,
        descriptor=descriptor,
        bootstrap_multiaddrs=list(bootstrap_multiaddrs),
        revocations=list(revocations),
    )
    if previous is not None:
        return response, None
    updated = replace(record, redemptions=(*record.redemptions,
                                           Redemption(member_key, bytes(certificate.serial), now)))
    return response, updated


def accept_join_response(
    response: membership_pb2.JoinResponse,
    invite: membership_pb2.Invite,
    member_public_key: bytes,
    *,
    now_unix_ms: int | None = None,
    clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
) -> tuple[membership_pb2.MemberCertificate, membership_pb2.FederationDescriptor]:
    """Joiner-side check of the issuer's answer; returns (certificate, descriptor) to store, or
    raises JoinRefused. Trusts nothing from the issuer beyond what the federation id proves."""
    if response.status != Status.OK:
        raise JoinRefused(response.status, response.message or "no explanation given")
    try:
        verify_descriptor(response.descriptor, invite.federation_id)
        verified = verify_certificate(response.certificate, invite.federation_id,
                                      now_unix_ms=now_unix_ms, clock_skew_ms=clock_skew_ms)
    except Rejected as exc:
        raise JoinRefused(Status.INTERNAL, f"the issuer answered with an invalid certificate or descriptor: {exc}") from exc
    if verified.member_public_key != member_public_key:
        raise JoinRefused(Status.INTERNAL, "the issuer certified another key than this node's")
    return response.certificate, response.descriptor
