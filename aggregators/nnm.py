"""Nearest-neighbour mixing (Allouah et al. 2023): a pre-aggregator composable with any rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base import Aggregator, CallContext
from .coordinatewise import ColumnwiseRule, SortedReducer
from .krum import pairwise_squared_distances
from .numerics import WORK_DTYPE, Scratch, mix_rows, result_dtype, sorted_columns, stable_order
from .result import Combination
from .wrapping import build_base


def mixing_matrix(distances: torch.Tensor, f: int) -> torch.Tensor:
    """n x n float64 matrix whose row i averages the n-f rows nearest to row i (itself first)."""
    n = distances.shape[0]
    ranked = distances.clone()
    ranked.fill_diagonal_(-1.0)  # each row is its own first neighbour
    mixing = torch.zeros(n, n, dtype=WORK_DTYPE)
    for i in range(n):
        mixing[i, stable_order(ranked[i])[: n - f]] = 1.0 / (n - f)
    return mixing


def nearest_neighbour_mixing(rows: torch.Tensor, f: int, context: CallContext | None = None) -> torch.Tensor:
    """Replace each row by the mean of its n-f nearest rows, itself included.

    Neighbours are ranked by float64 squared distance, ties by row index; the row itself always
    comes first. The mixed rows are stored in the input dtype (at least float32).
    """
    n, d = rows.shape
    mixing = mixing_matrix(pairwise_squared_distances(rows, context), f)
    mixed = torch.empty(n, d, dtype=result_dtype(rows))
    mixed_values = mixed.numpy()

    def store(scratch: Scratch, cols: slice, block: np.ndarray) -> None:
        np.copyto(mixed_values[:, cols], block)  # one rounding to the storage dtype

    mix_rows(rows, mixing, store)
    return mixed


def mixed_column_rule(rows: torch.Tensor, f: int, context: CallContext, reducer: SortedReducer) -> torch.Tensor:
    """A coordinate-wise rule applied to the NNM-mixed rows without materialising them: each
    column block is mixed, rounded to the storage dtype as `nearest_neighbour_mixing` would
    store it, sorted and reduced while it is in cache. Same result, no n x d copy."""
    n, d = rows.shape
    mixing = mixing_matrix(pairwise_squared_distances(rows, context), f)
    storage = result_dtype(rows)
    out = torch.empty(d, dtype=storage)
    out_values = out.numpy()

    def reduce(scratch: Scratch, cols: slice, block: np.ndarray) -> None:
        width = cols.stop - cols.start
        stored = scratch.tensor("stored", n + 1, block.shape[1], storage).numpy()
        np.copyto(stored[:n], block)
        sorted_rows = sorted_columns(stored[:n], stored[n])
        np.copyto(out_values[cols], reducer(scratch, sorted_rows, width)[:width])

    mix_rows(rows, mixing, reduce)
    return out


@dataclass(frozen=True, kw_only=True)
class NearestNeighbourMixing(Aggregator):
    """NNM(f) followed by the rule `base` (built with the same f and `base_params`)."""

    name = "nnm"
    description = (
        "Nearest-neighbour mixing: each row becomes the mean of its n-f nearest rows, then `base` runs."
    )
    requirement = "n >= f+1 and the base rule's requirement"
    scan_gram = "centered"

    base: str = "trimmed_mean"
    base_params: Mapping[str, Any] = field(default_factory=dict)
    base_rule: Aggregator = field(init=False, repr=False, compare=False)

    def validate_parameters(self) -> None:
        object.__setattr__(self, "base_rule", build_base(self.name, self.base, self.f, self.base_params))
        # NNM passes weights and the centre straight to its base rule.
        object.__setattr__(self, "uses_weights", self.base_rule.uses_weights)
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
        if context.weights is not None and not self.base_rule.uses_weights:
            context = context.with_weights(None)  # uniform weights, checked by the caller
        if isinstance(self.base_rule, ColumnwiseRule):
            reducer = self.base_rule.column_reducer(rows.shape[0])
            return Combination(aggregate=mixed_column_rule(rows, self.f, context, reducer))
        return self.base_rule.combine(nearest_neighbour_mixing(rows, self.f, context), context.without_gram())
