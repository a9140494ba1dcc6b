"""The member's side: each rule's decision as a plan that yields requests, receives the m
partials of each (in part order) and returns the decision.

A plan is a generator: `partials = yield request` is one exchange round. Every member runs the
same plan on the same partials and so derives the same requests and decision. Each plan calls
the rule's own n x n helpers (Krum scores, iterated Krum, NNM's mixing matrix, the `decide`
steps of Flag, geometric median, centred clipping and GAS), so the arithmetic after the Gram
matrix is the all-to-all call's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..averaging import Mean
from ..base import Aggregator, CallContext
from ..centered_clipping import CenteredClipping
from ..coordinatewise import Median, TrimmedMean
from ..errors import AggregationError
from ..flag import FlagAggregator
from ..gas import GradientSplitting, needs_seed
from ..geometric_median import GeometricMedian
from ..krum import Bulyan, Krum, MultiKrum
from ..nnm import NearestNeighbourMixing, mixing_matrix
from ..numerics import WORK_DTYPE, ordered_sum, squared_distances
from ..partition import PartLayout
from .protocol import (
    Columnwise,
    Combine,
    CopyRow,
    Decision,
    GramOf,
    Outcome,
    Partial,
    Request,
    Scan,
    Source,
    SplitScores,
)

Plan = Generator[Request, list[Partial], Any]


@dataclass(frozen=True, eq=False)
class Ruling:
    """A rule's decision over its source, with scores and selection in source-row indices."""

    decision: Decision
    scores: torch.Tensor | None = None
    selected: tuple[int, ...] | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)


def summed(partials: list[Partial], name: str) -> torch.Tensor:
    """The parts' values of field `name` added in part order (float64), as the all-to-all call
    adds its column blocks."""
    return ordered_sum(torch.stack([getattr(partial, name) for partial in partials]))


def gram_plan(source: Source, context: CallContext, *, centered: bool, with_center: bool = False) -> Plan:
    """The Gram matrix of the source: the scan's when it already has it, else one round."""
    if context.gram is not None:
        return context.gram
    partials = yield GramOf(source, centered, with_center)
    return summed(partials, "gram")


# ---------------------------------------------------------------------- per rule


def _mean(rule: Mean, source: Source, context: CallContext, layout: PartLayout) -> Ruling:
    return Ruling(Combine(source, context.normalized_weights(source.count)))


def _columnwise(rule: Median | TrimmedMean, source: Source, context: CallContext, layout: PartLayout) -> Ruling:
    reducer: Literal["median", "trimmed_mean"] = "median" if isinstance(rule, Median) else "trimmed_mean"
    return Ruling(Columnwise(source, tuple(range(source.count)), reducer, rule.f))


def _krum(rule: Krum, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    winner, scores = rule.decide(squared_distances((yield from gram_plan(source, context, centered=True))))
    return Ruling(CopyRow(source, winner), scores, (winner,))


def _multi_krum(rule: MultiKrum, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    distances = squared_distances((yield from gram_plan(source, context, centered=True)))
    coefficients, scores, selected = rule.decide(distances, context)
    return Ruling(Combine(source, coefficients), scores, selected)


def _bulyan(rule: Bulyan, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    chosen, beta, scores = rule.decide(squared_distances((yield from gram_plan(source, context, centered=True))))
    return Ruling(Columnwise(source, chosen, "around_median", beta), scores, chosen)


def _geometric_median(rule: GeometricMedian, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    coefficients, scores, diagnostics = rule.decide((yield from gram_plan(source, context, centered=True)), context)
    return Ruling(Combine(source, coefficients), scores, None, diagnostics)


def _centered_clipping(rule: CenteredClipping, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    gram_matrix = yield from gram_plan(source, context, centered=True, with_center=True)
    v, scores = rule.decide(gram_matrix, context)
    k = source.count
    return Ruling(Combine(source, v[:k], center_coefficient=v[k:]), scores)


def _flag(rule: FlagAggregator, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    coefficients, scores, diagnostics = rule.decide((yield from gram_plan(source, context, centered=False)))
    return Ruling(Combine(source, coefficients), scores, None, diagnostics)


def _nnm(rule: NearestNeighbourMixing, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    if source.mixing is not None:
        raise AggregationError("rule 'nnm' cannot run on rows that are already mixed")
    mixing = mixing_matrix(squared_distances((yield from gram_plan(source, context, centered=True))), rule.f)
    if context.weights is not None and not rule.base_rule.uses_weights:
        context = context.with_weights(None)  # uniform weights, checked by the caller
    # The base rule runs on the mixed rows, stored in the result dtype (owners mix their part).
    return (yield from rule_plan(rule.base_rule, Source(source.rows, mixing), context.without_gram(), layout))


def _gas(rule: GradientSplitting, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    if rule.within_parts != layout.m:
        raise AggregationError(
            f"rule 'gas' over {layout.m} parts draws its splits inside the parts: build it with "
            f"within_parts={layout.m} (got {rule.within_parts!r}); its splits then never cross a part "
            f"and each owner scores its own"
        )
    if context.seed is None and needs_seed(layout, rule.p):
        raise AggregationError(
            f"rule 'gas': p={rule.p} splits inside {layout.m} parts of d={layout.d} coordinates are random; "
            f"pass seed=<int> derived from shared data so every peer draws the same permutations"
        )
    partials = yield SplitScores(source, rule, context.seed)
    distances = torch.cat([partial.distances for partial in partials])  # splits in global order
    coefficients, scores, selected = rule.decide(distances, context)
    return Ruling(Combine(source, coefficients), scores, selected, {"parts": float(distances.shape[0])})


# A rule's plan: a generator of rounds, or directly its Ruling when it needs no cross-part statistic.
RulePlan = Callable[[Any, Source, CallContext, PartLayout], Plan | Ruling]
PLANS: dict[type[Aggregator], RulePlan] = {
    Mean: _mean,
    Median: _columnwise,
    TrimmedMean: _columnwise,
    Krum: _krum,
    MultiKrum: _multi_krum,
    Bulyan: _bulyan,
    GeometricMedian: _geometric_median,
    CenteredClipping: _centered_clipping,
    FlagAggregator: _flag,
    NearestNeighbourMixing: _nnm,
    GradientSplitting: _gas,
}


def rule_plan(rule: Aggregator, source: Source, context: CallContext, layout: PartLayout) -> Plan:
    """The plan of `rule.combine` on the (already sanitised) source rows."""
    plan = PLANS.get(type(rule))
    if plan is None:
        raise AggregationError(f"rule {rule.name!r} has no partwise plan")
    started = plan(rule, source, context, layout)
    if isinstance(started, Ruling):
        return started
    return (yield from started)


# ---------------------------------------------------------------------- the whole call


def aggregate_plan(
    rule: Aggregator, layout: PartLayout, n: int, weights: torch.Tensor | None, seed: int | None
) -> Plan:
    """The plan of `rule(updates, weights=..., seed=...)`: the rejection scan (with the rule's
    scan Gram matrix), the rule's plan on the kept rows, the facts mapped to input rows."""
    partials = yield Scan(rule)
    squared_norms = summed(partials, "squared_norms")
    non_finite = functools.reduce(torch.logical_or, [partial.non_finite for partial in partials])
    rejected = rule.rejection.classify(squared_norms, non_finite).indices
    kept, kept_weights = rule.keep_rows(n, rejected, weights)
    scan_gram = summed(partials, "gram") if rule.scan_gram is not None and not rejected else None
    source = Source(tuple(int(i) for i in kept))
    ruling = yield from rule_plan(rule, source, CallContext(kept_weights, seed, None, scan_gram), layout)
    scores = None
    if ruling.scores is not None:
        scores = torch.full((n,), torch.inf, dtype=WORK_DTYPE)
        scores[kept] = ruling.scores.to(dtype=WORK_DTYPE)
    selected = None if ruling.selected is None else tuple(sorted(source.rows[i] for i in ruling.selected))
    return Outcome(ruling.decision, scores, selected, rejected, dict(ruling.diagnostics))
