"""Synchronous k-of-n rounds without hand-tuned timeouts.

A round closes as soon as every *expected* member has answered: delivered a valid update, or had
its update refused (non-finite, malformed, unfetchable). Otherwise it closes at its deadline. In
both cases it needs enough valid updates (own included): at least `min_participants`, and at
least what the rule needs with the Byzantine members the round may still hold. Of the `f`
faulty members the federation tolerates, those already found unusable (refused this round, no
longer expected, or, once the deadline passed, silent) cannot be among the valid updates, so the
rule is asked to tolerate only the rest (see `needed`). A federation of n members therefore
closes its rounds whatever f of them do, as long as the rule works on n - f rows with f' = 0;
and a round that cannot close says why (`Decision.short`).

The deadline is derived, not configured: round start + `patience` x the typical time updates
take to arrive after a round starts (median over peers of a per-peer moving average), clamped to
[`min_wait`, `max_wait`]. Before any measurement exists, the node's own training time stands in.
A member that missed `absent_after` consecutive rounds, or announced its departure, is no longer
expected, so a dead peer costs at most `absent_after` deadlines and then nothing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


def _one_row(_byzantine: int) -> int:
    return 1


@dataclass(frozen=True)
class SyncPolicy:
    min_participants: int = 2
    patience: float = 3.0
    min_wait: float = 1.0
    max_wait: float = 300.0
    absent_after: int = 2
    # A member that never delivered an update has no arrival time to measure yet (it may still
    # be starting: imports, first connections). Rounds wait at least this long for such members,
    # so the first rounds do not close a moment before their update arrives, which would leave
    # peers aggregating different sets and holding different models from then on. A newcomer that
    # never delivers costs this at most `absent_after` rounds.
    first_contact_wait: float = 5.0
    smoothing: float = 0.5  # weight of the newest arrival sample in the moving average
    # The Byzantine members the federation tolerates (aggregation.f), and the rows the rule needs
    # when told to tolerate f' of them (e.g. 2f'+3 for Krum): see `needed`.
    f: int = 0
    rows_needed: Callable[[int], int] = _one_row

    def __post_init__(self) -> None:
        if self.min_participants < 1:
            raise ValueError("min_participants must be >= 1")
        if self.f < 0:
            raise ValueError("f must be >= 0")
        if not 0 < self.min_wait <= self.max_wait:
            raise ValueError("need 0 < min_wait <= max_wait")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")


class ArrivalEstimator:
    """Per-peer moving average of how long after a round starts its update arrives."""

    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self._offsets: dict[str, float] = {}

    def observe(self, peer_id: str, offset_seconds: float) -> None:
        offset = max(0.0, offset_seconds)
        previous = self._offsets.get(peer_id)
        self._offsets[peer_id] = (
            offset if previous is None else (1 - self.smoothing) * previous + self.smoothing * offset
        )

    def typical(self) -> float | None:
        return statistics.median(self._offsets.values()) if self._offsets else None

    def of(self, peer_id: str) -> float | None:
        return self._offsets.get(peer_id)

    def forget(self, peer_id: str) -> None:
        self._offsets.pop(peer_id, None)


@dataclass(frozen=True)
class Decision:
    close: bool
    wait_until: float  # when to ask again if nothing else happens (== now when closing)
    reason: str
    missing: tuple[str, ...] = ()
    # True when the round waits for want of valid updates: every expected member has answered
    # (or the deadline passed), and too few of the answers are usable. `reason` says how many.
    short: bool = False


def byzantine_budget(valid: int, f: int, rows_needed: Callable[[int], int]) -> int | None:
    """The largest f' <= f the rule can run with on `valid` rows (rows_needed(f') <= valid), or
    None when even f' = 0 needs more. It depends on the number of rows alone, so every peer that
    aggregates the same updates uses the same f'."""
    for candidate in range(f, -1, -1):
        if rows_needed(candidate) <= valid:
            return candidate
    return None


@dataclass
class SyncRound:
    """Bookkeeping for the rounds of one node; one instance lives as long as the daemon."""

    own_peer_id: str
    policy: SyncPolicy = field(default_factory=SyncPolicy)
    round: int = 0
    started_at: float = 0.0
    reported: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # members whose update for this round was refused
    # Round from which a member counts as expected without an update of its own: when it was
    # first seen, or when it came back (rejoin, state sync).
    _since: dict[str, int] = field(default_factory=dict)
    # When (clock of decide's `now`) a member was first seen or taken back: it is not taken for
    # silent before first_contact_wait has passed since, whatever the round's deadline.
    _seen_at: dict[str, float] = field(default_factory=dict)
    _last_update: dict[str, int] = field(default_factory=dict)
    _departed: set[str] = field(default_factory=set)
    # Members taken back by `rejoin` that have not delivered since: how many times in a row.
    _rejoins: dict[str, int] = field(default_factory=dict)
    _fallback: float = 1.0
    _previous_deadline: tuple[int, float] = (0, 0.0)  # (round, deadline) of the round before this one

    def __post_init__(self) -> None:
        self.arrivals = ArrivalEstimator(self.policy.smoothing)

    # -------------------------------------------------------------------------- membership
    def note_member(self, peer_id: str, at: float | None = None) -> None:
        """A sign of life (e.g. an announcement) from a peer that has not contributed yet, seen
        at time `at` (None: as if known since before this round).

        A newcomer is expected for `absent_after` rounds from first sight; after that only its
        updates keep it expected, so a peer that announces but never delivers stops costing
        deadlines.
        """
        if peer_id == self.own_peer_id:
            return
        self._departed.discard(peer_id)
        if peer_id not in self._since:
            self._since[peer_id] = self.round
            self._seen_at[peer_id] = -math.inf if at is None else at

    def rejoin(self, peer_id: str, at: float | None = None) -> bool:
        """A member no longer expected shows it is back and level with us (it announced or
        offered a recent round, typically after a restart and a state sync): expect it again,
        as a newcomer, from this round. Its rounds then wait for it up to the first-contact
        deadline, long enough to fetch the latest model and train; without this a member that
        fell behind could never catch up with rounds that close in milliseconds without it.

        A member taken back that does not deliver is taken back again only after 2, 4, 8, ...
        (at most 64) rounds, so announcing without contributing cannot make every round wait.
        Returns True when the member is expected again."""
        if peer_id == self.own_peer_id or peer_id not in self._since or peer_id in self.expected():
            return False
        tries = self._rejoins.get(peer_id, 0)
        if tries and self.round < self._since[peer_id] + self.policy.absent_after + min(2 ** tries, 64):
            return False
        self._departed.discard(peer_id)
        self._since[peer_id] = self.round
        self._seen_at[peer_id] = -math.inf if at is None else at
        self._rejoins[peer_id] = tries + 1
        self.arrivals.forget(peer_id)
        return True

    def synced(self, previous_round: int, round_number: int, live: Iterable[str] | None = None) -> None:
        """This node adopted the federation's model at `round_number`, coming from
        `previous_round`: the members made the rounds in between without it, and it never saw
        their contributions to them, so it expects them afresh (as newcomers) instead of
        judging them by contributions it did not see.

        After a long absence (more than `absent_after` rounds skipped, e.g. a restart) that is
        every member it knows. After a short catch-up it is only the members in `live` (heard
        from lately; None: every member): a member the others have stopped waiting for because
        it died must not become expected here again, or this node would wait for it each
        round, fall behind, sync again, and never close a round of its own."""
        renewed = set(self._since) - self._departed
        if round_number - previous_round <= self.policy.absent_after and live is not None:
            renewed &= set(live)
        for peer in renewed:
            self._since[peer] = max(self._since[peer], round_number)

    def departed(self, peer_id: str) -> bool:
        """The peer announced it is leaving (and has not come back)."""
        return peer_id in self._departed

    def depart(self, peer_id: str) -> None:
        self._departed.add(peer_id)

    def expected(self) -> set[str]:
        """Peers this round waits for: not departed, and contributing recently or newly seen."""
        horizon = self.round - self.policy.absent_after
        expected = {self.own_peer_id}
        for peer, since in self._since.items():
            if peer in self._departed:
                continue
            if max(since, self._last_update.get(peer, since)) >= horizon:
                expected.add(peer)
        return expected

    def roster(self) -> set[str]:
        """Every member known and not departed, this node included (expected or not)."""
        return {self.own_peer_id} | {peer for peer in self._since if peer not in self._departed}

    # -------------------------------------------------------------------------- rounds
    def start(self, round_number: int, now: float, own_train_seconds: float) -> None:
        if self.round:
            self._previous_deadline = (self.round, self.deadline())
        self.round = round_number
        self.started_at = now
        self.reported = set()
        self.refused = set()
        self._fallback = max(own_train_seconds, 1e-3)

    def record(self, peer_id: str, arrived_at: float, round_number: int, *, revive: bool = True) -> None:
        """An accepted update for `round_number` from `peer_id` (own updates included).

        An update brings a departed peer back, unless `revive` is False: the caller knows it was
        sent before the departure (its payload fetch finished after the departure arrived). It
        still counts for its round."""
        self._note_contribution(peer_id, round_number, revive)
        if round_number == self.round:
            self.reported.add(peer_id)
            self.refused.discard(peer_id)
            self.arrivals.observe(peer_id, arrived_at - self.started_at)

    def refuse(self, peer_id: str, round_number: int) -> None:
        """The update `peer_id` sent for `round_number` was refused (non-finite, malformed, not
        fetchable, an equivocation): for this round it is found unusable, and the round need not
        wait for it. A valid update from it later in the round counts as usual."""
        if round_number == self.round and peer_id != self.own_peer_id and peer_id not in self.reported:
            self.refused.add(peer_id)

    def record_late(self, peer_id: str, arrived_at: float, round_number: int, *, revive: bool = True) -> None:
        """An update for `round_number` that arrived after this node closed that round. It is not
        aggregated. If it came before that round's deadline (the round closed early because its
        sender was no longer expected), the sender is expected again, so the next rounds wait
        for it. Without this a member dropped from the expected set (e.g. one restarted a round
        behind) could never return: rounds closed the moment the others were in, a few ms before
        its update, forever. An update later than the deadline changes nothing: waiting for a
        straggler that slow would only cost every round its deadline. `revive` as in record()."""
        if round_number == self.round:
            deadline: float | None = self.deadline()
        else:
            deadline = self._previous_deadline[1] if self._previous_deadline[0] == round_number else None
        if deadline is not None and arrived_at <= deadline:
            self._note_contribution(peer_id, round_number, revive)

    def _note_contribution(self, peer_id: str, round_number: int, revive: bool = True) -> None:
        if peer_id == self.own_peer_id:
            return
        if revive:
            self._departed.discard(peer_id)
        if peer_id not in self._since:
            self._since[peer_id] = round_number
            self._seen_at[peer_id] = -math.inf
        self._last_update[peer_id] = max(self._last_update.get(peer_id, round_number), round_number)
        self._rejoins.pop(peer_id, None)

    def deadline(self) -> float:
        typical = self.arrivals.typical()
        budget = self.policy.patience * (typical if typical is not None else self._fallback)
        floor = self.policy.min_wait
        if any(self.arrivals.of(peer) is None for peer in self.expected() - {self.own_peer_id}):
            floor = max(floor, self.policy.first_contact_wait)
        return self.started_at + min(max(budget, floor), self.policy.max_wait)

    def needed(self, unusable: int) -> int:
        """Valid updates a round needs when `unusable` members are known to have nothing usable
        for it: at least min_participants, and what the rule needs to tolerate the f - unusable
        faulty members that may still be among the valid ones (a member found unusable is
        counted as one of the f faults)."""
        byzantine_left = max(0, self.policy.f - unusable)
        return max(self.policy.min_participants, self.policy.rows_needed(byzantine_left))

    def decide(self, now: float) -> Decision:
        expected = self.expected()
        missing = tuple(sorted(expected - self.reported - self.refused))
        count = len(self.reported)
        deadline = self.deadline()
        # A missing member is taken for silent (a faulty one) once the deadline has passed and it
        # has been known for first_contact_wait: one seen a moment ago may still be starting.
        due_at = {peer: max(deadline, self._seen_at.get(peer, -math.inf) + self.policy.first_contact_wait)
                  for peer in missing}
        pending = {peer for peer, due in due_at.items() if now < due}
        # Found unusable: refused this round, no longer expected, or silent past its due time.
        unusable = self.roster() - self.reported - pending
        need = self.needed(len(unusable))
        if count >= need:
            if not missing:
                if self.refused:
                    return Decision(True, now, f"every expected member answered; {len(self.refused)} "
                                               f"update(s) refused")
                return Decision(True, now, "all expected members reported")
            if now >= deadline:
                return Decision(True, now, f"deadline passed; {len(missing)} member(s) missing", missing)
        if pending:
            return Decision(False, min(due_at[peer] for peer in pending), "waiting for updates", missing)
        # Every expected member answered or is silent, and too few updates are usable: keep
        # waiting (bounded re-checks), never aggregate too few.
        retry = now + min(max(self.policy.min_wait, deadline - self.started_at), self.policy.max_wait)
        return Decision(False, retry, self._shortage(count, need, unusable), missing, short=True)

    def _shortage(self, count: int, need: int, unusable: set[str]) -> str:
        """Why the round cannot close: how many valid updates it has and needs, and why."""
        members = len(self.roster())
        text = f"have {count} valid update(s) of {members} known member(s), {need} needed"
        if self.policy.f:
            text += (f": the rule must tolerate {max(0, self.policy.f - len(unusable))} Byzantine member(s) "
                     f"(f = {self.policy.f}, {len(unusable)} found unusable)")
        if need == self.policy.min_participants:
            text += f" (federation.min_participants = {self.policy.min_participants})"
        return text


def outvoted_round(own: dict[int, bytes], offers: list[tuple[int, bytes, int]]) -> int | None:
    """The newest round after which this node's model is not the one most members hold.

    Peers that aggregate the same updates in the same order hold bit-identical models. A round
    that closed at its deadline can leave one peer with a different set (an update arrived just
    after it closed), and nothing would ever bring it back: later rounds add the same aggregate
    to different bases. Snapshot offers name each member's model hash per round, so a node can
    see it is outvoted and adopt the majority's model.

    `own`: round -> sha256 of this node's model after that round. `offers`: (round, sha256,
    number of OTHER members offering it). A round counts when another hash is held by strictly
    more members than this node's (itself included): a tie moves nobody (a half-and-half split
    stays until a later round breaks it), nor does a single differing offer. Offers still on
    their way can mislead (two seen before a third): a node that moved then compares again after
    the next rounds, like every other.
    """
    newest: int | None = None
    holders = _holders(offers)
    for (number, digest), count in holders.items():
        mine = own.get(number)
        if mine is None or digest == mine:
            continue
        if count > holders.get((number, mine), 0) + 1 and (newest is None or number > newest):
            newest = number
    return newest


def adoptable_snapshot(offers: Iterable[tuple[int, bytes, int]], quorum: int) -> tuple[int, bytes] | None:
    """The snapshot a node behind its peers should adopt: (round, sha256), or None.

    `offers`: (round, sha256, number of distinct OTHER members offering it). Only a hash that at
    least `quorum` members offer counts. With `aggregation.f` = f Byzantine members tolerated the
    runner asks for f + 1: at least one honest member then holds that model, so a lone attacker
    cannot hand its own model (a poisoned one, or one it never serves, which would stall every
    node that tries to fetch it) to the others by offering it for a round nobody reached, which
    robust aggregation would never let through. Peers that aggregated the same updates hold
    bit-identical models, so honest offers of a round agree and reach the quorum.

    Among the counted hashes: the newest round, then the hash most members offer (the majority's
    model), then the smallest hash, so every node picks the same one.
    """
    if quorum < 1:
        raise ValueError(f"quorum must be at least 1, got {quorum}")
    endorsed = [(number, -count, digest) for (number, digest), count in _holders(offers).items() if count >= quorum]
    if not endorsed:
        return None
    newest = max(number for number, _, _ in endorsed)
    _, _, digest = min(entry for entry in endorsed if entry[0] == newest)
    return newest, digest


def _holders(offers: Iterable[tuple[int, bytes, int]]) -> dict[tuple[int, bytes], int]:
    """Members offering each (round, sha256), summed over the entries naming it."""
    holders: dict[tuple[int, bytes], int] = {}
    for number, digest, count in offers:
        holders[(number, digest)] = holders.get((number, digest), 0) + count
    return holders
