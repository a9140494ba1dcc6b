"""The outer optimizer: how a member moves the federation's model by a round's robust aggregate.

Plain FedAvg adds the aggregate of the members' deltas to the model. An outer optimizer treats
the negated aggregate as a pseudo-gradient and steps on it (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021; DiLoCo, Douillard et al. 2023):

    g = -aggregate                      (aggregate = robust rule over delta_i = trained_i - model)
    sgd       x <- x - lr g                                  (lr = 1: FedAvg)
    momentum  m <- mu m + g;  x <- x - lr m                  (FedAvgM; torch.optim.SGD momentum)
    nesterov  m <- mu m + g;  x <- x - lr (g + mu m)         (DiLoCo's outer step; SGD nesterov)
    adam      m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2  (FedAdam; torch.optim.Adam)
              x <- x - lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)
    yogi      as adam with v <- v - (1-b2) g^2 sign(v - g^2)  (FedYogi)
    adagrad   v <- v + g^2;  x <- x - lr g / (sqrt(v) + eps)   (FedAdagrad without momentum;
                                                               torch.optim.Adagrad)

There is no server: every member applies the same step to the same aggregate and must end with
the bit-identical model and optimizer state. Hence this module is pure, with the state as
explicit float64 tensors (no torch.optim object), and every step is a fixed sequence of
element-wise IEEE operations (multiply, add, subtract, divide, square root, sign), each rounded
once. Fused or compound kernels (`add(alpha=)`, `addcmul`, `addcdiv`, `lerp`) are avoided on
purpose: their vectorised and scalar paths may use a fused multiply-add for some elements and
not others, so the bits could depend on alignment or CPU. Bias-correction powers are carried in
the state as running products (b^t by repeated multiplication, not libm's pow, which need not
round the same everywhere). Element-wise operations involve no reduction, so thread counts do
not matter either.

Adam and Yogi follow torch.optim.Adam (bias-corrected moments, epsilon added to the corrected
root); Reddi et al.'s algorithm has no bias correction. Yogi shares Adam's correction so both
begin alike (on the first step sign(v - g^2) = -1 and Yogi's v equals Adam's).

Who applies it where: `FederationRunner` after each synchronous round (`apply_outer`), and
`CompassRunner` per group aggregation through `OuterSequence` (FedCompass has no total order of
groups; the sequence applies them in a canonical order and replays when a group arrives out
of it). The state is part of the checkpoint, the state-sync snapshot (`ModelState`) and
`model export --raw`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fednode.node.federation.outer_config import (
    DEFAULT_LR,
    OPTIMIZERS,
    OuterConfig,
    config_from_proto,
    config_to_proto,
)

__all__ = [
    "DEFAULT_LR",
    "OPTIMIZERS",
    "Change",
    "OuterConfig",
    "OuterSequence",
    "OuterState",
    "OuterStateError",
    "apply_outer",
    "config_from_proto",
    "config_to_proto",
    "initial_state",
    "outer_step",
    "saved_state",
    "state_from_dict",
    "state_from_proto",
    "state_is_finite",
    "state_to_dict",
    "state_to_proto",
]

MAX_STEPS = 2**53  # steps are carried in float64-exact integers


class OuterStateError(ValueError):
    """An outer optimizer state (from a checkpoint, a snapshot or a file) that cannot be used."""


@dataclass(frozen=True)
class OuterState:
    """The replicated optimizer state; never mutated (a step returns a new one).

    `buffers` are float64 vectors of the model's size, named by `OuterConfig.buffer_names`;
    `beta1_power`/`beta2_power` are beta^steps, kept as running products."""

    steps: int = 0
    beta1_power: float = 1.0
    beta2_power: float = 1.0
    buffers: Mapping[str, torch.Tensor] = field(default_factory=dict)


def initial_state(config: OuterConfig, numel: int) -> OuterState:
    """Zero buffers: what torch.optim starts from (its momentum buffer starts at the first
    gradient, which is mu x 0 + g)."""
    return OuterState(buffers={name: torch.zeros(numel, dtype=torch.float64) for name in config.buffer_names})


def outer_step(config: OuterConfig, state: OuterState, pseudo_gradient: torch.Tensor) -> tuple[torch.Tensor, OuterState]:
    """One step on the float64 `pseudo_gradient` g: (update to ADD to the parameters, new state).

    Pure and deterministic: see the module docstring for the order of operations."""
    g = pseudo_gradient.to(torch.float64)
    name, lr = config.name, config.lr
    buffers = state.buffers
    if name == "sgd":
        return torch.neg(g * lr), replace(state, steps=state.steps + 1)
    if name in ("momentum", "nesterov"):
        mu = config.momentum
        m = buffers["momentum"] * mu + g
        direction = m if name == "momentum" else g + m * mu
        return torch.neg(direction * lr), replace(state, steps=state.steps + 1, buffers={"momentum": m})
    if name == "adagrad":
        v = buffers["sum_sq"] + g * g
        update = torch.neg(g / (torch.sqrt(v) + config.epsilon) * lr)
        return update, replace(state, steps=state.steps + 1, buffers={"sum_sq": v})
    # adam, yogi
    b1, b2 = config.beta1, config.beta2
    m = buffers["exp_avg"] * b1 + g * (1.0 - b1)
    g2 = g * g
    v_old = buffers["exp_avg_sq"]
    # Adam: an exponential average of g^2. Yogi: v moves towards g^2 by (1-b2) g^2 at most, so a
    # burst of large gradients raises it slowly and it does not collapse when they fade.
    v = v_old * b2 + g2 * (1.0 - b2) if name == "adam" else v_old - g2 * (1.0 - b2) * torch.sign(v_old - g2)
    beta1_power = state.beta1_power * b1
    beta2_power = state.beta2_power * b2
    step_size = lr / (1.0 - beta1_power)
    denominator = torch.sqrt(v) / math.sqrt(1.0 - beta2_power) + config.epsilon
    update = torch.neg(m / denominator * step_size)
    return update, OuterState(state.steps + 1, beta1_power, beta2_power, {"exp_avg": m, "exp_avg_sq": v})


def apply_outer(
    config: OuterConfig, state: OuterState, parameters: torch.Tensor, aggregate: torch.Tensor
) -> tuple[torch.Tensor, OuterState]:
    """The synchronous round's hook: (new flat parameters, new state) after applying the round's
    robust `aggregate` (the direction to move in, as FedAvg adds it). Plain FedAvg adds it in
    the parameters' dtype exactly as before outer optimizers existed; the others compute in
    float64 and round the result to the parameters' dtype once."""
    if config.is_identity:
        return parameters + aggregate.to(parameters.dtype), state
    update, new_state = outer_step(config, state, torch.neg(aggregate.to(torch.float64)))
    return (parameters.to(torch.float64) + update).to(parameters.dtype), new_state


def state_is_finite(state: OuterState) -> bool:
    return all(bool(torch.isfinite(buffer).all()) for buffer in state.buffers.values())


# ------------------------------------------------------------------------------ ordered steps
Key = tuple[int, bytes]


@dataclass(frozen=True)
class Change:
    """A step whose update changed: subtract `old` (if any) and add `new` (if any)."""

    key: Key
    old: torch.Tensor | None
    new: torch.Tensor | None


class OuterSequence:
    """Outer steps over contributions that arrive in any order, applied in a canonical order.

    FedCompass has no total order of groups: members may hear two groups' manifests in either
    order, and a stateful optimizer's result depends on the order. The sequence orders steps by
    a key every member computes alike (the runner uses (the manifest's base model version, the
    group id)); a step arriving before steps it should follow is inserted in its place and the
    later ones are replayed from the state before it. `changes` lists every update that moved,
    so a caller keeping the model as a sum (FedCompass' fixed-point master) subtracts the old
    update and adds the new one exactly.

    The last `window` steps stay replayable (their pseudo-gradients and updates are kept: 16
    bytes per parameter each); older ones are settled into `base`. A step arriving with a key
    before the window's first is inserted at the window's start: members whose windows differ
    then order it differently (the same horizon as FedCompass' own for manifest swaps).
    """

    def __init__(self, config: OuterConfig, state: OuterState, *, window: int = 8) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.config = config
        self.window = window
        self.base = state  # before the first kept step
        self.state = state  # after every kept step
        self._keys: list[Key] = []
        self._gradients: list[torch.Tensor] = []
        self._updates: list[torch.Tensor] = []
        self.replays = 0  # changes that recomputed steps already applied (out-of-order arrivals, swaps)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Key) -> bool:
        return self._index(key) is not None

    def keys(self) -> list[Key]:
        return list(self._keys)

    def _index(self, key: Key) -> int | None:
        index = bisect.bisect_left(self._keys, key)
        return index if index < len(self._keys) and self._keys[index] == key else None

    def change(self, *, remove: Key | None = None, add: tuple[Key, torch.Tensor] | None = None) -> list[Change]:
        """Remove a step and/or add one (pseudo-gradient float64); returns what moved, in key order.
        Adding a key already present replaces its pseudo-gradient."""
        changes: list[Change] = []
        start = len(self._keys)
        if remove is not None:
            index = self._index(remove)
            if index is not None:
                start = min(start, index)
        if add is not None:
            existing = self._index(add[0])
            start = min(start, existing if existing is not None else bisect.bisect_left(self._keys, add[0]))
        if start < len(self._keys):
            self.replays += 1
        state = self.state if start == len(self._keys) else self._state_before(start)
        old = {self._keys[i]: self._updates[i] for i in range(start, len(self._keys))}
        tail = {self._keys[i]: self._gradients[i] for i in range(start, len(self._keys))}
        if remove is not None:
            tail.pop(remove, None)
        if add is not None:
            tail[add[0]] = add[1].to(torch.float64)
        del self._keys[start:], self._gradients[start:], self._updates[start:]
        for key in sorted(tail):
            update, state = outer_step(self.config, state, tail[key])
            self._keys.append(key)
            self._gradients.append(tail[key])
            self._updates.append(update)
            changes.append(Change(key, old.pop(key, None), update))
        changes.extend(Change(key, update, None) for key, update in old.items())  # removed
        self.state = state
        self._settle()
        return sorted(changes, key=lambda c: c.key)

    def _state_before(self, index: int) -> OuterState:
        state = self.base
        for gradient in self._gradients[:index]:
            _, state = outer_step(self.config, state, gradient)
        return state

    def _settle(self) -> None:
        excess = len(self._keys) - self.window
        if excess > 0:
            self.base = self._state_before(excess)
            del self._keys[:excess], self._gradients[:excess], self._updates[:excess]

    def reset(self, state: OuterState) -> None:
        """Start over from `state` (an adopted snapshot or a checkpoint), nothing replayable."""
        self.base = self.state = state
        self._keys, self._gradients, self._updates = [], [], []


# ------------------------------------------------------------------------------ persistence
def state_to_dict(config: OuterConfig, state: OuterState) -> dict[str, Any]:
    """For checkpoints (torch.save, read back with weights_only=True)."""
    return {
        "optimizer": config.name, "digest": config.digest(), "steps": int(state.steps),
        "settings": {"lr": config.lr, "momentum": config.momentum, "beta1": config.beta1, "beta2": config.beta2,
                     "epsilon": config.epsilon},
        "beta1_power": float(state.beta1_power), "beta2_power": float(state.beta2_power),
        "buffers": {name: buffer.clone() for name, buffer in state.buffers.items()},
    }


def state_from_dict(config: OuterConfig, data: Any, numel: int) -> OuterState:
    """A checkpointed state for `config`; OuterStateError when it is for other settings or damaged."""
    if not isinstance(data, dict):
        raise OuterStateError("not an outer optimizer state")
    if data.get("optimizer") != config.name or data.get("digest") != config.digest():
        raise OuterStateError(f"the state is for {data.get('optimizer')!r} with other settings than {config.describe()}")
    buffers = data.get("buffers")
    if not isinstance(buffers, dict):
        raise OuterStateError("the state has no buffers")
    return _checked(config, numel, data.get("steps"), data.get("beta1_power"), data.get("beta2_power"), buffers)


def saved_state(data: Any, numel: int) -> tuple[OuterConfig, OuterState]:
    """A checkpointed state with the settings it was saved with (for `model export --raw` of a
    node whose session ended); OuterStateError when unusable."""
    settings = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise OuterStateError("the state carries no settings")
    try:
        config = OuterConfig.build(str(data.get("optimizer")), lr=settings["lr"], momentum=settings["momentum"],
                                   betas=(settings["beta1"], settings["beta2"]), epsilon=settings["epsilon"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OuterStateError(f"the state's settings are unusable: {exc}") from exc
    return config, state_from_dict(config, data, numel)


def _checked(config: OuterConfig, numel: int, steps: Any, beta1_power: Any, beta2_power: Any,
             buffers: Mapping[str, Any]) -> OuterState:
    if not isinstance(steps, int) or not 0 <= steps <= MAX_STEPS:
        raise OuterStateError(f"step count {steps!r} out of range")
    powers = []
    for value in (beta1_power, beta2_power):
        if not isinstance(value, float) or not (0.0 <= value <= 1.0):
            raise OuterStateError(f"bias-correction power {value!r} out of [0, 1]")
        powers.append(value)
    if set(buffers) != set(config.buffer_names):
        raise OuterStateError(f"buffers {sorted(buffers)} do not match {config.name}'s {list(config.buffer_names)}")
    checked: dict[str, torch.Tensor] = {}
    for name in config.buffer_names:
        buffer = buffers[name]
        if not isinstance(buffer, torch.Tensor) or buffer.dtype != torch.float64 or buffer.numel() != numel:
            raise OuterStateError(f"buffer {name!r} is not a float64 vector of {numel} elements")
        if not bool(torch.isfinite(buffer).all()):
            raise OuterStateError(f"buffer {name!r} holds NaN or Inf")
        checked[name] = buffer.detach().reshape(-1).clone()
    return OuterState(steps, powers[0], powers[1], checked)


def state_to_proto(config: OuterConfig, state: OuterState) -> Any:
    from fednode.proto.v1 import model_pb2

    message = model_pb2.OuterState(optimizer=config.name, settings_digest=config.digest(), steps=state.steps,
                                   beta1_power=state.beta1_power, beta2_power=state.beta2_power)
    for name in config.buffer_names:
        buffer = state.buffers[name].detach().to(torch.float64).contiguous()
        message.buffers.add(name=name, numel=buffer.numel(), float64_le=buffer.numpy().astype("<f8").tobytes())
    return message


def state_from_proto(config: OuterConfig, message: Any, numel: int) -> OuterState:
    """Validate before allocating: names, sizes, then values (finite)."""
    if message.optimizer != config.name or message.settings_digest != config.digest():
        raise OuterStateError(f"the state is for {message.optimizer!r} with other settings than {config.describe()}")
    names = [b.name for b in message.buffers]
    if names != list(config.buffer_names):
        raise OuterStateError(f"buffers {names} do not match {config.name}'s {list(config.buffer_names)}")
    buffers: dict[str, torch.Tensor] = {}
    for entry in message.buffers:
        if entry.numel != numel or len(entry.float64_le) != 8 * numel:
            raise OuterStateError(f"buffer {entry.name!r} has {entry.numel} elements / {len(entry.float64_le)} bytes, "
                                  f"the model {numel}")
        buffers[entry.name] = torch.from_numpy(np.frombuffer(entry.float64_le, dtype="<f8").astype(np.float64))
    return _checked(config, numel, int(message.steps), float(message.beta1_power), float(message.beta2_power), buffers)
