"""Byzantine-robust aggregation rules for fednode.

    from fednode.aggregators import build, available
    agg = build("gas", f=2, base="krum", p=10)
    result = agg(updates, seed=round_seed)   # updates: n x d, rows in canonical peer order
    result.aggregate, result.scores, result.selected, result.rejected

See docs/aggregators.md for every rule, its parameters, preconditions and guarantees.
"""

from .base import Aggregator, CallContext
from .errors import AggregationError, PreconditionError
from .registry import RULES, RuleInfo, available, build
from .result import AggregationResult
from .sanitize import RejectionPolicy

__all__ = [
    "RULES",
    "AggregationError",
    "AggregationResult",
    "Aggregator",
    "CallContext",
    "PreconditionError",
    "RejectionPolicy",
    "RuleInfo",
    "available",
    "build",
]
