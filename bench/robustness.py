"""Robustness bench (issue 22): the attack matrix with real daemons.

    python bench/robustness.py --quick                 # 4 rules x 4 attacks at 20 %, digits, seed 0 (~25 min)
    python bench/robustness.py                         # the full matrix (hours on 2 cores)
    python bench/robustness.py --rules flag,centered_clipping --attacks alie,ipm --fractions 20,30 \\
        --tasks digits,synthetic --seeds 0,1 --timing current,previous --json runs/robustness.json

Every cell is a `fednode launch`-style local federation (LocalFederation: N real daemons, real
libp2p on 127.0.0.1, int8 updates) of `--nodes` members (10), of which the last k = fraction x N
attack. The rule is told the truth: f = k. Rounds need the updates of all N - k honest members
(federation.min_participants = N - k): on a loaded 2-core machine round deadlines otherwise close
rounds with different subsets at different members, whose models then drift apart, and the
table would measure scheduling, not robustness (a clean 10-member run at load 15-23 ended with
honest accuracies from 0.56 to 0.94). Each (rule, f, task, seed) also runs once with no attacker,
its clean run; a cell reports

- **delta**: the honest members' mean final test accuracy minus the rule's clean accuracy (same
  rule, f, task and seed), in points (x100); negative = the attack cost that much;
- **accepted**: the attackers' updates the honest members accepted, as a share of what they
  could have (attackers x rounds each honest member closed itself). Attackers deliver on time
  (node/federation/attacker.py): a share near 100 % means the table measures the rule, not the
  attackers' timing. Non-finite updates (nan, inf) are refused by design: 0 % there;
- **selected**: of the accepted attacker updates, the share the rule used (rules that report a
  selection: Krum family, GAS; "-" for the others);
- **spread** (in the per-cell lines and the JSON): honest members' accuracies differ when their
  models drifted apart (min vs mean); a large spread flags a cell to rerun.

Attacks: alie (z_max for n and k), ipm (eps 0.1), sign_flip (-mu), gaussian (sigma 1), label_flip
(data), nan, inf, mimic (copies honest row 0), min_max / min_sum (agnostic), adaptive_min_max /
adaptive_min_sum (fitted to the rule in use). Timing (attack.timing): "current" (default) forges
from the round's honest updates while its own can still arrive before the round closes;
"previous" forges at once from the last round's honest updates.

Tasks: "digits" (the default task: sklearn digits, MLP 64-256-256-10, Dirichlet 0.5) and
"synthetic" (fednode.node.tasks.synthetic: 10 noisy Gaussian clusters in 40 dimensions, MLP
40-64-10; clean accuracy saturates near 0.7, so losses show). Runs are sequential: each cell
starts N daemons (2N processes) on this machine, about a minute per cell on 2 cores. The load
average is printed with every cell: the machine may be shared.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]

ALL_RULES = ["mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median", "centered_clipping",
             "nnm", "flag", "gas_krum", "gas_median", "gas_trimmed_mean"]
ALL_ATTACKS = ["alie", "ipm", "sign_flip", "gaussian", "label_flip", "nan", "inf", "mimic", "min_max", "min_sum",
               "adaptive_min_max", "adaptive_min_sum"]
QUICK_RULES = ["trimmed_mean", "multi_krum", "centered_clipping", "flag"]
QUICK_ATTACKS = ["alie", "ipm", "sign_flip", "adaptive_min_max"]
TASKS: dict[str, list[str]] = {
    "digits": [],
    "synthetic": ['task.name="fednode.node.tasks.synthetic:build_task"'],
}


def rule_spec(label: str) -> tuple[str, dict[str, Any]]:
    """'gas_krum' -> ('gas', {'base': 'krum', 'p': 10}); other labels are rule names."""
    if label.startswith("gas_"):
        return "gas", {"base": label.removeprefix("gas_"), "p": 10}
    return label, {}


@dataclass
class Cell:
    task: str
    seed: int
    rule: str
    f: int
    attack: str  # "" = the clean run
    byzantine: int
    timing: str = "current"
    honest_accuracy: float = math.nan
    honest_min_accuracy: float = math.nan
    accepted: int = 0
    possible: int = 0
    selected: int = 0
    exit_code: int | None = None
    stuck: str = ""
    wall_seconds: float = 0.0
    load_average: float = 0.0
    rounds: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        attack = self.attack or "clean"
        return f"{self.task}-s{self.seed}-{self.rule}-f{self.f}-{attack}-k{self.byzantine}-{self.timing}"


def run_cell(cell: Cell, rounds: int, nodes: int, work: Path, hidden: str = "") -> Cell:
    from fednode.cli.launch import LaunchPlan, LocalFederation

    rule, params = rule_spec(cell.rule)
    out = work / cell.key
    settings = [*TASKS[cell.task], f"task.seed={cell.seed}"]
    if hidden:
        settings.append(f"task.params={{hidden = [{hidden}]}}")
    plan = LaunchPlan(nodes=nodes, rounds=rounds, byzantine=cell.byzantine, attack=cell.attack,
                      attack_timing=cell.timing, rule=rule, f=cell.f, rule_params=params, out_dir=out,
                      settings=settings, progress_floor=180.0, min_participants=nodes - cell.byzantine)
    cell.load_average = os.getloadavg()[0]
    started = time.perf_counter()
    code = LocalFederation(plan, Console(file=io.StringIO(), width=200)).run()
    cell.wall_seconds = time.perf_counter() - started
    cell.exit_code = code
    summary = json.loads((out / "summary.json").read_text())
    cell.stuck = summary.get("stuck", "")
    honest = [n for n in summary["nodes"] if not n["byzantine"]]
    attackers = {n["peer_id"] for n in summary["nodes"] if n["byzantine"] and n["peer_id"]}
    accuracies = [n["accuracy"] for n in honest if isinstance(n["accuracy"], float) and not math.isnan(n["accuracy"])]
    if accuracies:
        cell.honest_accuracy = statistics.fmean(accuracies)
        cell.honest_min_accuracy = min(accuracies)
    cell.rounds = [int(n["rounds"]) for n in honest]
    for node in honest:
        path = Path(node["state_dir"]) / "summary.json"
        if not path.exists():
            continue
        own = json.loads(path.read_text())
        closed = len(own.get("history", []))
        cell.possible += closed * len(attackers)
        for attacker in attackers:
            contribution = own.get("contributions", {}).get(attacker, {})
            cell.accepted += int(contribution.get("accepted", 0))
            cell.selected += int(contribution.get("selected", 0))
    return cell


def selects(rule_label: str) -> bool:
    rule, _ = rule_spec(rule_label)
    return rule in ("krum", "multi_krum", "gas", "bulyan")


def report(cells: list[Cell], console: Console) -> None:
    clean = {(c.task, c.seed, c.rule, c.f): c for c in cells if not c.attack}
    attacked = [c for c in cells if c.attack]
    for task in dict.fromkeys(c.task for c in attacked):
        for timing in dict.fromkeys(c.timing for c in attacked if c.task == task):
            for k in sorted({c.byzantine for c in attacked if c.task == task and c.timing == timing}):
                group = [c for c in attacked if c.task == task and c.timing == timing and c.byzantine == k]
                attacks = list(dict.fromkeys(c.attack for c in group))
                rules = list(dict.fromkeys(c.rule for c in group))
                console.print(f"\n{task}: f = {k} attackers, timing {timing}; cell = delta points (accepted %, "
                              f"selected %); clean = the rule's accuracy without attackers", highlight=False)
                header = ["rule", "clean", *attacks]
                console.print("| " + " | ".join(header) + " |", highlight=False)
                console.print("|" + "---|" * len(header), highlight=False)
                for rule in rules:
                    row = [rule]
                    seeds = sorted({c.seed for c in group if c.rule == rule})
                    base = [clean.get((task, s, rule, k)) for s in seeds]
                    base_acc = [b.honest_accuracy for b in base if b is not None]
                    row.append(f"{statistics.fmean(base_acc):.3f}" if base_acc else "not run")
                    for attack in attacks:
                        runs = [c for c in group if c.rule == rule and c.attack == attack]
                        deltas = [100 * (c.honest_accuracy - clean[(task, c.seed, rule, k)].honest_accuracy)
                                  for c in runs if (task, c.seed, rule, k) in clean]
                        if not runs or not deltas:
                            row.append("not run")
                            continue
                        accepted = sum(c.accepted for c in runs) / max(1, sum(c.possible for c in runs))
                        picked = sum(c.selected for c in runs) / max(1, sum(c.accepted for c in runs))
                        stuck = " stuck" if any(c.stuck or c.exit_code for c in runs) else ""
                        chosen = f", {100 * picked:.0f}" if selects(rule) else ""
                        row.append(f"{statistics.fmean(deltas):+.1f} ({100 * accepted:.0f}{chosen}){stuck}")
                    console.print("| " + " | ".join(row) + " |", highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"rules {','.join(QUICK_RULES)}, attacks "
                        f"{','.join(QUICK_ATTACKS)}, 20 %%, digits, seed 0")
    parser.add_argument("--rules", help=f"comma-separated (default all: {','.join(ALL_RULES)})")
    parser.add_argument("--attacks", help=f"comma-separated (default all: {','.join(ALL_ATTACKS)})")
    parser.add_argument("--fractions", default="20,30", help="attacker shares in %% of --nodes (0 = clean runs only)")
    parser.add_argument("--tasks", default="digits,synthetic", help="digits and/or synthetic")
    parser.add_argument("--seeds", default="0", help="task seeds (data split, initial model), comma-separated")
    parser.add_argument("--timing", default="current", help="attack timing(s): current, previous")
    parser.add_argument("--nodes", type=int, default=10, help="members per federation")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per run")
    parser.add_argument("--hidden", default="", help="MLP hidden sizes for both tasks, e.g. 64 (default: each task's)")
    parser.add_argument("--work", type=Path, default=Path("runs") / "robustness", help="run directories")
    parser.add_argument("--json", type=Path, help="write every cell here (updated after each cell)")
    args = parser.parse_args()
    if args.quick:
        rules, attacks, fractions, tasks = QUICK_RULES, QUICK_ATTACKS, [20], ["digits"]
    else:
        rules = args.rules.split(",") if args.rules else ALL_RULES
        attacks = args.attacks.split(",") if args.attacks else ALL_ATTACKS
        fractions = [int(x) for x in args.fractions.split(",")]
        tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    seeds = [int(x) for x in args.seeds.split(",")]
    timings = args.timing.split(",")
    counts = sorted({round(args.nodes * fraction / 100) for fraction in fractions})
    cells: list[Cell] = []
    for task in tasks:
        for seed in seeds:
            for rule in rules:
                for k in counts:
                    cells.append(Cell(task, seed, rule, k, "", 0))
                    cells += [Cell(task, seed, rule, k, attack, k, timing)
                              for attack in attacks for timing in timings if k]
    console = Console()
    console.print(f"{len(cells)} runs of {args.nodes} daemons x {args.rounds} rounds"
                  f"{f', hidden [{args.hidden}]' if args.hidden else ''}; load average now "
                  f"{os.getloadavg()[0]:.1f}", highlight=False)
    sys.path.insert(0, str(REPO))
    done: list[Cell] = []
    for index, cell in enumerate(cells, 1):
        run_cell(cell, args.rounds, args.nodes, args.work, args.hidden)
        done.append(cell)
        console.print(f"[{index}/{len(cells)}] {cell.key}: honest accuracy {cell.honest_accuracy:.4f} "
                      f"(min {cell.honest_min_accuracy:.4f}), attacker updates accepted {cell.accepted}/{cell.possible}, "
                      f"selected {cell.selected}, exit {cell.exit_code}{' STUCK' if cell.stuck else ''}, "
                      f"{cell.wall_seconds:.0f} s, load {cell.load_average:.1f}", highlight=False)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps([asdict(c) for c in done], indent=1))
    report(done, console)


if __name__ == "__main__":
    main()
