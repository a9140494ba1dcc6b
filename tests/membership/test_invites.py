"""Invite flow end to end (issuer store on disk, joiner, verifier) and every refusal status."""

from __future__ import annotations

import base64
import hashlib

import pytest

from fednode.node.identity import Identity
from fednode.node.membership import (
    CONTRIBUTOR,
    OBSERVER,
    InvalidInvite,
    Issuer,
    JoinRefused,
    MembershipStore,
    TrustPolicy,
    accept_join_response,
    delegate_admin,
    encode_token,
    issue_certificate,
    issue_invite,
    make_join_request,
    parse_token,
    redeem_invite,
    revoke,
)
from fednode.node.membership.invites import InviteRecord
from fednode.proto.v1 import membership_pb2

Status = membership_pb2.JoinResponse.Status
NOW = 1_700_000_000_000
HOUR = 3600 * 1000
DAY = 24 * HOUR
ADDRS = ["/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWissuer"]


@pytest.fixture
def issuer_store(tmp_path, federation) -> MembershipStore:
    owner = Identity.generate()
    store = MembershipStore(tmp_path / "issuer")
    store.save_membership(federation.descriptor, issue_certificate(federation.issuer, owner.public_key, now_unix_ms=NOW),
                          issuer=federation.issuer)
    return store


def _invite(store: MembershipStore, federation, **kwargs) -> membership_pb2.Invite:
    invite, record = issue_invite(federation.issuer, issuer_multiaddrs=ADDRS, issuer_peer_id="12D3KooWissuer",
                                  now_unix_ms=NOW, **kwargs)
    store.add_invite(record, now_unix_ms=NOW)
    return invite


def test_create_invite_redeem_verify_round_trip(tmp_path, federation, issuer_store, member) -> None:
    token = encode_token(_invite(issuer_store, federation))
    assert isinstance(token, str) and "=" not in token and "+" not in token and "/" not in token
    # joiner: only the token
    invite = parse_token(token, now_unix_ms=NOW + HOUR)
    assert list(invite.issuer_multiaddrs) == ADDRS and invite.federation_id == federation.id
    request = make_join_request(invite, member.public_key, display_name="bob", now_unix_ms=NOW + HOUR)
    wire_request = membership_pb2.JoinRequest.FromString(request.SerializeToString())
    # issuer
    response = issuer_store.redeem(wire_request, now_unix_ms=NOW + HOUR, bootstrap_multiaddrs=ADDRS,
                                   signer_public_key=member.public_key)
    assert response.status == Status.OK, response.message
    wire_response = membership_pb2.JoinResponse.FromString(response.SerializeToString())
    # joiner checks the answer against the federation id from the token, then stores it
    certificate, descriptor = accept_join_response(wire_response, invite, member.public_key, now_unix_ms=NOW + HOUR)
    assert certificate.role == CONTRIBUTOR and certificate.display_name == "bob"
    assert list(wire_response.bootstrap_multiaddrs) == ADDRS
    joiner_store = MembershipStore(tmp_path / "joiner")
    joiner_store.save_membership(descriptor, certificate, wire_response.revocations)
    assert joiner_store.certificate(federation.id) == certificate
    assert joiner_store.issuer(federation.id) is None
    # any third peer: only the federation id
    assert TrustPolicy().check(federation.id, member.public_key, certificate, now_unix_ms=NOW + 2 * HOUR) is None
    # the issuer kept only the hash of the secret, and counted the use
    [record] = issuer_store.invites(federation.id)
    assert record.secret_sha256 == hashlib.sha256(invite.secret).digest() and record.uses == 1
    stored = (issuer_store.root / federation.id / "invites.json").read_text()
    assert invite.secret.hex() not in stored and base64.b64encode(invite.secret).decode() not in stored


def test_refusal_statuses(federation, other_federation, issuer_store, member) -> None:
    invite = _invite(issuer_store, federation, ttl_ms=HOUR, max_uses=1)

    def status(request, when=NOW + 1000) -> int:
        response = issuer_store.redeem(request, now_unix_ms=when)
        assert (response.message and not response.HasField("certificate")) or response.status == Status.OK
        return response.status

    def request(**changes) -> membership_pb2.JoinRequest:
        made = make_join_request(invite, member.public_key, now_unix_ms=changes.pop("requested", NOW + 1000))
        for name, value in changes.items():
            setattr(made, name, value)
        return made

    assert status(request(secret=bytes(32))) == Status.BAD_SECRET
    assert status(request(invite_id=bytes(16))) == Status.UNKNOWN_INVITE
    assert status(request(federation_id=other_federation.id)) == Status.WRONG_FEDERATION
    assert status(request(member_public_key=b"short")) == Status.BAD_REQUEST
    assert status(request(display_name="x" * 500)) == Status.BAD_REQUEST
    signed_by_another = issuer_store.redeem(request(), now_unix_ms=NOW + 1000,
                                            signer_public_key=Identity.generate().public_key)
    assert signed_by_another.status == Status.BAD_REQUEST
    assert status(request(requested=NOW + 1000 - 10 * 60 * 1000)) == Status.CLOCK_SKEW
    assert status(request(requested=NOW + 1000 + 10 * 60 * 1000)) == Status.CLOCK_SKEW
    assert status(request(requested=NOW + 2 * HOUR), when=NOW + 2 * HOUR) == Status.EXPIRED
    assert issuer_store.invites(federation.id)[0].uses == 0  # no refusal used the invite up
    assert status(request()) == Status.OK
    someone_else = make_join_request(invite, Identity.generate().public_key, now_unix_ms=NOW + 2000)
    assert status(someone_else, when=NOW + 2000) == Status.EXHAUSTED


def test_invite_of_another_federation_on_the_same_issuer(tmp_path, federation, other_federation, member) -> None:
    store = MembershipStore(tmp_path)
    for fed in (federation, other_federation):
        store.save_membership(fed.descriptor, issuer=fed.issuer)
    invite = _invite(store, federation)
    request = make_join_request(invite, member.public_key, now_unix_ms=NOW)
    request.federation_id = other_federation.id
    assert store.redeem(request, now_unix_ms=NOW).status == Status.WRONG_FEDERATION
    # pure function: an issuer of another federation
    _, record = issue_invite(federation.issuer, now_unix_ms=NOW)
    response, updated = redeem_invite(other_federation.issuer, other_federation.descriptor, record,
                                      make_join_request(invite, member.public_key, now_unix_ms=NOW), now_unix_ms=NOW)
    assert response.status == Status.WRONG_FEDERATION and updated is None


def test_unknown_federation_at_the_issuer(tmp_path, federation, member) -> None:
    store = MembershipStore(tmp_path)
    invite, _ = issue_invite(federation.issuer, now_unix_ms=NOW)
    assert store.redeem(make_join_request(invite, member.public_key, now_unix_ms=NOW),
                        now_unix_ms=NOW).status == Status.WRONG_FEDERATION


def test_multi_use_and_unlimited_invites(federation, issuer_store) -> None:
    three = _invite(issuer_store, federation, max_uses=3)
    unlimited = _invite(issuer_store, federation, max_uses=0, role=OBSERVER)
    statuses = [issuer_store.redeem(make_join_request(three, Identity.generate().public_key, now_unix_ms=NOW),
                                    now_unix_ms=NOW).status for _ in range(4)]
    assert statuses == [Status.OK] * 3 + [Status.EXHAUSTED]
    for _ in range(5):
        response = issuer_store.redeem(make_join_request(unlimited, Identity.generate().public_key, now_unix_ms=NOW),
                                       now_unix_ms=NOW)
        assert response.status == Status.OK and response.certificate.role == OBSERVER


def test_retry_after_a_lost_answer_keeps_the_serial(federation, issuer_store, member) -> None:
    invite = _invite(issuer_store, federation, max_uses=1)
    first = issuer_store.redeem(make_join_request(invite, member.public_key, now_unix_ms=NOW), now_unix_ms=NOW)
    again = issuer_store.redeem(make_join_request(invite, member.public_key, now_unix_ms=NOW + 5000), now_unix_ms=NOW + 5000)
    assert first.status == again.status == Status.OK
    assert first.certificate.serial == again.certificate.serial  # a revocation by serial covers both
    assert issuer_store.invites(federation.id)[0].uses == 1


def test_join_response_carries_known_revocations(federation, issuer_store, member) -> None:
    revocation = revoke(federation.issuer, member_public_key=Identity.generate().public_key, now_unix_ms=NOW)
    issuer_store.add_revocation(federation.id, revocation, now_unix_ms=NOW)
    invite = _invite(issuer_store, federation)
    response = issuer_store.redeem(make_join_request(invite, member.public_key, now_unix_ms=NOW), now_unix_ms=NOW)
    assert list(response.revocations) == [revocation]


def test_admin_issued_invite_and_certificate(federation, tmp_path, member) -> None:
    admin_identity = Identity.generate()
    delegation = delegate_admin(federation.issuer, admin_identity.public_key, not_before_unix_ms=NOW,
                                not_after_unix_ms=NOW + 30 * DAY)
    admin = Issuer(federation.id, admin_identity.private_key, delegation)
    store = MembershipStore(tmp_path)
    store.save_membership(federation.descriptor, issuer=admin)
    invite, record = issue_invite(admin, now_unix_ms=NOW)
    store.add_invite(record, now_unix_ms=NOW)
    parsed = parse_token(encode_token(invite), now_unix_ms=NOW)
    assert parsed.HasField("delegation")
    response = store.redeem(make_join_request(parsed, member.public_key, now_unix_ms=NOW), now_unix_ms=NOW)
    certificate, _ = accept_join_response(response, parsed, member.public_key, now_unix_ms=NOW)
    assert certificate.issuer_public_key == admin_identity.public_key
    assert store.issuer(federation.id).delegation == delegation
    with pytest.raises(InvalidInvite, match=r"no longer delegated|expired"):
        parse_token(encode_token(invite), now_unix_ms=NOW + 31 * DAY)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("not a token!", "outside base64url"),
        ("A" * 9000, "longer than"),
        ("QQ", "does not decode to an invite|not valid base64url|federation id"),
        ("A", "not valid base64url"),
    ],
)
def test_parse_token_errors_are_clear(token: str, message: str) -> None:
    with pytest.raises(InvalidInvite, match=message):
        parse_token(token)


def test_parse_token_detects_tampering_expiry_and_forgery(federation, other_federation) -> None:
    invite, _ = issue_invite(federation.issuer, ttl_ms=HOUR, now_unix_ms=NOW)
    token = encode_token(invite)
    wrapped = "\n".join(token[i:i + 60] for i in range(0, len(token), 60))
    assert parse_token(wrapped, now_unix_ms=NOW) == invite  # e-mail line wrapping is tolerated
    assert parse_token(token + "=" * (-len(token) % 4), now_unix_ms=NOW) == invite  # padded form too
    with pytest.raises(InvalidInvite, match="expired"):
        parse_token(token, now_unix_ms=NOW + 2 * HOUR)
    tampered = membership_pb2.Invite.FromString(invite.SerializeToString())
    tampered.max_uses = 1000
    with pytest.raises(InvalidInvite, match="altered or forged"):
        parse_token(encode_token(tampered), now_unix_ms=NOW)
    redirected = membership_pb2.Invite.FromString(invite.SerializeToString())
    redirected.issuer_multiaddrs.append("/ip4/203.0.113.66/tcp/1")
    with pytest.raises(InvalidInvite, match="altered or forged"):
        parse_token(encode_token(redirected), now_unix_ms=NOW)
    # signed by another federation's key while naming this federation
    forged = membership_pb2.Invite.FromString(invite.SerializeToString())
    other_federation.issuer.stamp(forged)
    with pytest.raises(InvalidInvite, match="not issued by the federation"):
        parse_token(encode_token(forged), now_unix_ms=NOW)
    truncated = token[: len(token) // 2]
    with pytest.raises(InvalidInvite):
        parse_token(truncated, now_unix_ms=NOW)


def test_joiner_refuses_a_bad_answer(federation, other_federation, issuer_store, member) -> None:
    invite = _invite(issuer_store, federation)
    refused = membership_pb2.JoinResponse(status=Status.EXPIRED, message="the invite has expired")
    with pytest.raises(JoinRefused, match="EXPIRED") as info:
        accept_join_response(refused, invite, member.public_key, now_unix_ms=NOW)
    assert info.value.status == Status.EXPIRED
    response = issuer_store.redeem(make_join_request(invite, member.public_key, now_unix_ms=NOW), now_unix_ms=NOW)
    # a malicious issuer address answering with another federation's descriptor
    swapped = membership_pb2.JoinResponse()
    swapped.CopyFrom(response)
    swapped.descriptor.CopyFrom(other_federation.descriptor)
    with pytest.raises(JoinRefused):
        accept_join_response(swapped, invite, member.public_key, now_unix_ms=NOW)
    # a certificate for someone else's key
    with pytest.raises(JoinRefused, match="another key"):
        accept_join_response(response, invite, Identity.generate().public_key, now_unix_ms=NOW)


def test_invite_record_json_round_trip_and_validation(federation) -> None:
    _, record = issue_invite(federation.issuer, max_uses=2, now_unix_ms=NOW)
    assert InviteRecord.from_json(record.to_json()) == record
    broken = record.to_json()
    broken["max_uses"] = -1
    with pytest.raises(ValueError):
        InviteRecord.from_json(broken)
    with pytest.raises(ValueError):
        InviteRecord.from_json({**record.to_json(), "invite_id": "zz"})
