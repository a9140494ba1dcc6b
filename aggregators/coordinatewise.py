"""Coordinate-wise order-statistic rules: median and trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .base import Aggregator, CallContext
from .numerics import Scratch, map_sorted_columns, middle_average
from .result import Combination

# Reduces the sorted rows of a block (n arrays of `width` values, ascending per column) to one
# float64 value per column, in a scratch vector of at least `width` entries.
SortedReducer = Callable[[Scratch, list[np.ndarray], int], np.ndarray]


def _output(scratch: Scratch, width: int) -> np.ndarray:
    return scratch.tensor("reduced", 1, width)[0].numpy()


def median_reducer(scratch: Scratch, sorted_rows: list[np.ndarray], width: int) -> np.ndarray:
    return middle_average(sorted_rows, _output(scratch, width))


def trimmed_mean_reducer(f: int) -> SortedReducer:
    """Mean of the sorted values f..n-f-1, summed in float64 in ascending order."""

    def reduce(scratch: Scratch, sorted_rows: list[np.ndarray], width: int) -> np.ndarray:
        kept = sorted_rows[f : len(sorted_rows) - f]
        out = _output(scratch, width)
        np.copyto(out, kept[0])
        for row in kept[1:]:
            out += row
        out /= len(kept)
        return out

    return reduce


class ColumnwiseRule(Aggregator):
    """A rule whose output coordinate j depends only on column j (NNM fuses such base rules into
    its mixing pass instead of materialising the mixed rows)."""

    def column_reducer(self, n: int) -> SortedReducer:
        raise NotImplementedError

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        return Combination(aggregate=map_sorted_columns(rows, self.column_reducer(rows.shape[0])))


@dataclass(frozen=True, kw_only=True)
class Median(ColumnwiseRule):
    """Coordinate-wise median; for an even number of rows, the mean of the two middle values."""

    name = "median"
    description = "Coordinate-wise median (even n: mean of the two middle values, as numpy/ByzFL)."
    requirement = "n >= 2f+1"

    def minimum_rows(self) -> int:
        return 2 * self.f + 1

    def column_reducer(self, n: int) -> SortedReducer:
        return median_reducer


@dataclass(frozen=True, kw_only=True)
class TrimmedMean(ColumnwiseRule):
    """Per coordinate: drop the f largest and f smallest values, average the n-2f left."""

    name = "trimmed_mean"
    description = "Coordinate-wise trimmed mean: drop the f largest and f smallest values per coordinate."
    requirement = "n >= 2f+1"

    def minimum_rows(self) -> int:
        return 2 * self.f + 1

    def column_reducer(self, n: int) -> SortedReducer:
        return trimmed_mean_reducer(self.f)
