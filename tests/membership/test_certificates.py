"""Federations, delegations and certificates: real Ed25519, verified with only the federation id."""

from __future__ import annotations

import hashlib

import pytest

from fednode.node.envelope import Rejected, RejectReason
from fednode.node.identity import Identity
from fednode.node.membership import (
    CONTRIBUTOR,
    OBSERVER,
    Issuer,
    MembershipError,
    create_federation,
    delegate_admin,
    federation_id_for,
    issue_certificate,
    signing_input,
    verify_certificate,
    verify_descriptor,
)
from fednode.node.membership.signing import SIGNING_DOMAIN
from fednode.proto.v1 import membership_pb2

NOW = 1_700_000_000_000
DAY = 24 * 3600 * 1000


def _reason(call) -> int:
    with pytest.raises(Rejected) as info:
        call()
    return info.value.reason


def _wire(certificate: membership_pb2.MemberCertificate) -> membership_pb2.MemberCertificate:
    """What a peer receives: the bytes, parsed again (no object shared with the issuer)."""
    return membership_pb2.MemberCertificate.FromString(certificate.SerializeToString())


def test_federation_id_is_the_hash_of_the_key_and_the_descriptor_verifies(federation) -> None:
    descriptor = federation.descriptor
    assert descriptor.federation_id == hashlib.sha256(descriptor.federation_public_key).hexdigest()
    assert federation.id == descriptor.federation_id == federation_id_for(federation.issuer.public_key)
    assert descriptor.aggregator == "multi_krum" and descriptor.schedule == "sync"
    verify_descriptor(membership_pb2.FederationDescriptor.FromString(descriptor.SerializeToString()), federation.id)


def test_descriptor_tampering_and_substitution_are_refused(federation, other_federation) -> None:
    tampered = membership_pb2.FederationDescriptor()
    tampered.CopyFrom(federation.descriptor)
    tampered.min_participants = 99
    assert _reason(lambda: verify_descriptor(tampered, federation.id)) == RejectReason.REJECT_BAD_SIGNATURE
    assert _reason(lambda: verify_descriptor(other_federation.descriptor, federation.id)) == RejectReason.REJECT_WRONG_FEDERATION
    relabeled = membership_pb2.FederationDescriptor()
    relabeled.CopyFrom(other_federation.descriptor)
    relabeled.federation_id = federation.id  # claims the id, but the key hashes elsewhere
    assert _reason(lambda: verify_descriptor(relabeled, federation.id)) == RejectReason.REJECT_BAD_SIGNATURE


def test_create_federation_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="schedule"):
        create_federation("x", schedule="weekly")
    with pytest.raises(ValueError, match="JSON object"):
        create_federation("x", aggregator_params_json="[1, 2]")
    with pytest.raises(ValueError, match="characters"):
        create_federation("x" * 129)


def test_signature_covers_domain_type_and_fields(federation, member) -> None:
    certificate = issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW)
    data = signing_input(certificate)
    assert data.startswith(SIGNING_DOMAIN + b"fednode.v1.MemberCertificate\x00")
    unsigned = membership_pb2.MemberCertificate()
    unsigned.CopyFrom(certificate)
    unsigned.ClearField("signature")
    assert data.endswith(unsigned.SerializeToString(deterministic=True))
    assert certificate.signature  # signing_input never clears the caller's message


def test_certificate_verifies_offline_with_only_the_federation_id(federation, member) -> None:
    certificate = issue_certificate(federation.issuer, member.public_key, display_name="alice",
                                    ttl_ms=30 * DAY, now_unix_ms=NOW)
    federation_id = federation.id
    del federation  # the verifier holds nothing else: no key, no descriptor, no network
    verified = verify_certificate(_wire(certificate), federation_id, now_unix_ms=NOW + DAY)
    assert verified.member_public_key == member.public_key
    assert verified.member_peer_id == member.peer_id
    assert verified.role == CONTRIBUTOR and verified.display_name == "alice" and not verified.delegated
    assert (verified.not_before_ms, verified.not_after_ms) == (NOW, NOW + 30 * DAY)
    assert len(verified.serial) == 16


def test_certificate_validity_window_with_clock_skew(federation, member) -> None:
    certificate = issue_certificate(federation.issuer, member.public_key, ttl_ms=DAY, now_unix_ms=NOW)
    verify_certificate(certificate, federation.id, now_unix_ms=NOW - 30_000, clock_skew_ms=60_000)
    verify_certificate(certificate, federation.id, now_unix_ms=NOW + DAY + 30_000, clock_skew_ms=60_000)
    for when in (NOW - 61_000, NOW + DAY + 61_000):
        assert _reason(lambda when=when: verify_certificate(certificate, federation.id, now_unix_ms=when,
                                                            clock_skew_ms=60_000)) == RejectReason.REJECT_CERT_EXPIRED
    forever = issue_certificate(federation.issuer, member.public_key, ttl_ms=0, now_unix_ms=NOW)
    verify_certificate(forever, federation.id, now_unix_ms=NOW + 100 * 365 * DAY)


def test_forged_certificates_are_rejected(federation, other_federation, member) -> None:
    certificate = issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW)
    attacker = Identity.generate()

    def mutated(**changes) -> membership_pb2.MemberCertificate:
        forged = _wire(certificate)
        for name, value in changes.items():
            setattr(forged, name, value)
        return forged

    check = lambda cert, fid=federation.id: _reason(lambda: verify_certificate(cert, fid, now_unix_ms=NOW))  # noqa: E731
    # bad signature
    assert check(mutated(signature=bytes(64))) == RejectReason.REJECT_BAD_SIGNATURE
    assert check(mutated(signature=bytes(reversed(certificate.signature)))) == RejectReason.REJECT_BAD_SIGNATURE
    # swapped member key (peer id kept consistent so only the signature can catch it)
    assert check(mutated(member_public_key=attacker.public_key, member_peer_id=attacker.peer_id)) == RejectReason.REJECT_BAD_SIGNATURE
    assert check(mutated(member_public_key=attacker.public_key)) == RejectReason.REJECT_MALFORMED
    # upgraded role, extended expiry
    assert check(mutated(role=OBSERVER)) == RejectReason.REJECT_BAD_SIGNATURE
    assert check(mutated(not_after_unix_ms=certificate.not_after_unix_ms + DAY)) == RejectReason.REJECT_BAD_SIGNATURE
    # presented to another federation
    assert check(certificate, other_federation.id) == RejectReason.REJECT_NOT_MEMBER
    # issued by another federation's key but claiming this federation
    foreign = issue_certificate(other_federation.issuer, attacker.public_key, now_unix_ms=NOW)
    foreign.federation_id = federation.id
    other_federation.issuer.stamp(foreign)  # validly signed by a key that is not this federation's
    assert check(foreign) == RejectReason.REJECT_BAD_SIGNATURE
    # self-signed by the member itself
    self_signed = _wire(certificate)
    self_signed.issuer_public_key = attacker.public_key
    self_signed.signature = attacker.sign(signing_input(self_signed))
    assert check(self_signed) == RejectReason.REJECT_BAD_SIGNATURE


def test_delegated_admin_chain_valid_and_expired(federation, member) -> None:
    admin_key = Identity.generate()
    delegation = delegate_admin(federation.issuer, admin_key.public_key, not_before_unix_ms=NOW,
                                not_after_unix_ms=NOW + 10 * DAY)
    admin = Issuer(federation.id, admin_key.private_key, delegation)
    certificate = issue_certificate(admin, member.public_key, ttl_ms=365 * DAY, now_unix_ms=NOW + DAY)
    assert certificate.not_after_unix_ms == NOW + 10 * DAY  # never outlives the delegation
    verified = verify_certificate(_wire(certificate), federation.id, now_unix_ms=NOW + 2 * DAY)
    assert verified.delegated and verified.issuer_public_key == admin_key.public_key
    # the chain ends: expired delegation -> expired certificate, even with an unbounded one
    forever = issue_certificate(admin, member.public_key, ttl_ms=0, now_unix_ms=NOW + DAY)
    forever_verified = verify_certificate(forever, federation.id, now_unix_ms=NOW + 2 * DAY)
    assert forever_verified.not_after_ms == NOW + 10 * DAY
    assert _reason(lambda: verify_certificate(forever, federation.id, now_unix_ms=NOW + 11 * DAY,
                                              clock_skew_ms=0)) == RejectReason.REJECT_CERT_EXPIRED
    with pytest.raises(MembershipError, match="delegation"):
        issue_certificate(admin, member.public_key, now_unix_ms=NOW + 11 * DAY)


def test_forged_delegations_are_rejected(federation, other_federation, member) -> None:
    admin_key = Identity.generate()
    # a delegation signed by another federation's key, relabeled for this federation
    rogue = delegate_admin(other_federation.issuer, admin_key.public_key, not_before_unix_ms=NOW)
    rogue.federation_id = federation.id
    with pytest.raises(MembershipError):
        Issuer(federation.id, admin_key.private_key, rogue)
    genuine = delegate_admin(federation.issuer, admin_key.public_key, not_before_unix_ms=NOW)
    admin = Issuer(federation.id, admin_key.private_key, genuine)
    certificate = issue_certificate(admin, member.public_key, now_unix_ms=NOW)
    for field, value in (("delegation.not_after_unix_ms", NOW + 1), ("delegation.federation_public_key", other_federation.issuer.public_key),
                         ("delegation.admin_public_key", member.public_key), ("delegation.federation_id", other_federation.id)):
        forged = _wire(certificate)
        setattr(forged.delegation, field.split(".")[1], value)
        assert _reason(lambda forged=forged: verify_certificate(forged, federation.id, now_unix_ms=NOW)) in (
            RejectReason.REJECT_BAD_SIGNATURE, RejectReason.REJECT_NOT_MEMBER), field
    # an admin cannot re-delegate, and a key cannot pose as the federation key
    with pytest.raises(MembershipError):
        delegate_admin(admin, Identity.generate().public_key)
    with pytest.raises(MembershipError):
        Issuer(federation.id, admin_key.private_key)
