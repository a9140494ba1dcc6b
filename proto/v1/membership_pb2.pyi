from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FederationDescriptor(_message.Message):
    __slots__ = ("federation_id", "federation_public_key", "name", "created_unix_ms", "task", "model_layout_digest", "aggregator", "aggregator_params_json", "schedule", "min_participants", "codec", "private", "max_rounds", "target_accuracy", "until_unix_ms", "signature", "outer", "exchange")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    OUTER_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    federation_public_key: bytes
    name: str
    created_unix_ms: int
    task: str
    model_layout_digest: str
    aggregator: str
    aggregator_params_json: str
    schedule: str
    min_participants: int
    codec: str
    private: bool
    max_rounds: int
    target_accuracy: float
    until_unix_ms: int
    signature: bytes
    outer: OuterOptimizer
    exchange: str
    def __init__(self, federation_id: _Optional[str] = ..., federation_public_key: _Optional[bytes] = ..., name: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., task: _Optional[str] = ..., model_layout_digest: _Optional[str] = ..., aggregator: _Optional[str] = ..., aggregator_params_json: _Optional[str] = ..., schedule: _Optional[str] = ..., min_participants: _Optional[int] = ..., codec: _Optional[str] = ..., private: _Optional[bool] = ..., max_rounds: _Optional[int] = ..., target_accuracy: _Optional[float] = ..., until_unix_ms: _Optional[int] = ..., signature: _Optional[bytes] = ..., outer: _Optional[_Union[OuterOptimizer, _Mapping]] = ..., exchange: _Optional[str] = ...) -> None: ...

class OuterOptimizer(_message.Message):
    __slots__ = ("name", "lr", "momentum", "beta1", "beta2", "epsilon")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    name: str
    lr: float
    momentum: float
    beta1: float
    beta2: float
    epsilon: float
    def __init__(self, name: _Optional[str] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., epsilon: _Optional[float] = ...) -> None: ...

class AdminDelegation(_message.Message):
    __slots__ = ("federation_id", "admin_public_key", "not_before_unix_ms", "not_after_unix_ms", "signature", "federation_public_key")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ADMIN_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    admin_public_key: bytes
    not_before_unix_ms: int
    not_after_unix_ms: int
    signature: bytes
    federation_public_key: bytes
    def __init__(self, federation_id: _Optional[str] = ..., admin_public_key: _Optional[bytes] = ..., not_before_unix_ms: _Optional[int] = ..., not_after_unix_ms: _Optional[int] = ..., signature: _Optional[bytes] = ..., federation_public_key: _Optional[bytes] = ...) -> None: ...

class Invite(_message.Message):
    __slots__ = ("federation_id", "invite_id", "secret", "expires_unix_ms", "max_uses", "issuer_multiaddrs", "issuer_peer_id", "delegation", "issuer_public_key", "signature")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    INVITE_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    ISSUER_MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    ISSUER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FIELD_NUMBER: _ClassVar[int]
    ISSUER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    invite_id: bytes
    secret: bytes
    expires_unix_ms: int
    max_uses: int
    issuer_multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    issuer_peer_id: str
    delegation: AdminDelegation
    issuer_public_key: bytes
    signature: bytes
    def __init__(self, federation_id: _Optional[str] = ..., invite_id: _Optional[bytes] = ..., secret: _Optional[bytes] = ..., expires_unix_ms: _Optional[int] = ..., max_uses: _Optional[int] = ..., issuer_multiaddrs: _Optional[_Iterable[str]] = ..., issuer_peer_id: _Optional[str] = ..., delegation: _Optional[_Union[AdminDelegation, _Mapping]] = ..., issuer_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("federation_id", "invite_id", "secret", "member_public_key", "display_name", "requested_unix_ms")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    INVITE_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    MEMBER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    invite_id: bytes
    secret: bytes
    member_public_key: bytes
    display_name: str
    requested_unix_ms: int
    def __init__(self, federation_id: _Optional[str] = ..., invite_id: _Optional[bytes] = ..., secret: _Optional[bytes] = ..., member_public_key: _Optional[bytes] = ..., display_name: _Optional[str] = ..., requested_unix_ms: _Optional[int] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("status", "message", "certificate", "descriptor", "bootstrap_multiaddrs", "revocations")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[JoinResponse.Status]
        OK: _ClassVar[JoinResponse.Status]
        UNKNOWN_INVITE: _ClassVar[JoinResponse.Status]
        BAD_SECRET: _ClassVar[JoinResponse.Status]
        EXPIRED: _ClassVar[JoinResponse.Status]
        EXHAUSTED: _ClassVar[JoinResponse.Status]
        WRONG_FEDERATION: _ClassVar[JoinResponse.Status]
        CLOCK_SKEW: _ClassVar[JoinResponse.Status]
        INTERNAL: _ClassVar[JoinResponse.Status]
        BAD_REQUEST: _ClassVar[JoinResponse.Status]
    STATUS_UNSPECIFIED: JoinResponse.Status
    OK: JoinResponse.Status
    UNKNOWN_INVITE: JoinResponse.Status
    BAD_SECRET: JoinResponse.Status
    EXPIRED: JoinResponse.Status
    EXHAUSTED: JoinResponse.Status
    WRONG_FEDERATION: JoinResponse.Status
    CLOCK_SKEW: JoinResponse.Status
    INTERNAL: JoinResponse.Status
    BAD_REQUEST: JoinResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    status: JoinResponse.Status
    message: str
    certificate: MemberCertificate
    descriptor: FederationDescriptor
    bootstrap_multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, status: _Optional[_Union[JoinResponse.Status, str]] = ..., message: _Optional[str] = ..., certificate: _Optional[_Union[MemberCertificate, _Mapping]] = ..., descriptor: _Optional[_Union[FederationDescriptor, _Mapping]] = ..., bootstrap_multiaddrs: _Optional[_Iterable[str]] = ..., revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class MemberCertificate(_message.Message):
    __slots__ = ("federation_id", "member_public_key", "member_peer_id", "serial", "role", "not_before_unix_ms", "not_after_unix_ms", "display_name", "delegation", "issuer_public_key", "signature")
    class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ROLE_UNSPECIFIED: _ClassVar[MemberCertificate.Role]
        CONTRIBUTOR: _ClassVar[MemberCertificate.Role]
        OBSERVER: _ClassVar[MemberCertificate.Role]
        RELAY: _ClassVar[MemberCertificate.Role]
    ROLE_UNSPECIFIED: MemberCertificate.Role
    CONTRIBUTOR: MemberCertificate.Role
    OBSERVER: MemberCertificate.Role
    RELAY: MemberCertificate.Role
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MEMBER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FIELD_NUMBER: _ClassVar[int]
    ISSUER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    member_public_key: bytes
    member_peer_id: str
    serial: bytes
    role: MemberCertificate.Role
    not_before_unix_ms: int
    not_after_unix_ms: int
    display_name: str
    delegation: AdminDelegation
    issuer_public_key: bytes
    signature: bytes
    def __init__(self, federation_id: _Optional[str] = ..., member_public_key: _Optional[bytes] = ..., member_peer_id: _Optional[str] = ..., serial: _Optional[bytes] = ..., role: _Optional[_Union[MemberCertificate.Role, str]] = ..., not_before_unix_ms: _Optional[int] = ..., not_after_unix_ms: _Optional[int] = ..., display_name: _Optional[str] = ..., delegation: _Optional[_Union[AdminDelegation, _Mapping]] = ..., issuer_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("federation_id", "serial", "member_public_key", "reason", "revoked_unix_ms", "delegation", "issuer_public_key", "signature")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    MEMBER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FIELD_NUMBER: _ClassVar[int]
    ISSUER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    serial: bytes
    member_public_key: bytes
    reason: str
    revoked_unix_ms: int
    delegation: AdminDelegation
    issuer_public_key: bytes
    signature: bytes
    def __init__(self, federation_id: _Optional[str] = ..., serial: _Optional[bytes] = ..., member_public_key: _Optional[bytes] = ..., reason: _Optional[str] = ..., revoked_unix_ms: _Optional[int] = ..., delegation: _Optional[_Union[AdminDelegation, _Mapping]] = ..., issuer_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RevocationList(_message.Message):
    __slots__ = ("federation_id", "revocations")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, federation_id: _Optional[str] = ..., revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class AddressRecord(_message.Message):
    __slots__ = ("federation_id", "certificate", "multiaddrs", "issued_unix_ms", "signature")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    certificate: MemberCertificate
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    issued_unix_ms: int
    signature: bytes
    def __init__(self, federation_id: _Optional[str] = ..., certificate: _Optional[_Union[MemberCertificate, _Mapping]] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., issued_unix_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...
