"""AuditLog: JSON lines, appended never rewritten, torn lines, rotation, hash chain, threads."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from fednode.node.envelope import RejectReason
from fednode.node.membership import AuditLog, read_audit_log, verify_audit_chain

FED = "ab" * 32
NOW = 1_700_000_000_000


def _update(log: AuditLog, n: int, **kwargs) -> dict:
    return log.record_update(federation_id=FED, sender_peer_id=f"12D3KooWpeer{n}", payload_sha256=bytes([n % 256]) * 32,
                             accepted=kwargs.pop("accepted", True), round=n, base_model_version=n - 1,
                             timestamp_ms=NOW + n, **kwargs)


def test_records_are_json_lines_with_the_schema(tmp_path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    with AuditLog(path) as log:
        _update(log, 1, aggregator_score=0.75, sender_address="/ip4/192.0.2.9/tcp/4001")
        _update(log, 2, accepted=False, reason=RejectReason.REJECT_BAD_SIGNATURE, detail="signature does not verify")
        _update(log, 3, accepted=False, reason="aggregator_outlier", aggregator_score=float("inf"), group_id=b"\x01" * 16)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == list(read_audit_log(path, strict=True))
    first, second, third = records
    assert first["timestamp"] == "2023-11-14T22:13:20.001Z" and first["unix_ms"] == NOW + 1
    assert first["actor"] == {"id": "12D3KooWpeer1", "description": "update sender", "ip_address": "/ip4/192.0.2.9/tcp/4001"}
    assert first["event"] == {"action": "update", "federation_id": FED, "round": 1, "group_id": None,
                              "base_model_version": 0, "payload_sha256": "01" * 32, "aggregator_score": 0.75}
    assert first["status"] == "accepted" and first["reason"] is None
    assert second["status"] == "rejected" and second["reason"] == "bad_signature"
    assert second["detail"] == "signature does not verify"
    assert third["event"]["aggregator_score"] == "Infinity" and third["event"]["group_id"] == "01" * 16
    assert verify_audit_chain(path, previous="")


def test_reopening_appends_and_never_rewrites(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for n in range(5):
            _update(log, n)
    before = path.read_bytes()
    with AuditLog(path) as log:
        log.record("revocation", "accepted", actor={"id": "owner"}, event={"federation_id": FED})
    after = path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 6
    verify_audit_chain(path, previous="")  # the chain continues across restarts


def test_tampering_breaks_the_chain(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for n in range(5):
            _update(log, n, accepted=n % 2 == 0, reason=None if n % 2 == 0 else "stale")
    lines = path.read_bytes().splitlines(keepends=True)
    removed = tmp_path / "removed.jsonl"
    removed.write_bytes(b"".join(lines[:2] + lines[3:]))
    edited = tmp_path / "edited.jsonl"
    edited.write_bytes(b"".join([*lines[:1], lines[1].replace(b'"rejected"', b'"accepted"'), *lines[2:]]))
    for forged in (removed, edited):
        with pytest.raises(ValueError, match="chain broken"):
            verify_audit_chain(forged, previous="")


def test_torn_last_line_after_a_crash(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        _update(log, 1)
        _update(log, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"v":1,"timestamp":"2023-11')  # a record cut short by a power failure
    with AuditLog(path) as log:
        _update(log, 3)
    assert [r["event"]["round"] for r in read_audit_log(path)] == [1, 2, 3]
    with pytest.raises(ValueError, match="not a JSON object"):
        list(read_audit_log(path, strict=True))
    verify_audit_chain(path, previous="")  # record 3 links to record 2, over the torn fragment


def test_rotation_by_rename_and_by_delete(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    _update(log, 1)
    os.rename(path, tmp_path / "audit.jsonl.1")  # logrotate's default
    _update(log, 2)
    os.rename(path, tmp_path / "audit.jsonl.2")
    _update(log, 3)
    os.unlink(path)
    _update(log, 4)
    log.close()
    files = [tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2", path]
    assert [[r["event"]["round"] for r in read_audit_log(f)] for f in files] == [[1], [2], [4]]
    last = verify_audit_chain(files[0], previous="")
    last = verify_audit_chain(files[1], previous=last)  # the chain crosses the rotation
    with pytest.raises(ValueError):
        verify_audit_chain(files[2], previous=last)  # record 3 was deleted with its file: detected


def test_concurrent_writers_and_batched_fsync(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync_every=16)
    threads = [threading.Thread(target=lambda k=k: [_update(log, k * 1000 + i) for i in range(200)]) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    log.sync()
    log.close()
    records = list(read_audit_log(path, strict=True))
    assert len(records) == 800 and len({r["event"]["round"] for r in records}) == 800
    verify_audit_chain(path, previous="")
    with pytest.raises(ValueError, match="closed"):
        _update(log, 1)
    with pytest.raises(ValueError):
        AuditLog(path, fsync_every=0)
