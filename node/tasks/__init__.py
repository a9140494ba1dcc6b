"""Task plug-ins: what a node trains.

A task is a model, this node's training data, a shared test set and a loss, built by a factory
named in config as `module:function` (e.g. `fednode.node.tasks.digits:build_task`). The factory
is called as `factory(context, **params)` with a `TaskContext` (shard and seed) and the
`[task.params]` table, and returns a `Task`.

Every peer of a federation must build the same initial model: factories create it under
`seeded_init(context.seed)` so weights depend on the shared seed only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Task", "TaskContext", "dirichlet_shards", "load_task", "seeded_init"]


def __getattr__(name: str) -> Any:
    """The contract (fednode.node.tasks.base, which needs torch) is imported on first use, so
    torch-free helpers such as fednode.node.tasks.tabular (`fednode task stats`) stay light."""
    if name in __all__:
        from fednode.node.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
