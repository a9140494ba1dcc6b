"""The wire contract: generated code matches the .proto files, and messages round-trip."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from google.protobuf import descriptor_pb2

from fednode.proto import generate
from fednode.proto.v1 import admin_pb2, control_pb2, envelope_pb2, membership_pb2, model_pb2, tensor_pb2

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_matches_proto_files() -> None:
    assert generate.stale_files() == [], "run: python -m fednode.proto.generate"


def test_every_field_and_enum_value_is_documented() -> None:
    """Each field / enum value line in the .proto files carries a comment (on the line or above)."""
    undocumented = []
    for proto in sorted((REPO / "proto" / "v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            is_field = re.match(r"^(repeated\s+)?[\w.]+\s+\w+\s*=\s*\d+;", stripped)
            is_enum_value = re.match(r"^[A-Z][A-Z0-9_]*\s*=\s*\d+;", stripped)
            if not (is_field or is_enum_value):
                continue
            previous = lines[number - 1].strip() if number else ""
            if "//" not in stripped and not previous.startswith("//"):
                undocumented.append(f"{proto.name}:{number + 1}: {stripped}")
    assert not undocumented, "\n".join(undocumented)


def test_messages_round_trip() -> None:
    payload = tensor_pb2.TensorPayload(
        shape=[3, 4], dtype=tensor_pb2.DTYPE_FLOAT32, codec=tensor_pb2.CODEC_TOPK, values=b"\x01" * 8
    )
    payload.params.k = 2
    header = model_pb2.UpdateHeader(
        federation_id="ab" * 32, sender_peer_id="12D3KooWx", round=7, base_model_version=6,
        payload_sha256=hashlib.sha256(payload.SerializeToString()).digest(), codec=tensor_pb2.CODEC_TOPK,
    )
    message = control_pb2.ControlMessage(federation_id="ab" * 32, sent_unix_ms=1, update=header)
    envelope = envelope_pb2.SignedEnvelope(
        sender_public_key=b"k" * 32, payload_type="fednode.v1.ControlMessage",
        payload=message.SerializeToString(), signature=b"s" * 64,
        certificate=membership_pb2.MemberCertificate(federation_id="ab" * 32, role=membership_pb2.MemberCertificate.CONTRIBUTOR),
    )
    decoded = envelope_pb2.SignedEnvelope.FromString(envelope.SerializeToString())
    inner = control_pb2.ControlMessage.FromString(decoded.payload)
    assert inner.WhichOneof("body") == "update" and inner.update == header
    assert tensor_pb2.TensorPayload.FromString(payload.SerializeToString()) == payload
    status = admin_pb2.NodeStatus(peer_id="p", accuracy=float("nan"))
    assert admin_pb2.NodeStatus.FromString(status.SerializeToString()).peer_id == "p"


def test_admin_service_declares_the_issue_rpcs() -> None:
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    names = {method.name for method in service.methods}
    assert {"GetStatus", "ListPeers", "ListFederations", "GetFederation", "CreateFederation", "CreateInvite",
            "JoinFederation", "LeaveFederation", "WatchEvents", "ExportModel", "Shutdown"} <= names
    proto = descriptor_pb2.FileDescriptorProto()
    admin_pb2.DESCRIPTOR.CopyToProto(proto)
    assert proto.package == "fednode.v1"


def test_no_pickle_anywhere_in_the_installed_code() -> None:
    offenders = []
    for folder in ("node", "aggregators", "cli", "proto"):
        for source in (REPO / folder).rglob("*.py"):
            text = source.read_text()
            if re.search(r"\bimport pickle\b|\bpickle\.loads?\(|cPickle|dill\b", text):
                offenders.append(str(source.relative_to(REPO)))
    assert not offenders
