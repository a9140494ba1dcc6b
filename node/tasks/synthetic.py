"""Built-in harder task: a seeded synthetic classification problem (no download, numpy only).

Digits is easy: an MLP reaches 0.94 in a dozen rounds and most attacks only show as noise
(../shared/docs/aggregation-spec.md §8.2, outcome 7). This task learns slower and saturates
lower, so a rule that lets an attack through loses visibly: `classes` Gaussian clusters in
`informative` of the `features` dimensions (the rest pure noise), cluster centres drawn with
spread `separation`, unit within-cluster noise, and `label_noise` of the training labels
replaced by random ones. The data depend on `data_seed` only (every member draws the same set);
the training set is split across shards by Dirichlet(alpha) per class with the node's seed, as
for digits; every node evaluates on the same test set.
"""

from __future__ import annotations

import numpy as np
import torch

from fednode.node.tasks.base import Task, TaskContext, TensorPairDataset, dirichlet_shards, mlp, seeded_init


def make_data(features: int, informative: int, classes: int, separation: float, train: int, test: int,
              label_noise: float, data_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), float32 / int64, from `data_seed` alone."""
    if not 0 < informative <= features:
        raise ValueError(f"need 0 < informative <= features, got {informative} and {features}")
    if classes < 2 or train < classes or test < classes:
        raise ValueError("need at least 2 classes and one example per class in each split")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise}")
    rng = np.random.default_rng(data_seed)
    centres = rng.normal(0.0, separation, size=(classes, informative))

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, size=count)
        x = rng.normal(0.0, 1.0, size=(count, features))
        x[:, :informative] += centres[labels]
        return x.astype(np.float32), labels.astype(np.int64)

    x_train, y_train = draw(train)
    x_test, y_test = draw(test)
    noisy = rng.random(train) < label_noise
    y_train[noisy] = rng.integers(0, classes, size=int(noisy.sum()))
    return x_train, y_train, x_test, y_test


def build_task(
    context: TaskContext,
    features: int = 40,
    informative: int = 10,
    classes: int = 10,
    separation: float = 0.8,
    train: int = 4000,
    test: int = 1000,
    label_noise: float = 0.05,
    alpha: float = 0.5,
    hidden: list[int] | None = None,
    data_seed: int = 0,
) -> Task:
    """Synthetic clusters, MLP features-hidden-classes on this node's Dirichlet shard."""
    hidden = [64] if hidden is None else [int(h) for h in hidden]
    x_train, y_train, x_test, y_test = make_data(features, informative, classes, separation, train, test,
                                                 label_noise, data_seed)
    if context.shard_count > 1:
        mine = dirichlet_shards(y_train, context.shard_count, alpha, context.seed)[context.shard_index]
        x_train, y_train = x_train[mine], y_train[mine]

    def model_factory() -> torch.nn.Module:
        with seeded_init(context.seed):
            return mlp(features, hidden, classes)

    return Task(
        name="synthetic",
        model_factory=model_factory,
        train_data=TensorPairDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test_data=TensorPairDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        description=f"synthetic {classes}-class clusters ({informative} of {features} features informative, "
        f"separation {separation}), MLP {features}-{'-'.join(map(str, hidden))}-{classes}, "
        f"shard {context.shard_index}/{context.shard_count} (Dirichlet alpha={alpha})",
    )
