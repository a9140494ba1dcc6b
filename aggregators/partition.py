"""The deterministic split of the model dimension into m contiguous parts (the butterfly
exchange's parts; GAS can also draw its splits inside them)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .errors import AggregationError
from .numerics import COLUMN_BLOCK

# Parts are whole column blocks when every part can get at least this many blocks: part sizes then
# differ by at most one block (12.5% at worst), and every block-wise reduction of a part (Gram
# blocks, NNM's mixing) sees the same blocks as the all-to-all call does.
ALIGN_MIN_BLOCKS = 8


@dataclass(frozen=True)
class PartLayout:
    """Coordinates 0..d-1 cut into m contiguous, non-empty parts, a function of (d, m) only.

    - When d >= ALIGN_MIN_BLOCKS * m * COLUMN_BLOCK, part j is the column blocks
      floor(j B / m) .. floor((j+1) B / m) - 1 of the B = ceil(d / COLUMN_BLOCK) blocks (the
      last part ends at d).
    - Otherwise part j is the coordinates floor(j d / m) .. floor((j+1) d / m) - 1: sizes
      differ by at most one coordinate; m = d gives parts of one coordinate.
    """

    d: int
    m: int

    def __post_init__(self) -> None:
        for name in ("d", "m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AggregationError(f"part layout: {name} must be a positive int, got {value!r}")
        if self.m > self.d:
            raise AggregationError(
                f"part layout: cannot cut d={self.d} coordinates into m={self.m} non-empty parts; "
                f"use at most {self.d} parts"
            )

    @property
    def aligned(self) -> bool:
        """True when every part boundary is a column-block boundary."""
        return self.d >= ALIGN_MIN_BLOCKS * self.m * COLUMN_BLOCK or self.m == 1

    @functools.cached_property
    def bounds(self) -> tuple[slice, ...]:
        d, m = self.d, self.m
        if self.aligned:
            blocks = -(-d // COLUMN_BLOCK)
            edges = [min(d, (j * blocks // m) * COLUMN_BLOCK) for j in range(m)] + [d]
        else:
            edges = [j * d // m for j in range(m)] + [d]
        return tuple(slice(edges[j], edges[j + 1]) for j in range(m))

    def part(self, index: int) -> slice:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.m:
            raise AggregationError(f"part layout: part index must be in [0, {self.m}), got {index!r}")
        return self.bounds[index]

    def width(self, index: int) -> int:
        bounds = self.part(index)
        return bounds.stop - bounds.start
