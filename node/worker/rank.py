"""The ranks of a member's training job other than rank 0 (node/worker/distributed.py).

`python -m fednode.node.worker.rank` runs one rank, in torchrun's environment (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT): rank 0 starts its host's ranks so. It takes the member's
config from rank 0's store, builds the same task and model, joins the process group and trains
each round rank 0 commands, until rank 0 says exit or goes away.

`python -m fednode.node.worker.rank --node-rank K --nnodes N --nproc-per-node P --rdzv-endpoint
HOST:PORT` is the launcher of another host (K >= 1) of a job of several hosts: it starts that
host's P ranks, waits for them, and starts them again (to join the next run of the job) whenever
they end, until it is stopped (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from datetime import timedelta

log = logging.getLogger("fednode.worker.rank")
JOIN_RETRY_S = 2.0  # a host launcher waits this long between attempts to reach rank 0's store
RUN_CHECK_S = 2.0  # a host launcher checks this often that the run its ranks joined is still on


class RunWatch:
    """Whether the run of the job that a host's ranks joined is still on: a client of rank 0's
    store, connected once rank 0 is up; a failed read after that means rank 0 ended the run
    (restarted or stopped). A rank that is alive sees that itself and exits, but one that is hung
    or stopped would keep the launcher waiting, and the next run would miss this host's ranks."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.store: object | None = None

    def ended(self) -> bool:
        import torch.distributed as dist

        from fednode.node.worker.distributed import FEDNODE_PREFIX

        if self.store is None:
            try:
                store = dist.TCPStore(self.host, self.port, is_master=False, timeout=timedelta(seconds=RUN_CHECK_S))
            except Exception:
                return False  # rank 0 is not up yet: the ranks are waiting to join
            store.set_timeout(timedelta(seconds=60))
            self.store = dist.PrefixStore(FEDNODE_PREFIX, store)
            return False
        try:
            self.store.check(["config"])  # type: ignore[attr-defined]
        except Exception:
            return True  # rank 0's store is gone: this run is over
        return False


def _die_with_parent() -> None:
    import signal

    from fednode.node.parent_death import die_with_parent

    die_with_parent(signal.SIGKILL)
    parent = os.environ.get("FEDNODE_PARENT_PID")
    if parent and parent.isdigit() and os.getppid() != int(parent):
        os._exit(1)  # the parent died before we could ask to die with it


def run_rank() -> int:
    """One rank (not 0) of a job, configured by torchrun's environment variables."""
    import torch.distributed as dist

    from fednode.node.config import FednodeConfig
    from fednode.node.logs import configure_logging
    from fednode.node.worker.distributed import (
        COLLECTIVE_TIMEOUT_S,
        COMMAND_POLL_S,
        EXIT_COMMAND,
        FEDNODE_PREFIX,
        GROUP_PREFIX,
        JOIN_TIMEOUT_S,
        Heartbeat,
        Replica,
        backend_for,
    )
    from fednode.node.worker.process import build_local_training, device_for_rank

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=JOIN_TIMEOUT_S))
    commands = dist.PrefixStore(FEDNODE_PREFIX, store)
    config = FednodeConfig.model_validate_json(commands.get("config"))
    configure_logging(config.node.log_format, config.node.log_level)
    device = device_for_rank(config, local_rank)
    task, _, local = build_local_training(config, device)
    module = task.model_factory().to(device)
    backend = backend_for(config.training.dist_backend, device)
    dist.init_process_group(backend, store=dist.PrefixStore(GROUP_PREFIX, store), rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    replica = Replica(local, module, rank, world_size, device, backend, config.training.parallel)
    heartbeat = Heartbeat(host, port, rank, local_rank)
    log.debug("rank %d of %d joined (%s on %s)", rank, world_size, backend, device)
    number = 0
    try:
        while True:
            number += 1
            key = f"cmd/{number}"
            while True:
                try:
                    commands.wait([key], timedelta(seconds=COMMAND_POLL_S))
                    break
                except Exception:
                    # A timeout (rank 0 idle between rounds) or rank 0 gone: check() tells them apart.
                    commands.check([key])
            value = commands.get(key).decode()
            if value == EXIT_COMMAND:
                return 0
            replica.run_round(int(value), None)
            heartbeat.record["rounds"] = replica.rounds
    finally:
        heartbeat.stop()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def run_host(args: argparse.Namespace) -> int:
    """Another host's launcher: start its ranks, wait, start them again when the job restarts."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from fednode.node.config import parse_endpoint
    from fednode.node.logs import configure_logging
    from fednode.node.worker.distributed import JobPlan, failed_processes, start_local_ranks, stop_processes

    configure_logging("human", "info")
    host, port = parse_endpoint(args.rdzv_endpoint)
    world_size = args.nnodes * args.nproc_per_node
    plan = JobPlan(world_size, args.nproc_per_node, args.nnodes, host, port, "auto")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    while not stopping:
        processes = None
        try:
            processes = start_local_ranks(plan, port, node_rank=args.node_rank, first_local_rank=0)
            # start_processes installs torch's own SIGTERM/SIGINT handlers (they raise); ours
            # replace them: stop after closing the ranks, below.
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            log.info("host %d: ranks %d..%d started, joining %s:%d", args.node_rank,
                     args.node_rank * args.nproc_per_node, (args.node_rank + 1) * args.nproc_per_node - 1, host, port)
            watch, checked = RunWatch(host, port), time.monotonic()
            ended = False
            while not stopping and processes.wait(0) is None:
                time.sleep(0.5)
                if time.monotonic() - checked >= RUN_CHECK_S:
                    checked = time.monotonic()
                    if watch.ended():
                        ended = True
                        break
            gone = failed_processes(processes, first_local_rank=0)
            if ended:
                stuck = [f"rank {args.node_rank * args.nproc_per_node + i} (pid {h.proc.pid})"
                         for i, h in sorted(processes.subprocess_handlers.items()) if h.proc.poll() is None]
                gone.append("rank 0 ended the run" + (f"; stopping {', '.join(stuck)}" if stuck else ""))
        except SignalException:
            stopping, gone = True, []
        finally:
            stop_processes(processes)
        if not stopping:
            log.info("host %d: the job ended (%s); joining its next run", args.node_rank, "; ".join(gone) or "done")
            time.sleep(JOIN_RETRY_S)
    log.info("host %d: stopped", args.node_rank)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fednode.node.worker.rank",
                                     description="a rank of a fednode member's training job (training.world_size > 1)")
    parser.add_argument("--node-rank", type=int, default=None, help="this host's index (1..nnodes-1): launch its ranks")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--rdzv-endpoint", default="", help="HOST:PORT of the member's rank 0 (training.rdzv_endpoint)")
    args = parser.parse_args(argv)
    if args.node_rank is None:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when the job stops
        try:
            code = run_rank()
        except Exception as exc:
            log.error("rank %s failed: %s", os.environ.get("RANK", "?"), exc)
            code = 1
        logging.shutdown()
        os._exit(code)
    if not 1 <= args.node_rank < args.nnodes or not args.rdzv_endpoint or args.nproc_per_node < 1:
        parser.error("a host launcher needs 1 <= --node-rank < --nnodes, --nproc-per-node >= 1 and --rdzv-endpoint")
    code = run_host(args)
    logging.shutdown()
    os._exit(code)  # torch's threads must not keep the launcher alive


if __name__ == "__main__":
    sys.exit(main())
