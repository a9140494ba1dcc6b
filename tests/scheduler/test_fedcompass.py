"""FedCompass decisions on a simulated clock, against the spec's scheduler (§3.2).

The hand-computed traces use q_min = 20, q_max = 100, lambda = 1.5 (the reference defaults) and
speeds in seconds per step; every expected number is derived in the comment next to it.
"""

from __future__ import annotations

import heapq
import itertools
import math

import pytest

from fednode.node.scheduler import (
    ArrivalGroup,
    ArrivalKind,
    CompassPolicy,
    CompassScheduler,
    CompassServer,
    SpeedEstimator,
    UpdateRef,
    staleness_weight,
)

POLICY = CompassPolicy(q_min=20, q_max=100, latest_time_factor=1.5)


def scheduler(**speeds: float) -> CompassScheduler:
    s = CompassScheduler(POLICY)
    for peer, speed in speeds.items():
        s.speeds.observe(peer, speed, 1)
    return s


# ----------------------------------------------------------------------------------- staleness
def test_staleness_functions_decrease_and_are_not_the_inverted_formula() -> None:
    poly = CompassPolicy(staleness="polynomial", staleness_exponent=0.5)
    assert staleness_weight(poly, 0) == 1.0
    assert staleness_weight(poly, 3) == pytest.approx(0.5)  # (3 + 1)^-0.5
    assert staleness_weight(poly, 8) == pytest.approx(1 / 3)  # (8 + 1)^-0.5; the repo's (u+1)^a gives 3
    assert staleness_weight(poly, -2) == 1.0  # a model newer than T counts as fresh
    hinge = CompassPolicy(staleness="hinge", staleness_exponent=0.5, staleness_hinge=4)
    assert [staleness_weight(hinge, t) for t in (0, 4)] == [1.0, 1.0]
    assert staleness_weight(hinge, 10) == pytest.approx(1 / (0.5 * 6 + 1))  # 0.25
    assert staleness_weight(CompassPolicy(staleness="constant"), 50) == 1.0
    weights = [staleness_weight(poly, t) for t in range(20)]
    assert weights == sorted(weights, reverse=True)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"q_min": 0}, "q_min"),
    ({"q_min": 30, "q_max": 20}, "q_max"),
    ({"latest_time_factor": 0.9}, "lambda"),
    ({"staleness": "inverse"}, "staleness"),
    ({"alpha": 0.0}, "alpha"),
    ({"q_upper": 50}, "q_upper"),
])
def test_policy_validation_names_the_bad_knob(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CompassPolicy(**kwargs)


def test_speed_momentum_weights_the_newest_sample() -> None:
    speeds = SpeedEstimator(momentum=0.9)
    assert speeds.observe("a", 100.0, 100) == 1.0  # first sample as is
    assert speeds.observe("a", 40.0, 20) == pytest.approx(0.1 * 1.0 + 0.9 * 2.0)  # 1.9


# ----------------------------------------------------------------------------------- assign_group
def test_first_group_gets_q_max_and_a_lambda_deadline() -> None:
    s = scheduler(a=1.0)
    a = s.assign("a", 0.0, b"g1")
    assert (a.group_id, a.local_steps, a.eta, a.deadline, a.created) == (b"g1", 100, 100.0, 150.0, True)


def test_join_the_group_giving_the_most_steps() -> None:
    s = scheduler(a=0.5, b=1.0, c=2.0)
    s.assign("a", 0.0, b"g1")  # q_max: eta 50, deadline 75
    # b at t=0: g1 gives floor(50/1) = 50 steps -> joins g1.
    joined = s.assign("b", 0.0, b"unused")
    assert (joined.group_id, joined.local_steps, joined.created) == (b"g1", 50, False)
    s.add_group(ArrivalGroup(b"g2", "x", 0.0, 120.0, 180.0))
    # c at t=10: g1 gives floor(40/2) = 20 (feasible), g2 floor(110/2) = 55 -> the most steps: g2.
    chosen = s.assign("c", 10.0, b"unused")
    assert (chosen.group_id, chosen.local_steps) == (b"g2", 55)
    assert "c" in s.groups[b"g2"].members


def test_join_ties_go_to_the_later_group_and_q_upper_bounds_it() -> None:
    s = scheduler(c=1.0)
    s.add_group(ArrivalGroup(b"early", "x", 0.0, 60.0, 90.0))
    s.add_group(ArrivalGroup(b"late", "y", 0.0, 60.0, 90.0))
    assert s.join_group("c", 0.0).group_id == b"late"  # 60 steps either way
    s = scheduler(c=1.0)
    s.add_group(ArrivalGroup(b"far", "x", 0.0, 500.0, 750.0))  # 500 steps > q_upper = q_max
    assert s.join_group("c", 0.0) is None
    legacy = CompassScheduler(CompassPolicy(q_min=20, q_max=100, q_upper=120))
    legacy.speeds.observe("c", 1.0, 1)
    legacy.add_group(ArrivalGroup(b"g", "x", 0.0, 110.0, 165.0))
    assert legacy.join_group("c", 0.0).local_steps == 110  # the paper's 1.2 x q_max bound


def test_create_group_lines_up_with_the_fastest_members_next_arrival() -> None:
    s = scheduler(a=1.0, b=0.5, c=4.0)
    s.assign("a", 0.0, b"g1")  # eta 100, deadline 150
    s.add_member(b"g1", "b", 200)
    # c at t=30: g1 gives floor(70/4) = 17 < q_min -> no join. Fastest member of g1 is b (0.5):
    # its next arrival is 150 + 0.5 * 100 = 200 -> q = floor((200 - 30) / 4) = 42.
    created = s.assign("c", 30.0, b"g2")
    assert (created.group_id, created.local_steps, created.created) == (b"g2", 42, True)
    assert created.eta == pytest.approx(30 + 42 * 4.0)
    assert created.deadline == pytest.approx(30 + 42 * 4.0 * 1.5)


def test_create_group_clamps_to_q_min_and_falls_back_to_q_max() -> None:
    s = scheduler(a=1.0, c=1.0)
    s.add_group(ArrivalGroup(b"g1", "a", 0.0, 10.0, 15.0))
    s.add_member(b"g1", "a", 10)
    # c at t=12: g1 eta passed; next arrival of a = 15 + 100 = 115 -> q = 103 > q_max: ignored -> q_max.
    assert s.assign("c", 12.0, b"g2").local_steps == 100
    s = scheduler(a=0.01, c=1.0)
    s.add_group(ArrivalGroup(b"g1", "a", 0.0, 1.0, 1.5))
    s.add_member(b"g1", "a", 100)
    # c at t=1.2: next arrival of a = 1.5 + 1 = 2.5 -> q = floor(1.3) = 1 < q_min -> q_min.
    assert s.assign("c", 1.2, b"g2").local_steps == 20


def test_a_peer_is_expected_in_one_group_at_a_time() -> None:
    s = scheduler(a=1.0, b=1.0)
    s.assign("a", 0.0, b"g1")
    s.add_group(ArrivalGroup(b"g2", "b", 0.0, 80.0, 120.0))
    s.add_member(b"g1", "b", 100)
    s.add_member(b"g2", "b", 80)  # b's newer report wins
    assert "b" not in s.groups[b"g1"].members and "b" in s.groups[b"g2"].members


# ----------------------------------------------------------------------------------- arrivals and closing
def test_deadline_fires_with_partial_arrivals_and_the_straggler_is_buffered() -> None:
    s = scheduler(a=1.0, b=1.0)
    s.assign("a", 0.0, b"g1")  # eta 100, deadline 150
    s.add_member(b"g1", "b", 100)
    first = s.on_update(UpdateRef("a", 1), b"g1", 101.0)
    assert first.kind is ArrivalKind.ON_TIME and not first.complete
    waiting = s.decide(b"g1", 120.0)
    assert not waiting.close and waiting.wait_until == 150.0 and waiting.missing == ("b",)
    closing = s.decide(b"g1", 150.0)
    assert closing.close and closing.missing == ("b",) and "deadline" in closing.reason
    cut = s.cut(b"g1")
    assert [r.sender for r in cut.entries] == ["a"]
    s.apply(b"g1", cut.entries)
    late = s.on_update(UpdateRef("b", 1), b"g1", 160.0)
    assert late.kind is ArrivalKind.MISSED and ("b", 1) in s.buffer


def test_group_closes_at_once_when_all_members_arrived() -> None:
    s = scheduler(a=1.0, b=1.0)
    s.assign("a", 0.0, b"g1")
    s.add_member(b"g1", "b", 100)
    s.on_update(UpdateRef("b", 1), b"g1", 99.0)
    arrival = s.on_update(UpdateRef("a", 1), b"g1", 100.0)
    assert arrival.complete
    decision = s.decide(b"g1", 100.0)
    assert decision.close and decision.reason == "all members arrived"


def test_a_group_nobody_reached_lingers_and_departures_stop_the_wait() -> None:
    s = scheduler(a=1.0, b=1.0)
    s.assign("a", 0.0, b"g1")
    s.add_member(b"g1", "b", 100)
    assert s.decide(b"g1", 500.0).wait_until == math.inf  # no arrivals: nothing to aggregate
    s.on_update(UpdateRef("a", 1), b"g1", 100.0)
    s.depart("b")
    assert s.decide(b"g1", 100.0).close


def test_small_groups_are_deferred_and_merged_with_the_buffer() -> None:
    """Spec §3.5: below the rule's minimum (e.g. 2f+3 = 5 for Krum with f = 1) a group is not
    aggregated; its updates wait in the general buffer and join the next group's."""
    s = scheduler(a=1.0, b=1.0, c=1.0)
    s.assign("a", 0.0, b"g1")
    s.on_update(UpdateRef("a", 1), b"g1", 100.0)
    small = s.cut(b"g1", minimum_rows=3)
    assert small.deferred
    s.apply(b"g1", small.entries, deferred=True)
    assert s.version == 0 and ("a", 1) in s.buffer
    s.add_group(ArrivalGroup(b"g2", "b", 100.0, 200.0, 250.0))
    s.on_update(UpdateRef("b", 1), b"g2", 200.0)
    s.on_update(UpdateRef("c", 1), b"g2", 201.0)
    merged = s.cut(b"g2", minimum_rows=3)
    assert not merged.deferred and merged.senders == ("a", "b", "c")
    s.apply(b"g2", merged.entries)
    assert s.version == 1 and not s.buffer


def test_too_stale_updates_are_dropped_from_the_cut() -> None:
    s = CompassScheduler(CompassPolicy(max_staleness=3))
    s.version = 10
    s.add_group(ArrivalGroup(b"g", "a", 0.0, 1.0, 1.5))
    s.on_update(UpdateRef("a", 1, base_version=9), b"g", 1.0)
    s.on_update(UpdateRef("b", 1, base_version=2), b"g", 1.0)
    cut = s.cut(b"g")
    assert [r.sender for r in cut.entries] == ["a"] and cut.staleness == (1,)
    assert [r.sender for r in cut.too_stale] == ["b"]


def test_carry_target_is_the_open_group_closing_first() -> None:
    s = scheduler()
    s.add_group(ArrivalGroup(b"later", "x", 0.0, 50.0, 75.0))
    s.add_group(ArrivalGroup(b"sooner", "y", 0.0, 30.0, 45.0))
    s.add_group(ArrivalGroup(b"over", "z", 0.0, 5.0, 8.0))
    assert s.carry_target(10.0).group_id == b"sooner"
    assert s.carry_target(10.0, exclude=[b"sooner"]).group_id == b"later"
    assert s.carry_target(100.0) is None


def test_a_group_whose_members_all_arrived_takes_nobody_new() -> None:
    """It closes at once (the reference aggregates and deletes it in the arrival call); a peer
    whose view still shows it open must not join it or re-address an update to it."""
    s = scheduler(a=0.5, b=1.0)
    s.assign("a", 0.0, b"g1")  # q_max: eta 50, deadline 75
    s.on_update(UpdateRef("a", 1), b"g1", 40.0)
    assert not s.groups[b"g1"].closed and s.schedulable_groups() == []
    # b could get floor((50 - 10) / 1) = 40 steps in g1, but g1 is done: b starts a new group
    # with q_max (no schedulable group left, as when the reference finds none).
    chosen = s.assign("b", 10.0, b"g2")
    assert (chosen.group_id, chosen.local_steps, chosen.created) == (b"g2", 100, True)
    assert s.carry_target(10.0).group_id == b"g2"
    # A group with a member still outstanding stays schedulable.
    s.add_member(b"g2", "a", 30)
    s.on_update(UpdateRef("b", 1), b"g2", 20.0)
    assert [g.group_id for g in s.schedulable_groups()] == [b"g2"]


# ----------------------------------------------------------------------------------- the reference server
class Simulation:
    """Discrete-event run of `CompassServer` with clients of fixed true speeds (s/step)."""

    def __init__(self, speeds: dict[str, float], policy: CompassPolicy = POLICY, dead_at: dict[str, float] | None = None,
                 minimum_rows: int = 1) -> None:
        self.server = CompassServer(policy, minimum_rows)
        self.speeds = speeds
        self.dead_at = dead_at or {}
        self.queue: list[tuple[float, str]] = [(policy.q_max * v, c) for c, v in sorted(speeds.items())]
        heapq.heapify(self.queue)
        self.aggregations = []
        self.replies = []

    def run(self, until: float) -> None:
        for _ in range(100_000):  # bounded
            timer = self.server.next_timer()
            event = self.queue[0][0] if self.queue else math.inf
            now = min(timer, event)
            if now > until:
                return
            if timer <= event:
                done, replies = self.server.on_timer(now)
            else:
                _, client = heapq.heappop(self.queue)
                if now >= self.dead_at.get(client, math.inf):
                    continue
                done, replies = self.server.on_update(client, now)
            self.aggregations += done
            self.replies += replies
            for reply in replies:
                heapq.heappush(self.queue, (now + reply.local_steps * self.speeds[reply.client], reply.client))
        raise AssertionError("simulation did not finish")


def test_reference_trace_first_reports_then_groups() -> None:
    sim = Simulation({"a": 1.0, "b": 0.5})
    sim.run(until=100.0)
    # t=50: b's first report -> single update (T=1); no group exists -> g1 with q_max: eta 100, deadline 125.
    first = sim.aggregations[0]
    assert (first.group_id, first.at, first.version, first.reason) == (None, 50.0, 1, "first report")
    assert sim.replies[0] == sim.replies[0].__class__("b", 100, b"g1", 1, 50.0)
    # t=100: a's first report: single update with tau = T - 0 = 1 -> weight 2^-0.5.
    second = sim.aggregations[1]
    assert (second.group_id, second.at, second.weights) == (None, 100.0, (pytest.approx(2 ** -0.5),))
    # a joins g1? floor((100 - 100) / 1) = 0 < q_min: no. Create: g1's fastest member is b (0.5);
    # its next arrival is 125 + 0.5 * 100 = 175 -> q = floor((175 - 100) / 1) = 75.
    a_reply = next(r for r in sim.replies if r.client == "a")
    assert (a_reply.local_steps, a_reply.group_id) == (75, b"g2")
    # t=100: b arrives for g1, its only member: aggregated at once.
    third = sim.aggregations[2]
    assert (third.group_id, third.at, third.reason, third.version) == (b"g1", 100.0, "all members arrived", 3)
    # b: g2 would need floor(75 / 0.5) = 150 > q_max steps; a's next arrival after g2 is too far
    # (q = 425 > q_max), so b creates g3 with q_max.
    b_reply = [r for r in sim.replies if r.client == "b"][-1]
    assert (b_reply.local_steps, b_reply.group_id) == (100, b"g3")


def test_reference_trace_missed_group_is_buffered_into_the_next_aggregation() -> None:
    # c is the speed it reported (1 s/step) until t = 150, then 3x slower: it misses its group.
    sim = Simulation({"a": 1.0, "c": 1.0})
    sim.run(until=100.0)  # both first reports at t=100; a creates g1 (eta 200), c joins it (100 steps)
    assert {r.client: r.group_id for r in sim.replies} == {"a": b"g1", "c": b"g1"}
    sim.speeds["c"] = 3.0
    heapq.heapify(sim.queue)
    sim.queue = [(t if c == "a" else 100.0 + 100 * 3.0, c) for t, c in sim.queue]
    heapq.heapify(sim.queue)
    sim.run(until=400.0)
    g1 = next(a for a in sim.aggregations if a.group_id == b"g1")
    # g1: a arrives at 200, c is still out -> the deadline (100 + 1.5 * 100 = 250) fires with a alone.
    assert (g1.at, g1.reason, [e.sender for e in g1.entries]) == (250.0, "deadline", ["a"])
    # c arrives at 400 > 250: missed -> general buffer, answered at once with the current global.
    c_reply = [r for r in sim.replies if r.client == "c"][-1]
    assert c_reply.at == 400.0
    assert ("c", 2) in sim.server.scheduler.buffer
    sim.run(until=2000.0)
    after = [a for a in sim.aggregations if a.at > 400.0 and a.group_id is not None]
    buffered_into = next(a for a in after if ("c", 2) in [e.key for e in a.entries])
    assert buffered_into is after[0]  # folded into the very next group aggregation
    tau = dict(zip([e.key for e in buffered_into.entries], buffered_into.weights, strict=True))[("c", 2)]
    assert tau < 1.0  # stale: scaled down by s(tau)


def test_reference_trace_heterogeneous_speeds_form_groups_and_never_wait_for_the_straggler() -> None:
    speeds = {"x1": 1.0, "x2": 2.0, "x4": 4.0, "x8": 8.0}
    sim = Simulation(speeds)
    sim.run(until=5000.0)
    grouped = [a for a in sim.aggregations if a.group_id is not None]
    assert all(POLICY.q_min <= r.local_steps <= POLICY.q_max for r in sim.replies)
    assert any(len({e.sender for e in a.entries}) >= 2 for a in grouped), "groups of several peers form"
    per_client = {c: sum(1 for a in grouped for e in a.entries if e.sender == c) for c in speeds}
    assert per_client["x1"] > 3 * per_client["x8"] > 0  # the straggler contributes, the fast peer is not held back
    steps = {c: [r.local_steps for r in sim.replies if r.client == c][2:] for c in speeds}
    assert max(steps["x8"]) < min(steps["x1"])  # slow peers get fewer steps
    # No aggregation ever waits beyond a deadline: consecutive global updates are never more than
    # lambda x (the slowest feasible group duration) apart.
    times = [a.at for a in sim.aggregations]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 1.5 * 100 * 1.0 + 1e-9


def test_reference_trace_dead_client_holds_its_group_until_the_deadline_only() -> None:
    sim = Simulation({"a": 1.0, "b": 1.0, "c": 1.0}, dead_at={"c": 150.0})
    sim.run(until=1000.0)
    groups = [a for a in sim.aggregations if a.group_id is not None]
    g1 = groups[0]
    # All three first-reported at 100 and share g1 (eta 200, deadline 250); c died at 150.
    assert (g1.at, g1.reason, sorted({e.sender for e in g1.entries})) == (250.0, "deadline", ["a", "b"])
    assert all(a.reason == "all members arrived" for a in groups[1:]), "c is no longer waited for"


def test_reference_server_defers_groups_below_the_rule_minimum() -> None:
    sim = Simulation({"a": 1.0, "b": 1.0, "c": 4.0}, minimum_rows=3)
    sim.run(until=3000.0)
    grouped = [a for a in sim.aggregations if a.group_id is not None]
    assert grouped and all(len({e.sender for e in a.entries}) >= 3 for a in grouped)
