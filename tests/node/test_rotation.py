"""Size-bounded rotation of audit.jsonl and history.jsonl: every record kept, in order, the audit
chain verifiable across the rotated files; the daemon's summary history bounded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fednode.node.errors import ExitCode
from fednode.node.membership import AuditLog, audit_files, read_audit_files, verify_audit_files
from fednode.node.rotation import JsonLinesLog, read_json_lines, rotated_files


def test_json_lines_rotate_by_size_and_keep_everything(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    log = JsonLinesLog(path, max_bytes=300)
    for index in range(40):
        log.append({"round": index, "accuracy": 0.5})
    log.close()
    rotated = rotated_files(path)
    assert len(rotated) >= 3 and [p.name for p in rotated] == [f"history.jsonl.{i}" for i in range(1, len(rotated) + 1)]
    assert all(p.stat().st_size <= 300 for p in [*rotated, path])
    assert [r["round"] for r in read_json_lines(path)] == list(range(40))
    # Reopened (a restart), it appends to the current file and keeps numbering after the highest.
    again = JsonLinesLog(path, max_bytes=300)
    for index in range(40, 50):
        again.append({"round": index})
    again.close()
    assert [r["round"] for r in read_json_lines(path)] == list(range(50))
    assert len(rotated_files(path)) > len(rotated)


def test_a_line_torn_by_a_crash_is_ended_not_merged(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"round": 1}\n{"round": 2, "acc')  # kill -9 mid-write
    log = JsonLinesLog(path, max_bytes=10_000)
    log.append({"round": 3})
    log.close()
    assert [r["round"] for r in read_json_lines(path)] == [1, 3]


def test_audit_log_rotates_and_the_chain_runs_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=2000) as audit:
        for index in range(30):
            audit.record_update(federation_id="f", sender_peer_id=f"peer-{index}", payload_sha256="ab" * 32,
                                accepted=index % 3 != 0, reason=None if index % 3 else "bad_signature", round=index)
        assert audit.rotations >= 3
    files = audit_files(path)
    assert files[-1] == path and len(files) == len(rotated_files(path)) + 1
    assert all(f.stat().st_size <= 2000 for f in files)
    records = list(read_audit_files(path))
    assert [r["event"]["round"] for r in records] == list(range(30))  # nothing lost, in order
    verify_audit_files(path)
    # The first record of each newer file links to the last record of the file before it.
    first_of_second = json.loads(files[1].read_text().splitlines()[0])
    assert first_of_second["prev"] != ""
    # Removing a rotated file from the middle, or editing one, is detected.
    middle = files[1]
    saved = middle.read_bytes()
    middle.unlink()
    with pytest.raises(ValueError, match="chain broken"):
        verify_audit_files(path)
    middle.write_bytes(saved.replace(b'"peer-', b'"PEER-', 1))
    with pytest.raises(ValueError, match="chain broken"):
        verify_audit_files(path)


def test_daemon_rotates_history_and_audit_and_keeps_every_round(start_daemon) -> None:
    daemon = start_daemon("--solo", "--rounds", "8", "--set", "task.params={hidden = [16]}", "--set", "training.local_steps=3",
                          "--set", "rotation.history_max_mb=0.001", "--log-format", "json")
    assert daemon.wait(timeout=240) == ExitCode.OK, daemon.log()
    history = daemon.state_dir / "history.jsonl"
    assert rotated_files(history), "1 kB of history must have rotated at least once"
    rounds = [r["round"] for r in read_json_lines(history)]
    assert rounds == list(range(1, 9))
    summary = json.loads((daemon.state_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["history"]] == rounds and summary["history_dropped"] == 0
    assert summary["history_file"] == "history.jsonl"
    first = next(iter(read_json_lines(history)))
    assert first["peer_id"] == summary["peer_id"] and first["accuracy"] > 0 and "bytes_sent" in first


def test_summary_keeps_the_latest_rounds_only() -> None:
    from fednode.node import daemon as daemon_module
    from fednode.node.config import FednodeConfig
    from fednode.node.daemon import SUMMARY_HISTORY, Daemon, RoundRecord, RunSummary

    node = Daemon(FednodeConfig())
    node.summary = RunSummary(peer_id="p", version="v", task="t", device="cpu", state_dir="/x", started_unix=0.0)
    for index in range(1, SUMMARY_HISTORY + 21):
        node._record(RoundRecord(round=index, model_version=index, accuracy=0.5, loss=1.0, train_loss=1.0, seconds=0.1))
    assert len(node.summary.history) == SUMMARY_HISTORY and node.summary.history_dropped == 20
    assert node.summary.history[0].round == 21 and node.summary.rounds == SUMMARY_HISTORY + 20
    assert node.summary.history_file == daemon_module.HISTORY_FILE
