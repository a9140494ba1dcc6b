"""Shared fixtures for the aggregation tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# Spec section 6: rows 0-4 honest, rows 5-6 outliers.
ORACLE_ROWS = [
    [1.0, 2.0, 3.0, 4.0, 5.0],
    [1.5, 1.8, 2.9, 4.2, 4.8],
    [0.9, 2.2, 3.1, 3.9, 5.1],
    [1.1, 2.1, 2.8, 4.1, 5.2],
    [1.2, 1.9, 3.2, 3.8, 4.9],
    [10.0, -10.0, 10.0, -10.0, 10.0],
    [-5.0, 7.0, -3.0, 8.0, -6.0],
]


@pytest.fixture
def oracle_matrix() -> torch.Tensor:
    return torch.tensor(ORACLE_ROWS, dtype=torch.float64)


@pytest.fixture
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Tests that change torch's thread count get it back afterwards."""
    previous = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(previous)
