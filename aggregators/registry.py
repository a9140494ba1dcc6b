"""Rules by name: `build(name, f=..., **params)` and `available()`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .averaging import Mean
from .base import Aggregator
from .centered_clipping import CenteredClipping
from .coordinatewise import Median, TrimmedMean
from .errors import AggregationError
from .flag import FlagAggregator
from .gas import GradientSplitting
from .geometric_median import GeometricMedian
from .krum import Bulyan, Krum, MultiKrum
from .nnm import NearestNeighbourMixing
from .wrapping import install_builder

RULES: Mapping[str, type[Aggregator]] = {
    rule.name: rule
    for rule in (
        Mean,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
        Bulyan,
        GeometricMedian,
        CenteredClipping,
        NearestNeighbourMixing,
        FlagAggregator,
        GradientSplitting,
    )
}


@dataclass(frozen=True)
class RuleInfo:
    """What `available()` reports for one rule."""

    name: str
    description: str
    parameters: Mapping[str, Any]  # every keyword `build` accepts for the rule, with its default
    precondition: str
    uses_weights: bool  # False: non-uniform weights= raise (wrappers: depends on the base rule)
    uses_seed: bool  # True: seed= selects the randomness (gas with p > 1)
    uses_center: bool  # True: center= is caller-owned state (centered_clipping)
    caveat: str = ""  # a known weakness ("" if none; wrappers: see Aggregator.caveats() on an instance)


def _parameters(rule: type[Aggregator]) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for item in dataclasses.fields(rule):
        if not item.init:
            continue
        if item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults


def available() -> list[RuleInfo]:
    """Every rule with its parameters, defaults and precondition, in registry order."""
    return [
        RuleInfo(
            name=name,
            description=rule.description,
            parameters=_parameters(rule),
            precondition=rule.requirement,
            uses_weights=rule.uses_weights,
            uses_seed=rule.uses_seed,
            uses_center=rule.uses_center,
            caveat=rule.caveat,
        )
        for name, rule in RULES.items()
    ]


def build(name: str, f: int = 0, **params: Any) -> Aggregator:
    """Instantiate rule `name` with Byzantine bound f and rule parameters.

    Wrappers take `base=<rule name>` and `base_params={...}`; the base rule gets the same f.
    Unknown names or parameters raise AggregationError listing what is accepted.
    """
    rule = RULES.get(name)
    if rule is None:
        raise AggregationError(f"unknown aggregation rule {name!r}; available: {', '.join(RULES)}")
    accepted = _parameters(rule)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise AggregationError(
            f"rule {name!r} does not accept {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    return rule(f=f, **params)


install_builder(build)
