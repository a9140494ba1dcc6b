"""Append-only audit log: one JSON object per line for every accepted or rejected update.

Record shape (after Flower's audit schema: timestamp, actor, event, status):

    {"v": 1, "timestamp": "2025-01-31T12:00:00.123Z", "unix_ms": 1738324800123,
     "actor": {"id": "<sender peer id>", "description": "update sender", "ip_address": "<multiaddr>"|null},
     "event": {"action": "update", "federation_id": "...", "round": 7, "group_id": "<hex>"|null,
               "base_model_version": 6, "payload_sha256": "<hex>", "aggregator_score": 0.93|null},
     "status": "accepted" | "rejected", "reason": "bad_signature"|null, "detail": "..."|null,
     "prev": "<hex sha256 of the previous record's line>"}

Durability: the file is opened O_APPEND and each record is handed to the kernel in one write()
before `record*` returns, so killing the process loses nothing. With `fsync_every=N` the file is
fsynced after every N records: a power cut or OS crash loses at most N-1 records (N=1, the
default, loses none). Call `sync()` on a timer to bound the delay too.

Append-only and tamper-evident: lines are never rewritten; each record carries the sha256 of the
previous record's line ("prev"), so deleting or editing a line breaks the chain
(`verify_audit_chain`). Rotate-safe: if logrotate moves or deletes the file, the next record goes
to a new file at the same path, and its "prev" links back to the last line of the rotated one.

Size-bounded: with `max_bytes`, a record that would take the file past it first moves the file to
`audit.jsonl.N` (fednode.node.rotation: numbered in order, kept, never renamed again); the chain
runs on across the files (`verify_audit_files` checks all of them, oldest first).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fednode.node.envelope import reason_name
from fednode.node.rotation import all_files, rotate

SCHEMA_VERSION = 1
MAX_DETAIL_CHARS = 1000
_TAIL_BYTES = 64 * 1024


def _json_number(value: float | None) -> float | str | None:
    """JSON has no NaN/Infinity; robust scores can be infinite, so those become strings."""
    if value is None:
        return None
    value = float(value)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


class AuditLog:
    """Append-only JSON-lines writer; thread-safe, one instance per file per process."""

    def __init__(self, path: Path, *, fsync_every: int = 1, max_bytes: int | None = None) -> None:
        if fsync_every < 1:
            raise ValueError("fsync_every must be >= 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.max_bytes = max_bytes
        self.rotations = 0
        self._size = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._unsynced = 0
        self._prev = ""
        self._open()

    # ---------------------------------------------------------------------------------- file
    def _open(self) -> None:
        """Open (or create) the file; `_prev` becomes the hash of its last record, if any."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        info = os.fstat(fd)
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)
        self._size = info.st_size
        if info.st_size:
            with open(self.path, "rb") as handle:
                handle.seek(max(0, info.st_size - _TAIL_BYTES))
                tail = handle.read()
            if not tail.endswith(b"\n"):
                # A record torn by a power cut: end its line so the next record starts clean.
                self._write_all(b"\n")
            for line in reversed(tail.split(b"\n")):
                if _parse_line(line) is not None:
                    self._prev = _line_hash(line)
                    break

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._size += len(data)

    def _rotate_for(self, incoming: int) -> None:
        """Move the file aside when `incoming` more bytes would take it past max_bytes."""
        if self.max_bytes is None or not self._size or self._size + incoming <= self.max_bytes:
            return
        self._close_fd()
        rotate(self.path)
        self.rotations += 1
        self._open()  # an empty file; `_prev` still links to the rotated file's last record

    def _reopen_if_rotated(self) -> None:
        try:
            info = os.stat(self.path)
            rotated = (info.st_dev, info.st_ino) != self._identity
        except FileNotFoundError:
            rotated = True
        if rotated:
            self._close_fd()
            # A fresh file keeps `_prev`: the chain continues from the last line of the rotated one.
            self._open()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._unsynced = 0

    # ------------------------------------------------------------------------------- records
    def record(
        self,
        action: str,
        status: str,
        *,
        actor: dict[str, Any] | None = None,
        event: dict[str, Any] | None = None,
        reason: int | str | None = None,
        detail: str | None = None,
        timestamp_ms: int | None = None,
    ) -> dict[str, Any]:
        """Append one event (joins, leaves and revocations use this too); returns the record."""
        unix_ms = time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
        stamp = datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)
        record: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z",
            "unix_ms": unix_ms,
            "actor": dict(actor or {}),
            "event": {"action": action, **(event or {})},
            "status": status,
            "reason": reason_name(reason) if isinstance(reason, int) else reason,
            "detail": detail[:MAX_DETAIL_CHARS] if detail else None,
        }
        with self._lock:
            if self._fd is None:
                raise ValueError("audit log is closed")
            self._reopen_if_rotated()
            record["prev"] = self._prev
            # ensure_ascii: no raw U+2028 or newline can ever split a record across lines.
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
            self._rotate_for(len(line) + 1)
            self._write_all(line + b"\n")
            self._prev = _line_hash(line)
            self._unsynced += 1
            if self._unsynced >= self.fsync_every:
                os.fsync(self._fd)  # type: ignore[arg-type]
                self._unsynced = 0
        return record

    def record_update(
        self,
        *,
        federation_id: str,
        sender_peer_id: str,
        payload_sha256: bytes | str,
        accepted: bool,
        reason: int | str | None = None,
        round: int | None = None,
        group_id: bytes | None = None,
        base_model_version: int | None = None,
        aggregator_score: float | None = None,
        sender_address: str | None = None,
        detail: str | None = None,
        timestamp_ms: int | None = None,
    ) -> dict[str, Any]:
        """One update decision: accepted, or rejected with a RejectReason (value or short name)."""
        digest = payload_sha256.hex() if isinstance(payload_sha256, (bytes, bytearray)) else payload_sha256
        return self.record(
            "update",
            "accepted" if accepted else "rejected",
            actor={"id": sender_peer_id, "description": "update sender", "ip_address": sender_address},
            event={
                "federation_id": federation_id,
                "round": round,
                "group_id": bytes(group_id).hex() if group_id else None,
                "base_model_version": base_model_version,
                "payload_sha256": digest,
                "aggregator_score": _json_number(aggregator_score),
            },
            reason=reason,
            detail=detail,
            timestamp_ms=timestamp_ms,
        )

    def sync(self) -> None:
        """fsync now (for a periodic timer when fsync_every > 1)."""
        with self._lock:
            if self._fd is not None and self._unsynced:
                os.fsync(self._fd)
                self._unsynced = 0

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_audit_log(path: Path, *, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Records of an audit log file, oldest first. A line torn by a crash is skipped (or raises
    ValueError with strict=True)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = _parse_line(line)
            if record is None:
                if strict:
                    raise ValueError(f"{path}:{number}: not a JSON object")
                continue
            yield record


def audit_files(path: Path) -> list[Path]:
    """The audit log's files in chain order: `audit.jsonl.1`, `.2`, ..., then `audit.jsonl`."""
    return all_files(path)


def read_audit_files(path: Path) -> Iterator[dict[str, Any]]:
    """Records of the audit log and every rotated file of it, oldest first."""
    for file in audit_files(path):
        yield from read_audit_log(file)


def verify_audit_files(path: Path) -> str:
    """Check the chain across the rotated files and the current one; returns the last hash.
    Raises ValueError at the first break (a file removed from the middle breaks it too)."""
    previous: str | None = None
    for file in audit_files(path):
        previous = verify_audit_chain(file, previous)
    return previous or ""


def verify_audit_chain(path: Path, previous: str | None = None) -> str:
    """Check the "prev" links of a file; returns the hash of its last record (pass it as
    `previous` for the file rotated after this one). Raises ValueError at the first break.
    `previous` None accepts whatever the first record links to."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            record = _parse_line(line)
            if record is None:
                continue  # torn by a crash: never part of the chain
            if previous is not None and record.get("prev") != previous:
                raise ValueError(f"{path}:{number}: audit chain broken (a record was removed or edited)")
            previous = _line_hash(line)
    return previous or ""
