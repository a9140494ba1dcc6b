from fednode.proto.v1 import membership_pb2 as _membership_pb2
from fednode.proto.v1 import model_pb2 as _model_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerAnnouncement(_message.Message):
    __slots__ = ("peer_id", "multiaddrs", "model_version", "round", "reachability", "capabilities", "display_name", "software_version")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REACHABILITY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    model_version: int
    round: int
    reachability: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    display_name: str
    software_version: str
    def __init__(self, peer_id: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., model_version: _Optional[int] = ..., round: _Optional[int] = ..., reachability: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., display_name: _Optional[str] = ..., software_version: _Optional[str] = ...) -> None: ...

class Departure(_message.Message):
    __slots__ = ("peer_id", "reason")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    reason: str
    def __init__(self, peer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ScheduleReport(_message.Message):
    __slots__ = ("peer_id", "seconds_per_step", "assigned_local_steps", "group_id", "expected_arrival_unix_ms", "base_model_version", "round")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ARRIVAL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    seconds_per_step: float
    assigned_local_steps: int
    group_id: bytes
    expected_arrival_unix_ms: int
    base_model_version: int
    round: int
    def __init__(self, peer_id: _Optional[str] = ..., seconds_per_step: _Optional[float] = ..., assigned_local_steps: _Optional[int] = ..., group_id: _Optional[bytes] = ..., expected_arrival_unix_ms: _Optional[int] = ..., base_model_version: _Optional[int] = ..., round: _Optional[int] = ...) -> None: ...

class GroupRecord(_message.Message):
    __slots__ = ("group_id", "creator_peer_id", "created_unix_ms", "expected_arrival_unix_ms", "deadline_unix_ms")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    CREATOR_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ARRIVAL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    group_id: bytes
    creator_peer_id: str
    created_unix_ms: int
    expected_arrival_unix_ms: int
    deadline_unix_ms: int
    def __init__(self, group_id: _Optional[bytes] = ..., creator_peer_id: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., expected_arrival_unix_ms: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class AggregationManifest(_message.Message):
    __slots__ = ("round", "group_id", "base_model_version", "entries", "federation_size", "deferred", "closed_unix_ms", "creator_peer_id", "group_created_unix_ms")
    class Entry(_message.Message):
        __slots__ = ("sender_peer_id", "payload_sha256", "base_model_version", "round")
        SENDER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
        PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
        BASE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
        ROUND_FIELD_NUMBER: _ClassVar[int]
        sender_peer_id: str
        payload_sha256: bytes
        base_model_version: int
        round: int
        def __init__(self, sender_peer_id: _Optional[str] = ..., payload_sha256: _Optional[bytes] = ..., base_model_version: _Optional[int] = ..., round: _Optional[int] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATOR_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    round: int
    group_id: bytes
    base_model_version: int
    entries: _containers.RepeatedCompositeFieldContainer[AggregationManifest.Entry]
    federation_size: int
    deferred: bool
    closed_unix_ms: int
    creator_peer_id: str
    group_created_unix_ms: int
    def __init__(self, round: _Optional[int] = ..., group_id: _Optional[bytes] = ..., base_model_version: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[AggregationManifest.Entry, _Mapping]]] = ..., federation_size: _Optional[int] = ..., deferred: _Optional[bool] = ..., closed_unix_ms: _Optional[int] = ..., creator_peer_id: _Optional[str] = ..., group_created_unix_ms: _Optional[int] = ...) -> None: ...

class SnapshotOffer(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: _model_pb2.SnapshotHeader
    def __init__(self, header: _Optional[_Union[_model_pb2.SnapshotHeader, _Mapping]] = ...) -> None: ...

class PartOffer(_message.Message):
    __slots__ = ("round", "parts_root", "entries", "roster_sha256")
    class Entry(_message.Message):
        __slots__ = ("part", "part_sha256", "proof")
        PART_FIELD_NUMBER: _ClassVar[int]
        PART_SHA256_FIELD_NUMBER: _ClassVar[int]
        PROOF_FIELD_NUMBER: _ClassVar[int]
        part: int
        part_sha256: bytes
        proof: _containers.RepeatedScalarFieldContainer[bytes]
        def __init__(self, part: _Optional[int] = ..., part_sha256: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTS_ROOT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ROSTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    round: int
    parts_root: bytes
    entries: _containers.RepeatedCompositeFieldContainer[PartOffer.Entry]
    roster_sha256: bytes
    def __init__(self, round: _Optional[int] = ..., parts_root: _Optional[bytes] = ..., entries: _Optional[_Iterable[_Union[PartOffer.Entry, _Mapping]]] = ..., roster_sha256: _Optional[bytes] = ...) -> None: ...

class PartInputs(_message.Message):
    __slots__ = ("round", "part", "entries")
    class Entry(_message.Message):
        __slots__ = ("sender_peer_id", "part_sha256", "proof")
        SENDER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
        PART_SHA256_FIELD_NUMBER: _ClassVar[int]
        PROOF_FIELD_NUMBER: _ClassVar[int]
        sender_peer_id: str
        part_sha256: bytes
        proof: _containers.RepeatedScalarFieldContainer[bytes]
        def __init__(self, sender_peer_id: _Optional[str] = ..., part_sha256: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    round: int
    part: int
    entries: _containers.RepeatedCompositeFieldContainer[PartInputs.Entry]
    def __init__(self, round: _Optional[int] = ..., part: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[PartInputs.Entry, _Mapping]]] = ...) -> None: ...

class OwnerClaim(_message.Message):
    __slots__ = ("round", "step", "roster_sha256", "entries")
    class Entry(_message.Message):
        __slots__ = ("part", "inputs_sha256", "partial_sha256", "result_sha256")
        PART_FIELD_NUMBER: _ClassVar[int]
        INPUTS_SHA256_FIELD_NUMBER: _ClassVar[int]
        PARTIAL_SHA256_FIELD_NUMBER: _ClassVar[int]
        RESULT_SHA256_FIELD_NUMBER: _ClassVar[int]
        part: int
        inputs_sha256: bytes
        partial_sha256: bytes
        result_sha256: bytes
        def __init__(self, part: _Optional[int] = ..., inputs_sha256: _Optional[bytes] = ..., partial_sha256: _Optional[bytes] = ..., result_sha256: _Optional[bytes] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROSTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    round: int
    step: int
    roster_sha256: bytes
    entries: _containers.RepeatedCompositeFieldContainer[OwnerClaim.Entry]
    def __init__(self, round: _Optional[int] = ..., step: _Optional[int] = ..., roster_sha256: _Optional[bytes] = ..., entries: _Optional[_Iterable[_Union[OwnerClaim.Entry, _Mapping]]] = ...) -> None: ...

class RosterProposal(_message.Message):
    __slots__ = ("round", "entries")
    class Entry(_message.Message):
        __slots__ = ("sender_peer_id", "parts_root")
        SENDER_PEER_ID_FIELD_NUMBER: _ClassVar[int]
        PARTS_ROOT_FIELD_NUMBER: _ClassVar[int]
        sender_peer_id: str
        parts_root: bytes
        def __init__(self, sender_peer_id: _Optional[str] = ..., parts_root: _Optional[bytes] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    round: int
    entries: _containers.RepeatedCompositeFieldContainer[RosterProposal.Entry]
    def __init__(self, round: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[RosterProposal.Entry, _Mapping]]] = ...) -> None: ...

class ButterflyMessage(_message.Message):
    __slots__ = ("offer", "claim", "proposal")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    offer: PartOffer
    claim: OwnerClaim
    proposal: RosterProposal
    def __init__(self, offer: _Optional[_Union[PartOffer, _Mapping]] = ..., claim: _Optional[_Union[OwnerClaim, _Mapping]] = ..., proposal: _Optional[_Union[RosterProposal, _Mapping]] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("federation_id", "sent_unix_ms", "announcement", "update", "schedule", "group", "manifest", "snapshot", "departure", "revocation", "butterfly")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DEPARTURE_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    BUTTERFLY_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    sent_unix_ms: int
    announcement: PeerAnnouncement
    update: _model_pb2.UpdateHeader
    schedule: ScheduleReport
    group: GroupRecord
    manifest: AggregationManifest
    snapshot: SnapshotOffer
    departure: Departure
    revocation: _membership_pb2.Revocation
    butterfly: ButterflyMessage
    def __init__(self, federation_id: _Optional[str] = ..., sent_unix_ms: _Optional[int] = ..., announcement: _Optional[_Union[PeerAnnouncement, _Mapping]] = ..., update: _Optional[_Union[_model_pb2.UpdateHeader, _Mapping]] = ..., schedule: _Optional[_Union[ScheduleReport, _Mapping]] = ..., group: _Optional[_Union[GroupRecord, _Mapping]] = ..., manifest: _Optional[_Union[AggregationManifest, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotOffer, _Mapping]] = ..., departure: _Optional[_Union[Departure, _Mapping]] = ..., revocation: _Optional[_Union[_membership_pb2.Revocation, _Mapping]] = ..., butterfly: _Optional[_Union[ButterflyMessage, _Mapping]] = ...) -> None: ...
