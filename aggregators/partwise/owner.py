"""The owner's side: compute a request's partial statistic over one part, and apply the
decision to the part. Pure functions of the request or decision and the part's data; each one
calls the same numerics as the all-to-all rule, on the part's columns only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..base import CallContext
from ..coordinatewise import SortedReducer, median_reducer, trimmed_mean_reducer
from ..errors import AggregationError
from ..gas import split_distances, splits_in_part
from ..krum import mean_around_median
from ..numerics import (
    Scratch,
    finite_rows,
    gram,
    gram_and_norms,
    map_sorted_columns,
    mix_rows,
    result_dtype,
    row_combination,
    row_squared_norms,
    single_threaded_blas,
)
from ..partition import PartLayout
from .protocol import Columnwise, Combine, CopyRow, Decision, GramOf, Partial, Request, Scan, Source


@dataclass(frozen=True, eq=False)
class PartInput:
    """What the owner of part `index` of `layout` holds: the n input rows (canonical peer
    order) restricted to the part's columns, and the part of the call's centre, if any."""

    layout: PartLayout
    index: int
    rows: torch.Tensor  # n x width, floating, on the CPU
    center: torch.Tensor | None = None  # width

    def __post_init__(self) -> None:
        width = self.layout.width(self.index)
        rows = self.rows
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or not rows.is_floating_point():
            raise AggregationError("partwise: a part's rows must be a 2-D floating tensor")
        if rows.shape[1] != width or rows.shape[0] == 0:
            raise AggregationError(
                f"partwise: part {self.index} of {self.layout} has {width} columns, got rows of shape "
                f"{tuple(rows.shape)}"
            )
        if self.center is not None:
            center = self.center
            if not isinstance(center, torch.Tensor) or center.shape != (width,) or not center.is_floating_point():
                raise AggregationError(f"partwise: a part's centre must be a floating tensor of shape ({width},)")
            if not bool(torch.isfinite(center).all()):
                raise AggregationError("partwise: the centre must be finite")
        object.__setattr__(self, "rows", rows.detach().cpu().contiguous())
        if self.center is not None:
            object.__setattr__(self, "center", self.center.detach().cpu().contiguous())

    @classmethod
    def cut(
        cls, updates: torch.Tensor, layout: PartLayout, index: int, center: torch.Tensor | None = None
    ) -> PartInput:
        """Part `index` of the full n x d matrix (and d-vector centre)."""
        bounds = layout.part(index)
        return cls(layout, index, updates[:, bounds], None if center is None else center[bounds])

    @property
    def bounds(self) -> slice:
        return self.layout.part(self.index)


def materialize(source: Source, part: PartInput) -> torch.Tensor:
    """The part's columns of the source matrix (see `Source`)."""
    rows = part.rows
    n = rows.shape[0]
    if any(not 0 <= i < n for i in source.rows):
        raise AggregationError(f"partwise: source rows must be in [0, {n})")
    if source.rows != tuple(range(n)):
        rows = rows.index_select(0, torch.tensor(source.rows, dtype=torch.long))
    if source.mixing is None:
        return rows
    mixed = torch.empty(source.count, rows.shape[1], dtype=result_dtype(rows))
    mixed_values = mixed.numpy()

    def store(scratch: Scratch, cols: slice, block: np.ndarray) -> None:
        np.copyto(mixed_values[:, cols], block)  # one rounding to the storage dtype

    mix_rows(rows, source.mixing, store)
    return mixed


def _centre(part: PartInput, like: torch.Tensor) -> torch.Tensor:
    """The centre's part; zeros when the call has no centre (as centred clipping's default)."""
    if part.center is not None:
        return part.center
    return torch.zeros(like.shape[1], dtype=like.dtype)


def compute_partial(request: Request, part: PartInput) -> Partial:
    """The partial statistic of `request` over `part` (what its owner publishes)."""
    with torch.no_grad(), single_threaded_blas():
        if isinstance(request, Scan):
            return _scan(request, part)
        if isinstance(request, GramOf):
            rows = materialize(request.source, part)
            extra = _centre(part, rows)[None, :] if request.with_center else None
            return Partial(gram=gram(rows, centered=request.centered, extra=extra))
        rows = materialize(request.source, part)
        size = math.ceil(part.layout.d / request.rule.p)
        start = part.bounds.start
        splits = [split - start for split in splits_in_part(part.bounds, size, request.seed, part.index)]
        context = CallContext(center=part.center)
        return Partial(distances=split_distances(request.rule.base_rule, rows, splits, context))


def _scan(request: Scan, part: PartInput) -> Partial:
    rule, rows = request.rule, part.rows
    scan_gram = None
    squared_norms = None
    if rule.scan_gram is not None:
        extra = rule.scan_extra(rows, part.center)
        scan_gram, squared_norms = gram_and_norms(rows, centered=rule.scan_gram == "centered", extra=extra)
    # As `RejectionPolicy.find`: a fused pass can spread one row's NaN to the others.
    if squared_norms is None or not bool(torch.isfinite(squared_norms).all()):
        squared_norms = row_squared_norms(rows)
    non_finite = torch.zeros(rows.shape[0], dtype=torch.bool)
    suspicious = torch.nonzero(~torch.isfinite(squared_norms.sqrt())).flatten()
    if suspicious.numel():
        non_finite[suspicious] = ~finite_rows(rows[suspicious])
    return Partial(squared_norms=squared_norms, non_finite=non_finite, gram=scan_gram)


def reducer_of(decision: Columnwise) -> SortedReducer:
    if decision.reducer == "median":
        return median_reducer
    if decision.reducer == "trimmed_mean":
        return trimmed_mean_reducer(decision.count)
    return mean_around_median(decision.count)


def apply_decision(decision: Decision, part: PartInput) -> torch.Tensor:
    """The aggregate's coordinates of `part` (in the result dtype: the input's, at least float32)."""
    with torch.no_grad(), single_threaded_blas():
        rows = materialize(decision.source, part)
        if isinstance(decision, Combine):
            if decision.center_coefficient is None:
                return row_combination(rows, decision.coefficients)
            return row_combination(
                rows,
                decision.coefficients,
                extra=_centre(part, rows)[None, :],
                extra_coefficients=decision.center_coefficient,
            )
        if isinstance(decision, CopyRow):
            return rows[decision.row].to(result_dtype(rows)).clone()
        selected = None
        if decision.rows != tuple(range(rows.shape[0])):
            selected = torch.tensor(decision.rows, dtype=torch.long)
        return map_sorted_columns(rows, reducer_of(decision), rows=selected)
