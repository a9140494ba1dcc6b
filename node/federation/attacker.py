"""A Byzantine member for tests, demos and the robustness bench (`[attack]`; never in production).

`Attacker` wraps an update or data attack (fednode.aggregators.attacks) with what a member needs
to run it on time in a federation:

- **timing** (`attack.timing`): `"current"` (default) forges the round's update from the honest
  updates of the same round, waiting for them only as long as the schedule allows: until every
  honest member's update is in, or two thirds of the way to the round's deadline, so its own
  update still arrives before the honest members close the round. `"previous"` forges it at once
  from the honest updates of the round before (what a non-omniscient attacker can know), so it
  is as early as an honest member.
- **colluders** (`attack.colluders`): the display names or peer ids of the other attackers. Their
  updates are not taken for honest ones, nor waited for, so every attacker forges the same
  vector from the same honest rows (identical colluders, as the literature's attacks assume).
- **too few rows**: an attack needing more honest rows than the round has (ALIE needs 2) uses
  the previous round's, then adds the attacker's own honest update; with still too few it sends
  its honest update for that round and says so, instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

log = logging.getLogger("fednode.attack")

Timing = Literal["current", "previous"]
TIMINGS: tuple[str, ...] = ("current", "previous")
# In "current" timing the attacker stops waiting for honest updates this far into the round's
# window (round start to deadline): the rest is for its own update to travel.
WAIT_SHARE = 2 / 3


@dataclass
class Attacker:
    attack: Any  # fednode.aggregators.attacks.UpdateAttack | DataAttack
    timing: Timing = "current"
    colluders: frozenset[str] = frozenset()
    # Honest updates of the last round this node aggregated (sender -> delta), for "previous"
    # timing and as the fallback when a round has too few.
    previous: dict[str, torch.Tensor] = field(default_factory=dict)
    _skipped: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.timing not in TIMINGS:
            raise ValueError(f"attack timing must be one of {', '.join(TIMINGS)}, got {self.timing!r}")

    @property
    def kind(self) -> str:
        return str(self.attack.kind)

    @property
    def name(self) -> str:
        return str(self.attack.name)

    def copies(self) -> int:
        """Byzantine members sending this vector (this one and its colluders)."""
        return len(self.colluders) + 1

    def for_rule(self, aggregator: Any) -> Attacker:
        """Bind the federation's rule (adaptive attacks need it)."""
        if self.kind == "update":
            self.attack = self.attack.for_rule(aggregator, self.copies())
        return self

    def is_colluder(self, peer_id: str, display_name: str = "") -> bool:
        return peer_id in self.colluders or bool(display_name and display_name in self.colluders)

    def honest(self, updates: Mapping[str, torch.Tensor], own_peer_id: str,
               names: Mapping[str, str]) -> dict[str, torch.Tensor]:
        """The updates of `updates` that come from honest members (not us, not a colluder)."""
        return {peer: delta for peer, delta in updates.items()
                if peer != own_peer_id and not self.is_colluder(peer, names.get(peer, ""))}

    def remember(self, honest: Mapping[str, torch.Tensor]) -> None:
        """The honest updates of the round just aggregated."""
        self.previous = dict(honest)

    def forge(self, number: int, current: Mapping[str, torch.Tensor], own: torch.Tensor) -> torch.Tensor:
        """The update to send for round `number`, from the honest updates seen (`current`, this
        round's; ignored in "previous" timing) and this node's own honest update."""
        needed = int(self.attack.minimum_honest())
        rows = [] if self.timing == "previous" else [current[p] for p in sorted(current)]
        if len(rows) < needed:
            rows = [self.previous[p] for p in sorted(self.previous)] or rows
        if len(rows) < needed:
            rows = [*rows, own]
        if len(rows) < needed:
            if number not in self._skipped:
                self._skipped.add(number)
                log.warning("attack %r skipped in round %d: it needs %d honest update(s), this node has %d; "
                            "sending its honest update", self.name, number, needed, len(rows))
            return own
        return self.attack(torch.stack([row.to(own.dtype) for row in rows])).to(torch.float32)


def build_attacker(name: str, params: Mapping[str, Any], timing: str = "current",
                   colluders: list[str] | tuple[str, ...] = ()) -> Attacker | None:
    """The configured attacker, or None for an honest node (ValueError on bad settings)."""
    if not name:
        return None
    from fednode.aggregators import attacks

    return Attacker(attacks.build(name, **dict(params)), timing, frozenset(colluders))  # type: ignore[arg-type]
