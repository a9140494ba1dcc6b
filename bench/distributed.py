"""One member's training as a torch.distributed job: steps per second at world_size 1 and 2, and
what the member's rounds add to the DDP steps.

    python bench/distributed.py                      # digits MLP 64-256-256-10, batch 32 and 256
    python bench/distributed.py --hidden 1024,1024 --batches 256 --steps 60
    python bench/distributed.py --federation         # also: 2 launched daemons, member 0 at world_size 2
    python bench/distributed.py --json

Measured side by side in one run, on this machine's CPU with gloo (figures only; no GPU here):

* steps/s: `LocalTrainer.train_round` (world_size 1, today's worker) against the job of
  `DistributedTrainer` (world_size 2: rank 0 in this process, rank 1 started by it, as in a
  member), same task, model, global batch and steps. On a 2-core host two ranks share the two
  cores, so the ratio says what the DDP machinery costs here, not what two GPUs give.
* the same job with training.parallel = "fsdp" (parameters, gradients and optimizer state sharded
  with FSDP2: an all-gather per unit in forward and backward, a reduce-scatter of the gradients).
* round overhead: `train_round(model, 0)` of the job, i.e. what a round adds to its steps (the
  command on the store, rank 0's model and batch generator broadcast, the loss all-reduce, the
  model copied into and out of the DDP module).
* --federation: a `fednode launch` of 2 members for --rounds rounds, member 0 at world_size 2:
  its mean (round seconds - training seconds), the exchange and aggregation the federation adds
  to each of its job's rounds, next to member 1's (world_size 1).

Record `uptime` with the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fednode.node.config import FednodeConfig
from fednode.node.worker.distributed import DistributedTrainer, RankGroup
from fednode.node.worker.process import build_local_training, device_for_rank


def _timed(trainer: Any, model: torch.nn.Module, steps: int, repeats: int) -> float:
    """Best steps/s of `repeats` rounds of `steps` steps (after one warm-up round)."""
    trainer.train_round(model, steps)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        result = trainer.train_round(model, steps)
        best = max(best, result.steps / (time.perf_counter() - started))
    return best


def measure(hidden: list[int], batch: int, steps: int, repeats: int) -> dict[str, Any]:
    row: dict[str, Any] = {"hidden": hidden, "batch": batch, "steps": steps}
    for world_size, parallel in ((1, "ddp"), (2, "ddp"), (2, "fsdp")):
        suffix = f"ws{world_size}" + ("_fsdp" if parallel == "fsdp" else "")
        config = FednodeConfig(task={"params": {"hidden": hidden}},
                               training={"world_size": world_size, "batch_size": batch, "torch_threads": 1,
                                         "parallel": parallel})
        device = device_for_rank(config, 0)
        task, _, trainer = build_local_training(config, device)
        model = task.model_factory()
        group = None
        if world_size > 1:
            group = RankGroup(config)
            trainer = DistributedTrainer(trainer, group.join(device), task.model_factory)
        try:
            row[f"steps_per_s_{suffix}"] = _timed(trainer, model, steps, repeats)
            if group is not None:
                overheads = []
                for _ in range(max(repeats, 5)):
                    started = time.perf_counter()
                    trainer.train_round(model, 0)
                    overheads.append(time.perf_counter() - started)
                row[f"round_overhead_ms_{suffix}"] = 1000 * statistics.median(overheads)
                row["parameters"] = sum(p.numel() for p in model.parameters())
        finally:
            if group is not None:
                group.close()
                torch.distributed.destroy_process_group()
    row["ratio_ws2_over_ws1"] = row["steps_per_s_ws2"] / row["steps_per_s_ws1"]
    row["ratio_ws2_fsdp_over_ws1"] = row["steps_per_s_ws2_fsdp"] / row["steps_per_s_ws1"]
    return row


def federation(rounds: int) -> dict[str, Any]:
    """Launch 2 members (member 0 at world_size 2); per member: mean train and round seconds."""
    out = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    command = [sys.executable, "-m", "fednode.cli.app", "launch", "--nodes", "2", "--rounds", str(rounds),
               "--out", str(out / "run"), "--set", "task.params={hidden = [64]}", "--set", "training.local_steps=20",
               "--node-set", "0:training.world_size=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"launch failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    summary = json.loads((out / "run" / "summary.json").read_text())
    members = []
    for node in summary["nodes"]:
        history = json.loads((Path(node["state_dir"]) / "summary.json").read_text())["history"][1:]  # warm
        train = statistics.mean(h["seconds"] for h in history)
        whole = statistics.mean(h["round_seconds"] for h in history)
        members.append({"world_size": 2 if node["node"] == 0 else 1, "train_s": train, "round_s": whole,
                        "federation_overhead_s": whole - train, "accuracy": node["accuracy"]})
    return {"rounds": rounds, "members": members}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="256,256", help="hidden layer widths of the digits MLP")
    parser.add_argument("--batches", default="32,256", help="global batch sizes (each a multiple of 2)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--federation", action="store_true", help="also launch 2 daemons (about a minute)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    rows = [measure([int(h) for h in args.hidden.split(",")], int(batch), args.steps, args.repeats)
            for batch in args.batches.split(",")]
    result: dict[str, Any] = {"load_before": load, "rows": rows, "cpus": os.cpu_count()}
    if args.federation:
        result["federation"] = federation(args.rounds)
    result["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    out = io.StringIO()
    out.write(f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, gloo on CPU\n")
    out.write(f"{'model':>18} {'params':>8} {'batch':>6} {'ws1 steps/s':>12} {'ws2 steps/s':>12} {'ws2/ws1':>8} "
              f"{'round overhead ws2':>19} {'fsdp steps/s':>13} {'fsdp/ws1':>9} {'round overhead fsdp':>20}\n")
    for row in rows:
        model = "64-" + "-".join(str(h) for h in row["hidden"]) + "-10"
        out.write(f"{model:>18} {row['parameters']:>8} {row['batch']:>6} {row['steps_per_s_ws1']:>12.1f} "
                  f"{row['steps_per_s_ws2']:>12.1f} {row['ratio_ws2_over_ws1']:>8.2f} "
                  f"{row['round_overhead_ms_ws2']:>16.2f} ms {row['steps_per_s_ws2_fsdp']:>13.1f} "
                  f"{row['ratio_ws2_fsdp_over_ws1']:>9.2f} {row['round_overhead_ms_ws2_fsdp']:>17.2f} ms\n")
    if "federation" in result:
        out.write(f"federation of 2 launched members, {args.rounds} rounds of 20 steps (rounds 2..):\n")
        for member in result["federation"]["members"]:
            out.write(f"  world_size {member['world_size']}: training {member['train_s']:.3f} s, round "
                      f"{member['round_s']:.3f} s, federation adds {member['federation_overhead_s']:.3f} s per round, "
                      f"accuracy {member['accuracy']:.4f}\n")
    after = result["load_after"]
    out.write(f"load average after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}\n")
    print(out.getvalue(), end="")


if __name__ == "__main__":
    main()
