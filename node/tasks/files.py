"""Task for user data in files: tabular classification from CSV or NPZ.

Each site normally keeps its own files (`split = "none"`): the node trains on `train` and
evaluates on `test`. For local experiments one file can be split across N daemons with
`split = "iid"` or `split = "dirichlet"` and the node's `--shard i/N`.

    [task]
    name = "fednode.node.tasks.files:build_task"
    [task.params]
    train = "/data/site-a/train.csv"     # CSV with a header row, or .npz with arrays `x` and `y`
    test = "/data/shared/test.csv"
    label_column = "label"               # CSV only
    num_classes = 0                      # 0 = infer from the labels (must agree across peers!)
    hidden = [128, 128]                  # MLP hidden sizes; or model = "pkg.mod:factory"
    normalization = "site"               # "site", "federation" (with stats = "...json") or "none"

Normalisation. "site" standardises features with this site's own training statistics: simple,
but sites with different distributions then feed the shared model differently scaled inputs.
"federation" uses statistics every member agreed on before training: each site runs
`fednode task stats train.csv --out site.json` (count, mean and sum of squared deviations per
feature: no rows leave the site), the coordinator merges them exactly with `fednode task stats
a.json b.json ... --out federation.json` (Chan et al.'s parallel update) and every member sets
`stats = "federation.json"`. `fednode launch --data ...` does all of it itself. The statistics go
with the model in `fednode model export`. They are agreed out of band, not over the mesh, because
an exchange at start would need every member present before the first round and would still
reveal each site's per-feature mean and variance to the others; a late joiner simply gets the file.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fednode.node.errors import TaskError
from fednode.node.tasks.base import Task, TaskContext, TensorPairDataset, dirichlet_shards, mlp, seeded_init
from fednode.node.tasks.tabular import (
    MOMENTS_KIND,
    feature_moments,
    merge_moments,
    read_moments,
    read_tabular,
    standardization,
)

__all__ = ["MOMENTS_KIND", "TabularFileDataset", "build_task", "feature_moments", "merge_moments", "read_moments",
           "read_tabular", "standardization"]


class TabularFileDataset(TensorPairDataset):
    """Rows of numeric features with an integer class label, read once into memory."""

    def __init__(self, path: Path, label_column: str = "label") -> None:
        features, labels = read_tabular(Path(path), label_column)
        super().__init__(torch.from_numpy(features), torch.from_numpy(labels))
        self.path = Path(path)


def _custom_model(spec: str, in_features: int, num_classes: int) -> nn.Module:
    module_name, _, function_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise TaskError(f"cannot load model factory {spec!r}: {exc}") from exc
    return factory(in_features, num_classes)


def build_task(
    context: TaskContext,
    train: str,
    test: str,
    label_column: str = "label",
    num_classes: int = 0,
    hidden: list[int] | None = None,
    model: str = "",
    split: str = "none",
    alpha: float = 0.5,
    standardize: bool = True,
    normalization: str = "site",
    stats: str = "",
) -> Task:
    x_train, y_train = read_tabular(Path(train), label_column)
    x_test, y_test = read_tabular(Path(test), label_column)
    in_features = x_train.shape[1]
    if x_test.shape[1] != in_features:
        raise TaskError(f"{train} has {in_features} features but {test} has {x_test.shape[1]}")
    largest_label = int(max(y_train.max(initial=0), y_test.max(initial=0)))
    classes = num_classes or largest_label + 1
    if largest_label >= classes:
        raise TaskError(f"labels reach {largest_label} but num_classes = {classes}")

    if split == "iid":
        order = np.random.default_rng(context.seed).permutation(len(y_train))
        mine = np.sort(np.array_split(order, context.shard_count)[context.shard_index])
        x_train, y_train = x_train[mine], y_train[mine]
    elif split == "dirichlet":
        mine = dirichlet_shards(y_train, context.shard_count, alpha, context.seed)[context.shard_index]
        x_train, y_train = x_train[mine], y_train[mine]
    elif split != "none":
        raise TaskError(f'task.params.split must be "none", "iid" or "dirichlet", got {split!r}')

    if normalization not in ("site", "federation", "none"):
        raise TaskError(f'task.params.normalization must be "site", "federation" or "none", got {normalization!r}')
    if normalization == "federation" and not stats:
        raise TaskError('normalization = "federation" needs stats = "<file>" from `fednode task stats` (docs/tasks.md)')
    preprocessing: dict[str, Any] = {}
    if normalization == "federation":
        moments = read_moments(Path(stats))
        if moments["features"] != in_features:
            raise TaskError(f"{stats} has statistics of {moments['features']} features but {train} has {in_features}")
        mean, std = standardization(moments)
        digest = hashlib.sha256(Path(stats).read_bytes()).hexdigest()
        preprocessing = {"standardize": {"mean": mean.tolist(), "std": std.tolist(), "scope": "federation",
                                         "count": int(moments["count"]), "stats_sha256": digest}}
    elif standardize and normalization == "site" and len(x_train):
        mean = x_train.mean(axis=0).astype(np.float64)
        std = np.maximum(x_train.std(axis=0), 1e-6).astype(np.float64)
        preprocessing = {"standardize": {"mean": mean.tolist(), "std": std.tolist(), "scope": "site",
                                         "count": len(x_train)}}
    if preprocessing:
        x_train = ((x_train - mean) / std).astype(np.float32)
        x_test = ((x_test - mean) / std).astype(np.float32)

    hidden_sizes = [128, 128] if hidden is None else [int(h) for h in hidden]

    def model_factory() -> nn.Module:
        with seeded_init(context.seed):
            if model:
                return _custom_model(model, in_features, classes)
            return mlp(in_features, hidden_sizes, classes)

    return Task(
        name="files",
        model_factory=model_factory,
        train_data=TensorPairDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test_data=TensorPairDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        description=f"tabular files {train} ({len(y_train)} rows, {in_features} features, {classes} classes)",
        preprocessing={**preprocessing, "features": in_features, "num_classes": classes,
                       **({"label_column": label_column} if Path(train).suffix.lower() == ".csv" else {})},
    )
