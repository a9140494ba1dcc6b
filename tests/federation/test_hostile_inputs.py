"""A hostile peer on the federation topic: every kind of bad input is rejected and counted by
reason, and the daemons keep training (nothing crashes)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
import torch

from fednode.node.envelope import seal
from fednode.node.federation.protocol import now_ms, topic_for
from fednode.node.federation.runner import raw_float32_payload
from fednode.node.federation.updates import snapshot_payload
from fednode.node.identity import Identity
from fednode.node.logs import read_json_log, record_time
from fednode.node.mesh import GossipConfig, GossipMessage, Mesh, MeshConfig
from fednode.node.model import model_layout
from fednode.node.tasks import TaskContext, load_task
from fednode.proto.v1 import control_pb2, envelope_pb2, model_pb2, tensor_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FEDERATION = "test-fed"
ARGS = ["--set", "task.params={hidden = [64]}", "--set", "training.local_steps=10", "--rounds", "40",
        "--set", "training.slowdown=40", "--set", "federation.min_participants=2"]


def _latest_round(log: str) -> int:
    rounds = [json.loads(line)["round"] for line in log.splitlines() if '"event": "round"' in line]
    return rounds[-1] if rounds else 0


def _update(identity: Identity, layout_digest: str, round_number: int, payload: bytes, **overrides) -> control_pb2.ControlMessage:
    header = model_pb2.UpdateHeader(
        federation_id=FEDERATION, sender_peer_id=identity.peer_id, round=round_number, base_model_version=0,
        layout_digest=layout_digest, payload_sha256=hashlib.sha256(payload).digest(), payload_size=len(payload),
        codec=tensor_pb2.CODEC_NONE, created_unix_ms=now_ms(), inline_payload=payload,
    )
    for key, value in overrides.items():
        setattr(header, key, value)
    return control_pb2.ControlMessage(federation_id=FEDERATION, sent_unix_ms=now_ms(), update=header)


@contextlib.asynccontextmanager
async def _hostile_member(bootstrap: str) -> AsyncIterator[tuple[Identity, Mesh]]:
    """A peer of our own on the federation topic, grafted into its gossip mesh."""
    attacker = Identity.generate()
    mesh = Mesh(MeshConfig(
        identity_key=attacker.private_seed,
        listen_multiaddrs=("/ip4/127.0.0.1/tcp/0",),
        bootstrap_multiaddrs=(bootstrap,),
        gossip=GossipConfig(max_message_size=200 * 1024),  # so it can send what others must refuse
    ))
    topic = topic_for(FEDERATION)
    await mesh.start()
    try:
        await mesh.subscribe(topic, lambda data, peer: None)
        for _ in range(100):
            if await mesh.topic_peers(topic):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.5)  # a heartbeat or two: the gossip mesh grafts us
        yield attacker, mesh
    finally:
        await mesh.stop()


async def _attack(bootstrap: str, current_round: Callable[[], int], layout: model_pb2.ModelLayout) -> None:
    honest_looking = Identity.generate()
    topic = topic_for(FEDERATION)
    async with _hostile_member(bootstrap) as (attacker, mesh):
        # Rounds are short: read the federation's round only now, after the mesh set-up, so the
        # updates below are for rounds still open (a closed round would count them as stale).
        round_number = current_round() + 4
        numel = layout.numel
        good_payload = raw_float32_payload(torch.zeros(numel)).SerializeToString()
        wrong_shape = raw_float32_payload(torch.zeros(numel + 1)).SerializeToString()
        nan_payload = raw_float32_payload(torch.full((numel,), float("nan"))).SerializeToString()
        forged = envelope_pb2.SignedEnvelope.FromString(seal(attacker, _update(attacker, layout.digest, round_number, good_payload)))
        forged.signature = bytes(64)
        messages = [
            b"not a protobuf at all \xff\xff",                                   # malformed
            os.urandom(100 * 1024),                                                # oversized
            forged.SerializeToString(),                                            # bad_signature
            seal(attacker, control_pb2.ControlMessage(                             # wrong_federation
                federation_id="another-fed", sent_unix_ms=now_ms(),
                announcement=control_pb2.PeerAnnouncement(peer_id=attacker.peer_id))),
            seal(attacker, control_pb2.ControlMessage(                             # stale (clock)
                federation_id=FEDERATION, sent_unix_ms=now_ms() - 3_600_000,
                announcement=control_pb2.PeerAnnouncement(peer_id=attacker.peer_id))),
            seal(attacker, _update(honest_looking, layout.digest, round_number, good_payload)),  # sender_mismatch
            seal(attacker, _update(attacker, "0" * 64, round_number, good_payload)),              # layout_mismatch
            seal(attacker, _update(attacker, layout.digest, round_number, good_payload,           # hash_mismatch
                                   payload_sha256=hashlib.sha256(b"other").digest())),
            seal(attacker, _update(attacker, layout.digest, round_number + 1, b"\x0a\xff" * 100)),  # malformed payload
        ]
        for message in messages:
            await mesh.publish(topic, message)
            await asyncio.sleep(0.05)
        # Larger payloads are pulled from us: serve a NaN vector and a wrong-shaped one.
        for offset, payload in ((3, nan_payload), (4, wrong_shape)):
            mesh.serve_blob(hashlib.sha256(payload).digest(), payload)
            message = _update(attacker, layout.digest, round_number + offset, payload)
            message.update.inline_payload = b""
            await mesh.publish(topic, seal(attacker, message))
        # A member's genuine message pushed to the members by someone else: members push only
        # their own messages, so the pusher (authenticated by the fast path) is refused.
        genuine = None
        until = time.monotonic() + 30
        while genuine is None and time.monotonic() < until:
            with contextlib.suppress(asyncio.TimeoutError):
                event = await asyncio.wait_for(mesh.events.get(), 1.0)
                if isinstance(event, GossipMessage) and event.topic == topic:
                    genuine = event.data
        assert genuine is not None, "no member message seen"
        assert await mesh.push(topic, genuine, await mesh.topic_peers(topic)), "nobody reachable by push"
        await asyncio.sleep(5)  # let the daemons fetch what we serve


def test_hostile_peer_inputs_are_rejected_and_counted(start_federation, multiaddr_of) -> None:
    nodes = start_federation(2, *ARGS, federation=FEDERATION)
    bootstrap = multiaddr_of(nodes[0])
    deadline = time.monotonic() + 120
    while _latest_round(nodes[0].log()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    layout = model_layout(load_task("fednode.node.tasks.digits:build_task", TaskContext(), {"hidden": [64]}).model_factory())
    asyncio.run(_attack(bootstrap, lambda: _latest_round(nodes[0].log()), layout))
    for node in nodes:
        assert node.wait(timeout=400) == 0, node.log()[-3000:]
    rejected: dict[str, int] = {}
    for node in nodes:
        summary = json.loads((node.state_dir / "summary.json").read_text())
        assert summary["rounds"] == 40 and summary["accuracy"] >= 0.85
        for reason, count in summary["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + count
    expected = {"malformed", "oversized", "bad_signature", "wrong_federation", "stale", "sender_mismatch",
                "layout_mismatch", "hash_mismatch", "non_finite"}
    assert expected <= set(rejected), rejected
    assert any(" pushed a " in node.log() for node in nodes), "a pushed message of someone else was not refused"


async def _offer_poisoned_snapshots(bootstrap: str, current_round: Callable[[], int],
                                    layout: model_pb2.ModelLayout) -> float:
    """Offer, as a lone member, snapshots for rounds nobody reached: a poisoned model that is
    served (1000 rounds ahead) and one that is not (2000 ahead), every 0.5 s for 10 s. Returns
    the wall-clock time of the last offer."""
    async with _hostile_member(bootstrap) as (attacker, mesh):
        poisoned = snapshot_payload(torch.full((layout.numel,), 1000.0))
        digest = hashlib.sha256(poisoned).digest()
        mesh.serve_blob(digest, poisoned)
        ahead = current_round()
        offers = [(ahead + 1000, digest, len(poisoned)), (ahead + 2000, hashlib.sha256(b"never served").digest(), 1024)]
        until = time.monotonic() + 10
        while time.monotonic() < until:
            for number, payload_sha256, size in offers:
                header = model_pb2.SnapshotHeader(
                    federation_id=FEDERATION, model_version=number, round=number, layout_digest=layout.digest,
                    payload_sha256=payload_sha256, payload_size=size, created_unix_ms=now_ms())
                await mesh.publish(topic_for(FEDERATION), seal(attacker, control_pb2.ControlMessage(
                    federation_id=FEDERATION, sent_unix_ms=now_ms(), snapshot=control_pb2.SnapshotOffer(header=header))))
            await asyncio.sleep(0.5)
        return time.time()


@pytest.mark.parametrize("tolerated", [1, 0])
def test_a_lone_member_cannot_hand_its_snapshot_to_a_federation_that_tolerates_one_attacker(
        start_federation, multiaddr_of, tolerated: int) -> None:
    # f = 1 (median over the three honest members): a snapshot needs two members offering it, so
    # the attacker's offers are noted and passed over. f = 0 (no attacker tolerated) is the
    # control: the same offers are adopted, after the unserved one fails and is set aside.
    # (median needs all three updates: n >= 2f + 1)
    rule = ["--set", 'aggregation.rule="median"', "--set", "aggregation.f=1", "--set", "federation.min_participants=3"]
    nodes = start_federation(3, *ARGS, *(rule if tolerated else []), federation=FEDERATION)
    deadline = time.monotonic() + 120
    while _latest_round(nodes[0].log()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    layout = model_layout(load_task("fednode.node.tasks.digits:build_task", TaskContext(), {"hidden": [64]}).model_factory())
    last_offer = asyncio.run(_offer_poisoned_snapshots(multiaddr_of(nodes[0]), lambda: _latest_round(nodes[0].log()), layout))
    for node in nodes:
        assert node.wait(timeout=400) == 0, node.log()[-3000:]
    adopted = [[record_time(r) for r in read_json_log(node.log()) if r.get("event") == "sync" and r["round"] >= 1000]
               for node in nodes]
    synced_ahead = [bool(times) for times in adopted]
    summaries = [json.loads((node.state_dir / "summary.json").read_text()) for node in nodes]
    if tolerated:
        assert not any(synced_ahead), [node.log()[-2000:] for node in nodes]
        assert all(s["rounds"] == 40 and s["accuracy"] >= 0.85 for s in summaries), summaries
        # Not vacuous: the offers reached the members and were weighed.
        assert all("adopting one takes 2 (aggregation.f + 1)" in node.log() for node in nodes)
    else:
        assert any(synced_ahead), [node.log()[-2000:] for node in nodes]
        assert any("state sync from 1 peer(s) failed" in node.log() for node in nodes)
        # The unserved offer, failed once, is set aside although the attacker keeps offering it:
        # the served one is adopted while the offers go on, not only once they stop.
        assert min(t for times in adopted for t in times) < last_offer, (adopted, last_offer)
