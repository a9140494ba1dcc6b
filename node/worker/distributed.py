"""One member's training as a torch.distributed job (training.world_size > 1).

Process layout (docs/distributed.md):

* Rank 0 is the training worker the daemon starts and supervises (node/worker/process.py). It
  alone speaks the link, runs the federation's rounds, evaluates and writes checkpoints. It hosts
  the job's rendezvous, a torch `TCPStore` on training.rdzv_endpoint (127.0.0.1 on a free port by
  default), and starts the other ranks of its host with torch.distributed.elastic's
  `start_processes`, in torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT): `python -m fednode.node.worker.rank`. Other hosts join with
  `python -m fednode.node.worker.rank --node-rank K ...`, which starts theirs the same way.
* Every rank builds the same task, data and model from the member's config (rank 0 posts it on
  the store) and joins one process group (gloo on CPU, nccl on CUDA).
* A round: rank 0 posts "train N steps" on the store; every rank receives rank 0's model state and
  batch generator by broadcast (so all start from the model the federation gave rank 0, restored
  from its checkpoint after a restart), then each step every rank draws the same global batch and
  computes on its DistributedSampler positions of it through DDP, which averages the gradients:
  the member's update is the mean over the whole batch, as one process would compute it.
* A rank that dies breaks the job: rank 0 sees it (its local ranks' exit, or a failed collective)
  and exits; the daemon's worker restart policy starts rank 0 again, which starts new ranks and
  resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from fednode.node.config import RANK_HEARTBEAT_S, FednodeConfig, parse_endpoint
from fednode.node.errors import ConfigError, ExitCode
from fednode.node.trainer import LocalTrainer, TrainResult

log = logging.getLogger("fednode.worker.distributed")

# Joining the job builds every rank's task and model first: minutes for a large one.
JOIN_TIMEOUT_S = 300.0
# A collective waits this long for a slow rank; a rank that died is seen at once (its sockets close).
COLLECTIVE_TIMEOUT_S = 600.0
HEARTBEAT_S = RANK_HEARTBEAT_S
# A rank whose heartbeat is older than this is shown as "stale" (it may be stuck or unreachable).
STALE_AFTER_S = 15.0
COMMAND_POLL_S = 5.0
STOP_CHECK_STEPS = 8  # a job checks rank 0's stop flag every this many steps
EXIT_COMMAND = "exit"
# TCPStore key prefixes: the process group's keys, and ours (config, commands, heartbeats).
GROUP_PREFIX, FEDNODE_PREFIX = "pg", "fednode"


class RankFailed(RuntimeError):
    """A rank of the job died or its collectives failed: the job cannot go on."""


@dataclass(frozen=True)
class JobPlan:
    """Where the processes of one member's job are and how they meet."""

    world_size: int
    local_processes: int
    nnodes: int
    host: str
    port: int
    backend_setting: str
    parallel: str = "ddp"

    @classmethod
    def from_config(cls, config: FednodeConfig) -> JobPlan:
        training = config.training
        host, port = parse_endpoint(training.rdzv_endpoint) if training.rdzv_endpoint else ("127.0.0.1", 0)
        return cls(training.world_size, training.local_processes, training.nnodes, host, port, training.dist_backend,
                   training.parallel)

    def backend(self, device: torch.device) -> str:
        return backend_for(self.backend_setting, device)


def backend_for(setting: str, device: torch.device) -> str:
    """training.dist_backend for `device`: auto = nccl on CUDA, gloo on CPU; ConfigError when the
    choice cannot work here."""
    if setting == "auto":
        setting = "nccl" if device.type == "cuda" else "gloo"
    if setting == "nccl" and (device.type != "cuda" or not dist.is_nccl_available()):
        raise ConfigError('training.dist_backend = "nccl" needs CUDA devices and a torch built with NCCL; '
                          f'this process trains on {device}. Use "auto" or "gloo"')
    if not dist.is_available() or (setting == "gloo" and not dist.is_gloo_available()):
        raise ConfigError(f"this torch ({torch.__version__}) has no {setting} backend for torch.distributed")
    return setting


def rank_environment(plan: JobPlan, port: int, node_rank: int, local_rank: int) -> dict[str, str]:
    """torchrun's environment contract for one process of the job."""
    return {
        "RANK": str(node_rank * plan.local_processes + local_rank), "LOCAL_RANK": str(local_rank),
        "GROUP_RANK": str(node_rank), "WORLD_SIZE": str(plan.world_size),
        "LOCAL_WORLD_SIZE": str(plan.local_processes), "MASTER_ADDR": plan.host, "MASTER_PORT": str(port),
        "FEDNODE_PARENT_PID": str(os.getpid()),
    }


def start_local_ranks(plan: JobPlan, port: int, node_rank: int, first_local_rank: int) -> Any:
    """Start local ranks first_local_rank .. local_processes-1 of host `node_rank` (a PContext),
    or None when there are none. Their output goes where this process's goes."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, start_processes

    count = plan.local_processes - first_local_rank
    if count <= 0:
        return None
    return start_processes(
        name="fednode-rank", entrypoint=sys.executable,
        args={i: ("-m", "fednode.node.worker.rank") for i in range(count)},
        envs={i: rank_environment(plan, port, node_rank, first_local_rank + i) for i in range(count)},
        logs_specs=DefaultLogsSpecs(log_dir=os.devnull),
    )


def failed_processes(processes: Any, first_local_rank: int) -> list[str]:
    """The local ranks of a PContext that exited, as "rank R (pid P) exit code C"."""
    if processes is None:
        return []
    gone = []
    for index, handler in sorted(processes.subprocess_handlers.items()):
        code = handler.proc.poll()
        if code is not None:
            gone.append(f"local rank {first_local_rank + index} (pid {handler.proc.pid}) exited with code {code}")
    return gone


def stop_processes(processes: Any) -> None:
    if processes is not None:
        try:
            processes.close(death_sig=signal.SIGKILL, timeout=5)
        except Exception as exc:  # already gone
            log.debug("closing the local ranks: %s", exc)


class Heartbeat:
    """A rank's liveness on the store, read by rank 0 for status and to find hung ranks
    (training.rank_timeout): its own store connection, so it never waits behind the rank's
    commands. It proves the process runs and reaches rank 0, not that its training thread makes
    progress: a rank stuck inside a collective is found by the collective timeout."""

    def __init__(self, host: str, port: int, rank: int, local_rank: int) -> None:
        self.store = dist.PrefixStore(FEDNODE_PREFIX, dist.TCPStore(host, port, is_master=False,
                                                                   timeout=timedelta(seconds=JOIN_TIMEOUT_S)))
        self.record = {"rank": rank, "local_rank": local_rank, "host": socket.gethostname(), "pid": os.getpid(),
                       "rounds": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.set(f"health/{self.record['rank']}", json.dumps({**self.record, "unix": time.time()}))
            except Exception:
                return  # rank 0 is gone: the command loop notices and exits
            self._stop.wait(HEARTBEAT_S)

    def stop(self) -> None:
        self._stop.set()


def shard_module(module: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """Shard `module` in place with torch's FSDP2 (`fully_shard`) over all ranks: each direct
    child that has parameters is one unit (its parameters are gathered for its forward and
    backward only, then freed), the root holds the rest. Parameters become DTensors sharded on
    dim 0; gradients are reduce-scattered and averaged over the ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for child in module.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


class Replica:
    """One rank's part of every round; all ranks make the same calls in the same order.

    parallel = "ddp": every rank holds the whole model, DDP averages the gradients.
    parallel = "fsdp": every rank holds 1/W of the parameters, gradients and optimizer state
    (shard_module); rank 0's full model is scattered to the shards at the start of a round and
    the result gathered whole on rank 0 (in host memory) at its end, for the exchange."""

    def __init__(self, local: LocalTrainer, module: nn.Module, rank: int, world_size: int, device: torch.device,
                 backend: str, parallel: str = "ddp") -> None:
        self.local, self.module, self.rank, self.world_size = local, module, rank, world_size
        self.device = device
        self.parallel = parallel
        # Collectives of nccl run on the GPU: small CPU tensors (flags, generator state) go through it.
        self._wire = device if backend == "nccl" else torch.device("cpu")
        # This rank's positions of each step's global batch: DistributedSampler's split of it
        # (rank, rank + W, ...), without shuffling: the batch is already drawn at random.
        positions = list(DistributedSampler(range(local.batch_size), num_replicas=world_size, rank=rank,
                                            shuffle=False, drop_last=True))
        local.share = torch.tensor(positions, dtype=torch.long)
        self.forward: nn.Module
        if parallel == "fsdp":
            self.forward = shard_module(module, device, world_size)
        else:
            # Building DDP broadcasts rank 0's parameters and buffers; every round does it again.
            self.forward = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        self.rounds = 0

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == self._wire:
            dist.broadcast(tensor, 0)
            return tensor
        moved = tensor.to(self._wire)
        dist.broadcast(moved, 0)
        return moved.to(tensor.device)

    def _start_from(self, start: dict[str, torch.Tensor] | None) -> None:
        """Every rank's model := rank 0's `start` (its model's state dict; None on other ranks)."""
        if self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            # Rank 0 broadcasts each full tensor, every rank keeps its shard. The call replaces the
            # dict's values with DTensors: it gets a dict of its own.
            full = {name: tensor.detach().to(self.device) for name, tensor in (start or {}).items()}
            set_model_state_dict(self.module, full if self.rank == 0 else {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
            return
        with torch.no_grad():
            if start is not None:
                self.module.load_state_dict(start)
            for tensor in self.module.state_dict().values():
                tensor.copy_(self._broadcast(tensor))

    def _result(self) -> dict[str, torch.Tensor] | None:
        """The trained model's full state dict on rank 0 (None on the others); with fsdp a
        collective that gathers the shards, into host memory."""
        if self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            gathered = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))
            return gathered if self.rank == 0 else None
        return self.module.state_dict() if self.rank == 0 else None

    def run_round(self, steps: int, stop: threading.Event | None,
                  start: dict[str, torch.Tensor] | None = None) -> tuple[TrainResult, dict[str, torch.Tensor] | None]:
        """Rank 0's model (`start`, on rank 0) and batch generator to every rank, `steps`
        data-parallel steps (fewer when rank 0's `stop` is set); the job's mean loss, and on rank 0
        the trained model's full state dict."""
        self._start_from(start)
        self.local.set_generator_state(self._broadcast(self.local.generator_state()))
        flag = torch.ones(1, dtype=torch.int32, device=self._wire)
        step = 0

        def keep_going() -> bool:
            # Every rank must stop at the same step (or DDP's all-reduce waits forever): rank 0's
            # decision is broadcast, every STOP_CHECK_STEPS steps (a collective per step doubled
            # the cost of a small model's step on a busy CPU).
            nonlocal step
            step += 1
            if (step - 1) % STOP_CHECK_STEPS:
                return True
            flag.fill_(0 if stop is not None and stop.is_set() else 1)
            dist.broadcast(flag, 0)
            return bool(flag.item())

        result = self.local.train_round(self.module, steps, forward=self.forward, keep_going=keep_going)
        loss = torch.tensor([result.mean_loss * result.steps if result.steps else 0.0], dtype=torch.float64,
                            device=self._wire)
        dist.all_reduce(loss)
        self.rounds += 1
        steps_done = result.steps
        mean = float(loss.item()) / (self.world_size * steps_done) if steps_done else float("nan")
        trained = self._result()
        return TrainResult(steps=steps_done, num_samples=steps_done * self.local.batch_size, mean_loss=mean,
                           seconds=result.seconds), trained


class RankGroup:
    """Rank 0's handle on its job: the rendezvous store, the local ranks it started, their health.
    Created on the worker's main thread (the local ranks die with the thread that started them)."""

    def __init__(self, config: FednodeConfig) -> None:
        self.plan = JobPlan.from_config(config)
        self.started_unix = time.time()
        try:
            self.store = dist.TCPStore(self.plan.host, self.plan.port, is_master=True,
                                       timeout=timedelta(seconds=JOIN_TIMEOUT_S), wait_for_workers=False)
        except Exception as exc:
            raise ConfigError(f"cannot host the training job's rendezvous on {self.plan.host}:{self.plan.port} "
                              f"({exc}); choose another training.rdzv_endpoint") from exc
        self.port = int(self.store.port)
        self.commands = dist.PrefixStore(FEDNODE_PREFIX, self.store)
        self.commands.set("config", config.model_dump_json())
        self.processes = start_local_ranks(self.plan, self.port, node_rank=0, first_local_rank=1)
        self.replica: Replica | None = None
        self._round = 0
        self.rank_timeout = config.training.rank_timeout
        # rank -> (its last heartbeat as read, when rank 0 first read it): ages are measured on
        # rank 0's monotonic clock, so clocks of other hosts do not matter.
        self._beats: dict[int, tuple[bytes, float]] = {}
        self._beats_lock = threading.Lock()
        log.info("training job: %d processes (%d on this host, %d host(s)), %s, rendezvous %s:%d",
                 self.plan.world_size, self.plan.local_processes, self.plan.nnodes, self.plan.parallel, self.plan.host,
                 self.port, extra={"event": "job_started", "world_size": self.plan.world_size,
                                   "parallel": self.plan.parallel})

    def join(self, device: torch.device) -> RankGroup:
        """Join the process group as rank 0 (blocks until all ranks have joined)."""
        dist.init_process_group(self.plan.backend(device), store=dist.PrefixStore(GROUP_PREFIX, self.store), rank=0,
                                world_size=self.plan.world_size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        self.device = device
        return self

    def command(self, value: str) -> None:
        self._round += 1
        self.commands.set(f"cmd/{self._round}", value)

    def failures(self) -> list[str]:
        """Why the job cannot go on (local ranks that exited); [] while it can."""
        return failed_processes(self.processes, first_local_rank=1)

    def _heartbeat(self, rank: int) -> tuple[dict[str, Any], float] | None:
        """Rank `rank`'s last heartbeat and its age in seconds (since rank 0 first read it), or None
        before its first one."""
        key = f"health/{rank}"
        if not self.commands.check([key]):
            return None
        raw = self.commands.get(key)
        now = time.monotonic()
        with self._beats_lock:
            seen = self._beats.get(rank)
            if seen is None or seen[0] != raw:
                seen = self._beats[rank] = (raw, now)
        return json.loads(raw), now - seen[1]

    def hung_ranks(self) -> list[tuple[int, float, dict[str, Any]]]:
        """(rank, seconds silent, its last heartbeat) of every rank whose heartbeat is older than
        training.rank_timeout; [] when it is 0 (off). A rank that has not sent its first heartbeat
        yet is still joining: the join has its own timeout."""
        if not self.rank_timeout:
            return []
        hung = []
        for rank in range(1, self.plan.world_size):
            beat = self._heartbeat(rank)
            if beat is not None and beat[1] > self.rank_timeout:
                hung.append((rank, beat[1], beat[0]))
        return hung

    def health(self) -> list[dict[str, Any]]:
        """One record per rank: rank, local_rank, host, pid, state (running, exited, stale,
        starting), heartbeat age in seconds, rounds trained."""
        rounds = self.replica.rounds if self.replica is not None else 0
        ranks = [{"rank": 0, "local_rank": 0, "host": socket.gethostname(), "pid": os.getpid(), "state": "running",
                  "heartbeat_age": 0.0, "rounds": rounds}]
        local = {}
        if self.processes is not None:
            for index, handler in self.processes.subprocess_handlers.items():
                local[index + 1] = handler.proc
        for rank in range(1, self.plan.world_size):
            record: dict[str, Any] = {"rank": rank, "local_rank": rank % self.plan.local_processes, "host": "",
                                      "pid": 0, "state": "starting", "heartbeat_age": -1.0, "rounds": 0}
            try:
                seen = self._heartbeat(rank)
                if seen is not None:
                    beat, age = seen
                    record.update({k: beat[k] for k in ("host", "pid", "rounds") if k in beat})
                    record["heartbeat_age"] = age
                    record["state"] = "running" if age < STALE_AFTER_S else "stale"
            except Exception as exc:
                log.debug("health of rank %d: %s", rank, exc)
            proc = local.get(rank)
            if proc is not None:
                record["pid"] = record["pid"] or proc.pid
                if proc.poll() is not None:
                    record["state"] = f"exited ({proc.returncode})"
            ranks.append(record)
        return ranks

    def close(self) -> None:
        """Tell the other ranks to exit, then make sure the local ones did."""
        try:
            self.command(EXIT_COMMAND)
        except Exception as exc:
            log.debug("exit command: %s", exc)
        processes = self.processes
        if processes is not None:
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not all(
                    h.proc.poll() is not None for h in processes.subprocess_handlers.values()):
                time.sleep(0.05)
        stop_processes(processes)
        self.processes = None


class DistributedTrainer:
    """Rank 0's trainer for the runners: LocalTrainer's interface, each round trained by the
    whole job. The runner's model is copied into the job's DDP module before a round and the
    result copied back, so runners keep handing in any model (FedCompass trains a working copy)."""

    def __init__(self, local: LocalTrainer, group: RankGroup, model_factory: Callable[[], nn.Module],
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.local = local
        self.group = group
        self.module = model_factory().to(group.device)
        self.replica = group.replica = Replica(local, self.module, 0, group.plan.world_size, group.device,
                                               group.plan.backend(group.device), group.plan.parallel)
        self.on_failure = on_failure or fail_job(group)
        self._lock = threading.Lock()  # one round at a time: the ranks follow one command stream

    @property
    def num_train_samples(self) -> int:
        return self.local.num_train_samples

    @property
    def world_size(self) -> int:
        return self.group.plan.world_size

    def generator_state(self) -> torch.Tensor:
        return self.local.generator_state()

    def set_generator_state(self, state: torch.Tensor) -> None:
        self.local.set_generator_state(state)

    def evaluate(self, model: nn.Module) -> Any:
        return self.local.evaluate(model)  # rank 0 alone: the test set is small and local

    def train_round(self, model: nn.Module, steps: int, stop: threading.Event | None = None) -> TrainResult:
        with self._lock:
            try:
                self.group.command(str(steps))
                result, trained = self.replica.run_round(steps, stop, model.state_dict())
            except Exception as exc:  # a collective failed: some rank died or is unreachable
                failures = "; ".join(self.group.failures()) or str(exc).splitlines()[0]
                self.on_failure(f"a rank of the training job failed during a round: {failures}")
                raise RankFailed(failures) from exc
            if trained is not None:
                model.load_state_dict(trained)
            return result


_failing = threading.Lock()  # held by the first thread that ends the job


def fail_job(group: RankGroup, event: str = "rank_failed", **fields: Any) -> Callable[[str], None]:
    """The job cannot go on without a rank: stop the local ranks and exit rank 0 at once, so the
    daemon's restart policy starts the job again from the last checkpoint (a process group that
    lost a member cannot be repaired in place). `event` and `fields` go into the log record."""

    def fail(reason: str) -> None:
        if not _failing.acquire(blocking=False):
            # Another thread is already ending the job (the round that fails because the watcher
            # killed a hung rank): one reason in the log; this process exits in a moment.
            time.sleep(60)
            os._exit(int(ExitCode.INTERNAL))
        log.error("%s; the training worker exits and the daemon restarts it from the last checkpoint", reason,
                  extra={"event": event, "reason": reason, **fields})
        stop_processes(group.processes)
        logging.shutdown()
        os._exit(int(ExitCode.INTERNAL))

    return fail
