"""ControlValidator: the mesh's check and the node's open verify each envelope's signature once
between them, and still apply every other rule (freshness, membership, revocations) at open.

Real Ed25519 identities, real certificates and revocations, real envelopes."""

from __future__ import annotations

import pytest

from fednode.node.envelope import Rejected, RejectReason, seal
from fednode.node.federation.protocol import VERIFIED_HANDOFF_SIZE, ControlValidator, now_ms
from fednode.node.identity import Identity
from fednode.node.membership import Issuer, TrustPolicy, create_federation, issue_certificate, revoke
from fednode.proto.v1 import control_pb2

FEDERATION = "open-federation-for-tests"


def _departure(identity: Identity, federation_id: str = FEDERATION, certificate=None, reason: str = "bye") -> bytes:
    message = control_pb2.ControlMessage(
        federation_id=federation_id,
        sent_unix_ms=now_ms(),
        departure=control_pb2.Departure(peer_id=identity.peer_id, reason=reason),
    )
    return seal(identity, message, certificate)


def _validator(federation_id: str = FEDERATION, policy: TrustPolicy | None = None) -> ControlValidator:
    return ControlValidator(federation_id, max_clock_skew_s=30.0, layout_digest="layout", policy=policy)


def _certified_departure() -> tuple[Issuer, Identity, TrustPolicy, bytes]:
    """(issuer, member, policy, the member's signed departure) for a certified federation."""
    issuer, _ = create_federation("validator test")
    member = Identity.generate()
    certificate = issue_certificate(issuer, member.public_key)
    return issuer, member, TrustPolicy(), _departure(member, issuer.federation_id, certificate)


def test_open_after_check_reuses_the_verified_signature() -> None:
    sender = Identity.generate()
    data = _departure(sender)
    validator = _validator()
    assert validator.check(data, sender.peer_id) is None
    assert validator.signature_checks == 1
    valid = validator.open(data)
    assert validator.signature_checks == 1  # the check's verification was reused
    assert valid.sender == sender.peer_id and valid.body == "departure"
    assert valid.message.departure.reason == "bye"
    # Handed over once: opening the same bytes again verifies again.
    validator.open(data)
    assert validator.signature_checks == 2


def test_open_without_a_check_verifies_the_signature() -> None:
    sender = Identity.generate()
    validator = _validator()
    validator.open(_departure(sender))
    assert validator.signature_checks == 1


def test_a_message_that_fails_the_check_is_not_handed_over() -> None:
    sender = Identity.generate()
    data = bytearray(_departure(sender))
    data[-1] ^= 0x01  # the signature is the envelope's last field
    validator = _validator()
    assert validator.check(bytes(data), sender.peer_id) == "bad_signature"
    with pytest.raises(Rejected) as raised:
        validator.open(bytes(data))
    assert raised.value.reason == RejectReason.REJECT_BAD_SIGNATURE
    assert validator.signature_checks == 0


def test_a_revocation_between_check_and_open_still_rejects_the_message() -> None:
    issuer, member, policy, data = _certified_departure()
    validator = _validator(issuer.federation_id, policy)
    assert validator.check(data, member.peer_id) is None
    policy.add_revocation(issuer.federation_id, revoke(issuer, member_public_key=member.public_key))
    with pytest.raises(Rejected) as raised:
        validator.open(data)
    assert raised.value.reason == RejectReason.REJECT_REVOKED
    assert validator.signature_checks == 1


def test_checked_messages_never_opened_are_forgotten_beyond_the_bound() -> None:
    sender = Identity.generate()
    validator = _validator()
    messages = [_departure(sender, reason=str(i)) for i in range(VERIFIED_HANDOFF_SIZE + 5)]
    for data in messages:
        assert validator.check(data, sender.peer_id) is None
    checks = validator.signature_checks
    validator.open(messages[0])  # the oldest was dropped: verified again
    assert validator.signature_checks == checks + 1
    validator.open(messages[-1])  # a recent one is still handed over
    assert validator.signature_checks == checks + 1


def test_bytes_verified_by_the_daemon_are_not_verified_again_but_every_other_rule_applies() -> None:
    # The training worker opens messages its daemon's validator accepted (RemoteMesh marks them
    # signature_verified): no second Ed25519 verification, the same parse and the same rules.
    issuer, member, policy, data = _certified_departure()
    daemon_side, worker_side = _validator(issuer.federation_id, policy), _validator(issuer.federation_id, policy)
    assert daemon_side.check(data, member.peer_id) is None
    valid = worker_side.open(data, signature_verified=True)
    assert worker_side.signature_checks == 0
    assert valid.sender == member.peer_id and valid.message.departure.reason == "bye"
    with pytest.raises(Rejected) as wrong:
        _validator("another-federation", policy).open(data, signature_verified=True)
    assert wrong.value.reason == RejectReason.REJECT_WRONG_FEDERATION
    policy.add_revocation(issuer.federation_id, revoke(issuer, member_public_key=member.public_key))
    with pytest.raises(Rejected) as revoked:
        worker_side.open(data, signature_verified=True)
    assert revoked.value.reason == RejectReason.REJECT_REVOKED
    # Without the mark the worker verifies, as a single-process node does.
    unmarked = _validator()
    unmarked.open(_departure(member))
    assert unmarked.signature_checks == 1


def test_the_same_bytes_checked_twice_are_verified_once_and_the_rules_still_apply() -> None:
    # With pushes on, a message reaches the mesh's validator twice: pushed, then gossiped.
    issuer, member, policy, data = _certified_departure()
    validator = _validator(issuer.federation_id, policy)
    assert validator.check(data, member.peer_id) is None
    assert validator.check(data, member.peer_id) is None
    assert validator.signature_checks == 1
    policy.add_revocation(issuer.federation_id, revoke(issuer, member_public_key=member.public_key))
    assert validator.check(data, member.peer_id) == "revoked"
    assert validator.signature_checks == 1
    # A forged copy is different bytes: verified, and refused.
    forged = bytearray(_departure(member))
    forged[-1] ^= 0x01
    assert validator.check(bytes(forged), member.peer_id) == "bad_signature"
