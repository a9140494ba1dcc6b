"""How a wrapper rule (nnm, gas) builds its base rule by name.

The registry imports every rule, wrappers included, so a wrapper cannot import the registry back.
Instead the registry installs its `build` here when it is imported (importing any module of
`fednode.aggregators` runs the package's `__init__`, which imports the registry first), and
wrappers call `build_base`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .base import Aggregator
from .errors import AggregationError

_builder: Callable[..., Aggregator] | None = None


def install_builder(build: Callable[..., Aggregator]) -> None:
    """Called once by the registry: `build(name, f=..., **params)`."""
    global _builder
    _builder = build


def build_base(owner: str, base: str, f: int, base_params: Mapping[str, Any]) -> Aggregator:
    """The base rule `base` of the wrapper rule `owner`, with the wrapper's f."""
    if base == owner:
        raise AggregationError(f"rule {owner!r} cannot wrap itself")
    if _builder is None:  # only if fednode.aggregators.registry was bypassed, which the package prevents
        raise AggregationError(f"rule {owner!r}: no rule registry installed; import fednode.aggregators")
    return _builder(base, f=f, **dict(base_params))
