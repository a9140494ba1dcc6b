"""Bytes per member per round and round times of the all-to-all and butterfly exchanges, simulated at scale.

    python bench/simulate.py                                  # n = 4, 16, 64, all-to-all
    python bench/simulate.py --exchange all_to_all,butterfly  # both, side by side in one run
    python bench/simulate.py --exchange all_to_all,butterfly --rule multi_krum --f 1 --byzantine 0.25
    python bench/simulate.py --sizes 4,16,64,256 --rounds 4   # 256 takes minutes on 2 cores
    python bench/simulate.py --latency 0.02 --bandwidth 12.5e6 --json

Every member is a real `FederationRunner` (digits task, trainer, aggregator, compressor, as the
training worker builds them) over one `InMemoryNetwork` in this process
(fednode.node.federation.simulation, docs/simulation.md). With the all-to-all exchange every
member fetches every other member's payload, so a member receives about (n - 1) payloads per
round; with the butterfly exchange (docs/butterfly.md) it receives its r = f + 1 owned parts of
every update, the partials and the m aggregated parts: about (r + 1) payloads whatever n is.
With --byzantine, that share of the members (the last ones) are lying owners under the butterfly
exchange (every claim false: honest members recompute their parts and exclude them) and run
--attack, if given, under both exchanges.

Columns (per member and round, between the close of round 1 and of the last round, mean over
members; max in brackets):
  payload   the size of one encoded update (what one member announces per round)
  blob in   payload bytes fetched (blob transfers)                 / payload = the x column
  all in    every byte received: blobs, gossip copies, pushes (control messages)
  all out   every byte sent
  round s   median of the members' round durations (RoundOutcome.round_seconds)
  wall s    wall-clock seconds per round for the whole federation
  cpu s     CPU seconds this process spent per round (all members, all threads): what a
            larger n will cost on a quiet machine

What the figures are not: the real path also moves every payload across the daemon/worker link
(several crossings per payload) and libp2p/Noise/Yamux framing, which the in-memory mesh does
not have; round times here are those of ONE process doing the CPU work of all n members
(signatures, decoding, training, aggregation), so they grow with n for that reason alone. Bytes
are the comparable figure; times compare exchanges side by side within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import resource
import statistics
import sys
import time
from typing import Any

import torch

from fednode.node.config import FednodeConfig
from fednode.node.federation.butterfly import OwnerBehaviour
from fednode.node.federation.simulation import SimulatedFederation
from fednode.node.mesh import InMemoryNetwork, LinkConditions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,16,64", help="federation sizes, comma-separated (default 4,16,64)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per federation (>= 2; default 4)")
    parser.add_argument("--hidden", default="160", help="digits MLP hidden widths, comma-separated (default 160: "
                        "12k parameters, so fp32 payloads of 48 KB are fetched, not inlined)")
    parser.add_argument("--codec", default="none", help="update codec (default none = fp32)")
    parser.add_argument("--rule", default="mean", help="aggregation rule (default mean)")
    parser.add_argument("--f", type=int, default=0, help="Byzantine members the rule tolerates")
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.0, help="one-way latency per link, seconds")
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s per link (default unlimited)")
    parser.add_argument("--loss", type=float, default=0.0, help="loss probability per gossip hop / push / transfer")
    parser.add_argument("--announce-interval", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per federation size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object per size instead of a table")
    parser.add_argument("--exchange", default="all_to_all",
                        help="exchanges to measure side by side, comma-separated: all_to_all, butterfly")
    parser.add_argument("--byzantine", type=float, default=0.0, help="share of Byzantine members (e.g. 0.25)")
    parser.add_argument("--attack", default="", help="update attack of the Byzantine members (e.g. sign_flip)")
    parser.add_argument("--verify-per-member", action="store_true",
                        help="every member verifies every signature itself (default: once per process, see below)")
    args = parser.parse_args(argv)
    args.exchanges = [e for e in args.exchange.split(",") if e]
    if not set(args.exchanges) <= {"all_to_all", "butterfly"}:
        parser.error("--exchange takes all_to_all and/or butterfly")
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (bytes are measured from the close of round 1)")
    return args


def config_for(args: argparse.Namespace, members: int, exchange: str = "all_to_all") -> FednodeConfig:
    from fednode.aggregators import build

    needed = build(args.rule, f=args.f).minimum_rows()
    hidden = [int(h) for h in args.hidden.split(",") if h]
    # As `fednode launch` derives it: a majority, and at least what the rule needs.
    min_participants = max(needed, members // 2 + 1 if members > 2 else members)
    params = {"within_parts": members} if args.rule == "gas" else {}
    tree: dict[str, Any] = {
        "task": {"params": {"hidden": hidden}},
        "training": {"local_steps": args.local_steps},
        "aggregation": {"rule": args.rule, "f": args.f, "params": params},
        "compression": {"codec": args.codec},
        "federation": {"id": "bench-simulate", "announce_interval": args.announce_interval,
                       "min_participants": min_participants, "exchange": exchange,
                       # One part per member: each owns about r parts (traffic ~ r x the model).
                       "butterfly_parts": members},
    }
    if args.attack:
        tree["attack"] = {"name": args.attack}
    return FednodeConfig.model_validate(tree)


async def measure(args: argparse.Namespace, members: int, exchange: str = "all_to_all") -> dict[str, Any]:
    network = InMemoryNetwork(seed=args.seed, conditions=LinkConditions(args.latency, args.bandwidth, args.loss))
    byzantine = int(args.byzantine * members)
    behaviour = OwnerBehaviour(lie=True) if byzantine and exchange == "butterfly" else None
    if byzantine and behaviour is None and not args.attack:
        byzantine = 0  # all-to-all has no owners to lie: without --attack the run is clean
    federation = SimulatedFederation(config_for(args, members, exchange), members, network=network, seed=args.seed,
                                     byzantine=byzantine, owner_behaviour=behaviour)
    last = args.rounds
    try:
        await federation.start()
        started, cpu_started = time.perf_counter(), time.process_time()
        await federation.run(last, timeout=args.timeout)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        payload = statistics.median(size for m in federation.members if (size := m.payload_bytes()))
        blob_in, all_in, all_out = [], [], []
        for member in federation.members:
            first_mark, last_mark = member.traffic_at_round.get(1), member.traffic_at_round.get(last)
            if first_mark is None or last_mark is None:
                continue  # it synced past round 1 or the last round instead of closing it
            span = last - 1
            blob_in.append((last_mark.received["blob"] - first_mark.received["blob"]) / span)
            all_in.append((last_mark.bytes_received - first_mark.bytes_received) / span)
            all_out.append((last_mark.bytes_sent - first_mark.bytes_sent) / span)
        round_seconds = [o.round_seconds for m in federation.members for o in m.outcomes if o.round > 1]
        accuracy = statistics.mean(federation.accuracies(federation.honest()))
        liars = {m.peer_id for m in federation.members if m.byzantine}
        excluded = [m.runner.butterfly.excluded >= liars if m.runner.butterfly is not None else False
                    for m in federation.honest()]
        fallbacks = sum(m.runner.butterfly.fallbacks for m in federation.members if m.runner.butterfly is not None)
    finally:
        await federation.close()
    return {
        "exchange": exchange, "byzantine": byzantine, "liars_excluded_everywhere": all(excluded) if liars else None,
        "butterfly_fallbacks": fallbacks,
        "members": members, "rounds": last, "payload_bytes": int(payload),
        "measured_members": len(blob_in),
        "blob_in_per_round": statistics.mean(blob_in), "blob_in_max": max(blob_in),
        "all_in_per_round": statistics.mean(all_in), "all_in_max": max(all_in),
        "all_out_per_round": statistics.mean(all_out), "all_out_max": max(all_out),
        "blob_in_over_payload": statistics.mean(blob_in) / payload,
        "round_seconds_median": statistics.median(round_seconds) if round_seconds else float("nan"),
        "wall_seconds_per_round": wall / last, "cpu_seconds_per_round": cpu / last, "accuracy_mean": accuracy,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def share_signature_checks() -> None:
    """Verify each distinct (key, signature, message) once per process.

    Every member of a real federation verifies each control message once, in its own process;
    here n members share one process, so the same Ed25519 verification would run n - 1 times
    more (it was 18 % of the CPU at n = 24, most of it at n = 64). Verification is a pure
    function, so memoising it changes no verdict, only the CPU one process spends for all."""
    from fednode.node import envelope

    envelope.verify_signature = functools.lru_cache(maxsize=1 << 16)(envelope.verify_signature)  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verify_per_member:
        share_signature_checks()
    logging.basicConfig(level=logging.ERROR)  # the runners log every sync and left-out member
    torch.set_num_threads(1)  # as the worker (training.torch_threads = 1)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    load = os.getloadavg()
    if not args.json:
        print(f"in-memory mesh, exchanges {', '.join(args.exchanges)}, Byzantine share {args.byzantine} "
              f"(attack {args.attack or 'none'}; lying owners under butterfly): digits MLP 64-{args.hidden.replace(',', '-')}-10, codec "
              f"{args.codec}, rule {args.rule}, {args.rounds} rounds, latency {args.latency} s, bandwidth "
              f"{args.bandwidth or 'unlimited'}, loss {args.loss}, signatures verified "
              f"{'by every member' if args.verify_per_member else 'once per process'}; load average {load[0]:.1f} at start "
              f"({os.cpu_count()} cores)")
        print(f"{'exchange':>10} {'n':>4} {'byz':>3} {'payload KB':>10} {'blob in KB':>18} {'x':>6} {'all in KB':>18} {'all out KB':>18} "
              f"{'round s':>8} {'wall s':>7} {'cpu s':>7} {'acc':>5} {'rss MB':>7} {'excluded':>8} {'fallbacks':>9}")
    for members in sizes:
        for exchange in args.exchanges:
            print_row(args, asyncio.run(measure(args, members, exchange)))
    if not args.json:
        load = os.getloadavg()
        print(f"load average {load[0]:.1f} at the end. Bytes: payload bytes only (no daemon/worker link, "
              "no libp2p framing); times: one process doing every member's CPU work.")
    return 0


def print_row(args: argparse.Namespace, row: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(row), flush=True)
        return
    members = row["members"]
    excluded = {None: "-", True: "all", False: "NOT ALL"}[row["liars_excluded_everywhere"]]
    print(f"{row['exchange']:>10} {members:>4} {row['byzantine']:>3} {row['payload_bytes'] / 1e3:>10.1f} "
          f"{row['blob_in_per_round'] / 1e3:>9.1f} [{row['blob_in_max'] / 1e3:>6.0f}] "
          f"{row['blob_in_over_payload']:>6.1f} "
          f"{row['all_in_per_round'] / 1e3:>9.1f} [{row['all_in_max'] / 1e3:>6.0f}] "
          f"{row['all_out_per_round'] / 1e3:>9.1f} [{row['all_out_max'] / 1e3:>6.0f}] "
          f"{row['round_seconds_median']:>8.2f} {row['wall_seconds_per_round']:>7.2f} "
          f"{row['cpu_seconds_per_round']:>7.2f} "
          f"{row['accuracy_mean']:>5.2f} {row['peak_rss_mb']:>7.0f} {excluded:>8} "
          f"{row['butterfly_fallbacks'] if row['exchange'] == 'butterfly' else '-':>9}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
