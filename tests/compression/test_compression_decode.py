"""decode() against hostile input: every violation is one PayloadError, raised before allocating."""

from __future__ import annotations

import contextlib
import itertools
import struct
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import torch
import zstandard
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from fednode.node.compression import (
    DecodeLimits,
    PayloadError,
    Reason,
    available,
    build_codec,
    check_header,
    decode,
)
from fednode.proto.v1 import envelope_pb2
from fednode.proto.v1 import tensor_pb2 as pb

N = 1000
LIMITS = DecodeLimits(max_numel=1 << 20)
PARAMS = {
    "topk": {"k": 50},
    "topk_int8": {"k": 50, "block_size": 16},
    "randk": {"k": 50},
    "int8": {"block_size": 64},
}


def valid(name: str, zstd: str = "off", n: int = N) -> pb.TensorPayload:
    g = torch.Generator().manual_seed(0)
    return (
        build_codec(name, zstd=zstd, **PARAMS.get(name, {}))
        .encode(torch.randn(n, generator=g), seed=3)
        .payload
    )


def edited(payload: pb.TensorPayload, edit: Callable[[pb.TensorPayload], object]) -> pb.TensorPayload:
    copy = pb.TensorPayload()
    copy.CopyFrom(payload)
    edit(copy)
    return copy


def reason_of(
    payload: pb.TensorPayload, limits: DecodeLimits = LIMITS, expected: int | None = None
) -> Reason:
    with pytest.raises(PayloadError) as info:
        decode(payload, limits=limits, expected_numel=expected)
    assert isinstance(info.value, ValueError)
    return info.value.reason


def frame(raw: bytes, **options: object) -> bytes:
    return zstandard.ZstdCompressor(level=3, **options).compress(raw)  # type: ignore[arg-type]


def positions_bytes(positions: list[int]) -> bytes:
    """Delta-code arbitrary (possibly unsorted or repeated) positions the way the wire does."""
    gaps = [positions[0]] + [(b - a) % (1 << 32) for a, b in itertools.pairwise(positions)]
    return np.array(gaps, dtype="<u4").tobytes()


# ------------------------------------------------------------------ header


def test_reasons_are_stable_strings_and_map_to_reject_reasons() -> None:
    error = PayloadError("too_large", "x")
    assert error.reason == "too_large" and error.reason is Reason.TOO_LARGE
    assert error.reject_reason == envelope_pb2.REJECT_OVERSIZED
    assert PayloadError(Reason.DUPLICATE_INDEX, "x").reject_reason == envelope_pb2.REJECT_BAD_PAYLOAD
    assert PayloadError(Reason.NON_FINITE, "x").reject_reason == envelope_pb2.REJECT_NON_FINITE


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda p: setattr(p, "dtype", pb.DTYPE_UNSPECIFIED), Reason.UNSUPPORTED_DTYPE),
        (lambda p: setattr(p, "dtype", pb.DTYPE_FLOAT64), Reason.UNSUPPORTED_DTYPE),
        (lambda p: setattr(p, "dtype", 77), Reason.UNSUPPORTED_DTYPE),
        (lambda p: setattr(p, "codec", pb.CODEC_UNSPECIFIED), Reason.UNKNOWN_CODEC),
        (lambda p: setattr(p, "codec", 1234), Reason.UNKNOWN_CODEC),
        (lambda p: setattr(p, "compression", 9), Reason.UNKNOWN_COMPRESSION),
        (lambda p: p.shape.extend([1] * 9), Reason.BAD_SHAPE),
        (lambda p: p.shape.append(0), Reason.BAD_SHAPE),
        (lambda p: p.shape.append(1 << 21), Reason.TOO_LARGE),
        (lambda p: setattr(p.params, "block_size", 64), Reason.BAD_CODEC_PARAMS),  # none uses no params
        (lambda p: setattr(p.params, "seed", 1), Reason.BAD_CODEC_PARAMS),
        (lambda p: p.raw_sizes.SetInParent(), Reason.BAD_RAW_SIZES),  # raw sizes without zstd
    ],
)
def test_header_violations(edit: Callable[[pb.TensorPayload], object], reason: Reason) -> None:
    assert reason_of(edited(valid("none"), edit)) == reason


def test_not_a_payload() -> None:
    with pytest.raises(PayloadError) as info:
        decode(b"\x00", limits=LIMITS)  # type: ignore[arg-type]
    assert info.value.reason == Reason.BAD_MESSAGE


def test_expected_numel_and_allowed_codecs() -> None:
    payload = valid("int8")
    assert reason_of(payload, expected=N + 1) == Reason.SHAPE_MISMATCH
    only_topk = DecodeLimits(max_numel=1 << 20, allowed_codecs=frozenset({"topk"}))
    assert reason_of(payload, limits=only_topk) == Reason.CODEC_NOT_ALLOWED
    assert decode(payload, limits=LIMITS, expected_numel=N).shape == (N,)


def test_shape_is_kept_and_scalars_work() -> None:
    payload = edited(valid("none", n=12), lambda p: (p.ClearField("shape"), p.shape.extend([3, 4])))
    assert decode(payload, limits=LIMITS).shape == (3, 4)
    scalar = edited(valid("none", n=1), lambda p: p.ClearField("shape"))
    assert decode(scalar, limits=LIMITS).shape == ()


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("int8", "block_size", 0),
        ("int8", "block_size", (1 << 20) + 1),
        ("int8", "k", 5),
        ("int4", "rank", 1),
        ("topk", "k", 0),
        ("topk", "k", N + 1),
        ("topk", "block_size", 4),
        ("topk_int8", "block_size", 0),
        ("randk", "k", 0),
        ("randk", "rows", 3),
        ("powersgd", "rank", 0),
        ("powersgd", "rank", 40),  # > min(rows, cols) = 32
        ("powersgd", "rows", 0),
        ("powersgd", "rows", N + 1),
        ("powersgd", "k", 2),
    ],
)
def test_wrong_codec_params(name: str, field: str, value: int) -> None:
    assert (
        reason_of(edited(valid(name), lambda p: setattr(p.params, field, value))) == Reason.BAD_CODEC_PARAMS
    )


# ------------------------------------------------------------------ lengths and lying headers


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("field", ["values", "indices", "scales"])
def test_truncated_or_padded_fields(name: str, field: str) -> None:
    payload = valid(name)
    data = getattr(payload, field)
    if data:
        assert reason_of(edited(payload, lambda p: setattr(p, field, data[:-1]))) == Reason.LENGTH_MISMATCH
        assert reason_of(edited(payload, lambda p: setattr(p, field, b""))) == Reason.LENGTH_MISMATCH
    assert reason_of(edited(payload, lambda p: setattr(p, field, data + b"\x00"))) == Reason.LENGTH_MISMATCH


@pytest.mark.parametrize("name", ["none", "fp16", "bf16", "int8", "int4", "powersgd"])
def test_header_claiming_more_elements_than_the_data_holds(name: str) -> None:
    # (a larger shape is no lie for sparse codecs: k positions within a larger n are valid, and
    # the dense result is bounded by DecodeLimits.max_numel; their lie is k, tested below)
    payload = edited(valid(name), lambda p: (p.ClearField("shape"), p.shape.append(N * 4)))
    assert reason_of(payload) in (Reason.LENGTH_MISMATCH, Reason.BAD_CODEC_PARAMS)


def test_sparse_header_claiming_more_kept_elements() -> None:
    payload = edited(valid("topk"), lambda p: setattr(p.params, "k", 51))
    assert reason_of(payload) == Reason.LENGTH_MISMATCH


def largest_allocation(fn: Callable[[], object]) -> int:
    """Largest single allocation (bytes) while fn runs: torch's allocator and Python's, both seen.

    torch's profiler reports every tensor allocation; tracemalloc sees Python objects (the bytes
    and bytearrays that field copies and zstd output live in). A payload that made decode reserve
    memory for its claimed size would show up in one of them.
    """

    def attempt() -> None:
        with contextlib.suppress(PayloadError):
            fn()

    tracemalloc.start()  # separately from the profiler, whose own bookkeeping tracemalloc would count
    try:
        attempt()
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        attempt()
    torch_largest = max((event.self_cpu_memory_usage for event in prof.events()), default=0)
    return max(torch_largest, python_peak)


def test_trillion_elements_are_rejected_before_any_allocation() -> None:
    claim = edited(valid("none"), lambda p: (p.ClearField("shape"), p.shape.append(10**12)))
    assert reason_of(claim) == Reason.TOO_LARGE
    assert reason_of(claim, limits=DecodeLimits(max_numel=1 << 32)) == Reason.TOO_LARGE
    with pytest.raises(ValueError):
        DecodeLimits(max_numel=10**12)  # not even configurable: positions are uint32
    assert largest_allocation(lambda: decode(claim, limits=LIMITS)) < 64 << 10
    # within a (huge) limit but lying about the data: rejected from the lengths, nothing reserved
    huge = DecodeLimits(max_numel=1 << 32)
    for name in ("none", "int8", "int4", "fp16", "powersgd"):
        lying = edited(valid(name), lambda p: (p.ClearField("shape"), p.shape.extend([1 << 16, 1 << 16])))
        assert reason_of(lying, limits=huge) in (Reason.LENGTH_MISMATCH, Reason.BAD_CODEC_PARAMS)
        assert largest_allocation(lambda p=lying: decode(p, limits=huge)) < 64 << 10


@pytest.mark.parametrize("name", available())
def test_decode_allocates_a_small_multiple_of_the_output(name: str) -> None:
    n = 100_000
    payload = valid(name, zstd="on", n=n)
    largest = largest_allocation(lambda: decode(payload, limits=DecodeLimits(max_numel=n), expected_numel=n))
    assert 4 * n <= largest <= 4 * (4 * n)


# ------------------------------------------------------------------ indices


def sparse_with_positions(name: str, positions: list[int]) -> pb.TensorPayload:
    return edited(valid(name), lambda p: setattr(p, "indices", positions_bytes(positions)))


@pytest.mark.parametrize("name", ["topk", "topk_int8"])
def test_bad_indices(name: str) -> None:
    good = list(range(0, 1000, 20))  # 50 sorted positions
    assert decode(sparse_with_positions(name, good), limits=LIMITS).shape == (N,)
    assert reason_of(sparse_with_positions(name, [*good[:-1], N])) == Reason.INDEX_OUT_OF_RANGE
    assert (
        reason_of(sparse_with_positions(name, [*good[:-1], 2**40 % 2**32 + N])) == Reason.INDEX_OUT_OF_RANGE
    )
    assert reason_of(sparse_with_positions(name, [*good[:-1], good[-2]])) == Reason.DUPLICATE_INDEX
    assert reason_of(sparse_with_positions(name, [0, 0, *good[2:]])) == Reason.DUPLICATE_INDEX
    # unsorted: a backwards step is a wrapped-around uint32 delta, which runs past n
    unsorted = [good[1], good[0], *good[2:]]
    assert reason_of(sparse_with_positions(name, unsorted)) == Reason.INDEX_OUT_OF_RANGE
    max_gaps = edited(valid(name), lambda p: setattr(p, "indices", b"\xff" * 200))
    assert reason_of(max_gaps) == Reason.INDEX_OUT_OF_RANGE


# ------------------------------------------------------------------ values and scales


def float_bytes(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_and_scales(bad: float) -> None:
    def poison_values(p: pb.TensorPayload) -> None:
        p.values = float_bytes([bad]) + p.values[4:]

    def poison_scales(p: pb.TensorPayload) -> None:
        p.scales = float_bytes([bad]) + p.scales[4:]

    for name in ("none", "topk", "randk", "powersgd"):
        assert reason_of(edited(valid(name), poison_values)) == Reason.NON_FINITE
    for name in ("int8", "int4", "topk_int8"):
        assert reason_of(edited(valid(name), poison_scales)) == Reason.NON_FINITE
    half = np.array([bad], dtype="<f2").tobytes()
    assert (
        reason_of(edited(valid("fp16"), lambda p: setattr(p, "values", half + p.values[2:])))
        == Reason.NON_FINITE
    )
    bf = (np.array([bad], dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    assert (
        reason_of(edited(valid("bf16"), lambda p: setattr(p, "values", bf + p.values[2:])))
        == Reason.NON_FINITE
    )


def test_negative_scale_and_invalid_codes() -> None:
    assert reason_of(
        edited(valid("int8"), lambda p: setattr(p, "scales", float_bytes([-1.0]) + p.scales[4:]))
    ) == (Reason.BAD_SCALE)
    assert reason_of(edited(valid("int8"), lambda p: setattr(p, "values", b"\x80" + p.values[1:]))) == (
        Reason.VALUE_OUT_OF_RANGE
    )
    assert reason_of(edited(valid("topk_int8"), lambda p: setattr(p, "values", b"\x80" + p.values[1:]))) == (
        Reason.VALUE_OUT_OF_RANGE
    )
    assert reason_of(edited(valid("int4"), lambda p: setattr(p, "values", b"\x08" + p.values[1:]))) == (
        Reason.VALUE_OUT_OF_RANGE
    )
    odd = valid("int4", n=N - 1)
    assert reason_of(
        edited(odd, lambda p: setattr(p, "values", p.values[:-1] + bytes([p.values[-1] | 0x10])))
    ) == (Reason.VALUE_OUT_OF_RANGE)


def test_overflowing_low_rank_product_is_non_finite() -> None:
    payload = valid("powersgd")
    rows, rank = payload.params.rows, payload.params.rank
    count = len(payload.values) // 4
    big = float_bytes([3e38] * count)
    assert rows * rank < count
    assert reason_of(edited(payload, lambda p: setattr(p, "values", big))) == Reason.NON_FINITE


# ------------------------------------------------------------------ zstd


def test_zstd_raw_sizes_must_match_the_implied_sizes() -> None:
    payload = valid("topk", zstd="on")
    assert reason_of(edited(payload, lambda p: p.ClearField("raw_sizes"))) == Reason.BAD_RAW_SIZES
    assert (
        reason_of(edited(payload, lambda p: setattr(p.raw_sizes, "values", 10**12))) == Reason.BAD_RAW_SIZES
    )
    assert reason_of(edited(payload, lambda p: setattr(p.raw_sizes, "scales", 4))) == Reason.BAD_RAW_SIZES


def zstd_bomb_payload(expansion: int) -> pb.TensorPayload:
    """A topk payload whose `values` frame expands to `expansion` bytes of zeros."""
    return edited(valid("topk", zstd="on"), lambda p: setattr(p, "values", frame(bytes(expansion))))


def test_zstd_bomb_is_refused_from_its_header() -> None:
    bomb = zstd_bomb_payload(200 << 20)  # 200 MiB of zeros in a few KiB
    assert len(bomb.values) < 64 << 10
    tracemalloc.start()
    try:
        assert reason_of(bomb) == Reason.DECOMPRESSION_FAILED
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def patch_content_size(data: bytes, size: int) -> bytes:
    """Rewrite a frame header's content size (4-byte field) to lie about the expansion."""
    descriptor = data[4]
    assert descriptor >> 6 == 2 and not descriptor & 0x03  # 4-byte size, no dictionary id
    offset = 5 if descriptor & 0x20 else 6  # single-segment frames have no window byte
    return data[:offset] + struct.pack("<I", size) + data[offset + 4 :]


def test_zstd_frame_lying_about_its_content_size_is_stopped_at_the_cap() -> None:
    payload = valid("topk", zstd="on")
    implied = payload.raw_sizes.values
    liar = patch_content_size(frame(bytes(50 << 20)), implied)
    tracemalloc.start()
    try:
        assert reason_of(edited(payload, lambda p: setattr(p, "values", liar))) == Reason.DECOMPRESSION_FAILED
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: data[:-3],  # truncated frame
        lambda data: data + b"\x00",  # trailing garbage
        lambda data: data + data,  # a second frame
        lambda data: b"\x00" * len(data),  # not zstd at all
        lambda data: frame(b"\x01" * 200, write_content_size=False),  # no content size in the header
        lambda data: data[:8] + bytes([data[8] ^ 0xFF]) + data[9:],  # corrupt block
    ],
)
def test_corrupt_zstd_frames(corrupt: Callable[[bytes], bytes]) -> None:
    payload = valid("topk", zstd="on")
    bad = edited(payload, lambda p: setattr(p, "indices", corrupt(p.indices)))
    assert reason_of(bad) in (Reason.DECOMPRESSION_FAILED, Reason.INDEX_OUT_OF_RANGE, Reason.DUPLICATE_INDEX)


def test_zstd_frame_with_a_dictionary_id_is_refused() -> None:
    payload = valid("topk", zstd="on")
    plain = frame(bytes(payload.raw_sizes.values))
    descriptor = plain[4]
    assert not descriptor & 0x03  # no dictionary id yet
    offset = 5 if descriptor & 0x20 else 6  # the id follows the window byte, if any
    with_dict = plain[:4] + bytes([descriptor | 0x01]) + plain[5:offset] + b"\x2a" + plain[offset:]
    assert zstandard.get_frame_parameters(with_dict).dict_id == 0x2A
    bad = edited(payload, lambda p: setattr(p, "values", with_dict))
    assert reason_of(bad) == Reason.DECOMPRESSION_FAILED


def test_empty_field_must_stay_empty_under_zstd() -> None:
    payload = valid("topk", zstd="on")
    assert reason_of(edited(payload, lambda p: setattr(p, "scales", frame(b"")))) == Reason.LENGTH_MISMATCH


# ------------------------------------------------------------------ fuzzing


def check_never_crashes(data: bytes, limits: DecodeLimits = LIMITS) -> None:
    """Garbage in: either a finite tensor within the limits, or a PayloadError. Nothing else."""
    try:
        payload = pb.TensorPayload.FromString(data)
    except DecodeError:
        return  # the protobuf layer already refused it
    try:
        check_header(payload, limits=limits)
        result = decode(payload, limits=limits)
    except PayloadError:
        return
    assert result.dtype == torch.float32
    assert result.numel() <= limits.max_numel
    assert bool(torch.isfinite(result).all())


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_garbage_bytes(data: bytes) -> None:
    check_never_crashes(data)


SEEDS = [valid(name, zstd=z, n=200).SerializeToString() for name in available() for z in ("off", "on")]


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_fuzz_mutated_valid_payloads(seed: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    check_never_crashes(bytes(data))


@FUZZ
@given(
    shape=st.lists(st.integers(0, 2**40), max_size=4),
    dtype=st.integers(0, 5),
    codec=st.integers(0, 10),
    compression=st.integers(0, 2),
    block_size=st.integers(0, 2**21),
    k=st.integers(0, 2**33),
    seed=st.integers(0, 2**64 - 1),
    rank=st.integers(0, 64),
    rows=st.integers(0, 2**33),
    values=st.binary(max_size=256),
    indices=st.binary(max_size=64),
    scales=st.binary(max_size=64),
    raw=st.one_of(st.none(), st.tuples(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40))),
)
def test_fuzz_structured_payloads(
    shape: list[int],
    dtype: int,
    codec: int,
    compression: int,
    block_size: int,
    k: int,
    seed: int,
    rank: int,
    rows: int,
    values: bytes,
    indices: bytes,
    scales: bytes,
    raw: tuple[int, int, int] | None,
) -> None:
    payload = pb.TensorPayload(
        shape=shape,
        dtype=dtype,
        codec=codec,
        compression=compression,
        params=pb.CodecParams(block_size=block_size, k=k, seed=seed, rank=rank, rows=rows),
        values=values,
        indices=indices,
        scales=scales,
    )
    if raw is not None:
        payload.raw_sizes.CopyFrom(pb.RawSizes(values=raw[0], indices=raw[1], scales=raw[2]))
    check_never_crashes(payload.SerializeToString(), limits=DecodeLimits(max_numel=1 << 16))
