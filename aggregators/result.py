"""The value every aggregation rule returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AggregationResult:
    """Outcome of one aggregation call.

    Attributes:
        aggregate: the d-vector, same dtype and device as the input rows.
        scores: float64 tensor of length n (one entry per *input* row, canonical order);
            lower means more trusted. Rejected rows score +inf. None for rules without scores.
        selected: input-row indices the output was built from (ascending), or None when the
            rule blends every kept row.
        rejected: input-row indices dropped before aggregating (non-finite or absurd norm).
        diagnostics: small numeric facts about the call (iterations, eigen-gap, ...).
    """

    aggregate: torch.Tensor
    scores: torch.Tensor | None
    selected: tuple[int, ...] | None
    rejected: tuple[int, ...]
    diagnostics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Combination:
    """Internal result of a rule on already-sanitised rows, before mapping back to input indices.

    `aggregate` is computed in float64 and stored in the rows' dtype (at least float32), block by
    block; `scores` and `selected` refer to the sanitised rows. `distances`, when a rule gets it
    for free, is the float64 L2 distance of every row to `aggregate` exactly as stored (GAS uses it
    instead of another pass over the rows).
    """

    aggregate: torch.Tensor
    scores: torch.Tensor | None = None
    selected: tuple[int, ...] | None = None
    diagnostics: Mapping[str, float] = field(default_factory=dict)
    distances: torch.Tensor | None = None
