"""Benchmark: FedCompass vs synchronous rounds with heterogeneous peers, side by side in one run.

    python bench/fedcompass.py                                   # 4 daemons, slowdowns 1,2,4,8
    python bench/fedcompass.py --nodes 6 --slowdowns 1,1,2,4,8,8 --repeats 2 --json runs/fc.json

Each run is a real local federation started with `fednode launch` (separate daemon processes,
py-libp2p on 127.0.0.1), digits MLP 64-256-256-10, mean aggregation, int8 updates, the same
training settings for both schedules; per-node slowdowns emulate slower devices: by default each
node's local step takes 3 ms x its slowdown (`--step-ms`, `training.emulated_step_ms`; steps are
padded with sleep), the per-step compute times of the FedCompass paper's setup and of
bench/fedcompass_sim.py, so four daemons on a 2-core host do not contend for its cores (separate
machines would not). `--step-ms 0` multiplies this machine's own step instead. The runs take
turns (sync, fedcompass, sync, ...; the order reversed every repeat) so load drift on this shared
machine hits all alike.

Two synchronous baselines by default (`--sync-steps q_max,20`): rounds of q_max local steps, the
pairing of the FedCompass reference's own examples (APPFL/FedCompass `server_fedavg.yaml` and
`server_fedcompass.yaml` both give clients 100 local steps; q_max = 100 there), and rounds of 20
steps (`training.local_steps`' default), a shorter-round baseline that the easy digits task
favours (bench/fedcompass_sim.py shows why).

Measured from the moment every daemon is listening (start-up, which is the same for both, is
left out):

* time to target: until every node's model has reached the target test accuracy (0.90);
* final accuracy: mean over nodes of the last evaluated accuracy when the budget ends;
* aggregations: global model versions applied (sync: rounds; fedcompass: group aggregations).

The ratio column is fedcompass / that sync baseline (medians over repeats). Target (issue 6): fedcompass
reaches 0.90 in <= 0.6 x the sync time, with final accuracy at most 1 point lower. No pass/fail
here: the figures go to docs/fedcompass.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fednode.node.logs import read_json_log, record_time


def _records(path: Path) -> list[dict]:
    return read_json_log(path.read_text(errors="replace")) if path.exists() else []


def _ready_time(run_dir: Path, nodes: int) -> float | None:
    """When the last node started listening (unix time), or None if not all are up."""
    times = []
    for index in range(nodes):
        listening = [record_time(r) for r in _records(run_dir / f"node-{index}.log") if r.get("event") == "listening"]
        if not listening:
            return None
        times.append(listening[0])
    return max(times)


def run_once(variant: str, args: argparse.Namespace, out: Path) -> dict:
    """One federation for `args.budget` seconds after every node is up; returns its figures.

    `variant`: "fedcompass", "fedcompass/gossip" (control messages by gossip only, no fast-path
    pushes) or "sync@<local steps per round>"."""
    schedule, _, steps = variant.partition("@")
    schedule, _, path = schedule.partition("/")
    command = [
        sys.executable, "-m", "fednode.cli.app", "launch",
        "--nodes", str(args.nodes), "--rounds", "1000000", "--schedule", schedule,
        "--slowdowns", args.slowdowns, "--out", str(out),
        "--set", f"training.local_steps={steps or args.q_max}",
        "--set", f"training.lr={args.lr}",
        "--set", f"federation.q_min={args.q_min}",
        "--set", f"federation.q_max={args.q_max}",
        "--set", f"federation.push={'false' if path == 'gossip' else 'true'}",
        "--set", f"training.emulated_step_ms={args.step_ms}",
    ]
    for item in args.set or []:
        command += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    ready = None
    try:
        deadline = time.monotonic() + args.start_timeout
        while ready is None and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.5)
            ready = _ready_time(out, args.nodes)
        if ready is None:
            raise RuntimeError(f"{variant}: the daemons did not all start within {args.start_timeout} s")
        time.sleep(max(0.0, ready + args.budget - time.time()))
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)  # the launcher stops every daemon gracefully
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)  # daemons die with it (PR_SET_PDEATHSIG)
                launcher.wait(timeout=10)
    assert ready is not None
    per_node = []
    for index in range(args.nodes):
        rounds = [(record_time(r) - ready, r["accuracy"], r["round"])
                  for r in _records(out / f"node-{index}.log") if r.get("event") == "round"]
        rounds = [r for r in rounds if r[0] <= args.budget]
        hit = next((t for t, accuracy, _ in rounds if accuracy >= args.target), None)
        per_node.append({
            "node": index,
            "hit": hit,
            "final": rounds[-1][1] if rounds else float("nan"),
            "versions": rounds[-1][2] if rounds else 0,
        })
    hits = [n["hit"] for n in per_node]
    groups = sum(1 for index in range(args.nodes) for r in _records(out / f"node-{index}.log")
                 if r.get("event") == "group_closed" and not r.get("deferred"))
    return {
        "schedule": variant,
        "time_to_target": max(hits) if all(h is not None for h in hits) else None,
        "final_accuracy": statistics.fmean(n["final"] for n in per_node),
        "versions": max(n["versions"] for n in per_node),
        "groups": groups,
        "nodes": per_node,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--slowdowns", default="1,2,4,8", help="per-node slowdown factors, cycled")
    parser.add_argument("--budget", type=float, default=45.0, help="seconds each federation trains after all are up")
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sync-steps", default="q_max,20",
                        help="local steps per sync round, one sync baseline each; q_max = the reference's pairing")
    parser.add_argument("--gossip-only", action="store_true",
                        help="also run fedcompass with control messages by gossip only (no fast-path pushes)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--q-min", type=int, default=20, help="fedcompass: fewest local steps")
    parser.add_argument("--q-max", type=int, default=100, help="fedcompass: most local steps")
    parser.add_argument("--step-ms", type=float, default=3.0,
                        help="emulate devices whose step takes this many ms x slowdown (training.emulated_step_ms); "
                             "0 = slowdown x this machine's step")
    parser.add_argument("--set", action="append", help="extra --set for every node of both schedules")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--keep", type=Path, help="keep the run directories (logs) under this directory")
    args = parser.parse_args()

    sync_steps = [args.q_max if item.strip() == "q_max" else int(item) for item in args.sync_steps.split(",")]
    variants = [f"sync@{steps}" for steps in dict.fromkeys(sync_steps)] + ["fedcompass"]
    if args.gossip_only:
        variants.append("fedcompass/gossip")
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="fedcompass-bench-") as scratch:
        tmp = args.keep or scratch
        for repeat in range(args.repeats):
            # Take turns, reversing the order every repeat, so load drift hits every variant alike.
            for variant in variants if repeat % 2 == 0 else variants[::-1]:
                result = run_once(variant, args, Path(tmp) / f"{variant.replace('@', '-').replace('/', '-')}-{repeat}")
                results[variant].append(result)
                hit = result["time_to_target"]
                print(f"[{repeat + 1}/{args.repeats}] {variant:10s} time to {args.target:.2f}: "
                      f"{'not reached' if hit is None else f'{hit:.1f} s'}, final accuracy {result['final_accuracy']:.4f}, "
                      f"{result['versions']} model versions", flush=True)

    def median(variant: str, key: str) -> float | None:
        values = [r[key] for r in results[variant] if r[key] is not None]
        return statistics.median(values) if len(values) == len(results[variant]) and values else None

    print()
    print(f"{args.nodes} daemons, slowdowns {args.slowdowns}, budget {args.budget:.0f} s after start-up, "
          f"fedcompass q in [{args.q_min}, {args.q_max}], sync steps/round {', '.join(str(s) for s in dict.fromkeys(sync_steps))}, "
          f"lr {args.lr}, step {f'{args.step_ms:g} ms' if args.step_ms else 'this machine'} x slowdown, "
          f"{args.repeats} repeat(s), load average {os.getloadavg()[0]:.1f}")
    print(f"| schedule | time to {args.target:.2f} (s) | final accuracy | model versions | fedcompass time / this | accuracy difference |")
    print("|---|---|---|---|---|---|")
    fc_hit, fc_final = median("fedcompass", "time_to_target"), median("fedcompass", "final_accuracy") or 0.0
    for variant in variants:
        hit, final = median(variant, "time_to_target"), median(variant, "final_accuracy") or 0.0
        baseline = variant.startswith("sync")
        ratio = f"{fc_hit / hit:.2f}" if hit and fc_hit and baseline else ""
        delta = f"{(fc_final - final) * 100:+.1f} points" if baseline else ""
        print(f"| {variant} | {'not reached' if hit is None else f'{hit:.1f}'} | {final:.4f} | "
              f"{median(variant, 'versions'):.0f} | {ratio} | {delta} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
