"""Outer optimizers side by side: rounds and wall time to a target accuracy, final accuracy.

    python bench/outer.py                                   # both tasks, sgd momentum adam nesterov, seeds 0-2
    python bench/outer.py --sweep                            # outer_lr grid per optimizer (default task, seed 0)
    python bench/outer.py --diloco                           # DiLoCo preset vs the default at equal bytes
    python bench/outer.py --tasks default --optimizers sgd,nesterov:0.5 --seeds 0 --json

Every member is a real `FederationRunner` (task, trainer, aggregator, int8 compressor and outer
optimizer as the training worker builds them) over one in-memory network in this process
(fednode.node.federation.simulation, docs/simulation.md): the runs are the real round code,
many configurations fit in minutes. bench/outer_launch.sh repeats the headline with real
daemons (`fednode launch`).

Tasks (both non-IID; "equal local work": every optimizer gets the same local steps, inner
optimizer and rounds, only the outer step differs):
  default  the README's federation: digits, MLP 64-256-256-10, 4 members, Dirichlet alpha 0.5,
           20 local SGD steps (lr 0.05, momentum 0.9), int8 updates, min_participants 3
  hard     digits, 8 members, Dirichlet alpha 0.1 (most members see two or three classes),
           same model and local work: client drift dominates

Columns: rounds and seconds until the federation's model (member 0's; every member holds the same
one) first reaches --target on the shared test set ("-": not within --rounds), accuracy after
the last round, and the mean over seeds. Seconds are this process's wall time (all members'
training and the exchange in one process): compare them within one run, not with daemons.

An optimizer is written name or name:lr (outer_lr; default: the optimizer's default).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fednode.node.config import FednodeConfig
from fednode.node.federation.outer import OuterConfig
from fednode.node.federation.simulation import SimulatedFederation

TASKS: dict[str, dict[str, Any]] = {
    "default": {"members": 4, "alpha": 0.5, "min_participants": 3},
    "hard": {"members": 8, "alpha": 0.1, "min_participants": 5},
}
SWEEP: dict[str, list[float]] = {
    "sgd": [1.0, 1.5, 2.0],
    "momentum": [0.1, 0.2, 0.3, 0.5],
    "nesterov": [0.1, 0.2, 0.3, 0.5, 0.7],
    "adam": [0.003, 0.01, 0.03],
    "yogi": [0.003, 0.01, 0.03],
    "adagrad": [0.01, 0.03, 0.1],
}


@dataclass
class Run:
    task: str
    optimizer: str
    lr: float
    seed: int
    local_steps: int
    inner: str
    accuracy: list[float] = field(default_factory=list)  # member 0 after each round
    seconds: list[float] = field(default_factory=list)  # wall seconds since the first round started
    payload_bytes: int = 0

    def first(self, target: float) -> tuple[int | None, float | None]:
        for index, value in enumerate(self.accuracy):
            if value >= target:
                return index + 1, self.seconds[index]
        return None, None


def config_for(task: str, optimizer: str, lr: float, seed: int, *, local_steps: int, inner: str,
               inner_lr: float) -> FednodeConfig:
    spec = TASKS[task]
    return FednodeConfig.model_validate({
        "task": {"params": {"alpha": spec["alpha"]}, "seed": seed},
        "training": {"local_steps": local_steps, "optimizer": inner, "lr": inner_lr},
        "aggregation": {"outer": optimizer, "outer_lr": lr},
        "federation": {"id": f"bench-outer-{task}", "announce_interval": 0.5,
                       "min_participants": spec["min_participants"]},
    })


async def measure(task: str, optimizer: str, lr: float, seed: int, rounds: int, *, local_steps: int = 20,
                  inner: str = "sgd", inner_lr: float = 0.05) -> Run:
    cfg = config_for(task, optimizer, lr, seed, local_steps=local_steps, inner=inner, inner_lr=inner_lr)
    run = Run(task, optimizer, cfg.aggregation.outer_config().lr, seed, local_steps, inner)
    federation = SimulatedFederation(cfg, TASKS[task]["members"], seed=seed)
    member = federation.members[0]
    recorded = member.runner.on_round
    started: list[float] = []

    async def on_round(outcome: Any) -> None:
        # Member 0's model right after the round's outer step (every member holds the same).
        run.accuracy.append(member.trainer.evaluate(member.runner.model).accuracy)
        run.seconds.append(time.perf_counter() - started[0])
        if recorded is not None:
            await recorded(outcome)

    member.runner.on_round = on_round
    try:
        await federation.start()
        started.append(time.perf_counter())
        await federation.run(rounds, timeout=60 * rounds * max(1.0, local_steps / 20))  # 500 local steps: 25x a round
        run.payload_bytes = member.payload_bytes()
    finally:
        await federation.close()
    return run


def parse_optimizer(text: str) -> tuple[str, float]:
    name, _, lr = text.partition(":")
    OuterConfig.build(name, lr=float(lr or 0))  # fail early on a typo
    return name, float(lr or 0)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(runs: list[Run], target: float) -> None:
    keys = sorted({(r.task, r.optimizer, r.lr, r.local_steps, r.inner) for r in runs},
                  key=lambda k: (list(TASKS).index(k[0]) if k[0] in TASKS else 0, k[1], k[2]))
    print(f"{'task':<8} {'outer':<9} {'lr':>6} {'local':>5}  {'rounds to ' + str(target):>22}  "
          f"{'seconds to ' + str(target):>26}  {'final accuracy':>24}")
    for key in keys:
        mine = sorted((r for r in runs if (r.task, r.optimizer, r.lr, r.local_steps, r.inner) == key), key=lambda r: r.seed)
        hits = [r.first(target) for r in mine]
        rounds = [h[0] for h in hits]
        seconds = [h[1] for h in hits]
        finals = [r.accuracy[-1] for r in mine]
        reached = [x for x in rounds if x is not None]
        mean_rounds = statistics.mean(reached) if len(reached) == len(rounds) else None
        reached_s = [x for x in seconds if x is not None]
        mean_seconds = statistics.mean(reached_s) if len(reached_s) == len(seconds) else None
        print(f"{key[0]:<8} {key[1]:<9} {key[2]:>6.3g} {key[3]:>5}  "
              f"{' '.join(fmt(x, '>3') for x in rounds):>14} ({fmt(mean_rounds, '>5.1f')})  "
              f"{' '.join(fmt(x, '>5.1f') for x in seconds):>18} ({fmt(mean_seconds, '>5.1f')})  "
              f"{' '.join(f'{x:.3f}' for x in finals):>17} ({statistics.mean(finals):.3f})", flush=True)


def share_signature_checks() -> None:
    """One process runs every member: verify each signature once (a pure function), as
    bench/simulate.py does."""
    from fednode.node import envelope

    envelope.verify_signature = functools.lru_cache(maxsize=1 << 16)(envelope.verify_signature)  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="default,hard")
    parser.add_argument("--optimizers", default="sgd,momentum,adam,nesterov",
                        help="name or name:lr, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="task seeds (Dirichlet split, initial weights)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--sweep", action="store_true", help="outer_lr grid for each optimizer")
    parser.add_argument("--diloco", action="store_true",
                        help="DiLoCo preset (500 local steps, outer nesterov 0.7) vs the default at equal rounds = equal bytes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    share_signature_checks()
    torch.set_num_threads(1)  # as the worker
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    plans: list[tuple[str, str, float, int, dict[str, Any]]] = []
    if args.sweep:
        for name in [o.split(":")[0] for o in args.optimizers.split(",") if o]:
            plans += [(task, name, lr, seed, {}) for task in tasks for lr in SWEEP[name] for seed in seeds]
    elif args.diloco:
        for task in tasks:
            for seed in seeds:
                plans.append((task, "sgd", 1.0, seed, {}))
                plans.append((task, "nesterov", 0.7, seed, {"local_steps": 500, "inner": "task"}))
                plans.append((task, "nesterov", 0.7, seed, {"local_steps": 500, "inner": "adamw", "inner_lr": 1e-3}))
    else:
        optimizers = [parse_optimizer(o) for o in args.optimizers.split(",") if o]
        plans = [(task, name, lr, seed, {}) for task in tasks for name, lr in optimizers for seed in seeds]
    load = os.getloadavg()
    print(f"# bench/outer.py {' '.join(argv if argv is not None else sys.argv[1:])}: {len(plans)} runs of {args.rounds} "
          f"rounds; load average {load[0]:.1f} at start ({os.cpu_count()} cores)", flush=True)
    runs: list[Run] = []
    for task, name, lr, seed, extra in plans:
        run = asyncio.run(measure(task, name, lr, seed, args.rounds, **extra))
        runs.append(run)
        reached, seconds = run.first(args.target)
        line = {"task": task, "optimizer": name, "lr": run.lr, "seed": seed, "local_steps": run.local_steps,
                "inner": run.inner, "rounds_to_target": reached, "seconds_to_target": seconds,
                "final_accuracy": run.accuracy[-1], "rounds": len(run.accuracy), "payload_bytes": run.payload_bytes,
                "accuracy": [round(a, 4) for a in run.accuracy], "seconds": [round(s, 2) for s in run.seconds]}
        if args.json:
            print(json.dumps(line), flush=True)
        else:
            print(f"  {task} {name}:{run.lr:g} local {run.local_steps} {run.inner} seed {seed}: "
                  f"{args.target} at round {reached} ({fmt(seconds, '.1f')} s), final {run.accuracy[-1]:.3f}",
                  file=sys.stderr, flush=True)
    if not args.json:
        table(runs, args.target)
        if args.diloco:
            print("equal bytes: every run sends one update of the same size per member and round "
                  f"({runs[0].payload_bytes} B int8); accuracy after each round count:")
            for rounds_seen in (1, 2, 3, 5, 10, 20, 30, args.rounds):
                if rounds_seen > args.rounds:
                    continue
                cells = []
                for key in sorted({(r.task, r.optimizer, r.local_steps, r.inner) for r in runs}):
                    values = [r.accuracy[rounds_seen - 1] for r in runs
                              if (r.task, r.optimizer, r.local_steps, r.inner) == key and len(r.accuracy) >= rounds_seen]
                    cells.append(f"{key[0]} {key[1]} {key[2]} {key[3]}: {statistics.mean(values):.3f}")
                print(f"  after {rounds_seen:>2} rounds  " + " | ".join(cells))
    load = os.getloadavg()
    print(f"# load average {load[0]:.1f} at the end", flush=True)
    return 0 if all(not math.isnan(r.accuracy[-1]) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
