"""Crash-safe file writes.

Everything durable the daemon owns (identity, checkpoints, membership) goes through
`atomic_write_bytes`: write a temp file in the same directory, fsync it, rename it over the target,
then fsync the directory. A reader therefore sees either the old or the new file, never a torn one,
even after kill -9 or a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically; the file gets permission bits `mode`."""
    path = Path(path)
    tmp_name = write_temp_file(path, data, mode=mode)
    try:
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)


def write_temp_file(path: Path, data: bytes, *, mode: int = 0o600) -> Path:
    """Write `data` to a fresh temp file beside `path` and fsync it; the caller renames it into
    place (or removes it). Nothing is left behind when the write fails (e.g. a full disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; chmod before writing so secrets are never world-readable.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return Path(tmp_name)


def fsync_directory(directory: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(directory: Path) -> int:
    """Delete temp files left by writes interrupted by a crash; returns how many were removed."""
    removed = 0
    if not directory.is_dir():
        return 0
    for candidate in directory.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed += 1
    return removed
