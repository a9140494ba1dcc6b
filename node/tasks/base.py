"""The task contract and helpers shared by the built-in tasks."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fednode.node.errors import TaskError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TaskContext:
    """What the daemon tells a task factory about this node."""

    shard_index: int = 0
    shard_count: int = 1
    seed: int = 0


@dataclass
class Task:
    """A model plus this node's data.

    `train_data` and `test_data` are map-style datasets returning `(features, label)` tensors.
    `model_factory` must return the same initial weights on every call (see `seeded_init`).
    """

    name: str
    model_factory: Callable[[], nn.Module]
    train_data: Dataset[tuple[torch.Tensor, torch.Tensor]]
    test_data: Dataset[tuple[torch.Tensor, torch.Tensor]]
    loss_fn: LossFn = field(default_factory=lambda: nn.functional.cross_entropy)
    description: str = ""
    # How raw features become model inputs, exported with the model (`fednode model export`) so
    # the model can be used outside fednode: e.g. {"standardize": {"mean": [...], "std": [...]}}.
    preprocessing: dict[str, Any] = field(default_factory=dict)
    # The local (inner) optimizer the task is meant to train with, used when
    # training.optimizer = "task" (the DiLoCo preset): e.g. {"name": "adamw", "lr": 4e-4,
    # "weight_decay": 0.1, "betas": [0.9, 0.95]}. Empty: momentum SGD with the training.* values.
    inner_optimizer: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run model construction with a fixed seed without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_task(spec: str, context: TaskContext, params: dict[str, Any], search_path: Sequence[str] = ()) -> Task:
    """Import `module:function` and build the task; any failure becomes a one-line TaskError.
    `search_path` (config task.path) goes first on sys.path: a task module kept in a directory
    of its own needs no PYTHONPATH, under systemd, in a container or in `fednode launch`."""
    for directory in reversed(search_path):
        if not Path(directory).is_dir():
            raise TaskError(f"task.path entry {directory!r} is not a directory; fix task.path")
        resolved = str(Path(directory).resolve())
        if resolved not in sys.path:
            sys.path.insert(0, resolved)
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(f"cannot import task module {module_name!r} ({exc}); check task.name, and put the "
                        f"directory holding it in task.path (or PYTHONPATH)") from exc
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise TaskError(f"task module {module_name!r} has no function {function_name!r}; check task.name")
    try:
        inspect.signature(factory).bind(context, **params)
    except TypeError as exc:
        raise TaskError(f"task {spec} does not accept these [task.params]: {exc}") from exc
    try:
        task = factory(context, **params)
    except TaskError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise TaskError(f"task {spec} failed to build: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskError(f"task {spec} returned {type(task).__name__}, expected fednode.node.tasks.Task")
    if len(task.train_data) == 0:  # type: ignore[arg-type]
        raise TaskError(f"task {spec} gave shard {context.shard_index}/{context.shard_count} no training data")
    return task


def dirichlet_shards(
    labels: np.ndarray, shard_count: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Split example indices into non-IID shards: per class, shard shares ~ Dirichlet(alpha).

    Small alpha gives each shard few classes; large alpha approaches an IID split. Draws are
    repeated (same seeded generator) until every shard has at least `min_size` examples, so every
    peer computes the same split from the same seed.
    """
    if shard_count < 1:
        raise ValueError("shard_count must be >= 1")
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if shard_count * min_size > len(labels):
        raise ValueError(f"{len(labels)} examples cannot give {shard_count} shards of >= {min_size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _attempt in range(1000):
        shards: list[list[int]] = [[] for _ in range(shard_count)]
        for cls in classes:
            members = np.flatnonzero(labels == cls)
            rng.shuffle(members)
            shares = rng.dirichlet(np.full(shard_count, alpha))
            cuts = (np.cumsum(shares) * len(members)).astype(int)[:-1]
            for shard, part in zip(shards, np.split(members, cuts), strict=True):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ValueError(f"could not draw {shard_count} Dirichlet({alpha}) shards of >= {min_size} examples")


class TensorPairDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Features and labels already in memory."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]


def mlp(in_features: int, hidden: list[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
