"""Deterministic numerical building blocks shared by the rules.

Determinism contract (same input, same torch build and CPU ISA -> bit-identical output, whatever
`torch.get_num_threads()` is):

* Every reduction over the model dimension d (Gram matrices, row norms, weighted sums of rows)
  runs over fixed column blocks of `COLUMN_BLOCK` coordinates, accumulated in a fixed order. The
  block size is part of the contract: changing it changes low-order bits.
* Inside a block the reduction is a float64 BLAS call (MKL dgemm/dgemv, through torch.mm/mv),
  pinned to ONE MKL thread for the calling thread only (`mkl_set_num_threads_local`, see
  `single_threaded_blas`). MKL splits a product's reduction between its threads, so an unpinned
  float64 Gram block differs between 1 and 2 threads (measured, and asserted by the tests); with
  one thread its summation order is fixed. The pin is thread-local: it leaves
  `torch.get_num_threads()`, MKL's global setting and every other thread (the training loop)
  alone, needs no lock, and costs two ctypes calls per function.
* Without MKL's thread-local control (a torch build whose BLAS is not MKL) the same quantities are
  computed without BLAS: elementwise float64 products followed by torch reductions that have at
  least two outputs or fewer than 32,768 elements (torch then parallelises over outputs only).
  About 5x slower, equally deterministic; the bits differ from the BLAS path.
* Everything that involves cancellation (Gram matrices, distances, sums of many terms) runs in
  float64. Products of two float32 numbers are exact in float64.
* Elementwise operations (conversion, centring, min/max) are exact or correctly rounded, so
  torch may split them between threads freely.
* Order statistics use a sorting network of `torch.minimum`/`torch.maximum`, which is exact.
* Ties in a selection are broken by row index (stable argsort).

Why not the alternatives (measured at n=16, d=1e7 on the 2-core development VM, see
docs/aggregators.md): wrapping BLAS in `torch.set_num_threads(1)` changes process-wide state that
the training thread reads concurrently; float32 GEMM per block with float64 accumulation of the
blocks loses the 1 - cos^2 of near-duplicate rows (spec section 7.2) at any block size that makes
BLAS worthwhile; an exact (Ozaki) split needs 5-8 elementwise passes per block and was slower than
the elementwise Gram it replaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Iterator, Sequence

import torch

WORK_DTYPE = torch.float64
# Coordinates per block. 8,192 float64 columns of 16 rows (1 MiB) stay in the 2 MiB L2 of the
# development VM; 4,096 and 16,384 measured within noise of it.
COLUMN_BLOCK = 8_192
# Gram blocks with at most this many pairwise products are computed in one broadcast (elementwise
# path only: fewer Python-level operations for small n); larger ones row by row.
BROADCAST_LIMIT = 1 << 18
# Sorting is exact, so its block size only affects speed and memory.
SORT_BLOCK = 65_536


# ---------------------------------------------------------------------- BLAS thread pinning


def _mkl_local_thread_setter() -> Callable[[int], int] | None:
    """MKL's `MKL_Set_Num_Threads_Local` from the MKL that torch links, or None.

    Only when torch's BLAS is MKL (otherwise pinning MKL would not pin the BLAS torch calls).
    """
    if "BLAS_INFO=mkl" not in torch.__config__.show():
        return None
    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        handle = ctypes.CDLL(library)  # already loaded by torch: dlopen returns the same handle
        setter = handle.MKL_Set_Num_Threads_Local  # C interface (the lower-case one is Fortran's)
    except (OSError, AttributeError):
        return None
    setter.argtypes = [ctypes.c_int]
    setter.restype = ctypes.c_int
    return setter


_SET_LOCAL_THREADS = _mkl_local_thread_setter()
# Tests switch this off to exercise the elementwise path.
USE_BLAS = _SET_LOCAL_THREADS is not None


def blas_available() -> bool:
    """True when reductions over d use single-threaded MKL (the fast path)."""
    return USE_BLAS and _SET_LOCAL_THREADS is not None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Pin MKL to one thread for the calling thread until the block exits.

    Thread-local (MKL keeps a per-thread override of its global thread count), re-entrant, and
    restored on exit, so concurrent aggregations and the training thread are unaffected.
    """
    setter = _SET_LOCAL_THREADS
    if setter is None:
        yield
        return
    previous = setter(1)  # previous thread-local value; 0 means "follow the global setting"
    try:
        yield
    finally:
        setter(previous)


# ---------------------------------------------------------------------- blocks and dtypes


def result_dtype(matrix: torch.Tensor) -> torch.dtype:
    """Dtype rules write their d-vector in: the input's, at least float32. Each block is computed
    in float64 and rounded once, so no float64 d-vector is ever materialised."""
    return torch.promote_types(matrix.dtype, torch.float32)


def column_blocks(d: int, block: int = COLUMN_BLOCK) -> Iterator[slice]:
    """Fixed, contiguous coordinate blocks covering range(d)."""
    for start in range(0, d, block):
        yield slice(start, min(start + block, d))


def _work_buffer(rows: int, d: int, device: torch.device) -> torch.Tensor:
    """Float64 scratch for one column block of `rows` rows (reused for every block)."""
    return torch.empty(rows, min(d, COLUMN_BLOCK), dtype=WORK_DTYPE, device=device)


def finite_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Boolean mask of rows whose entries are all finite."""
    mask = torch.ones(matrix.shape[0], dtype=torch.bool, device=matrix.device)
    for cols in column_blocks(matrix.shape[1], SORT_BLOCK):
        mask &= torch.isfinite(matrix[:, cols]).all(dim=1)
    return mask


# ---------------------------------------------------------------------- reductions over d


def row_squared_norms(matrix: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of every row, float64. A non-finite entry only affects its own row."""
    n, d = matrix.shape
    acc = torch.zeros(n, dtype=WORK_DTYPE, device=matrix.device)
    if not blas_available():
        for cols in column_blocks(d):
            block = matrix[:, cols].to(WORK_DTYPE)
            acc += (block * block).sum(dim=1)
        return acc
    buffer = _work_buffer(n, d, matrix.device)
    for cols in column_blocks(d):
        block = buffer[:, : cols.stop - cols.start]
        block.copy_(matrix[:, cols])
        # n outputs (or one output of < 32,768 elements): each summed serially, in one order.
        acc += torch.linalg.vector_norm(block, dim=1).square_()
    return acc


def row_squared_distances_to(matrix: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every row of `matrix` to the d-vector `point`, float64."""
    n, d = matrix.shape
    acc = torch.zeros(n, dtype=WORK_DTYPE, device=matrix.device)
    buffer = _work_buffer(n, d, matrix.device)
    for cols in column_blocks(d):
        block = buffer[:, : cols.stop - cols.start]
        block.copy_(matrix[:, cols])
        block.sub_(point[cols].to(WORK_DTYPE))
        acc += torch.linalg.vector_norm(block, dim=1).square_() if blas_available() else (block * block).sum(1)
    return acc


def gram(matrix: torch.Tensor, *, centered: bool, extra: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 Gram matrix of the rows of `matrix` (and of `extra` appended below them).

    With `centered=True` every coordinate is first shifted by the mean of the rows of `matrix`
    (not of `extra`). Inner products then change but every distance stays the same, and the
    cancellation in ||a||^2 + ||b||^2 - 2<a, b> is relative to the spread of the rows instead of
    their magnitude.
    """
    return gram_and_norms(matrix, centered=centered, extra=extra)[0]


def gram_and_norms(
    matrix: torch.Tensor, *, centered: bool, extra: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`gram(...)` and, from the same pass over the data, the (uncentred) squared row norms of
    `matrix` in float64.

    Uncentred: the norms are the Gram diagonal. Centred: ||x_i||^2 = ||x_i - c||^2 +
    2 <x_i - c, c> + ||c||^2 with c the per-block centre, whose two extra terms cost one matrix-vector
    product and one dot product per block. A non-finite row can spoil every entry (the centre
    mixes the rows); callers check the norms and recompute on the kept rows.
    """
    if not blas_available():
        return _gram_elementwise(matrix, centered=centered, extra=extra)
    n, d = matrix.shape
    m = n + (0 if extra is None else extra.shape[0])
    device = matrix.device
    acc = torch.zeros(m, m, dtype=WORK_DTYPE, device=device)
    cross = torch.zeros(m, dtype=WORK_DTYPE, device=device)
    centre_squared = torch.zeros((), dtype=WORK_DTYPE, device=device)
    buffer = _work_buffer(m + 1, d, device)  # rows, extra rows, then the block's centre
    mean_weights = torch.full((n,), 1.0 / n, dtype=WORK_DTYPE, device=device)
    with single_threaded_blas():
        for cols in column_blocks(d):
            block = buffer[:, : cols.stop - cols.start]
            rows = block[:m]
            rows[:n].copy_(matrix[:, cols])
            if extra is not None:
                rows[n:].copy_(extra[:, cols])
            if centered:
                centre = block[m]
                torch.mv(rows[:n].T, mean_weights, out=centre)
                rows.sub_(centre)
                cross += torch.mv(rows, centre)
                centre_squared += torch.dot(centre, centre)
            acc += torch.mm(rows, rows.T)
    norms = acc.diagonal()[:n].clone()
    if centered:
        norms += 2.0 * cross[:n] + centre_squared
    return acc, norms.clamp_min_(0.0)


def _gram_elementwise(
    matrix: torch.Tensor, *, centered: bool, extra: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BLAS-free `gram_and_norms` (fallback when MKL cannot be pinned to one thread)."""
    n = matrix.shape[0]
    m = n + (0 if extra is None else extra.shape[0])
    acc = torch.zeros(m, m, dtype=WORK_DTYPE, device=matrix.device)
    norms = torch.zeros(n, dtype=WORK_DTYPE, device=matrix.device)
    for cols in column_blocks(matrix.shape[1]):
        block = matrix[:, cols].to(WORK_DTYPE)
        if centered:
            norms += (block * block).sum(dim=1)
        if extra is not None:
            block = torch.cat([block, extra[:, cols].to(WORK_DTYPE)])
        if centered:
            block = block - block[:n].sum(dim=0) / n
        if m * m * block.shape[1] <= BROADCAST_LIMIT:
            acc += torch.triu((block[:, None, :] * block[None, :, :]).sum(dim=-1))
        else:
            for i in range(m):
                acc[i, i:] += (block[i:] * block[i]).sum(dim=1)
    acc = acc + torch.triu(acc, diagonal=1).T
    return acc, (norms if centered else acc.diagonal()[:n].clone())


def row_combination(
    matrix: torch.Tensor,
    coefficients: torch.Tensor,
    *,
    extra: torch.Tensor | None = None,
    extra_coefficients: torch.Tensor | None = None,
) -> torch.Tensor:
    """d-vector sum_i coefficients[i] * matrix[i] (+ the same over `extra`'s rows), accumulated in
    float64 per block and stored in `result_dtype(matrix)`."""
    n, d = matrix.shape
    device = matrix.device
    out = torch.empty(d, dtype=result_dtype(matrix), device=device)
    weights = coefficients.to(device=device, dtype=WORK_DTYPE)
    if extra is not None and extra_coefficients is not None:
        weights = torch.cat([weights, extra_coefficients.to(device=device, dtype=WORK_DTYPE)])
    else:
        extra = None
    m = weights.shape[0]
    if not blas_available():
        for cols in column_blocks(d):
            block = matrix[:, cols].to(WORK_DTYPE)
            if extra is not None:
                block = torch.cat([block, extra[:, cols].to(WORK_DTYPE)])
            out[cols] = (block * weights[:, None]).sum(dim=0)
        return out
    buffer = _work_buffer(m, d, device)
    combined = torch.empty(buffer.shape[1], dtype=WORK_DTYPE, device=device)
    with single_threaded_blas():
        for cols in column_blocks(d):
            width = cols.stop - cols.start
            block = buffer[:, :width]
            block[:n].copy_(matrix[:, cols])
            if extra is not None:
                block[n:].copy_(extra[:, cols])
            result = combined[:width]
            torch.mv(block.T, weights, out=result)
            out[cols] = result
    return out


def mix_rows(
    matrix: torch.Tensor, mixing: torch.Tensor, consume: Callable[[slice, torch.Tensor], object]
) -> None:
    """Call consume(columns, block) for every column block, with block = mixing @ matrix[:, columns]
    (k x width, float64; the tensor is reused for the next block, so copy what you keep)."""
    n, d = matrix.shape
    device = matrix.device
    weights = mixing.to(device=device, dtype=WORK_DTYPE)
    if not blas_available():
        for cols in column_blocks(d):
            block = matrix[:, cols].to(WORK_DTYPE)
            consume(cols, torch.stack([(block * weights[i][:, None]).sum(dim=0) for i in range(weights.shape[0])]))
        return
    buffer = _work_buffer(n, d, device)
    mixed = _work_buffer(weights.shape[0], d, device)
    with single_threaded_blas():
        for cols in column_blocks(d):
            width = cols.stop - cols.start
            block = buffer[:, :width]
            block.copy_(matrix[:, cols])
            result = mixed[:, :width]
            torch.mm(weights, block, out=result)
            consume(cols, result)


# ---------------------------------------------------------------------- n x n algebra


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


# ---------------------------------------------------------------------- order statistics


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
