"""The sender side of one federation: error feedback, DGC momentum correction and warm-up.

Lossy codecs drop information every round. Error feedback (Seide et al. 2014; Karimireddy et al.
2019) keeps what was not sent in a local residual and adds it to the next update, so nothing is
lost, only delayed: over rounds, the sum of what peers received equals the sum of what was fed
in, minus the current residual. Deep Gradient Compression (Lin et al. 2018) adds momentum
correction (accumulate velocity, not raw updates, and clear the velocity of sent coordinates) and
a warm-up that starts dense and sparsifies exponentially, avoiding the early rounds where stale
residuals hurt most.

The residual belongs to the sender and to one federation: it never leaves the node, and it must
survive restarts (`state_dict` / `load_state_dict`), or a restart silently drops everything that
was pending.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fednode.node.compression import wire
from fednode.node.compression.codecs import Codec
from fednode.proto.v1 import tensor_pb2 as pb

STATE_VERSION = 1
_AUX_PREFIX = "aux."


class UpdateCompressor:
    """Stateful encoder of one federation's updates. Not thread-safe: one caller at a time.

    error_feedback: keep what the codec did not send and add it to the next update (ignored for
        the lossless codec, which never leaves anything behind).
    momentum: DGC momentum correction factor m in [0, 1): velocity u = m*u + delta is what gets
        accumulated, and sent coordinates of u are cleared (momentum factor masking). Only for
        sparse codecs with error feedback. FedAvg applies the averaged update directly, so m > 0
        acts like server momentum; 0 (the default) is plain error feedback.
    warmup_steps, warmup_start_density: for sparse codecs, the kept fraction starts at
        warmup_start_density at step 0 and decays geometrically to the codec's target at step
        warmup_steps (DGC's exponential sparsity warm-up); 0 disables the warm-up.
    """

    def __init__(
        self,
        codec: Codec,
        *,
        error_feedback: bool = True,
        momentum: float = 0.0,
        warmup_steps: int = 0,
        warmup_start_density: float = 0.25,
    ) -> None:
        if not isinstance(codec, Codec):
            raise TypeError("codec must be a Codec (see build_codec)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if momentum > 0 and not (codec.sparse and error_feedback):
            raise ValueError("momentum correction needs a sparse codec with error feedback")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if warmup_steps > 0 and not codec.sparse:
            raise ValueError("the warm-up schedule applies to sparse codecs only")
        if not 0.0 < warmup_start_density <= 1.0:
            raise ValueError(f"warmup_start_density must be in (0, 1], got {warmup_start_density}")
        self.codec = codec
        self.error_feedback = error_feedback and not codec.lossless
        self.momentum = momentum
        self.warmup_steps = warmup_steps
        self.warmup_start_density = warmup_start_density
        self._numel = 0
        self._residual: torch.Tensor | None = None
        self._velocity: torch.Tensor | None = None
        self._aux: dict[str, torch.Tensor] = {}
        # the previous residual's memory, reused for the next accumulator (no 40 MB page faults)
        self._spare: torch.Tensor | None = None

    # ------------------------------------------------------------------ encoding

    def kept_for(self, step: int, n: int) -> int | None:
        """Elements a sparse codec keeps at `step` (warm-up schedule); None for dense codecs."""
        target = self.codec.k_for(n)
        if target is None or step >= self.warmup_steps:
            return target
        start = max(self.warmup_start_density, target / n)
        density = start * ((target / n) / start) ** (step / self.warmup_steps)
        return max(target, min(n, round(density * n)))

    def compress(self, delta: torch.Tensor, *, seed: int | None = None, step: int) -> pb.TensorPayload:
        """Encode one update (1-D float32, finite) and advance the state; the payload goes on the wire.

        seed: the shared random-k seed (`derive_seed`), required by randk only.
        step: the federation's round/update counter, drives the warm-up schedule.
        A ValueError (bad input) leaves the state exactly as it was.
        """
        delta = self._check_input(delta, seed, step)
        n = delta.numel()
        velocity = None
        if self.momentum > 0:
            velocity = wire.empty(n)
            if self._velocity is None:
                velocity.copy_(delta)
            else:
                torch.add(delta, self._velocity, alpha=self.momentum, out=velocity)
        update = delta if velocity is None else velocity
        residual_out = None
        if self.error_feedback:
            residual_out = (
                self._spare if self._spare is not None and self._spare.numel() == n else wire.empty(n)
            )
            if self._residual is None:
                residual_out.copy_(update)
            else:
                torch.add(self._residual, update, out=residual_out)
        accumulated = update if residual_out is None else residual_out
        encoded = self.codec.encode(
            accumulated, seed=seed, k=self.kept_for(step, n), aux=self._aux, residual=residual_out
        )
        if velocity is not None and encoded.positions is not None:
            velocity[encoded.positions] = 0.0
        # commit: nothing above touched the previous state
        self._spare = self._residual
        self._residual = residual_out
        self._velocity = velocity
        self._aux = encoded.aux
        self._numel = n
        return encoded.payload

    def _check_input(self, delta: torch.Tensor, seed: int | None, step: int) -> torch.Tensor:
        if not isinstance(delta, torch.Tensor) or delta.dim() != 1 or delta.dtype != torch.float32:
            raise ValueError("delta must be a 1-D float32 tensor")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.codec.needs_seed and (seed is None or not 0 <= seed < 1 << 64):
            raise ValueError("randk needs a uint64 seed shared with the receivers (derive_seed)")
        delta = delta.detach().to("cpu").contiguous()
        if self._numel and delta.numel() != self._numel:
            raise ValueError(f"delta has {delta.numel()} elements, this federation's state has {self._numel}")
        if delta.numel() == 0:
            raise ValueError("delta is empty")
        # NaN/Inf are refused by Codec.encode (it checks the accumulator, which inherits them),
        # before anything is committed: one pass over the data fewer.
        return delta

    # ------------------------------------------------------------------ state

    @property
    def numel(self) -> int:
        """Size of the updates this state belongs to; 0 before the first compress."""
        return self._numel

    @property
    def residual(self) -> torch.Tensor | None:
        """A copy of the error-feedback residual (what is still owed to the receivers)."""
        return None if self._residual is None else self._residual.clone()

    def reset(self) -> None:
        """Forget all state, e.g. when the model layout changes."""
        self._numel, self._residual, self._velocity, self._aux, self._spare = 0, None, None, {}, None

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Tensors and ints only (safe for torch.load(weights_only=True)); copies, not views."""
        state: dict[str, torch.Tensor | int] = {
            "version": STATE_VERSION,
            "codec": int(self.codec.wire_codec),
            "numel": self._numel,
        }
        if self._residual is not None:
            state["residual"] = self._residual.clone()
        if self._velocity is not None:
            state["velocity"] = self._velocity.clone()
        for name, tensor in self._aux.items():
            state[_AUX_PREFIX + name] = tensor.clone()
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore `state_dict()` output; ValueError (and no change) if it does not fit this compressor."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported compressor state version {state.get('version')!r}")
        if state.get("codec") != int(self.codec.wire_codec):
            raise ValueError(
                f"state is for codec {state.get('codec')!r}, this compressor uses {self.codec.name}"
            )
        numel = state.get("numel")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise ValueError(f"bad numel {numel!r}")
        known = {"version", "codec", "numel", "residual", "velocity"}
        unknown = [key for key in state if key not in known and not key.startswith(_AUX_PREFIX)]
        if unknown:
            raise ValueError(f"unknown state keys {unknown}")
        residual = self._state_vector(state, "residual", numel, self.error_feedback and numel > 0)
        velocity = self._state_vector(state, "velocity", numel, self.momentum > 0 and numel > 0)
        aux = {}
        for key, value in state.items():
            if key.startswith(_AUX_PREFIX):
                aux[key[len(_AUX_PREFIX) :]] = _checked_tensor(value, key)
        self._numel, self._residual, self._velocity, self._aux, self._spare = (
            numel,
            residual,
            velocity,
            aux,
            None,
        )

    @staticmethod
    def _state_vector(
        state: Mapping[str, object], key: str, numel: int, required: bool
    ) -> torch.Tensor | None:
        value = state.get(key)
        if value is None:
            if required:
                raise ValueError(f"state lacks {key!r}")
            return None
        if not required:
            raise ValueError(f"state has {key!r}, which this compressor's configuration does not use")
        tensor = _checked_tensor(value, key)
        if tensor.shape != (numel,):
            raise ValueError(f"{key} has shape {tuple(tensor.shape)}, expected ({numel},)")
        return tensor


def _checked_tensor(value: object, key: str) -> torch.Tensor:
    """A private float32 CPU copy of a finite tensor from a checkpoint."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
        raise ValueError(f"{key} must be a float32 tensor")
    tensor = value.detach().to("cpu").clone().contiguous()
    if not wire.is_finite(tensor):
        raise ValueError(f"{key} contains NaN or Inf")
    return tensor
