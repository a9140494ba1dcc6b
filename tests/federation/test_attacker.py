"""The Byzantine member's logic (node/federation/attacker.py): which updates are honest, timing
modes, and too few honest rows."""

from __future__ import annotations

import logging

import pytest
import torch

from fednode.aggregators import attacks, build
from fednode.node.federation.attacker import Attacker, build_attacker

ROWS = {f"peer-{i}": torch.full((4,), float(i)) for i in range(4)}


def test_colluders_and_itself_are_not_honest() -> None:
    attacker = build_attacker("sign_flip", {}, colluders=["node-5", "peer-3"])
    assert attacker is not None and attacker.copies() == 3
    names = {"peer-2": "node-5"}
    assert set(attacker.honest(ROWS, "peer-0", names)) == {"peer-1"}  # peer-2 by name, peer-3 by id


def test_current_timing_forges_from_the_rounds_updates_previous_from_the_last_rounds() -> None:
    own = torch.zeros(4)
    current = build_attacker("sign_flip", {}, timing="current")
    previous = build_attacker("sign_flip", {}, timing="previous")
    for attacker in (current, previous):
        assert attacker is not None
        attacker.remember({"peer-9": torch.full((4,), 10.0)})
    honest = {p: ROWS[p] for p in ("peer-1", "peer-2")}
    assert torch.equal(current.forge(3, honest, own), torch.full((4,), -1.5))
    assert torch.equal(previous.forge(3, honest, own), torch.full((4,), -10.0))


def test_alie_with_too_few_honest_rows_falls_back_instead_of_failing(caplog: pytest.LogCaptureFixture) -> None:
    """ALIE needs two honest rows. With one in the round it takes the previous round's; with
    none there it adds its own honest update; with still too few it sends its honest update
    and says so (the daemon used to exit with AttackError)."""
    attacker = build_attacker("alie", {"z": 1.0})
    assert attacker is not None
    own = torch.full((4,), 5.0)
    one = {"peer-1": torch.full((4,), 1.0)}
    torch.testing.assert_close(attacker.forge(1, one, own), attacks.build("alie", z=1.0)(torch.stack([one["peer-1"], own])))
    attacker.remember({"peer-1": torch.full((4,), 1.0), "peer-2": torch.full((4,), 3.0)})
    torch.testing.assert_close(attacker.forge(2, one, own), torch.full((4,), 2.0 - 2.0 ** 0.5))
    lonely = Attacker(attacks.build("alie", z=1.0))
    with caplog.at_level(logging.WARNING, logger="fednode.attack"):
        assert torch.equal(lonely.forge(3, {}, own), own)
    assert "attack 'alie' skipped in round 3: it needs 2 honest update(s), this node has 1" in caplog.text


def test_the_rule_in_use_is_bound_for_adaptive_attacks() -> None:
    attacker = build_attacker("adaptive_min_max", {}, colluders=["node-6"])
    assert attacker is not None
    attacker.for_rule(build("multi_krum", f=2))
    assert attacker.attack.aggregator is not None and attacker.attack.copies == 2
    with pytest.raises(ValueError, match="timing"):
        Attacker(attacks.build("ipm"), timing="later")  # type: ignore[arg-type]
