"""Garbage and mutated input to every parser: clear, typed errors, never a crash or an acceptance."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fednode.node.envelope import Rejected
from fednode.node.identity import Identity
from fednode.node.membership import (
    InvalidInvite,
    TrustPolicy,
    create_federation,
    decode_revocation_list,
    encode_revocation_list,
    encode_token,
    issue_certificate,
    issue_invite,
    parse_token,
    revocation_record_key,
    revoke,
    select_revocation_record,
    signing_input,
    validate_revocation_record,
    verify_certificate,
)
from fednode.proto.v1 import membership_pb2

NOW = 1_700_000_000_000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Built once: hypothesis re-runs the test body, key generation per example would only slow it down.
_ISSUER, _DESCRIPTOR = create_federation("fuzz", now_unix_ms=NOW)
_MEMBER = Identity.generate()
_CERTIFICATE = issue_certificate(_ISSUER, _MEMBER.public_key, now_unix_ms=NOW)
_INVITE, _ = issue_invite(_ISSUER, issuer_multiaddrs=["/ip4/192.0.2.1/tcp/1"], now_unix_ms=NOW)
_REVOCATION = revoke(_ISSUER, serial=bytes(16), now_unix_ms=NOW)
_FID = _ISSUER.federation_id


def _flip(data: bytes, positions: list[int], masks: list[int]) -> bytes:
    mutable = bytearray(data)
    for position, mask in zip(positions, masks, strict=False):
        mutable[position % len(mutable)] ^= mask
    return bytes(mutable)


mutations = st.tuples(st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
                      st.lists(st.integers(1, 255), min_size=1, max_size=4))


@FUZZ
@given(st.text(max_size=300))
def test_any_text_token_is_refused_cleanly(text: str) -> None:
    with pytest.raises(InvalidInvite) as info:
        parse_token(text, now_unix_ms=NOW)
    assert info.value.message  # a human-readable reason


@FUZZ
@given(st.binary(max_size=600))
def test_any_encoded_bytes_token_is_refused_cleanly(data: bytes) -> None:
    token = base64.urlsafe_b64encode(data).decode().rstrip("=")
    with pytest.raises(InvalidInvite):
        parse_token(token, now_unix_ms=NOW)


@FUZZ
@given(mutations)
def test_mutated_tokens_are_refused_or_unchanged(mutation) -> None:
    data = _flip(_INVITE.SerializeToString(), *mutation)
    token = base64.urlsafe_b64encode(data).decode().rstrip("=")
    try:
        invite = parse_token(token, now_unix_ms=NOW)
    except InvalidInvite:
        return
    # accepted only if the flip did not change what was signed (e.g. an unknown field's tag)
    assert signing_input(invite) == signing_input(_INVITE) and invite.signature == _INVITE.signature


@FUZZ
@given(st.binary(max_size=800))
def test_garbage_certificates_are_rejected(data: bytes) -> None:
    try:
        certificate = membership_pb2.MemberCertificate.FromString(data)
    except Exception:  # DecodeError: the envelope parser refuses it before the policy sees it
        return
    with pytest.raises(Rejected):
        verify_certificate(certificate, _FID, now_unix_ms=NOW)
    assert TrustPolicy(clock=lambda: NOW).check(_FID, _MEMBER.public_key, certificate) is not None


@FUZZ
@given(mutations)
def test_mutated_certificates_are_rejected_unless_unchanged(mutation) -> None:
    data = _flip(_CERTIFICATE.SerializeToString(), *mutation)
    try:
        certificate = membership_pb2.MemberCertificate.FromString(data)
    except Exception:
        return
    unchanged = signing_input(certificate) == signing_input(_CERTIFICATE) and certificate.signature == _CERTIFICATE.signature
    reason = TrustPolicy(clock=lambda: NOW).check(_FID, _MEMBER.public_key, certificate)
    assert (reason is None) == unchanged


@FUZZ
@given(st.binary(max_size=1000))
def test_garbage_revocation_records(data: bytes) -> None:
    key = revocation_record_key(_FID)
    with pytest.raises(Rejected):
        decode_revocation_list(data, _FID, now_unix_ms=NOW)
    with pytest.raises(ValueError):
        validate_revocation_record(key, data)
    valid = encode_revocation_list(_FID, [_REVOCATION])
    assert select_revocation_record(key, [data, valid]) == 1


@FUZZ
@given(st.binary(min_size=0, max_size=64), st.text(max_size=80))
def test_revocation_record_keys(data: bytes, key: str) -> None:
    assume(not key.startswith("/fednode-revocations/"))
    with pytest.raises(ValueError):
        validate_revocation_record(key, data)


def test_token_round_trip_is_stable() -> None:
    assert parse_token(encode_token(_INVITE), now_unix_ms=NOW) == _INVITE
