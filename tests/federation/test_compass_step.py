"""The fedcompass engine's pure parts: the group step, the fixed-point model, manifest preference,
and the configuration and CLI checks. No daemons here (see test_compass_federation.py)."""

from __future__ import annotations

import itertools

import pytest
import torch

from fednode.aggregators import build as build_aggregator
from fednode.cli.values import parse_factors
from fednode.node.config import load_config
from fednode.node.errors import ConfigError
from fednode.node.federation.compass import (
    compass_step,
    from_fixed,
    group_id_for,
    policy_from_config,
    signer_rank,
    to_fixed,
)
from fednode.node.scheduler import CompassPolicy, staleness_weight

POLICY = CompassPolicy(alpha=0.9, staleness="polynomial", staleness_exponent=0.5, max_staleness=10)
MEAN = build_aggregator("mean")


def _deltas(n: int, d: int = 50, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(d, generator=generator) for _ in range(n)]


def test_step_with_the_mean_equals_the_fedcompass_reference() -> None:
    """alpha * (k/N) * mean of s(tau)-scaled rows == sum_i alpha * s(tau_i) * delta_i / N."""
    deltas = _deltas(3)
    taus = [0, 3, 8]
    entries = [(f"p{i}", 1, delta, tau) for i, (delta, tau) in enumerate(zip(deltas, taus, strict=True))]
    result = compass_step(entries, policy=POLICY, aggregator=MEAN, federation_size=5, seed=1)
    reference = sum(0.9 * staleness_weight(POLICY, t) * d / 5 for d, t in zip(deltas, taus, strict=True))
    assert result.step is not None and result.senders == ("p0", "p1", "p2")
    torch.testing.assert_close(result.step, reference, rtol=1e-5, atol=1e-6)


def test_one_row_per_sender_keeps_the_reference_and_n_is_at_least_the_senders() -> None:
    a1, a2, b = _deltas(3)
    entries = [("a", 1, a1, 2), ("a", 2, a2, 0), ("b", 5, b, 1)]
    result = compass_step(entries, policy=POLICY, aggregator=MEAN, federation_size=1, seed=0)
    # N = 1 is below the 2 senders: it counts as 2, so a small N cannot amplify the step.
    reference = 0.9 * (staleness_weight(POLICY, 2) * a1 + a2 + staleness_weight(POLICY, 1) * b) / 2
    assert result.senders == ("a", "b")
    torch.testing.assert_close(result.step, reference, rtol=1e-5, atol=1e-6)


def test_staleness_is_applied_before_the_robust_rule_and_too_stale_entries_are_ignored() -> None:
    h0, h1, h2 = _deltas(3, seed=3)
    median = build_aggregator("median")
    entries = [("a", 1, h0, 0), ("b", 1, h1, 4), ("c", 1, h2, 0), ("old", 1, torch.full((50,), 40.0), 11)]
    result = compass_step(entries, policy=POLICY, aggregator=median, federation_size=5, seed=0)
    assert result.senders == ("a", "b", "c")  # tau = 11 > max_staleness = 10: not aggregated
    rows = torch.stack([h0, h1 * staleness_weight(POLICY, 4), h2])  # scaled rows go into the rule
    expected = median(rows).aggregate * (0.9 * 3 / 5)
    torch.testing.assert_close(result.step, expected)


def test_rule_failure_and_non_finite_results_give_no_step_on_every_peer() -> None:
    krum = build_aggregator("krum", f=1)  # needs 2f + 3 = 5 rows
    result = compass_step([("a", 1, _deltas(1)[0], 0)], policy=POLICY, aggregator=krum, federation_size=4, seed=0)
    assert result.step is None and "aggregation failed" in result.error
    assert compass_step([], policy=POLICY, aggregator=MEAN, federation_size=4, seed=0).step is None


def test_step_is_bit_identical_whatever_order_the_entries_come_in() -> None:
    deltas = _deltas(4, seed=7)
    entries = [(f"p{i}", i, d, i) for i, d in enumerate(deltas)]
    gas = build_aggregator("gas", f=0, base="krum", p=5)
    steps = {compass_step(list(order), policy=POLICY, aggregator=gas, federation_size=4, seed=42).step.numpy().tobytes()
             for order in itertools.permutations(entries)}
    assert len(steps) == 1


def test_fixed_point_model_is_order_free_and_swaps_are_exact() -> None:
    """The model is initial + sum of group steps in int64 2^-32 units: any application order gives
    the same bits, and replacing a fallback manifest's step by the creator's is exact."""
    initial = to_fixed(torch.randn(1000, generator=torch.Generator().manual_seed(1)))
    steps = [to_fixed(d * 1e-3) for d in _deltas(5, d=1000, seed=2)]
    results = set()
    for order in itertools.permutations(range(5)):
        master = initial.clone()
        for index in order:
            master += steps[index]
        results.add(from_fixed(master).numpy().tobytes())
    assert len(results) == 1
    fallback, creator = steps[0], to_fixed(_deltas(1, d=1000, seed=9)[0] * 1e-3)
    swapped = initial + fallback
    swapped += creator - fallback
    assert torch.equal(swapped, initial + creator)
    assert torch.allclose(from_fixed(to_fixed(torch.tensor([0.1, -3.5]))), torch.tensor([0.1, -3.5]))


def test_group_ids_are_self_certifying_and_the_creator_manifest_is_preferred() -> None:
    group = group_id_for("creator", 1_700_000_000_000)
    assert len(group) == 16 and group != group_id_for("creator", 1_700_000_000_001)
    assert group != group_id_for("other", 1_700_000_000_000)
    ranks = sorted(["x", "creator", "y", "z"], key=lambda p: signer_rank(group, p, "creator"))
    assert ranks[0] == "creator"
    # The fallback order is the same on every peer and nobody can pick it (a hash of group and peer).
    assert ranks[1:] == sorted(["x", "y", "z"], key=lambda p: signer_rank(group, p, "creator"))


# ------------------------------------------------------------------------------------- configuration
def test_fedcompass_config_keys_are_validated_with_clear_errors() -> None:
    config, _ = load_config(None, {"federation.schedule": "fedcompass", "federation.q_min": 5,
                                   "federation.q_max": 40, "federation.staleness": "hinge"}, environ={})
    policy = policy_from_config(config.federation)
    assert (policy.q_min, policy.q_max, policy.staleness, policy.latest_time_factor) == (5, 40, "hinge", 1.5)
    for override, message in [
        ({"federation.q_min": 50, "federation.q_max": 20}, "federation.q_max"),
        ({"federation.schedule": "async"}, "federation.schedule"),
        ({"federation.latest_time_factor": 0.5}, "federation.latest_time_factor"),
        ({"federation.staleness": "inverse"}, "federation.staleness"),
        ({"federation.alpha": 0}, "federation.alpha"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, override, environ={})


def test_launch_slowdowns_parse_and_refuse_bad_factors() -> None:
    assert parse_factors("--slowdowns", "1,2,4,8") == [1.0, 2.0, 4.0, 8.0]
    assert parse_factors("--slowdowns", None) == []
    for bad in ("1,x", "0.5,2", "2000"):
        with pytest.raises(ConfigError, match="slowdowns"):
            parse_factors("--slowdowns", bad)
