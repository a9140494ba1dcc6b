"""Scheduling decisions: when a round closes and whom it waits for. Pure code, no I/O.

`sync` implements synchronous k-of-n rounds with deadlines derived from measured arrival times;
`fedcompass` the semi-asynchronous FedCompass arrival groups. The daemon feeds these classes
timestamps and events and acts on their decisions; tests drive them with a simulated clock.
"""

from fednode.node.scheduler.fedcompass import (
    Arrival,
    ArrivalGroup,
    ArrivalKind,
    Assignment,
    CompassPolicy,
    CompassScheduler,
    CompassServer,
    GroupCut,
    GroupDecision,
    SpeedEstimator,
    UpdateRef,
    staleness_weight,
)
from fednode.node.scheduler.sync import (
    ArrivalEstimator,
    Decision,
    SyncPolicy,
    SyncRound,
    adoptable_snapshot,
    byzantine_budget,
    outvoted_round,
)

__all__ = [
    "Arrival",
    "ArrivalEstimator",
    "ArrivalGroup",
    "ArrivalKind",
    "Assignment",
    "CompassPolicy",
    "CompassScheduler",
    "CompassServer",
    "Decision",
    "GroupCut",
    "GroupDecision",
    "SpeedEstimator",
    "SyncPolicy",
    "SyncRound",
    "UpdateRef",
    "adoptable_snapshot",
    "byzantine_budget",
    "outvoted_round",
    "staleness_weight",
]
