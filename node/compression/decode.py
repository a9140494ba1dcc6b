"""Stateless, defensive decoding of TensorPayload messages from untrusted peers.

Order matters: everything that can be checked from the header (dtype, codec, shape against the
limits, parameters, the byte length every field must have, zstd raw sizes) is checked before a
single element is allocated, so the largest allocation a hostile payload can cause is bounded by
`DecodeLimits.max_numel`. Content checks (indices, codes, scales, NaN) follow, and the dense result
is returned only when all of them pass. Any violation raises `PayloadError`; nothing else changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fednode.node.compression import wire
from fednode.node.compression.codecs import Codec, FieldSizes, RawFields, codec_class
from fednode.node.compression.errors import PayloadError, Reason
from fednode.node.compression.limits import DecodeLimits
from fednode.proto.v1 import tensor_pb2 as pb


@dataclass(frozen=True)
class PayloadInfo:
    """What a payload's header says, once validated: enough to decide before touching the data."""

    codec: type[Codec]
    shape: tuple[int, ...]
    numel: int
    sizes: FieldSizes
    compressed: bool

    @property
    def codec_name(self) -> str:
        return self.codec.name


def check_header(
    payload: pb.TensorPayload, *, limits: DecodeLimits, expected_numel: int | None = None
) -> PayloadInfo:
    """Validate everything but field contents; raises PayloadError. Allocates nothing large."""
    if not isinstance(payload, pb.TensorPayload):
        raise PayloadError(Reason.BAD_MESSAGE, f"expected a TensorPayload, got {type(payload).__name__}")
    if payload.dtype != pb.DTYPE_FLOAT32:
        raise PayloadError(
            Reason.UNSUPPORTED_DTYPE, f"dtype {payload.dtype} (only DTYPE_FLOAT32 is accepted)"
        )
    codec = codec_class(payload.codec)
    if codec is None:
        raise PayloadError(Reason.UNKNOWN_CODEC, f"codec {payload.codec}")
    if limits.allowed_codecs is not None and codec.name not in limits.allowed_codecs:
        raise PayloadError(
            Reason.CODEC_NOT_ALLOWED, f"codec {codec.name} not in {sorted(limits.allowed_codecs)}"
        )
    if payload.compression not in (pb.COMPRESSION_NONE, pb.COMPRESSION_ZSTD):
        raise PayloadError(Reason.UNKNOWN_COMPRESSION, f"compression {payload.compression}")

    if len(payload.shape) > limits.max_dims:
        raise PayloadError(Reason.BAD_SHAPE, f"{len(payload.shape)} dimensions > {limits.max_dims}")
    shape = tuple(payload.shape)
    numel = math.prod(shape)  # Python ints: no overflow however large the claimed dimensions
    if numel == 0:
        raise PayloadError(Reason.BAD_SHAPE, f"shape {shape} has no elements")
    if numel > limits.max_numel:
        raise PayloadError(Reason.TOO_LARGE, f"{numel} elements > limit {limits.max_numel}")
    if expected_numel is not None and numel != expected_numel:
        raise PayloadError(Reason.SHAPE_MISMATCH, f"{numel} elements, expected {expected_numel}")

    codec.check_params(payload.params, numel)
    sizes = codec.field_sizes(payload.params, numel)
    compressed = payload.compression == pb.COMPRESSION_ZSTD
    if compressed:
        if not payload.HasField("raw_sizes"):
            raise PayloadError(Reason.BAD_RAW_SIZES, "zstd payload without raw_sizes")
        declared = (payload.raw_sizes.values, payload.raw_sizes.indices, payload.raw_sizes.scales)
        implied = (sizes.values, sizes.indices, sizes.scales)
        if declared != implied:
            raise PayloadError(Reason.BAD_RAW_SIZES, f"raw sizes {declared}, shape and codec imply {implied}")
    elif payload.HasField("raw_sizes"):
        raise PayloadError(Reason.BAD_RAW_SIZES, "raw_sizes present without compression")
    return PayloadInfo(codec=codec, shape=shape, numel=numel, sizes=sizes, compressed=compressed)


def _raw_fields(payload: pb.TensorPayload, info: PayloadInfo) -> RawFields:
    """The three fields, decompressed if needed, each of exactly the implied length."""
    sizes = info.sizes
    # every access to a protobuf bytes field copies it: read each once
    found = {"values": payload.values, "indices": payload.indices, "scales": payload.scales}
    expected = {"values": sizes.values, "indices": sizes.indices, "scales": sizes.scales}
    widths = {"values": sizes.values_width, "indices": 4, "scales": 4}
    if info.compressed:
        found = {
            name: wire.zstd_decompress(data, expected[name], widths[name], name)
            for name, data in found.items()
        }
    for name, data in found.items():
        if len(data) != expected[name]:
            raise PayloadError(Reason.LENGTH_MISMATCH, f"{name}: {len(data)} bytes, {expected[name]} implied")
    return RawFields(values=found["values"], indices=found["indices"], scales=found["scales"])


def decode(
    payload: pb.TensorPayload, *, limits: DecodeLimits, expected_numel: int | None = None
) -> torch.Tensor:
    """The dense float32 tensor a payload encodes, shaped as declared; raises PayloadError.

    limits: the receiver's bounds (see DecodeLimits); expected_numel: the model's size, if known
    (a payload of any other size is rejected as "shape_mismatch" before its data is read).
    Peak memory is about 4 bytes per element for the result plus the raw fields and temporaries of
    the same order, never more than a small multiple of 4 * limits.max_numel bytes.
    """
    info = check_header(payload, limits=limits, expected_numel=expected_numel)
    raw = _raw_fields(payload, info)
    dense = info.codec.decode_fields(payload.params, info.numel, raw)
    # catches what field checks cannot: overflow to Inf in P Q^T, or in q * (scale / qmax) for a
    # scale next to FLT_MAX
    if info.codec.check_result and not wire.is_finite(dense):
        raise PayloadError(Reason.NON_FINITE, "decoded tensor contains NaN or Inf")
    return dense.view(info.shape)
