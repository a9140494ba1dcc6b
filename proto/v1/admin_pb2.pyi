from fednode.proto.v1 import membership_pb2 as _membership_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("peer_id", "version", "uptime_seconds", "listen_multiaddrs", "reachability", "device", "task", "model_version", "round", "accuracy", "loss", "connected_peers", "federations", "state", "state_dir", "phase", "role", "ready", "checkpoint_error", "checkpoint_failures", "checkpoint_round", "world_size", "ranks")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LISTEN_MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    REACHABILITY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_PEERS_FIELD_NUMBER: _ClassVar[int]
    FEDERATIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ROUND_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    version: str
    uptime_seconds: int
    listen_multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    reachability: str
    device: str
    task: str
    model_version: int
    round: int
    accuracy: float
    loss: float
    connected_peers: int
    federations: _containers.RepeatedScalarFieldContainer[str]
    state: str
    state_dir: str
    phase: str
    role: str
    ready: bool
    checkpoint_error: str
    checkpoint_failures: int
    checkpoint_round: int
    world_size: int
    ranks: _containers.RepeatedCompositeFieldContainer[TrainingRank]
    def __init__(self, peer_id: _Optional[str] = ..., version: _Optional[str] = ..., uptime_seconds: _Optional[int] = ..., listen_multiaddrs: _Optional[_Iterable[str]] = ..., reachability: _Optional[str] = ..., device: _Optional[str] = ..., task: _Optional[str] = ..., model_version: _Optional[int] = ..., round: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., connected_peers: _Optional[int] = ..., federations: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., state_dir: _Optional[str] = ..., phase: _Optional[str] = ..., role: _Optional[str] = ..., ready: _Optional[bool] = ..., checkpoint_error: _Optional[str] = ..., checkpoint_failures: _Optional[int] = ..., checkpoint_round: _Optional[int] = ..., world_size: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[TrainingRank, _Mapping]]] = ...) -> None: ...

class TrainingRank(_message.Message):
    __slots__ = ("rank", "local_rank", "host", "pid", "state", "heartbeat_age_seconds", "rounds")
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    host: str
    pid: int
    state: str
    heartbeat_age_seconds: float
    rounds: int
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[str] = ..., heartbeat_age_seconds: _Optional[float] = ..., rounds: _Optional[int] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("peer_id", "multiaddrs", "connection", "latency_ms", "last_seen_unix_ms", "reputation", "display_name", "federations", "model_version")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    FEDERATIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    connection: str
    latency_ms: float
    last_seen_unix_ms: int
    reputation: float
    display_name: str
    federations: _containers.RepeatedScalarFieldContainer[str]
    model_version: int
    def __init__(self, peer_id: _Optional[str] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., connection: _Optional[str] = ..., latency_ms: _Optional[float] = ..., last_seen_unix_ms: _Optional[int] = ..., reputation: _Optional[float] = ..., display_name: _Optional[str] = ..., federations: _Optional[_Iterable[str]] = ..., model_version: _Optional[int] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    def __init__(self, peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ...) -> None: ...

class ListFederationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FederationStatus(_message.Message):
    __slots__ = ("descriptor", "round", "group_id", "model_version", "participants", "role", "certificate", "finished", "finished_reason")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_REASON_FIELD_NUMBER: _ClassVar[int]
    descriptor: _membership_pb2.FederationDescriptor
    round: int
    group_id: bytes
    model_version: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    role: str
    certificate: _membership_pb2.MemberCertificate
    finished: bool
    finished_reason: str
    def __init__(self, descriptor: _Optional[_Union[_membership_pb2.FederationDescriptor, _Mapping]] = ..., round: _Optional[int] = ..., group_id: _Optional[bytes] = ..., model_version: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., role: _Optional[str] = ..., certificate: _Optional[_Union[_membership_pb2.MemberCertificate, _Mapping]] = ..., finished: _Optional[bool] = ..., finished_reason: _Optional[str] = ...) -> None: ...

class ListFederationsResponse(_message.Message):
    __slots__ = ("federations",)
    FEDERATIONS_FIELD_NUMBER: _ClassVar[int]
    federations: _containers.RepeatedCompositeFieldContainer[FederationStatus]
    def __init__(self, federations: _Optional[_Iterable[_Union[FederationStatus, _Mapping]]] = ...) -> None: ...

class GetFederationRequest(_message.Message):
    __slots__ = ("federation_id",)
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    def __init__(self, federation_id: _Optional[str] = ...) -> None: ...

class CreateFederationRequest(_message.Message):
    __slots__ = ("name", "aggregator", "aggregator_params_json", "schedule", "min_participants", "codec", "private", "max_rounds", "target_accuracy", "until_unix_ms", "outer", "exchange")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    OUTER_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    aggregator: str
    aggregator_params_json: str
    schedule: str
    min_participants: int
    codec: str
    private: bool
    max_rounds: int
    target_accuracy: float
    until_unix_ms: int
    outer: _membership_pb2.OuterOptimizer
    exchange: str
    def __init__(self, name: _Optional[str] = ..., aggregator: _Optional[str] = ..., aggregator_params_json: _Optional[str] = ..., schedule: _Optional[str] = ..., min_participants: _Optional[int] = ..., codec: _Optional[str] = ..., private: _Optional[bool] = ..., max_rounds: _Optional[int] = ..., target_accuracy: _Optional[float] = ..., until_unix_ms: _Optional[int] = ..., outer: _Optional[_Union[_membership_pb2.OuterOptimizer, _Mapping]] = ..., exchange: _Optional[str] = ...) -> None: ...

class CreateInviteRequest(_message.Message):
    __slots__ = ("federation_id", "ttl_seconds", "max_uses")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    ttl_seconds: int
    max_uses: int
    def __init__(self, federation_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., max_uses: _Optional[int] = ...) -> None: ...

class CreateInviteResponse(_message.Message):
    __slots__ = ("token", "expires_unix_ms")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_unix_ms: int
    def __init__(self, token: _Optional[str] = ..., expires_unix_ms: _Optional[int] = ...) -> None: ...

class JoinFederationRequest(_message.Message):
    __slots__ = ("token", "display_name")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    token: str
    display_name: str
    def __init__(self, token: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class LeaveFederationRequest(_message.Message):
    __slots__ = ("federation_id",)
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    def __init__(self, federation_id: _Optional[str] = ...) -> None: ...

class LeaveFederationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RevokeMemberRequest(_message.Message):
    __slots__ = ("federation_id", "peer_id", "reason")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    peer_id: str
    reason: str
    def __init__(self, federation_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeMemberResponse(_message.Message):
    __slots__ = ("revocation",)
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    revocation: _membership_pb2.Revocation
    def __init__(self, revocation: _Optional[_Union[_membership_pb2.Revocation, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("kinds", "tail", "no_follow")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    NO_FOLLOW_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    tail: int
    no_follow: bool
    def __init__(self, kinds: _Optional[_Iterable[str]] = ..., tail: _Optional[int] = ..., no_follow: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("unix_ms", "kind", "federation_id", "peer_id", "reason", "round", "model_version", "accuracy", "detail")
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    unix_ms: int
    kind: str
    federation_id: str
    peer_id: str
    reason: str
    round: int
    model_version: int
    accuracy: float
    detail: str
    def __init__(self, unix_ms: _Optional[int] = ..., kind: _Optional[str] = ..., federation_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., reason: _Optional[str] = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., accuracy: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("federation_id", "format")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    format: str
    def __init__(self, federation_id: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "sha256", "model_version", "metadata_json")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    sha256: bytes
    model_version: int
    metadata_json: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., model_version: _Optional[int] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShutdownResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
