"""Coordinate-wise order-statistic rules: median and trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .base import Aggregator, CallContext
from .numerics import SORT_BLOCK, WORK_DTYPE, column_blocks, middle_average, result_dtype, sorted_columns
from .result import Combination

SortedReducer = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def reduce_sorted_columns(rows: torch.Tensor, reducer: SortedReducer) -> torch.Tensor:
    """Sort every coordinate across rows, reduce the sorted rows to one value each (in float64),
    and store it in `result_dtype(rows)`."""
    out = torch.empty(rows.shape[1], dtype=result_dtype(rows), device=rows.device)
    for cols in column_blocks(rows.shape[1], SORT_BLOCK):
        out[cols] = reducer(sorted_columns(rows[:, cols]))
    return out


@dataclass(frozen=True, kw_only=True)
class Median(Aggregator):
    """Coordinate-wise median; for an even number of rows, the mean of the two middle values."""

    name = "median"
    description = "Coordinate-wise median (even n: mean of the two middle values, as numpy/ByzFL)."
    requirement = "n >= 2f+1"

    def minimum_rows(self) -> int:
        return 2 * self.f + 1

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        return Combination(aggregate=reduce_sorted_columns(rows, middle_average))


@dataclass(frozen=True, kw_only=True)
class TrimmedMean(Aggregator):
    """Per coordinate: drop the f largest and f smallest values, average the n-2f left."""

    name = "trimmed_mean"
    description = "Coordinate-wise trimmed mean: drop the f largest and f smallest values per coordinate."
    requirement = "n >= 2f+1"

    def minimum_rows(self) -> int:
        return 2 * self.f + 1

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        f = self.f

        def trimmed(sorted_rows: Sequence[torch.Tensor]) -> torch.Tensor:
            kept = torch.stack(list(sorted_rows[f : len(sorted_rows) - f])).to(WORK_DTYPE)
            return kept.sum(dim=0) / kept.shape[0]

        return Combination(aggregate=reduce_sorted_columns(rows, trimmed))
