"""Deterministic numerical building blocks shared by the rules.

Determinism contract (same input, same torch build and CPU ISA -> bit-identical output, whatever
`torch.get_num_threads()` is):

* Every reduction over the model dimension d (Gram matrices, row norms, weighted sums of rows)
  runs over fixed column blocks of `COLUMN_BLOCK` coordinates. Each block's contribution is
  computed on its own and the contributions are added in block order (`ordered_sum`). The block
  size is part of the contract: changing it changes low-order bits.
* Inside a block the reduction is a float64 BLAS call (MKL dgemm/dgemv through torch.mm/mv) on
  64-byte aligned scratch, with MKL pinned to ONE thread for the calling thread only
  (`single_threaded_blas`). MKL splits a product's reduction between its threads, so an unpinned
  float64 Gram block differs between 1 and 2 threads (measured, and asserted by the tests); with
  one thread and aligned operands its summation order is fixed. The pin is thread-local: it
  leaves `torch.get_num_threads()`, MKL's global setting and every other thread (the training
  loop) alone, needs no lock, and costs two ctypes calls.
* Blocks may be spread over up to `torch.get_num_threads()` worker threads (`run_tasks`); since
  every block is computed the same way on any thread and the reduction order is fixed, the
  result does not depend on how many there were. Workers do elementwise work with numpy (no
  OpenMP teams inside workers) and BLAS with MKL pinned to one thread.
* Without MKL's thread-local control (a torch build whose BLAS is not MKL) the Gram matrices,
  norms and combinations are computed without BLAS, sequentially: elementwise float64 products
  followed by torch reductions that have at least two outputs or fewer than 32,768 elements
  (torch then parallelises over outputs only). About 5x slower, equally deterministic; the bits
  differ from the BLAS path.
* Everything that involves cancellation (Gram matrices, distances, sums of many terms) runs in
  float64. Products of two float32 numbers are exact in float64.
* Elementwise operations (conversion, centring, min/max) are exact or correctly rounded.
* Order statistics use a sorting network of elementwise min/max, which is exact.
* Ties in a selection are broken by row index (stable argsort).

Why not the alternatives (measured at n=16, d=1e7 on the 2-core development VM, see
docs/aggregators.md): wrapping BLAS in `torch.set_num_threads(1)` changes process-wide state that
the training thread reads concurrently; float32 GEMM per block with float64 accumulation of the
blocks gets 1 - cos^2 of near-duplicate rows wrong by percents (spec section 7.2); an exact
(Ozaki) split needs 5-8 elementwise passes per block and was slower than the elementwise Gram it
replaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch

WORK_DTYPE = torch.float64
# Coordinates per block. 8,192 float64 columns of 16 rows (1 MiB) stay in the 2 MiB L2 of the
# development VM; 4,096 and 16,384 measured within noise of it.
COLUMN_BLOCK = 8_192
# Gram blocks with at most this many pairwise products are computed in one broadcast (elementwise
# path only: fewer Python-level operations for small n); larger ones row by row.
BROADCAST_LIMIT = 1 << 18
# Sorting is exact, so its block size only affects speed and memory.
SORT_BLOCK = 32_768
# A worker thread gets at least this many blocks (below that, thread start-up is not repaid).
MIN_BLOCKS_PER_WORKER = 8

Task = TypeVar("Task")


# ---------------------------------------------------------------------- BLAS thread pinning


def _mkl_library() -> ctypes.CDLL | None:
    """The MKL that torch links (inside libtorch_cpu), or None when torch's BLAS is not MKL
    (pinning or calling another MKL would not affect the BLAS torch calls)."""
    if "BLAS_INFO=mkl" not in torch.__config__.show():
        return None
    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return ctypes.CDLL(library)  # already loaded by torch: dlopen returns the same handle
    except OSError:
        return None


def _mkl_function(name: str, argtypes: Sequence[type], restype: type | None) -> Callable[..., object] | None:
    """An exported C function of torch's MKL, or None."""
    handle = _mkl_library()
    function = getattr(handle, name, None) if handle is not None else None
    if function is not None:
        function.argtypes = list(argtypes)
        function.restype = restype
    return function


def _mkl_local_thread_setter() -> Callable[[int], int] | None:
    """MKL's `MKL_Set_Num_Threads_Local` (the C interface; the lower-case one is Fortran's)."""
    return _mkl_function("MKL_Set_Num_Threads_Local", [ctypes.c_int], ctypes.c_int)  # type: ignore[return-value]


# MKL_Somatcopy(ordering, trans, rows, cols, alpha, A, lda, B, ldb): a blocked, vectorised
# out-of-place transpose (C interface). numpy's transposing copy is 2.5x slower (measured).
_TRANSPOSE_FLOAT32 = _mkl_function(
    "MKL_Somatcopy",
    [ctypes.c_char, ctypes.c_char, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_float]  # ordering, trans, rows, cols, alpha
    + [ctypes.c_void_p, ctypes.c_size_t] * 2,  # A, lda, B, ldb
    None,
)


_SET_LOCAL_THREADS = _mkl_local_thread_setter()
# Tests switch these off: USE_BLAS to exercise the elementwise path, PIN_BLAS to show that the
# determinism tests catch an unpinned BLAS.
USE_BLAS = _SET_LOCAL_THREADS is not None
PIN_BLAS = True


def blas_available() -> bool:
    """True when reductions over d use single-threaded MKL (the fast path)."""
    return USE_BLAS and _SET_LOCAL_THREADS is not None


_PINNED = threading.local()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Pin MKL to one thread for the calling thread until the block exits.

    Thread-local (MKL keeps a per-thread override of its global thread count), re-entrant (an
    inner block costs nothing), and restored on exit, so concurrent aggregations and the
    training thread are unaffected. About 10 microseconds per outermost block.
    """
    setter = _SET_LOCAL_THREADS
    if setter is None or not PIN_BLAS or getattr(_PINNED, "active", False):
        yield
        return
    # torch initialises a thread's thread counts lazily, on its first parallel operation, and
    # that sets MKL's thread-local count to the global one: it would undo a pin made before it.
    # get_num_threads() runs that initialisation now.
    torch.get_num_threads()
    previous = setter(1)  # previous thread-local value; 0 means "follow the global setting"
    _PINNED.active = True
    try:
        yield
    finally:
        _PINNED.active = False
        setter(previous)


# ---------------------------------------------------------------------- worker threads

_WORKER = threading.local()
_CPUS = os.cpu_count() or 1


def worker_count(tasks: int, per_worker: int = MIN_BLOCKS_PER_WORKER) -> int:
    """Threads to spread `tasks` independent tasks over: up to torch.get_num_threads() (the
    caller's intra-op budget), one inside a worker (no nesting)."""
    if getattr(_WORKER, "active", False):
        return 1
    return max(1, min(torch.get_num_threads(), _CPUS, tasks // per_worker))


class Scratch:
    """Per-thread reusable buffers, allocated by torch (64-byte aligned, as MKL wants them)."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._views: dict[tuple[str, torch.dtype, int, int], torch.Tensor] = {}
        self._arrays: dict[tuple[str, torch.dtype, int, int], np.ndarray] = {}

    def tensor(self, name: str, rows: int, cols: int, dtype: torch.dtype = WORK_DTYPE) -> torch.Tensor:
        """A rows x cols view of a buffer kept for the next call (its row stride may exceed cols).
        The same request returns the same view object (no per-block allocation of views)."""
        key = (name, dtype, rows, cols)
        view = self._views.get(key)
        if view is None:
            buffer = self._store.get((name, dtype))
            if buffer is None or buffer.shape[0] < rows or buffer.shape[1] < cols:
                buffer = torch.empty(rows, cols, dtype=dtype)
                self._store[(name, dtype)] = buffer
                self._views = {k: v for k, v in self._views.items() if k[:2] != (name, dtype)}
                self._arrays = {k: v for k, v in self._arrays.items() if k[:2] != (name, dtype)}
            view = self._views[key] = buffer[:rows, :cols]
        return view

    def array(self, name: str, rows: int, cols: int, dtype: torch.dtype = WORK_DTYPE) -> np.ndarray:
        """`tensor(...)` as a numpy array sharing its memory."""
        key = (name, dtype, rows, cols)
        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = self.tensor(name, rows, cols, dtype).numpy()
        return array


def run_tasks(tasks: Sequence[Task], work: Callable[[Scratch, Task], object], workers: int | None = None) -> None:
    """Call work(scratch, task) for every task, on `workers` threads (default `worker_count`),
    each thread with its own Scratch and MKL pinned to one thread. Tasks must be independent
    (each writes its own output slot); the first exception is re-raised here."""
    count = worker_count(len(tasks)) if workers is None else max(1, min(workers, len(tasks)))
    if count <= 1:
        scratch = Scratch()
        with single_threaded_blas(), _quiet():
            for task in tasks:
                work(scratch, task)
        return
    shares = [tasks[len(tasks) * w // count : len(tasks) * (w + 1) // count] for w in range(count)]
    errors: list[BaseException] = []

    def run(share: Sequence[Task]) -> None:
        _WORKER.active = True
        try:
            scratch = Scratch()
            with single_threaded_blas(), _quiet():
                for task in share:
                    if errors:
                        return
                    work(scratch, task)
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)
        finally:
            _WORKER.active = False

    threads = [threading.Thread(target=run, args=(share,), daemon=True) for share in shares[1:]]
    for thread in threads:
        thread.start()
    run(shares[0])  # the calling thread takes the first share
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _quiet() -> contextlib.AbstractContextManager[object]:
    """numpy without floating-point warnings: a non-finite row is expected input here (it is
    rejected from the norms), as it is for torch, which never warns."""
    return np.errstate(all="ignore")


def ordered_sum(parts: torch.Tensor) -> torch.Tensor:
    """parts[0] + parts[1] + ... in that order (float64), whatever the thread count."""
    stacked = parts.numpy()
    total = stacked[0].copy()
    for part in stacked[1:]:
        total += part
    return torch.from_numpy(total)


# ---------------------------------------------------------------------- blocks and dtypes


def result_dtype(matrix: torch.Tensor) -> torch.dtype:
    """Dtype rules write their d-vector in: the input's, at least float32. Each block is computed
    in float64 and rounded once, so no float64 d-vector is ever materialised."""
    return torch.promote_types(matrix.dtype, torch.float32)


def column_blocks(d: int, block: int = COLUMN_BLOCK) -> list[slice]:
    """Fixed, contiguous coordinate blocks covering range(d)."""
    return [slice(start, min(start + block, d)) for start in range(0, d, block)]


_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


def as_numpy(matrix: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a CPU tensor numpy can represent (not bfloat16), else None."""
    if matrix.device.type == "cpu" and matrix.dtype in _NUMPY_DTYPES:
        return matrix.detach().numpy()
    return None


def load(destination: torch.Tensor, matrix: torch.Tensor, source: np.ndarray | None, cols: slice) -> None:
    """destination[:] = matrix[:, cols], converted exactly to destination's dtype (numpy when it
    can: no OpenMP team inside a worker thread)."""
    if source is not None:
        np.copyto(destination.numpy(), source[:, cols])
    else:
        destination.copy_(matrix[:, cols])


class TransposedLoader:
    """Fills coordinate-major float64 blocks from the rows of `matrix`: destination (width x rows)
    = matrix[:, cols].T, converted exactly.

    float32 rows with unit column stride (the common case) go through MKL's transpose into a
    float32 staging buffer, then one contiguous widening copy (numpy's transposing copy is 2.5x
    slower); anything else through numpy or torch. Built once per call: the per-block path does
    no checks and creates as few Python objects as it can (1,221 blocks at d=1e7).
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix
        self.source = as_numpy(matrix)
        source = self.source
        self.address = 0
        if (
            _TRANSPOSE_FLOAT32 is not None
            and source is not None
            and source.dtype == np.float32
            and source.strides[1] == source.itemsize
            and source.strides[0] > 0
            and source.strides[0] % source.itemsize == 0
        ):
            self.address = source.ctypes.data
            self.leading = source.strides[0] // source.itemsize

    def load(self, scratch: Scratch, destination: np.ndarray, cols: slice) -> None:
        width, rows = destination.shape
        if self.address:
            assert _TRANSPOSE_FLOAT32 is not None  # an address is only taken when MKL's transpose exists
            staging = scratch.array("staging", COLUMN_BLOCK, rows, torch.float32)
            if width < COLUMN_BLOCK:
                staging = staging[:width]
            start = self.address + 4 * cols.start
            leading_out = staging.strides[0] // 4  # the buffer may be wider than rows
            _TRANSPOSE_FLOAT32(b"R", b"T", rows, width, 1.0, start, self.leading, staging.ctypes.data, leading_out)
            np.copyto(destination, staging)
        elif self.source is not None:
            np.copyto(destination, self.source[:, cols].T)
        else:
            torch.from_numpy(destination).copy_(self.matrix[:, cols].T)


def coordinate_major(matrix: torch.Tensor) -> np.ndarray:
    """d x n copy of the n x d matrix (numpy, float32 for bfloat16), built block by block."""
    n, d = matrix.shape
    source = as_numpy(matrix)
    out = np.empty((d, n), dtype=torch.empty(0, dtype=sort_dtype(matrix.dtype)).numpy().dtype)

    def work(scratch: Scratch, cols: slice) -> None:
        block = source[:, cols] if source is not None else matrix[:, cols].to(torch.float32).numpy()
        np.copyto(out[cols], block.T)

    run_tasks(column_blocks(d), work)
    return out


def finite_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Boolean mask of rows whose entries are all finite."""
    mask = torch.ones(matrix.shape[0], dtype=torch.bool, device=matrix.device)
    for cols in column_blocks(matrix.shape[1], SORT_BLOCK):
        mask &= torch.isfinite(matrix[:, cols]).all(dim=1)
    return mask


# ---------------------------------------------------------------------- reductions over d


def row_squared_norms(matrix: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of every row, float64. A non-finite entry only affects its own row."""
    return row_squared_distances_to(matrix, None)


def row_squared_distances_to(matrix: torch.Tensor, point: torch.Tensor | None) -> torch.Tensor:
    """Squared L2 distance of every row of `matrix` to the d-vector `point` (to 0 when None),
    float64. A non-finite entry only affects its own row."""
    n, d = matrix.shape
    if not blas_available():
        acc = torch.zeros(n, dtype=WORK_DTYPE)
        for cols in column_blocks(d):
            block = matrix[:, cols].to(WORK_DTYPE)
            if point is not None:
                block = block - point[cols].to(WORK_DTYPE)
            acc += (block * block).sum(dim=1)
        return acc
    blocks = column_blocks(d)
    parts = torch.empty(len(blocks), n, dtype=WORK_DTYPE)
    source = as_numpy(matrix)
    point_values = None if point is None else as_numpy(point)
    if point is not None and point_values is None:
        point_values = point.to(torch.float32).numpy()  # bfloat16: exact in float32
    ones = torch.ones(COLUMN_BLOCK, dtype=WORK_DTYPE)

    def work(scratch: Scratch, index: int) -> None:
        cols = blocks[index]
        width = cols.stop - cols.start
        block = scratch.tensor("rows", n, COLUMN_BLOCK)[:, :width]
        load(block, matrix, source, cols)
        values = block.numpy()
        if point_values is not None:
            np.subtract(values, point_values[cols], out=values)
        np.multiply(values, values, out=values)
        torch.mv(block, ones[:width], out=parts[index])

    run_tasks(range(len(blocks)), work)
    return ordered_sum(parts)


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
    2 <x_i - c, c> + ||c||^2 with c the block's centre; the two extra terms cost one
    matrix-vector and one dot product per block. A non-finite row can spoil every entry (the
    centre mixes the rows); callers check the norms and recompute on the kept rows.
    """
    if not blas_available():
        return _gram_elementwise(matrix, centered=centered, extra=extra)
    n, d = matrix.shape
    m = n + (0 if extra is None else extra.shape[0])
    blocks = column_blocks(d)
    grams = torch.empty(len(blocks), m, m, dtype=WORK_DTYPE)
    cross = torch.zeros(len(blocks), m + 1, dtype=WORK_DTYPE)  # <x_i - c, c>, then ||c||^2
    mean_weights = torch.full((n,), 1.0 / n, dtype=WORK_DTYPE)

    rows_loader = TransposedLoader(matrix)
    extra_loader = None if extra is None else TransposedLoader(extra)

    def work(scratch: Scratch, index: int) -> None:
        cols = blocks[index]
        width = cols.stop - cols.start
        # Coordinate-major (width x m): MKL computes block.T @ block twice as fast as the Gram of
        # the m x width row-major block (measured at m=16: 0.12 s vs 0.24 s for d=1e7).
        block = scratch.tensor("columns", COLUMN_BLOCK, m)
        values = scratch.array("columns", COLUMN_BLOCK, m)
        if width < COLUMN_BLOCK:
            block, values = block[:width], values[:width]
        rows_loader.load(scratch, values[:, :n] if extra_loader is not None else values, cols)
        if extra_loader is not None:
            extra_loader.load(scratch, values[:, n:], cols)
        if centered:
            centre = scratch.tensor("centre", 1, COLUMN_BLOCK)[0, :width]
            torch.mv(block[:, :n], mean_weights, out=centre)
            np.subtract(values, centre.numpy()[:, None], out=values)
            torch.mv(block.T, centre, out=cross[index, :m])
            torch.dot(centre, centre, out=cross[index, m])
        torch.mm(block.T, block, out=grams[index])

    run_tasks(range(len(blocks)), work)
    acc = ordered_sum(grams)
    norms = acc.diagonal()[:n].clone()
    if centered:
        terms = ordered_sum(cross)
        norms += 2.0 * terms[:n] + terms[m]
    return acc, norms.clamp_min_(0.0)


def _gram_elementwise(
    matrix: torch.Tensor, *, centered: bool, extra: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BLAS-free `gram_and_norms` (fallback when MKL cannot be pinned to one thread)."""
    n = matrix.shape[0]
    m = n + (0 if extra is None else extra.shape[0])
    acc = torch.zeros(m, m, dtype=WORK_DTYPE)
    norms = torch.zeros(n, dtype=WORK_DTYPE)
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
    out = torch.empty(d, dtype=result_dtype(matrix))
    weights = coefficients.to(dtype=WORK_DTYPE)
    if extra is not None and extra_coefficients is not None:
        weights = torch.cat([weights, extra_coefficients.to(dtype=WORK_DTYPE)])
    else:
        extra = None
    if not blas_available():
        for cols in column_blocks(d):
            block = matrix[:, cols].to(WORK_DTYPE)
            if extra is not None:
                block = torch.cat([block, extra[:, cols].to(WORK_DTYPE)])
            out[cols] = (block * weights[:, None]).sum(dim=0)
        return out
    m = weights.shape[0]
    blocks = column_blocks(d)
    source, extra_source = as_numpy(matrix), None if extra is None else as_numpy(extra)
    out_values = out.numpy()

    def work(scratch: Scratch, index: int) -> None:
        cols = blocks[index]
        width = cols.stop - cols.start
        block = scratch.tensor("rows", m, COLUMN_BLOCK)[:, :width]
        load(block[:n], matrix, source, cols)
        if extra is not None:
            load(block[n:], extra, extra_source, cols)
        combined = scratch.tensor("combined", 1, COLUMN_BLOCK)[0, :width]
        torch.mv(block.T, weights, out=combined)
        np.copyto(out_values[cols], combined.numpy())  # one rounding to the output dtype

    run_tasks(range(len(blocks)), work)
    return out


def mix_rows(
    matrix: torch.Tensor, mixing: torch.Tensor, consume: Callable[[Scratch, slice, np.ndarray], object]
) -> None:
    """Call consume(scratch, columns, block) for every column block, with block = mixing @
    matrix[:, columns] (k x width, float64 numpy, valid during the call only). Calls may run on
    several threads at once, each for different columns."""
    n, d = matrix.shape
    weights = mixing.to(dtype=WORK_DTYPE)
    k = weights.shape[0]
    blocks = column_blocks(d)
    if not blas_available():
        for cols in blocks:
            block = matrix[:, cols].to(WORK_DTYPE)
            mixed = torch.stack([(block * weights[i][:, None]).sum(dim=0) for i in range(k)])
            consume(Scratch(), cols, mixed.numpy())
        return
    source = as_numpy(matrix)

    def work(scratch: Scratch, index: int) -> None:
        cols = blocks[index]
        width = cols.stop - cols.start
        block = scratch.tensor("rows", n, COLUMN_BLOCK)[:, :width]
        load(block, matrix, source, cols)
        mixed = scratch.tensor("mixed", k, COLUMN_BLOCK)[:, :width]
        torch.mm(weights, block, out=mixed)
        consume(scratch, cols, mixed.numpy())

    run_tasks(range(len(blocks)), work)


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


def sort_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the sorting network runs in: the input's (exact), float32 for bfloat16."""
    return dtype if dtype in _NUMPY_DTYPES else torch.float32


def sorted_columns(block: np.ndarray, spare: np.ndarray) -> list[np.ndarray]:
    """Sort every column of a finite (n x c) block ascending, in place; returns the n sorted rows
    (views into `block` and `spare`, a c-vector of the same dtype).

    A sorting network of elementwise min/max: exact, and several times faster than a sort along
    the row dimension for the small n of aggregation.
    """
    rows = list(block)
    for low, high in sorting_network(len(rows)):
        a, b = rows[low], rows[high]
        np.minimum(a, b, out=spare)
        np.maximum(a, b, out=b)
        rows[low], spare = spare, a
    return rows


def map_sorted_columns(
    matrix: torch.Tensor,
    reduce: Callable[[Scratch, list[np.ndarray], int], np.ndarray],
    *,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[cols] = reduce(scratch, sorted rows of matrix[rows][:, cols], width) for every block of
    SORT_BLOCK columns; `reduce` returns a float64 vector (first `width` entries used), rounded
    once into `result_dtype(matrix)`. Exact sorting, per-block results: thread-count independent."""
    d = matrix.shape[1]
    selected = None if rows is None else [int(i) for i in rows]
    count = matrix.shape[0] if selected is None else len(selected)
    out = torch.empty(d, dtype=result_dtype(matrix))
    out_values = out.numpy()
    dtype = sort_dtype(matrix.dtype)
    source = as_numpy(matrix)
    blocks = column_blocks(d, SORT_BLOCK)

    def work(scratch: Scratch, cols: slice) -> None:
        width = cols.stop - cols.start
        block = scratch.tensor("sort", count + 1, SORT_BLOCK, dtype)[:, :width]
        values = block.numpy()
        if source is not None:
            if selected is None:
                np.copyto(values[:count], source[:, cols])
            else:
                np.take(source[:, cols], selected, axis=0, out=values[:count])
        else:
            picked = matrix[:, cols] if selected is None else matrix[:, cols][selected]
            block[:count].copy_(picked)
        np.copyto(out_values[cols], reduce(scratch, sorted_columns(values[:count], values[count]), width)[:width])

    run_tasks(blocks, work, worker_count(len(blocks), per_worker=4))
    return out


def middle_average(sorted_rows: Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of sorted rows into `out` (float64); for an even count, the mean
    of the two middle rows."""
    count = len(sorted_rows)
    np.copyto(out, sorted_rows[(count - 1) // 2])
    if count % 2 == 0:
        out += sorted_rows[count // 2]
        out *= 0.5
    return out


def median_value(values: torch.Tensor) -> float:
    """Median of a 1-D tensor; the mean of the two middle values for an even count."""
    ordered = torch.sort(values.to(WORK_DTYPE)).values
    count = ordered.numel()
    return float((ordered[(count - 1) // 2] + ordered[count // 2]) / 2.0)


def stable_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort `scores` ascending; equal scores keep index order."""
    return torch.argsort(scores, stable=True)
