"""The codecs: how a flat float32 update becomes the byte fields of a TensorPayload, and back.

Each codec class is the single home of one wire format: it encodes, it states which parameters
are legal and how many bytes each field must hold (what `decode` checks before allocating), and it
decodes already-validated fields. Codec objects hold configuration only; state that must survive
between updates (error feedback, momentum, PowerSGD's warm start) belongs to `UpdateCompressor`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from fednode.node.compression import quantize as qz
from fednode.node.compression import wire
from fednode.node.compression.errors import PayloadError, Reason
from fednode.node.compression.sampling import randk_positions, topk_positions
from fednode.proto.v1 import tensor_pb2 as pb

ZstdMode = Literal["off", "on", "auto"]
ZSTD_MODES: tuple[str, ...] = ("off", "on", "auto")
MAX_BLOCK_SIZE = 1 << 20
_FP16_MAX = 65504.0
_BF16_MAX = 3.3895313892515355e38
_PARAM_NAMES = ("block_size", "k", "seed", "rank", "rows")


@dataclass(frozen=True)
class FieldSizes:
    """Raw byte lengths the shape and parameters imply, and the element width of `values`."""

    values: int
    indices: int = 0
    scales: int = 0
    values_width: int = 4


@dataclass
class Encoded:
    """Result of one encode: the payload, plus what the sender needs for its own bookkeeping.

    positions: sorted int64 positions the payload carries (sparse codecs), None when dense; DGC
        momentum masking clears exactly these coordinates.
    aux: codec state to pass to the next encode (PowerSGD's warm-start Q), empty for most codecs.
    """

    payload: pb.TensorPayload
    positions: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class RawFields:
    """The three byte fields of a payload, uncompressed."""

    values: bytes
    indices: bytes = b""
    scales: bytes = b""


@dataclass(frozen=True)
class _Fields(RawFields):
    """Codec output: raw fields and the parameters that describe them."""

    params: pb.CodecParams = field(default_factory=pb.CodecParams)


@dataclass(frozen=True)
class EncodeContext:
    """Per-call inputs of an encode besides the tensor (see `Codec.encode`)."""

    seed: int | None = None
    k: int | None = None
    aux: Mapping[str, torch.Tensor] = field(default_factory=dict)
    residual: torch.Tensor | None = None


EncodeResult = tuple[_Fields, torch.Tensor | None, dict[str, torch.Tensor]]


def _require(condition: bool, detail: str) -> None:
    if not condition:
        raise PayloadError(Reason.BAD_CODEC_PARAMS, detail)


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not wire.is_finite(t):
        raise PayloadError(Reason.NON_FINITE, f"NaN or Inf in {what}")


class Codec(ABC):
    """A named update encoding (configuration only; see `UpdateCompressor` for state).

    Subclasses set `name`, `wire_codec` (the tensor_pb2 Codec value) and `param_fields` (the
    CodecParams fields the wire format uses; all others must be 0), and implement `_encode`,
    `check_params`, `field_sizes` and `decode_fields`.
    """

    name: ClassVar[str]
    wire_codec: ClassVar[int]
    param_fields: ClassVar[frozenset[str]] = frozenset()
    sparse: ClassVar[bool] = False
    lossless: ClassVar[bool] = False
    needs_seed: ClassVar[bool] = False
    # decode checks the dense result for NaN/Inf unless the field checks already prove it finite
    check_result: ClassVar[bool] = True
    # measured in bench/compression.py: zstd only pays off where indices or factors are involved
    default_zstd: ClassVar[ZstdMode] = "off"

    def __init__(self, *, zstd: ZstdMode | None = None, zstd_level: int = 3) -> None:
        """zstd: "off", "on", or "auto" (compress, keep it only if the payload gets smaller)."""
        mode = self.default_zstd if zstd is None else zstd
        if mode not in ZSTD_MODES:
            raise ValueError(f"zstd must be one of {ZSTD_MODES}, got {zstd!r}")
        if not 1 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be in 1..22, got {zstd_level}")
        self.zstd: ZstdMode = mode
        self.zstd_level = zstd_level

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        x: torch.Tensor,
        *,
        seed: int | None = None,
        k: int | None = None,
        aux: Mapping[str, torch.Tensor] | None = None,
        residual: torch.Tensor | None = None,
    ) -> Encoded:
        """Encode 1-D float32 `x` (finite, CPU) into a TensorPayload.

        seed: RANDK only, the shared seed of the positions (see `derive_seed`).
        k: sparse codecs only, overrides the configured number of kept elements (warm-up).
        aux: codec state from the previous encode (PowerSGD).
        residual: if given (same size as x, may be x itself), receives x minus exactly what the
            receiver will decode: the error-feedback residual, computed without a dense decode.
        """
        if x.dim() != 1 or x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"expected a 1-D float32 CPU tensor, got {tuple(x.shape)} {x.dtype} {x.device}")
        n = x.numel()
        if not 1 <= n <= 1 << 32:
            raise ValueError(f"tensor must have 1..2^32 elements, got {n}")
        if not wire.is_finite(x):
            raise ValueError("cannot encode NaN or Inf")
        if residual is not None and (
            residual.shape != x.shape or residual.dtype != torch.float32 or not residual.is_contiguous()
        ):
            raise ValueError("residual must be a contiguous float32 tensor shaped like x")
        x = x.contiguous()
        ctx = EncodeContext(seed=seed, k=k, aux=aux or {}, residual=residual)
        fields, positions, new_aux = self._encode(x, ctx)
        return Encoded(payload=self._wrap(n, fields), positions=positions, aux=new_aux)

    @abstractmethod
    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        """(fields, positions or None, new aux state); writes ctx.residual when given."""

    def _wrap(self, n: int, fields: _Fields) -> pb.TensorPayload:
        """Build the payload, with zstd as configured ("auto": whichever serializes smaller)."""
        header: dict[str, Any] = {"shape": [n], "dtype": pb.DTYPE_FLOAT32, "codec": self.wire_codec, "params": fields.params}
        packed = None
        if self.zstd != "off":
            sizes = self.field_sizes(fields.params, n)
            packed = pb.TensorPayload(
                **header,
                compression=pb.COMPRESSION_ZSTD,
                raw_sizes=pb.RawSizes(values=sizes.values, indices=sizes.indices, scales=sizes.scales),
                values=wire.zstd_compress(fields.values, sizes.values_width, self.zstd_level),
                indices=wire.zstd_compress(fields.indices, 4, self.zstd_level),
                scales=wire.zstd_compress(fields.scales, 4, self.zstd_level),
            )
            if self.zstd == "on":
                return packed
        plain = pb.TensorPayload(
            **header,
            compression=pb.COMPRESSION_NONE,
            values=fields.values,
            indices=fields.indices,
            scales=fields.scales,
        )
        if packed is not None and packed.ByteSize() < plain.ByteSize():
            return packed
        return plain

    def k_for(self, n: int) -> int | None:
        """Elements kept out of n by a sparse codec; None for dense codecs."""
        return None

    def config(self) -> dict[str, object]:
        """The parameters this codec was built with (for logs, benchmarks, the federation spec)."""
        return {"zstd": self.zstd, "zstd_level": self.zstd_level}

    def spec(self) -> str:
        """`codec_from_spec` string that rebuilds this codec."""
        items = ",".join(f"{key}={value}" for key, value in self.config().items() if value is not None)
        return f"{self.name}:{items}" if items else self.name

    def __repr__(self) -> str:
        return f"<Codec {self.spec()}>"

    # ------------------------------------------------------------------ wire side (decode)

    @classmethod
    def check_params(cls, params: pb.CodecParams, n: int) -> None:
        """Raise PayloadError(BAD_CODEC_PARAMS) unless `params` is valid for n elements."""
        for name in _PARAM_NAMES:
            if name not in cls.param_fields and getattr(params, name) != 0:
                raise PayloadError(Reason.BAD_CODEC_PARAMS, f"{cls.name} does not use params.{name}")

    @classmethod
    @abstractmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        """Raw byte lengths of values / indices / scales implied by n and (valid) params."""

    @classmethod
    @abstractmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        """Dense float32 [n] from raw fields whose lengths are already checked; validates content."""


# ====================================================================== dense codecs


class NoneCodec(Codec):
    """float32 as is: lossless."""

    name = "none"
    wire_codec = pb.CODEC_NONE
    lossless = True
    check_result = False  # the result is the checked values

    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        if ctx.residual is not None:
            ctx.residual.zero_()
        return _Fields(wire.to_bytes(x)), None, {}

    @classmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        return FieldSizes(values=4 * n)

    @classmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        out = wire.from_bytes(raw.values, torch.float32)
        _check_finite(out, "values")
        return out


class _HalfCodec(Codec):
    """Shared code of the 16-bit float codecs: clamp into range, round to nearest even."""

    half_dtype: ClassVar[torch.dtype]
    half_max: ClassVar[float]
    check_result = False  # the result is the checked values

    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        half = x.clamp(-self.half_max, self.half_max).to(self.half_dtype)
        if ctx.residual is not None:
            torch.sub(x, half.to(torch.float32), out=ctx.residual)
        return _Fields(wire.to_bytes(half)), None, {}

    @classmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        return FieldSizes(values=2 * n, values_width=2)

    @classmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        out = wire.from_bytes(raw.values, cls.half_dtype).to(torch.float32)
        _check_finite(out, "values")
        return out


class Fp16Codec(_HalfCodec):
    """IEEE binary16. |error| <= max(|x| * 2^-11, 2^-25) for |x| <= 65504; larger |x| clamp to 65504."""

    name = "fp16"
    wire_codec = pb.CODEC_FP16
    half_dtype = torch.float16
    half_max = _FP16_MAX


class Bf16Codec(_HalfCodec):
    """bfloat16: fp32's range, 8 significant bits. |error| <= max(|x| * 2^-8, 2^-134)."""

    name = "bf16"
    wire_codec = pb.CODEC_BF16
    half_dtype = torch.bfloat16
    half_max = _BF16_MAX


def _check_block_size(block_size: int) -> int:
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be in 1..{MAX_BLOCK_SIZE}, got {block_size}")
    return block_size


class _BlockQuantCodec(Codec):
    """Shared code of the dense blockwise quantizers."""

    param_fields = frozenset({"block_size"})
    qmax: ClassVar[int]
    default_block_size: ClassVar[int]

    def __init__(
        self, *, block_size: int | None = None, zstd: ZstdMode | None = None, zstd_level: int = 3
    ) -> None:
        super().__init__(zstd=zstd, zstd_level=zstd_level)
        self.block_size = _check_block_size(self.default_block_size if block_size is None else block_size)

    def config(self) -> dict[str, object]:
        return {"block_size": self.block_size, **super().config()}

    @classmethod
    def check_params(cls, params: pb.CodecParams, n: int) -> None:
        super().check_params(params, n)
        _require(1 <= params.block_size <= MAX_BLOCK_SIZE, f"block_size {params.block_size} not in 1..2^20")

    @classmethod
    def _scale_bytes(cls, params: pb.CodecParams, n: int) -> int:
        return 4 * qz.num_blocks(n, params.block_size)


class Int8Codec(_BlockQuantCodec):
    """int8 codes with one absmax float32 scale per block. |error| <= scale / 254 (half a step)."""

    name = "int8"
    wire_codec = pb.CODEC_INT8
    qmax = 127
    default_block_size = 256

    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        codes, scales = qz.quantize(x, self.block_size, self.qmax, ctx.residual)
        fields = _Fields(
            wire.to_bytes(codes),
            scales=wire.to_bytes(scales),
            params=pb.CodecParams(block_size=self.block_size),
        )
        return fields, None, {}

    @classmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        return FieldSizes(values=n, scales=cls._scale_bytes(params, n), values_width=1)

    @classmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        codes = wire.from_bytes(raw.values, torch.int8)
        qz.check_codes(codes, cls.qmax)
        scale_t = wire.from_bytes(raw.scales, torch.float32)
        qz.check_scales(scale_t)
        return qz.dequantize(codes, scale_t, params.block_size, cls.qmax)


class Int4Codec(_BlockQuantCodec):
    """4-bit codes in [-7, 7], two per byte, one absmax scale per block. |error| <= scale / 14."""

    name = "int4"
    wire_codec = pb.CODEC_INT4
    qmax = 7
    default_block_size = 64

    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        codes, scales = qz.quantize(x, self.block_size, self.qmax, ctx.residual)
        packed = qz.pack_int4(codes)
        fields = _Fields(
            wire.to_bytes(packed),
            scales=wire.to_bytes(scales),
            params=pb.CodecParams(block_size=self.block_size),
        )
        return fields, None, {}

    @classmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        return FieldSizes(values=(n + 1) // 2, scales=cls._scale_bytes(params, n), values_width=1)

    @classmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        codes = qz.unpack_int4(wire.from_bytes(raw.values, torch.uint8), n)
        scale_t = wire.from_bytes(raw.scales, torch.float32)
        qz.check_scales(scale_t)
        return qz.dequantize(codes, scale_t, params.block_size, cls.qmax)


# ====================================================================== sparse codecs


class _SparseCodec(Codec):
    """Shared code of the codecs that send k of n coordinates (fraction or fixed k)."""

    sparse = True
    default_zstd: ClassVar[ZstdMode] = "auto"
    check_result = False  # zeros plus the kept values, which decode_fields checks

    def __init__(
        self,
        *,
        fraction: float | None = None,
        k: int | None = None,
        zstd: ZstdMode | None = None,
        zstd_level: int = 3,
    ) -> None:
        """Exactly one of fraction (0 < fraction <= 1, k = round(fraction * n), at least 1) or k."""
        super().__init__(zstd=zstd, zstd_level=zstd_level)
        if (fraction is None) == (k is None):
            raise ValueError(f"{self.name}: give exactly one of fraction or k")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.fraction = fraction
        self.k = k

    def k_for(self, n: int) -> int:
        """Kept elements for an n-element tensor: k, or round(fraction * n), within 1..n."""
        if self.fraction is None:
            return min(self.k or 1, n)
        return min(n, max(1, round(self.fraction * n)))

    def config(self) -> dict[str, object]:
        return {"fraction": self.fraction, "k": self.k, **super().config()}

    def _kept(self, n: int, k: int | None) -> int:
        return self.k_for(n) if k is None else max(1, min(n, k))

    @classmethod
    def check_params(cls, params: pb.CodecParams, n: int) -> None:
        super().check_params(params, n)
        _require(1 <= params.k <= n, f"k {params.k} not in 1..n={n}")


def _select_and_clear(
    x: torch.Tensor, positions: torch.Tensor, residual: torch.Tensor | None
) -> torch.Tensor:
    """Values at `positions`; the residual keeps everything else (sent values are exact: 0 there)."""
    values = x[positions]
    if residual is not None:
        if residual.data_ptr() != x.data_ptr():
            residual.copy_(x)
        residual[positions] = 0.0
    return values


def _scatter(n: int, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out = wire.empty(n, zero=True)
    out[positions] = values
    return out


class TopKCodec(_SparseCodec):
    """The k largest-magnitude coordinates, exact float32. Dropped |x_i| <= every kept |x_j|."""

    name = "topk"
    wire_codec = pb.CODEC_TOPK
    param_fields = frozenset({"k"})

    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        kept = self._kept(x.numel(), ctx.k)
        positions = topk_positions(x, kept)
        values = _select_and_clear(x, positions, ctx.residual)
        fields = _Fields(
            wire.to_bytes(values), indices=wire.encode_positions(positions), params=pb.CodecParams(k=kept)
        )
        return fields, positions, {}

    @classmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        return FieldSizes(values=4 * params.k, indices=4 * params.k)

    @classmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        positions = wire.decode_positions(raw.indices, n)
        kept = wire.from_bytes(raw.values, torch.float32)
        _check_finite(kept, "values")
        return _scatter(n, positions, kept)


class TopKInt8Codec(_SparseCodec):
    """Top-k positions with int8 values (absmax scale per block of kept values).

    Kept coordinates: |error| <= scale / 254; dropped ones as in topk.
    """

    name = "topk_int8"
    wire_codec = pb.CODEC_TOPK_INT8
    param_fields = frozenset({"k", "block_size"})

    def __init__(
        self,
        *,
        fraction: float | None = None,
        k: int | None = None,
        block_size: int = 256,
        zstd: ZstdMode | None = None,
        zstd_level: int = 3,
    ) -> None:
        super().__init__(fraction=fraction, k=k, zstd=zstd, zstd_level=zstd_level)
        self.block_size = _check_block_size(block_size)

    def config(self) -> dict[str, object]:
        return {"block_size": self.block_size, **super().config()}

    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        kept = self._kept(x.numel(), ctx.k)
        positions = topk_positions(x, kept)
        values = x[positions]
        value_residual = torch.empty_like(values) if ctx.residual is not None else None
        codes, scales = qz.quantize(values, self.block_size, 127, value_residual)
        if ctx.residual is not None:
            if ctx.residual.data_ptr() != x.data_ptr():
                ctx.residual.copy_(x)
            ctx.residual[positions] = value_residual
        fields = _Fields(
            wire.to_bytes(codes),
            indices=wire.encode_positions(positions),
            scales=wire.to_bytes(scales),
            params=pb.CodecParams(k=kept, block_size=self.block_size),
        )
        return fields, positions, {}

    @classmethod
    def check_params(cls, params: pb.CodecParams, n: int) -> None:
        super().check_params(params, n)
        _require(1 <= params.block_size <= MAX_BLOCK_SIZE, f"block_size {params.block_size} not in 1..2^20")

    @classmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        return FieldSizes(
            values=params.k,
            indices=4 * params.k,
            scales=4 * qz.num_blocks(params.k, params.block_size),
            values_width=1,
        )

    @classmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        positions = wire.decode_positions(raw.indices, n)
        codes = wire.from_bytes(raw.values, torch.int8)
        qz.check_codes(codes, 127)
        scale_t = wire.from_bytes(raw.scales, torch.float32)
        qz.check_scales(scale_t)
        kept = qz.dequantize(codes, scale_t, params.block_size, 127)
        _check_finite(kept, "dequantized values")  # q * (scale / 127) can round up past FLT_MAX
        return _scatter(n, positions, kept)


class RandKCodec(_SparseCodec):
    """k coordinates at positions both sides derive from a shared seed; values exact float32.

    Only values travel (4 bytes per kept element, no indices). Without error feedback it is a
    biased estimator (it drops n-k coordinates and does not rescale): use it with error feedback.
    """

    name = "randk"
    wire_codec = pb.CODEC_RANDK
    param_fields = frozenset({"k", "seed"})
    needs_seed = True

    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        if ctx.seed is None:
            raise ValueError("randk needs the shared seed (see derive_seed)")
        if not 0 <= ctx.seed < 1 << 64:
            raise ValueError("seed must be a uint64")
        kept = self._kept(x.numel(), ctx.k)
        positions = randk_positions(x.numel(), kept, ctx.seed)
        values = _select_and_clear(x, positions, ctx.residual)
        return _Fields(wire.to_bytes(values), params=pb.CodecParams(k=kept, seed=ctx.seed)), positions, {}

    @classmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        return FieldSizes(values=4 * params.k)

    @classmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        kept = wire.from_bytes(raw.values, torch.float32)
        _check_finite(kept, "values")
        return _scatter(n, randk_positions(n, params.k, params.seed), kept)


# ====================================================================== low rank


def default_rows(n: int) -> int:
    """Rows of the near-square matrix view PowerSGD uses when none is configured."""
    return max(1, math.isqrt(n - 1) + 1 if n > 1 else 1)


class PowerSgdCodec(Codec):
    """Rank-r PowerSGD (Vogels et al. 2019) of the rows x cols view, one power iteration per encode.

    P = orthonormalize(M Q_prev), Q = M^T P; the receiver decodes P Q^T, the orthogonal projection
    of M onto span(P), so ||x - decoded|| <= ||x|| always and rank-<=r matrices are recovered once
    P spans their column space. Q is kept between encodes (warm start, in the compressor's state):
    with error feedback the power iteration converges across rounds.
    Note: the view of the whole flattened model mixes layers; per-layer views would approximate
    better but need the model layout, which the payload does not carry.
    """

    name = "powersgd"
    wire_codec = pb.CODEC_POWERSGD
    param_fields = frozenset({"rank", "rows"})
    default_zstd: ClassVar[ZstdMode] = "auto"

    def __init__(
        self, *, rank: int = 2, rows: int | None = None, zstd: ZstdMode | None = None, zstd_level: int = 3
    ) -> None:
        super().__init__(zstd=zstd, zstd_level=zstd_level)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.rank = rank
        self.rows = rows

    def config(self) -> dict[str, object]:
        return {"rank": self.rank, "rows": self.rows, **super().config()}

    def _encode(self, x: torch.Tensor, ctx: EncodeContext) -> EncodeResult:
        n = x.numel()
        rows = min(n, self.rows or default_rows(n))
        cols = -(-n // rows)
        rank = min(self.rank, rows, cols)
        matrix = wire.empty(rows * cols)
        matrix[:n] = x
        matrix[n:] = 0.0
        matrix = matrix.view(rows, cols)
        q = ctx.aux.get("q")
        if q is None or q.shape != (cols, rank):
            q = torch.randn(cols, rank, generator=torch.Generator().manual_seed(0x9A5D), dtype=torch.float32)
        # contiguous factors, laid out as the receiver reads them, so that P Q^T rounds identically
        p = torch.linalg.qr(matrix @ q).Q.contiguous()
        q = (matrix.T @ p).contiguous()
        if ctx.residual is not None:
            decoded = (p @ q.T).view(-1)[:n]
            torch.sub(x, decoded, out=ctx.residual)
        fields = _Fields(wire.to_bytes(p) + wire.to_bytes(q), params=pb.CodecParams(rank=rank, rows=rows))
        return fields, None, {"q": q}

    @classmethod
    def check_params(cls, params: pb.CodecParams, n: int) -> None:
        super().check_params(params, n)
        _require(1 <= params.rows <= n, f"rows {params.rows} not in 1..n={n}")
        cols = -(-n // params.rows)
        _require(1 <= params.rank <= min(params.rows, cols), f"rank {params.rank} not in 1..min(rows, cols)")

    @classmethod
    def field_sizes(cls, params: pb.CodecParams, n: int) -> FieldSizes:
        cols = -(-n // params.rows)
        return FieldSizes(values=4 * params.rank * (params.rows + cols))

    @classmethod
    def decode_fields(cls, params: pb.CodecParams, n: int, raw: RawFields) -> torch.Tensor:
        rows, rank = params.rows, params.rank
        cols = -(-n // rows)
        factors = wire.from_bytes(raw.values, torch.float32)
        _check_finite(factors, "factors")
        p = factors[: rows * rank].view(rows, rank)
        q = factors[rows * rank :].view(cols, rank)
        return (p @ q.T).view(-1)[:n].clone()


# ====================================================================== registry

_CODECS: dict[str, type[Codec]] = {
    cls.name: cls
    for cls in (
        NoneCodec,
        Fp16Codec,
        Bf16Codec,
        Int8Codec,
        Int4Codec,
        TopKCodec,
        TopKInt8Codec,
        RandKCodec,
        PowerSgdCodec,
    )
}
_BY_WIRE: dict[int, type[Codec]] = {cls.wire_codec: cls for cls in _CODECS.values()}


def available() -> tuple[str, ...]:
    """Names `build_codec` accepts, in wire-enum order."""
    return tuple(_CODECS)


def build_codec(name: str, **params: object) -> Codec:
    """A codec by name with its parameters, e.g. build_codec("topk_int8", fraction=0.01).

    Raises ValueError for an unknown name or parameter, so a bad federation config fails loudly.
    """
    cls = _CODECS.get(name)
    if cls is None:
        raise ValueError(f"unknown codec {name!r}; available: {', '.join(_CODECS)}")
    try:
        return cls(**params)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"bad parameters for codec {name!r}: {exc}") from None


def codec_from_spec(spec: str) -> Codec:
    """Build a codec from the string form federations store, e.g. "topk_int8:fraction=0.01,zstd=on".

    Values parse as int, then float, else stay strings; "None" means unset.
    """
    name, _, rest = spec.strip().partition(":")
    params: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"bad codec spec item {item!r} (expected key=value)")
        params[key.strip()] = _parse_value(text.strip())
    return build_codec(name.strip(), **params)


def _parse_value(text: str) -> object:
    if text == "None":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def codec_class(wire_codec: int) -> type[Codec] | None:
    """The codec class of a tensor_pb2 Codec value, None when unknown (decode rejects it)."""
    return _BY_WIRE.get(wire_codec)
