"""Blockwise symmetric absmax quantization (8 and 4 bits) and 4-bit packing, vectorized.

One float32 scale per block of consecutive values keeps the error local: a single large weight only
coarsens its own block. The work runs over chunks of about a million elements so the float
temporaries stay in cache and are allocated once, instead of streaming several 40 MB temporaries
through memory for a 10M-parameter update. The Python loop is over chunks, never over elements.
"""

from __future__ import annotations

import torch

from fednode.node.compression.errors import PayloadError, Reason
from fednode.node.compression.wire import empty

# Elements per chunk of work; about 4 MB of float32 temporaries.
_CHUNK_ELEMENTS = 1 << 20
# Blocks whose step (scale / qmax) is below the smallest normal float32 quantize to zero: 1 / step
# would overflow. Their values (|x| < 127 * 2^-126, about 2e-36) go to the error-feedback residual.
_SMALLEST_NORMAL = 2.0**-126


def num_blocks(n: int, block: int) -> int:
    """Scale blocks for n values: ceil(n / block)."""
    return -(-n // block)


def _row_ranges(n: int, block: int) -> list[tuple[int, int, int]]:
    """(first element, end element, block length) of each 2-D piece: full-block chunks, then the tail.

    Every piece is a contiguous run of whole blocks of the same length, so it views as (rows, block).
    """
    full_blocks = n // block
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // block)
    pieces = []
    for first_row in range(0, full_blocks, rows_per_chunk):
        end_row = min(full_blocks, first_row + rows_per_chunk)
        pieces.append((first_row * block, end_row * block, block))
    if n % block:
        pieces.append((full_blocks * block, n, n % block))
    return pieces


def quantize(
    x: torch.Tensor, block: int, qmax: int, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize 1-D float32 `x` to int8 codes in [-qmax, qmax] with one absmax scale per block.

    Returns (codes, scales). The decoder computes codes * (scales / qmax) in float32; when
    `residual` is given (it may be `x` itself) it receives x minus exactly that decoded value, so
    error feedback carries precisely what the receiver did not get.
    Error per element: <= step / 2 with step = scale / qmax, up to float32 rounding.
    """
    n = x.numel()
    codes = empty(n, torch.int8)
    scales = torch.empty(num_blocks(n, block), dtype=torch.float32)
    buffer = torch.empty(min(n, max(block, _CHUNK_ELEMENTS)), dtype=torch.float32)
    for start, end, length in _row_ranges(n, block):
        rows = (end - start) // length
        xv = x[start:end].view(rows, length)
        amax = torch.maximum(xv.amax(1), xv.amin(1).neg())
        first_block = start // block
        scales[first_block : first_block + rows] = amax
        step = amax / qmax
        inverse = torch.where(step >= _SMALLEST_NORMAL, 1.0 / step.clamp(min=_SMALLEST_NORMAL), 0.0)
        work = torch.mul(xv, inverse.unsqueeze(1), out=buffer[: end - start].view(rows, length))
        work.round_().clamp_(-qmax, qmax)
        codes[start:end].view(rows, length).copy_(work)
        if residual is not None:
            work.mul_(step.unsqueeze(1))
            torch.sub(xv, work, out=residual[start:end].view(rows, length))
    return codes, scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, block: int, qmax: int) -> torch.Tensor:
    """float32 values codes * (scales / qmax), block by block (the wire definition).

    Converting the codes first and scaling in place is 3x faster than one mixed int8 x float32
    multiply (measured 11 ms vs 38 ms for 10M codes); the result is the same float32 product.
    """
    n = codes.numel()
    out = empty(n)
    out.copy_(codes)
    steps = scales / qmax
    full = (n // block) * block
    if full:
        out[:full].view(-1, block).mul_(steps[: n // block].unsqueeze(1))
    if full < n:
        out[full:].mul_(steps[-1])
    return out


def check_codes(codes: torch.Tensor, qmax: int) -> None:
    """Reject codes outside [-qmax, qmax] (-128 for int8, -8 for int4 are never produced)."""
    if codes.numel() and int(codes.min()) < -qmax:
        raise PayloadError(Reason.VALUE_OUT_OF_RANGE, f"quantized code below -{qmax}")


def check_scales(scales: torch.Tensor) -> None:
    """Scales are absolute maxima: finite and >= 0."""
    if scales.numel() == 0:
        return
    if not bool(torch.isfinite(scales).all()):
        raise PayloadError(Reason.NON_FINITE, "non-finite quantization scale")
    if float(scales.min()) < 0:
        raise PayloadError(Reason.BAD_SCALE, "negative quantization scale")


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit two's-complement codes per byte, element 2i low nibble, 2i+1 high; odd n pads 0."""
    n = codes.numel()
    if n % 2:
        codes = torch.cat((codes, codes.new_zeros(1)))
    nibbles = codes.view(torch.uint8) & 0x0F
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """int8 codes from packed bytes; rejects the code -8 and a non-zero padding nibble."""
    if n % 2 and int(packed[-1]) >> 4:
        raise PayloadError(Reason.VALUE_OUT_OF_RANGE, "padding nibble of an odd-length int4 tensor is not 0")
    codes = empty(2 * packed.numel(), torch.int8)
    # sign-extend 4-bit two's complement without branches: (v ^ 8) - 8 maps 8..15 to -8..-1
    codes[0::2] = ((packed & 0x0F).view(torch.int8) ^ 8) - 8
    codes[1::2] = ((packed >> 4).view(torch.int8) ^ 8) - 8
    codes = codes[:n]
    check_codes(codes, 7)
    return codes
