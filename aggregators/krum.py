"""Distance-based selection rules: Krum, Multi-Krum (Blanchard et al. 2017) and Bulyan
(El Mhamdi et al. 2018), textbook definitions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Aggregator, CallContext
from .coordinatewise import SortedReducer
from .errors import AggregationError
from .numerics import (
    WORK_DTYPE,
    Scratch,
    gram,
    map_sorted_columns,
    middle_average,
    result_dtype,
    row_combination,
    squared_distances,
    stable_order,
)
from .result import Combination

KRUM_FAMILY_CAVEAT = (
    "on non-IID data it selects identical colluding updates such as sign flip (-mu) or IPM: they lie "
    "closer to every honest update than the honest updates lie to each other (docs/aggregators.md, "
    "'Choosing a rule'); prefer a rule that held in the robustness bench"
)


def pairwise_squared_distances(rows: torch.Tensor, context: CallContext | None = None) -> torch.Tensor:
    """Float64 n x n squared distances from the centred Gram matrix of the rows (the one the
    rejection pass computed, when the context carries it)."""
    centered_gram = None if context is None else context.gram
    if centered_gram is None:
        centered_gram = gram(rows, centered=True)
    return squared_distances(centered_gram)


def _krum_scores(distances: np.ndarray, f: int, minimum_neighbours: int) -> np.ndarray:
    n = distances.shape[0]
    neighbours = min(max(n - f - 2, minimum_neighbours), n - 1)
    if neighbours <= 0:
        return np.zeros(n)
    others = distances.copy()
    np.fill_diagonal(others, np.inf)
    return np.sort(others, axis=1)[:, :neighbours].sum(axis=1)


def krum_scores(distances: torch.Tensor, f: int, minimum_neighbours: int = 0) -> torch.Tensor:
    """Krum score of each row: the sum of its squared distances to its n-f-2 nearest *other* rows
    (at least `minimum_neighbours`, at most n-1). Float64.

    The n x n bookkeeping runs in numpy: single-threaded, exact sorts, a fixed summation order,
    and far less per-operation overhead than torch for such small arrays.
    """
    return torch.from_numpy(_krum_scores(distances.cpu().numpy(), f, minimum_neighbours))


def iterated_krum(distances: torch.Tensor, f: int, count: int) -> list[int]:
    """Pick `count` rows one at a time: Krum on the remaining rows, remove the winner, repeat.

    The last picks run on as few as 2f+1 rows, where Krum's n-f-2 neighbours drop to f-1 (0 for
    f = 1): every score would be 0 and the pick arbitrary. Scores therefore use at least two
    neighbours (at most all other remaining rows). Two, not one: with a single neighbour, two
    mutually nearest rows always tie exactly, and the index would decide.
    """
    others = distances.cpu().numpy().copy()
    np.fill_diagonal(others, np.inf)
    active = np.ones(others.shape[0], dtype=bool)
    chosen: list[int] = []
    for remaining in range(others.shape[0], others.shape[0] - count, -1):
        neighbours = min(max(remaining - f - 2, 2), remaining - 1)
        # Picked rows are +inf columns, so each row's `neighbours` smallest entries are its
        # nearest remaining rows.
        scores = (
            np.sort(others, axis=1)[:, :neighbours].sum(axis=1) if neighbours > 0 else np.zeros(len(active))
        )
        scores[~active] = np.inf
        winner = int(np.argmin(scores))  # first minimum: ties go to the lowest index
        chosen.append(winner)
        active[winner] = False
        others[:, winner] = np.inf
    return chosen


@dataclass(frozen=True, kw_only=True)
class Krum(Aggregator):
    """Return the row with the smallest Krum score (ties: lowest index)."""

    name = "krum"
    description = "Krum: the row whose n-f-2 nearest other rows are closest (sum of squared distances)."
    requirement = "n >= 2f+3"
    caveat = KRUM_FAMILY_CAVEAT
    scan_gram = "centered"

    def minimum_rows(self) -> int:
        return 2 * self.f + 3

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        distances = pairwise_squared_distances(rows, context)
        winner, scores = self.decide(distances)
        return Combination(
            aggregate=rows[winner].to(result_dtype(rows)).clone(),  # exact: the winner row itself
            scores=scores,
            selected=(winner,),
            distances=distances[:, winner].sqrt(),
        )

    def decide(self, distances: torch.Tensor) -> tuple[int, torch.Tensor]:
        """The winning row and every row's Krum score, from the squared distances."""
        scores = krum_scores(distances, self.f)
        return int(stable_order(scores)[0]), scores


@dataclass(frozen=True, kw_only=True)
class MultiKrum(Aggregator):
    """(Weighted) mean of the m rows with the smallest Krum scores, scores computed once."""

    name = "multi_krum"
    description = "Multi-Krum: mean of the m rows with the smallest Krum scores (m = n-f by default)."
    requirement = "n >= 2f+3"
    caveat = KRUM_FAMILY_CAVEAT
    uses_weights = True
    scan_gram = "centered"

    m: int | None = None

    def validate_parameters(self) -> None:
        if self.m is not None and (isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1):
            raise AggregationError(f"rule 'multi_krum': m must be a positive int or None, got {self.m!r}")

    def minimum_rows(self) -> int:
        return max(2 * self.f + 3, self.m or 0)

    def requirement_text(self) -> str:
        if self.m is None:
            return super().requirement_text()
        return f"n >= max(2f+3, m) with m={self.m} (= {self.minimum_rows()} rows)"

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        coefficients, scores, selected = self.decide(pairwise_squared_distances(rows, context), context)
        return Combination(aggregate=row_combination(rows, coefficients), scores=scores, selected=selected)

    def decide(
        self, distances: torch.Tensor, context: CallContext
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """The output's coefficients over the rows (the normalised weights of the chosen rows),
        the Krum scores and the chosen rows, from the squared distances."""
        n = distances.shape[0]
        count = n - self.f if self.m is None else self.m
        scores = krum_scores(distances, self.f)
        chosen = stable_order(scores)[:count]
        weights = torch.zeros(n, dtype=WORK_DTYPE)
        weights[chosen] = context.normalized_weights(n)[chosen]
        if not float(weights.sum()) > 0.0:
            raise AggregationError("rule 'multi_krum': every selected row has weight zero")
        return weights / weights.sum(), scores, tuple(int(i) for i in chosen)


def mean_around_median(count: int) -> SortedReducer:
    """Per coordinate, the mean of the `count` sorted values closest to the median (ties: lower
    values), in float64.

    The values closest to the median form a contiguous window of the sorted values; the window
    that contains them is the one whose farther endpoint is closest to the median (the first such
    window on ties). For sorted values, that endpoint distance of window w (values w .. w+count-1)
    is exactly max(median - s_w, s_{w+count-1} - median).
    """

    def reduce(scratch: Scratch, sorted_rows: list[np.ndarray], width: int) -> np.ndarray:
        # (numpy's masked `where=` ufuncs are ~20x slower than plain ones: none are used here)
        windows = len(sorted_rows) - count + 1
        work = scratch.tensor("bulyan", 5, width).numpy()
        median, cost, best, term, out = work
        small = scratch.tensor("bulyan_start", 3, width, torch.int8).numpy()
        start, candidate = small[0], small[1]
        masks = scratch.tensor("bulyan_mask", 2, width, torch.bool).numpy()
        middle_average(sorted_rows, median)
        for w in range(windows):
            np.subtract(median, sorted_rows[w], out=term)
            np.subtract(sorted_rows[w + count - 1], median, out=cost)
            np.maximum(term, cost, out=cost)
            if w == 0:
                np.copyto(best, cost)
                start.fill(0)
                continue
            better = np.less(cost, best, out=masks[0])  # strict: the first minimum wins
            np.minimum(best, cost, out=best)
            # start only ever moves to a later window: start = w where better, else unchanged
            np.maximum(start, np.multiply(better, w, out=candidate), out=start)
        out.fill(0.0)
        for j, row in enumerate(sorted_rows):  # ascending: each window is summed low to high
            first, last = max(0, j - count + 1), min(j, windows - 1)  # windows that hold value j
            if first > last:
                continue
            inside = np.greater_equal(start, first, out=masks[0])
            if last < windows - 1:
                inside &= np.less_equal(start, last, out=masks[1])
            np.multiply(row, inside, out=term)  # the value, or +-0 (adding it changes nothing)
            out += term
        out /= count
        return out

    return reduce


@dataclass(frozen=True, kw_only=True)
class Bulyan(Aggregator):
    """Textbook Bulyan: theta = n-2f rows by iterated Krum, then per coordinate the mean of the
    beta = theta-2f selected values closest to their median."""

    name = "bulyan"
    description = (
        "Bulyan: n-2f rows chosen by iterated Krum, then per coordinate the mean of the n-4f "
        "chosen values closest to their median."
    )
    requirement = "n >= 4f+3"
    scan_gram = "centered"
    caveat = KRUM_FAMILY_CAVEAT

    def minimum_rows(self) -> int:
        return 4 * self.f + 3

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        chosen, beta, scores = self.decide(pairwise_squared_distances(rows, context))
        out = map_sorted_columns(rows, mean_around_median(beta), rows=torch.tensor(chosen))
        return Combination(aggregate=out, scores=scores, selected=chosen)

    def decide(self, distances: torch.Tensor) -> tuple[tuple[int, ...], int, torch.Tensor]:
        """The theta rows chosen by iterated Krum (ascending), beta (how many values per
        coordinate the second stage averages) and the Krum scores, from the squared distances."""
        theta = distances.shape[0] - 2 * self.f
        chosen = tuple(sorted(iterated_krum(distances, self.f, theta)))
        return chosen, theta - 2 * self.f, krum_scores(distances, self.f)
