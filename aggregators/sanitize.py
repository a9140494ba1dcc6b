"""Rejection of non-finite and absurdly large rows before any rule sees them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import AggregationError
from .numerics import finite_rows, median_value, row_squared_norms

DEFAULT_MAX_NORM = 1e12
DEFAULT_MAX_NORM_RATIO = 1e4


@dataclass(frozen=True)
class RowRejection:
    """Which input rows were dropped, and why."""

    non_finite: tuple[int, ...]
    too_large: tuple[int, ...]

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.non_finite + self.too_large))


@dataclass(frozen=True)
class RejectionPolicy:
    """Sanitation applied to every call, before preconditions are checked.

    A row is rejected when
      1. any entry is NaN or +-inf; or
      2. its L2 norm (float64) exceeds `max_norm` (absolute cap; None disables it) or is not
         finite (overflow); or
      3. its norm exceeds `max_norm_ratio` x the median norm of the rows whose norm is finite
         (relative cap; None disables it; skipped when that median is 0).

    The caps are sanitation, not robustness: they protect the arithmetic (overflow, a single row
    dominating float64 Gram sums) and are far above honest spreads. The defaults (1e12 absolute,
    1e4 x median relative) never rejected an honest row in the digits experiment, and they let the
    -10*mean and Gaussian attacks through: handling those is the rules' job.
    """

    max_norm: float | None = DEFAULT_MAX_NORM
    max_norm_ratio: float | None = DEFAULT_MAX_NORM_RATIO

    def __post_init__(self) -> None:
        for name in ("max_norm", "max_norm_ratio"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise AggregationError(f"{name} must be a positive number or None, got {value!r}")

    def find(self, matrix: torch.Tensor, squared_norms: torch.Tensor | None = None) -> RowRejection:
        """Rows to drop. `squared_norms` (float64, one per row) may come from a pass the caller
        made anyway (a Gram matrix); if any of them is not finite they are recomputed row by row,
        because a fused pass can spread one row's NaN to the others."""
        # One float64 pass: NaN/inf entries make the squared norm NaN/inf. A finite float64 row
        # can also overflow it (entries above ~1e154); only such rows get an entry-wise check.
        if squared_norms is None or not bool(torch.isfinite(squared_norms).all()):
            squared_norms = row_squared_norms(matrix)
        squared_norms = squared_norms.to(device="cpu", dtype=torch.float64)
        suspicious = torch.nonzero(~torch.isfinite(squared_norms.sqrt())).flatten()
        non_finite_mask = torch.zeros(matrix.shape[0], dtype=torch.bool)
        if suspicious.numel():
            non_finite_mask[suspicious] = ~finite_rows(matrix[suspicious.to(matrix.device)]).cpu()
        return self.classify(squared_norms, non_finite_mask)

    def classify(self, squared_norms: torch.Tensor, non_finite_mask: torch.Tensor) -> RowRejection:
        """Rows to drop, given every row's float64 squared norm and whether it has a non-finite
        entry (`find` computes both from the rows; the partwise path sums them over parts)."""
        norms = squared_norms.to(device="cpu", dtype=torch.float64).sqrt()
        too_large_mask = ~non_finite_mask & ~torch.isfinite(norms)
        if self.max_norm is not None:
            too_large_mask |= norms > self.max_norm
        finite_norms = norms[torch.isfinite(norms)]
        if self.max_norm_ratio is not None and finite_norms.numel():
            median_norm = median_value(finite_norms)
            if median_norm > 0.0:
                too_large_mask |= norms > self.max_norm_ratio * median_norm
        too_large_mask &= ~non_finite_mask
        return RowRejection(
            non_finite=tuple(int(i) for i in torch.nonzero(non_finite_mask).flatten()),
            too_large=tuple(int(i) for i in torch.nonzero(too_large_mask).flatten()),
        )
