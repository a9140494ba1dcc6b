from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_NONE: _ClassVar[Codec]
    CODEC_FP16: _ClassVar[Codec]
    CODEC_BF16: _ClassVar[Codec]
    CODEC_INT8: _ClassVar[Codec]
    CODEC_INT4: _ClassVar[Codec]
    CODEC_TOPK: _ClassVar[Codec]
    CODEC_TOPK_INT8: _ClassVar[Codec]
    CODEC_RANDK: _ClassVar[Codec]
    CODEC_POWERSGD: _ClassVar[Codec]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_ZSTD: _ClassVar[Compression]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT64: DType
CODEC_UNSPECIFIED: Codec
CODEC_NONE: Codec
CODEC_FP16: Codec
CODEC_BF16: Codec
CODEC_INT8: Codec
CODEC_INT4: Codec
CODEC_TOPK: Codec
CODEC_TOPK_INT8: Codec
CODEC_RANDK: Codec
CODEC_POWERSGD: Codec
COMPRESSION_NONE: Compression
COMPRESSION_ZSTD: Compression

class CodecParams(_message.Message):
    __slots__ = ("block_size", "k", "seed", "rank", "rows")
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    block_size: int
    k: int
    seed: int
    rank: int
    rows: int
    def __init__(self, block_size: _Optional[int] = ..., k: _Optional[int] = ..., seed: _Optional[int] = ..., rank: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class RawSizes(_message.Message):
    __slots__ = ("values", "indices", "scales")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    values: int
    indices: int
    scales: int
    def __init__(self, values: _Optional[int] = ..., indices: _Optional[int] = ..., scales: _Optional[int] = ...) -> None: ...

class TensorPayload(_message.Message):
    __slots__ = ("shape", "dtype", "codec", "params", "compression", "raw_sizes", "values", "indices", "scales")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    RAW_SIZES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    codec: Codec
    params: CodecParams
    compression: Compression
    raw_sizes: RawSizes
    values: bytes
    indices: bytes
    scales: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., codec: _Optional[_Union[Codec, str]] = ..., params: _Optional[_Union[CodecParams, _Mapping]] = ..., compression: _Optional[_Union[Compression, str]] = ..., raw_sizes: _Optional[_Union[RawSizes, _Mapping]] = ..., values: _Optional[bytes] = ..., indices: _Optional[bytes] = ..., scales: _Optional[bytes] = ...) -> None: ...
