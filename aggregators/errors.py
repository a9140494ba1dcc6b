"""Exceptions raised by the aggregation library."""

from __future__ import annotations


class AggregationError(ValueError):
    """Invalid input, configuration or call for an aggregation rule."""


class PreconditionError(AggregationError):
    """A rule's requirement on the number of rows (n) versus the declared f is violated.

    Raised after rejection, on the rows that remain. The library never lowers f to make a
    precondition hold.
    """

    def __init__(self, rule: str, n: int, f: int, requirement: str, rejected: int = 0) -> None:
        self.rule = rule
        self.n = n
        self.f = f
        self.requirement = requirement
        self.rejected = rejected
        detail = f" ({rejected} row(s) were rejected before the check)" if rejected else ""
        super().__init__(f"rule {rule!r} needs {requirement}, got n={n} with f={f}{detail}")
