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
import json
import math
from pathlib import Path
from typing import Any

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


MOMENTS_KIND = "fednode-feature-moments"


def feature_moments(features: np.ndarray, source: str = "") -> dict[str, Any]:
    """Per-feature count, mean and M2 (sum of squared deviations) of one site's training rows:
    enough to merge sites exactly, without any row."""
    values = features.astype(np.float64)
    mean = values.mean(axis=0) if len(values) else np.zeros(values.shape[1])
    m2 = ((values - mean) ** 2).sum(axis=0)
    return {"kind": MOMENTS_KIND, "version": 1, "count": len(values), "features": int(values.shape[1]),
            "mean": mean.tolist(), "m2": m2.tolist(), "sources": [source] if source else []}


def merge_moments(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact moments of the union of the sites (Chan, Golub and LeVeque's pairwise update, in
    float64, in the order given: every member merging the same files gets the same numbers)."""
    if not parts:
        raise ValueError("no statistics to merge")
    features = {int(p["features"]) for p in parts}
    if len(features) != 1:
        raise ValueError(f"the statistics disagree on the number of features: {sorted(features)}")
    count, mean, m2 = 0, np.zeros(features.pop()), None
    for part in parts:
        n_b, mean_b, m2_b = int(part["count"]), np.asarray(part["mean"], np.float64), np.asarray(part["m2"], np.float64)
        if n_b == 0:
            continue
        total = count + n_b
        delta = mean_b - mean
        m2 = m2_b if m2 is None else m2 + m2_b + delta**2 * count * n_b / total
        mean = mean + delta * n_b / total
        count = total
    return {"kind": MOMENTS_KIND, "version": 1, "count": count, "features": len(mean), "mean": mean.tolist(),
            "m2": (m2 if m2 is not None else np.zeros(len(mean))).tolist(),
            "sources": [s for p in parts for s in p.get("sources", [])]}


def read_moments(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TaskError(f"cannot read normalisation statistics {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != MOMENTS_KIND:
        raise TaskError(f"{path} is not a statistics file of `fednode task stats`")
    if not data.get("count") or len(data.get("mean", [])) != data.get("features") or len(data.get("m2", [])) != data.get("features"):
        raise TaskError(f"{path}: statistics are empty or inconsistent; make them again with `fednode task stats`")
    if not all(math.isfinite(v) for v in [*data["mean"], *data["m2"]]):
        raise TaskError(f"{path}: statistics contain NaN or infinite values")
    return data


def standardization(moments: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) from moments; std as numpy's (population), floored at 1e-6."""
    mean = np.asarray(moments["mean"], np.float64)
    std = np.sqrt(np.asarray(moments["m2"], np.float64) / max(1, int(moments["count"])))
    return mean, np.maximum(std, 1e-6)


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
