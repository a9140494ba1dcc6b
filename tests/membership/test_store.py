"""MembershipStore: restart, kill -9 in the middle of writes, file modes, corruption errors."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fednode.node.identity import Identity
from fednode.node.membership import (
    MembershipError,
    MembershipStateError,
    MembershipStore,
    TrustPolicy,
    issue_certificate,
    issue_invite,
    make_join_request,
    revoke,
)
from fednode.proto.v1 import membership_pb2

NOW = 1_700_000_000_000


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _populated(tmp_path: Path, federation) -> tuple[MembershipStore, membership_pb2.MemberCertificate]:
    store = MembershipStore(tmp_path)
    certificate = issue_certificate(federation.issuer, Identity.generate().public_key, now_unix_ms=NOW)
    store.save_membership(federation.descriptor, certificate, issuer=federation.issuer)
    _, record = issue_invite(federation.issuer, now_unix_ms=NOW)
    store.add_invite(record, now_unix_ms=NOW)
    store.add_revocation(federation.id, revoke(federation.issuer, serial=bytes(16), now_unix_ms=NOW), now_unix_ms=NOW)
    return store, certificate


def test_state_survives_a_restart(tmp_path, federation, other_federation) -> None:
    store, certificate = _populated(tmp_path, federation)
    store.save_membership(other_federation.descriptor)
    reopened = MembershipStore(tmp_path)
    assert reopened.federation_ids() == sorted([federation.id, other_federation.id])
    state = reopened.load_all()[federation.id]
    assert state.descriptor == federation.descriptor and state.certificate == certificate
    assert state.issuer is not None and state.issuer.public_key == federation.issuer.public_key
    assert len(state.invites) == 1 and len(state.revocations) == 1
    other = reopened.load(other_federation.id)
    assert other.issuer is None and other.certificate is None and other.invites == ()
    policy = TrustPolicy(clock=lambda: NOW - 10 * 24 * 3600 * 1000)  # clock stepped back: still applied
    assert policy.load_store(reopened) == 1 and policy.is_revoked(federation.id, serial=bytes(16))


def test_peer_addresses_are_hints_kept_across_restarts(tmp_path, federation) -> None:
    store, _ = _populated(tmp_path, federation)
    peer, other = Identity.generate().peer_id, Identity.generate().peer_id
    first = f"/ip4/10.0.0.1/tcp/4001/p2p/{peer}"
    second = f"/ip4/10.0.0.2/tcp/4001/p2p/{peer}"
    assert store.peer_addresses(federation.id) == []
    many = [first, first, "no-slash", "/ip4/1.2.3.4/tcp/1", second] + [f"/ip4/10.1.0.{i}/tcp/1/p2p/{peer}" for i in range(50)]
    assert store.save_peer_addresses(federation.id, many) is True
    saved = MembershipStore(tmp_path).member_addresses(federation.id)
    # deduplicated, junk dropped, capped per member
    assert list(saved) == [peer] and saved[peer][:2] == [first, second] and len(saved[peer]) == 8
    assert store.save_peer_addresses(federation.id, many) is False  # unchanged: no write
    # A member seen at a new address keeps its recent ones behind it; the newest member comes first.
    moved = f"/ip4/10.0.0.9/tcp/5001/p2p/{peer}"
    assert store.remember_members(federation.id, {other: [f"/ip4/10.0.0.3/tcp/1/p2p/{other}"]}, now_unix_ms=1)
    assert store.remember_members(federation.id, {peer: [moved]}, now_unix_ms=2)
    saved = store.member_addresses(federation.id)
    assert list(saved) == [peer, other] and saved[peer][:3] == [moved, first, second] and len(saved[peer]) == 8
    # A damaged file is a lost hint, not a failure; the next save replaces it.
    (tmp_path / "membership" / federation.id / "peers.json").write_text("{not json")
    assert store.peer_addresses(federation.id) == []
    assert store.save_peer_addresses(federation.id, [second]) is True
    assert store.peer_addresses(federation.id) == [second]
    # The first format (a flat list) still reads.
    (tmp_path / "membership" / federation.id / "peers.json").write_text(json.dumps([first, second]))
    assert store.member_addresses(federation.id) == {peer: [first, second]}
    # Nothing is written for a federation this node is not in.
    assert store.save_peer_addresses("0" * 64, [first]) is False


def test_file_modes(tmp_path, federation) -> None:
    store, _ = _populated(tmp_path, federation)
    directory = store.root / federation.id
    assert _mode(store.root) == 0o700 and _mode(directory) == 0o700
    assert _mode(directory / "issuer.key") == 0o600
    assert _mode(directory / "invites.json") == 0o600
    assert _mode(directory / "descriptor.pb") & 0o022 == 0
    os.chmod(directory / "issuer.key", 0o644)
    with pytest.raises(MembershipStateError, match="chmod 600"):
        MembershipStore(tmp_path).issuer(federation.id)


@pytest.mark.parametrize("name", ["descriptor.pb", "certificate.pb", "issuer.key", "invites.json", "revocations.pb"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_corruption_is_reported_with_the_file(tmp_path, federation, name: str, damage: str) -> None:
    store, _ = _populated(tmp_path, federation)
    path = store.root / federation.id / name
    data = path.read_bytes()
    if damage == "garbage":
        data = b"\x00\xffnot what was written\x12\x34" * 3
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = data[:-20] + bytes([data[-20] ^ 0x01]) + data[-19:]
    path.write_bytes(data)
    with pytest.raises(MembershipStateError) as info:
        MembershipStore(tmp_path).load(federation.id)
    assert str(path) in info.value.message and "corrupt" in info.value.message


def test_descriptor_of_another_federation_in_the_wrong_directory(tmp_path, federation, other_federation) -> None:
    store, _ = _populated(tmp_path, federation)
    (store.root / federation.id / "descriptor.pb").write_bytes(other_federation.descriptor.SerializeToString())
    with pytest.raises(MembershipStateError, match=r"descriptor\.pb"):
        store.load(federation.id)


def test_refuses_path_tricks_and_invalid_objects(tmp_path, federation) -> None:
    store = MembershipStore(tmp_path)
    with pytest.raises(MembershipError, match="not a federation id"):
        store.load("../../etc")
    forged = membership_pb2.FederationDescriptor()
    forged.CopyFrom(federation.descriptor)
    forged.name = "renamed"
    with pytest.raises(MembershipError, match="invalid descriptor"):
        store.save_descriptor(forged)
    _, record = issue_invite(federation.issuer, now_unix_ms=NOW)
    with pytest.raises(MembershipError, match="holds no key"):
        store.add_invite(record)


def test_forget_moves_the_federation_away_and_keeps_the_key(tmp_path, federation) -> None:
    store, _ = _populated(tmp_path, federation)
    moved = store.forget(federation.id, now_unix_ms=NOW)
    assert store.federation_ids() == [] and (moved / "issuer.key").exists()
    assert MembershipStore(tmp_path).federation_ids() == []


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from fednode.node.identity import Identity
    from fednode.node.membership import Issuer, MembershipStore, issue_invite, make_join_request, revoke

    store = MembershipStore(Path(sys.argv[1]))
    federation_id = sys.argv[2]
    issuer = store.issuer(federation_id)
    for n in range(1, 100000):
        invite, record = issue_invite(issuer, max_uses=1)
        store.add_invite(record)
        print("invite", n, flush=True)
        response = store.redeem(make_join_request(invite, Identity.generate().public_key))
        assert response.status == 1, response.message
        print("redeemed", n, flush=True)
        store.add_revocation(federation_id, revoke(issuer, serial=bytes(response.certificate.serial)))
        print("revoked", n, flush=True)
""")


def test_kill_9_during_writes_leaves_a_loadable_consistent_store(tmp_path, federation) -> None:
    store = MembershipStore(tmp_path)
    store.save_membership(federation.descriptor, issuer=federation.issuer)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    baseline = {"invite": 0, "redeemed": 0, "revoked": 0}
    for attempt, delay in enumerate((0.5, 1.0, 1.5)):
        process = subprocess.Popen([sys.executable, str(script), str(tmp_path), federation.id],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(delay + attempt * 0.037)  # land at different points of the write cycle
            process.send_signal(signal.SIGKILL)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        assert process.returncode == -signal.SIGKILL, err
        acknowledged = dict(baseline)
        for line in out.splitlines():
            kind, number = line.split()
            acknowledged[kind] = baseline[kind] + int(number)
        reopened = MembershipStore(tmp_path)
        state = reopened.load(federation.id)  # loads: no torn file, every signature checks
        found = {
            "invite": len(state.invites),
            "redeemed": sum(record.uses for record in state.invites),
            "revoked": len(state.revocations),
        }
        # every acknowledged write is on disk; at most the one in flight when killed is extra
        for kind in found:
            assert acknowledged[kind] <= found[kind] <= acknowledged[kind] + 1, (attempt, kind, found, acknowledged)
        assert not list((reopened.root / federation.id).glob(".*.tmp"))  # stale temp files cleaned
        baseline = found
    assert baseline["revoked"] >= 3, f"the writer barely ran ({baseline}); the test proves little"
    # the store still works after the kills
    invite, record = issue_invite(federation.issuer, now_unix_ms=NOW)
    store.add_invite(record, now_unix_ms=NOW)
    response = store.redeem(make_join_request(invite, Identity.generate().public_key, now_unix_ms=NOW), now_unix_ms=NOW)
    assert response.status == membership_pb2.JoinResponse.OK
