"""Compressed model updates: codecs, error feedback, and safe decoding of untrusted payloads.

Sender, once per federation and round::

    compressor = UpdateCompressor(build_codec("topk_int8", fraction=0.01), warmup_steps=5)
    payload = compressor.compress(delta, step=round_number)      # -> fednode.v1.TensorPayload
    checkpoint["compressor"] = compressor.state_dict()             # tensors and ints only

Receiver, for every payload from a peer::

    update = decode(payload, limits=DecodeLimits(max_numel=n), expected_numel=n)  # or PayloadError

Pure computation: no files, no network, no global state. See docs/compression.md.
"""

from fednode.node.compression.codecs import (
    Codec,
    Encoded,
    available,
    build_codec,
    codec_from_spec,
)
from fednode.node.compression.compressor import UpdateCompressor
from fednode.node.compression.decode import PayloadInfo, check_header, decode
from fednode.node.compression.errors import PayloadError, Reason
from fednode.node.compression.limits import DecodeLimits
from fednode.node.compression.sampling import derive_seed
from fednode.node.compression.wire import is_finite

__all__ = [
    "Codec",
    "DecodeLimits",
    "Encoded",
    "PayloadError",
    "PayloadInfo",
    "Reason",
    "UpdateCompressor",
    "available",
    "build_codec",
    "check_header",
    "codec_from_spec",
    "decode",
    "derive_seed",
    "is_finite",
]
