"""Identical colluders against the Krum family, in memory (issue 22's investigation).

    python bench/krum_colluders.py                    # 7 members, 2 identical sign-flip attackers, 12 rounds
    python bench/krum_colluders.py --attack ipm --rounds 20 --rules multi_krum,trimmed_mean

The daemon's digits task, shards and trainer (20 local steps, lr 0.05, momentum 0.9; no
compression, no network): every round the honest members train from the current model, the
attackers send one vector forged from the honest deltas (sign flip: -mu), the rule aggregates and
the model moves by the aggregate. Printed per rule: final test accuracy, and in how many rounds
the rule used an attacker's row. For the Krum family it also prints, on the same trajectory,
whether Multi-Krum's n-f selection would contain an attacker with n-f-2 (textbook), n-f-1
(ByzFL) or n-1 neighbours in the score: if only the textbook count let the attackers in, the
cause would be the free zero distance two identical copies give each other; it is not.
Deterministic (torch threads 1); a few seconds per rule.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from fednode.aggregators import attacks, build
from fednode.aggregators.krum import krum_scores, pairwise_squared_distances
from fednode.aggregators.numerics import stable_order
from fednode.node.model import assign_parameters, flatten_parameters
from fednode.node.tasks import TaskContext
from fednode.node.tasks.digits import build_task
from fednode.node.trainer import LocalTrainer

DEFAULT_RULES = ("mean", "median", "trimmed_mean", "geometric_median", "centered_clipping", "flag", "multi_krum",
                 "gas_krum", "gas_median", "nnm")


def spec(label: str) -> tuple[str, dict[str, Any]]:
    if label.startswith("gas_"):
        return "gas", {"base": label.removeprefix("gas_"), "p": 10}
    return label, {}


def run(label: str, attack_name: str, members: int, byzantine: int, rounds: int) -> dict[str, Any]:
    name, params = spec(label)
    rule = build(name, f=byzantine, **params)
    attack = None if attack_name == "none" else attacks.build(attack_name)
    tasks = [build_task(TaskContext(i, members, 0)) for i in range(members)]
    trainers = [LocalTrainer(t, torch.device("cpu"), batch_size=32, lr=0.05, momentum=0.9, seed=i)
                for i, t in enumerate(tasks)]
    model = tasks[0].model_factory()
    honest_count = members if attack is None else members - byzantine  # "none": everyone honest, same f
    center = None
    used = 0
    by_neighbours = {"n-f-2": 0, "n-f-1": 0, "n-1": 0}
    for number in range(1, rounds + 1):
        base = flatten_parameters(model)
        deltas = []
        for trainer in trainers[:honest_count]:
            trainer.train_round(model, 20)
            deltas.append(flatten_parameters(model) - base)
            assign_parameters(model, base)
        honest = torch.stack(deltas)
        rows = honest if attack is None else torch.cat([honest, attack(honest).expand(byzantine, -1)])
        kwargs: dict[str, Any] = {"seed": number}
        if rule.uses_center:
            kwargs["center"] = center
        result = rule(rows, **kwargs)
        if rule.uses_center:
            center = result.aggregate.clone()
        if result.selected is not None and any(i >= honest_count for i in result.selected):
            used += 1
        if name in ("krum", "multi_krum", "bulyan") and attack is not None:
            distances = pairwise_squared_distances(rows.to(torch.float64))
            for key, neighbours in (("n-f-2", members - byzantine - 2), ("n-f-1", members - byzantine - 1),
                                    ("n-1", members - 1)):
                chosen = stable_order(krum_scores(distances, byzantine, minimum_neighbours=neighbours))
                by_neighbours[key] += any(int(i) >= honest_count for i in chosen[: members - byzantine])
        assign_parameters(model, base + result.aggregate)
    outcome: dict[str, Any] = {"rule": label, "attack": attack_name, "accuracy": trainers[0].evaluate(model).accuracy,
                               "rounds_using_an_attacker": used if rule.caveats() or name == "gas" else None}
    if name in ("krum", "multi_krum", "bulyan") and attack is not None:
        outcome["multi_krum_selection_with_an_attacker"] = by_neighbours
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default=",".join(DEFAULT_RULES))
    parser.add_argument("--attack", default="sign_flip", help='an update attack, or "none" (all members honest)')
    parser.add_argument("--members", type=int, default=7)
    parser.add_argument("--byzantine", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for label in args.rules.split(","):
        print(json.dumps(run(label, args.attack, args.members, args.byzantine, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
