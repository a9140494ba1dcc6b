"""What crosses parts: requests (what every owner computes over its part), partials (what an
owner publishes), decisions (what every owner applies to its part) and the outcome.

Every member derives each request and the decision itself from the partials it received, so
only partials travel; `encode_partial` / `decode_partial` give their canonical bytes (for
signatures and hashes) and check them before allocating.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..base import Aggregator
from ..errors import AggregationError
from ..gas import GradientSplitting, split_count
from ..partition import PartLayout

# ---------------------------------------------------------------------- the virtual matrix


@dataclass(frozen=True, eq=False)
class Source:
    """The k x d matrix a request or decision is about, built by each owner from its part:
    the input rows `rows` (ascending), mixed by `mixing` (k x len(rows), NNM) when given and
    then stored in the result dtype (the input's, at least float32), as the all-to-all call
    stores NNM's mixed rows."""

    rows: tuple[int, ...]
    mixing: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return len(self.rows) if self.mixing is None else int(self.mixing.shape[0])


# ---------------------------------------------------------------------- requests


@dataclass(frozen=True, eq=False)
class Scan:
    """Round 1 of every rule: per row, the part's squared norm and whether the part holds a
    non-finite entry; with the rule's `scan_gram`, also the part's Gram matrix of all n rows
    (with `rule.scan_extra` rows appended, e.g. the centred-clipping centre)."""

    rule: Aggregator


@dataclass(frozen=True, eq=False)
class GramOf:
    """The part's float64 Gram matrix of `source` (centred per coordinate on the source rows'
    mean when `centered`), with the centre (zeros when the call has none) appended as a last
    row when `with_center`."""

    source: Source
    centered: bool
    with_center: bool = False


@dataclass(frozen=True, eq=False)
class SplitScores:
    """GAS with `within_parts` = m: the distance of every source row to the base rule's
    aggregate, for each of the rule's splits inside the part (splits x k, in split order)."""

    source: Source
    rule: GradientSplitting
    seed: int | None


Request = Scan | GramOf | SplitScores


# ---------------------------------------------------------------------- partials


@dataclass(frozen=True, eq=False)
class Partial:
    """What the owner of one part publishes for one request (float64 unless noted)."""

    squared_norms: torch.Tensor | None = None  # Scan: n
    non_finite: torch.Tensor | None = None  # Scan: n bool
    gram: torch.Tensor | None = None  # Scan with a scan Gram, GramOf: k x k
    distances: torch.Tensor | None = None  # SplitScores: splits x k

    @property
    def nbytes(self) -> int:
        """Size of `encode_partial(self)`."""
        return len(encode_partial(self))


def scan_extra_rows(rule: Aggregator) -> int:
    """Rows the rule appends below the input in its scan Gram matrix (the centre, for centred
    clipping), found by asking the rule on an empty part."""
    extra = rule.scan_extra(torch.zeros(1, 1), None)
    return 0 if extra is None else int(extra.shape[0])


def expected_shapes(request: Request, n: int, layout: PartLayout, index: int) -> dict[str, tuple[int, ...]]:
    """Field -> shape of the partial the owner of part `index` must publish for `request`
    (n input rows)."""
    if isinstance(request, Scan):
        shapes: dict[str, tuple[int, ...]] = {"squared_norms": (n,), "non_finite": (n,)}
        if request.rule.scan_gram is not None:
            k = n + scan_extra_rows(request.rule)
            shapes["gram"] = (k, k)
        return shapes
    if isinstance(request, GramOf):
        k = request.source.count + (1 if request.with_center else 0)
        return {"gram": (k, k)}
    size = math.ceil(layout.d / request.rule.p)
    return {"distances": (split_count(layout.width(index), size), request.source.count)}


_FIELDS = ("squared_norms", "non_finite", "gram", "distances")
_MAGIC = b"FNPP1"


def encode_partial(partial: Partial) -> bytes:
    """Canonical bytes: a 5-byte tag, then for every present field in a fixed order its index,
    rank, shape (uint32, little endian) and values (float64 little endian; bool as bytes)."""
    chunks = [_MAGIC]
    for index, name in enumerate(_FIELDS):
        value = getattr(partial, name)
        if value is None:
            continue
        array = value.detach().cpu().numpy()
        chunks.append(struct.pack("<BB", index, array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape))
        if name == "non_finite":
            chunks.append(array.astype(np.uint8).tobytes())
        else:
            chunks.append(array.astype("<f8", copy=False).tobytes())
    return b"".join(chunks)


def decode_partial(data: bytes, shapes: Mapping[str, tuple[int, ...]]) -> Partial:
    """Parse `encode_partial` bytes, requiring exactly the fields and shapes given (see
    `expected_shapes`); the size is checked before anything is allocated."""
    view = memoryview(data)
    if bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise AggregationError("partwise: not an encoded partial (bad tag)")
    offset, values = len(_MAGIC), {}
    for index, name in enumerate(_FIELDS):
        if name not in shapes:
            continue
        shape = tuple(shapes[name])
        header = struct.pack("<BB", index, len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
        if bytes(view[offset : offset + len(header)]) != header:
            raise AggregationError(f"partwise: partial field {name!r} missing or not of shape {shape}")
        offset += len(header)
        count = int(np.prod(shape, dtype=np.int64))
        size = count * (1 if name == "non_finite" else 8)
        if offset + size > len(view):
            raise AggregationError(f"partwise: partial truncated in field {name!r}")
        raw = view[offset : offset + size]
        offset += size
        if name == "non_finite":
            flags = np.frombuffer(raw, dtype=np.uint8)
            if bool((flags > 1).any()):
                raise AggregationError("partwise: partial non_finite flags must be 0 or 1")
            values[name] = torch.from_numpy(flags.astype(bool)).reshape(shape)
        else:
            values[name] = torch.from_numpy(np.frombuffer(raw, dtype="<f8").astype(np.float64)).reshape(shape)
    if offset != len(view):
        raise AggregationError(f"partwise: {len(view) - offset} unexpected trailing bytes after the partial")
    return Partial(**values)


# ---------------------------------------------------------------------- decisions


@dataclass(frozen=True, eq=False)
class Combine:
    """sum_i coefficients[i] * source_i (+ center_coefficient * centre), accumulated in float64
    per coordinate and stored in the result dtype."""

    source: Source
    coefficients: torch.Tensor
    center_coefficient: torch.Tensor | None = None  # 1 entry; the centre is zeros when the call has none


@dataclass(frozen=True, eq=False)
class CopyRow:
    """Source row `row` itself (Krum)."""

    source: Source
    row: int


@dataclass(frozen=True, eq=False)
class Columnwise:
    """Per coordinate, an order statistic of the source rows `rows`: the median, the trimmed
    mean dropping `count` values at each end, or the mean of the `count` values closest to the
    median (Bulyan's second stage). Sorting is exact, so any part gives the all-to-all bits."""

    source: Source
    rows: tuple[int, ...]
    reducer: Literal["median", "trimmed_mean", "around_median"]
    count: int = 0


Decision = Combine | CopyRow | Columnwise


@dataclass(frozen=True, eq=False)
class Outcome:
    """What every member knows at the end: the decision to apply and the facts of the call, in
    input-row indices (as `AggregationResult`, without the aggregate)."""

    decision: Decision
    scores: torch.Tensor | None
    selected: tuple[int, ...] | None
    rejected: tuple[int, ...]
    diagnostics: Mapping[str, float] = field(default_factory=dict)
