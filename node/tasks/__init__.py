"""Task plug-ins: what a node trains.

A task is a model, this node's training data, a shared test set and a loss, built by a factory
named in config as `module:function` (e.g. `fednode.node.tasks.digits:build_task`). The factory
is called as `factory(context, **params)` with a `TaskContext` (shard and seed) and the
`[task.params]` table, and returns a `Task`.

Every peer of a federation must build the same initial model: factories create it under
`seeded_init(context.seed)` so weights depend on the shared seed only.
"""

from fednode.node.tasks.base import Task, TaskContext, dirichlet_shards, load_task, seeded_init

__all__ = ["Task", "TaskContext", "dirichlet_shards", "load_task", "seeded_init"]
