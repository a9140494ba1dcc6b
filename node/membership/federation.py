"""Federations, their keys, admin delegations, and the issuer chain every peer checks offline.

A federation IS its key: the id is sha256(federation public key). Whoever holds the private key
(normally the node that created the federation) signs the descriptor, certificates, invites and
revocations, and may let admin keys do the same with an `AdminDelegation`. A chain is one level
deep: federation key -> (optional) admin key -> object. Because the delegation carries the
federation public key and the id is its hash, any peer holding only the federation id can check a
chain; no authority has to be online.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fednode.node.envelope import Rejected, RejectReason
from fednode.node.membership.errors import MembershipError
from fednode.node.membership.signing import (
    KEY_BYTES,
    federation_id_for,
    now_ms,
    raw_public_key,
    sign,
    signature_valid,
)
from fednode.proto.v1 import membership_pb2

MAX_NAME_CHARS = 128
SCHEDULES = ("sync", "fedcompass")
MAX_MIN_PARTICIPANTS = 10_000  # as federation.min_participants in the config
MAX_BUDGET_ROUNDS = 10_000_000


def check_budget(max_rounds: int, target_accuracy: float, until_unix_ms: int, now_unix_ms: int) -> None:
    """A federation's budget (descriptor fields max_rounds, target_accuracy, until_unix_ms; 0 =
    unset): raises ValueError naming the bad one."""
    if not 0 <= max_rounds <= MAX_BUDGET_ROUNDS:
        raise ValueError(f"the round budget must be between 1 and {MAX_BUDGET_ROUNDS}, got {max_rounds}")
    if not (target_accuracy == 0 or 0 < target_accuracy <= 1):  # also refuses NaN
        raise ValueError(f"the target accuracy must be in (0, 1], got {target_accuracy}")
    if until_unix_ms and until_unix_ms <= now_unix_ms:
        raise ValueError("the end time (until) is in the past; give a future time")


@dataclass(frozen=True, eq=False)
class Issuer:
    """A private key allowed to sign for one federation: the federation key itself, or an admin
    key together with the delegation the federation key signed for it.

    Construction checks that the key really belongs to the federation, so a signing call can never
    produce an object that other peers would reject for a broken chain.
    """

    federation_id: str
    private_key: Ed25519PrivateKey
    delegation: membership_pb2.AdminDelegation | None = None

    def __post_init__(self) -> None:
        public_key = raw_public_key(self.private_key)
        if self.delegation is None:
            if federation_id_for(public_key) != self.federation_id:
                raise MembershipError(
                    f"this key is not the key of federation {self.federation_id[:16]}...; an admin key "
                    "needs an AdminDelegation signed by the federation key"
                )
            return
        copy = membership_pb2.AdminDelegation()
        copy.CopyFrom(self.delegation)
        object.__setattr__(self, "delegation", copy)
        if bytes(copy.admin_public_key) != public_key:
            raise MembershipError("the delegation was made for another admin key than this one")
        try:
            verify_delegation(copy, self.federation_id)
        except Rejected as exc:
            raise MembershipError(f"unusable admin delegation: {exc.detail}") from exc

    @classmethod
    def from_federation_key(cls, private_key: Ed25519PrivateKey) -> Issuer:
        return cls(federation_id_for(raw_public_key(private_key)), private_key)

    @property
    def public_key(self) -> bytes:
        return raw_public_key(self.private_key)

    @property
    def is_federation_key(self) -> bool:
        return self.delegation is None

    def validity(self) -> tuple[int, int]:
        """(not_before, not_after) during which this key may sign; not_after 0 = no end."""
        if self.delegation is None:
            return 0, 0
        return self.delegation.not_before_unix_ms, self.delegation.not_after_unix_ms

    def require_valid(self, at_ms: int) -> None:
        """Refuse to sign with an admin key outside its delegation: peers would reject the result."""
        not_before, not_after = self.validity()
        if at_ms < not_before or (not_after and at_ms > not_after):
            raise MembershipError(
                "the admin delegation of this key is not valid now; ask the federation owner for a new one"
            )

    def stamp(
        self, message: membership_pb2.MemberCertificate | membership_pb2.Invite | membership_pb2.Revocation
    ) -> None:
        """Set issuer_public_key and delegation, then sign (in place)."""
        message.issuer_public_key = self.public_key
        if self.delegation is not None:
            message.delegation.CopyFrom(self.delegation)
        else:
            message.ClearField("delegation")
        sign(self.private_key, message)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def create_federation(
    name: str,
    *,
    task: str = "",
    model_layout_digest: str = "",
    aggregator: str = "",
    aggregator_params_json: str = "",
    schedule: str = "sync",
    min_participants: int = 1,
    codec: str = "",
    private: bool = False,
    max_rounds: int = 0,
    target_accuracy: float = 0.0,
    until_unix_ms: int = 0,
    now_unix_ms: int | None = None,
    outer: membership_pb2.OuterOptimizer | None = None,
    exchange: str = "",
) -> tuple[Issuer, membership_pb2.FederationDescriptor]:
    """Make a new federation key and its signed descriptor.

    The returned Issuer holds the federation private key: store it (MembershipStore.save_issuer)
    before telling anyone the federation id, or the federation can never admit anyone again.
    """
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"federation name has {len(name)} characters, at most {MAX_NAME_CHARS} allowed")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if not name.strip():
        raise ValueError("a federation needs a name")
    if exchange not in ("", "all_to_all", "butterfly"):
        raise ValueError(f"exchange must be all_to_all or butterfly, got {exchange!r}")
    if not 1 <= min_participants <= MAX_MIN_PARTICIPANTS:
        raise ValueError(f"min_participants must be between 1 and {MAX_MIN_PARTICIPANTS}, got {min_participants}")
    now = now_ms() if now_unix_ms is None else now_unix_ms
    check_budget(max_rounds, target_accuracy, until_unix_ms, now)
    if aggregator_params_json:
        try:
            params = json.loads(aggregator_params_json)
        except ValueError as exc:
            raise ValueError(f"aggregator_params_json is not JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise ValueError("aggregator_params_json must be a JSON object")
    if outer is not None:
        from fednode.node.federation.outer_config import config_from_proto

        config_from_proto(outer)  # ValueError: unknown optimizer, lr out of range, ...
    issuer = Issuer.from_federation_key(Ed25519PrivateKey.generate())
    descriptor = membership_pb2.FederationDescriptor(
        federation_id=issuer.federation_id,
        federation_public_key=issuer.public_key,
        name=name,
        created_unix_ms=now,
        task=task,
        model_layout_digest=model_layout_digest,
        aggregator=aggregator,
        aggregator_params_json=aggregator_params_json,
        schedule=schedule,
        min_participants=min_participants,
        codec=codec,
        private=private,
        max_rounds=max_rounds,
        target_accuracy=target_accuracy,
        until_unix_ms=until_unix_ms,
        exchange=exchange,
    )
    if outer is not None and outer.name:
        descriptor.outer.CopyFrom(outer)  # unset = plain FedAvg, as in descriptors that predate it
    sign(issuer.private_key, descriptor)
    return issuer, descriptor


def verify_descriptor(descriptor: membership_pb2.FederationDescriptor, federation_id: str | None = None) -> None:
    """Check a descriptor is the genuine one of `federation_id` (or of the id it names); raises Rejected."""
    key = bytes(descriptor.federation_public_key)
    if len(key) != KEY_BYTES:
        raise Rejected(RejectReason.REJECT_MALFORMED, "descriptor federation_public_key must have 32 bytes")
    actual = federation_id_for(key)
    if descriptor.federation_id != actual:
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "descriptor federation_id is not the hash of its key")
    if federation_id is not None and actual != federation_id:
        raise Rejected(RejectReason.REJECT_WRONG_FEDERATION, f"descriptor of federation {actual[:16]}...")
    if not signature_valid(key, descriptor):
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "descriptor signature does not verify")


def delegate_admin(
    federation: Issuer,
    admin_public_key: bytes,
    *,
    not_after_unix_ms: int = 0,
    not_before_unix_ms: int | None = None,
) -> membership_pb2.AdminDelegation:
    """Let `admin_public_key` issue invites, certificates and revocations for the federation.

    Only the federation key delegates (chains are one level deep, so a verifier's work is bounded).
    Prefer an expiry: everything the admin issued stops being valid with the delegation.
    """
    if not federation.is_federation_key:
        raise MembershipError("only the federation key can delegate; admin keys cannot re-delegate")
    if len(admin_public_key) != KEY_BYTES:
        raise ValueError(f"an admin key has {KEY_BYTES} bytes, got {len(admin_public_key)}")
    not_before = now_ms() if not_before_unix_ms is None else not_before_unix_ms
    if not_after_unix_ms and not_after_unix_ms <= not_before:
        raise ValueError("delegation would end before it starts")
    delegation = membership_pb2.AdminDelegation(
        federation_id=federation.federation_id,
        admin_public_key=admin_public_key,
        not_before_unix_ms=not_before,
        not_after_unix_ms=not_after_unix_ms,
        federation_public_key=federation.public_key,
    )
    return sign(federation.private_key, delegation)


def verify_delegation(delegation: membership_pb2.AdminDelegation, federation_id: str) -> None:
    """Structure, chain and signature of a delegation (not its time window); raises Rejected."""
    federation_key = bytes(delegation.federation_public_key)
    if len(federation_key) != KEY_BYTES or len(delegation.admin_public_key) != KEY_BYTES:
        raise Rejected(RejectReason.REJECT_MALFORMED, "delegation keys must have 32 bytes")
    if delegation.federation_id != federation_id:
        raise Rejected(RejectReason.REJECT_NOT_MEMBER, "delegation is for another federation")
    if not hmac.compare_digest(federation_id_for(federation_key), federation_id):
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "delegation is not signed by this federation's key")
    if not signature_valid(federation_key, delegation):
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "delegation signature does not verify")


def check_issuer(
    federation_id: str,
    issuer_public_key: bytes,
    delegation: membership_pb2.AdminDelegation | None,
) -> tuple[int, int]:
    """Check that `issuer_public_key` may sign for `federation_id`; raises Rejected.

    Returns the (not_before, not_after) window of that authority (0, 0 for the federation key: no
    limit). Time is left to the caller, so the result can be cached.
    """
    if len(issuer_public_key) != KEY_BYTES:
        raise Rejected(RejectReason.REJECT_MALFORMED, "issuer_public_key must have 32 bytes")
    if delegation is None:
        if not hmac.compare_digest(federation_id_for(issuer_public_key), federation_id):
            raise Rejected(
                RejectReason.REJECT_BAD_SIGNATURE, "issuer is neither the federation key nor a delegated admin"
            )
        return 0, 0
    if bytes(delegation.admin_public_key) != issuer_public_key:
        raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, "delegation names another admin key than the issuer")
    verify_delegation(delegation, federation_id)
    return delegation.not_before_unix_ms, delegation.not_after_unix_ms
