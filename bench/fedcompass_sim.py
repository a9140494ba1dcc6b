"""FedCompass vs synchronous rounds on a simulated clock: the algorithms without the network.

    python bench/fedcompass_sim.py                                # slowdowns 1,2,4,8, 3 seeds
    python bench/fedcompass_sim.py --latency 0.07 --step-ms 3     # add per-message delivery time

`bench/fedcompass.py` measures real daemons on a shared 2-core machine, where gossip latency,
CPU contention between 4 daemons and noisy speed estimates mix with what the scheduler itself
does. This benchmark separates them: the same digits task, shards, model and local trainer as
the daemons (real torch training), but time is simulated. A local step of node i takes
`step_ms x slowdowns[i]`; every message (an update reaching the aggregator, the new model
reaching a peer) takes `latency` seconds. No CPU is shared, nothing is measured from the wall
clock, so a run is deterministic for a seed.

* sync: every round all nodes train `local_steps` from the global model; the round ends when the
  slowest update has arrived; global = mean of the updates (fednode's sync rounds when nobody is
  dropped).
* fedcompass: the spec's server loop (`CompassServer`, ../shared/docs/aggregation-spec.md §3.2)
  drives the clients; every global update is alpha * sum(s(tau_i) * delta_i) / N, which is
  `compass_step` with the mean rule (what the daemons apply).

Reports the simulated time until the global model first reaches the target test accuracy (median
over seeds) and the accuracy at the end of the budget, with the ratio fedcompass / sync. It bounds
what the real benchmark can show: the ratio here is what the schedules would give with perfect
speed knowledge, idle CPUs and the given message latency.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
from dataclasses import dataclass

import torch

from fednode.aggregators import build
from fednode.node.federation.compass import compass_step
from fednode.node.model import assign_parameters, flatten_parameters
from fednode.node.scheduler.fedcompass import CompassPolicy, CompassServer, staleness_weight
from fednode.node.tasks.base import TaskContext
from fednode.node.tasks.digits import build_task
from fednode.node.trainer import LocalTrainer


@dataclass
class Node:
    trainer: LocalTrainer
    seconds_per_step: float


def make_nodes(slowdowns: list[float], step_seconds: float, seed: int, lr: float) -> tuple[list[Node], torch.nn.Module]:
    nodes = []
    model = None
    for index, slowdown in enumerate(slowdowns):
        task = build_task(TaskContext(shard_index=index, shard_count=len(slowdowns), seed=seed))
        trainer = LocalTrainer(task, torch.device("cpu"), batch_size=32, lr=lr, momentum=0.9,
                               seed=seed * 1_000_003 + index)
        nodes.append(Node(trainer, step_seconds * slowdown))
        if model is None:
            model = task.model_factory()
    assert model is not None
    return nodes, model


def train_delta(node: Node, model: torch.nn.Module, start: torch.Tensor, steps: int) -> torch.Tensor:
    assign_parameters(model, start)
    node.trainer.train_round(model, steps)
    return flatten_parameters(model) - start


def accuracy(node: Node, model: torch.nn.Module, parameters: torch.Tensor) -> float:
    assign_parameters(model, parameters)
    return node.trainer.evaluate(model).accuracy


def run_sync(nodes: list[Node], model: torch.nn.Module, args: argparse.Namespace) -> list[tuple[float, float]]:
    """(time, accuracy) after every round."""
    global_ = flatten_parameters(model).clone()
    now, history = 0.0, []
    while now < args.budget:
        deltas = [train_delta(n, model, global_, args.local_steps) for n in nodes]
        now += max(args.local_steps * n.seconds_per_step for n in nodes) + 2 * args.latency
        global_ = global_ + torch.stack(deltas).mean(dim=0)
        history.append((now, accuracy(nodes[0], model, global_)))
    return history


def run_fedcompass(nodes: list[Node], model: torch.nn.Module, args: argparse.Namespace) -> list[tuple[float, float]]:
    """(time, accuracy) after every global update, driven by the spec's server loop."""
    policy = CompassPolicy(q_min=args.q_min, q_max=args.q_max)
    server = CompassServer(policy)
    mean = build("mean")
    global_ = flatten_parameters(model).clone()
    names = [f"n{i}" for i in range(len(nodes))]
    pending: dict[tuple[str, int], tuple[torch.Tensor, int]] = {}  # (client, update no) -> delta, base version
    events: list[tuple[float, int, str]] = []  # (arrival time at the server, tiebreak, client)
    counter = 0

    def start(name: str, at: float, steps: int) -> None:
        nonlocal counter
        node = nodes[names.index(name)]
        client = server.client(name)
        delta = train_delta(node, model, global_, steps)
        pending[(name, client.updates + 1)] = (delta, client.timestamp)
        counter += 1
        heapq.heappush(events, (at + steps * node.seconds_per_step + args.latency, counter, name))

    for name in names:
        start(name, 0.0, policy.q_max)
    history: list[tuple[float, float]] = []
    while events:
        timer = server.next_timer()
        if timer < events[0][0]:
            now = timer
            aggregations, replies = server.on_timer(now)
        else:
            now, _, name = heapq.heappop(events)
            aggregations, replies = server.on_update(name, now)
        if now > args.budget:
            break
        for aggregation in aggregations:
            entries = []
            for ref, weight in zip(aggregation.entries, aggregation.weights, strict=True):
                delta, base = pending.pop(ref.key)
                tau = aggregation.version - 1 - base
                assert staleness_weight(policy, tau) == weight  # the server's s(tau), recomputed by compass_step
                entries.append((ref.sender, ref.seq, delta, tau))
            step = compass_step(entries, policy=policy, aggregator=mean, federation_size=len(nodes), seed=0)
            assert step.step is not None, step.error
            global_ = global_ + step.step
            history.append((now, accuracy(nodes[0], model, global_)))
        for reply in replies:
            # The reply (new model, Q) reaches the client after one message latency.
            start(reply.client, now + args.latency, reply.local_steps)
    return history


def time_to(history: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, a in history if a >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slowdowns", default="1,2,4,8")
    parser.add_argument("--step-ms", type=float, default=3.0, help="simulated seconds per step of the fastest node, in ms")
    parser.add_argument("--latency", type=float, default=0.0, help="simulated delivery time of every message (s)")
    parser.add_argument("--local-steps", type=int, default=20, help="sync: steps per round")
    parser.add_argument("--q-min", type=int, default=20)
    parser.add_argument("--q-max", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--budget", type=float, default=20.0, help="simulated seconds")
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    slowdowns = [float(s) for s in args.slowdowns.split(",")]

    results: dict[str, list[tuple[float | None, float]]] = {"sync": [], "fedcompass": []}
    for seed in range(args.seeds):
        for schedule, run in (("sync", run_sync), ("fedcompass", run_fedcompass)):
            nodes, model = make_nodes(slowdowns, args.step_ms / 1000, seed, args.lr)
            history = run(nodes, model, args)
            hit = time_to(history, args.target)
            final = history[-1][1] if history else float("nan")
            results[schedule].append((hit, final))
            print(f"seed {seed} {schedule:10s} time to {args.target:.2f}: "
                  f"{'not reached' if hit is None else f'{hit:.2f} s'}, final {final:.4f}, {len(history)} versions",
                  flush=True)

    def med(schedule: str, i: int) -> float | None:
        values = [r[i] for r in results[schedule]]
        return None if any(v is None for v in values) else statistics.median(values)  # type: ignore[type-var]

    print()
    print(f"simulated: slowdowns {args.slowdowns}, {args.step_ms} ms/step, latency {args.latency * 1000:.0f} ms, "
          f"sync {args.local_steps} steps, fedcompass q in [{args.q_min}, {args.q_max}], {args.seeds} seeds")
    print(f"| schedule | time to {args.target:.2f} (s) | final accuracy |")
    print("|---|---|---|")
    for schedule in results:
        hit, final = med(schedule, 0), med(schedule, 1)
        print(f"| {schedule} | {'not reached' if hit is None else f'{hit:.2f}'} | {final:.4f} |")
    sync_hit, fc_hit = med("sync", 0), med("fedcompass", 0)
    ratio = f"{fc_hit / sync_hit:.2f}" if sync_hit and fc_hit else "n/a"
    print(f"| ratio | {ratio} | {((med('fedcompass', 1) or 0) - (med('sync', 1) or 0)) * 100:+.1f} points |")


if __name__ == "__main__":
    main()
