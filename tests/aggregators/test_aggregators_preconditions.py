"""Preconditions, configuration errors and rejection of non-finite or absurd rows."""

from __future__ import annotations

import math

import pytest
import torch

from fednode.aggregators import AggregationError, PreconditionError, build


def rows(n: int, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    ("name", "params", "n_ok", "requirement"),
    [
        ("median", {"f": 2}, 5, "n >= 2f+1"),
        ("trimmed_mean", {"f": 3}, 7, "n >= 2f+1"),
        ("geometric_median", {"f": 2}, 5, "n >= 2f+1"),
        ("krum", {"f": 2}, 7, "n >= 2f+3"),
        ("multi_krum", {"f": 1}, 5, "n >= 2f+3"),
        ("bulyan", {"f": 1}, 7, "n >= 4f+3"),
        ("bulyan", {"f": 2}, 11, "n >= 4f+3"),
        ("nnm", {"f": 2, "base": "krum"}, 7, "n >= 2f+3"),
        ("gas", {"f": 1, "base": "bulyan", "p": 1}, 7, "n >= 4f+3"),
        ("flag", {"r": 3}, 4, "n > r"),
    ],
)
def test_precondition_boundary(name: str, params: dict, n_ok: int, requirement: str) -> None:
    rule = build(name, **params)
    rule(rows(n_ok))  # exactly at the bound: fine
    with pytest.raises(PreconditionError) as caught:
        rule(rows(n_ok - 1))
    error = caught.value
    assert error.rule == name and error.n == n_ok - 1 and error.f == params.get("f", 0)
    message = str(error)
    assert repr(name) in message and f"n={n_ok - 1}" in message and f"f={error.f}" in message
    assert requirement in message
    assert isinstance(error, ValueError)


def test_precondition_is_checked_after_rejection() -> None:
    updates = rows(7)
    build("krum", f=2)(updates)
    updates[3, 1] = math.nan
    with pytest.raises(PreconditionError, match=r"n=6 with f=2 \(1 row\(s\) were rejected"):
        build("krum", f=2)(updates)


def test_multi_krum_m_larger_than_n() -> None:
    with pytest.raises(PreconditionError, match="m=9"):
        build("multi_krum", f=1, m=9)(rows(8))


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nope", {}, "unknown aggregation rule 'nope'"),
        ("krum", {"tau": 1.0}, "does not accept tau"),
        ("krum", {"f": -1}, "f must be a non-negative int"),
        ("krum", {"f": 1.5}, "f must be a non-negative int"),
        ("flag", {"scale": "huge"}, "scale must be"),
        ("flag", {"r": 0}, "r must be a positive int"),
        ("gas", {"p": 0}, "p must be a positive int"),
        ("gas", {"base": "gas"}, "cannot wrap itself"),
        ("nnm", {"base": "nnm"}, "cannot wrap itself"),
        ("nnm", {"base": "unknown"}, "unknown aggregation rule"),
        ("centered_clipping", {"tau": 0.0}, "tau must be > 0"),
        ("mean", {"max_norm": -1.0}, "max_norm must be a positive number"),
    ],
)
def test_configuration_errors(name: str, params: dict, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        build(name, **params)


def test_gas_requires_a_seed_when_the_permutation_matters() -> None:
    rule = build("gas", f=1, base="krum", p=2)
    with pytest.raises(AggregationError, match="pass seed="):
        rule(rows(6, d=10))
    first = rule(rows(6, d=10), seed=7)
    again = rule(rows(6, d=10), seed=7)
    assert torch.equal(first.aggregate, again.aggregate) and torch.equal(first.scores, again.scores)
    other = rule(rows(6, d=10), seed=8)
    assert not torch.equal(first.scores, other.scores)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        ({"weights": [1.0, 2.0, 1.0, 1.0, 1.0]}, "does not use per-row weights"),
        ({"weights": [1.0, 1.0]}, "weights must have shape"),
        ({"weights": [1.0, -1.0, 1.0, 1.0, 1.0]}, "finite and non-negative"),
        ({"center": torch.zeros(4)}, "keeps no centre"),
        ({"seed": -3}, "seed must be an int"),
    ],
)
def test_call_errors(call: dict, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        build("median", f=1)(rows(5), **call)


def test_uniform_weights_are_accepted_by_unweighted_rules() -> None:
    updates = rows(5)
    assert torch.equal(
        build("median")(updates, weights=[2.0] * 5).aggregate, build("median")(updates).aggregate
    )


@pytest.mark.parametrize(
    "bad", [torch.zeros(3), torch.zeros(0, 4), torch.zeros(3, 4, dtype=torch.int64), [[1.0]]]
)
def test_bad_updates(bad: object) -> None:
    with pytest.raises(AggregationError):
        build("mean")(bad)  # type: ignore[arg-type]


def test_weighted_mean() -> None:
    updates = rows(3)
    result = build("mean")(updates, weights=torch.tensor([1.0, 0.0, 3.0]))
    torch.testing.assert_close(result.aggregate, (updates[0] + 3 * updates[2]) / 4)


# --- rejection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "name", ["mean", "median", "trimmed_mean", "krum", "geometric_median", "flag", "gas"]
)
def test_non_finite_rows_are_rejected(bad_value: float, name: str) -> None:
    updates = rows(9)
    poisoned = updates.clone()
    poisoned[2, 3] = bad_value
    poisoned[6] = bad_value
    params = {"f": 1, "base": "krum", "p": 1} if name == "gas" else {"f": 1} if name != "flag" else {}
    rule = build(name, **params)
    result = rule(poisoned)
    assert result.rejected == (2, 6)
    assert bool(torch.isfinite(result.aggregate).all())
    clean = rule(updates[[0, 1, 3, 4, 5, 7, 8]])
    torch.testing.assert_close(result.aggregate, clean.aggregate, rtol=0, atol=0)
    if result.scores is not None:
        assert math.isinf(float(result.scores[2])) and math.isinf(float(result.scores[6]))
        assert bool(torch.isfinite(result.scores[[0, 1, 3, 4, 5, 7, 8]]).all())
    if result.selected is not None:
        assert not {2, 6} & set(result.selected)


def test_absurd_norms_are_rejected() -> None:
    updates = rows(8)
    updates[1] *= 1e5  # > 1e4 x the median norm
    updates[5] = 1e13  # > the 1e12 absolute cap
    result = build("mean")(updates)
    assert result.rejected == (1, 5)
    torch.testing.assert_close(result.aggregate, updates[[0, 2, 3, 4, 6, 7]].mean(dim=0))


def test_rejection_caps_are_configurable() -> None:
    updates = rows(8)
    updates[1] *= 1e5
    assert build("mean", max_norm_ratio=None)(updates).rejected == ()
    assert build("mean", max_norm_ratio=1e6)(updates).rejected == ()
    assert build("mean", max_norm=1.0, max_norm_ratio=None)(updates).rejected == tuple(
        int(i) for i in torch.nonzero(updates.norm(dim=1) > 1.0).flatten()
    )


def test_large_but_plausible_rows_are_kept() -> None:
    updates = rows(8)
    updates[0] *= 100.0  # a -10x or Gaussian-style attack is the rules' job, not sanitation's
    assert build("mean")(updates).rejected == ()


def test_relative_cap_skipped_when_the_median_norm_is_zero() -> None:
    updates = torch.zeros(5, 3)
    updates[4] = 1.0
    assert build("mean")(updates).rejected == ()


def test_all_rows_rejected() -> None:
    with pytest.raises(AggregationError, match="all 3 rows were rejected"):
        build("mean")(torch.full((3, 2), math.nan))


def test_weights_of_rejected_rows_are_dropped() -> None:
    updates = rows(4)
    updates[0] = math.inf
    result = build("mean")(updates, weights=[100.0, 1.0, 1.0, 2.0])
    torch.testing.assert_close(result.aggregate, (updates[1] + updates[2] + 2 * updates[3]) / 4)
