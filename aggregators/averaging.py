"""Weighted mean (FedAvg): not robust, the baseline every robust rule is compared with."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Aggregator, CallContext
from .numerics import row_combination
from .result import Combination


@dataclass(frozen=True, kw_only=True)
class Mean(Aggregator):
    """sum_i w_i x_i / sum_i w_i (uniform weights by default). f is accepted and ignored."""

    name = "mean"
    description = "Weighted mean (FedAvg); not robust: one Byzantine row can move it arbitrarily far."
    uses_weights = True

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        weights = context.normalized_weights(rows.shape[0])
        return Combination(aggregate=row_combination(rows, weights))
