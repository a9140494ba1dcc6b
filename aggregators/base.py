"""The `Aggregator` base class: input checks, rejection, preconditions, index bookkeeping."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch

from .errors import AggregationError, PreconditionError
from .numerics import WORK_DTYPE, gram_and_norms, single_threaded_blas
from .result import AggregationResult, Combination
from .sanitize import DEFAULT_MAX_NORM, DEFAULT_MAX_NORM_RATIO, RejectionPolicy

MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class CallContext:
    """Per-call inputs besides the rows, already validated and restricted to the kept rows."""

    weights: torch.Tensor | None = None  # float64, one entry per kept row; None = uniform
    seed: int | None = None
    center: torch.Tensor | None = None  # d-vector, finite
    # The rule's `scan_gram` Gram matrix of exactly these rows, computed in the rejection pass
    # (None when rows were rejected, or the rule asked for none: it then computes its own).
    gram: torch.Tensor | None = None

    def normalized_weights(self, n: int) -> torch.Tensor:
        """Float64 weights summing to 1 (uniform when none were given)."""
        if self.weights is None:
            return torch.full((n,), 1.0 / n, dtype=WORK_DTYPE)
        return self.weights / self.weights.sum()

    def for_columns(self, columns: torch.Tensor) -> CallContext:
        """Context for a rule applied to a subset of coordinates (GAS parts): unweighted."""
        center = None if self.center is None else self.center.index_select(0, columns)
        return CallContext(weights=None, seed=None, center=center)

    def with_weights(self, weights: torch.Tensor | None) -> CallContext:
        return replace(self, weights=weights)

    def without_gram(self) -> CallContext:
        return replace(self, gram=None)


@dataclass(frozen=True, kw_only=True)
class Aggregator(ABC):
    """A Byzantine-robust aggregation rule.

    Call it with an n x d floating tensor whose rows are in canonical peer order:

        result = rule(updates, weights=None, seed=None, center=None)

    Every call first rejects non-finite and absurd rows (see `RejectionPolicy`), then checks the
    rule's precondition on the rows that remain (raising `PreconditionError`; f is never
    lowered), then runs the rule in float64 and casts the aggregate back to the input dtype.

    Attributes:
        f: the number of Byzantine rows the rule is told to tolerate.
        max_norm, max_norm_ratio: rejection caps (see `RejectionPolicy`).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    requirement: ClassVar[str] = "n >= 1"
    uses_weights: ClassVar[bool] = False
    uses_seed: ClassVar[bool] = False
    uses_center: ClassVar[bool] = False
    # A known weakness users should weigh (shown by `available()`, logged by the node when f > 0).
    caveat: ClassVar[str] = ""
    # Gram matrix to compute in the same pass as the rejection norms: "raw" (rows as given),
    # "centered" (rows minus their mean, see numerics.gram) or None (norms only). It reaches
    # `combine` as `context.gram` when no row was rejected.
    scan_gram: ClassVar[Literal["raw", "centered"] | None] = None

    f: int = 0
    max_norm: float | None = DEFAULT_MAX_NORM
    max_norm_ratio: float | None = DEFAULT_MAX_NORM_RATIO

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise AggregationError(f"rule {self.name!r}: f must be a non-negative int, got {self.f!r}")
        RejectionPolicy(self.max_norm, self.max_norm_ratio)  # validates the caps
        self.validate_parameters()

    # ----------------------------------------------------------------- rule-specific hooks

    def validate_parameters(self) -> None:
        """Raise AggregationError for invalid rule parameters (called at construction)."""
        return None

    def minimum_rows(self) -> int:
        """Smallest number of (kept) rows for which the rule is defined with this f."""
        return 1

    def caveats(self) -> str:
        """This rule's known weakness ("" if none); wrappers report their base rule's."""
        return self.caveat

    def with_f(self, f: int) -> Aggregator:
        """The same rule and parameters told to tolerate f Byzantine rows (wrappers rebuild
        their base rule with it). For callers that know some faulty rows are already gone."""
        return self if f == self.f else replace(self, f=f)

    @abstractmethod
    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        """Aggregate finite, sanitised rows that satisfy the precondition (see `Combination`)."""

    # ----------------------------------------------------------------- public entry point

    @property
    def rejection(self) -> RejectionPolicy:
        return RejectionPolicy(self.max_norm, self.max_norm_ratio)

    def check_rows(self, n: int, rejected: int = 0) -> None:
        """Raise PreconditionError unless n rows are enough for this rule and f."""
        if n < self.minimum_rows():
            raise PreconditionError(self.name, n, self.f, self.requirement_text(), rejected)

    def requirement_text(self) -> str:
        return f"{self.requirement} (= {self.minimum_rows()} rows)"

    def scan_extra(self, matrix: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor | None:
        """Rows appended below the input in the scan's Gram matrix (centred clipping: its centre)."""
        return None

    def __call__(
        self,
        updates: torch.Tensor,
        *,
        weights: torch.Tensor | Sequence[float] | None = None,
        seed: int | None = None,
        center: torch.Tensor | None = None,
    ) -> AggregationResult:
        matrix = _checked_updates(self.name, updates)
        n, d = matrix.shape
        weight_vector = _checked_weights(self.name, weights, n)
        if weight_vector is not None and not self.uses_weights and not _is_uniform(weight_vector):
            raise AggregationError(
                f"rule {self.name!r} does not use per-row weights (weights claimed by peers cannot "
                f"steer an order-statistic rule); pass weights=None or uniform weights"
            )
        checked_seed = _checked_seed(self.name, seed)
        checked_center = None
        if center is not None:
            if not self.uses_center:
                raise AggregationError(
                    f"rule {self.name!r} keeps no centre; center= is only for centered_clipping"
                )
            checked_center = _checked_center(self.name, center, d)

        with torch.no_grad(), single_threaded_blas():
            combination, kept, rejected = self._run(matrix, weight_vector, checked_seed, checked_center)
        result = _to_result(combination, kept, n, rejected, matrix.dtype)
        if updates.device.type != "cpu":
            result = replace(result, aggregate=result.aggregate.to(updates.device))
        return result

    def _run(
        self,
        matrix: torch.Tensor,
        weight_vector: torch.Tensor | None,
        seed: int | None,
        center: torch.Tensor | None,
    ) -> tuple[Combination, torch.Tensor, tuple[int, ...]]:
        n = matrix.shape[0]
        scan_gram = scan_norms = None
        if self.scan_gram is not None:
            # One pass over the data gives the Gram matrix the rule needs and the norms that
            # rejection needs; it is recomputed on the kept rows only when rows are rejected.
            scan_gram, scan_norms = gram_and_norms(
                matrix, centered=self.scan_gram == "centered", extra=self.scan_extra(matrix, center)
            )
        rejected = self.rejection.find(matrix, scan_norms).indices
        kept, kept_weights = self.keep_rows(n, rejected, weight_vector)
        rows = matrix.index_select(0, kept) if rejected else matrix
        context = CallContext(kept_weights, seed, center, None if rejected else scan_gram)
        return self.combine(rows, context), kept, rejected

    def keep_rows(
        self, n: int, rejected: tuple[int, ...], weight_vector: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The kept row indices and their weights after rejection; raises when nothing usable is
        left or the precondition fails on the kept rows (the partwise path shares it)."""
        if rejected:
            dropped = set(rejected)
            kept = torch.tensor([i for i in range(n) if i not in dropped], dtype=torch.long)
            if kept.numel() == 0:
                raise AggregationError(
                    f"rule {self.name!r}: all {n} rows were rejected as non-finite or absurd"
                )
        else:
            kept = torch.arange(n)
        kept_weights = None if weight_vector is None else weight_vector[kept]
        if kept_weights is not None and not float(kept_weights.sum()) > 0.0:
            raise AggregationError(f"rule {self.name!r}: the weights of the kept rows sum to zero")
        self.check_rows(kept.numel(), rejected=len(rejected))
        return kept, kept_weights



# ---------------------------------------------------------------------- input validation


def _checked_updates(rule: str, updates: object) -> torch.Tensor:
    if not isinstance(updates, torch.Tensor):
        raise AggregationError(f"rule {rule!r}: updates must be a torch.Tensor, got {type(updates).__name__}")
    if updates.dim() != 2:
        raise AggregationError(
            f"rule {rule!r}: updates must be 2-D (n x d), got shape {tuple(updates.shape)}"
        )
    if not updates.is_floating_point():
        raise AggregationError(f"rule {rule!r}: updates must be floating point, got {updates.dtype}")
    if updates.shape[0] == 0 or updates.shape[1] == 0:
        raise AggregationError(f"rule {rule!r}: updates must be non-empty, got shape {tuple(updates.shape)}")
    # The numerics run on the CPU (numpy views, MKL); the aggregate goes back to the input's device.
    return updates.detach().cpu().contiguous()


def _checked_weights(rule: str, weights: object, n: int) -> torch.Tensor | None:
    if weights is None:
        return None
    vector = torch.as_tensor(weights).detach().to(device="cpu", dtype=WORK_DTYPE)
    if vector.shape != (n,):
        raise AggregationError(f"rule {rule!r}: weights must have shape ({n},), got {tuple(vector.shape)}")
    if not bool(torch.isfinite(vector).all()) or bool((vector < 0).any()):
        raise AggregationError(f"rule {rule!r}: weights must be finite and non-negative")
    return vector


def _is_uniform(weights: torch.Tensor) -> bool:
    return bool((weights == weights[0]).all()) and float(weights[0]) > 0.0


def _checked_seed(rule: str, seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise AggregationError(f"rule {rule!r}: seed must be an int in [0, 2**64), got {seed!r}")
    return seed


def _checked_center(rule: str, center: object, d: int) -> torch.Tensor:
    if not isinstance(center, torch.Tensor) or center.shape != (d,) or not center.is_floating_point():
        raise AggregationError(f"rule {rule!r}: center must be a floating tensor of shape ({d},)")
    if not bool(torch.isfinite(center).all()):
        raise AggregationError(f"rule {rule!r}: center must be finite")
    return center.detach().cpu()


def _to_result(
    combination: Combination, kept: torch.Tensor, n: int, rejected: tuple[int, ...], dtype: torch.dtype
) -> AggregationResult:
    kept_list = [int(i) for i in kept]
    scores = None
    if combination.scores is not None:
        scores = torch.full((n,), math.inf, dtype=WORK_DTYPE)
        scores[kept] = combination.scores.to(device="cpu", dtype=WORK_DTYPE)
    selected = None
    if combination.selected is not None:
        selected = tuple(sorted(kept_list[i] for i in combination.selected))
    return AggregationResult(
        aggregate=combination.aggregate.to(dtype),
        scores=scores,
        selected=selected,
        rejected=rejected,
        diagnostics=dict(combination.diagnostics),
    )
