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
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fednode.node.errors import TaskError
from fednode.node.tasks.base import Task, TaskContext, TensorPairDataset, dirichlet_shards, mlp, seeded_init


class TabularFileDataset(TensorPairDataset):
    """Rows of numeric features with an integer class label, read once into memory."""

    def __init__(self, path: Path, label_column: str = "label") -> None:
        features, labels = read_tabular(Path(path), label_column)
        super().__init__(torch.from_numpy(features), torch.from_numpy(labels))
        self.path = Path(path)


def read_tabular(path: Path, label_column: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [n, f], labels int64 [n]) from a .csv or .npz file, validated."""
    if not path.is_file():
        raise TaskError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        # allow_pickle=False: object arrays in an .npz would otherwise be unpickled.
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise TaskError(f"{path} must contain arrays 'x' (features) and 'y' (labels)")
            features, labels = archive["x"], archive["y"]
    elif suffix == ".csv":
        with path.open(encoding="utf-8") as handle:
            header = handle.readline().strip().split(",")
        if label_column not in header:
            raise TaskError(f"{path} has no column {label_column!r}; columns: {', '.join(header)}")
        try:
            table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise TaskError(f"{path} has a non-numeric value: {exc}") from exc
        label_index = header.index(label_column)
        labels = table[:, label_index]
        features = np.delete(table, label_index, axis=1)
    else:
        raise TaskError(f"unsupported data file {path}: use .csv or .npz")
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise TaskError(f"{path}: expected features [n, f] and labels [n], got {features.shape} and {labels.shape}")
    if not np.isfinite(features).all():
        raise TaskError(f"{path} contains NaN or infinite feature values")
    if (labels != np.round(labels)).any() or (labels < 0).any():
        raise TaskError(f"{path}: labels must be non-negative integers")
    return features.astype(np.float32), labels.astype(np.int64)


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

    if standardize and len(x_train):
        mean = x_train.mean(axis=0)
        std = np.maximum(x_train.std(axis=0), 1e-6)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std

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
    )
