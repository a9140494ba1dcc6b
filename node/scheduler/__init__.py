"""Scheduling decisions: when a round closes and whom it waits for. Pure code, no I/O.

`sync` implements synchronous k-of-n rounds with deadlines derived from measured arrival times.
The daemon feeds these classes timestamps and events and acts on their decisions; tests drive
them with a simulated clock.
"""

from fednode.node.scheduler.sync import ArrivalEstimator, Decision, SyncPolicy, SyncRound

__all__ = ["ArrivalEstimator", "Decision", "SyncPolicy", "SyncRound"]
