"""FedCompass scheduling decisions (Li et al., ICLR 2024), as pure code.

FedCompass gives every peer a number of local steps Q in [Q_min, Q_max] so that several peers
finish at about the same time and form an *arrival group*; a group is aggregated once, when all
its members arrived or at its latest-arrival deadline, whichever comes first. Slow peers get
fewer steps and fast peers more, so nobody waits for a straggler and the straggler is not
dropped either. See ../shared/docs/aggregation-spec.md §3 (the numbers below are its §3.1
defaults) and docs/fedcompass.md for the serverless protocol built on top.

Nothing here does I/O, sleeps or reads a clock: every method takes `now` (seconds on any
monotonic clock) so tests replay scripted arrival traces on a simulated clock.

* `CompassPolicy`: the knobs, validated.
* `staleness_weight`: s(tau) for the polynomial, hinge and constant functions. Polynomial is
  (tau + 1)^-a, the FedAsync definition; the FedCompass repository's `(tau + 1)^a` grows with
  staleness and is a bug (spec §3.1).
* `SpeedEstimator`: seconds per local step per peer, momentum-smoothed (new sample weighted by
  the momentum, as the reference does).
* `CompassScheduler`: one view of the group table (groups, members, arrivals, the general
  buffer, the global version T) with the spec's decisions: `assign` (= assign_group: join the
  feasible group giving the most steps, else create one whose Q lines up with the next arrival of
  the fastest member of an existing group), `on_update` (on time, or missed -> general buffer),
  `decide` (close when all arrived or at the deadline), `cut` (what a closing group aggregates,
  with the minimum group size of the robust rule) and `apply`.
* `CompassServer`: the spec's server-side loop (§3.2) assembled from those pieces. fednode has no
  server; this is the executable reference the scripted-trace tests check, and the proof that the
  pieces the serverless engine uses make the paper's decisions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

STALENESS_FUNCTIONS = ("polynomial", "hinge", "constant")


@dataclass(frozen=True)
class CompassPolicy:
    """FedCompass knobs. Defaults are the reference's (spec §3.1) except where noted.

    q_min, q_max: bounds of the local steps a peer is given.
    q_upper: largest Q accepted when joining an existing group (0 = q_max, the current
        reference; the paper's legacy code used 1.2 * q_max).
    latest_time_factor: lambda; a group's deadline is its creation time plus lambda times the
        creator's expected duration, so a late member costs at most (lambda - 1) x that.
    speed_momentum: weight of the newest speed sample.
    staleness, staleness_exponent, staleness_hinge: s(tau), see `staleness_weight`.
    max_staleness: updates staler than this are not aggregated (spec §3.5).
    alpha: server step size of the FedCompass update.
    grace: seconds added to every deadline for delivery over the network (0 for the in-process
        reference; the serverless engine passes the measured gossip + fetch time).
    """

    q_min: int = 20
    q_max: int = 100
    q_upper: int = 0
    latest_time_factor: float = 1.5
    speed_momentum: float = 0.9
    staleness: str = "polynomial"
    staleness_exponent: float = 0.5
    staleness_hinge: float = 4.0
    max_staleness: int = 64
    alpha: float = 0.9
    grace: float = 0.0

    def __post_init__(self) -> None:
        if self.q_min < 1:
            raise ValueError(f"q_min must be >= 1, got {self.q_min}")
        if self.q_max < self.q_min:
            raise ValueError(f"q_max ({self.q_max}) must be >= q_min ({self.q_min})")
        if self.q_upper and self.q_upper < self.q_max:
            raise ValueError(f"q_upper ({self.q_upper}) must be 0 (= q_max) or >= q_max ({self.q_max})")
        if not self.latest_time_factor >= 1.0 or not math.isfinite(self.latest_time_factor):
            raise ValueError(f"latest_time_factor (lambda) must be a finite number >= 1, got {self.latest_time_factor}")
        if not 0.0 < self.speed_momentum <= 1.0:
            raise ValueError(f"speed_momentum must be in (0, 1], got {self.speed_momentum}")
        if self.staleness not in STALENESS_FUNCTIONS:
            raise ValueError(f"staleness must be one of {', '.join(STALENESS_FUNCTIONS)}, got {self.staleness!r}")
        if not self.staleness_exponent >= 0.0 or not math.isfinite(self.staleness_exponent):
            raise ValueError(f"staleness_exponent must be a finite number >= 0, got {self.staleness_exponent}")
        if not self.staleness_hinge >= 0.0 or not math.isfinite(self.staleness_hinge):
            raise ValueError(f"staleness_hinge must be a finite number >= 0, got {self.staleness_hinge}")
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not self.grace >= 0.0 or not math.isfinite(self.grace):
            raise ValueError(f"grace must be a finite number >= 0, got {self.grace}")

    @property
    def upper(self) -> int:
        return self.q_upper or self.q_max


def staleness_weight(policy: CompassPolicy, tau: int) -> float:
    """s(tau) for an update `tau` global versions old (negative counts as fresh).

    polynomial(a): (tau + 1)^-a; hinge(a, b): 1 if tau <= b else 1 / (a (tau - b) + 1);
    constant: 1. All are 1 at tau = 0 and never grow with staleness.
    """
    tau = max(0, int(tau))
    a = policy.staleness_exponent
    if policy.staleness == "polynomial":
        return float((tau + 1) ** -a)
    if policy.staleness == "hinge":
        b = policy.staleness_hinge
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    return 1.0


class SpeedEstimator:
    """Seconds per local step per peer: first sample as is, then (1 - m) * old + m * new."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self._speeds: dict[str, float] = {}

    def observe(self, peer: str, seconds: float, steps: int) -> float:
        if steps < 1 or not seconds >= 0.0 or not math.isfinite(seconds):
            raise ValueError(f"bad speed sample: {seconds} s for {steps} steps")
        sample = max(seconds / steps, 1e-9)
        previous = self._speeds.get(peer)
        value = sample if previous is None else (1 - self.momentum) * previous + self.momentum * sample
        self._speeds[peer] = value
        return value

    def get(self, peer: str) -> float | None:
        return self._speeds.get(peer)

    def known(self) -> dict[str, float]:
        return dict(self._speeds)

    def forget(self, peer: str) -> None:
        self._speeds.pop(peer, None)


@dataclass(frozen=True, order=True)
class UpdateRef:
    """One update, as the scheduler sees it: who, which of its updates, the content id, and the
    global version its training started from (for staleness)."""

    sender: str
    seq: int
    digest: bytes = b""
    base_version: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.sender, self.seq)


@dataclass
class ArrivalGroup:
    """An arrival group: members expected by `eta`, waited for until `deadline` (+ grace)."""

    group_id: bytes
    creator: str
    created_at: float
    eta: float
    deadline: float
    members: dict[str, int] = field(default_factory=dict)  # peer -> local steps it was given
    expected_seq: dict[str, int] = field(default_factory=dict)  # peer -> the update it owes (optional)
    arrivals: dict[tuple[str, int], UpdateRef] = field(default_factory=dict)
    closed: bool = False

    def arrived_members(self) -> set[str]:
        arrived = set()
        for peer in self.members:
            seq = self.expected_seq.get(peer)
            if any(ref.sender == peer and (seq is None or ref.seq == seq) for ref in self.arrivals.values()):
                arrived.add(peer)
        return arrived

    def outstanding(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.members) - self.arrived_members()))

    def participants(self) -> set[str]:
        """Members and every peer with an arrival (fastest-member look-ups use both)."""
        return set(self.members) | {ref.sender for ref in self.arrivals.values()}


@dataclass(frozen=True)
class Assignment:
    """A peer's next local round: run `local_steps` steps and deliver to `group_id`."""

    peer: str
    group_id: bytes
    local_steps: int
    eta: float
    deadline: float
    created: bool  # this assignment created the group (the peer announces it and leads it)


class ArrivalKind(Enum):
    ON_TIME = "on_time"
    MISSED = "missed"  # after the deadline (+ grace) or after the group closed: general buffer


@dataclass(frozen=True)
class Arrival:
    kind: ArrivalKind
    group_id: bytes
    complete: bool  # the group has no outstanding member any more


@dataclass(frozen=True)
class GroupDecision:
    close: bool
    wait_until: float  # when to ask again if nothing else happens (inf: only an arrival helps)
    reason: str
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupCut:
    """What a closing group aggregates.

    entries: updates to aggregate, sorted by (sender, seq) (canonical order).
    staleness: tau per entry (T - base version), same order.
    deferred: fewer distinct senders than the rule needs: nothing is aggregated now; the entries
        wait in the general buffer for the next group (spec §3.5).
    too_stale: entries dropped because tau > max_staleness.
    """

    group_id: bytes
    entries: tuple[UpdateRef, ...]
    staleness: tuple[int, ...]
    deferred: bool
    too_stale: tuple[UpdateRef, ...] = ()

    @property
    def senders(self) -> tuple[str, ...]:
        return tuple(sorted({ref.sender for ref in self.entries}))


class CompassScheduler:
    """One view of FedCompass's scheduling state; see the module docstring.

    In the reference server there is one instance. In fednode every peer keeps one, fed with
    what it hears (group records, schedule reports, update arrivals, manifests) and asks it only
    about itself (`assign`) and about the groups it leads (`decide`, `cut`).
    """

    def __init__(self, policy: CompassPolicy) -> None:
        self.policy = policy
        self.speeds = SpeedEstimator(policy.speed_momentum)
        self.groups: dict[bytes, ArrivalGroup] = {}  # insertion order = creation order
        self.buffer: dict[tuple[str, int], UpdateRef] = {}  # general buffer (missed / deferred updates)
        self.version = 0  # T: group aggregations applied so far

    # -------------------------------------------------------------------------- groups
    def open_groups(self) -> list[ArrivalGroup]:
        return [g for g in self.groups.values() if not g.closed]

    def schedulable_groups(self) -> list[ArrivalGroup]:
        """Open groups a peer can still be scheduled into: not those whose members all arrived.
        Such a group closes at once (the reference aggregates and deletes it inside the arrival
        call, so it is never seen); in a peer's view it can be open a moment longer, and a join
        or re-addressed update sent to it would miss it."""
        return [g for g in self.open_groups() if not (g.arrivals and not g.outstanding())]

    def add_group(self, group: ArrivalGroup) -> bool:
        """A group someone created (known from its announcement); False if already known."""
        if group.group_id in self.groups:
            return False
        self.groups[group.group_id] = group
        return True

    def add_member(self, group_id: bytes, peer: str, local_steps: int, seq: int | None = None) -> bool:
        """`peer` joined `group_id` for `local_steps`: it leaves every other open group it was
        expected in (a peer owes one update at a time). False if the group is unknown or closed."""
        group = self.groups.get(group_id)
        if group is None or group.closed:
            return False
        for other in self.open_groups():
            if other.group_id != group_id and peer in other.members and peer not in other.arrived_members():
                del other.members[peer]
                other.expected_seq.pop(peer, None)
        group.members[peer] = local_steps
        if seq is not None:
            group.expected_seq[peer] = seq
        return True

    def depart(self, peer: str) -> None:
        """A peer left: no open group waits for it any more."""
        for group in self.open_groups():
            if peer in group.members and peer not in group.arrived_members():
                del group.members[peer]
                group.expected_seq.pop(peer, None)

    # -------------------------------------------------------------------------- assignment
    def assign(self, peer: str, now: float, new_group_id: bytes) -> Assignment:
        """assign_group: join the feasible group giving the most steps, else create a group
        (with id `new_group_id`). Needs the peer's speed."""
        if self.speeds.get(peer) is None:
            raise ValueError(f"no speed estimate for {peer}: its first round runs q_max steps without a group")
        if not self.schedulable_groups():
            return self._create(peer, now, new_group_id, self.policy.q_max)
        joined = self.join_group(peer, now)
        if joined is not None:
            return joined
        return self.create_group(peer, now, new_group_id)

    def join_group(self, peer: str, now: float) -> Assignment | None:
        """The open group giving `peer` the most steps within [q_min, q_upper]; ties go to the
        later-created group (as in the reference)."""
        speed = self.speeds.get(peer)
        assert speed is not None
        best: tuple[ArrivalGroup, int] | None = None
        for group in self.schedulable_groups():
            q = math.floor((group.eta - now) / speed)
            if self.policy.q_min <= q <= self.policy.upper and (best is None or q >= best[1]):
                best = (group, q)
        if best is None:
            return None
        group, q = best
        self.add_member(group.group_id, peer, q)
        return Assignment(peer, group.group_id, q, group.eta, group.deadline, created=False)

    def create_group(self, peer: str, now: float, group_id: bytes) -> Assignment:
        """A new group whose ETA lines up with the next arrival of the fastest member of an
        existing group (that member finishes its current group, then runs q_max more steps), so
        the newcomer and that member can meet in the next group."""
        speed = self.speeds.get(peer)
        assert speed is not None
        q = -1
        for group in self.schedulable_groups():
            if not now < group.deadline:
                continue
            speeds = [s for p in group.participants() if (s := self.speeds.get(p)) is not None]
            if not speeds:
                continue
            eta_next = group.deadline + min(speeds) * self.policy.q_max
            candidate = math.floor((eta_next - now) / speed)
            if candidate <= self.policy.q_max:
                q = max(q, candidate)
        if 0 <= q < self.policy.q_min:
            q = self.policy.q_min
        if q < 0:
            q = self.policy.q_max
        return self._create(peer, now, group_id, q)

    def _create(self, peer: str, now: float, group_id: bytes, q: int) -> Assignment:
        speed = self.speeds.get(peer)
        assert speed is not None
        duration = q * speed
        group = ArrivalGroup(group_id, peer, now, now + duration, now + duration * self.policy.latest_time_factor)
        if not self.add_group(group):
            raise ValueError(f"group id {group_id!r} already exists")
        self.add_member(group_id, peer, q)
        return Assignment(peer, group_id, q, group.eta, group.deadline, created=True)

    # -------------------------------------------------------------------------- arrivals
    def on_update(self, ref: UpdateRef, group_id: bytes, now: float) -> Arrival:
        """An update for `group_id` became available at `now`.

        On time: it joins the group's arrivals (a non-member's update is accepted too: a peer
        whose membership report was lost, or one that re-addressed a buffered update). Missed
        (after the deadline + grace, or the group already closed or unknown): it goes to the
        general buffer and the sender leaves the group, so the group stops waiting for it.
        """
        group = self.groups.get(group_id)
        if group is None or group.closed or now > group.deadline + self.policy.grace:
            if group is not None and ref.sender in group.members and ref.sender not in group.arrived_members():
                del group.members[ref.sender]
                group.expected_seq.pop(ref.sender, None)
            self.buffer[ref.key] = ref
            return Arrival(ArrivalKind.MISSED, group_id, complete=False)
        group.arrivals[ref.key] = ref
        self.buffer.pop(ref.key, None)
        return Arrival(ArrivalKind.ON_TIME, group_id, complete=not group.outstanding())

    def decide(self, group_id: bytes, now: float) -> GroupDecision:
        """Close when every member arrived; else at the deadline (+ grace) if anything arrived.
        A group nobody arrived for lingers (late members are handled as missed)."""
        group = self.groups.get(group_id)
        if group is None or group.closed:
            return GroupDecision(False, math.inf, "closed or unknown")
        missing = group.outstanding()
        if group.arrivals and not missing:
            return GroupDecision(True, now, "all members arrived")
        deadline = group.deadline + self.policy.grace
        if now >= deadline:
            if group.arrivals:
                return GroupDecision(True, now, f"deadline passed; {len(missing)} member(s) missing", missing)
            return GroupDecision(False, math.inf, "deadline passed without arrivals", missing)
        return GroupDecision(False, deadline, "waiting for members", missing)

    def due(self, now: float) -> list[bytes]:
        """Open groups whose deadline (+ grace) passed and that have arrivals: the timer."""
        return [g.group_id for g in self.open_groups()
                if now >= g.deadline + self.policy.grace and g.arrivals]

    def cut(self, group_id: bytes, minimum_rows: int = 1, *, include_buffer: bool = True) -> GroupCut:
        """U = general buffer + the group's arrivals, minus updates staler than max_staleness;
        deferred when U has fewer distinct senders than the rule needs (`minimum_rows`)."""
        group = self.groups[group_id]
        pool = dict(self.buffer) if include_buffer else {}
        pool.update(group.arrivals)
        entries, taus, too_stale = [], [], []
        for ref in sorted(pool.values()):
            tau = max(0, self.version - ref.base_version)
            if tau > self.policy.max_staleness:
                too_stale.append(ref)
                continue
            entries.append(ref)
            taus.append(tau)
        deferred = len({ref.sender for ref in entries}) < max(1, minimum_rows)
        return GroupCut(group_id, tuple(entries), tuple(taus), deferred, tuple(too_stale))

    def apply(self, group_id: bytes | None, entries: Iterable[UpdateRef], *, deferred: bool = False,
              drop: Iterable[UpdateRef] = ()) -> None:
        """A group's aggregation happened (or was deferred): the group closes, its entries leave
        the buffer (deferred: they enter it), and T advances unless deferred."""
        entries = tuple(entries)
        group = self.groups.get(group_id) if group_id is not None else None
        if group is not None:
            group.closed = True
        for ref in drop:
            self.buffer.pop(ref.key, None)
        if deferred:
            for ref in entries:
                self.buffer[ref.key] = ref
            return
        for ref in entries:
            self.buffer.pop(ref.key, None)
        self.version += 1

    def prune(self, keep_closed: int = 64) -> None:
        """Forget closed groups nobody is outstanding in, beyond the newest `keep_closed`."""
        closed = [g.group_id for g in self.groups.values() if g.closed and not g.outstanding()]
        for group_id in closed[: max(0, len(closed) - keep_closed)]:
            del self.groups[group_id]

    def carry_target(self, now: float, exclude: Iterable[bytes] = ()) -> ArrivalGroup | None:
        """Where a buffered update goes next without a server holding the buffer: the open group
        expected to close first (earliest ETA still ahead, deadline not passed)."""
        excluded = set(exclude)
        candidates = [g for g in self.schedulable_groups()
                      if g.group_id not in excluded and now <= g.deadline + self.policy.grace]
        if not candidates:
            return None
        return min(candidates, key=lambda g: (g.eta < now, g.eta, g.group_id))


# ---------------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class Reply:
    """The server answers a client: train `local_steps` from global version `version`."""

    client: str
    local_steps: int
    group_id: bytes
    version: int
    at: float


@dataclass(frozen=True)
class Aggregation:
    """One global update: `group_id` None for a first report's single (FedAsync) update."""

    group_id: bytes | None
    entries: tuple[UpdateRef, ...]
    weights: tuple[float, ...]  # s(tau_i) per entry
    version: int  # T after this update
    at: float
    reason: str


@dataclass
class _Client:
    start: float = 0.0
    local_steps: int = 0
    timestamp: int = 0
    group: bytes | None = None
    updates: int = 0


class CompassServer:
    """The spec's server-side scheduler (§3.2) on the pieces above, for tests and as reference.

    Events in, decisions out: `on_update(client, now)` and `on_timer(now)` return the global
    updates made and the replies released; `next_timer()` says when the earliest deadline
    fires. Clients start at t = 0 with q_max steps and no group.
    """

    def __init__(self, policy: CompassPolicy, minimum_rows: int = 1) -> None:
        self.policy = policy
        self.minimum_rows = minimum_rows
        self.scheduler = CompassScheduler(policy)
        self.clients: dict[str, _Client] = {}
        self.parked: dict[bytes, list[str]] = {}
        self._next_id = 0

    def _group_id(self) -> bytes:
        self._next_id += 1
        return f"g{self._next_id}".encode()

    def client(self, name: str) -> _Client:
        return self.clients.setdefault(name, _Client(local_steps=self.policy.q_max))

    def on_update(self, name: str, now: float) -> tuple[list[Aggregation], list[Reply]]:
        s = self.scheduler
        c = self.client(name)
        c.updates += 1
        s.speeds.observe(name, now - c.start, c.local_steps)
        ref = UpdateRef(name, c.updates, base_version=c.timestamp)
        if c.group is None:  # first report: FedAsync-style single update
            tau = s.version - c.timestamp
            s.version += 1
            done = Aggregation(None, (ref,), (staleness_weight(self.policy, tau),), s.version, now, "first report")
            return [done], [self._assign(name, now)]
        arrival = s.on_update(ref, c.group, now)
        if arrival.kind is ArrivalKind.MISSED:
            return [], [self._assign(name, now)]  # buffered; current global, immediately
        self.parked.setdefault(c.group, []).append(name)
        if arrival.complete:
            return self._aggregate(c.group, now, "all members arrived")
        return [], []

    def on_timer(self, now: float) -> tuple[list[Aggregation], list[Reply]]:
        aggregations: list[Aggregation] = []
        replies: list[Reply] = []
        for group_id in self.scheduler.due(now):
            done, released = self._aggregate(group_id, now, "deadline")
            aggregations += done
            replies += released
        return aggregations, replies

    def next_timer(self) -> float:
        deadlines = [g.deadline + self.policy.grace for g in self.scheduler.open_groups() if g.arrivals]
        return min(deadlines, default=math.inf)

    def _aggregate(self, group_id: bytes, now: float, reason: str) -> tuple[list[Aggregation], list[Reply]]:
        s = self.scheduler
        cut = s.cut(group_id, self.minimum_rows)
        s.apply(group_id, cut.entries, deferred=cut.deferred, drop=cut.too_stale)
        done: list[Aggregation] = []
        if not cut.deferred:
            weights = tuple(staleness_weight(self.policy, tau) for tau in cut.staleness)
            done.append(Aggregation(group_id, cut.entries, weights, s.version, now, reason))
        parked = self.parked.pop(group_id, [])
        # Fastest first, as the reference does, so they get the earliest groups.
        parked.sort(key=lambda p: (s.speeds.get(p) or 0.0, p))
        return done, [self._assign(p, now) for p in parked]

    def _assign(self, name: str, now: float) -> Reply:
        c = self.client(name)
        assignment = self.scheduler.assign(name, now, self._group_id())
        c.start = now
        c.local_steps = assignment.local_steps
        c.timestamp = self.scheduler.version
        c.group = assignment.group_id
        return Reply(name, assignment.local_steps, assignment.group_id, c.timestamp, now)
