"""One member's run of a partwise aggregation, and an in-process driver that plays every owner.

    session = Session(rule, layout, n, dtype=torch.float32, weights=None, seed=round_seed)
    while session.request is not None:                      # one exchange round per request
        partials = [partial_of_part(j) for j in range(layout.m)]   # from part j's owner
        session.receive(partials)
    outcome = session.outcome                               # the decision, scores, selection, rejection
    my_part = apply_decision(outcome.decision, part_input)  # an owner's aggregated part
    result = session.assemble(aggregated_parts)             # AggregationResult, as rule(updates)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import Aggregator, _checked_center, _checked_seed, _checked_updates, _checked_weights, _is_uniform
from ..errors import AggregationError
from ..numerics import result_dtype, single_threaded_blas
from ..partition import PartLayout
from ..result import AggregationResult
from .owner import PartInput, apply_decision, compute_partial
from .plans import aggregate_plan
from .protocol import Outcome, Partial, Request, expected_shapes


class Session:
    """A member's state for one aggregation over parts: the current request (None when done),
    then the outcome. Every member, owners included, runs its own session on the same partials;
    all of them derive the same requests and outcome."""

    def __init__(
        self,
        rule: Aggregator,
        layout: PartLayout,
        n: int,
        *,
        dtype: torch.dtype = torch.float32,
        weights: torch.Tensor | Sequence[float] | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(rule, Aggregator):
            raise AggregationError(f"partwise: rule must be an Aggregator, got {type(rule).__name__}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AggregationError(f"partwise: n must be a positive int, got {n!r}")
        if not dtype.is_floating_point:
            raise AggregationError(f"partwise: dtype must be floating point, got {dtype}")
        weight_vector = _checked_weights(rule.name, weights, n)
        if weight_vector is not None and not rule.uses_weights and not _is_uniform(weight_vector):
            raise AggregationError(
                f"rule {rule.name!r} does not use per-row weights; pass weights=None or uniform weights"
            )
        self.rule, self.layout, self.n, self.dtype = rule, layout, n, dtype
        self.rounds = 0
        self._outcome: Outcome | None = None
        self._plan = aggregate_plan(rule, layout, n, weight_vector, _checked_seed(rule.name, seed))
        self._request: Request | None = None
        self._advance(None)

    @property
    def request(self) -> Request | None:
        """What every owner must compute over its part next; None once the outcome is known."""
        return self._request

    @property
    def outcome(self) -> Outcome:
        if self._outcome is None:
            raise AggregationError("partwise: the session still waits for partials (see .request)")
        return self._outcome

    def expected_shapes(self, index: int) -> dict[str, tuple[int, ...]]:
        """Field -> shape of part `index`'s partial for the current request (for decode_partial)."""
        if self._request is None:
            raise AggregationError("partwise: the session has no pending request")
        return expected_shapes(self._request, self.n, self.layout, index)

    def receive(self, partials: Sequence[Partial]) -> None:
        """The m partials of the current request, in part order. Checks their form (fields,
        shapes, dtypes), not their truth (see `verify`)."""
        if self._request is None:
            raise AggregationError("partwise: the session has no pending request")
        if len(partials) != self.layout.m:
            raise AggregationError(f"partwise: expected {self.layout.m} partials, got {len(partials)}")
        for index, partial in enumerate(partials):
            _check_form(partial, self.expected_shapes(index), index)
        self._advance(list(partials))

    def _advance(self, partials: list[Partial] | None) -> None:
        with torch.no_grad(), single_threaded_blas():
            try:
                self._request = next(self._plan) if partials is None else self._plan.send(partials)
                self.rounds += 1
            except StopIteration as stop:
                self._request, self._outcome = None, stop.value

    def assemble(self, parts: Sequence[torch.Tensor]) -> AggregationResult:
        """The call's result from the m aggregated parts (in part order)."""
        outcome = self.outcome
        storage = result_dtype(torch.empty(0, dtype=self.dtype))
        if len(parts) != self.layout.m:
            raise AggregationError(f"partwise: expected {self.layout.m} aggregated parts, got {len(parts)}")
        for index, part in enumerate(parts):
            if part.shape != (self.layout.width(index),) or part.dtype != storage:
                raise AggregationError(
                    f"partwise: aggregated part {index} must have shape ({self.layout.width(index)},) and "
                    f"dtype {storage}, got {tuple(part.shape)} {part.dtype}"
                )
        return AggregationResult(
            aggregate=torch.cat(list(parts)).to(self.dtype),
            scores=outcome.scores,
            selected=outcome.selected,
            rejected=outcome.rejected,
            diagnostics=dict(outcome.diagnostics),
        )


def _check_form(partial: Partial, shapes: dict[str, tuple[int, ...]], index: int) -> None:
    for name in ("squared_norms", "non_finite", "gram", "distances"):
        value = getattr(partial, name)
        if name not in shapes:
            if value is not None:
                raise AggregationError(f"partwise: part {index}'s partial has an unexpected field {name!r}")
            continue
        dtype = torch.bool if name == "non_finite" else torch.float64
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shapes[name] or value.dtype != dtype:
            raise AggregationError(
                f"partwise: part {index}'s partial field {name!r} must be a {dtype} tensor of shape {shapes[name]}"
            )


def aggregate_by_parts(
    rule: Aggregator,
    updates: torch.Tensor,
    m: int,
    *,
    weights: torch.Tensor | Sequence[float] | None = None,
    seed: int | None = None,
    center: torch.Tensor | None = None,
) -> AggregationResult:
    """`rule(updates, ...)` computed over m parts in one process: every owner's partials and
    aggregated part computed from its part only, every decision from the partials only. The
    reference driver for tests and benchmarks, and a model for the exchange."""
    matrix = _checked_updates(rule.name, updates)
    n, d = matrix.shape
    if center is not None:
        if not rule.uses_center:
            raise AggregationError(f"rule {rule.name!r} keeps no centre; center= is only for centered_clipping")
        center = _checked_center(rule.name, center, d)
    layout = PartLayout(d, m)
    parts = [PartInput.cut(matrix, layout, j, center) for j in range(m)]
    session = Session(rule, layout, n, dtype=matrix.dtype, weights=weights, seed=seed)
    while session.request is not None:
        request = session.request
        session.receive([compute_partial(request, part) for part in parts])
    return session.assemble([apply_decision(session.outcome.decision, part) for part in parts])
