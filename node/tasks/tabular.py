"""Tabular files and their normalisation statistics, with numpy only: `fednode task stats` and
`fednode launch` use them without loading torch (the CSV/NPZ task, fednode.node.tasks.files,
builds on them)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fednode.node.errors import TaskError


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
    values: np.ndarray = features.astype(np.float64)
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
