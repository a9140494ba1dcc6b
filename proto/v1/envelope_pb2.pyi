from fednode.proto.v1 import membership_pb2 as _membership_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    REJECT_MALFORMED: _ClassVar[RejectReason]
    REJECT_OVERSIZED: _ClassVar[RejectReason]
    REJECT_BAD_SIGNATURE: _ClassVar[RejectReason]
    REJECT_NOT_MEMBER: _ClassVar[RejectReason]
    REJECT_CERT_EXPIRED: _ClassVar[RejectReason]
    REJECT_REVOKED: _ClassVar[RejectReason]
    REJECT_WRONG_FEDERATION: _ClassVar[RejectReason]
    REJECT_STALE: _ClassVar[RejectReason]
    REJECT_REPLAY: _ClassVar[RejectReason]
    REJECT_HASH_MISMATCH: _ClassVar[RejectReason]
    REJECT_BAD_PAYLOAD: _ClassVar[RejectReason]
    REJECT_NON_FINITE: _ClassVar[RejectReason]
    REJECT_ABSURD_NORM: _ClassVar[RejectReason]
    REJECT_LAYOUT_MISMATCH: _ClassVar[RejectReason]
    REJECT_SENDER_MISMATCH: _ClassVar[RejectReason]
    REJECT_RATE_LIMITED: _ClassVar[RejectReason]
    REJECT_AGGREGATOR_OUTLIER: _ClassVar[RejectReason]
    REJECT_SETTINGS_MISMATCH: _ClassVar[RejectReason]
REJECT_REASON_UNSPECIFIED: RejectReason
REJECT_MALFORMED: RejectReason
REJECT_OVERSIZED: RejectReason
REJECT_BAD_SIGNATURE: RejectReason
REJECT_NOT_MEMBER: RejectReason
REJECT_CERT_EXPIRED: RejectReason
REJECT_REVOKED: RejectReason
REJECT_WRONG_FEDERATION: RejectReason
REJECT_STALE: RejectReason
REJECT_REPLAY: RejectReason
REJECT_HASH_MISMATCH: RejectReason
REJECT_BAD_PAYLOAD: RejectReason
REJECT_NON_FINITE: RejectReason
REJECT_ABSURD_NORM: RejectReason
REJECT_LAYOUT_MISMATCH: RejectReason
REJECT_SENDER_MISMATCH: RejectReason
REJECT_RATE_LIMITED: RejectReason
REJECT_AGGREGATOR_OUTLIER: RejectReason
REJECT_SETTINGS_MISMATCH: RejectReason

class SignedEnvelope(_message.Message):
    __slots__ = ("sender_public_key", "payload_type", "payload", "signature", "certificate")
    SENDER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    sender_public_key: bytes
    payload_type: str
    payload: bytes
    signature: bytes
    certificate: _membership_pb2.MemberCertificate
    def __init__(self, sender_public_key: _Optional[bytes] = ..., payload_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[_Union[_membership_pb2.MemberCertificate, _Mapping]] = ...) -> None: ...
