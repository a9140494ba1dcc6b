"""All-to-all vs partwise aggregation, side by side in one run, per rule.

    python bench/partwise.py                      # n in {16, 64} x d in {1e5, 1e6}, m = n
    python bench/partwise.py --n 16 --d 1e6 --only krum,flag --repeat 3

For every rule, in one process (float32 input, seeded; torch threads 1, as the daemon):
- `a2a`: CPU seconds of the ordinary call `rule(X)` (what every member computes today);
- `parts`: CPU seconds of the whole partwise computation, every owner's work (partials of every
  request, then applying the decision to its part) plus one member's decisions;
- `owner`: the mean per-part share of the owners' work (a member that owns r parts does r times
  that), and `member`: one member's decision work (summing the partials, the n x n algebra);
- `rounds` and `bytes in`: exchange rounds, and the partial statistics one member receives per
  aggregation (every part's partial of every round, as encoded by `encode_partial`); an owner
  publishes 1/m of that per part it owns;
- `max dev`: the largest |partwise - all-to-all| over the aggregate, relative to its largest
  coordinate (0 = bit-identical).

CPU time (`time.process_time`) is the figure a shared machine's load leaves alone; medians over
--repeat runs. Partwise GAS runs with within_parts = m (its splits inside the parts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fednode.aggregators import build
from fednode.aggregators.partwise import PartInput, PartLayout, Session, apply_decision, compute_partial


def rule_configurations(n: int) -> list[tuple[str, str, dict[str, Any]]]:
    f = max((n - 3) // 4, 0)  # Bulyan's bound, so every rule accepts it (as bench/aggregators.py)
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
        ("nnm+krum", "nnm", {"f": f, "base": "krum"}),
        ("flag(r=n/2)", "flag", {}),
        ("gas(krum,p=1000)", "gas", {"f": f, "base": "krum"}),
        ("gas(bulyan,p=1000)", "gas", {"f": f}),
    ]


@dataclass
class Measure:
    a2a: list[float] = field(default_factory=list)
    parts: list[float] = field(default_factory=list)
    owner: list[float] = field(default_factory=list)
    member: list[float] = field(default_factory=list)
    rounds: int = 0
    bytes_in: int = 0
    deviation: float = 0.0


def cpu(call: Any) -> tuple[Any, float]:
    start = time.process_time()
    value = call()
    return value, time.process_time() - start


def partwise(rule: Any, parts: list[PartInput], layout: PartLayout, n: int, dtype: torch.dtype, seed: int) -> tuple[
    torch.Tensor, list[float], float, int, int
]:
    """(aggregate, CPU seconds per owner, member CPU seconds, rounds, bytes one member receives)."""
    owners = [0.0] * layout.m
    session, member = cpu(lambda: Session(rule, layout, n, dtype=dtype, seed=seed))
    received = 0
    while session.request is not None:
        request = session.request
        partials = []
        for j, part in enumerate(parts):
            partial, seconds = cpu(lambda part=part, request=request: compute_partial(request, part))
            owners[j] += seconds
            partials.append(partial)
            received += partial.nbytes
        _, seconds = cpu(lambda partials=partials: session.receive(partials))
        member += seconds
    aggregated = []
    for j, part in enumerate(parts):
        value, seconds = cpu(lambda part=part: apply_decision(session.outcome.decision, part))
        owners[j] += seconds
        aggregated.append(value)
    result, seconds = cpu(lambda: session.assemble(aggregated))
    member += seconds
    return result.aggregate, owners, member, session.rounds, received


def measure(label: str, name: str, params: dict[str, Any], rows: torch.Tensor, m: int, repeat: int) -> Measure:
    n, d = rows.shape
    layout = PartLayout(d, m)
    if name == "gas":
        params = {**params, "within_parts": m}
    rule = build(name, **params)
    parts = [PartInput.cut(rows, layout, j) for j in range(m)]
    out = Measure()
    for _ in range(repeat):
        expected, seconds = cpu(lambda: rule(rows, seed=1))
        out.a2a.append(seconds)
        aggregate, owners, member, out.rounds, out.bytes_in = partwise(rule, parts, layout, n, rows.dtype, 1)
        out.parts.append(sum(owners) + member)
        out.owner.append(statistics.fmean(owners))
        out.member.append(member)
        a, b = expected.aggregate.double(), aggregate.double()
        out.deviation = max(out.deviation, float((a - b).abs().max() / a.abs().max().clamp_min(1e-300)))
    return out


def human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[16, 64], help="row counts (m = n parts)")
    parser.add_argument("--d", type=float, nargs="*", default=[1e5, 1e6], help="dimensions")
    parser.add_argument("--m", type=int, help="parts (default: n)")
    parser.add_argument("--only", help="comma-separated labels or rule names")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (medians)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    only = None if args.only is None else set(args.only.split(","))
    print(f"load average before: {os.getloadavg()[0]:.1f} (2-core machine; CPU seconds, medians of {args.repeat})")
    for n in args.n:
        for d in (int(value) for value in args.d):
            m = args.m or n
            layout = PartLayout(d, m)
            generator = torch.Generator().manual_seed(n * 1000 + d % 997)
            rows = (torch.randn(n, d, generator=generator) + torch.randn(d, generator=generator)).to(torch.float32)
            print(f"\nn={n} d={d:.0e} m={m} ({'block-aligned' if layout.aligned else 'not block-aligned'} parts "
                  f"of about {d // m} coordinates)")
            header = f"{'rule':28} {'a2a s':>8} {'parts s':>8} {'ratio':>6} {'owner s':>8} {'member s':>9} " \
                     f"{'rounds':>6} {'bytes in':>10} {'max dev':>9}"
            print(header)
            for label, name, params in rule_configurations(n):
                if only is not None and label not in only and name not in only:
                    continue
                result = measure(label, name, params, rows, m, args.repeat)
                a2a, parts = statistics.median(result.a2a), statistics.median(result.parts)
                print(
                    f"{label:28} {a2a:8.3f} {parts:8.3f} {parts / max(a2a, 1e-9):6.2f} "
                    f"{statistics.median(result.owner):8.4f} {statistics.median(result.member):9.4f} "
                    f"{result.rounds:6d} {human_bytes(result.bytes_in):>10} {result.deviation:9.1e}",
                    flush=True,
                )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
