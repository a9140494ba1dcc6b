"""Robust aggregation over parts of the model dimension, for the butterfly exchange.

The n x d update matrix X is cut into m contiguous parts (`PartLayout(d, m)`); the owner of
part j holds only X[:, part j]. For every rule of `fednode.aggregators`:

1. each owner computes a small partial statistic of its part (`compute_partial`: the part's
   squared row norms and non-finite flags, its n x n float64 Gram matrix, GAS split scores);
2. every member feeds the m partials, in part order, to its `Session`, which sums them and
   derives, identically on every member, either the next request or the decision (weights,
   selections, clipping factors, Weiszfeld coefficients, NNM's mixing, rejected rows);
3. each owner applies the decision to its part (`apply_decision`), giving its part of the
   aggregate.

`aggregate_by_parts(rule, X, m)` plays every owner in one process and returns what `rule(X)`
returns. `verify` lets an honest member check an owner's claim from the n input parts.
See docs/aggregators.md, "Partwise aggregation", for the decomposition per rule and how close
the result is to the all-to-all call's.
"""

from ..partition import PartLayout
from .owner import PartInput, apply_decision, compute_partial, materialize
from .protocol import (
    Columnwise,
    Combine,
    CopyRow,
    Decision,
    GramOf,
    Outcome,
    Partial,
    Request,
    Scan,
    Source,
    SplitScores,
    decode_partial,
    encode_partial,
    expected_shapes,
)
from .session import Session, aggregate_by_parts

__all__ = [
    "Columnwise",
    "Combine",
    "CopyRow",
    "Decision",
    "GramOf",
    "Outcome",
    "PartInput",
    "PartLayout",
    "Partial",
    "Request",
    "Scan",
    "Session",
    "Source",
    "SplitScores",
    "aggregate_by_parts",
    "apply_decision",
    "compute_partial",
    "decode_partial",
    "encode_partial",
    "expected_shapes",
    "materialize",
]
