"""Checking an owner's claim: an honest member recomputes the partial statistic or the
aggregated part from the n input parts and compares.

Honest owners on the same torch build and CPU instruction set produce the same bits, and
`exact=True` asks for them. Across instruction sets (AVX2 vs AVX-512) MKL may sum in another
order, so by default each value may differ from the recomputation by a float64 rounding bound
(below), about 1e-12 relative at most, far below anything that changes a decision except at a
near-exact tie. Excluding an honest owner is the costly mistake; a "lie" inside that bound
changes nothing.

Bounds (u = 2^-53, gamma_k = k u / (1 - k u), w = the part's width, k = rows, s = the storage
dtype's eps when the source rows are NNM-mixed, else 0):
- squared norm of row i: 2 (gamma_w + s) ||x_i||^2;
- Gram entry (i, k): 2 (gamma_w + 2 (k+2) u + 2 s) a_i a_k, a_i = ||x_i|| + max_j ||x_j||
  (bounds the centred rows too);
- GAS split distances: 1e-9 x (the distance + the largest distance of that split);
- aggregated coordinate l, linear combination: 2 gamma_(k+1) sum_i |c_i y_il| + eps_out |value|
  (+ 4 s max_i |y_il| when mixed); order statistics: exact (sorting and IEEE float64 sums are
  the same on every CPU), + 4 s max_i |y_il| when mixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..numerics import WORK_DTYPE, result_dtype, row_combination, row_squared_norms, single_threaded_blas
from .owner import PartInput, apply_decision, compute_partial, materialize
from .protocol import Columnwise, Combine, CopyRow, Decision, GramOf, Partial, Request, Scan

UNIT_ROUNDOFF = 2.0**-53
SPLIT_DISTANCE_RTOL = 1e-9


@dataclass(frozen=True)
class Check:
    """Outcome of checking one claim. `deviation` is the largest |claimed - recomputed| /
    allowed over the values (0 when they are identical; > 1, or inf, when the claim is false);
    `field` names the first field that failed."""

    ok: bool
    deviation: float
    field: str | None = None

    @property
    def detail(self) -> str:
        if self.ok:
            return f"claim agrees (deviation {self.deviation:.3g} of the allowed rounding)"
        return f"claim differs in {self.field!r} ({self.deviation:.3g} x the allowed rounding)"


def _gamma(k: int) -> float:
    return k * UNIT_ROUNDOFF / (1.0 - k * UNIT_ROUNDOFF)


def _compare(claimed: torch.Tensor | None, expected: torch.Tensor | None, allowed: torch.Tensor | None) -> float:
    """Largest |claimed - expected| / allowed; inf on a shape, dtype or non-finite mismatch."""
    if claimed is None or expected is None:
        return 0.0 if claimed is None and expected is None else math.inf
    if claimed.shape != expected.shape or claimed.dtype != expected.dtype:
        return math.inf
    if expected.dtype == torch.bool:
        return 0.0 if torch.equal(claimed, expected) else math.inf
    claimed64, expected64 = claimed.to(WORK_DTYPE), expected.to(WORK_DTYPE)
    finite = torch.isfinite(expected64)
    # Non-finite values (a non-finite row's partial norm) must be claimed exactly alike.
    if not torch.equal(torch.isnan(claimed64), torch.isnan(expected64)):
        return math.inf
    if not torch.equal(claimed64[~finite & ~torch.isnan(expected64)], expected64[~finite & ~torch.isnan(expected64)]):
        return math.inf
    if not bool(torch.isfinite(claimed64[finite]).all()):
        return math.inf
    difference = (claimed64[finite] - expected64[finite]).abs()
    if not bool((difference > 0).any()):
        return 0.0
    if allowed is None:
        return math.inf
    limit = allowed.to(WORK_DTYPE).expand_as(expected64)[finite]
    ratios = torch.where(difference > 0, difference / limit, torch.zeros_like(difference))
    return float(ratios.max())


def _row_scale(rows: torch.Tensor) -> torch.Tensor:
    """a_i = ||x_i|| + max_j ||x_j|| over the finite rows (bounds centred rows as well)."""
    norms = row_squared_norms(rows).sqrt()
    finite = norms[torch.isfinite(norms)]
    return norms + (float(finite.max()) if finite.numel() else 0.0)


def _partial_allowances(request: Request, part: PartInput, expected: Partial) -> dict[str, torch.Tensor | None]:
    width = part.rows.shape[1]
    if isinstance(request, Scan):
        rows = part.rows
        extra = request.rule.scan_extra(rows, part.center) if expected.gram is not None else None
        scale = _row_scale(rows if extra is None else torch.cat([rows.to(WORK_DTYPE), extra.to(WORK_DTYPE)]))
        k = scale.numel()
        # The fused pass gets centred norms as ||x - c||^2 + 2<x - c, c> + ||c||^2: relative to a_i^2.
        factor = 2 * (_gamma(width) + 2 * (k + 2) * UNIT_ROUNDOFF)
        allowed: dict[str, torch.Tensor | None] = {"squared_norms": factor * scale[: rows.shape[0]] ** 2}
        if expected.gram is not None:
            allowed["gram"] = factor * scale[:, None] * scale[None, :]
        return allowed
    if isinstance(request, GramOf):
        rows = materialize(request.source, part)
        mixed_eps = torch.finfo(rows.dtype).eps if request.source.mixing is not None else 0.0
        if request.with_center:
            centre = part.center if part.center is not None else torch.zeros(width, dtype=rows.dtype)
            rows = torch.cat([rows.to(WORK_DTYPE), centre[None, :].to(WORK_DTYPE)])
        scale = _row_scale(rows)
        k = scale.numel()
        factor = 2 * (_gamma(width) + 2 * (k + 2) * UNIT_ROUNDOFF + 2 * mixed_eps)
        return {"gram": factor * scale[:, None] * scale[None, :]}
    distances = expected.distances
    if distances is None:
        raise ValueError("split scores without distances: nothing to compare against")
    largest = distances.abs().amax(dim=1, keepdim=True)
    return {"distances": SPLIT_DISTANCE_RTOL * (distances.abs() + largest)}


def check_partial(request: Request, part: PartInput, claimed: Partial, *, exact: bool = False) -> Check:
    """Recompute `request`'s partial over `part` and compare it with an owner's claim."""
    expected = compute_partial(request, part)
    with torch.no_grad(), single_threaded_blas():
        allowed = {} if exact else _partial_allowances(request, part, expected)
    names = ["non_finite", "squared_norms", "gram", "distances"]
    if isinstance(request, Scan) and not bool(torch.isfinite(expected.squared_norms).all()):
        # A row with a non-finite partial norm is rejected, and with it the scan's Gram matrix
        # (the members request the kept rows' Gram instead): nothing to check there.
        names.remove("gram")
    worst = 0.0
    for name in names:
        deviation = _compare(getattr(claimed, name), getattr(expected, name), allowed.get(name))
        if deviation > 1.0:
            return Check(False, deviation, name)
        worst = max(worst, deviation)
    return Check(True, worst)


def check_aggregated_part(decision: Decision, part: PartInput, claimed: torch.Tensor, *, exact: bool = False) -> Check:
    """Recompute the decision's aggregated part and compare it with an owner's claim."""
    expected = apply_decision(decision, part)
    if exact:
        deviation = _compare(claimed, expected, None)
        return Check(deviation <= 1.0, deviation, None if deviation <= 1.0 else "aggregate")
    with torch.no_grad(), single_threaded_blas():
        rows = materialize(decision.source, part)
        storage_eps = torch.finfo(result_dtype(rows)).eps
        allowed = torch.zeros(expected.shape, dtype=WORK_DTYPE)
        if isinstance(decision, Combine):
            magnitudes = rows.abs()
            coefficients = decision.coefficients.abs()
            if decision.center_coefficient is not None:
                centre = part.center if part.center is not None else torch.zeros(rows.shape[1], dtype=rows.dtype)
                magnitudes = torch.cat([magnitudes.to(WORK_DTYPE), centre.abs()[None, :].to(WORK_DTYPE)])
                coefficients = torch.cat([coefficients, decision.center_coefficient.abs()])
            spread = row_combination(magnitudes.to(WORK_DTYPE), coefficients).to(WORK_DTYPE)
            allowed += 2 * _gamma(coefficients.numel() + 1) * spread + storage_eps * expected.to(WORK_DTYPE).abs()
        if decision.source.mixing is not None and isinstance(decision, Columnwise | CopyRow | Combine):
            allowed += 4 * storage_eps * rows.abs().amax(dim=0).to(WORK_DTYPE)
    deviation = _compare(claimed, expected, allowed)
    return Check(deviation <= 1.0, deviation, None if deviation <= 1.0 else "aggregate")

