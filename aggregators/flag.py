"""Flag Aggregator (Almasi et al., ICLR 2024) in the deterministic Gram-matrix form.

All d-dimensional work is one float64 Gram matrix of the rows plus one weighted sum of the rows;
the FlagIRLS iterations run on n x n matrices. The subspace is Y = Xh^T Z (never materialised),
with Xh the unit-normalised rows and Z an n x r coefficient matrix.

Pairwise (lam > 0) columns e_i - e_j are not expanded into an n^2-column matrix: only A A^T matters
for the left singular vectors, and A A^T = Xh^T B Xh with B = C_w C_w^T (n x n, positive
definite). With B = L L^T (Cholesky), the top-r eigenvectors of L^T G L give the same subspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .base import Aggregator, CallContext
from .errors import AggregationError
from .numerics import WORK_DTYPE, gram, median_value, row_combination, small_matmul
from .result import Combination

IRLS_EPSILON = 1e-7
NORM_FLOOR = 1e-12  # as F.normalize in the reference
EIGENVALUE_CUTOFF = 1e-12  # eigenvalues below this fraction of the largest are dropped


@dataclass(frozen=True)
class FlagSubspace:
    coefficients: torch.Tensor  # Z, n x r' (r' <= r)
    objective: float
    iterations: int
    relative_gap: float  # (mu_r - mu_{r+1}) / mu_1 of the last accepted iterate; nan if undefined


def _irls_weights(projection: torch.Tensor | None, n: int, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-column and pair-column weights (|1 - ||Y^T a||^2| + eps)^(-1/4); pair weights x lam/(n(n-1))."""
    if projection is None:  # RNG-free stand-in for the reference's random first iterate
        data_q = torch.ones(n, dtype=WORK_DTYPE)
        pair_q = torch.ones(n, n, dtype=WORK_DTYPE)
    else:
        data_q = (1.0 - (projection * projection).sum(dim=0)).abs()
        differences = projection[:, :, None] - projection[:, None, :]
        pair_q = (1.0 - (differences * differences).sum(dim=0)).abs()
    data_w = (data_q + IRLS_EPSILON) ** -0.25
    pair_w = torch.zeros(n, n, dtype=WORK_DTYPE)
    if lam > 0 and n > 1:
        pair_w = (pair_q + IRLS_EPSILON) ** -0.25 * (lam / (n * (n - 1)))
        pair_w.fill_diagonal_(0.0)
    return data_w, pair_w


def _column_factor(data_w: torch.Tensor, pair_w: torch.Tensor) -> torch.Tensor:
    """L with L L^T = sum_i w_i^2 e_i e_i^T + sum_{i != j} w_ij^2 (e_i - e_j)(e_i - e_j)^T."""
    if not bool((pair_w != 0).any()):
        return torch.diag(data_w)
    pair_sq = pair_w * pair_w
    symmetric = pair_sq + pair_sq.T
    b = torch.diag(data_w * data_w + symmetric.sum(dim=1)) - symmetric
    return torch.linalg.cholesky(b)


def flag_subspace(gram_hat: torch.Tensor, r: int, lam: float, iters: int, tol: float) -> FlagSubspace:
    """FlagIRLS on the Gram matrix of the unit rows (spec section 1.5)."""
    n = gram_hat.shape[0]
    coefficients: torch.Tensor | None = None
    objective, accepted, gap = float(n), 0, math.nan
    for _ in range(iters):
        projection = None if coefficients is None else small_matmul(coefficients.T, gram_hat)
        factor = _column_factor(*_irls_weights(projection, n, lam))
        k = small_matmul(small_matmul(factor.T, gram_hat), factor)
        eigenvalues, eigenvectors = torch.linalg.eigh((k + k.T) / 2.0)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        top = float(eigenvalues[0])
        keep = int(((eigenvalues[:r] > top * EIGENVALUE_CUTOFF) & (eigenvalues[:r] > 0)).sum())
        candidate = small_matmul(factor, eigenvectors[:, :keep] * eigenvalues[:keep].rsqrt())
        ratios = (small_matmul(candidate.T, gram_hat) ** 2).sum(dim=0)
        candidate_objective = float((1.0 - ratios).clamp_min(0.0).sqrt().sum())
        if coefficients is not None and not objective - candidate_objective > tol:
            break  # no decrease: keep the previous iterate, as the reference does
        coefficients, objective, accepted = candidate, candidate_objective, accepted + 1
        gap = float((eigenvalues[r - 1] - eigenvalues[r]) / top) if r < n and top > 0 else math.nan
        if objective <= tol:
            break
    assert coefficients is not None
    return FlagSubspace(coefficients, objective, accepted, gap)


@dataclass(frozen=True, kw_only=True)
class FlagAggregator(Aggregator):
    """Flag Aggregator: sum of the unit rows projected on the FlagIRLS subspace, divided by r.

    Parameters:
        r: subspace dimension; None means ceil(n/2) (the paper's scripts use about n/2).
        lam: weight of the pairwise term (0 in the reference's experiments).
        iters: FlagIRLS iterations (the reference runs 1, i.e. an unweighted flag mean).
        scale: "reference" returns the scale-free output (norm <= n/r); "norm" multiplies it by
            median_i ||x_i|| * r / n to restore gradient scale (a project choice, not the paper's).
    f is accepted and ignored: the rule has no f parameter.
    """

    name = "flag"
    description = "Flag Aggregator: unit rows projected on a FlagIRLS r-dimensional subspace (Gram form)."
    requirement = "n > r (r defaults to ceil(n/2))"
    scan_gram = "raw"

    r: int | None = None
    lam: float = 0.0
    iters: int = 1
    scale: Literal["reference", "norm"] = "reference"
    tol: float = 1e-10

    def validate_parameters(self) -> None:
        if self.r is not None and (isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1):
            raise AggregationError(f"rule 'flag': r must be a positive int or None, got {self.r!r}")
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0):
            raise AggregationError(f"rule 'flag': lam must be >= 0, got {self.lam!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise AggregationError(f"rule 'flag': iters must be a positive int, got {self.iters!r}")
        if self.scale not in ("reference", "norm"):
            raise AggregationError(f"rule 'flag': scale must be 'reference' or 'norm', got {self.scale!r}")

    def minimum_rows(self) -> int:
        return 2 if self.r is None else self.r + 1

    def subspace_dimension(self, n: int) -> int:
        return math.ceil(n / 2) if self.r is None else self.r

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        raw = context.gram if context.gram is not None else gram(rows, centered=False)
        coefficients, scores, diagnostics = self.decide(raw)
        return Combination(
            aggregate=row_combination(rows, coefficients), scores=scores, diagnostics=diagnostics
        )

    def decide(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """FlagIRLS on the raw Gram matrix of the rows: the output's coefficients over the rows
        (as given, not unit-normalised), 1 - v_i per row, and the diagnostics."""
        n = raw.shape[0]
        r = self.subspace_dimension(n)
        norms = raw.diagonal().clamp_min(0.0).sqrt()
        inverse = 1.0 / norms.clamp_min(NORM_FLOOR)
        gram_hat = raw * inverse[:, None] * inverse[None, :]
        subspace = flag_subspace(gram_hat, r, float(self.lam), self.iters, self.tol)
        z = subspace.coefficients
        projection = small_matmul(z.T, gram_hat)  # r' x n: Y^T xh_i in Z-coordinates
        coefficients = small_matmul(z, projection.sum(dim=1, keepdim=True))[:, 0] / r
        if self.scale == "norm":
            coefficients = coefficients * (median_value(norms) * r / n)
        ratios = (projection * projection).sum(dim=0).clamp(0.0, 1.0)
        diagnostics = {
            "objective": subspace.objective,
            "iterations": float(subspace.iterations),
            "subspace_rank": float(z.shape[1]),
            "relative_eigengap": subspace.relative_gap,
        }
        return coefficients * inverse, 1.0 - ratios, diagnostics
