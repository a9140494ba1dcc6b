"""Bit-identical results across runs and torch thread counts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from fednode.aggregators import AggregationResult, build
from fednode.aggregators.numerics import COLUMN_BLOCK

RULES: list[tuple[str, dict[str, Any]]] = [
    ("mean", {}),
    ("median", {"f": 2}),
    ("trimmed_mean", {"f": 2}),
    ("krum", {"f": 2}),
    ("multi_krum", {"f": 2}),
    ("bulyan", {"f": 2}),
    ("geometric_median", {"f": 2}),
    ("centered_clipping", {"tau": 5.0, "iters": 3}),
    ("nnm", {"f": 2, "base": "trimmed_mean"}),
    ("flag", {"iters": 3}),
    ("flag", {"r": 3, "lam": 1.0, "iters": 2}),
    ("gas", {"f": 2, "base": "krum", "p": 7}),
    ("gas", {"f": 2, "base": "bulyan", "p": 3}),
]


@pytest.fixture
def restore_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def updates(dtype: torch.dtype) -> torch.Tensor:
    # d spans two column blocks (the second one partial); 11 x d is well above torch's parallel
    # grain size, so with two threads every reduction is split between them.
    generator = torch.Generator().manual_seed(123)
    rows = torch.randn(11, COLUMN_BLOCK + 4321, generator=generator, dtype=torch.float64)
    rows[:2] = rows[:2] * 5.0 + 2.0  # a couple of outliers
    rows[2] = rows[3]  # an exact duplicate (ALIE-style): ties must break by index
    return rows.to(dtype)


def run_all(matrix: torch.Tensor) -> list[AggregationResult]:
    center = matrix[5] * 0.5
    results = []
    for name, params in RULES:
        call: dict[str, Any] = {"seed": 2024}
        if name == "centered_clipping":
            call["center"] = center
        results.append(build(name, **params)(matrix, **call))
    return results


def assert_identical(first: list[AggregationResult], second: list[AggregationResult]) -> None:
    for (name, _), a, b in zip(RULES, first, second, strict=True):
        assert torch.equal(a.aggregate, b.aggregate), name
        assert (a.scores is None) == (b.scores is None), name
        if a.scores is not None:
            assert torch.equal(a.scores, b.scores), name
        assert a.selected == b.selected, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bit_identical_across_thread_counts(dtype: torch.dtype, restore_threads: None) -> None:
    matrix = updates(dtype)
    torch.set_num_threads(2)
    double = run_all(matrix)
    torch.set_num_threads(1)
    single = run_all(matrix)
    assert_identical(single, double)
    assert_identical(single, run_all(matrix.clone()))


def test_duplicate_rows_tie_break_by_index() -> None:
    matrix = updates(torch.float64)[2:]  # rows 0 and 1 of this slice are identical
    result = build("krum", f=0)(torch.cat([matrix[:1], matrix]))  # rows 0, 1, 2 identical
    assert result.scores is not None
    assert float(result.scores[0]) == float(result.scores[1]) == float(result.scores[2])
    order = torch.argsort(result.scores, stable=True).tolist()
    assert order.index(0) < order.index(1) < order.index(2)
