"""is_finite: the finiteness check every update and aggregate goes through (fast path: a sum)."""

from __future__ import annotations

import pytest
import torch

from fednode.node.compression import is_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_finite_values_whose_sum_overflows_are_still_finite(dtype: torch.dtype) -> None:
    huge = torch.finfo(dtype).max
    values = torch.full((1000,), huge, dtype=dtype)
    assert not bool(torch.isfinite(values.sum()))  # the fast path cannot decide: the full check does
    assert is_finite(values)
    assert is_finite(torch.randn(85_002).to(dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("position", [0, 42_000, 85_001])
def test_any_nan_or_inf_anywhere_is_caught(bad: float, position: int) -> None:
    values = torch.randn(85_002)
    values[position] = bad
    assert not is_finite(values)
    assert not is_finite(values.reshape(2, -1))


def test_infinities_that_cancel_in_the_sum_are_caught() -> None:
    values = torch.zeros(10)
    values[2], values[7] = float("inf"), float("-inf")
    assert not is_finite(values)


def test_edge_shapes() -> None:
    assert is_finite(torch.empty(0))
    assert is_finite(torch.tensor(3.0))
    assert not is_finite(torch.tensor(float("nan")))
    assert is_finite(torch.arange(10))  # integers are always finite
