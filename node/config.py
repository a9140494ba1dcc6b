"""Daemon configuration: TOML file, FEDNODE_* environment variables and CLI flags.

Precedence, highest first: CLI flags > environment > config file > built-in defaults.

* File: TOML with one table per section (`[node]`, `[task]`, `[training]`, ...). Unknown sections
  or keys are errors, so a typo never silently falls back to a default.
* Environment: `FEDNODE_<SECTION>_<KEY>`, e.g. `FEDNODE_TRAINING_LR=0.1`. Values are read as TOML
  values when they parse (numbers, booleans, `["a", "b"]`, `{alpha = 0.5}`), else as strings.
  `FEDNODE_CONFIG` names the config file.
* CLI: dedicated flags of `fednode start` plus `--set section.key=value` (same value syntax).

Every effective value remembers where it came from (`ConfigSources`), so `fednode config show`
can explain it and validation errors can name the origin of a bad value.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fednode.node.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "FEDNODE_"
ENV_CONFIG_FILE = "FEDNODE_CONFIG"
# FEDNODE_* variables that are not settings: the config file, and the CLI's admin token.
ENV_NOT_SETTINGS = (ENV_CONFIG_FILE, "FEDNODE_ADMIN_TOKEN")
DEFAULT_TASK = "fednode.node.tasks.digits:build_task"
#: The mesh's default TCP port (libp2p: DHT, gossip, relay): fixed, so a restarted daemon is found
#: where it was. Two daemons on one machine need another port for one of them (mesh.listen).
DEFAULT_MESH_PORT = 7461
# The registries (fednode.aggregators, fednode.node.compression) import torch, which the daemon
# never loads; config validation checks names against these copies, and a test keeps them equal
# to the registries.
KNOWN_RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
               "centered_clipping", "nnm", "flag", "gas")
KNOWN_CODECS = ("none", "fp16", "bf16", "int8", "int4", "topk", "topk_int8", "randk", "powersgd")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NodeSection(_Section):
    """Process-level settings."""

    state_dir: Path | None = Field(
        default=None, description="where identity, checkpoints and logs live; default $XDG_DATA_HOME/fednode"
    )
    log_format: Literal["human", "json"] = Field(default="human", description="human-readable or JSON lines")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    device: str = Field(default="auto", description='"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"')
    shutdown_timeout: float = Field(
        default=20.0, gt=0, le=600, description="seconds a graceful stop may take before it is forced"
    )
    display_name: str = Field(default="", max_length=64, description="label other members see for this node")
    role: Literal["member", "bootstrap"] = Field(
        default="member",
        description='"member": trains in federations; "bootstrap": mesh only (DHT, relay) for others to dial, no training',
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError('must be "auto", "cpu", "cuda" or "cuda:N"')


class TaskSection(_Section):
    """What to train: a task plug-in named `module:function` plus its parameters."""

    name: str = Field(default=DEFAULT_TASK, description="task factory as module:function")
    shard: str = Field(default="0/1", description="this node's data shard as i/N (0 <= i < N)")
    seed: int = Field(default=0, ge=0, description="seeds the data split; identical on every peer")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the task factory")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        module, sep, function = value.partition(":")
        if not sep or not module or not function:
            raise ValueError('must look like "package.module:function"')
        return value

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str) -> str:
        parse_shard(value)
        return value

    @property
    def shard_index(self) -> int:
        return parse_shard(self.shard)[0]

    @property
    def shard_count(self) -> int:
        return parse_shard(self.shard)[1]


    path: list[str] = Field(
        default_factory=list,
        description="directories put first on the training worker's import path, so task.name can name a "
                    "module kept outside any installed package (fednode task new writes this)",
    )


# Every rank of a job of several processes writes a heartbeat this often; a rank_timeout below a
# few of them would end healthy jobs whose heartbeat was delayed by a busy CPU.
RANK_HEARTBEAT_S = 2.0
MIN_RANK_TIMEOUT_S = 5 * RANK_HEARTBEAT_S


class TrainingSection(_Section):
    """Local training."""

    local_steps: int = Field(default=20, ge=1, le=1_000_000, description="optimizer steps per round")
    batch_size: int = Field(default=32, ge=1, le=65536)
    lr: float = Field(default=0.05, gt=0, le=100)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: Literal["sgd", "adamw", "task"] = Field(
        default="sgd", description="local optimizer: sgd (with momentum), adamw (lr, weight_decay), or task: the one "
                                   "the task declares (sgd when it declares none)",
    )
    preset: Literal["", "diloco"] = Field(
        default="", description='diloco: 500 local steps, the task\'s optimizer, outer nesterov (lr 0.7, momentum 0.9): '
                                'for large models, 25x fewer exchanges than the default at 25x the compute per round; '
                                'keys you set yourself win (docs/federation.md)',
    )
    solo: bool = Field(
        default=False,
        description="train alone while in no federation (default: a node without a federation idles until it creates or joins one)",
    )
    rounds: int = Field(
        default=0, ge=0,
        description="solo training and open federations (fednode launch): stop after this many rounds; 0 = run until "
                    "stopped. A federation's budget is set by `fednode federation create --rounds`",
    )
    target_accuracy: float = Field(
        default=0.0, ge=0, le=1,
        description="solo training and open federations: stop once test accuracy reaches this; 0 = never",
    )
    torch_threads: int = Field(default=1, ge=0, le=256, description="torch CPU threads; 0 = torch default")
    slowdown: float = Field(
        default=1.0, ge=1.0, le=1000.0, description="emulate a slower machine: each step takes this factor longer"
    )
    emulated_step_ms: float = Field(
        default=0.0, ge=0.0, le=60_000.0,
        description="emulate a device whose local step takes this long (x slowdown): steps are padded with sleep; "
                    "0 = off (slowdown then multiplies this machine's step). For local federations sharing few cores",
    )
    world_size: int = Field(
        default=1, ge=1, le=4096,
        description="processes that train this member's model together (torch.distributed DDP); 1 = one process. "
                    "Each step's batch_size is split between them (docs/distributed.md)",
    )
    nproc_per_node: int = Field(
        default=0, ge=0, le=1024,
        description="training processes on this host (one per GPU on CUDA); 0 = world_size / nnodes",
    )
    nnodes: int = Field(default=1, ge=1, le=1024, description="hosts of this member's training job")
    rdzv_endpoint: str = Field(
        default="",
        description='"host:port" where this daemon\'s rank 0 hosts the job\'s rendezvous; the other hosts join it '
                    "(needed when nnodes > 1); empty = 127.0.0.1 on a free port",
    )
    dist_backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="torch.distributed backend: auto = nccl on CUDA, gloo on CPU",
    )
    rank_timeout: float = Field(
        default=60.0, ge=0.0, le=86_400.0,
        description="a rank of the job whose heartbeat is older than this many seconds is taken as hung: rank 0 "
                    "ends the job and the daemon restarts it from the last checkpoint; 0 = off (a hung rank is "
                    "then found only by the 600 s collective timeout)",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="how the processes of the job share the model: ddp = a full copy on each (gradients averaged); "
                    "fsdp = parameters, gradients and optimizer state sharded (torch FSDP2, for a model whose "
                    "training does not fit one device); the update is gathered whole on rank 0 for the exchange",
    )

    @model_validator(mode="after")
    def _check_distributed(self) -> TrainingSection:
        problem = distributed_problem(self.world_size, self.nproc_per_node, self.nnodes, self.rdzv_endpoint,
                                      self.batch_size)
        if problem:
            raise ValueError(problem)
        if 0 < self.rank_timeout < MIN_RANK_TIMEOUT_S:
            raise ValueError(f"training.rank_timeout ({self.rank_timeout:g}) must be 0 (off) or at least "
                             f"{MIN_RANK_TIMEOUT_S:g} s: each rank sends a heartbeat every {RANK_HEARTBEAT_S:g} s")
        return self

    @property
    def local_processes(self) -> int:
        """Training processes on this host (nproc_per_node, or world_size / nnodes)."""
        return self.nproc_per_node or self.world_size // self.nnodes


def parse_endpoint(value: str) -> tuple[str, int]:
    """"host:port" (IPv6 as "[::1]:port") -> (host, port); ValueError saying what is wrong."""
    host, sep, port_text = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f'training.rdzv_endpoint must be "host:port" (e.g. "10.0.0.5:29400"), got {value!r}')
    return host, int(port_text)


def distributed_problem(world_size: int, nproc_per_node: int, nnodes: int, rdzv_endpoint: str,
                        batch_size: int) -> str | None:
    """Why these training.* values cannot make one torch.distributed job; None when they can."""
    if nproc_per_node and nproc_per_node * nnodes != world_size:
        return (f"training.world_size ({world_size}) must equal training.nproc_per_node ({nproc_per_node}) x "
                f"training.nnodes ({nnodes}); set world_size = {nproc_per_node * nnodes} or change the others")
    if not nproc_per_node and world_size % nnodes:
        return (f"training.world_size ({world_size}) is not a multiple of training.nnodes ({nnodes}); "
                f"set training.nproc_per_node")
    if batch_size % world_size:
        return (f"training.batch_size ({batch_size}) must be a multiple of training.world_size ({world_size}): "
                f"each process computes batch_size / world_size examples of every step")
    if rdzv_endpoint:
        try:
            _, port = parse_endpoint(rdzv_endpoint)
        except ValueError as exc:
            return str(exc)
        if nnodes > 1 and port == 0:
            return "training.rdzv_endpoint needs a fixed port when training.nnodes > 1: the other hosts dial it"
    elif nnodes > 1:
        return ('training.nnodes > 1 needs training.rdzv_endpoint = "host:port" (this host\'s address as the other '
                "hosts reach it, and a free port) where the other hosts join the job")
    return None


class MeshSection(_Section):
    """Networking (py-libp2p): addresses, bootstrap peers, relay role."""

    listen: list[str] = Field(
        default_factory=lambda: [f"/ip4/0.0.0.0/tcp/{DEFAULT_MESH_PORT}"],
        description=f"TCP multiaddrs to listen on; the default port {DEFAULT_MESH_PORT} stays the same across restarts, "
                    "so members find each other again (tcp/0 = any free port)",
    )
    announce: list[str] = Field(default_factory=list, description="addresses to advertise instead (public IP, port mapping)")
    bootstrap: list[str] = Field(default_factory=list, description="peers to dial first: /ip4/.../tcp/.../p2p/<id>")
    relay_hop: bool = Field(default=False, description="serve as a circuit relay v2 for other peers")
    fast_path: bool = Field(default=True, description="encrypted direct TCP data channel for payloads (faster than libp2p streams)")
    fast_path_port: int = Field(default=0, ge=0, le=65535, description="port of the fast path; 0 = any free port")
    # Limits of the relay (relay_hop = true), so it cannot become an unmetered proxy.
    relay_max_reservations: int = Field(default=32, ge=1, le=100_000, description="relay: peers that may hold a slot at once")
    relay_max_circuits: int = Field(default=16, ge=1, le=100_000, description="relay: relayed connections carried at once")
    relay_max_circuit_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024 * 1024, description="relay: bytes one circuit may carry (both directions) before it is closed"
    )
    relay_max_circuit_duration: int = Field(
        default=3600, ge=10, le=7 * 86400, description="relay: seconds one circuit may stay open"
    )

    @field_validator("listen", "announce", "bootstrap")
    @classmethod
    def _check_multiaddrs(cls, value: list[str]) -> list[str]:
        for address in value:
            if not address.startswith("/"):
                raise ValueError(f"{address!r} is not a multiaddr (expected e.g. /ip4/1.2.3.4/tcp/4001/p2p/12D3KooW...)")
        return value


class FederationSection(_Section):
    """Which federation to train with and how rounds are run."""

    id: str = Field(default="", description="federation to join; empty = train alone, without the mesh")
    min_participants: int = Field(
        default=2, ge=1, le=10_000, description="updates (own included) a round needs before it may aggregate"
    )
    schedule: Literal["sync", "fedcompass"] = Field(
        default="sync", description="sync: k-of-n rounds; fedcompass: semi-asynchronous arrival groups (docs/fedcompass.md)"
    )
    announce_interval: float = Field(default=2.0, gt=0, le=300, description="seconds between liveness announcements")
    linger: float = Field(
        default=60.0, ge=0, le=3600,
        description="after its last round (round budget or target accuracy), a member keeps serving its model this "
                    "long at most, while members it still hears from catch up",
    )
    alone_timeout: float = Field(
        default=120.0, ge=0, le=86_400,
        description="a member that trained with others and hears none of them for this long stops (exit 7); 0 = wait forever",
    )
    push: bool = Field(
        default=True,
        description="also push control messages to directly connected members over the fast path (gossip alone: false)",
    )
    max_clock_skew: float = Field(default=300.0, gt=0, description="accepted difference between a message's clock and ours (s)")
    # How a sync round's updates travel (docs/butterfly.md).
    exchange: Literal["all_to_all", "butterfly"] = Field(
        default="all_to_all",
        description="all_to_all: every member fetches every update; butterfly: updates cut into parts, each part "
                    "aggregated by its r owners, traffic per member independent of the federation's size (sync only)",
    )
    butterfly_parts: int = Field(
        default=0, ge=0, le=65_536,
        description="butterfly: parts every update is cut into, the same on every member; 0 = min_participants",
    )
    butterfly_replicas: int = Field(
        default=0, ge=0, le=1_000, description="butterfly: owners per part; 0 = aggregation.f + 1",
    )
    butterfly_grace: float = Field(
        default=1.0, ge=0.0, le=600.0,
        description="butterfly: seconds an owner's claim is waited for after the first claim of its part",
    )
    butterfly_timeout: float = Field(
        default=60.0, gt=0.0, le=3_600.0,
        description="butterfly: seconds any one wait of the exchange may take before the round is aggregated all-to-all",
    )
    butterfly_roster_wait: float = Field(
        default=20.0, gt=0.0, le=3_600.0,
        description="butterfly: seconds a round leader's roster proposal is waited for before the next leader's is taken",
    )
    # FedCompass (schedule = "fedcompass"); see docs/fedcompass.md and fednode.node.scheduler.fedcompass.
    q_min: int = Field(default=20, ge=1, le=1_000_000, description="fedcompass: fewest local steps a peer is given")
    q_max: int = Field(default=100, ge=1, le=1_000_000, description="fedcompass: most local steps a peer is given")
    q_upper: int = Field(
        default=0, ge=0, le=1_000_000,
        description="fedcompass: most steps a peer accepts to join an existing group; 0 = q_max (the paper used 1.2 q_max)",
    )
    latest_time_factor: float = Field(
        default=1.5, ge=1.0, le=100.0, description="fedcompass: lambda; a group's deadline is lambda x its expected duration"
    )
    staleness: Literal["polynomial", "hinge", "constant"] = Field(
        default="polynomial", description="fedcompass: staleness weight s(tau): (tau+1)^-a, hinge, or 1"
    )
    staleness_exponent: float = Field(default=0.5, ge=0.0, le=100.0, description="fedcompass: a in s(tau)")
    staleness_hinge: float = Field(default=4.0, ge=0.0, le=1_000_000, description="fedcompass: b of the hinge function")
    max_staleness: int = Field(default=64, ge=0, le=1_000_000, description="fedcompass: staler updates are not aggregated")
    alpha: float = Field(default=0.9, gt=0.0, le=1.0, description="fedcompass: step size of alpha * (|U|/N) * AGR(...)")
    speed_momentum: float = Field(default=0.9, gt=0.0, le=1.0, description="fedcompass: weight of the newest speed sample")
    delivery_grace: float = Field(
        default=0.3, ge=0.0, le=60.0,
        description="fedcompass: least seconds added to deadlines for network delivery (raised to the measured delivery time)",
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if (value and not all(c.isalnum() or c in "-_." for c in value)) or len(value) > 128:
            raise ValueError("may contain only letters, digits, '-', '_' and '.', at most 128 characters")
        return value

    @field_validator("q_max")
    @classmethod
    def _check_q_max(cls, value: int, info: ValidationInfo) -> int:
        q_min = info.data.get("q_min")
        if q_min is not None and value < q_min:
            raise ValueError(f"must be >= federation.q_min ({q_min}): FedCompass gives each peer between q_min and q_max steps")
        return value

    @field_validator("q_upper")
    @classmethod
    def _check_q_upper(cls, value: int, info: ValidationInfo) -> int:
        q_max = info.data.get("q_max")
        if value and q_max is not None and value < q_max:
            raise ValueError(f"must be 0 (= q_max) or >= federation.q_max ({q_max})")
        return value


class AggregationSection(_Section):
    """How received updates are combined (fednode.aggregators) and how the model moves by the
    result (the outer optimizer, fednode.node.federation.outer; docs/federation.md)."""

    rule: str = Field(default="mean", description="rule name; list them with the aggregators docs")
    f: int = Field(default=0, ge=0, description="Byzantine peers the rule must tolerate")
    params: dict[str, Any] = Field(default_factory=dict, description="rule parameters")
    outer: str = Field(
        default="sgd",
        description="outer optimizer on the negated aggregate: sgd (lr 1 = FedAvg), momentum, nesterov, adam, yogi, "
                    "adagrad; every member must use the same (a certified federation's descriptor fixes it)",
    )
    outer_lr: float = Field(
        default=0.0, ge=0.0, description="outer learning rate; 0 = the optimizer's default (sgd/momentum 1, nesterov "
                                         "0.7, adam/yogi 0.01, adagrad 0.05)",
    )
    outer_momentum: float = Field(default=0.9, description="momentum, nesterov: momentum factor in [0, 1)")
    outer_betas: list[float] = Field(default_factory=lambda: [0.9, 0.99], description="adam, yogi: [beta1, beta2]")
    outer_epsilon: float = Field(default=1e-3, description="adam, yogi, adagrad: added to the root of the second moment")

    @model_validator(mode="after")
    def _check_outer(self) -> AggregationSection:
        self.outer_config()  # ValueError names the bad key
        return self

    def outer_config(self) -> Any:
        """The resolved `OuterConfig` (torch-free)."""
        from fednode.node.federation.outer_config import OuterConfig

        return OuterConfig.build(self.outer, lr=self.outer_lr, momentum=self.outer_momentum,
                                 betas=self.outer_betas, epsilon=self.outer_epsilon)

    @field_validator("rule")
    @classmethod
    def _check_rule(cls, value: str) -> str:
        if value not in KNOWN_RULES:
            raise ValueError(f"unknown aggregation rule; known rules: {', '.join(KNOWN_RULES)}")
        return value


class CompressionSection(_Section):
    """How this node encodes its updates (fednode.node.compression)."""

    codec: str = Field(default="int8", description="none, fp16, bf16, int8, int4, topk, topk_int8, randk, powersgd")
    params: dict[str, Any] = Field(default_factory=dict, description="codec parameters, e.g. {fraction = 0.01}")
    error_feedback: bool = Field(default=True, description="carry what lossy codecs dropped into the next update")

    @field_validator("codec")
    @classmethod
    def _check_codec(cls, value: str) -> str:
        if value not in KNOWN_CODECS:
            raise ValueError(f"unknown codec; known codecs: {', '.join(KNOWN_CODECS)}")
        return value


class AttackSection(_Section):
    """Byzantine behaviour for simulations and tests only: makes this node an attacker."""

    name: str = Field(default="", description="attack name (fednode.aggregators.attacks); empty = honest")
    params: dict[str, Any] = Field(default_factory=dict, description="attack parameters")
    timing: Literal["current", "previous"] = Field(
        default="current",
        description="current: forge from this round's honest updates, in time for the round; previous: from the last round's",
    )
    colluders: list[str] = Field(
        default_factory=list, description="display names or peer ids of the other attackers (not honest, not waited for)"
    )


class AdminSection(_Section):
    """The local admin API (gRPC). A Unix socket in the state dir is always served."""

    listen: str = Field(default="", description="optional TCP listener host:port (needs TLS and a token)")
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain for the TCP listener")
    tls_key: Path | None = Field(default=None, description="PEM private key for the TCP listener")
    token_file: Path | None = Field(default=None, description="file holding the bearer token TCP clients must send")
    insecure: bool = Field(default=False, description="allow the TCP listener without TLS/token (development only)")
    socket: Path | None = Field(
        default=None, description="Unix socket of the admin API; default <state_dir>/admin.sock (system install: /run/fednode/admin.sock)"
    )
    socket_mode: int = Field(
        default=0o600, description="permissions of the socket: 0o600 (the daemon's user only) or 0o660 (also its group)"
    )
    health_listen: str = Field(
        default="", description="host:port of a plaintext gRPC listener serving grpc.health.v1 only (container probes); empty = off"
    )

    @field_validator("socket_mode")
    @classmethod
    def _check_socket_mode(cls, value: int) -> int:
        if value not in (0o600, 0o660):
            raise ValueError("must be 0o600 (owner only) or 0o660 (owner and group)")
        return value


class MetricsSection(_Section):
    """Prometheus metrics endpoint (opt-in)."""

    port: int = Field(default=-1, ge=-1, le=65535, description="-1 = off; 0 = any free port; else the port")
    host: str = Field(default="127.0.0.1", description="address the metrics endpoint binds")


class TrackingSection(_Section):
    """Experiment tracking sinks (off by default): every round goes to TensorBoard and/or MLflow."""

    tensorboard: bool = Field(default=False, description="write TensorBoard event files (needs fednode[tracking])")
    tensorboard_dir: Path | None = Field(default=None, description="event file directory; default <state_dir>/tensorboard")
    mlflow: bool = Field(default=False, description="log rounds to MLflow (needs fednode[tracking])")
    mlflow_tracking_uri: str = Field(
        default="", description="MLflow tracking URI (http://host:5000, file:/path); default file:<state_dir>/mlruns"
    )
    mlflow_experiment: str = Field(default="fednode", description="MLflow experiment name")
    run_name: str = Field(default="", description="run name in both sinks; default <display name or peer id>-<start time>")


class RotationSection(_Section):
    """Size-bounded rotation of the append-only files in the state dir; rotated files are kept."""

    audit_max_mb: float = Field(
        default=64.0, gt=0, le=1_000_000, description="audit.jsonl is rotated to audit.jsonl.N past this size (MiB)"
    )
    history_max_mb: float = Field(
        default=16.0, gt=0, le=1_000_000, description="history.jsonl (one line per round) is rotated past this size (MiB)"
    )


class FednodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    node: NodeSection = Field(default_factory=NodeSection)
    task: TaskSection = Field(default_factory=TaskSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    mesh: MeshSection = Field(default_factory=MeshSection)
    federation: FederationSection = Field(default_factory=FederationSection)
    aggregation: AggregationSection = Field(default_factory=AggregationSection)
    compression: CompressionSection = Field(default_factory=CompressionSection)
    attack: AttackSection = Field(default_factory=AttackSection)
    admin: AdminSection = Field(default_factory=AdminSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    rotation: RotationSection = Field(default_factory=RotationSection)

    def resolved_state_dir(self) -> Path:
        return Path(self.node.state_dir) if self.node.state_dir else default_state_dir()

    @model_validator(mode="after")
    def _apply_preset(self) -> FednodeConfig:
        """A preset fills in the keys it names that were not set explicitly (file, env or CLI)."""
        for (section, key), value in PRESETS.get(self.training.preset, {}).items():
            table = getattr(self, section)
            if key not in table.model_fields_set:
                setattr(table, key, value)
                table.model_fields_set.discard(key)  # still the preset's, not the user's
        return self

    @model_validator(mode="after")
    def _check_exchange(self) -> FednodeConfig:
        """The butterfly exchange runs sync rounds, and GAS must draw its splits inside its parts."""
        federation = self.federation
        if federation.exchange != "butterfly":
            return self
        if federation.schedule != "sync":
            raise ValueError('federation.exchange = "butterfly" runs with federation.schedule = "sync" only')
        parts = federation.butterfly_parts or federation.min_participants
        if self.aggregation.rule == "gas" and self.aggregation.params.get("within_parts") != parts:
            raise ValueError(f'aggregation rule "gas" over the butterfly exchange needs aggregation.params.within_parts '
                             f'= {parts} (federation.butterfly_parts, else min_participants)')
        return self


#: training.preset -> the (section, key) values it sets. DiLoCo (Douillard et al. 2023): H = 500
#: inner steps with the task's optimizer (AdamW in the paper), outer Nesterov, lr 0.7, momentum 0.9.
PRESETS: dict[str, dict[tuple[str, str], Any]] = {
    "diloco": {
        ("training", "local_steps"): 500,
        ("training", "optimizer"): "task",
        ("aggregation", "outer"): "nesterov",
        ("aggregation", "outer_lr"): 0.7,
        ("aggregation", "outer_momentum"): 0.9,
    },
}


def parse_shard(value: str) -> tuple[int, int]:
    index_text, sep, count_text = value.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index, count = -1, -1
    if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f'shard must be "i/N" with 0 <= i < N, got {value!r}')
    return index, count


def default_state_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fednode"


SYSTEM_CONFIG_FILE = Path("/etc/fednode/config.toml")


def default_config_file() -> Path:
    """The user's config file when it exists, else the system-wide one of a system install
    (deploy/systemd), so every local user's CLI finds the system daemon; else the user's path."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    user = Path(base) / "fednode" / "config.toml"
    if not user.is_file() and SYSTEM_CONFIG_FILE.is_file():
        return SYSTEM_CONFIG_FILE
    return user


ConfigSources = dict[str, str]
"""Dotted key ("training.lr") -> where its value came from ("default", "file:...", "env:...", "cli:...")."""


def parse_value(text: str) -> Any:
    """Read a CLI/env value as a TOML value when possible ("0.1" -> 0.1, "[1, 2]" -> list), else str."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree[section][key]... = value for "section.key" or a deeper "section.key.subkey" (a key
    inside a table-valued setting such as task.params)."""
    parts = [part.strip() for part in dotted.split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"config key {dotted!r} must look like section.key (e.g. training.lr or task.params.alpha)")
    if len(parts) > 2 and _is_scalar_setting(parts[0], parts[1]):
        raise ConfigError(f"config key {dotted!r}: {parts[0]}.{parts[1]} is a value, not a table, so it has no keys")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"config key {dotted!r}: {where} is a value, not a table, so it has no keys")
        node = child
    node[parts[-1]] = value


def _is_scalar_setting(section: str, key: str) -> bool:
    """A known setting that holds a value rather than a table (unknown ones: False, and the
    model's validation names them)."""
    model = FednodeConfig.model_fields.get(section)
    info = model.annotation.model_fields.get(key) if model is not None else None  # type: ignore[union-attr]
    return info is not None and get_origin(info.annotation) is not dict


def _flatten(tree: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, table in tree.items():
        if isinstance(table, dict):
            for key, value in table.items():
                flat[f"{section}.{key}"] = value
        else:
            flat[section] = table
    return flat


def _env_overrides(environ: dict[str, str]) -> dict[str, tuple[Any, str]]:
    """FEDNODE_<SECTION>_<KEY> variables -> {dotted key: (value, origin)}."""
    sections = {name: model.annotation for name, model in FednodeConfig.model_fields.items()}
    result: dict[str, tuple[Any, str]] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_SETTINGS:
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        for section, model in sections.items():
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                if key in model.model_fields:  # type: ignore[union-attr]
                    result[f"{section}.{key}"] = (parse_value(raw), f"env:{var}")
                    break
        else:
            raise ConfigError(
                f"environment variable {var} is not a fednode setting; expected FEDNODE_<SECTION>_<KEY> "
                f"such as FEDNODE_TRAINING_LR (run `fednode config show` for the keys), or unset it"
            )
    return result


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; check --config / FEDNODE_CONFIG") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {path} is a directory; pass a TOML file to --config / FEDNODE_CONFIG") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not text (byte {exc.start} is not UTF-8); pass a TOML file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_config(
    config_file: Path | None = None,
    cli_overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[FednodeConfig, ConfigSources]:
    """Build the effective configuration. Raises ConfigError with a one-line message."""
    environ = dict(os.environ if environ is None else environ)
    tree: dict[str, Any] = {}
    sources: ConfigSources = {}

    if config_file is None and environ.get(ENV_CONFIG_FILE):
        config_file = Path(environ[ENV_CONFIG_FILE])
    if config_file is None and default_config_file().is_file():
        config_file = default_config_file()
    if config_file is not None:
        file_tree = read_config_file(config_file)
        for dotted, value in _flatten(file_tree).items():
            _set_dotted(tree, dotted, copy.deepcopy(value))
            sources[dotted] = f"file:{config_file}"

    for dotted, (value, origin) in _env_overrides(environ).items():
        _set_dotted(tree, dotted, value)
        sources[dotted] = origin

    for dotted, value in (cli_overrides or {}).items():
        _set_dotted(tree, dotted, value)
        sources[dotted] = "cli"

    try:
        config = FednodeConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, tree, sources)) from exc
    return config, sources


def _describe_validation_error(exc: ValidationError, tree: dict[str, Any], sources: ConfigSources) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    origin = _origin(sources, [str(part) for part in error["loc"]])
    if error["type"] == "extra_forbidden":
        if len(error["loc"]) == 1:
            known = ", ".join(FednodeConfig.model_fields)
            return f"unknown config section [{location}] (from {origin}); known sections: {known}"
        section = str(error["loc"][0])
        known = ", ".join(FednodeConfig.model_fields[section].annotation.model_fields)  # type: ignore[union-attr]
        return f"unknown config key {location} (from {origin}); keys of [{section}]: {known}"
    value = error.get("input")
    more = f" ({len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    if len(error["loc"]) == 1 and error["type"] == "value_error":
        # A check across a section's keys (e.g. the outer optimizer's): name where they came from.
        origins = sorted({source for key, source in sources.items() if key.startswith(f"{location}.")}) or ["default"]
        message = str(error["msg"]).removeprefix("Value error, ")
        return f"invalid [{location}] settings (from {', '.join(origins)}): {message}{more}"
    return f"invalid config value {location} = {value!r} (from {origin}): {error['msg']}{more}"


def _origin(sources: ConfigSources, location: list[str]) -> str:
    """Where the value at `location` (or the table holding it, or a key set inside it) came from."""
    for depth in range(len(location), 0, -1):
        dotted = ".".join(location[:depth])
        if dotted in sources:
            return sources[dotted]
    prefix = ".".join(location) + "."
    inner = sorted({origin for key, origin in sources.items() if key.startswith(prefix)})
    return ", ".join(inner) if inner else "default"


def effective_tree(config: FednodeConfig) -> dict[str, Any]:
    """The effective configuration as plain TOML-serialisable data (None values left out)."""
    data = config.model_dump(mode="json")
    return {section: {k: v for k, v in table.items() if v is not None} for section, table in data.items()}


def describe_keys() -> list[dict[str, Any]]:
    """Every config key with its default and description, for `fednode config show --keys`."""
    rows: list[dict[str, Any]] = []
    for section, field in FednodeConfig.model_fields.items():
        model = field.annotation
        for key, info in model.model_fields.items():  # type: ignore[union-attr]
            default = info.get_default(call_default_factory=True)
            rows.append(
                {
                    "key": f"{section}.{key}",
                    "env": f"{ENV_PREFIX}{section.upper()}_{key.upper()}",
                    "default": default if not isinstance(default, Path) else str(default),
                    "description": info.description or "",
                }
            )
    return rows
