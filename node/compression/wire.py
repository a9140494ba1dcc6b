"""Byte-level helpers of the wire format: little-endian arrays, byte planes, zstd, delta indices.

Kept apart from the codecs so that every codec writes and reads bytes the same way, and so the
defensive parts (zstd frame checks, index checks) exist once.
"""

from __future__ import annotations

import numpy as np
import torch
import zstandard

from fednode.node.compression.errors import PayloadError, Reason

# numpy spelling of the little-endian wire types, by torch dtype
_WIRE_DTYPE: dict[torch.dtype, str] = {
    torch.float32: "<f4",
    torch.float16: "<f2",
    torch.int8: "i1",
    torch.uint8: "u1",
    torch.int32: "<i4",
    torch.int16: "<i2",
}

_NUMPY_DTYPE: dict[torch.dtype, type] = {
    torch.float32: np.float32,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.int64: np.int64,
}

# zstd never needs a window larger than the frame's content; this caps what a hostile header can ask
_MAX_WINDOW = 1 << 27


def to_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a CPU tensor (bfloat16 goes through its 16-bit pattern)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().astype(_WIRE_DTYPE[t.dtype], copy=False).tobytes()


def from_bytes(data: bytes, dtype: torch.dtype) -> torch.Tensor:
    """A fresh, writable tensor holding `data` read as little-endian `dtype` elements.

    Copied (not a view of the payload: no aliasing, no read-only tensors) into memory from numpy's
    allocator (see `empty`); for CODEC_NONE this copy is the output tensor itself.
    The caller has already checked that len(data) is a multiple of the element size.
    """
    if dtype == torch.bfloat16:
        return from_bytes(data, torch.int16).view(torch.bfloat16)
    wire_dtype = "<i2" if dtype == torch.int16 else _WIRE_DTYPE[dtype]
    array = np.frombuffer(data, dtype=wire_dtype).astype(np.dtype(wire_dtype).newbyteorder("="))
    return torch.from_numpy(array)


def empty(n: int, dtype: torch.dtype = torch.float32, *, zero: bool = False) -> torch.Tensor:
    """A fresh CPU tensor of n elements, allocated by numpy.

    numpy asks the kernel for transparent huge pages on large arrays (madvise) and torch does not:
    first-touch page faults of a fresh 40 MB tensor drop from ~25 ms to ~10 ms on this machine,
    which is a third of a whole top-k decode. The tensor owns (references) the numpy array.
    """
    array: np.ndarray = np.empty(n, dtype=_NUMPY_DTYPE[dtype])
    tensor = torch.from_numpy(array)
    if zero:
        tensor.zero_()
    return tensor


def split_planes(raw: bytes, width: int) -> bytes:
    """Byte planes: all bytes 0 of the `width`-byte elements, then all bytes 1, ...

    Deltas of sorted indices and float exponents have near-constant high bytes; grouping them
    turns those bytes into long runs that zstd removes almost for free.
    """
    if width == 1 or not raw:
        return raw
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, width).T.tobytes()


def join_planes(planes: bytes, width: int) -> bytes:
    """Inverse of `split_planes`; len(planes) is a multiple of width (checked by the caller)."""
    if width == 1 or not planes:
        return planes
    return np.frombuffer(planes, dtype=np.uint8).reshape(width, -1).T.tobytes()


def zstd_compress(raw: bytes, width: int, level: int) -> bytes:
    """One zstd frame of the byte planes of `raw`, content size in the header; b"" stays b""."""
    if not raw:
        return b""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(split_planes(raw, width))


def zstd_decompress(frame: bytes, expected: int, width: int, field: str) -> bytes:
    """Decompress one field whose raw size the shape and codec imply, refusing anything else.

    The frame header must announce exactly `expected` bytes and use no dictionary before a single
    byte is decompressed, and the output buffer is capped at `expected`: a frame that expands to
    more (a zstd bomb), to less, or that carries trailing data is rejected.
    """
    if expected == 0:
        if frame:
            raise PayloadError(Reason.LENGTH_MISMATCH, f"{field}: {len(frame)} bytes where none are implied")
        return b""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise PayloadError(Reason.DECOMPRESSION_FAILED, f"{field}: bad zstd frame header ({exc})") from None
    if params.content_size != expected:
        raise PayloadError(
            Reason.DECOMPRESSION_FAILED,
            f"{field}: zstd header announces {params.content_size} bytes, {expected} implied",
        )
    if params.dict_id != 0:
        raise PayloadError(
            Reason.DECOMPRESSION_FAILED, f"{field}: zstd frame needs dictionary {params.dict_id}"
        )
    try:
        out = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).decompress(
            frame, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise PayloadError(Reason.DECOMPRESSION_FAILED, f"{field}: {exc}") from None
    if len(out) != expected:
        raise PayloadError(
            Reason.DECOMPRESSION_FAILED, f"{field}: {len(out)} bytes decompressed, {expected} implied"
        )
    return join_planes(out, width)


def encode_positions(positions: torch.Tensor) -> bytes:
    """Delta-code strictly increasing int64 positions (each < 2^32) as uint32 little-endian."""
    gaps = torch.empty_like(positions)
    gaps[:1] = positions[:1]
    torch.sub(positions[1:], positions[:-1], out=gaps[1:])
    return gaps.numpy().astype("<u4").tobytes()


def decode_positions(data: bytes, n: int) -> torch.Tensor:
    """Positions (int64) from delta-coded uint32 bytes, checked: strictly increasing and < n.

    Sums run in int64, where k uint32 deltas (k <= 2^32) cannot overflow, so an "unsorted" list
    (a wrapped-around delta) shows up as a position >= n instead of wrapping back into range.
    """
    gaps = torch.from_numpy(np.frombuffer(data, dtype="<u4").astype(np.int64))
    if gaps.numel() > 1 and bool((gaps[1:] == 0).any()):
        raise PayloadError(Reason.DUPLICATE_INDEX, "a zero delta repeats the previous position")
    positions = torch.cumsum(gaps, 0)
    last = int(positions[-1]) if positions.numel() else -1
    if last >= n:
        raise PayloadError(Reason.INDEX_OUT_OF_RANGE, f"position {last} >= n = {n}")
    return positions


def is_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or Inf; fast path: a finite float sum implies finite elements.

    NaN and Inf propagate through a sum, so a finite sum proves every element finite. Only a
    non-finite sum (which may just be an overflow of large finite values) pays the full check.
    """
    if t.numel() == 0:
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())
