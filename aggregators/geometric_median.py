"""Geometric median by smoothed Weiszfeld iterations (RFA, Pillutla et al. 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Aggregator, CallContext
from .errors import AggregationError
from .numerics import gram, quadratic_forms, row_combination
from .result import Combination


def distances_to_combination(gram_matrix: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """||x_i - z|| for z = sum_j c_j x_j with sum_j c_j = 1, from the (centred) Gram matrix."""
    n = gram_matrix.shape[0]
    offsets = torch.eye(n, dtype=gram_matrix.dtype) - coefficients[None, :]
    return quadratic_forms(gram_matrix, offsets).clamp_min(0.0).sqrt()


@dataclass(frozen=True, kw_only=True)
class GeometricMedian(Aggregator):
    """argmin_z sum_i a_i ||z - x_i||, by smoothed Weiszfeld from the weighted mean.

    z <- sum_i b_i x_i / sum_i b_i with b_i = a_i / max(nu, ||x_i - z||), until the step is at
    most `tol` x the RMS spread of the rows, or `max_iter` steps. z stays a convex combination of
    the rows, so each step costs O(n^2) on the float64 Gram matrix, not O(nd).
    """

    name = "geometric_median"
    description = "Geometric median (RFA): smoothed Weiszfeld from the weighted mean, to a tolerance."
    requirement = "n >= 2f+1"
    uses_weights = True
    scan_gram = "centered"

    nu: float = 1e-6
    tol: float = 1e-10
    max_iter: int = 1000

    def validate_parameters(self) -> None:
        if not (self.nu > 0 and self.tol >= 0):
            raise AggregationError("rule 'geometric_median': nu must be > 0 and tol >= 0")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise AggregationError("rule 'geometric_median': max_iter must be a positive int")

    def minimum_rows(self) -> int:
        return 2 * self.f + 1

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        gram_matrix = context.gram if context.gram is not None else gram(rows, centered=True)
        coefficients, scores, diagnostics = self.decide(gram_matrix, context)
        return Combination(
            aggregate=row_combination(rows, coefficients), scores=scores, diagnostics=diagnostics
        )

    def decide(
        self, gram_matrix: torch.Tensor, context: CallContext
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Weiszfeld on the centred Gram matrix: the output's coefficients over the rows, each
        row's distance to it, and the diagnostics."""
        n = gram_matrix.shape[0]
        alpha = context.normalized_weights(n)
        spread = math.sqrt(max(float(gram_matrix.diagonal().sum()) / n, 0.0))
        coefficients = alpha.clone()
        iterations, converged = 0, spread == 0.0
        while not converged and iterations < self.max_iter:
            distances = distances_to_combination(gram_matrix, coefficients)
            beta = alpha / distances.clamp_min(self.nu)
            updated = beta / beta.sum()
            step = quadratic_forms(gram_matrix, (updated - coefficients)[None, :])[0].clamp_min(0.0).sqrt()
            coefficients = updated
            iterations += 1
            converged = float(step) <= self.tol * spread
        scores = distances_to_combination(gram_matrix, coefficients)
        return coefficients, scores, {"iterations": float(iterations), "converged": float(converged)}
