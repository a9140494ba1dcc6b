"""The numerical building blocks: float64 accuracy where cancellation bites, the thread-local BLAS
pin, fused passes that must equal their unfused definitions."""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
import pytest
import torch

from fednode.aggregators import CallContext, build, numerics
from fednode.aggregators.coordinatewise import trimmed_mean_reducer
from fednode.aggregators.krum import mean_around_median
from fednode.aggregators.nnm import mixed_column_rule, nearest_neighbour_mixing

needs_mkl = pytest.mark.skipif(not numerics.blas_available(), reason="torch's BLAS is not MKL")


def near_duplicates(noise: float, d: int = 200_000) -> torch.Tensor:
    """Float32 rows equal to a common vector up to `noise` relative noise (the ALIE case)."""
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(d, generator=generator, dtype=torch.float64)
    rows = [base + noise * torch.randn(d, generator=generator, dtype=torch.float64) for _ in range(5)]
    return torch.stack(rows).to(torch.float32)


def one_minus_cos2(gram: np.ndarray) -> np.ndarray:
    diagonal = np.diagonal(gram)
    return 1.0 - gram**2 / np.outer(diagonal, diagonal)


def reference_gram(rows: torch.Tensor) -> np.ndarray:
    """Gram matrix in extended precision (80-bit long double products and sums)."""
    values = rows.numpy().astype(np.longdouble)
    return np.array([[np.sum(a * b) for b in values] for a in values])


@pytest.mark.parametrize(("noise", "float32_error"), [(1e-3, 1e-3), (1e-5, 1.0)])
def test_gram_keeps_one_minus_cos2_of_near_duplicates(
    noise: float, float32_error: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spec 7.2: 1 - cos^2 of near-identical rows (about 2e-6 and 2e-10 here) is pure
    cancellation. Both float64 Grams (BLAS and the BLAS-free fallback) keep it within float64's
    rounding-error bound for a d-term sum, sqrt(d) * eps / (1 - cos^2): how close to that bound
    depends on the BLAS's summation order, which differs between CPUs (MKL on an AMD EPYC sums
    ~25x less favourably than on Intel here, still 4x inside the bound). The rejected
    alternative, float32 GEMM per 8,192-column block with the blocks added in float64, is off by
    more than 1e-3 at 2e-6 and by more than 100% at 2e-10."""
    rows = near_duplicates(noise)
    exact = one_minus_cos2(reference_gram(rows))
    off_diagonal = ~np.eye(5, dtype=bool)
    float64_bound = np.sqrt(rows.shape[1]) * np.finfo(np.float64).eps / exact[off_diagonal].min()

    def relative_error(gram: torch.Tensor) -> float:
        estimate = one_minus_cos2(np.asarray(gram.numpy(), dtype=np.longdouble))
        return float((np.abs(estimate - exact)[off_diagonal] / exact[off_diagonal]).max())

    blas = relative_error(numerics.gram(rows, centered=False))
    assert blas < float64_bound
    monkeypatch.setattr(numerics, "USE_BLAS", False)
    assert relative_error(numerics.gram(rows, centered=False)) < float64_bound
    blocks = sum(
        (rows[:, cols] @ rows[:, cols].T).double() for cols in numerics.column_blocks(rows.shape[1])
    )
    assert relative_error(blocks) > max(float32_error, 100 * float64_bound)


@pytest.mark.parametrize("layout", ["float32", "float64", "float16", "bfloat16", "strided columns", "row subset"])
@pytest.mark.parametrize("extra_rows", [0, 1, 3])
@pytest.mark.parametrize("centered", [False, True])
def test_gram_loads_every_input_layout_exactly(layout: str, extra_rows: int, centered: bool) -> None:
    """The Gram pass copies blocks coordinate-major: through MKL's transpose for contiguous
    float32 rows, through numpy or torch otherwise, and `extra` rows (another loader, another
    row count, sharing the staging buffer) beside them. Every path must give the float64 Gram
    of the exact input values, with d not a multiple of the block size."""
    generator = torch.Generator().manual_seed(3)
    d = 2 * numerics.COLUMN_BLOCK + 123
    base = torch.randn(8, 3 * d, generator=generator)
    rows = {
        "float32": base[:6, :d].contiguous(),
        "float64": base[:6, :d].double(),
        "float16": base[:6, :d].half(),
        "bfloat16": base[:6, :d].bfloat16(),
        "strided columns": base[:6, ::3],
        "row subset": base[::2, :d],
    }[layout]
    extra = torch.randn(extra_rows, rows.shape[1], generator=generator) if extra_rows else None
    gram, norms = numerics.gram_and_norms(rows, centered=centered, extra=extra)
    exact = rows.double() if extra is None else torch.cat([rows.double(), extra.double()])
    if centered:
        exact = exact - rows.double().mean(dim=0)
    torch.testing.assert_close(gram, exact @ exact.T, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(norms, (rows.double() ** 2).sum(dim=1), rtol=1e-12, atol=0.0)


def test_centred_gram_norms_are_the_row_norms() -> None:
    rows = near_duplicates(1e-2, d=50_000) * 3.0 + 1.0
    gram, norms = numerics.gram_and_norms(rows, centered=True)
    torch.testing.assert_close(norms, numerics.row_squared_norms(rows), rtol=1e-12, atol=0.0)
    distances = numerics.squared_distances(gram)
    direct = torch.stack([((rows.double() - row.double()) ** 2).sum(dim=1) for row in rows])
    torch.testing.assert_close(distances, direct, rtol=1e-9, atol=0.0)


@needs_mkl
def test_blas_pin_is_thread_local(restore_threads: None) -> None:
    """The pin sets MKL's count for the calling thread only: another thread (the training loop)
    keeps its threads, and torch's process-wide setting never changes."""
    library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    max_threads = library.MKL_Get_Max_Threads
    max_threads.restype = ctypes.c_int
    torch.set_num_threads(2)
    pinned, release = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def aggregating_thread() -> None:
        with numerics.single_threaded_blas():
            seen["inside"] = max_threads()
            pinned.set()
            release.wait(timeout=30)
        seen["after"] = max_threads()

    thread = threading.Thread(target=aggregating_thread)
    thread.start()
    assert pinned.wait(timeout=30)
    seen["other thread"] = max_threads()
    seen["torch"] = torch.get_num_threads()
    release.set()
    thread.join()
    assert seen == {"inside": 1, "other thread": 2, "torch": 2, "after": 2}


def test_run_tasks_reraises_worker_errors(restore_threads: None) -> None:
    torch.set_num_threads(2)

    def work(scratch: numerics.Scratch, task: int) -> None:
        if task == 37:
            raise ValueError("task 37")

    with pytest.raises(ValueError, match="task 37"):
        numerics.run_tasks(range(64), work, workers=2)


def sorted_reference(values: np.ndarray, count: int) -> np.ndarray:
    """Bulyan's coordinate step column by column, straight from its definition."""
    out = []
    for column in values.T:
        ordered = np.sort(column)
        total = len(ordered)
        median = (ordered[(total - 1) // 2] + ordered[total // 2]) / 2.0
        costs = [
            max(abs(ordered[w] - median), abs(ordered[w + count - 1] - median)) for w in range(total - count + 1)
        ]
        start = int(np.argmin(costs))  # first minimum
        out.append(ordered[start : start + count].sum() / count)
    return np.array(out)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_mean_around_median_matches_its_definition_with_ties(count: int) -> None:
    generator = torch.Generator().manual_seed(count)
    rows = torch.randint(-3, 4, (7, 5000), generator=generator).to(torch.float32)  # many ties
    rows[0, :10] = 1e30  # a huge outlier never enters a window
    result = numerics.map_sorted_columns(rows, mean_around_median(count))
    np.testing.assert_array_equal(result.numpy(), sorted_reference(rows.numpy(), count).astype(np.float32))


def test_nnm_fused_with_a_coordinatewise_base_equals_mixing_then_the_base() -> None:
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(9, 3 * numerics.COLUMN_BLOCK + 11, generator=generator)
    rows[:2] *= 10.0
    fused = mixed_column_rule(rows, 2, CallContext(), trimmed_mean_reducer(2))
    mixed = nearest_neighbour_mixing(rows, 2)
    assert torch.equal(fused, build("trimmed_mean", f=2)(mixed).aggregate)
    assert torch.equal(fused, build("nnm", f=2, base="trimmed_mean")(rows).aggregate)
