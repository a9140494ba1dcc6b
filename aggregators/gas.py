"""GAS, gradient splitting (Liu et al., ICML 2023): robust scoring on random coordinate parts."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base import Aggregator, CallContext
from .errors import AggregationError
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
from .partition import PartLayout
from .result import Combination
from .wrapping import build_base


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


def part_seed(seed: int, index: int) -> int:
    """The seed of part `index`'s own permutation, derived from the call's seed (sha256 of both,
    so that no two parts or seeds share a generator state)."""
    digest = hashlib.sha256(b"fednode/gas-part-permutation\x00" + seed.to_bytes(8, "little")
                            + index.to_bytes(8, "little")).digest()
    return int.from_bytes(digest[:8], "little")


def split_count(width: int, size: int) -> int:
    """Number of splits `splits_in_part` cuts a part of `width` coordinates into."""
    return -(-width // size)


def needs_seed(layout: PartLayout, p: int) -> bool:
    """True when the splits of `within_parts` = layout.m are random (some part holds more than
    one split of more than one coordinate)."""
    size = math.ceil(layout.d / p)
    return size > 1 and any(bounds.stop - bounds.start > size for bounds in layout.bounds)


def splits_in_part(bounds: slice, size: int, seed: int | None, index: int) -> list[torch.Tensor]:
    """GAS splits of at most `size` coordinates drawn inside one part (global column indices):
    the part's coordinates permuted by a generator seeded with part_seed(seed, index), then cut
    into chunks of `size` (the last one shorter). No permutation is drawn when the part fits in
    one split or splits have one coordinate."""
    width = bounds.stop - bounds.start
    if width <= size or size == 1:
        order = torch.arange(width)
    else:
        if seed is None:
            raise AggregationError(
                f"rule 'gas': p splits drawn inside parts of {width} coordinates need seed=<int> "
                f"derived from shared data, so every peer draws the same permutation"
            )
        generator = torch.Generator(device="cpu")
        generator.manual_seed(part_seed(seed, index))
        order = torch.randperm(width, generator=generator)
    return [chunk + bounds.start for chunk in torch.split(order, size)]


def split_distances(
    base_rule: Aggregator, rows: torch.Tensor, splits: list[torch.Tensor], context: CallContext
) -> torch.Tensor:
    """len(splits) x n: the L2 distance of every row's split sub-vector to the base rule's
    aggregate of that split (float64). The base rule sees each split unweighted."""
    n = rows.shape[0]
    # Every split is a random subset of the coordinates. Gathering it from the row-major
    # rows touches one cache line per value (3.2 s for all splits at n=16, d=1e7, measured);
    # from a coordinate-major copy, one line per coordinate (0.5 s, plus 0.4 s for the copy,
    # which costs one extra input size of memory).
    by_coordinate = coordinate_major(rows) if len(splits) > 1 else None
    distances = torch.empty(len(splits), n, dtype=WORK_DTYPE)

    def score_split(scratch: Scratch, index: int) -> None:
        columns = splits[index]
        if by_coordinate is None:
            sub_rows = rows  # one split in coordinate order: no copy
        else:
            sub_rows = torch.from_numpy(np.ascontiguousarray(np.take(by_coordinate, columns.numpy(), axis=0).T))
        result = base_rule.combine(sub_rows, context.for_columns(columns))
        if result.distances is not None:
            distances[index] = result.distances
        else:
            distances[index] = row_squared_distances_to(sub_rows, result.aggregate).sqrt_()

    # Splits are independent: spread over worker threads (summed in split order by the caller).
    run_tasks(range(len(splits)), score_split, worker_count(len(splits), per_worker=4))
    return distances


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
    # None: the reference's splits (one permutation of all d coordinates). An int m: the splits
    # are drawn inside each of the m contiguous parts of `PartLayout(d, m)` (the butterfly
    # exchange's parts), so an owner of a part can score its splits alone.
    within_parts: int | None = None
    base_rule: Aggregator = field(init=False, repr=False, compare=False)

    def validate_parameters(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, int) or self.p < 1:
            raise AggregationError(f"rule 'gas': p must be a positive int, got {self.p!r}")
        if self.within_parts is not None and (
            isinstance(self.within_parts, bool) or not isinstance(self.within_parts, int) or self.within_parts < 1
        ):
            raise AggregationError(
                f"rule 'gas': within_parts must be a positive int or None, got {self.within_parts!r}"
            )
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

    def splits(self, d: int, seed: int | None) -> list[torch.Tensor]:
        """The coordinate splits (global column indices), in the order their distances are summed."""
        if self.within_parts is None:
            return coordinate_parts(d, self.p, seed)
        size = math.ceil(d / self.p)
        layout = PartLayout(d, self.within_parts)
        return [split for j, bounds in enumerate(layout.bounds) for split in splits_in_part(bounds, size, seed, j)]

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        splits = self.splits(rows.shape[1], context.seed)
        distances = split_distances(self.base_rule, rows, splits, context)
        coefficients, scores, selected = self.decide(distances, context)
        return Combination(
            aggregate=row_combination(rows, coefficients),
            scores=scores,
            selected=selected,
            diagnostics={"parts": float(len(splits))},
        )

    def decide(
        self, distances: torch.Tensor, context: CallContext
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """From the splits x n distances: the output's coefficients over the rows (the
        normalised weights of the n-f rows with the lowest scores), the scores (distances
        summed in split order) and the chosen rows."""
        n = distances.shape[1]
        scores = ordered_sum(distances)
        chosen = stable_order(scores)[: n - self.f]
        weights = torch.zeros(n, dtype=WORK_DTYPE)
        weights[chosen] = context.normalized_weights(n)[chosen]
        if not float(weights.sum()) > 0.0:
            raise AggregationError("rule 'gas': every selected row has weight zero")
        return weights / weights.sum(), scores, tuple(int(i) for i in chosen)
