"""Time and peak extra memory per aggregation rule, plus Flag vs a thin-SVD implementation.

    python bench/aggregators.py                       # n=10, d=1e6, float32
    python bench/aggregators.py --n 16 --d 10000000
    python bench/aggregators.py --grid --threads 1    # n in {8,16,32} x d in {1e5,1e6,1e7}

Each line shows the best wall time, the best process CPU time (steadier on a shared machine) and
the peak extra memory of one call relative to the input size. On a shared or busy machine use
--threads 1: with more threads than free cores, OpenMP barriers dominate (10-40x slower measured).

Peak extra memory is the rise of the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs) above the RSS before the call, relative to the input's size. Linux only.
Run on an otherwise idle machine; numbers on a shared host are upper bounds.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from fednode.aggregators import build

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {STATUS}")


def measure(call: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """Best wall time and best process CPU time over `repeat` calls (s), and the peak RSS rise of
    the first call (bytes). On a shared machine the CPU time is the steadier figure."""
    gc.collect()
    CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    best_wall = best_cpu = math.inf
    for attempt in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        if attempt == 0:
            peak = _status_kib("VmHWM")
    return best_wall, best_cpu, max(peak - before, 0) * 1024.0


def flag_thin_svd(updates: torch.Tensor, r: int) -> torch.Tensor:
    """The reference implementation's approach (one unweighted IRLS step): thin SVD of the d x n
    matrix of unit rows, output = sum of the unit rows projected on the top-r left singular
    vectors, divided by r."""
    unit = F.normalize(updates, p=2, dim=1)
    left, _, _ = torch.linalg.svd(unit.T, full_matrices=False)
    basis = left[:, :r]
    return basis @ (basis.T @ unit.sum(dim=0)) / r


def rule_configurations(n: int) -> list[tuple[str, str, dict[str, object]]]:
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
    ]


def bench(n: int, d: int, repeat: int, rules: set[str] | None) -> None:
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(n, d, generator=generator)
    input_bytes = updates.numel() * updates.element_size()
    print(
        f"\nn={n} d={d:.0e} float32 input {input_bytes / 2**20:.0f} MiB, torch threads {torch.get_num_threads()}"
    )
    print(f"{'rule':28s} {'wall':>8s} {'cpu':>8s} {'extra mem':>10s}")
    cpu_by_rule: dict[str, float] = {}
    for label, name, params in rule_configurations(n):
        if rules is not None and name not in rules:
            continue
        aggregator = build(name, **params)
        wall, cpu, extra = measure(lambda a=aggregator: a(updates, seed=1), repeat)
        cpu_by_rule.setdefault(name, cpu)
        print(f"{label:28s} {wall:7.3f}s {cpu:7.3f}s {extra / input_bytes:9.2f}x", flush=True)
    if "flag" in cpu_by_rule:
        r = math.ceil(n / 2)
        wall, cpu, extra = measure(lambda: flag_thin_svd(updates, r), repeat)
        print(
            f"{'flag: thin SVD (reference)':28s} {wall:7.3f}s {cpu:7.3f}s {extra / input_bytes:9.2f}x"
            f"   -> thin SVD / Gram form CPU time: {cpu / cpu_by_rule['flag']:.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--d", type=float, default=1e6)
    parser.add_argument("--grid", action="store_true", help="n in {8,16,32} x d in {1e5,1e6,1e7}")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls per rule (best is kept)")
    parser.add_argument("--rules", nargs="*", help="rule names to run (default: all)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rules = set(args.rules) if args.rules else None
    shapes = (
        [(n, int(d)) for d in (1e5, 1e6, 1e7) for n in (8, 16, 32)] if args.grid else [(args.n, int(args.d))]
    )
    for n, d in shapes:
        bench(n, d, args.repeat, rules)


if __name__ == "__main__":
    main()
