"""Built-in default task: scikit-learn's bundled digits (no download) with an MLP.

1,797 8x8 images, 10 classes. 80/20 stratified train/test split (random_state 0, as in
../shared/docs/aggregation-spec.md §8), features standardised with the training-set statistics,
training set split across shards by Dirichlet(alpha) per class (non-IID). Every node evaluates on
the full test set, so accuracies are comparable across peers.
"""

from __future__ import annotations

import numpy as np
import torch

from fednode.node.tasks.base import Task, TaskContext, TensorPairDataset, dirichlet_shards, mlp, seeded_init


def load_digits_arrays(test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised (x_train, y_train, x_test, y_test) as float32/int64 arrays."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=0
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant border pixels
    return (
        ((x_train - mean) / std).astype(np.float32),
        y_train.astype(np.int64),
        ((x_test - mean) / std).astype(np.float32),
        y_test.astype(np.int64),
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
    )
