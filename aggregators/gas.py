"""GAS, gradient splitting (Liu et al., ICML 2023): robust scoring on random coordinate parts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base import Aggregator, CallContext
from .errors import AggregationError
from .nnm import build_base
from .numerics import (
    WORK_DTYPE,
    Scratch,
    coordinate_major,
    ordered_sum,
    row_combination,
    row_squared_distances_to,
    run_tasks,
    stable_order,
    worker_count,
)
from .result import Combination


def coordinate_parts(d: int, p: int, seed: int | None) -> list[torch.Tensor]:
    """Split range(d) into parts of ceil(d/p) coordinates (the last shorter; fewer than p parts
    when d is small), after a permutation drawn from a dedicated generator seeded with `seed`.

    No permutation is needed, and none is drawn, when there is one part or one coordinate per
    part. Otherwise a missing seed is an error: peers must agree on the permutation.
    """
    size = math.ceil(d / p)
    if p == 1 or size == 1:
        order = torch.arange(d)
    else:
        if seed is None:
            raise AggregationError(
                f"rule 'gas': p={p} splits d={d} coordinates into random parts; pass seed=<int> "
                f"derived from shared data (e.g. sha256 of run id and round) so every peer draws the same permutation"
            )
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        order = torch.randperm(d, generator=generator)
    return list(torch.split(order, size))


@dataclass(frozen=True, kw_only=True)
class GradientSplitting(Aggregator):
    """Score each row by the sum over p coordinate parts of its L2 distance to the `base` rule's
    aggregate of that part; return the (weighted) mean of the n-f full rows with the lowest scores.
    """

    name = "gas"
    description = (
        "GAS: run `base` on p random coordinate parts, score rows by their summed distance to the part "
        "aggregates, average the n-f best rows. Needs seed= when the parts are random."
    )
    requirement = "n >= f+1 and the base rule's requirement"
    uses_weights = True
    uses_seed = True

    base: str = "bulyan"
    p: int = 1000
    base_params: Mapping[str, Any] = field(default_factory=dict)
    base_rule: Aggregator = field(init=False, repr=False, compare=False)

    def validate_parameters(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, int) or self.p < 1:
            raise AggregationError(f"rule 'gas': p must be a positive int, got {self.p!r}")
        if self.base == "gas":
            raise AggregationError("rule 'gas' cannot wrap itself")
        object.__setattr__(self, "base_rule", build_base(self.name, self.base, self.f, self.base_params))
        object.__setattr__(self, "uses_center", self.base_rule.uses_center)

    def caveats(self) -> str:
        return self.base_rule.caveats()

    def minimum_rows(self) -> int:
        return max(self.f + 1, self.base_rule.minimum_rows())

    def requirement_text(self) -> str:
        return (
            f"n >= f+1 and {self.base_rule.requirement} for base {self.base!r} (= {self.minimum_rows()} rows)"
        )

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        n, d = rows.shape
        parts = coordinate_parts(d, self.p, context.seed)
        # Every part is a random subset of the coordinates. Gathering it from the row-major
        # rows touches one cache line per value (3.2 s for all parts at n=16, d=1e7, measured);
        # from a coordinate-major copy, one line per coordinate (0.5 s, plus 0.4 s for the copy,
        # which costs one extra input size of memory).
        by_coordinate = coordinate_major(rows) if len(parts) > 1 else None
        distances = torch.empty(len(parts), n, dtype=WORK_DTYPE)

        def score_part(scratch: Scratch, index: int) -> None:
            columns = parts[index]
            if len(parts) == 1:
                sub_rows = rows  # one part in coordinate order: no copy
            else:
                sub_rows = torch.from_numpy(np.ascontiguousarray(np.take(by_coordinate, columns.numpy(), axis=0).T))
            result = self.base_rule.combine(sub_rows, context.for_columns(columns))
            if result.distances is not None:
                distances[index] = result.distances
            else:
                distances[index] = row_squared_distances_to(sub_rows, result.aggregate).sqrt_()

        # Parts are independent: spread over worker threads, summed in part order.
        run_tasks(range(len(parts)), score_part, worker_count(len(parts), per_worker=4))
        scores = ordered_sum(distances)
        chosen = stable_order(scores)[: n - self.f]
        weights = torch.zeros(n, dtype=WORK_DTYPE)
        weights[chosen] = context.normalized_weights(n)[chosen]
        if not float(weights.sum()) > 0.0:
            raise AggregationError("rule 'gas': every selected row has weight zero")
        return Combination(
            aggregate=row_combination(rows, weights / weights.sum()),
            scores=scores,
            selected=tuple(int(i) for i in chosen),
            diagnostics={"parts": float(len(parts))},
        )
