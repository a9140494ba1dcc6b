"""Deterministic numerical building blocks shared by the rules.

Determinism contract (same input, same torch build and CPU ISA -> bit-identical output, whatever
`torch.get_num_threads()` is):

* No BLAS for anything that reduces over the model dimension d. MKL/OpenBLAS GEMMs split their
  reductions differently with the thread count (measured: a float64 Gram matrix differs between 1
  and 2 threads). Every reduction here is an elementwise product followed by a torch reduction
  that has at least two outputs or fewer than 32,768 elements. torch parallelises such reductions
  over the outputs only, so each output is summed in the same order whatever the thread count.
* Reductions over d run over fixed column blocks of `COLUMN_BLOCK` coordinates, accumulated in a
  fixed order. The block size is part of the contract: changing it changes low-order bits.
* Everything that involves cancellation (Gram matrices, distances, sums of many terms) runs in
  float64. Products of two float32 numbers are exact in float64.
* Order statistics use a sorting network of `torch.minimum`/`torch.maximum`, which is exact.
* Ties in a selection are broken by row index (stable argsort).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch

WORK_DTYPE = torch.float64
# Below torch's parallel grain size (32,768), so even a single-output reduction over one block
# runs serially; with several outputs torch splits over the outputs only. 8,192 float64 columns of
# 16 rows (1 MiB) stay in L2, which measured fastest for the Gram matrix.
COLUMN_BLOCK = 8_192
# Gram blocks with at most this many pairwise products are computed in one broadcast (fewer
# Python-level operations for small n); larger ones row by row over the upper triangle.
BROADCAST_LIMIT = 1 << 18
# Sorting is exact, so its block size only affects speed and memory.
SORT_BLOCK = 65_536


def result_dtype(matrix: torch.Tensor) -> torch.dtype:
    """Dtype rules write their d-vector in: the input's, at least float32. Each block is computed
    in float64 and rounded once, so no float64 d-vector is ever materialised."""
    return torch.promote_types(matrix.dtype, torch.float32)


def column_blocks(d: int, block: int = COLUMN_BLOCK) -> Iterator[slice]:
    """Fixed, contiguous coordinate blocks covering range(d)."""
    for start in range(0, d, block):
        yield slice(start, min(start + block, d))


def finite_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Boolean mask of rows whose entries are all finite."""
    mask = torch.ones(matrix.shape[0], dtype=torch.bool, device=matrix.device)
    for cols in column_blocks(matrix.shape[1], SORT_BLOCK):
        mask &= torch.isfinite(matrix[:, cols]).all(dim=1)
    return mask


def row_squared_norms(matrix: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of every row, float64."""
    acc = torch.zeros(matrix.shape[0], dtype=WORK_DTYPE, device=matrix.device)
    for cols in column_blocks(matrix.shape[1]):
        block = matrix[:, cols].to(WORK_DTYPE)
        acc += (block * block).sum(dim=1)
    return acc


def row_squared_distances_to(matrix: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every row of `matrix` to the d-vector `point`, float64."""
    acc = torch.zeros(matrix.shape[0], dtype=WORK_DTYPE, device=matrix.device)
    for cols in column_blocks(matrix.shape[1]):
        diff = matrix[:, cols].to(WORK_DTYPE) - point[cols].to(WORK_DTYPE)
        acc += (diff * diff).sum(dim=1)
    return acc


def gram(matrix: torch.Tensor, *, centered: bool, extra: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 Gram matrix of the rows of `matrix` (and of `extra` appended below them).

    With `centered=True` every coordinate is first shifted by the mean of the rows of `matrix`
    (not of `extra`). Inner products then change but every distance stays the same, and the
    cancellation in ||a||^2 + ||b||^2 - 2<a, b> is relative to the spread of the rows instead of
    their magnitude.
    """
    n = matrix.shape[0]
    m = n + (0 if extra is None else extra.shape[0])
    acc = torch.zeros(m, m, dtype=WORK_DTYPE, device=matrix.device)
    for cols in column_blocks(matrix.shape[1]):
        block = matrix[:, cols].to(WORK_DTYPE)
        if extra is not None:
            block = torch.cat([block, extra[:, cols].to(WORK_DTYPE)])
        if centered:
            block = block - block[:n].sum(dim=0) / n
        if m * m * block.shape[1] <= BROADCAST_LIMIT:
            acc += torch.triu((block[:, None, :] * block[None, :, :]).sum(dim=-1))
        else:
            for i in range(m):
                acc[i, i:] += (block[i:] * block[i]).sum(dim=1)
    return acc + torch.triu(acc, diagonal=1).T


def squared_distances(gram_matrix: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances from a Gram matrix; exact zeros on the diagonal."""
    diag = gram_matrix.diagonal()
    dist = (diag[:, None] + diag[None, :] - 2.0 * gram_matrix).clamp_min(0.0)
    dist.fill_diagonal_(0.0)
    return dist


def quadratic_forms(gram_matrix: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """For each row c_k of `coefficients` (k x m), return c_k^T G c_k (float64, k values)."""
    return (small_matmul(coefficients, gram_matrix) * coefficients).sum(dim=1)


def small_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matrix product for small (n x n-sized) operands without BLAS, thread-count independent."""
    return (a.unsqueeze(-1) * b.unsqueeze(0)).sum(dim=-2)


def row_combination(
    matrix: torch.Tensor,
    coefficients: torch.Tensor,
    *,
    extra: torch.Tensor | None = None,
    extra_coefficients: torch.Tensor | None = None,
) -> torch.Tensor:
    """d-vector sum_i coefficients[i] * matrix[i] (+ the same over `extra`'s rows), accumulated in
    float64 per block and stored in `result_dtype(matrix)`."""
    d = matrix.shape[1]
    out = torch.empty(d, dtype=result_dtype(matrix), device=matrix.device)
    weights = coefficients.to(device=matrix.device, dtype=WORK_DTYPE)[:, None]
    for cols in column_blocks(d):
        block = matrix[:, cols].to(WORK_DTYPE) * weights
        if extra is not None and extra_coefficients is not None:
            block = torch.cat(
                [
                    block,
                    extra[:, cols].to(WORK_DTYPE)
                    * extra_coefficients.to(device=matrix.device, dtype=WORK_DTYPE)[:, None],
                ]
            )
        out[cols] = block.sum(dim=0)
    return out


@functools.lru_cache(maxsize=64)
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort comparators for n inputs (pairs (low, high))."""
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    span = 1
    while span < size:
        step = span
        while step >= 1:
            for j in range(step % span, size - step, 2 * step):
                for i in range(min(step, size - j - step)):
                    low, high = i + j, i + j + step
                    if low // (2 * span) == high // (2 * span) and high < n:
                        pairs.append((low, high))
            step //= 2
        span *= 2
    return tuple(pairs)


def sorted_columns(block: torch.Tensor) -> list[torch.Tensor]:
    """Sort every column of a finite (n x c) block ascending; returns the n sorted rows.

    Uses a sorting network of elementwise min/max: exact, and several times faster than
    torch.sort along dim 0 for the small n of aggregation.
    """
    rows = list(block.unbind(0))
    for low, high in sorting_network(len(rows)):
        rows[low], rows[high] = torch.minimum(rows[low], rows[high]), torch.maximum(rows[low], rows[high])
    return rows


def middle_average(sorted_rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Coordinate-wise median of sorted rows; for an even count, the mean of the two middle rows."""
    count = len(sorted_rows)
    low = sorted_rows[(count - 1) // 2].to(WORK_DTYPE)
    if count % 2 == 1:
        return low
    return (low + sorted_rows[count // 2].to(WORK_DTYPE)) / 2.0


def median_value(values: torch.Tensor) -> float:
    """Median of a 1-D tensor; the mean of the two middle values for an even count."""
    ordered = torch.sort(values.to(WORK_DTYPE)).values
    count = ordered.numel()
    return float((ordered[(count - 1) // 2] + ordered[count // 2]) / 2.0)


def stable_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort `scores` ascending; equal scores keep index order."""
    return torch.argsort(scores, stable=True)
