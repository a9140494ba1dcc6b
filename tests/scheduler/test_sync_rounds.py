"""Synchronous k-of-n round decisions on a simulated clock."""

from __future__ import annotations

import itertools

import pytest

from fednode.node.scheduler import SyncPolicy, SyncRound, adoptable_snapshot, byzantine_budget, outvoted_round

ME, A, B, C = "me", "peer-a", "peer-b", "peer-c"


def tracker(min_participants: int = 2, **kw: float) -> SyncRound:
    return SyncRound(ME, SyncPolicy(min_participants=min_participants, **kw))


def test_closes_at_once_when_every_expected_member_reported() -> None:
    rounds = tracker(min_participants=3)
    rounds.start(1, now=0.0, own_train_seconds=0.2)
    for peer in (A, B):
        rounds.note_member(peer)
    rounds.record(ME, 0.2, 1)
    rounds.record(A, 0.3, 1)
    assert not rounds.decide(0.3).close
    rounds.record(B, 0.4, 1)
    decision = rounds.decide(0.4)
    assert decision.close and decision.reason == "all expected members reported"


def test_a_dead_peer_costs_one_deadline_then_is_no_longer_expected() -> None:
    rounds = tracker(min_participants=2, min_wait=0.5, absent_after=1)
    for peer in (A, B):
        rounds.note_member(peer)
    now = 0.0
    closes = []
    for number in range(1, 5):
        rounds.start(number, now, own_train_seconds=0.2)
        rounds.record(ME, now + 0.2, number)
        rounds.record(A, now + 0.25, number)  # B died before round 1
        t = now + 0.25
        decision = rounds.decide(t)
        while not decision.close:
            t = decision.wait_until
            decision = rounds.decide(t)
        closes.append(round(t - now, 3))
        now = t
    # Round 1 waits for B until the deadline; afterwards B is absent and rounds close at once.
    assert closes[0] >= 0.5
    assert closes[1:] == [0.25, 0.25, 0.25]
    assert B not in rounds.expected()


def test_a_member_whose_updates_arrive_just_after_close_is_expected_again() -> None:
    """A member that dropped out of the expected set and is then always a few ms late (it was
    restarted a round behind) must not stay excluded: its late update, in before the deadline
    the round would have waited until, is a sign of life, so the next round waits for it."""
    rounds = tracker(min_participants=2, min_wait=0.5, absent_after=1)
    rounds.note_member(A)
    rounds.note_member(B)
    for number in (1, 2, 3):  # B is silent (being restarted): it stops being expected
        rounds.start(number, float(number), own_train_seconds=0.2)
        rounds.record(ME, number + 0.2, number)
        rounds.record(A, number + 0.2, number)
    assert B not in rounds.expected()
    rounds.start(4, 4.0, own_train_seconds=0.2)
    rounds.record(ME, 4.2, 4)
    rounds.record(A, 4.2, 4)
    assert rounds.decide(4.2).close  # closes without B ...
    rounds.start(5, 4.3, own_train_seconds=0.2)
    rounds.record_late(B, 4.31, 4)  # ... whose round-4 update comes in 110 ms later
    assert B in rounds.expected()
    rounds.record(ME, 4.5, 5)
    rounds.record(A, 4.5, 5)
    decision = rounds.decide(4.5)
    assert not decision.close and decision.missing == (B,)
    rounds.record(B, 4.51, 5)
    assert rounds.decide(4.51).close


def test_a_straggler_later_than_the_deadline_is_not_waited_for_again() -> None:
    """Waiting for a member whose updates come after the deadline would cost every round its
    deadline and still leave it out: only a late update that beat the deadline counts."""
    rounds = tracker(min_participants=2, min_wait=0.5, absent_after=1)
    rounds.note_member(A)
    rounds.note_member(B)
    for number in (1, 2, 3):
        rounds.start(number, float(number), own_train_seconds=0.2)
        rounds.record(ME, number + 0.2, number)
        rounds.record(A, number + 0.2, number)
    rounds.start(4, 4.0, own_train_seconds=0.2)
    late_deadline = rounds.deadline()
    rounds.record_late(B, late_deadline + 0.01, 4)  # still round 4 here: its own deadline counts
    assert B not in rounds.expected()
    rounds.start(5, late_deadline, own_train_seconds=0.2)
    rounds.record_late(B, late_deadline + 0.01, 4)  # the previous round's deadline counts
    rounds.record_late(B, 4.1, 2)  # an update for an older round brings nobody back
    assert B not in rounds.expected()
    rounds.record_late(B, 4.1, 4)
    assert B in rounds.expected()


def test_deadline_follows_measured_arrivals_within_bounds() -> None:
    rounds = tracker(min_participants=2, patience=3.0, min_wait=0.1, max_wait=10.0)
    rounds.note_member(A)
    rounds.start(1, 100.0, own_train_seconds=2.0)
    assert rounds.deadline() == pytest.approx(106.0)  # before measurements: own training time
    rounds.record(ME, 101.0, 1)
    rounds.record(A, 101.0, 1)
    rounds.start(2, 200.0, own_train_seconds=2.0)
    assert rounds.deadline() == pytest.approx(203.0)  # 3 x the typical 1 s arrival
    slow = tracker(min_participants=2, patience=3.0, max_wait=5.0)
    slow.start(1, 0.0, own_train_seconds=100.0)
    assert slow.deadline() == 5.0


def test_members_without_a_measured_arrival_get_the_first_contact_wait() -> None:
    rounds = tracker(min_participants=2, patience=3.0, min_wait=0.5, first_contact_wait=4.0)
    for peer in (A, B):
        rounds.note_member(peer)
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.record(ME, 0.1, 1)
    rounds.record(A, 0.2, 1)
    # B has never delivered: round 1 waits first_contact_wait for it, not 3 x 0.1 s.
    assert rounds.deadline() == pytest.approx(4.0)
    assert not rounds.decide(3.9).close
    rounds.record(B, 3.9, 1)
    assert rounds.decide(3.9).close
    # Everyone measured: back to patience x the typical arrival (floored by min_wait).
    rounds.start(2, 10.0, own_train_seconds=0.1)
    assert rounds.deadline() == pytest.approx(10.0 + 3.0 * 0.2)


def test_never_closes_below_min_participants_and_keeps_rechecking() -> None:
    rounds = tracker(min_participants=3, min_wait=0.5)
    rounds.note_member(A)
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.record(ME, 0.1, 1)
    rounds.record(A, 0.1, 1)
    decision = rounds.decide(100.0)
    assert not decision.close and decision.wait_until > 100.0
    assert "needed" in decision.reason
    rounds.record(B, 100.5, 1)  # a newcomer's update completes the minimum
    assert rounds.decide(100.5).close


def test_departed_peer_is_not_waited_for_and_returns_with_an_update() -> None:
    rounds = tracker(min_participants=2)
    for peer in (A, B):
        rounds.note_member(peer)
    rounds.depart(B)
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.record(ME, 0.1, 1)
    rounds.record(A, 0.1, 1)
    assert rounds.decide(0.1).close
    rounds.start(2, 1.0, own_train_seconds=0.1)
    rounds.record(B, 1.05, 2)
    assert B in rounds.expected()


def test_an_update_sent_before_the_departure_counts_but_does_not_bring_the_peer_back() -> None:
    # Its payload fetch finished after the departure arrived (the runner knows the order).
    rounds = tracker(min_participants=2)
    for peer in (A, B):
        rounds.note_member(peer)
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.depart(B)
    rounds.record(B, 0.05, 1, revive=False)
    assert B in rounds.reported and rounds.departed(B) and B not in rounds.expected()
    rounds.record_late(B, 0.06, 1, revive=False)
    assert rounds.departed(B)


def test_announcing_but_silent_peer_stops_being_expected() -> None:
    rounds = tracker(min_participants=1, absent_after=2)
    rounds.note_member(C)
    for number in range(1, 5):
        rounds.start(number, float(number), own_train_seconds=0.1)
        rounds.note_member(C)  # keeps announcing, never sends an update
    assert C not in rounds.expected()


def test_updates_for_other_rounds_do_not_count_for_this_one() -> None:
    rounds = tracker(min_participants=2)
    rounds.note_member(A)
    rounds.start(5, 0.0, own_train_seconds=0.1)
    rounds.record(ME, 0.1, 5)
    rounds.record(A, 0.1, 4)
    assert not rounds.decide(0.1).close


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        SyncPolicy(min_participants=0)
    with pytest.raises(ValueError):
        SyncPolicy(min_wait=2.0, max_wait=1.0)


# ------------------------------------------------------------------ outvoted models

X, Y, Z = b"x" * 32, b"y" * 32, b"z" * 32


def test_a_node_holding_a_minority_model_is_outvoted_at_the_newest_such_round() -> None:
    # 4 members; after round 7 the three others hold Y, we hold X.
    assert outvoted_round({7: X}, [(7, Y, 3)]) == 7
    # Offers arrive one by one: one Y against our X is a tie (nobody moves); two Y outvote us.
    assert outvoted_round({7: X}, [(7, Y, 1)]) is None
    assert outvoted_round({7: X}, [(7, Y, 2)]) == 7
    # Our hash held by others too: 2 x X (with us) against 2 x Y is a tie; 3 x Y wins.
    assert outvoted_round({7: X}, [(7, X, 1), (7, Y, 2)]) is None
    assert outvoted_round({7: X}, [(7, X, 1), (7, Y, 3)]) == 7
    # The newest outvoted round is reported; rounds we have no hash for are ignored.
    assert outvoted_round({6: X, 7: Y}, [(6, Y, 2), (7, Z, 2), (8, Z, 5)]) == 7


def test_the_majority_and_all_distinct_models_move_nobody() -> None:
    assert outvoted_round({7: Y}, [(7, Y, 2), (7, X, 1)]) is None  # we are the majority
    assert outvoted_round({7: X}, [(7, Y, 1), (7, Z, 1)]) is None  # every model distinct
    assert outvoted_round({7: X}, [(7, X, 3)]) is None  # everyone agrees
    assert outvoted_round({}, [(7, Y, 3)]) is None  # nothing of ours to compare
    # Offers for the same (round, hash) listed twice add up (several snapshot headers).
    assert outvoted_round({7: X}, [(7, Y, 1), (7, Y, 1)]) == 7


def test_a_snapshot_is_adopted_only_when_quorum_members_offer_it() -> None:
    # f = 0: any member's offer will do, the newest round first.
    assert adoptable_snapshot([(5, X, 1), (9, Y, 1)], quorum=1) == (9, Y)
    # f = 1: a lone member claiming a round nobody else reached (a poisoned model, or one it never
    # serves) is passed over for the newest round two members agree on.
    assert adoptable_snapshot([(5, X, 2), (9, Y, 1)], quorum=2) == (5, X)
    assert adoptable_snapshot([(9, Y, 1)], quorum=2) is None
    assert adoptable_snapshot([], quorum=1) is None
    # Two lone offers of different hashes for one round are not one endorsed model.
    assert adoptable_snapshot([(9, X, 1), (9, Y, 1)], quorum=2) is None
    # Counts of the same (round, hash) add up, whichever entries they come in.
    assert adoptable_snapshot([(9, Y, 1), (9, Y, 1)], quorum=2) == (9, Y)


def test_the_adopted_snapshot_is_the_majority_hash_then_the_smallest_whatever_the_order() -> None:
    offers = [(7, Z, 2), (7, Y, 3), (7, X, 2), (6, X, 4)]
    assert adoptable_snapshot(offers, quorum=2) == (7, Y)
    assert adoptable_snapshot(list(reversed(offers)), quorum=2) == (7, Y)
    tie = [(7, Z, 2), (7, X, 2)]
    assert adoptable_snapshot(tie, quorum=1) == adoptable_snapshot(list(reversed(tie)), quorum=1) == (7, X)
    with pytest.raises(ValueError, match="quorum"):
        adoptable_snapshot(offers, quorum=0)


# ------------------------------------------------------------------ liveness under f faults

MEMBERS = [f"peer-{i}" for i in range(6)]  # six others: a federation of seven with us


def krum_rows(byzantine: int) -> int:
    return 2 * byzantine + 3


def seven_members(min_participants: int = 4, **kw: float) -> SyncRound:
    rounds = SyncRound(ME, SyncPolicy(min_participants=min_participants, f=2, rows_needed=krum_rows, **kw))
    for peer in MEMBERS:
        rounds.note_member(peer)
    return rounds


def test_members_whose_updates_are_refused_do_not_stall_a_round_f_tolerates() -> None:
    """Seven members, f = 2, Multi-Krum (2f+3 = 7 rows): two members send NaN. Their refused
    updates are answers, and with both found faulty the five valid updates hold no Byzantine
    one: the round closes with them at once, instead of waiting for 7 valid updates forever."""
    rounds = seven_members()
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.record(ME, 0.1, 1)
    for peer in MEMBERS[:4]:
        rounds.record(peer, 0.2, 1)
    rounds.refuse(MEMBERS[4], 1)
    assert not rounds.decide(0.2).close  # one member has not answered yet
    rounds.refuse(MEMBERS[5], 1)
    decision = rounds.decide(0.25)
    assert decision.close and "2 update(s) refused" in decision.reason
    assert rounds.needed(2) == 4  # min_participants; the rule alone would need 2*0+3
    # A refused member's valid update later in the round counts as usual.
    rounds.record(MEMBERS[5], 0.3, 1)
    assert MEMBERS[5] in rounds.reported and MEMBERS[5] not in rounds.refused


def test_silent_members_count_as_faults_once_the_deadline_passed() -> None:
    rounds = seven_members(min_wait=0.5, first_contact_wait=0.5)
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.record(ME, 0.1, 1)
    for peer in MEMBERS[:4]:
        rounds.record(peer, 0.2, 1)  # two members crashed: silent
    before = rounds.decide(0.3)
    assert not before.close and not before.short and set(before.missing) == set(MEMBERS[4:])
    after = rounds.decide(rounds.deadline())
    assert after.close and "deadline passed; 2 member(s) missing" in after.reason


def test_a_round_short_of_valid_updates_keeps_waiting_and_says_why() -> None:
    """Three faulty members when f = 2: the four valid updates may still hold a Byzantine one
    (f - 3 < 0 only says the bound was exceeded), Krum needs 2*0+3 = 3 rows, and the operator's
    floor is 5: the round waits, and the decision says for what."""
    rounds = seven_members(min_participants=5)
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.record(ME, 0.1, 1)
    for peer in MEMBERS[:3]:
        rounds.record(peer, 0.2, 1)
    for peer in MEMBERS[3:]:
        rounds.refuse(peer, 1)
    decision = rounds.decide(100.0)
    assert not decision.close and decision.short and decision.wait_until > 100.0
    assert "have 4 valid update(s) of 7 known member(s), 5 needed" in decision.reason
    assert "min_participants = 5" in decision.reason


def test_with_few_members_known_the_rule_needs_its_full_f() -> None:
    # Only two members heard of yet: nobody is known to be faulty, so Krum with f = 2 needs 7.
    rounds = SyncRound(ME, SyncPolicy(min_participants=2, f=2, rows_needed=krum_rows))
    rounds.note_member(A)
    rounds.note_member(B)
    rounds.start(1, 0.0, own_train_seconds=0.1)
    for peer in (ME, A, B):
        rounds.record(peer, 0.1, 1)
    decision = rounds.decide(0.1)
    assert not decision.close and decision.short
    assert "7 needed" in decision.reason and "tolerate 2 Byzantine" in decision.reason


def test_members_no_longer_expected_count_as_unusable() -> None:
    """A member that crashed rounds ago is no longer expected, but it is still one of the f
    faults: later rounds keep closing with the others instead of asking for 2f+3 again."""
    rounds = seven_members(min_wait=0.5, first_contact_wait=0.5, absent_after=1)
    t = 0.0
    for number in range(1, 5):
        rounds.start(number, t, own_train_seconds=0.1)
        for peer in (ME, *MEMBERS[:4]):
            rounds.record(peer, t + 0.1, number)
        decision = rounds.decide(t + 0.1)
        while not decision.close:
            t = decision.wait_until
            decision = rounds.decide(t)
        t += 0.2
    assert MEMBERS[4] not in rounds.expected() and MEMBERS[5] not in rounds.expected()
    assert rounds.decide(t).reason == "all expected members reported"


def test_byzantine_budget_is_the_largest_f_the_rows_allow() -> None:
    assert byzantine_budget(7, 2, krum_rows) == 2
    assert byzantine_budget(6, 2, krum_rows) == 1
    assert byzantine_budget(5, 2, krum_rows) == 1
    assert byzantine_budget(3, 2, krum_rows) == 0
    assert byzantine_budget(2, 2, krum_rows) is None
    assert byzantine_budget(1, 0, lambda f: 1) == 0


# ------------------------------------------------------------------ catching up


def test_a_member_back_and_level_is_expected_again_with_the_first_contact_wait() -> None:
    """A member restarted and synced: rounds that close in milliseconds without it would never
    let it contribute. Seen level again (an announcement or snapshot offer), it is expected from
    this round, as a newcomer: the round waits for it up to first_contact_wait."""
    rounds = tracker(min_participants=2, min_wait=0.5, absent_after=1, first_contact_wait=4.0)
    rounds.note_member(A)
    rounds.note_member(B)
    for number in (1, 2, 3):
        rounds.start(number, float(number), own_train_seconds=0.1)
        for peer in (ME, A, B) if number == 1 else (ME, A):
            rounds.record(peer, number + 0.1, number)
    assert B not in rounds.expected()
    rounds.start(4, 4.0, own_train_seconds=0.1)
    assert rounds.rejoin(B)
    assert B in rounds.expected() and not rounds.rejoin(B)  # once is enough
    rounds.record(ME, 4.1, 4)
    rounds.record(A, 4.1, 4)
    assert rounds.deadline() == pytest.approx(8.0)  # its old arrival time is forgotten
    assert not rounds.decide(7.9).close
    rounds.record(B, 7.9, 4)
    assert rounds.decide(7.9).close


def test_a_member_taken_back_that_never_delivers_is_taken_back_ever_more_rarely() -> None:
    rounds = tracker(min_participants=1, absent_after=1)
    rounds.note_member(B)
    taken_back = []
    for number in range(1, 40):
        rounds.start(number, float(number), own_train_seconds=0.1)
        rounds.record(ME, number + 0.1, number)
        if rounds.rejoin(B):  # it announces every round, never sends an update
            taken_back.append(number)
    gaps = [b - a for a, b in itertools.pairwise(taken_back)]
    assert gaps == sorted(gaps) and gaps[-1] > 2 * gaps[0], taken_back
    rounds.record(B, 40.0, 39)  # it delivers: the next rejoin is granted at once again
    for number in (40, 41, 42):
        rounds.start(number, float(number), own_train_seconds=0.1)
    assert rounds.rejoin(B)


def test_after_a_state_sync_every_known_member_is_expected_afresh() -> None:
    rounds = tracker(min_participants=2, absent_after=2)
    rounds.note_member(A)
    rounds.note_member(B)
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.start(9, 1.0, own_train_seconds=0.1)  # restarted at round 0, synced to round 8
    assert rounds.expected() == {ME}
    rounds.synced(0, 8)
    rounds.start(9, 1.0, own_train_seconds=0.1)
    assert rounds.expected() == {ME, A, B}


def test_a_short_catch_up_does_not_bring_back_a_member_the_others_stopped_waiting_for() -> None:
    """A node a round behind syncs; a member that died rounds ago must not be expected again,
    else the node waits for it every round, falls behind, syncs, and never closes a round."""
    rounds = tracker(min_participants=2, absent_after=2)
    rounds.note_member(A)
    rounds.note_member(B)
    for number in range(1, 5):
        rounds.start(number, float(number), own_train_seconds=0.1)
        for peer in (ME, A, B):
            rounds.record(peer, number + 0.1, number)
    for number in range(5, 20):  # B died after round 4; A goes on; each round is one sync away
        rounds.synced(number - 1, number, live=[A])
        rounds.start(number + 1, float(number), own_train_seconds=0.1)
        rounds.record(A, number + 0.1, number + 1)
    assert rounds.expected() == {ME, A}
    rounds.record(ME, 20.2, 20)
    assert rounds.decide(20.3).close


def test_a_short_catch_up_expects_the_live_members_afresh() -> None:
    """Early rounds a node synced past: it saw none of the members' contributions to them, but
    they are alive and still expected (it would otherwise close its rounds without them)."""
    rounds = tracker(min_participants=2, absent_after=2)
    rounds.note_member(A)
    rounds.note_member(B)
    for number in (1, 2):
        rounds.start(number, float(number), own_train_seconds=0.1)
        rounds.synced(number - 1, number, live=[A, B])
    rounds.start(3, 3.0, own_train_seconds=0.1)
    rounds.synced(2, 3, live=[A, B])
    rounds.start(4, 4.0, own_train_seconds=0.1)
    assert rounds.expected() == {ME, A, B}


def test_a_member_seen_a_moment_ago_is_not_taken_for_silent() -> None:
    """The first node up is long past its round's deadline when the others appear: they are not
    faulty for being new, so the round does not count them out (and lower the rule's f) before
    first_contact_wait has passed since each was first seen."""
    rounds = SyncRound(ME, SyncPolicy(min_participants=2, f=1, rows_needed=krum_rows, first_contact_wait=5.0,
                                      max_wait=10.0))
    rounds.start(1, 0.0, own_train_seconds=0.1)
    rounds.record(ME, 0.1, 1)
    for peer in (A, B, C):
        rounds.note_member(peer, at=60.0)
    rounds.record(A, 60.5, 1)
    rounds.record(B, 60.6, 1)
    decision = rounds.decide(61.0)  # 3 valid; C is new, so Krum must still tolerate f = 1 (5 rows)
    assert not decision.close and not decision.short and decision.wait_until == pytest.approx(65.0)
    decision = rounds.decide(65.0)  # C silent 5 s after it was first seen: one of the f faults
    assert decision.close and decision.missing == (C,)
