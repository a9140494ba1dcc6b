from fednode.proto.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelLayout(_message.Message):
    __slots__ = ("parameters", "numel", "digest")
    class Parameter(_message.Message):
        __slots__ = ("name", "shape", "dtype")
        NAME_FIELD_NUMBER: _ClassVar[int]
        SHAPE_FIELD_NUMBER: _ClassVar[int]
        DTYPE_FIELD_NUMBER: _ClassVar[int]
        name: str
        shape: _containers.RepeatedScalarFieldContainer[int]
        dtype: _tensor_pb2.DType
        def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ...) -> None: ...
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    NUMEL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[ModelLayout.Parameter]
    numel: int
    digest: str
    def __init__(self, parameters: _Optional[_Iterable[_Union[ModelLayout.Parameter, _Mapping]]] = ..., numel: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("federation_id", "sender_peer_id", "round", "group_id", "base_model_version", "layout_digest", "payload_sha256", "payload_size", "codec", "num_samples", "local_steps", "train_loss", "created_unix_ms", "seconds_per_step", "inline_payload", "outer_digest", "parts_root", "parts")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    INLINE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    OUTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTS_ROOT_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    sender_peer_id: str
    round: int
    group_id: bytes
    base_model_version: int
    layout_digest: str
    payload_sha256: bytes
    payload_size: int
    codec: _tensor_pb2.Codec
    num_samples: int
    local_steps: int
    train_loss: float
    created_unix_ms: int
    seconds_per_step: float
    inline_payload: bytes
    outer_digest: str
    parts_root: bytes
    parts: int
    def __init__(self, federation_id: _Optional[str] = ..., sender_peer_id: _Optional[str] = ..., round: _Optional[int] = ..., group_id: _Optional[bytes] = ..., base_model_version: _Optional[int] = ..., layout_digest: _Optional[str] = ..., payload_sha256: _Optional[bytes] = ..., payload_size: _Optional[int] = ..., codec: _Optional[_Union[_tensor_pb2.Codec, str]] = ..., num_samples: _Optional[int] = ..., local_steps: _Optional[int] = ..., train_loss: _Optional[float] = ..., created_unix_ms: _Optional[int] = ..., seconds_per_step: _Optional[float] = ..., inline_payload: _Optional[bytes] = ..., outer_digest: _Optional[str] = ..., parts_root: _Optional[bytes] = ..., parts: _Optional[int] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("federation_id", "model_version", "round", "layout_digest", "payload_sha256", "payload_size", "state_sha256", "state_size", "created_unix_ms", "applied_groups", "outer_digest")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    OUTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    model_version: int
    round: int
    layout_digest: str
    payload_sha256: bytes
    payload_size: int
    state_sha256: bytes
    state_size: int
    created_unix_ms: int
    applied_groups: _containers.RepeatedScalarFieldContainer[bytes]
    outer_digest: str
    def __init__(self, federation_id: _Optional[str] = ..., model_version: _Optional[int] = ..., round: _Optional[int] = ..., layout_digest: _Optional[str] = ..., payload_sha256: _Optional[bytes] = ..., payload_size: _Optional[int] = ..., state_sha256: _Optional[bytes] = ..., state_size: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., applied_groups: _Optional[_Iterable[bytes]] = ..., outer_digest: _Optional[str] = ...) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("parameters", "outer")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OUTER_FIELD_NUMBER: _ClassVar[int]
    parameters: _tensor_pb2.TensorPayload
    outer: OuterState
    def __init__(self, parameters: _Optional[_Union[_tensor_pb2.TensorPayload, _Mapping]] = ..., outer: _Optional[_Union[OuterState, _Mapping]] = ...) -> None: ...

class OuterState(_message.Message):
    __slots__ = ("optimizer", "settings_digest", "steps", "beta1_power", "beta2_power", "buffers")
    class Buffer(_message.Message):
        __slots__ = ("name", "numel", "float64_le")
        NAME_FIELD_NUMBER: _ClassVar[int]
        NUMEL_FIELD_NUMBER: _ClassVar[int]
        FLOAT64_LE_FIELD_NUMBER: _ClassVar[int]
        name: str
        numel: int
        float64_le: bytes
        def __init__(self, name: _Optional[str] = ..., numel: _Optional[int] = ..., float64_le: _Optional[bytes] = ...) -> None: ...
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BETA1_POWER_FIELD_NUMBER: _ClassVar[int]
    BETA2_POWER_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    settings_digest: str
    steps: int
    beta1_power: float
    beta2_power: float
    buffers: _containers.RepeatedCompositeFieldContainer[OuterState.Buffer]
    def __init__(self, optimizer: _Optional[str] = ..., settings_digest: _Optional[str] = ..., steps: _Optional[int] = ..., beta1_power: _Optional[float] = ..., beta2_power: _Optional[float] = ..., buffers: _Optional[_Iterable[_Union[OuterState.Buffer, _Mapping]]] = ...) -> None: ...
