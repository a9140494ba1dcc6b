from fednode.proto.v1 import membership_pb2 as _membership_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_ERROR_UNSPECIFIED: _ClassVar[LinkErrorKind]
    LINK_ERROR_MESH: _ClassVar[LinkErrorKind]
    LINK_ERROR_FETCH: _ClassVar[LinkErrorKind]
    LINK_ERROR_BLOB_NOT_FOUND: _ClassVar[LinkErrorKind]
    LINK_ERROR_BLOB_TOO_LARGE: _ClassVar[LinkErrorKind]
LINK_ERROR_UNSPECIFIED: LinkErrorKind
LINK_ERROR_MESH: LinkErrorKind
LINK_ERROR_FETCH: LinkErrorKind
LINK_ERROR_BLOB_NOT_FOUND: LinkErrorKind
LINK_ERROR_BLOB_TOO_LARGE: LinkErrorKind

class LinkFrame(_message.Message):
    __slots__ = ("call_id", "reply_to", "error", "error_kind", "subscribe", "publish", "push", "fetch_blob", "provide", "find_providers", "connect_peer", "put_record", "get_records", "serve_blob", "unserve_blob", "ready", "round_done", "runner_event", "session_ended", "failed", "configure", "start_session", "stop_session", "check_settings", "export_model", "publish_revocation", "member_key", "shutdown", "session_state", "mesh_event", "mesh_info", "refused", "empty", "peer_list", "blob", "key", "record_values", "round_verdict", "model_bytes", "worker_totals", "state")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    FETCH_BLOB_FIELD_NUMBER: _ClassVar[int]
    PROVIDE_FIELD_NUMBER: _ClassVar[int]
    FIND_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    CONNECT_PEER_FIELD_NUMBER: _ClassVar[int]
    PUT_RECORD_FIELD_NUMBER: _ClassVar[int]
    GET_RECORDS_FIELD_NUMBER: _ClassVar[int]
    SERVE_BLOB_FIELD_NUMBER: _ClassVar[int]
    UNSERVE_BLOB_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ROUND_DONE_FIELD_NUMBER: _ClassVar[int]
    RUNNER_EVENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ENDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CONFIGURE_FIELD_NUMBER: _ClassVar[int]
    START_SESSION_FIELD_NUMBER: _ClassVar[int]
    STOP_SESSION_FIELD_NUMBER: _ClassVar[int]
    CHECK_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_MODEL_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_REVOCATION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_KEY_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    SESSION_STATE_FIELD_NUMBER: _ClassVar[int]
    MESH_EVENT_FIELD_NUMBER: _ClassVar[int]
    MESH_INFO_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    PEER_LIST_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RECORD_VALUES_FIELD_NUMBER: _ClassVar[int]
    ROUND_VERDICT_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORKER_TOTALS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    reply_to: int
    error: str
    error_kind: LinkErrorKind
    subscribe: Subscribe
    publish: GossipOut
    push: PushOut
    fetch_blob: BlobFetch
    provide: Key
    find_providers: ProviderQuery
    connect_peer: PeerList
    put_record: Record
    get_records: Key
    serve_blob: Blob
    unserve_blob: Key
    ready: WorkerReady
    round_done: RoundDone
    runner_event: RunnerEvent
    session_ended: SessionEnded
    failed: WorkerFailed
    configure: Configure
    start_session: StartSession
    stop_session: StopSession
    check_settings: Settings
    export_model: ModelRequest
    publish_revocation: _membership_pb2.Revocation
    member_key: PeerList
    shutdown: Shutdown
    session_state: Empty
    mesh_event: MeshEvent
    mesh_info: MeshInfo
    refused: ValidatorRefusal
    empty: Empty
    peer_list: PeerList
    blob: Blob
    key: Key
    record_values: RecordValues
    round_verdict: RoundVerdict
    model_bytes: ModelBytes
    worker_totals: WorkerTotals
    state: SessionState
    def __init__(self, call_id: _Optional[int] = ..., reply_to: _Optional[int] = ..., error: _Optional[str] = ..., error_kind: _Optional[_Union[LinkErrorKind, str]] = ..., subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., publish: _Optional[_Union[GossipOut, _Mapping]] = ..., push: _Optional[_Union[PushOut, _Mapping]] = ..., fetch_blob: _Optional[_Union[BlobFetch, _Mapping]] = ..., provide: _Optional[_Union[Key, _Mapping]] = ..., find_providers: _Optional[_Union[ProviderQuery, _Mapping]] = ..., connect_peer: _Optional[_Union[PeerList, _Mapping]] = ..., put_record: _Optional[_Union[Record, _Mapping]] = ..., get_records: _Optional[_Union[Key, _Mapping]] = ..., serve_blob: _Optional[_Union[Blob, _Mapping]] = ..., unserve_blob: _Optional[_Union[Key, _Mapping]] = ..., ready: _Optional[_Union[WorkerReady, _Mapping]] = ..., round_done: _Optional[_Union[RoundDone, _Mapping]] = ..., runner_event: _Optional[_Union[RunnerEvent, _Mapping]] = ..., session_ended: _Optional[_Union[SessionEnded, _Mapping]] = ..., failed: _Optional[_Union[WorkerFailed, _Mapping]] = ..., configure: _Optional[_Union[Configure, _Mapping]] = ..., start_session: _Optional[_Union[StartSession, _Mapping]] = ..., stop_session: _Optional[_Union[StopSession, _Mapping]] = ..., check_settings: _Optional[_Union[Settings, _Mapping]] = ..., export_model: _Optional[_Union[ModelRequest, _Mapping]] = ..., publish_revocation: _Optional[_Union[_membership_pb2.Revocation, _Mapping]] = ..., member_key: _Optional[_Union[PeerList, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., session_state: _Optional[_Union[Empty, _Mapping]] = ..., mesh_event: _Optional[_Union[MeshEvent, _Mapping]] = ..., mesh_info: _Optional[_Union[MeshInfo, _Mapping]] = ..., refused: _Optional[_Union[ValidatorRefusal, _Mapping]] = ..., empty: _Optional[_Union[Empty, _Mapping]] = ..., peer_list: _Optional[_Union[PeerList, _Mapping]] = ..., blob: _Optional[_Union[Blob, _Mapping]] = ..., key: _Optional[_Union[Key, _Mapping]] = ..., record_values: _Optional[_Union[RecordValues, _Mapping]] = ..., round_verdict: _Optional[_Union[RoundVerdict, _Mapping]] = ..., model_bytes: _Optional[_Union[ModelBytes, _Mapping]] = ..., worker_totals: _Optional[_Union[WorkerTotals, _Mapping]] = ..., state: _Optional[_Union[SessionState, _Mapping]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Configure(_message.Message):
    __slots__ = ("config_json",)
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    def __init__(self, config_json: _Optional[str] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class GossipOut(_message.Message):
    __slots__ = ("topic", "data")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    topic: str
    data: bytes
    def __init__(self, topic: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushOut(_message.Message):
    __slots__ = ("topic", "data", "peers")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    data: bytes
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topic: _Optional[str] = ..., data: _Optional[bytes] = ..., peers: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobFetch(_message.Message):
    __slots__ = ("content_id", "candidates", "max_size")
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    content_id: bytes
    candidates: _containers.RepeatedScalarFieldContainer[str]
    max_size: int
    def __init__(self, content_id: _Optional[bytes] = ..., candidates: _Optional[_Iterable[str]] = ..., max_size: _Optional[int] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("content_id", "data")
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    content_id: bytes
    data: bytes
    def __init__(self, content_id: _Optional[bytes] = ..., data: _Optional[bytes] = ...) -> None: ...

class Key(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class ProviderQuery(_message.Message):
    __slots__ = ("key", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    count: int
    def __init__(self, key: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class PeerList(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peers: _Optional[_Iterable[str]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class RecordValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, values: _Optional[_Iterable[bytes]] = ...) -> None: ...

class MeshInfo(_message.Message):
    __slots__ = ("listen_multiaddrs", "reachability", "max_gossip_bytes")
    LISTEN_MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    REACHABILITY_FIELD_NUMBER: _ClassVar[int]
    MAX_GOSSIP_BYTES_FIELD_NUMBER: _ClassVar[int]
    listen_multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    reachability: str
    max_gossip_bytes: int
    def __init__(self, listen_multiaddrs: _Optional[_Iterable[str]] = ..., reachability: _Optional[str] = ..., max_gossip_bytes: _Optional[int] = ...) -> None: ...

class MeshEvent(_message.Message):
    __slots__ = ("gossip", "peer_connected", "peer_disconnected", "reachability", "connection", "address")
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    PEER_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    PEER_DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    REACHABILITY_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    gossip: GossipIn
    peer_connected: str
    peer_disconnected: str
    reachability: str
    connection: str
    address: str
    def __init__(self, gossip: _Optional[_Union[GossipIn, _Mapping]] = ..., peer_connected: _Optional[str] = ..., peer_disconnected: _Optional[str] = ..., reachability: _Optional[str] = ..., connection: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class GossipIn(_message.Message):
    __slots__ = ("topic", "data", "from_peer", "received_at", "direct")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FROM_PEER_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    data: bytes
    from_peer: str
    received_at: float
    direct: bool
    def __init__(self, topic: _Optional[str] = ..., data: _Optional[bytes] = ..., from_peer: _Optional[str] = ..., received_at: _Optional[float] = ..., direct: _Optional[bool] = ...) -> None: ...

class ValidatorRefusal(_message.Message):
    __slots__ = ("sender", "reason", "message", "update_header")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_HEADER_FIELD_NUMBER: _ClassVar[int]
    sender: str
    reason: int
    message: str
    update_header: bytes
    def __init__(self, sender: _Optional[str] = ..., reason: _Optional[int] = ..., message: _Optional[str] = ..., update_header: _Optional[bytes] = ...) -> None: ...

class StartSession(_message.Message):
    __slots__ = ("federation_id", "settings", "certificate", "certified", "display_name", "revocations", "finished")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CERTIFIED_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    settings: Settings
    certificate: _membership_pb2.MemberCertificate
    certified: bool
    display_name: str
    revocations: _containers.RepeatedCompositeFieldContainer[_membership_pb2.Revocation]
    finished: bool
    def __init__(self, federation_id: _Optional[str] = ..., settings: _Optional[_Union[Settings, _Mapping]] = ..., certificate: _Optional[_Union[_membership_pb2.MemberCertificate, _Mapping]] = ..., certified: _Optional[bool] = ..., display_name: _Optional[str] = ..., revocations: _Optional[_Iterable[_Union[_membership_pb2.Revocation, _Mapping]]] = ..., finished: _Optional[bool] = ...) -> None: ...

class Settings(_message.Message):
    __slots__ = ("rule", "rule_params_json", "f", "schedule", "min_participants", "codec", "codec_params_json", "max_rounds", "outer", "exchange")
    RULE_FIELD_NUMBER: _ClassVar[int]
    RULE_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    OUTER_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    rule_params_json: str
    f: int
    schedule: str
    min_participants: int
    codec: str
    codec_params_json: str
    max_rounds: int
    outer: _membership_pb2.OuterOptimizer
    exchange: str
    def __init__(self, rule: _Optional[str] = ..., rule_params_json: _Optional[str] = ..., f: _Optional[int] = ..., schedule: _Optional[str] = ..., min_participants: _Optional[int] = ..., codec: _Optional[str] = ..., codec_params_json: _Optional[str] = ..., max_rounds: _Optional[int] = ..., outer: _Optional[_Union[_membership_pb2.OuterOptimizer, _Mapping]] = ..., exchange: _Optional[str] = ...) -> None: ...

class StopSession(_message.Message):
    __slots__ = ("reason", "linger", "finish")
    REASON_FIELD_NUMBER: _ClassVar[int]
    LINGER_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    reason: str
    linger: bool
    finish: bool
    def __init__(self, reason: _Optional[str] = ..., linger: _Optional[bool] = ..., finish: _Optional[bool] = ...) -> None: ...

class WorkerReady(_message.Message):
    __slots__ = ("layout_digest", "parameters", "device", "task", "train_samples", "round", "model_version", "checkpoint_federation_id", "resumed", "rss_mb", "accuracy", "loss", "world_size")
    LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    RSS_MB_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    layout_digest: str
    parameters: int
    device: str
    task: str
    train_samples: int
    round: int
    model_version: int
    checkpoint_federation_id: str
    resumed: bool
    rss_mb: float
    accuracy: float
    loss: float
    world_size: int
    def __init__(self, layout_digest: _Optional[str] = ..., parameters: _Optional[int] = ..., device: _Optional[str] = ..., task: _Optional[str] = ..., train_samples: _Optional[int] = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., checkpoint_federation_id: _Optional[str] = ..., resumed: _Optional[bool] = ..., rss_mb: _Optional[float] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., world_size: _Optional[int] = ...) -> None: ...

class RankHealth(_message.Message):
    __slots__ = ("rank", "local_rank", "host", "pid", "state", "heartbeat_age", "rounds")
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    host: str
    pid: int
    state: str
    heartbeat_age: float
    rounds: int
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[str] = ..., heartbeat_age: _Optional[float] = ..., rounds: _Optional[int] = ...) -> None: ...

class WorkerFailed(_message.Message):
    __slots__ = ("exit_code", "message")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    message: str
    def __init__(self, exit_code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("peer_id", "public_key", "multiaddrs", "last_seen", "display_name", "model_version", "round")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MULTIADDRS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    public_key: bytes
    multiaddrs: _containers.RepeatedScalarFieldContainer[str]
    last_seen: float
    display_name: str
    model_version: int
    round: int
    def __init__(self, peer_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., multiaddrs: _Optional[_Iterable[str]] = ..., last_seen: _Optional[float] = ..., display_name: _Optional[str] = ..., model_version: _Optional[int] = ..., round: _Optional[int] = ...) -> None: ...

class Contribution(_message.Message):
    __slots__ = ("peer_id", "accepted", "selected", "rejected", "reputation")
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    accepted: int
    selected: int
    rejected: _containers.ScalarMap[str, int]
    reputation: float
    def __init__(self, peer_id: _Optional[str] = ..., accepted: _Optional[int] = ..., selected: _Optional[int] = ..., rejected: _Optional[_Mapping[str, int]] = ..., reputation: _Optional[float] = ...) -> None: ...

class SessionState(_message.Message):
    __slots__ = ("round", "model_version", "expected", "group_id", "members", "contributions", "ranks")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    round: int
    model_version: int
    expected: _containers.RepeatedScalarFieldContainer[str]
    group_id: bytes
    members: _containers.RepeatedCompositeFieldContainer[Member]
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    ranks: _containers.RepeatedCompositeFieldContainer[RankHealth]
    def __init__(self, round: _Optional[int] = ..., model_version: _Optional[int] = ..., expected: _Optional[_Iterable[str]] = ..., group_id: _Optional[bytes] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ..., ranks: _Optional[_Iterable[_Union[RankHealth, _Mapping]]] = ...) -> None: ...

class RoundDone(_message.Message):
    __slots__ = ("round", "model_version", "accuracy", "loss", "train_loss", "train_seconds", "round_seconds", "participants", "left_out", "aggregation_seconds", "close_reason", "state", "rss_mb", "federated", "synced", "cpu_seconds", "checkpoint", "ranks")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUND_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RSS_MB_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    round: int
    model_version: int
    accuracy: float
    loss: float
    train_loss: float
    train_seconds: float
    round_seconds: float
    participants: int
    left_out: int
    aggregation_seconds: float
    close_reason: str
    state: SessionState
    rss_mb: float
    federated: bool
    synced: bool
    cpu_seconds: float
    checkpoint: CheckpointHealth
    ranks: _containers.RepeatedCompositeFieldContainer[RankHealth]
    def __init__(self, round: _Optional[int] = ..., model_version: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., train_loss: _Optional[float] = ..., train_seconds: _Optional[float] = ..., round_seconds: _Optional[float] = ..., participants: _Optional[int] = ..., left_out: _Optional[int] = ..., aggregation_seconds: _Optional[float] = ..., close_reason: _Optional[str] = ..., state: _Optional[_Union[SessionState, _Mapping]] = ..., rss_mb: _Optional[float] = ..., federated: _Optional[bool] = ..., synced: _Optional[bool] = ..., cpu_seconds: _Optional[float] = ..., checkpoint: _Optional[_Union[CheckpointHealth, _Mapping]] = ..., ranks: _Optional[_Iterable[_Union[RankHealth, _Mapping]]] = ...) -> None: ...

class CheckpointHealth(_message.Message):
    __slots__ = ("failures", "failures_total", "error", "written_round")
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_ROUND_FIELD_NUMBER: _ClassVar[int]
    failures: int
    failures_total: int
    error: str
    written_round: int
    def __init__(self, failures: _Optional[int] = ..., failures_total: _Optional[int] = ..., error: _Optional[str] = ..., written_round: _Optional[int] = ...) -> None: ...

class RoundVerdict(_message.Message):
    __slots__ = ("stop", "reason", "linger", "finish")
    STOP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LINGER_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    stop: bool
    reason: str
    linger: bool
    finish: bool
    def __init__(self, stop: _Optional[bool] = ..., reason: _Optional[str] = ..., linger: _Optional[bool] = ..., finish: _Optional[bool] = ...) -> None: ...

class RunnerEvent(_message.Message):
    __slots__ = ("kind", "peer_id", "round", "payload_sha256", "selected", "has_selected", "reason", "score", "has_score", "detail", "revocation")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    HAS_SELECTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_SCORE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    peer_id: str
    round: int
    payload_sha256: bytes
    selected: bool
    has_selected: bool
    reason: str
    score: float
    has_score: bool
    detail: str
    revocation: _membership_pb2.Revocation
    def __init__(self, kind: _Optional[str] = ..., peer_id: _Optional[str] = ..., round: _Optional[int] = ..., payload_sha256: _Optional[bytes] = ..., selected: _Optional[bool] = ..., has_selected: _Optional[bool] = ..., reason: _Optional[str] = ..., score: _Optional[float] = ..., has_score: _Optional[bool] = ..., detail: _Optional[str] = ..., revocation: _Optional[_Union[_membership_pb2.Revocation, _Mapping]] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("median", "p90", "count")
    MEDIAN_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    median: float
    p90: float
    count: int
    def __init__(self, median: _Optional[float] = ..., p90: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class SessionEnded(_message.Message):
    __slots__ = ("federation_id", "round", "model_version", "rejections", "syncs", "direct_deliveries", "push_only_messages", "timings", "contributions", "error", "exit_code", "stop_reason")
    class RejectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Timing
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    SYNCS_FIELD_NUMBER: _ClassVar[int]
    DIRECT_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    PUSH_ONLY_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    model_version: int
    rejections: _containers.ScalarMap[str, int]
    syncs: int
    direct_deliveries: int
    push_only_messages: int
    timings: _containers.MessageMap[str, Timing]
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    error: str
    exit_code: int
    stop_reason: str
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., rejections: _Optional[_Mapping[str, int]] = ..., syncs: _Optional[int] = ..., direct_deliveries: _Optional[int] = ..., push_only_messages: _Optional[int] = ..., timings: _Optional[_Mapping[str, Timing]] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ..., error: _Optional[str] = ..., exit_code: _Optional[int] = ..., stop_reason: _Optional[str] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("format",)
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    format: str
    def __init__(self, format: _Optional[str] = ...) -> None: ...

class ModelBytes(_message.Message):
    __slots__ = ("data", "model_version", "metadata_json")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    model_version: int
    metadata_json: str
    def __init__(self, data: _Optional[bytes] = ..., model_version: _Optional[int] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: bool
    def __init__(self, checkpoint: _Optional[bool] = ...) -> None: ...

class WorkerTotals(_message.Message):
    __slots__ = ("peak_rss_mb", "rss_mb", "checkpoint_error", "checkpoint")
    PEAK_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    RSS_MB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    peak_rss_mb: float
    rss_mb: float
    checkpoint_error: str
    checkpoint: CheckpointHealth
    def __init__(self, peak_rss_mb: _Optional[float] = ..., rss_mb: _Optional[float] = ..., checkpoint_error: _Optional[str] = ..., checkpoint: _Optional[_Union[CheckpointHealth, _Mapping]] = ...) -> None: ...
