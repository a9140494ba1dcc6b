"""Signed address records: made by a member, verified offline by anyone, newest wins."""

from __future__ import annotations

import pytest

from fednode.node.envelope import Rejected
from fednode.node.identity import Identity
from fednode.node.membership import issue_certificate
from fednode.node.membership.addresses import (
    address_record_key,
    decode_address_record,
    make_address_record,
    select_address_record,
    validate_address_record,
)

from .conftest import NOW

ADDRESSES = ["/ip4/198.18.0.2/tcp/7461/p2p/{peer}", "/ip4/10.0.0.2/tcp/7461/p2p/{peer}"]


def _record(federation, member: Identity, when: int = NOW, addresses: list[str] | None = None):
    certificate = issue_certificate(federation.issuer, member.public_key, now_unix_ms=NOW)
    wanted = addresses or [a.format(peer=member.peer_id) for a in ADDRESSES]
    return make_address_record(member, certificate, wanted, now_unix_ms=when)


def test_a_member_record_verifies_with_only_the_federation_id(federation, member) -> None:
    record = _record(federation, member)
    data = record.SerializeToString()
    key = address_record_key(federation.id, member.peer_id)
    validate_address_record(key, data)  # what any DHT node runs
    decoded = decode_address_record(data, federation.id, member.peer_id, now_unix_ms=NOW)
    assert list(decoded.multiaddrs) == [a.format(peer=member.peer_id) for a in ADDRESSES]


def test_forged_foreign_or_malformed_records_are_refused(federation, other_federation, member) -> None:
    record = _record(federation, member)
    key = address_record_key(federation.id, member.peer_id)
    # Another member cannot publish addresses under this member's key.
    intruder = Identity.generate()
    with pytest.raises(ValueError, match="another member"):
        validate_address_record(address_record_key(federation.id, intruder.peer_id), record.SerializeToString())
    assert len(key) <= 128  # the DHT's key limit
    # Changed addresses break the member's signature.
    tampered = type(record)()
    tampered.CopyFrom(record)
    tampered.multiaddrs[0] = f"/ip4/203.0.113.9/tcp/1/p2p/{member.peer_id}"
    with pytest.raises(ValueError, match="signature"):
        validate_address_record(key, tampered.SerializeToString())
    # A certificate of another federation does not root in this federation's id.
    foreign = _record(other_federation, member)
    with pytest.raises(ValueError):
        validate_address_record(key, foreign.SerializeToString())
    # Garbage, oversize and a record dated far ahead are refused.
    for junk in (b"\xff\x00garbage", b"x" * 20_000):
        with pytest.raises(ValueError):
            validate_address_record(key, junk)
    future = _record(federation, member, when=NOW + 3600 * 1000)
    with pytest.raises(Rejected, match="future"):
        decode_address_record(future.SerializeToString(), federation.id, member.peer_id, now_unix_ms=NOW)
    with pytest.raises(ValueError):
        validate_address_record(f"/fednode-addrs/{federation.id}/x", record.SerializeToString())  # not a key
    # A node key can only sign for itself.
    with pytest.raises(ValueError):
        make_address_record(intruder, record.certificate, ["/ip4/1.2.3.4/tcp/1"])


def test_the_newest_valid_record_is_selected(federation, member) -> None:
    key = address_record_key(federation.id, member.peer_id)
    older = _record(federation, member, when=NOW - 1000).SerializeToString()
    newer = _record(federation, member, when=NOW, addresses=[f"/ip4/198.18.0.2/tcp/7462/p2p/{member.peer_id}"])
    values = [older, b"junk", newer.SerializeToString()]
    assert select_address_record(key, values) == 2
    assert select_address_record(key, list(reversed(values))) == 0
