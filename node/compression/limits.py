"""How much a receiver is willing to decode.

Every allocation the decoder makes is bounded by `max_numel` (the dense output is 4 bytes per
element; temporaries are at most a few times that), so the limit is the memory budget of one
decode. Set it to the model's parameter count, or pass `expected_numel` to `decode`, which is
stricter still.
"""

from __future__ import annotations

from dataclasses import dataclass

# Sparse positions are uint32 on the wire, so no v1 payload can describe more elements than this.
HARD_MAX_NUMEL = 1 << 32


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds checked before any allocation.

    max_numel: largest element count accepted (1 .. 2^32). The default, 2^28 elements, is a 1 GiB
        float32 tensor: generous for the models fednode trains, small enough to survive a hostile
        peer. Nodes should pass their model's size.
    max_dims: longest `shape` list accepted; a huge repeated field is cheap to send.
    allowed_codecs: codec names accepted (e.g. only the federation's codec); None accepts all.
    """

    max_numel: int = 1 << 28
    max_dims: int = 8
    allowed_codecs: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_numel <= HARD_MAX_NUMEL:
            raise ValueError(f"max_numel must be in 1..2^32, got {self.max_numel}")
        if not 1 <= self.max_dims <= 64:
            raise ValueError(f"max_dims must be in 1..64, got {self.max_dims}")
        if self.allowed_codecs is not None:
            object.__setattr__(self, "allowed_codecs", frozenset(self.allowed_codecs))
