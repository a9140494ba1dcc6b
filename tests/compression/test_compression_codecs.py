"""Codecs: exact round trips, documented error bounds, exact residuals, wire details."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fednode.node.compression import (
    Codec,
    DecodeLimits,
    available,
    build_codec,
    codec_from_spec,
    decode,
    derive_seed,
)
from fednode.node.compression import quantize as qz
from fednode.node.compression.sampling import randk_positions, splitmix64, topk_positions
from fednode.proto.v1 import tensor_pb2 as pb

LIMITS = DecodeLimits(max_numel=1 << 24)
SPARSE_PARAMS = {"topk": {"fraction": 0.05}, "topk_int8": {"fraction": 0.05}, "randk": {"fraction": 0.05}}


def make_codec(name: str, **extra: object) -> Codec:
    return build_codec(name, **{**SPARSE_PARAMS.get(name, {}), **extra})


def sample(n: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Gaussian with a few outliers and exact zeros: the awkward parts of real updates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * scale
    if n > 10:
        x[:: max(1, n // 7)] *= 50.0
        x[1 :: max(1, n // 5)] = 0.0
    return x


def roundtrip(codec: Codec, x: torch.Tensor, seed: int = 7) -> tuple[torch.Tensor, pb.TensorPayload]:
    payload = codec.encode(x, seed=seed).payload
    wire_bytes = payload.SerializeToString()
    return decode(pb.TensorPayload.FromString(wire_bytes), limits=LIMITS, expected_numel=x.numel()), payload


# ------------------------------------------------------------------ registry


def test_available_lists_every_codec_in_wire_order() -> None:
    assert available() == ("none", "fp16", "bf16", "int8", "int4", "topk", "topk_int8", "randk", "powersgd")


def test_unknown_codec_or_parameter_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        build_codec("gzip")
    with pytest.raises(ValueError, match="bad parameters"):
        build_codec("int8", fraction=0.1)
    with pytest.raises(ValueError):
        build_codec("topk")  # neither fraction nor k
    with pytest.raises(ValueError):
        build_codec("topk", fraction=0.1, k=10)
    with pytest.raises(ValueError):
        build_codec("int8", block_size=0)
    with pytest.raises(ValueError):
        build_codec("none", zstd="maybe")


@pytest.mark.parametrize("name", available())
def test_spec_string_rebuilds_the_same_codec(name: str) -> None:
    codec = make_codec(name)
    rebuilt = codec_from_spec(codec.spec())
    assert type(rebuilt) is type(codec)
    assert rebuilt.config() == codec.config()


def test_codec_from_spec_parses_types() -> None:
    codec = codec_from_spec("topk_int8:fraction=0.01, block_size=128, zstd=on")
    assert codec.config()["fraction"] == 0.01
    assert codec.config()["block_size"] == 128
    assert codec.zstd == "on"


# ------------------------------------------------------------------ round trips and bounds


@pytest.mark.parametrize("zstd", ["off", "on"])
@pytest.mark.parametrize("n", [1, 2, 3, 255, 257, 10_001])
def test_none_is_lossless(n: int, zstd: str) -> None:
    x = sample(n)
    decoded, _ = roundtrip(build_codec("none", zstd=zstd), x)
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, x)


def test_none_keeps_extreme_finite_values_and_signed_zero() -> None:
    x = torch.tensor([3.4028235e38, -3.4028235e38, 1e-45, -0.0, 0.0, 1.0])
    decoded, _ = roundtrip(build_codec("none"), x)
    assert torch.equal(decoded.view(torch.int32), x.view(torch.int32))  # bit-exact


@pytest.mark.parametrize("n", [1, 5, 4097])
def test_fp16_error_bound(n: int) -> None:
    x = sample(n, scale=3.0)
    decoded, _ = roundtrip(build_codec("fp16"), x)
    bound = torch.maximum(x.abs() * 2.0**-11, torch.tensor(2.0**-25))
    assert bool(((x - decoded).abs() <= bound).all())


def test_fp16_clamps_out_of_range_values() -> None:
    x = torch.tensor([1e6, -1e6, 65504.0, 70000.0])
    decoded, _ = roundtrip(build_codec("fp16"), x)
    assert decoded.tolist() == [65504.0, -65504.0, 65504.0, 65504.0]


def test_fp16_subnormal_bound() -> None:
    x = torch.tensor([1e-7, -3e-8, 2.0**-24, 1e-9])
    decoded, _ = roundtrip(build_codec("fp16"), x)
    assert bool(((x - decoded).abs() <= 2.0**-25).all())


@pytest.mark.parametrize("n", [1, 6, 4097])
def test_bf16_error_bound(n: int) -> None:
    x = sample(n, scale=1e-3)
    x[0] = 3.0e38  # near the top of the float32 range: still finite in bf16
    decoded, _ = roundtrip(build_codec("bf16"), x)
    bound = torch.maximum(x.abs() * 2.0**-8, torch.tensor(2.0**-134))
    assert bool(((x - decoded).abs() <= bound).all())
    assert bool(torch.isfinite(decoded).all())


def block_steps(x: torch.Tensor, block: int, qmax: int) -> torch.Tensor:
    """Per-element quantization step absmax(block) / qmax, as the documentation defines it."""
    n = x.numel()
    padded = torch.zeros(qz.num_blocks(n, block) * block)
    padded[:n] = x.abs()
    return (padded.view(-1, block).amax(1) / qmax).repeat_interleave(block)[:n]


@pytest.mark.parametrize(("name", "qmax"), [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("block", [1, 7, 64, 256])
@pytest.mark.parametrize("n", [1, 2, 255, 1000, 4099])
def test_blockwise_quantizers_stay_within_half_a_step(name: str, qmax: int, block: int, n: int) -> None:
    x = sample(n, seed=n + block)
    decoded, payload = roundtrip(build_codec(name, block_size=block), x)
    step = block_steps(x, block, qmax)
    # half a step, plus float32 rounding of x / step and of q * step (see quantize.quantize)
    assert bool(((x - decoded).abs() <= step * (0.5 + 2.0**-12)).all())
    assert payload.params.block_size == block


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantizers_keep_zero_blocks_and_block_maxima_exactly(name: str) -> None:
    x = torch.zeros(300)
    x[256:] = torch.linspace(-2.0, 2.0, 44)
    decoded, _ = roundtrip(build_codec(name, block_size=256), x)
    assert bool((decoded[:256] == 0).all())
    assert decoded[256:].abs().max().item() == pytest.approx(2.0, rel=1e-6)


def test_int4_packs_two_codes_per_byte_low_nibble_first() -> None:
    codes = torch.tensor([1, -1, 7, -7, 3], dtype=torch.int8)
    packed = qz.pack_int4(codes)
    assert packed.tolist() == [0xF1, 0x97, 0x03]
    assert torch.equal(qz.unpack_int4(packed, 5), codes)


@pytest.mark.parametrize("zstd", ["off", "on"])
@pytest.mark.parametrize("n", [1, 10, 1000, 300_001])
def test_topk_keeps_exactly_the_largest_magnitudes(n: int, zstd: str) -> None:
    x = sample(n, seed=3)
    codec = build_codec("topk", fraction=0.01, zstd=zstd)
    decoded, payload = roundtrip(codec, x)
    k = codec.k_for(n)
    assert payload.params.k == k
    kept = decoded != 0
    assert torch.equal(decoded[kept], x[kept])  # kept values exact
    expected = torch.topk(x.abs(), k).values
    assert torch.equal(torch.sort(decoded.abs(), descending=True).values[:k], expected)
    dropped = x.abs()[~kept]
    if dropped.numel() and kept.any():
        assert dropped.max() <= x.abs()[kept].min()


@pytest.mark.parametrize("n", [1, 999, 300_001])
def test_topk_int8_bound(n: int) -> None:
    x = sample(n, seed=5)
    codec = build_codec("topk_int8", fraction=0.02, block_size=64)
    decoded, payload = roundtrip(codec, x)
    positions = torch.sort(torch.topk(x.abs(), codec.k_for(n)).indices).values
    kept_x = x[positions]
    step = block_steps(kept_x, 64, 127)
    assert bool(((kept_x - decoded[positions]).abs() <= step * (0.5 + 2.0**-12)).all())
    others = torch.ones(n, dtype=torch.bool)
    others[positions] = False
    assert bool((decoded[others] == 0).all())
    assert payload.params.k == positions.numel()


def test_topk_positions_sampled_path_is_exact_and_falls_back() -> None:
    x = sample(1_000_000, seed=11)
    for k in (1, 10, 1000, 20_000):
        got = topk_positions(x, k)
        want = torch.sort(torch.topk(x.abs(), k).indices).values
        assert torch.equal(x.abs()[got].sort().values, x.abs()[want].sort().values)
        assert bool((got[1:] > got[:-1]).all())
    # all-equal magnitudes: the threshold admits everything, still exactly k sorted unique positions
    flat = torch.ones(500_000)
    got = topk_positions(flat, 777)
    assert got.numel() == 777 and torch.unique(got).numel() == 777


def test_randk_positions_follow_the_documented_generator() -> None:
    def reference(n: int, k: int, seed: int) -> list[int]:
        mask = (1 << 64) - 1
        q, r = divmod(n, k)
        out = []
        for i in range(k):
            z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & mask
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
            h = z ^ (z >> 31)
            width = q + (1 if i < r else 0)
            out.append(i * q + min(i, r) + (h >> 11) % width)
        return out

    for n, k, seed in [(10, 3, 0), (1000, 1000, 1), (12345, 77, (1 << 64) - 1), (99, 1, 1 << 63), (7, 2, 42)]:
        assert randk_positions(n, k, seed).tolist() == reference(n, k, seed)


def test_splitmix64_matches_the_reference_sequence() -> None:
    # first outputs of SplitMix64 seeded with 0 (Vigna's reference implementation)
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    got = [v & ((1 << 64) - 1) for v in splitmix64(0, 3).tolist()]
    assert got == expected


def test_randk_sends_values_at_seeded_positions_only() -> None:
    x = sample(10_000, seed=2)
    seed = derive_seed("fed", "peer-a", round_number=3)
    codec = build_codec("randk", k=100)
    decoded, payload = roundtrip(codec, x, seed=seed)
    assert payload.indices == b"" and payload.params.seed == seed
    positions = randk_positions(10_000, 100, seed)
    assert torch.equal(decoded[positions], x[positions])
    assert int((decoded != 0).sum()) <= 100
    with pytest.raises(ValueError, match="seed"):
        codec.encode(x)


def test_derive_seed_is_stable_and_separates_inputs() -> None:
    base = derive_seed("fed", "peer", round_number=1)
    assert base == derive_seed("fed", "peer", round_number=1)
    assert 0 <= base < 1 << 64
    others = {
        derive_seed("fed", "peer", round_number=2),
        derive_seed("fed", "peer2", round_number=1),
        derive_seed("fed2", "peer", round_number=1),
        derive_seed("fe", "dpeer", round_number=1),
        derive_seed("fed", "peer", round_number=1, group_id=b"\x01" * 16),
    }
    assert base not in others and len(others) == 5


def test_powersgd_projection_never_grows_the_error_and_recovers_low_rank() -> None:
    x = sample(10_000, seed=4)
    decoded, payload = roundtrip(build_codec("powersgd", rank=2), x)
    assert torch.linalg.vector_norm(x - decoded) <= torch.linalg.vector_norm(x) * (1 + 1e-5)
    assert payload.params.rank == 2 and payload.params.rows == 100
    g = torch.Generator().manual_seed(1)
    low_rank = (torch.randn(50, 1, generator=g) @ torch.randn(1, 40, generator=g)).reshape(-1)
    decoded, _ = roundtrip(build_codec("powersgd", rank=1, rows=50), low_rank)
    assert torch.allclose(decoded, low_rank, atol=1e-5 * low_rank.abs().max().item())


def test_powersgd_pads_sizes_that_do_not_factor() -> None:
    x = sample(101, seed=9)  # prime: 11 rows x 10 cols with 9 padding zeros
    decoded, payload = roundtrip(build_codec("powersgd", rank=11), x)
    assert payload.params.rows == 11 and payload.params.rank == 10  # rank capped at min(rows, cols)
    assert torch.allclose(decoded, x, atol=1e-4)  # full rank: exact up to rounding


# ------------------------------------------------------------------ residuals and zstd


@pytest.mark.parametrize("name", available())
def test_encoder_residual_is_exactly_input_minus_what_the_receiver_decodes(name: str) -> None:
    x = sample(5_003, seed=8)
    residual = torch.full_like(x, float("nan"))
    encoded = make_codec(name).encode(x, seed=99, residual=residual)
    decoded = decode(encoded.payload, limits=LIMITS)
    assert torch.equal(residual, x - decoded)


@pytest.mark.parametrize("name", available())
def test_zstd_on_and_off_decode_identically(name: str) -> None:
    x = sample(20_000, seed=6)
    off = decode(make_codec(name, zstd="off").encode(x, seed=5).payload, limits=LIMITS)
    packed = make_codec(name, zstd="on").encode(x, seed=5).payload
    assert packed.compression == pb.COMPRESSION_ZSTD and packed.HasField("raw_sizes")
    assert torch.equal(decode(packed, limits=LIMITS), off)


def test_zstd_auto_keeps_the_smaller_encoding() -> None:
    sparse = build_codec("topk", fraction=0.01, zstd="auto").encode(sample(100_000)).payload
    assert sparse.compression == pb.COMPRESSION_ZSTD  # delta-coded indices shrink a lot
    noise = torch.randn(4096)
    dense = build_codec("none", zstd="auto").encode(noise).payload
    plain = build_codec("none", zstd="off").encode(noise).payload
    assert dense.ByteSize() <= plain.ByteSize()


def test_topk_indices_are_delta_coded_uint32() -> None:
    x = torch.zeros(1000)
    x[[3, 10, 999]] = torch.tensor([1.0, -2.0, 3.0])
    payload = build_codec("topk", k=3, zstd="off").encode(x).payload
    assert np.frombuffer(payload.indices, dtype="<u4").tolist() == [3, 7, 989]
    assert np.frombuffer(payload.values, dtype="<f4").tolist() == [1.0, -2.0, 3.0]


def test_encode_rejects_bad_input() -> None:
    codec = build_codec("int8")
    for bad in (
        torch.zeros(3, 3),
        torch.zeros(4, dtype=torch.float64),
        torch.empty(0),
        torch.tensor([1.0, math.nan]),
    ):
        with pytest.raises(ValueError):
            codec.encode(bad)
