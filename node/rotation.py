"""Size-bounded rotation of append-only JSON-lines files, keeping every rotated file.

`audit.jsonl` and `history.jsonl` grow by a line per update or round for the daemon's whole
life. Past `max_bytes` the file is renamed to `<name>.N` (N = 1, 2, ... in order, the highest is
the newest; nothing is ever renamed twice or deleted) and a new file starts at the same path.
Deleting or archiving old files is the operator's decision (docs/deploy.md). logrotate's
`copytruncate` would race with our O_APPEND writes and lose lines, and its numbering shifts every
file at each rotation, which breaks references to rotated files; hence this small module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fednode.node.durable import fsync_directory


def rotated_files(path: Path) -> list[Path]:
    """The rotated files of `path` (`path.1`, `path.2`, ...), oldest first."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)$")
    numbered = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            match = pattern.match(candidate.name)
            if match:
                numbered.append((int(match.group(1)), candidate))
    return [candidate for _, candidate in sorted(numbered)]


def all_files(path: Path) -> list[Path]:
    """Every file of the log, oldest first: the rotated ones, then `path` itself if it exists."""
    return [*rotated_files(path), *([Path(path)] if Path(path).exists() else [])]


def rotate(path: Path) -> Path:
    """Rename `path` to the next free `path.N` (durably); returns the new name."""
    path = Path(path)
    existing = rotated_files(path)
    number = int(existing[-1].name.rsplit(".", 1)[1]) + 1 if existing else 1
    target = path.with_name(f"{path.name}.{number}")
    os.rename(path, target)  # never replaces: `target` is past the highest existing number
    fsync_directory(path.parent)
    return target


def read_json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of every file of the log, oldest first; torn or foreign lines skipped."""
    for file in all_files(path):
        with open(file, "rb") as handle:
            for line in handle:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        yield record


class JsonLinesLog:
    """Append-only JSON lines with size-bounded rotation; one record per write(), so a killed
    process loses nothing already appended. Thread-safe."""

    def __init__(self, path: Path, *, max_bytes: int, mode: int = 0o644) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.mode = mode
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self.rotations = 0
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        self._size = os.fstat(self._fd).st_size
        if self._size:
            with open(self.path, "rb") as handle:
                handle.seek(self._size - 1)
                if handle.read(1) != b"\n":  # a line torn by a crash: end it
                    self._write(b"\n")

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._size += len(data)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=True, default=str).encode() + b"\n"
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self.path} is closed")
            if self._size and self._size + len(line) > self.max_bytes:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
                rotate(self.path)
                self.rotations += 1
                self._open()
            self._write(line)

    def sync(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
