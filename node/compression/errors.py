"""The one exception every rejected payload raises, with a machine-readable reason.

Peers receive payloads from strangers. The node must tell "this sender is broken or hostile"
(count it, reject the update, carry on) apart from its own bugs, so decoding raises exactly one
exception type for every malformed input, and its `reason` is a short stable code that logs,
metrics and the admin API can aggregate on.
"""

from __future__ import annotations

from enum import Enum

from fednode.proto.v1 import envelope_pb2


class Reason(str, Enum):
    """Why a payload was rejected. The values are stable: metrics and logs key on them."""

    BAD_MESSAGE = "bad_message"  # not a TensorPayload at all
    UNSUPPORTED_DTYPE = "unsupported_dtype"  # dtype is not DTYPE_FLOAT32
    UNKNOWN_CODEC = "unknown_codec"  # codec enum unknown or unspecified
    CODEC_NOT_ALLOWED = "codec_not_allowed"  # known codec, but not one this receiver accepts
    UNKNOWN_COMPRESSION = "unknown_compression"  # compression enum unknown
    BAD_SHAPE = "bad_shape"  # too many dimensions, or zero elements
    TOO_LARGE = "too_large"  # more elements than DecodeLimits.max_numel
    SHAPE_MISMATCH = "shape_mismatch"  # element count differs from what the receiver expects
    BAD_CODEC_PARAMS = "bad_codec_params"  # a parameter out of range, or set for a codec that ignores it
    BAD_RAW_SIZES = "bad_raw_sizes"  # raw_sizes missing, present without zstd, or not the implied sizes
    LENGTH_MISMATCH = "length_mismatch"  # a field's byte length is not what shape and codec imply
    DECOMPRESSION_FAILED = "decompression_failed"  # a zstd frame is corrupt, lies about its size, ...
    INDEX_OUT_OF_RANGE = "index_out_of_range"  # a sparse position >= n (also: an unsorted list)
    DUPLICATE_INDEX = "duplicate_index"  # a zero delta: the same position twice
    VALUE_OUT_OF_RANGE = "value_out_of_range"  # an invalid integer code (-128, -8, a padding nibble)
    BAD_SCALE = "bad_scale"  # a negative quantization scale
    NON_FINITE = "non_finite"  # NaN or Inf in a field or in the decoded result


# Every reason maps onto the coarser wire-level RejectReason peers report to each other.
_REJECT_REASON: dict[Reason, int] = {
    Reason.BAD_MESSAGE: envelope_pb2.REJECT_MALFORMED,
    Reason.TOO_LARGE: envelope_pb2.REJECT_OVERSIZED,
    Reason.SHAPE_MISMATCH: envelope_pb2.REJECT_LAYOUT_MISMATCH,
    Reason.NON_FINITE: envelope_pb2.REJECT_NON_FINITE,
}


class PayloadError(ValueError):
    """A payload failed validation. Raised before anything is allocated or changed.

    `reason` is a `Reason` (a str enum, so `err.reason == "too_large"` works); the message adds
    the numbers a human needs to see what was wrong.
    """

    def __init__(self, reason: Reason | str, detail: str) -> None:
        code = Reason(reason)  # a plain string must be one of the known codes
        super().__init__(f"{code.value}: {detail}")
        self.reason = code
        self.detail = detail

    @property
    def reject_reason(self) -> int:
        """The `fednode.v1.RejectReason` value to report for this rejection."""
        return _REJECT_REASON.get(self.reason, envelope_pb2.REJECT_BAD_PAYLOAD)
