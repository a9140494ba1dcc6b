"""Outer optimizer settings: which optimizer, its hyperparameters, their digest (no torch).

The daemon needs these without torch (its validator refuses updates from members with other
settings, and it puts them in the descriptor); the math is in `fednode.node.federation.outer`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "yogi", "adagrad")

#: outer_lr when none is given. sgd/momentum 1.0 (FedAvg, FedAvgM as in Hsu et al. 2019),
#: nesterov 0.7 (DiLoCo), the adaptive ones as found on the digits bench (docs/federation.md).
DEFAULT_LR = {"sgd": 1.0, "momentum": 1.0, "nesterov": 0.7, "adam": 0.01, "yogi": 0.01, "adagrad": 0.05}
DEFAULT_MOMENTUM = 0.9
DEFAULT_BETAS = (0.9, 0.99)
DEFAULT_EPSILON = 1e-3  # Reddi et al.'s tau: large enough that rarely-moved coordinates stay calm

# The parameters each optimizer uses; the others are left at their defaults (and out of the digest).
_USES: dict[str, tuple[str, ...]] = {
    "sgd": ("lr",),
    "momentum": ("lr", "momentum"),
    "nesterov": ("lr", "momentum"),
    "adam": ("lr", "beta1", "beta2", "epsilon"),
    "yogi": ("lr", "beta1", "beta2", "epsilon"),
    "adagrad": ("lr", "epsilon"),
}
_BUFFERS: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("momentum",),
    "nesterov": ("momentum",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "yogi": ("exp_avg", "exp_avg_sq"),
    "adagrad": ("sum_sq",),
}
MAX_LR = 1000.0


@dataclass(frozen=True)
class OuterConfig:
    """One outer optimizer and its hyperparameters; build with `OuterConfig.build` (validates)."""

    name: str = "sgd"
    lr: float = 1.0
    momentum: float = DEFAULT_MOMENTUM
    beta1: float = DEFAULT_BETAS[0]
    beta2: float = DEFAULT_BETAS[1]
    epsilon: float = DEFAULT_EPSILON

    @classmethod
    def build(
        cls,
        name: str = "sgd",
        *,
        lr: float = 0.0,
        momentum: float | None = None,
        betas: tuple[float, float] | list[float] | None = None,
        epsilon: float | None = None,
    ) -> OuterConfig:
        """Validate and resolve defaults (lr 0 = the optimizer's default). Parameters the
        optimizer does not use are reset to their defaults, so two configurations that step
        alike compare (and digest) equal. ValueError with a one-line reason."""
        name = (name or "sgd").strip().lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown outer optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
        lr = float(lr)
        if lr == 0.0:
            lr = DEFAULT_LR[name]
        if not (math.isfinite(lr) and 0.0 < lr <= MAX_LR):
            raise ValueError(f"outer_lr must be in (0, {MAX_LR:g}], got {lr!r}")
        values = {"momentum": DEFAULT_MOMENTUM if momentum is None else float(momentum),
                  "epsilon": DEFAULT_EPSILON if epsilon is None else float(epsilon)}
        beta_pair = DEFAULT_BETAS if betas is None else tuple(betas)
        if len(beta_pair) != 2:
            raise ValueError(f"outer_betas must be two numbers [beta1, beta2], got {list(beta_pair)!r}")
        values["beta1"], values["beta2"] = float(beta_pair[0]), float(beta_pair[1])
        uses = _USES[name]
        for key in ("momentum", "beta1", "beta2"):
            if key in uses and not (math.isfinite(values[key]) and 0.0 <= values[key] < 1.0):
                label = "outer_momentum" if key == "momentum" else "outer_betas"
                raise ValueError(f"{label}: {key} must be in [0, 1), got {values[key]!r}")
        if "epsilon" in uses and not (math.isfinite(values["epsilon"]) and 0.0 < values["epsilon"] <= 1.0):
            raise ValueError(f"outer_epsilon must be in (0, 1], got {values['epsilon']!r}")
        defaults = cls()
        kept = {key: (values[key] if key in uses else getattr(defaults, key)) for key in values}
        return cls(name=name, lr=lr, **kept)

    @property
    def is_identity(self) -> bool:
        """Plain FedAvg: the model moves by exactly the aggregate (no state, no float64 detour)."""
        return self.name == "sgd" and self.lr == 1.0

    @property
    def buffer_names(self) -> tuple[str, ...]:
        return _BUFFERS[self.name]

    @property
    def stateful(self) -> bool:
        return bool(self.buffer_names)

    def canonical(self) -> dict[str, Any]:
        """The settings that define the step: name and the parameters it uses."""
        return {"name": self.name, **{key: getattr(self, key) for key in _USES[self.name]}}

    def digest(self) -> str:
        """What members compare (update and snapshot headers): "" for plain FedAvg, so
        federations without an outer optimizer look as they always did; else 16 hex digits of
        sha256 over the canonical settings (floats by their exact repr)."""
        if self.is_identity:
            return ""
        text = json.dumps({k: (repr(v) if isinstance(v, float) else v) for k, v in self.canonical().items()},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"fednode/v1/outer\x00" + text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """One line for logs and the CLI, e.g. "nesterov(lr=0.7, momentum=0.9)"."""
        return f"{self.name}(" + ", ".join(f"{k}={getattr(self, k):g}" for k in _USES[self.name]) + ")"

    def state_bytes(self, numel: int) -> int:
        """Bytes of the state's buffers for a model of `numel` parameters (float64 each)."""
        return 8 * numel * len(self.buffer_names)


def config_to_proto(config: OuterConfig) -> Any:
    """The resolved settings as an OuterOptimizer message (descriptor, worker settings)."""
    from fednode.proto.v1 import membership_pb2

    return membership_pb2.OuterOptimizer(name=config.name, lr=config.lr, momentum=config.momentum,
                                         beta1=config.beta1, beta2=config.beta2, epsilon=config.epsilon)


def config_from_proto(message: Any) -> OuterConfig:
    """An OuterOptimizer message (unset or name "": plain FedAvg); ValueError when invalid."""
    if message is None or not message.name:
        return OuterConfig()
    return OuterConfig.build(message.name, lr=message.lr, momentum=message.momentum,
                             betas=(message.beta1, message.beta2), epsilon=message.epsilon)
