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

Exactness against the all-to-all call `rule(X)` (docs/aggregators.md, "Partwise aggregation"):
- m = 1: bit-identical for every rule.
- Rejection, and every output coordinate that depends on its own column only (mean, median,
  trimmed mean, the combination and coordinate-wise steps; NNM's mixing when the parts are
  column-block aligned): bit-identical for any m. GAS with within_parts = m: bit-identical.
- The Gram matrix (and row norms) is the same sum of block contributions associated differently
  (the call folds its 8,192-column blocks left to right, the parts fold theirs and are then
  added in part order). With u = 2^-53, gamma_K = K u / (1 - K u), B = ceil(d / 8192):
      |G_parts(i,k) - G_call(i,k)| <= 2 gamma_K ||y_i|| ||y_k||,
      K = B + m for block-aligned parts, 8192 + B + m otherwise
  (y: the raw or centred rows). Selections (Krum, Multi-Krum, Bulyan, NNM's neighbours) are then
  identical unless candidates tie up to that perturbation; geometric median, centred clipping
  and Flag move with it (Flag divided by its relative eigengap).
Every member of one exchange sums the same partials in the same order, so members agree with
each other bit for bit whatever the bound.
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
