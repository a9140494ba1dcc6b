from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransferStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_STATUS_UNSPECIFIED: _ClassVar[TransferStatus]
    TRANSFER_OK: _ClassVar[TransferStatus]
    TRANSFER_NOT_FOUND: _ClassVar[TransferStatus]
    TRANSFER_TOO_LARGE: _ClassVar[TransferStatus]
    TRANSFER_BAD_REQUEST: _ClassVar[TransferStatus]
    TRANSFER_BUSY: _ClassVar[TransferStatus]
    TRANSFER_INTERNAL: _ClassVar[TransferStatus]
TRANSFER_STATUS_UNSPECIFIED: TransferStatus
TRANSFER_OK: TransferStatus
TRANSFER_NOT_FOUND: TransferStatus
TRANSFER_TOO_LARGE: TransferStatus
TRANSFER_BAD_REQUEST: TransferStatus
TRANSFER_BUSY: TransferStatus
TRANSFER_INTERNAL: TransferStatus

class TransferRequest(_message.Message):
    __slots__ = ("content_id", "offset", "max_length", "max_total_size")
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    content_id: bytes
    offset: int
    max_length: int
    max_total_size: int
    def __init__(self, content_id: _Optional[bytes] = ..., offset: _Optional[int] = ..., max_length: _Optional[int] = ..., max_total_size: _Optional[int] = ...) -> None: ...

class TransferResponse(_message.Message):
    __slots__ = ("status", "total_size", "offset", "length", "chunk_size", "detail")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    status: TransferStatus
    total_size: int
    offset: int
    length: int
    chunk_size: int
    detail: str
    def __init__(self, status: _Optional[_Union[TransferStatus, str]] = ..., total_size: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., chunk_size: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class TransferChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class FastPathRequest(_message.Message):
    __slots__ = ("fetch", "push")
    FETCH_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    fetch: TransferRequest
    push: PushedMessage
    def __init__(self, fetch: _Optional[_Union[TransferRequest, _Mapping]] = ..., push: _Optional[_Union[PushedMessage, _Mapping]] = ...) -> None: ...

class PushedMessage(_message.Message):
    __slots__ = ("topic", "data")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    topic: str
    data: bytes
    def __init__(self, topic: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class FastPathInfo(_message.Message):
    __slots__ = ("version", "port", "hosts")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    port: int
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., port: _Optional[int] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class FastPathHello(_message.Message):
    __slots__ = ("version", "ephemeral_key", "identity_key", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    ephemeral_key: bytes
    identity_key: bytes
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., ephemeral_key: _Optional[bytes] = ..., identity_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
