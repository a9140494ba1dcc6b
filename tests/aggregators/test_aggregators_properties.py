"""Property tests (hypothesis): symmetry, translation equivariance, coordinate-wise bounds,
identical inputs."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.aggregators import build

SETTINGS = settings(max_examples=30, deadline=None)


def rule_configurations(n: int) -> list[tuple[str, dict[str, Any]]]:
    """Every rule, with the largest f its precondition allows for n rows (capped at 2)."""
    f_half = min((n - 1) // 2, 2)
    f_krum = max(min((n - 3) // 2, 2), 0)
    f_bulyan = max(min((n - 3) // 4, 2), 0)
    configurations: list[tuple[str, dict[str, Any]]] = [
        ("mean", {}),
        ("median", {"f": f_half}),
        ("trimmed_mean", {"f": f_half}),
        ("geometric_median", {"f": f_half}),
        ("centered_clipping", {"tau": 2.0, "iters": 3}),
        ("nnm", {"f": f_half, "base": "trimmed_mean"}),
        ("flag", {"r": 2, "iters": 3}),
    ]
    if n >= 3:
        configurations += [
            ("krum", {"f": f_krum}),
            ("multi_krum", {"f": f_krum}),
            ("gas", {"f": f_krum, "base": "krum", "p": 1}),
        ]
    if n >= 7:
        configurations.append(("bulyan", {"f": f_bulyan}))
    return configurations


def random_rows(seed: int, n: int, d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Honest cluster plus a couple of far rows; continuous values, so no ties."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d, generator=generator, dtype=torch.float64) + 3.0
    rows[: max(n // 4, 1)] *= 20.0
    return rows.to(dtype)


def assert_close_scaled(
    actual: torch.Tensor, expected: torch.Tensor, scale: float, rtol: float = 1e-7
) -> None:
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rtol * max(scale, 1.0))


shapes = st.tuples(st.integers(min_value=0, max_value=2**31), st.integers(4, 11), st.integers(1, 6))


@SETTINGS
@given(shapes, st.randoms(use_true_random=False))
def test_permutation_invariance(shape: tuple[int, int, int], rng: Any) -> None:
    seed, n, d = shape
    rows = random_rows(seed, n, d)
    order = list(range(n))
    rng.shuffle(order)
    permutation = torch.tensor(order)
    scale = float(rows.abs().max())
    for name, params in rule_configurations(n):
        rule = build(name, **params)
        original = rule(rows)
        permuted = rule(rows[permutation])
        assert_close_scaled(permuted.aggregate, original.aggregate, scale)
        if original.scores is not None:
            assert permuted.scores is not None
            torch.testing.assert_close(
                permuted.scores, original.scores[permutation], rtol=1e-6, atol=1e-9 * scale**2
            )
        if original.selected is not None:
            assert permuted.selected is not None
            assert sorted(order[i] for i in permuted.selected) == list(original.selected)


@SETTINGS
@given(shapes, st.floats(min_value=-50.0, max_value=50.0))
def test_translation_equivariance(shape: tuple[int, int, int], shift_scale: float) -> None:
    seed, n, d = shape
    rows = random_rows(seed, n, d)
    shift = torch.linspace(-1.0, 1.0, d, dtype=torch.float64) * shift_scale
    scale = float(rows.abs().max()) + abs(shift_scale)
    for name, params in rule_configurations(n):
        if name == "flag":
            continue  # scale-free by design: it aggregates unit-normalised rows
        rule = build(name, **params)
        if name == "centered_clipping":
            center = rows[-1] * 0.5
            moved = rule(rows + shift, center=center + shift).aggregate
            expected = rule(rows, center=center).aggregate + shift
        else:
            moved = rule(rows + shift).aggregate
            expected = rule(rows).aggregate + shift
        assert_close_scaled(moved, expected, scale)


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)


@SETTINGS
@given(st.data(), st.integers(1, 4), st.integers(1, 5))
def test_coordinate_rules_stay_within_the_honest_range(data: st.DataObject, f: int, d: int) -> None:
    n = data.draw(st.integers(2 * f + 1, 2 * f + 6))
    honest = torch.tensor(
        data.draw(st.lists(st.lists(finite, min_size=d, max_size=d), min_size=n - f, max_size=n - f))
    )
    byzantine_values = st.floats(min_value=-1e6, max_value=1e6, width=32)
    byzantine = torch.tensor(
        data.draw(st.lists(st.lists(byzantine_values, min_size=d, max_size=d), min_size=f, max_size=f))
    )
    position = data.draw(st.integers(0, n - f))
    rows = torch.cat([honest[:position], byzantine, honest[position:]]).float()
    low, high = honest.min(dim=0).values, honest.max(dim=0).values
    for name in ("median", "trimmed_mean"):
        # Sanitation off: a Byzantine row 1e4 x the honest norms would be rejected, and the
        # precondition would then (rightly) fail on the remaining rows.
        aggregate = build(name, f=f, max_norm=None, max_norm_ratio=None)(rows).aggregate
        assert bool((aggregate >= low).all()) and bool((aggregate <= high).all()), (name, rows, aggregate)


@SETTINGS
@given(st.lists(finite, min_size=1, max_size=6), st.integers(0, 2))
def test_identical_inputs_return_that_input(values: list[float], f: int) -> None:
    row = torch.tensor(values, dtype=torch.float32)
    n = 4 * f + 3
    rows = row.repeat(n, 1)
    for name, params in rule_configurations(n):
        params = {**params, "f": f} if "f" in params else params
        call: dict[str, Any] = {}
        if name == "centered_clipping":
            call["center"] = row  # the centre is a fixed point when every row equals it
        if name == "flag":
            params = {**params, "scale": "norm"}
        aggregate = build(name, **params)(rows, **call).aggregate
        if name == "flag":
            torch.testing.assert_close(aggregate, row, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(aggregate, row), (name, row, aggregate)
