"""The attacks module: formulas, the min-max / min-sum search, the registry."""

from __future__ import annotations

import math

import pytest
import torch

from fednode.aggregators import attacks, build


def honest_rows(n: int = 6, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1.0


@pytest.mark.parametrize(("n", "f", "z"), [(10, 2, 0.2533), (10, 3, 0.5244)])
def test_alie_z_max(n: int, f: int, z: float) -> None:
    assert attacks.alie_z_max(n, f) == pytest.approx(z, abs=1e-4)


def test_alie_vector_uses_the_sample_std() -> None:
    honest = honest_rows()
    expected = honest.mean(dim=0) - 0.5244 * honest.std(dim=0, correction=1)
    torch.testing.assert_close(attacks.build("alie", n=10, f=3)(honest), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(attacks.build("alie", z=1.5)(honest), honest.mean(0) - 1.5 * honest.std(0))


def test_alie_needs_z_or_n_and_f() -> None:
    with pytest.raises(attacks.AttackError, match="needs z"):
        attacks.build("alie")
    with pytest.raises(attacks.AttackError, match="at least 2 honest"):
        attacks.build("alie", z=1.0)(honest_rows(n=1))


def test_mean_based_attacks() -> None:
    honest = honest_rows()
    mu = honest.mean(dim=0)
    torch.testing.assert_close(attacks.build("ipm", eps=0.1)(honest), -0.1 * mu)
    torch.testing.assert_close(attacks.build("sign_flip")(honest), -mu)
    torch.testing.assert_close(attacks.build("negative_mean")(honest), -10.0 * mu)
    torch.testing.assert_close(attacks.build("negative_mean", k=3.0)(honest), -3.0 * mu)
    assert torch.equal(attacks.build("mimic", index=2)(honest), honest[2])


def test_output_dtype_follows_input() -> None:
    honest = honest_rows().float()
    for name in (
        "alie",
        "ipm",
        "sign_flip",
        "negative_mean",
        "gaussian",
        "min_max",
        "min_sum",
        "mimic",
        "nan",
        "inf",
    ):
        params = {"n": 10, "f": 3} if name == "alie" else {}
        assert attacks.build(name, **params)(honest).dtype == torch.float32, name


def test_gaussian_is_seeded_and_fresh_per_call() -> None:
    honest = honest_rows(d=1000)
    first, second = attacks.build("gaussian", seed=5), attacks.build("gaussian", seed=5)
    a1, b1 = first(honest), second(honest)
    assert torch.equal(a1, b1)
    assert not torch.equal(first(honest), a1)
    assert float(a1.std()) == pytest.approx(1.0, abs=0.1)
    assert float(attacks.build("gaussian", sigma=3.0, mean=2.0)(honest).mean()) == pytest.approx(2.0, abs=0.3)


def test_non_finite_attacks_are_rejected_by_every_rule() -> None:
    honest = honest_rows(n=7)
    for name in ("nan", "inf"):
        byzantine = attacks.build(name)(honest)
        assert not bool(torch.isfinite(byzantine).any())
        updates = torch.cat([byzantine[None].repeat(2, 1), honest])
        result = build("krum", f=2)(updates)
        assert result.rejected == (0, 1) and bool(torch.isfinite(result.aggregate).all())


def test_label_flip() -> None:
    attack = attacks.build("label_flip", num_classes=10)
    assert attack.kind == "data"
    labels = torch.arange(10)
    assert torch.equal(attack.transform_labels(labels), 9 - labels)
    assert torch.equal(attacks.flip_labels(torch.tensor([0, 2]), 3), torch.tensor([2, 0]))
    with pytest.raises(attacks.AttackError):
        attacks.flip_labels(torch.tensor([10]), 10)


def _max_distance(b: torch.Tensor, honest: torch.Tensor) -> float:
    return float((honest - b).norm(dim=1).max())


def _sum_squared(b: torch.Tensor, honest: torch.Tensor) -> float:
    return float(((honest - b) ** 2).sum())


@pytest.mark.parametrize("perturbation", ["unit", "sign", "std"])
def test_min_max_finds_the_largest_admissible_gamma(perturbation: str) -> None:
    honest = honest_rows(n=8, d=20)
    diameter = float(torch.cdist(honest, honest).max())
    attack = attacks.build("min_max", perturbation=perturbation)
    b = attack(honest)
    mu = honest.mean(dim=0)
    direction = attacks.perturbation_direction(honest, perturbation)
    gamma = float((b - mu) @ direction / (direction @ direction))
    assert gamma > 0
    assert _max_distance(b, honest) <= diameter * (1 + 1e-9)
    assert _max_distance(mu + (gamma + 1e-3) * direction, honest) > diameter  # maximal, up to the tolerance


def test_min_sum_finds_the_largest_admissible_gamma() -> None:
    honest = honest_rows(n=8, d=20)
    budget = float((torch.cdist(honest, honest) ** 2).sum(dim=1).max())
    b = attacks.build("min_sum")(honest)
    mu = honest.mean(dim=0)
    direction = attacks.perturbation_direction(honest, "std")
    gamma = float((b - mu) @ direction / (direction @ direction))
    assert gamma > 0
    assert _sum_squared(b, honest) <= budget * (1 + 1e-9)
    assert _sum_squared(mu + (gamma + 1e-3) * direction, honest) > budget


def test_halving_search_converges_to_zero_when_nothing_is_admissible() -> None:
    assert attacks.largest_gamma(lambda gamma: False, 10.0, 1e-5) == pytest.approx(0.0, abs=1e-4)
    assert attacks.largest_gamma(lambda gamma: gamma <= 3.3, 10.0, 1e-5) == pytest.approx(3.3, abs=1e-4)
    assert attacks.largest_gamma(lambda gamma: gamma <= 12.0, 10.0, 1e-5) == pytest.approx(12.0, abs=1e-4)
    single = honest_rows(n=1)
    torch.testing.assert_close(attacks.build("min_max")(single), single[0], rtol=0, atol=1e-9)


def test_attack_registry() -> None:
    catalogue = {info.name: info for info in attacks.available()}
    assert set(catalogue) == {
        "alie", "ipm", "sign_flip", "negative_mean", "gaussian", "label_flip",
        "min_max", "min_sum", "adaptive_min_max", "adaptive_min_sum", "mimic", "nan", "inf",
    }  # fmt: skip
    assert catalogue["label_flip"].kind == "data"
    assert catalogue["ipm"].kind == "update" and catalogue["ipm"].parameters == {"eps": 0.1}
    assert catalogue["min_max"].parameters == {"perturbation": "std", "gamma_init": 10.0, "tol": 1e-5}
    assert catalogue["adaptive_min_max"].parameters == {
        "perturbation": "std", "tol": 1e-3, "copies": 1, "rule": "", "f": 0, "rule_params": None,
    }  # fmt: skip
    with pytest.raises(attacks.AttackError, match="unknown attack"):
        attacks.build("bogus")
    with pytest.raises(attacks.AttackError, match="does not accept"):
        attacks.build("ipm", tau=1.0)
    with pytest.raises(attacks.AttackError, match="2-D"):
        attacks.build("ipm")(torch.zeros(3))
    assert math.isnan(float(attacks.build("nan")(honest_rows())[0]))


# ------------------------------------------------------------------ attacks tailored to the rule


def gamma_of(vector: torch.Tensor, honest: torch.Tensor) -> float:
    """The gamma of mu + gamma * (-sigma) that `vector` is."""
    direction = -honest.std(dim=0, correction=1)
    return float(((vector - honest.mean(dim=0)) * direction).sum() / (direction * direction).sum())


def spread_rows(n: int = 5, d: int = 400, seed: int = 1) -> torch.Tensor:
    # Non-IID-like: a shared direction plus large individual parts.
    generator = torch.Generator().manual_seed(seed)
    return 0.3 + torch.randn(n, d, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name", ["adaptive_min_max", "adaptive_min_sum"])
def test_adaptive_attack_stays_selected_by_the_rule_it_attacks(name: str) -> None:
    """Against Multi-Krum the adaptive vector is the farthest one the rule still selects: it is
    selected, and a 10% larger gamma is not (the search is within its tolerance of the edge)."""
    honest = spread_rows()
    attack = attacks.build(name, rule="multi_krum", f=2, copies=2)
    vector = attack(honest)
    gamma = gamma_of(vector, honest)
    rule = build("multi_krum", f=2)

    def selected(g: float) -> bool:
        b = honest.mean(dim=0) - g * honest.std(dim=0, correction=1)
        chosen = rule(torch.cat([honest, b.expand(2, -1)])).selected
        return any(index >= 5 for index in chosen)

    assert gamma > 0 and selected(gamma) and not selected(1.1 * gamma)


def test_adaptive_attack_goes_further_than_the_agnostic_one_against_a_rule_that_lets_it_in() -> None:
    """The mean never filters anything: the adaptive search ends at the top of its range, twice
    the agnostic attack's gamma; against Multi-Krum it keeps the vector selected, which the
    agnostic budget does not know about."""
    honest = spread_rows()
    agnostic = gamma_of(attacks.build("min_max")(honest), honest)
    against_mean = gamma_of(attacks.build("adaptive_min_max", rule="mean", copies=2)(honest), honest)
    assert against_mean == pytest.approx(2 * agnostic, rel=1e-2)
    against_median = gamma_of(attacks.build("adaptive_min_max", rule="median", f=2, copies=2)(honest), honest)
    assert 0 < against_median < against_mean


def test_adaptive_attacks_bind_the_rule_in_use() -> None:
    honest = spread_rows()
    unbound = attacks.build("adaptive_min_sum")
    with pytest.raises(attacks.AttackError, match="needs the rule it attacks"):
        unbound(honest)
    rule = build("multi_krum", f=2)
    bound = unbound.for_rule(rule, copies=2)
    torch.testing.assert_close(bound(honest), attacks.build("adaptive_min_sum", rule="multi_krum", f=2, copies=2)(honest))
    named = attacks.build("adaptive_min_sum", rule="mean", copies=2)
    assert named.for_rule(rule, copies=2) is named  # a rule named in the parameters wins
    assert attacks.build("ipm").for_rule(rule, copies=2) == attacks.build("ipm")
    with pytest.raises(attacks.AttackError, match="unknown aggregation rule"):
        attacks.build("adaptive_min_max", rule="nope")
    with pytest.raises(attacks.AttackError, match="copies"):
        attacks.build("adaptive_min_max", copies=0)
