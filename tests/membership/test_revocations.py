"""Revocations (by serial, by key, of an admin), forged ones, the DHT record, and TrustPolicy."""

from __future__ import annotations

import threading

import pytest

from fednode.node.envelope import Rejected, RejectReason
from fednode.node.identity import Identity
from fednode.node.membership import (
    CONTRIBUTOR,
    OBSERVER,
    Issuer,
    TrustPolicy,
    decode_revocation_list,
    delegate_admin,
    encode_revocation_list,
    issue_certificate,
    revocation_record_key,
    revoke,
    select_revocation_record,
    signing_input,
    validate_revocation_record,
    verify_revocation,
)
from fednode.proto.v1 import membership_pb2

NOW = 1_700_000_000_000
DAY = 24 * 3600 * 1000


def _wire(message):
    return type(message).FromString(message.SerializeToString())


def test_revocation_by_serial_rejects_only_that_certificate(federation, member) -> None:
    old = issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW)
    new = issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW)
    policy = TrustPolicy(clock=lambda: NOW + 1000)
    assert policy.check(federation.id, member.public_key, old) is None
    revocation = revoke(federation.issuer, serial=bytes(old.serial), reason="lost laptop", now_unix_ms=NOW + 500)
    verify_revocation(_wire(revocation), federation.id, now_unix_ms=NOW + 1000)
    assert policy.add_revocation(federation.id, _wire(revocation)) is True
    assert policy.add_revocation(federation.id, _wire(revocation)) is False  # known: do not relay again
    assert policy.check(federation.id, member.public_key, old) == RejectReason.REJECT_REVOKED
    assert policy.check(federation.id, member.public_key, new) is None
    assert policy.revocations(federation.id) == [revocation]


def test_revocation_by_key_rejects_every_certificate_of_the_key(federation, member) -> None:
    certificates = [issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW) for _ in range(3)]
    bystander = Identity.generate()
    bystander_cert = issue_certificate(federation.issuer, bystander.public_key, now_unix_ms=NOW)
    policy = TrustPolicy(clock=lambda: NOW)
    policy.add_revocation(federation.id, revoke(federation.issuer, member_public_key=member.public_key, now_unix_ms=NOW))
    assert {policy.check(federation.id, member.public_key, c) for c in certificates} == {RejectReason.REJECT_REVOKED}
    assert policy.check(federation.id, bystander.public_key, bystander_cert) is None
    assert policy.is_revoked(federation.id, member_public_key=member.public_key)


def test_revoking_an_admin_key_withdraws_what_it_issued(federation, member) -> None:
    admin_identity = Identity.generate()
    admin = Issuer(federation.id, admin_identity.private_key,
                   delegate_admin(federation.issuer, admin_identity.public_key, not_before_unix_ms=NOW))
    certificate = issue_certificate(admin, member.public_key, now_unix_ms=NOW)
    policy = TrustPolicy(clock=lambda: NOW)
    assert policy.check(federation.id, member.public_key, certificate) is None
    policy.add_revocation(federation.id, revoke(federation.issuer, member_public_key=admin_identity.public_key, now_unix_ms=NOW))
    assert policy.check(federation.id, member.public_key, certificate) == RejectReason.REJECT_REVOKED


def test_admin_revocations_are_valid_inside_the_delegation_only(federation, member) -> None:
    admin_identity = Identity.generate()
    admin = Issuer(federation.id, admin_identity.private_key,
                   delegate_admin(federation.issuer, admin_identity.public_key, not_before_unix_ms=NOW,
                                  not_after_unix_ms=NOW + DAY))
    revocation = revoke(admin, member_public_key=member.public_key, now_unix_ms=NOW + 1000)
    verify_revocation(revocation, federation.id, now_unix_ms=NOW + 30 * DAY)  # stays valid afterwards
    late = membership_pb2.Revocation()
    late.CopyFrom(revocation)
    late.revoked_unix_ms = NOW + 2 * DAY
    late.signature = admin_identity.sign(signing_input(late))
    with pytest.raises(Rejected) as info:
        verify_revocation(late, federation.id, now_unix_ms=NOW + 30 * DAY)
    assert info.value.reason == RejectReason.REJECT_CERT_EXPIRED


def test_forged_revocations_are_rejected(federation, other_federation, member) -> None:
    genuine = revoke(federation.issuer, member_public_key=member.public_key, now_unix_ms=NOW)
    attacker = Identity.generate()
    cases = {}
    by_member = membership_pb2.Revocation()
    by_member.CopyFrom(genuine)
    by_member.issuer_public_key = attacker.public_key  # anyone "revoking" a member
    by_member.signature = attacker.sign(signing_input(by_member))
    cases["self-made"] = (by_member, RejectReason.REJECT_BAD_SIGNATURE)
    retargeted = _wire(genuine)
    retargeted.member_public_key = Identity.generate().public_key
    cases["retargeted"] = (retargeted, RejectReason.REJECT_BAD_SIGNATURE)
    foreign = revoke(other_federation.issuer, member_public_key=member.public_key, now_unix_ms=NOW)
    cases["other federation"] = (foreign, RejectReason.REJECT_WRONG_FEDERATION)
    relabeled = _wire(foreign)
    relabeled.federation_id = federation.id
    other_federation.issuer.stamp(relabeled)
    cases["other federation key"] = (relabeled, RejectReason.REJECT_BAD_SIGNATURE)
    both = _wire(genuine)
    both.serial = bytes(16)
    cases["serial and key"] = (both, RejectReason.REJECT_MALFORMED)
    future = revoke(federation.issuer, member_public_key=member.public_key, now_unix_ms=NOW + 10 * DAY)
    cases["from the future"] = (future, RejectReason.REJECT_STALE)
    policy = TrustPolicy(clock=lambda: NOW)
    certificate = issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW)
    for name, (revocation, reason) in cases.items():
        with pytest.raises(Rejected) as info:
            policy.add_revocation(federation.id, revocation)
        assert info.value.reason == reason, name
    assert policy.check(federation.id, member.public_key, certificate) is None
    with pytest.raises(ValueError):
        revoke(federation.issuer, member_public_key=federation.issuer.public_key)
    with pytest.raises(ValueError):
        revoke(federation.issuer)


def test_dht_record_validate_select_and_merge(federation, other_federation) -> None:
    revocations = [revoke(federation.issuer, member_public_key=Identity.generate().public_key, now_unix_ms=NOW + i)
                   for i in range(3)]
    key = revocation_record_key(federation.id)
    assert key == f"/fednode-revocations/{federation.id}"
    small = encode_revocation_list(federation.id, revocations[:1])
    large = encode_revocation_list(federation.id, list(reversed(revocations)) + revocations[:1])  # dups, any order
    assert large == encode_revocation_list(federation.id, revocations)  # canonical bytes
    validate_revocation_record(key, small)
    validate_revocation_record(key, large)
    assert decode_revocation_list(large, federation.id, now_unix_ms=NOW) == sorted(
        revocations, key=lambda r: bytes(r.signature))
    forged = membership_pb2.RevocationList.FromString(large)
    forged.revocations[0].reason = "edited"
    bad = forged.SerializeToString()
    foreign = encode_revocation_list(other_federation.id, [revoke(other_federation.issuer, serial=bytes(16))])
    for value in (bad, foreign, b"\xff\x00garbage"):
        with pytest.raises(ValueError):
            validate_revocation_record(key, value)
    with pytest.raises(ValueError):
        validate_revocation_record("/fednode-revocations/../../etc", small)
    assert select_revocation_record(key, [small, bad, large, foreign]) == 2
    assert select_revocation_record(key, [large, small]) == 0


def test_policy_roles_senders_and_remembered_certificates(federation, member) -> None:
    observer = Identity.generate()
    contributor_cert = issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW)
    observer_cert = issue_certificate(federation.issuer, observer.public_key, role=OBSERVER, now_unix_ms=NOW)
    policy = TrustPolicy(clock=lambda: NOW)
    assert policy.check(federation.id, observer.public_key, observer_cert) is None
    assert policy.check(federation.id, observer.public_key, observer_cert, roles={CONTRIBUTOR}) == RejectReason.REJECT_NOT_MEMBER
    # someone presenting a genuine certificate of another member
    assert policy.check(federation.id, observer.public_key, contributor_cert) == RejectReason.REJECT_NOT_MEMBER
    # no certificate at all: unknown key, then a key that presented one before
    stranger = Identity.generate()
    assert policy.check(federation.id, stranger.public_key, None) == RejectReason.REJECT_NOT_MEMBER
    assert policy.check(federation.id, member.public_key, contributor_cert) is None
    assert policy.check(federation.id, member.public_key, None) is None
    assert policy.member(federation.id, member.public_key).role == CONTRIBUTOR
    assert policy.check(federation.id, member.public_key, None, now_unix_ms=NOW + 400 * DAY) == RejectReason.REJECT_CERT_EXPIRED
    policy.forget(federation.id)
    assert policy.check(federation.id, member.public_key, None) == RejectReason.REJECT_NOT_MEMBER


def test_policy_cache_cannot_be_poisoned(federation, member) -> None:
    """A forged certificate reusing a cached one's serial and signature is still checked in full."""
    certificate = issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW)
    policy = TrustPolicy(clock=lambda: NOW, cache_size=2)
    for _ in range(100):
        assert policy.check(federation.id, member.public_key, _wire(certificate)) is None
    assert policy.cached_certificates == 1
    attacker = Identity.generate()
    forged = _wire(certificate)
    forged.member_public_key = attacker.public_key
    forged.member_peer_id = attacker.peer_id
    assert policy.check(federation.id, attacker.public_key, forged) == RejectReason.REJECT_BAD_SIGNATURE
    for _ in range(5):  # evictions keep the cache bounded
        policy.check(federation.id, member.public_key, issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW))
    assert policy.cached_certificates <= 2


def test_policy_is_thread_safe_while_revocations_arrive(federation) -> None:
    members = [Identity.generate() for _ in range(8)]
    certificates = [issue_certificate(federation.issuer, m.public_key, now_unix_ms=NOW) for m in members]
    revocations = [revoke(federation.issuer, serial=bytes(c.serial), now_unix_ms=NOW) for c in certificates[:4]]
    policy = TrustPolicy(clock=lambda: NOW, cache_size=4)  # small: evictions race with lookups
    errors: list[BaseException] = []
    start = threading.Barrier(5)

    def checker(offset: int) -> None:
        try:
            start.wait()
            for i in range(400):
                index = (i + offset) % len(members)
                reason = policy.check(federation.id, members[index].public_key, certificates[index])
                assert reason in (None, RejectReason.REJECT_REVOKED)
                if index >= 4:
                    assert reason is None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=checker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    for revocation in revocations:
        policy.add_revocation(federation.id, revocation)
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    assert [policy.check(federation.id, m.public_key, c) for m, c in zip(members, certificates, strict=True)] == \
        [RejectReason.REJECT_REVOKED] * 4 + [None] * 4
