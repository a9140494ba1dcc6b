"""A member's messages around its departure, in the orders push and gossip deliver them.

Found under CPU load: a joiner left, the owner got its departure by push and then the gossip copy
of an announcement the joiner had sent just before leaving, which brought it back; the owner then
waited for it for good (tests/admin: "departure seen")."""

from __future__ import annotations

from fednode.node.federation.runner import MemberView


def test_a_message_sent_before_the_departure_and_delivered_after_it_is_dropped() -> None:
    member = MemberView("peer")
    assert member.admit("update", 1_000)
    assert member.admit("departure", 1_005)
    for late in ("announcement", "update", "snapshot", "schedule"):
        assert not member.admit(late, 1_004), late  # its gossip copy, late
    assert not member.admit("announcement", 1_005)  # same millisecond: sent before it left
    assert member.departed_ms == 1_005


def test_a_departure_overtaken_by_newer_messages_is_dropped() -> None:
    # It left and came back quickly; the old departure arrives last.
    member = MemberView("peer")
    assert member.admit("announcement", 2_000)
    assert not member.admit("departure", 1_500)
    assert member.departed_ms == 0


def test_a_newer_message_after_a_departure_brings_the_member_back() -> None:
    member = MemberView("peer")
    assert member.admit("departure", 3_000)
    assert member.admit("announcement", 3_001)
    assert member.departed_ms == 0
    assert member.admit("update", 3_000)  # back: its older copies count again, as before it left


def test_revocations_are_always_admitted() -> None:
    member = MemberView("peer")
    assert member.admit("departure", 5_000)
    assert member.admit("revocation", 4_000)
    assert member.departed_ms == 5_000
