"""Time and peak extra memory per aggregation rule, plus Flag vs a thin-SVD implementation.

    python bench/aggregators.py                      # n in {8,16,32} x d in {1e5,1e6,1e7}
    python bench/aggregators.py --quick              # d in {1e5,1e6}, one timed call
    python bench/aggregators.py --only flag,krum --n 16 --d 1e7 --rounds 3
    python bench/aggregators.py --threads 2          # torch intra-op threads in every case

Every (rule, n, d) case runs in a fresh subprocess, so its peak memory is its own: the child
builds the float32 input (seeded), makes a warm-up call on a 50,000-column slice (one-time library
set-up), then one call whose peak extra memory it records, then `--repeat` timed calls. `--rounds R` runs the whole list of cases R times, interleaved (round 1 of
every case, then round 2, ...), and reports medians over all timed calls: on a shared machine the
noise then hits every rule alike.

Columns: wall seconds and process CPU seconds per call (medians; CPU time is the steadier figure
on a shared machine) and the peak extra memory of one call relative to the input size. Peak extra
memory is the rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs just
before the call) above the RSS before the call; torch's allocations are included, allocator
noise of a few MiB dominates at d <= 1e6. Linux only.

The last lines of each table divide the time of two baselines by the Gram-form Flag's: the
reference implementation's algorithm written plainly in torch (random orthonormal start, weights,
thin SVD, objective; the issue-3 target is >= 10 at n=16, d=1e7), and its thin-SVD step alone
(a lower bound on any SVD-based implementation).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
SVD_LABEL = "flag: thin SVD only"
REFERENCE_LABEL = "flag: reference algorithm"


def rule_configurations(n: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, rule name, parameters) of every benchmarked rule for n rows."""
    f = max((n - 3) // 4, 0)  # Bulyan's bound, so every rule accepts it
    return [
        ("mean", "mean", {}),
        ("median", "median", {"f": f}),
        ("trimmed_mean", "trimmed_mean", {"f": f}),
        ("krum", "krum", {"f": f}),
        ("multi_krum", "multi_krum", {"f": f}),
        ("bulyan", "bulyan", {"f": f}),
        ("geometric_median", "geometric_median", {"f": f}),
        ("centered_clipping(iters=3)", "centered_clipping", {"iters": 3}),
        ("nnm+trimmed_mean", "nnm", {"f": f}),
        ("flag(r=n/2)", "flag", {}),
        ("gas(bulyan,p=1000)", "gas", {"f": f}),
        ("gas(krum,p=1000)", "gas", {"f": f, "base": "krum"}),
        (SVD_LABEL, "flag_thin_svd", {}),
        (REFERENCE_LABEL, "flag_reference", {}),
    ]


def flag_thin_svd(updates: torch.Tensor, r: int) -> torch.Tensor:
    """The SVD step of the reference implementation alone (a lower bound on its cost): thin SVD
    of the d x n matrix of unit rows, output = sum of the unit rows projected on the top-r left
    singular vectors, divided by r."""
    unit = F.normalize(updates, p=2, dim=1)
    left, _, _ = torch.linalg.svd(unit.T, full_matrices=False)
    basis = left[:, :r]
    return basis @ (basis.T @ unit.sum(dim=0)) / r


def flag_reference(updates: torch.Tensor, r: int) -> torch.Tensor:
    """The reference implementation's algorithm at its defaults (aggregation-spec.md 1.3-1.6: one
    IRLS iteration from a random orthonormal start), written plainly in torch: random Y0 = QR of
    U[-0.5, 0.5)^{d x r}, weights (|1 - ||Y0^T x_i||^2| + eps)^(-1/4), thin SVD of the weighted
    d x n matrix, the objective at Y0 and at the new Y (kept only if it decreased), output as in
    flag_thin_svd. The reference's CSV logging is left out."""
    unit = F.normalize(updates, p=2, dim=1)
    d = unit.shape[1]
    generator = torch.Generator().manual_seed(1)
    start = torch.linalg.qr(torch.rand(d, r, generator=generator) - 0.5).Q  # d x r
    start_ratio = ((unit @ start) ** 2).sum(dim=1)  # ||Y0^T x_i||^2
    weights = ((1.0 - start_ratio).abs() + 1e-7) ** -0.25
    left, _, _ = torch.linalg.svd(unit.T * weights, full_matrices=False)
    basis = left[:, :r]
    objective_start = (1.0 - start_ratio).clamp_min(0.0).sqrt().sum()
    objective = (1.0 - ((unit @ basis) ** 2).sum(dim=1)).clamp_min(0.0).sqrt().sum()
    if not objective < objective_start:
        basis = start
    return basis @ (basis.T @ unit.sum(dim=0)) / r


# ---------------------------------------------------------------------- child process


def _status_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {STATUS}")


def _timed(call: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one case in this process: peak extra memory of the first call, then timings."""
    torch.set_num_threads(spec["threads"])
    n, d = spec["n"], spec["d"]
    updates = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    r = math.ceil(n / 2)
    baselines = {"flag_thin_svd": flag_thin_svd, "flag_reference": flag_reference}
    if spec["rule"] in baselines:
        baseline = baselines[spec["rule"]]

        def call() -> object:
            return baseline(updates, r)

    else:
        from fednode.aggregators import build

        aggregator = build(spec["rule"], **spec["params"])

        def call() -> object:
            return aggregator(updates, seed=1)

    warm_up = updates[:, : min(d, 50_000)].clone()  # one-time library set-up is not the call's cost
    if spec["rule"] in baselines:
        baselines[spec["rule"]](warm_up, r)
    else:
        aggregator(warm_up, seed=1)
    del warm_up
    gc.collect()
    CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    first = _timed(call)
    peak = max(_status_kib("VmHWM") - before, 0) * 1024
    timings = [_timed(call) for _ in range(spec["repeat"])] or [first]
    return {
        "wall": [w for w, _ in timings],
        "cpu": [c for _, c in timings],
        "extra": peak / (updates.numel() * updates.element_size()),
    }


# ---------------------------------------------------------------------- driver


@dataclass
class Case:
    label: str
    rule: str
    params: dict[str, Any]
    n: int
    d: int
    wall: list[float]
    cpu: list[float]
    extra: list[float]
    error: str = ""


def _child(case: Case, repeat: int, threads: int) -> None:
    spec = {"rule": case.rule, "params": case.params, "n": case.n, "d": case.d, "repeat": repeat, "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        case.error = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    case.wall += result["wall"]
    case.cpu += result["cpu"]
    case.extra.append(result["extra"])


def _cell(case: Case | None) -> str:
    if case is None:
        return f"{'':>21s}"
    if case.error:
        return f"{'error':>21s}"
    if not case.wall:
        return f"{'-':>21s}"
    wall, cpu, extra = statistics.median(case.wall), statistics.median(case.cpu), max(case.extra)
    return f"{wall:6.3f} {cpu:6.3f} {extra:6.2f}x"


def _print_table(d: int, ns: list[int], cases: dict[tuple[str, int, int], Case], labels: list[str]) -> None:
    width = max(len(label) for label in labels) + 2
    print(f"\nd={d:.0e}, float32; per n: wall s, CPU s (medians), peak extra memory / input")
    print(f"{'rule':{width}s}" + "".join(f"| {'n=' + str(n):^21s}" for n in ns))
    for label in labels:
        print(f"{label:{width}s}" + "".join(f"| {_cell(cases.get((label, n, d)))}" for n in ns))
    for baseline, title in ((REFERENCE_LABEL, "reference algo / Gram flag"), (SVD_LABEL, "thin SVD only / Gram flag")):
        ratios = []
        for n in ns:
            flag, slow = cases.get(("flag(r=n/2)", n, d)), cases.get((baseline, n, d))
            if flag and slow and flag.wall and slow.wall:
                ratios.append(
                    f"wall {statistics.median(slow.wall) / statistics.median(flag.wall):5.1f}x "
                    f"cpu {statistics.median(slow.cpu) / statistics.median(flag.cpu):5.1f}x"
                )
            else:
                ratios.append("")
        if any(ratios):
            print(f"{title:{width}s}" + "".join(f"| {r:^21s}" for r in ratios))


def _selected(label: str, rule: str, only: list[str] | None) -> bool:
    if not only:
        return True
    return any(word == rule or label.startswith(word) for word in only)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", help="row counts (default 8 16 32)")
    parser.add_argument("--d", type=float, nargs="*", help="dimensions (default 1e5 1e6 1e7)")
    parser.add_argument("--quick", action="store_true", help="d in {1e5,1e6} and one timed call per case")
    parser.add_argument(
        "--only", help="comma-separated rule names or label prefixes, e.g. flag,krum or 'gas(krum'"
    )
    parser.add_argument("--repeat", type=int, help="timed calls per case and round (default 3; --quick 1)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds over all cases")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the daemon)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    ns = args.n or [8, 16, 32]
    ds = [int(d) for d in (args.d or ([1e5, 1e6] if args.quick else [1e5, 1e6, 1e7]))]
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    only = [word.strip() for word in args.only.split(",")] if args.only else None
    cases: dict[tuple[str, int, int], Case] = {}
    labels: list[str] = []
    for d in ds:
        for n in ns:
            for label, rule, params in rule_configurations(n):
                if _selected(label, rule, only):
                    cases[(label, n, d)] = Case(label, rule, params, n, d, [], [], [])
                    if label not in labels:
                        labels.append(label)
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
        f"{len(cases)} cases x {args.rounds} round(s) x {repeat} timed call(s); load average {load[0]:.1f}",
        flush=True,
    )
    for _ in range(args.rounds):
        for d in ds:
            for case in cases.values():
                if case.d == d and not case.error:
                    _child(case, repeat, args.threads)
    for d in ds:
        _print_table(d, ns, cases, labels)
    for case in cases.values():
        if case.error:
            print(f"error: {case.label} n={case.n} d={case.d:.0e}: {case.error}")
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
