"""The digits attack experiment of the aggregation spec (section 8): pure, in-memory, seeded.

n workers train an MLP 64-32-10 (d = 2,410) on scikit-learn's digits with D-SGD; each worker keeps
a momentum m_i <- 0.9 m_i + 0.1 g_i, the aggregation rule combines the n momenta and
theta <- theta - lr * aggregate. Workers 0..f-1 are Byzantine: an update attack replaces their
momenta by one vector computed from that round's honest momenta; a data attack (label flip)
changes their training labels instead.

Everything random comes from `seed` (data split, initialisation, batches, attack noise, GAS
permutations). Run with torch.set_num_threads(1) for bit-identical repeats; the experiment's
small matrix products go through BLAS.

    from fednode.aggregators.simulation import DigitsExperiment, run_digits
    outcome = run_digits(DigitsExperiment(rule="multi_krum", f=3, attack="negative_mean"))
    outcome.accuracy
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import attacks
from .registry import build

INPUTS, HIDDEN, CLASSES = 64, 32, 10
PARAMETER_COUNT = HIDDEN * INPUTS + HIDDEN + CLASSES * HIDDEN + CLASSES  # 2,410


@dataclass(frozen=True)
class DigitsData:
    train_x: torch.Tensor  # float32, standardised on the training set
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor


@functools.lru_cache(maxsize=1)
def load_digits_data() -> DigitsData:
    """scikit-learn digits, 80/20 stratified split (random_state=0), standardised on train."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    features, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=0.2, stratify=labels, random_state=0
    )
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std[std == 0] = 1.0
    return DigitsData(
        train_x=torch.tensor((train_x - mean) / std, dtype=torch.float32),
        train_y=torch.tensor(train_y, dtype=torch.long),
        test_x=torch.tensor((test_x - mean) / std, dtype=torch.float32),
        test_y=torch.tensor(test_y, dtype=torch.long),
    )


def dirichlet_shards(
    labels: np.ndarray, workers: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split sample indices per class across workers with Dirichlet(alpha) proportions.

    A worker left without samples receives one from the largest shard, so every worker can train.
    """
    shards: list[list[int]] = [[] for _ in range(workers)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(workers, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
        for worker, part in enumerate(np.split(members, cuts)):
            shards[worker].extend(int(i) for i in part)
    for worker in range(workers):
        if not shards[worker]:
            donor = max(range(workers), key=lambda w: (len(shards[w]), -w))
            shards[worker].append(shards[donor].pop())
    return [np.array(sorted(shard), dtype=np.int64) for shard in shards]


class MLP:
    """Flat-parameter MLP 64-32-10 with ReLU, gradients computed analytically for all workers."""

    @staticmethod
    def initial_parameters(generator: torch.Generator) -> torch.Tensor:
        """torch.nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        pieces = []
        for shape, fan_in in (
            ((HIDDEN, INPUTS), INPUTS),
            ((HIDDEN,), INPUTS),
            ((CLASSES, HIDDEN), HIDDEN),
            ((CLASSES,), HIDDEN),
        ):
            bound = fan_in**-0.5
            pieces.append((torch.rand(shape, generator=generator) * 2 - 1).flatten() * bound)
        return torch.cat(pieces)

    @staticmethod
    def unpack(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        w1, b1, w2, b2 = torch.split(theta, [HIDDEN * INPUTS, HIDDEN, CLASSES * HIDDEN, CLASSES])
        return w1.view(HIDDEN, INPUTS), b1, w2.view(CLASSES, HIDDEN), b2

    @classmethod
    def logits(cls, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = cls.unpack(theta)
        return torch.relu(x @ w1.T + b1) @ w2.T + b2

    @classmethod
    def gradients(cls, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy gradient per worker: x is (workers, batch, 64), y (workers, batch)."""
        w1, b1, w2, b2 = cls.unpack(theta)
        batch = x.shape[1]
        pre = x @ w1.T + b1
        hidden = torch.relu(pre)
        probabilities = torch.softmax(hidden @ w2.T + b2, dim=-1)
        d_logits = (probabilities - torch.nn.functional.one_hot(y, CLASSES).to(x.dtype)) / batch
        d_w2 = d_logits.transpose(1, 2) @ hidden
        d_hidden = (d_logits @ w2) * (pre > 0)
        d_w1 = d_hidden.transpose(1, 2) @ x
        workers = x.shape[0]
        return torch.cat(
            [d_w1.reshape(workers, -1), d_hidden.sum(dim=1), d_w2.reshape(workers, -1), d_logits.sum(dim=1)],
            dim=1,
        )


@dataclass(frozen=True)
class DigitsExperiment:
    """One run of the spec's digits experiment."""

    rule: str
    rule_params: Mapping[str, Any] = field(default_factory=dict)
    f: int = 3
    attack: str | None = None  # an attacks.build name; None = every worker honest
    attack_params: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 10
    alpha: float = 0.5
    rounds: int = 300
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class DigitsOutcome:
    accuracy: float  # test accuracy after the last round
    rejected_rows: int  # rows rejected by the rule over all rounds
    non_finite_rounds: int  # rounds whose aggregate was not finite


def round_seed(seed: int, round_index: int) -> int:
    """Shared per-round seed for rules that need one (GAS): a fixed function of (seed, round)."""
    return ((seed + 1000) * 1_000_003 + round_index) % (2**63)


def run_digits(experiment: DigitsExperiment, data: DigitsData | None = None) -> DigitsOutcome:
    data = data or load_digits_data()
    n, f = experiment.workers, experiment.f
    rng = np.random.default_rng(experiment.seed)
    shards = dirichlet_shards(data.train_y.numpy(), n, experiment.alpha, rng)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(experiment.seed)

    attack = (
        None
        if experiment.attack is None
        else attacks.build(experiment.attack, **dict(experiment.attack_params))
    )
    worker_labels = [data.train_y[torch.from_numpy(shard)] for shard in shards]
    if isinstance(attack, attacks.DataAttack):
        for worker in range(f):
            worker_labels[worker] = attack.transform_labels(worker_labels[worker])
    flat_index = torch.from_numpy(np.concatenate(shards))
    flat_labels = torch.cat(worker_labels)
    sizes = torch.tensor([len(shard) for shard in shards])
    offsets = torch.cumsum(sizes, 0) - sizes

    rule = build(experiment.rule, f=f, **dict(experiment.rule_params))
    theta = MLP.initial_parameters(generator)
    momenta = torch.zeros(n, PARAMETER_COUNT)
    center = torch.zeros(PARAMETER_COUNT) if rule.uses_center else None
    rejected_rows = non_finite_rounds = 0

    for round_index in range(experiment.rounds):
        draws = (torch.rand(n, experiment.batch_size, generator=generator) * sizes[:, None]).long()
        positions = offsets[:, None] + torch.minimum(draws, sizes[:, None] - 1)
        x = data.train_x[flat_index[positions]]
        y = flat_labels[positions]
        gradients = MLP.gradients(theta, x, y)
        momenta = experiment.momentum * momenta + (1 - experiment.momentum) * gradients
        sent = momenta
        if isinstance(attack, attacks.UpdateAttack) and f > 0:
            sent = momenta.clone()
            sent[:f] = attack(momenta[f:])
        call: dict[str, Any] = {"seed": round_seed(experiment.seed, round_index)}
        if center is not None:
            call["center"] = center
        result = rule(sent, **call)
        rejected_rows += len(result.rejected)
        if not bool(torch.isfinite(result.aggregate).all()):
            non_finite_rounds += 1
        if center is not None:
            center = result.aggregate
        theta = theta - experiment.lr * result.aggregate

    predictions = MLP.logits(theta, data.test_x).argmax(dim=1)
    accuracy = float((predictions == data.test_y).double().mean())
    return DigitsOutcome(accuracy=accuracy, rejected_rows=rejected_rows, non_finite_rounds=non_finite_rounds)
