"""Centered clipping (Karimireddy, He, Jaggi 2021). The centre is state the caller owns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Aggregator, CallContext
from .errors import AggregationError
from .numerics import WORK_DTYPE, gram, quadratic_forms, row_combination
from .result import Combination


@dataclass(frozen=True, kw_only=True)
class CenteredClipping(Aggregator):
    """v_{l+1} = v_l + sum_i w_i (x_i - v_l) min(1, tau / ||x_i - v_l||), for l < iters.

    v_0 is the `center=` passed to the call (zeros when omitted). The rule itself is stateless:
    the caller stores `result.aggregate` as the next call's centre, checkpoints it with the model,
    keeps it identical on every peer, and resets it to zeros when the model is reset.
    """

    name = "centered_clipping"
    description = (
        "Centered clipping: iters steps of clipped averaging around the centre passed as center= "
        "(caller-owned state: pass the previous aggregate; zeros when omitted)."
    )
    uses_weights = True
    uses_center = True
    scan_gram = "centered"

    tau: float = 1.0
    iters: int = 1

    def validate_parameters(self) -> None:
        if not self.tau > 0:
            raise AggregationError(f"rule 'centered_clipping': tau must be > 0, got {self.tau!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise AggregationError(
                f"rule 'centered_clipping': iters must be a positive int, got {self.iters!r}"
            )

    def scan_extra(self, matrix: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
        return self._centre(matrix, center)[None, :]

    @staticmethod
    def _centre(rows: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
        if center is None:
            return torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
        return center

    def combine(self, rows: torch.Tensor, context: CallContext) -> Combination:
        center = self._centre(rows, context.center)
        gram_matrix = context.gram
        if gram_matrix is None:
            gram_matrix = gram(rows, centered=True, extra=center[None, :])
        v, scores = self.decide(gram_matrix, context)
        n = rows.shape[0]
        aggregate = row_combination(rows, v[:n], extra=center[None, :], extra_coefficients=v[n:])
        return Combination(aggregate=aggregate, scores=scores)

    def decide(self, gram_matrix: torch.Tensor, context: CallContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipping steps on the centred Gram matrix of the n rows with the centre appended
        as row n: the output's n + 1 coefficients (rows, then centre) and each row's distance
        to it. v is kept as coefficients, so each step costs O(n^2)."""
        n = gram_matrix.shape[0] - 1
        weights = context.normalized_weights(n)
        unit = torch.eye(n + 1, dtype=WORK_DTYPE)
        v = unit[n].clone()
        for _ in range(self.iters):
            offsets = unit[:n] - v[None, :]  # coefficients of x_i - v
            distances = quadratic_forms(gram_matrix, offsets).clamp_min(0.0).sqrt()
            clip = torch.where(distances > self.tau, self.tau / distances.clamp_min(1e-300), 1.0)
            v = v + ((weights * clip)[:, None] * offsets).sum(dim=0)
        final_offsets = unit[:n] - v[None, :]
        return v, quadratic_forms(gram_matrix, final_offsets).clamp_min(0.0).sqrt()
