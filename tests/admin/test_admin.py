"""Admin API, federation CLI and membership with real daemons (issue 7's acceptance tests)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import signal
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fednode.node.envelope import seal
from fednode.node.errors import ExitCode
from fednode.node.federation.protocol import now_ms, topic_for
from fednode.node.identity import Identity
from fednode.node.membership import read_audit_log
from fednode.node.mesh import GossipMessage, Mesh, MeshConfig
from fednode.proto.v1 import admin_pb2, admin_pb2_grpc, control_pb2, envelope_pb2, model_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SMALL = ["--set", "task.params={hidden = [32]}", "--set", "training.local_steps=5", "--set", "training.slowdown=30",
         "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]', "--set", "federation.min_participants=2"]


def json_of(cli, *args: str) -> object:
    result = cli(*args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_until(predicate, timeout: float = 120.0, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def admin_up(cli, daemon) -> dict:
    def status():
        if daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited:\n{daemon.log()[-3000:]}")
        result = cli("status", "--state-dir", str(daemon.state_dir), "--format", "json")
        reply = json.loads(result.stdout) if result.returncode == 0 else None
        return reply if reply and reply.get("ready") else None  # answering while starting is not ready

    return wait_until(status, what="the admin API of a ready daemon")


def create_federation(cli, owner) -> str:
    created = json_of(cli, "federation", "create", "lab", "--aggregator", "mean", "--state-dir", str(owner.state_dir))
    return created["descriptor"]["federation_id"]


def invite(cli, owner, federation_id: str) -> str:
    return json_of(cli, "federation", "invite", federation_id[:12], "--state-dir", str(owner.state_dir))["token"]


def participants(cli, daemon, federation_id: str) -> set[str]:
    shown = json_of(cli, "federation", "show", federation_id[:12], "--state-dir", str(daemon.state_dir))
    return set(shown["participants"]) if shown["round"] else set()


def audit_reasons(daemon) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in read_audit_log(daemon.state_dir / "audit.jsonl"):
        reason = record.get("reason") or (record.get("event") or {}).get("reason")
        if record.get("status") == "rejected" and reason:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def test_create_invite_join_train_leave_with_json_everywhere(start_daemon, cli) -> None:
    owner = start_daemon(*SMALL, name="owner")
    joiner = start_daemon(*SMALL, name="joiner")
    owner_status, joiner_status = admin_up(cli, owner), admin_up(cli, joiner)
    federation_id = create_federation(cli, owner)
    token = invite(cli, owner, federation_id)
    joined = json_of(cli, "federation", "join", token, "--name", "lab-2", "--state-dir", str(joiner.state_dir))
    assert joined["descriptor"]["federation_id"] == federation_id
    assert joined["certificate"]["member_peer_id"] == joiner_status["peer_id"]
    # Both train together: each sees the other among the round's participants.
    both = {owner_status["peer_id"], joiner_status["peer_id"]}
    wait_until(lambda: participants(cli, owner, federation_id) == both, what="both members in rounds")
    wait_until(lambda: participants(cli, joiner, federation_id) == both, what="both members in rounds")
    # Every read-only command has parseable JSON.
    peers = json_of(cli, "peers", "--state-dir", str(owner.state_dir))
    assert any(p["peer_id"] == joiner_status["peer_id"] and p["connection"] == "direct" for p in peers)
    listed = json_of(cli, "federation", "list", "--state-dir", str(joiner.state_dir))
    assert [f["descriptor"]["federation_id"] for f in listed] == [federation_id]
    status = json_of(cli, "status", "--state-dir", str(owner.state_dir))
    assert federation_id in status["federations"] and status["state"] == "training"
    exported = json_of(cli, "model", "export", str(owner.state_dir.parent / "model.pt"), "--state-dir", str(owner.state_dir))
    data = Path(exported["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == exported["sha256"]
    import torch

    state = torch.load(Path(exported["path"]), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())
    # A second use of a single-use invite is refused with a clear message.
    reused = cli("federation", "join", token, "--state-dir", str(owner.state_dir))
    assert reused.returncode == ExitCode.REQUEST_FAILED
    # Leave: the joiner stops contributing and the owner sees its departure.
    left = json_of(cli, "federation", "leave", federation_id[:12], "--state-dir", str(joiner.state_dir))
    assert left == {"left": federation_id[:12]}
    assert json_of(cli, "federation", "list", "--state-dir", str(joiner.state_dir)) == []
    wait_until(lambda: json_of(cli, "status", "--state-dir", str(joiner.state_dir))["state"] == "idle", what="idle")
    # Idle, the node gives its training worker's memory back (the model is checkpointed) ...
    wait_until(lambda: joiner.children() == [], what="the idle node's worker to exit")
    # ... and starts it again when asked for the model.
    again = json_of(cli, "model", "export", str(joiner.state_dir.parent / "idle.pt"), "--state-dir",
                    str(joiner.state_dir))
    assert torch.load(Path(again["path"]), weights_only=True).keys() == state.keys()
    # The owner received the departure: it no longer waits for the joiner.
    wait_until(lambda: joiner_status["peer_id"] not in participants(cli, owner, federation_id), what="departure seen")
    stop = json_of(cli, "stop", "--state-dir", str(owner.state_dir))
    assert stop == {"stopping": True, "stopped": False}
    assert owner.wait(timeout=60) == 0
    no_daemon = cli("status", "--state-dir", str(owner.state_dir))
    assert no_daemon.returncode == ExitCode.NO_DAEMON and "fednode start" in no_daemon.stderr


async def _hostile_member_traffic(bootstrap: str, federation_id: str, victim_certificate_json: dict) -> None:
    """A non-member joins the topic: it forges an update with a member's certificate and replays
    a genuine member message it received."""
    attacker = Identity.generate()
    mesh = Mesh(MeshConfig(identity_key=attacker.private_seed, listen_multiaddrs=("/ip4/127.0.0.1/tcp/0",),
                           bootstrap_multiaddrs=(bootstrap,), fast_path=False))
    topic = topic_for(federation_id)
    await mesh.start()
    try:
        await mesh.subscribe(topic, lambda data, peer: None)
        captured: list[bytes] = []
        deadline = time.monotonic() + 60
        while not captured and time.monotonic() < deadline:
            try:
                event = await asyncio.wait_for(mesh.events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            if isinstance(event, GossipMessage) and event.topic == topic:
                envelope = envelope_pb2.SignedEnvelope.FromString(event.data)
                if envelope.HasField("certificate"):
                    captured.append(event.data)
        assert captured, "no member traffic reached the attacker"
        stolen = envelope_pb2.SignedEnvelope.FromString(captured[0]).certificate
        header = model_pb2.UpdateHeader(federation_id=federation_id, sender_peer_id=attacker.peer_id, round=10_000,
                                        payload_sha256=hashlib.sha256(b"x").digest(), payload_size=1,
                                        inline_payload=b"x", created_unix_ms=now_ms())
        forged = seal(attacker, control_pb2.ControlMessage(federation_id=federation_id, sent_unix_ms=now_ms(),
                                                           update=header), stolen)
        for _ in range(3):
            await mesh.publish(topic, forged)
            await mesh.publish(topic, captured[0])  # a genuine member message, replayed
            await asyncio.sleep(1.0)
    finally:
        await mesh.stop()


def test_non_members_forgeries_replays_and_revoked_members_are_rejected(start_daemon, cli, multiaddr_of) -> None:
    owner = start_daemon(*SMALL, name="owner")
    member = start_daemon(*SMALL, name="member")
    witness = start_daemon(*SMALL, name="witness")
    sleeper = start_daemon(*SMALL, name="sleeper")  # offline while the revocation is gossiped
    admin_up(cli, owner)
    member_status = admin_up(cli, member)
    admin_up(cli, witness)
    sleeper_status = admin_up(cli, sleeper)
    federation_id = create_federation(cli, owner)
    for joiner in (member, witness, sleeper):
        json_of(cli, "federation", "join", invite(cli, owner, federation_id), "--state-dir", str(joiner.state_dir))
    wait_until(lambda: sleeper_status["peer_id"] in participants(cli, owner, federation_id), what="the sleeper training")
    sleeper.signal(signal.SIGTERM)
    assert sleeper.wait(timeout=60) == 0
    bootstrap = wait_until(lambda: [a for a in json_of(cli, "status", "--state-dir", str(owner.state_dir))["listen_multiaddrs"]
                                    if "p2p-circuit" not in a], what="owner addresses")[0]
    # A daemon that only knows the federation id (no certificate) trains "in" it: it is ignored.
    outsider = start_daemon(*SMALL, "--set", f'federation.id="{federation_id}"',
                            "--set", f'mesh.bootstrap=["{bootstrap}"]', name="outsider")
    outsider_status = admin_up(cli, outsider)
    wait_until(lambda: audit_reasons(owner).get("not_member", 0) > 0, what="the outsider's messages rejected")
    assert outsider_status["peer_id"] not in participants(cli, owner, federation_id)
    # A forged update (someone else's certificate) and a replayed member message are rejected.
    asyncio.run(_hostile_member_traffic(bootstrap, federation_id, {}))
    wait_until(lambda: audit_reasons(owner).get("replay", 0) > 0 or "replay" in owner.log(), what="replay rejected")
    assert audit_reasons(owner).get("not_member", 0) >= 2
    # Revocation: the owner revokes the member; once it has spread, the member is rejected.
    revoked = json_of(cli, "federation", "revoke", federation_id[:12], member_status["peer_id"], "--reason", "test",
                      "--state-dir", str(owner.state_dir))
    assert revoked["revocation"]["reason"] == "test"
    wait_until(lambda: audit_reasons(owner).get("revoked", 0) > 0, what="the revoked member rejected")
    # ...and by another member, which learnt the revocation from the mesh (gossip).
    wait_until(lambda: audit_reasons(witness).get("revoked", 0) > 0, what="the revocation spread to the witness")
    # ...and by a member that was offline meanwhile: at restart it reads the federation's DHT
    # record before it subscribes to the topic, so it never accepts the revoked member's updates.
    owner.wait_for_log("stored the merged list")
    outsider.signal(signal.SIGTERM)  # done with it; frees a core for the restart
    assert outsider.wait(timeout=60) == 0
    sleeper = start_daemon(*SMALL, name="sleeper")
    sleeper.wait_for_log("revocation record: 1 learned", timeout=120)
    wait_until(lambda: audit_reasons(sleeper).get("revoked", 0) > 0, what="the restarted member rejecting the revoked one")
    for daemon in (owner, member, witness, sleeper):
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "admin.crt", tmp / "admin.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_remote_admin_needs_tls_and_token_and_health_is_serving(start_daemon, cli, tmp_path: Path) -> None:
    import socket

    # Refused without TLS and token (no --insecure).
    refused = start_daemon(*SMALL, "--set", 'admin.listen="127.0.0.1:0"', name="refused")
    assert refused.wait(timeout=60) == ExitCode.CONFIG
    assert "admin.tls_cert" in refused.log()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cert, key = _self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    daemon = start_daemon(*SMALL, "--set", f'admin.listen="127.0.0.1:{port}"', "--set", f'admin.tls_cert="{cert}"',
                          "--set", f'admin.tls_key="{key}"', "--set", f'admin.token_file="{token_file}"',
                          "--set", "metrics.port=0", "--log-format", "json", name="remote")
    admin_up(cli, daemon)
    # The opt-in Prometheus endpoint answers with fednode's metrics.
    import urllib.request

    metrics_port = next(json.loads(line)["port"] for line in daemon.log().splitlines() if '"event": "metrics"' in line)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    assert "fednode_" in exposition
    remote = ["--admin", f"localhost:{port}", "--tls-ca", str(cert)]
    without = cli("status", *remote)
    assert without.returncode == ExitCode.REQUEST_FAILED and "unauthenticated" in without.stderr
    wrong = cli("status", *remote, "--token", "nope")
    assert wrong.returncode == ExitCode.REQUEST_FAILED
    status = json_of(cli, "status", *remote, "--token", "s3cret-token")
    assert status["state_dir"] == str(daemon.state_dir)
    # Standard health checking, over the local socket and the remote listener.
    with grpc.insecure_channel(f"unix:{daemon.state_dir / 'admin.sock'}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        assert stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=10).peer_id == status["peer_id"]
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fednode.v1.AdminService"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert oct((daemon.state_dir / "admin.sock").stat().st_mode & 0o777) == "0o600"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
