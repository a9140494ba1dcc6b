"""Built-in default task: scikit-learn's bundled digits (no download) with an MLP.

1,797 8x8 images, 10 classes. 80/20 stratified train/test split (random_state 0, as in
../shared/docs/aggregation-spec.md §8), features standardised with the training-set statistics,
training set split across shards by Dirichlet(alpha) per class (non-IID). Every node evaluates on
the full test set, so accuracies are comparable across peers.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fednode.node.errors import TaskError
from fednode.node.tasks.base import Task, TaskContext, TensorPairDataset, dirichlet_shards, mlp, seeded_init

log = logging.getLogger("fednode.tasks")

# Runs in a child interpreter (numpy and scikit-learn only): importing scikit-learn pulls in
# scipy and costs the daemon about 76 MB of resident memory for the rest of its life, for a
# split computed once. Writes the raw split as .npz to the path given as argv[2].
_SPLIT_SCRIPT = """
import sys
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=float(sys.argv[1]), stratify=y, random_state=0)
np.savez(sys.argv[2], x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
"""


def _split_cache(test_fraction: float) -> Path:
    """Where the split is cached: per scikit-learn version (its bundled data and splitter) and
    test fraction, under $XDG_CACHE_HOME (default ~/.cache)/fednode."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fednode"
    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError as exc:
        raise TaskError("the digits task needs scikit-learn (its bundled data): pip install scikit-learn") from exc
    return root / f"digits-split-sklearn{version}-test{test_fraction!r}.npz"


def _raw_split(test_fraction: float) -> dict[str, np.ndarray]:
    """scikit-learn's stratified split of its bundled digits (computed out of process, cached)."""
    cache = _split_cache(test_fraction)
    if cache.exists():
        try:
            return _read_split(cache)
        except (OSError, ValueError, KeyError) as exc:  # damaged or foreign file: compute again
            log.warning("ignoring the unreadable digits cache %s (%s)", cache, exc)
    try:
        return _compute_split(test_fraction, cache)
    except OSError as exc:  # no writable cache directory: compute without caching
        log.warning("cannot cache the digits split in %s (%s); computing it for this run only", cache.parent, exc)
        with tempfile.TemporaryDirectory(prefix="fednode-digits-") as scratch:
            return _compute_split(test_fraction, Path(scratch) / cache.name)


def _compute_split(test_fraction: float, target: Path) -> dict[str, np.ndarray]:
    """Run the split in a child interpreter and store it at `target` atomically (temporary file
    beside it, fsync, rename: daemons started together may race to write the same file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".digits-", suffix=".npz")
    os.close(handle)
    try:
        try:
            done = subprocess.run(
                [sys.executable, "-c", _SPLIT_SCRIPT, repr(test_fraction), temporary],
                capture_output=True, text=True, timeout=300,
            )
        except subprocess.TimeoutExpired as exc:
            raise TaskError("splitting scikit-learn's digits took over 300 s; is the machine overloaded?") from exc
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
            raise TaskError(f"could not split scikit-learn's digits in a child interpreter: {last}")
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return _read_split(target)


def _read_split(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:  # never unpickle, even from our own cache
        return {name: arrays[name] for name in ("x_train", "y_train", "x_test", "y_test")}


def digits_statistics(test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per pixel of the training split: the standardisation every peer applies."""
    x_train = _raw_split(test_fraction)["x_train"]
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant border pixels
    return x_train.mean(axis=0), std


def load_digits_arrays(test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised (x_train, y_train, x_test, y_test) as float32/int64 arrays."""
    split = _raw_split(test_fraction)
    x_train, x_test = split["x_train"], split["x_test"]
    mean, std = digits_statistics(test_fraction)
    return (
        ((x_train - mean) / std).astype(np.float32),
        split["y_train"].astype(np.int64),
        ((x_test - mean) / std).astype(np.float32),
        split["y_test"].astype(np.int64),
    )


def build_task(
    context: TaskContext,
    alpha: float = 0.5,
    hidden: list[int] | None = None,
    test_fraction: float = 0.2,
) -> Task:
    """Digits MLP (64-256-256-10 by default) on this node's Dirichlet shard."""
    hidden = [256, 256] if hidden is None else [int(h) for h in hidden]
    x_train, y_train, x_test, y_test = load_digits_arrays(test_fraction)
    if context.shard_count > 1:
        shards = dirichlet_shards(y_train, context.shard_count, alpha, context.seed)
        mine = shards[context.shard_index]
        x_train, y_train = x_train[mine], y_train[mine]

    def model_factory() -> torch.nn.Module:
        with seeded_init(context.seed):
            return mlp(64, hidden, 10)

    return Task(
        name="digits",
        model_factory=model_factory,
        train_data=TensorPairDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test_data=TensorPairDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        description=f"sklearn digits, MLP 64-{'-'.join(map(str, hidden))}-10, "
        f"shard {context.shard_index}/{context.shard_count} (Dirichlet alpha={alpha})",
        preprocessing=_standardize_record(*digits_statistics(test_fraction)),
    )


def _standardize_record(mean: np.ndarray, std: np.ndarray) -> dict[str, object]:
    return {"standardize": {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                            "scope": "federation", "input": "8x8 pixel intensities 0..16, row-major"}}
