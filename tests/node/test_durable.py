"""Durable writes survive kill -9: a reader always finds a complete old or new file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fednode.node.checkpoint import Checkpoint, CheckpointStore
from fednode.node.durable import atomic_write_bytes, remove_stale_temp_files

WRITER = """
import sys, torch
from pathlib import Path
from fednode.node.checkpoint import Checkpoint, CheckpointStore
store = CheckpointStore(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    store.save(Checkpoint(round=i, model_version=i, layout_digest="d", parameters=torch.full((200_000,), float(i))))
    print(i, flush=True)
"""


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two", mode=0o640)
    assert target.read_bytes() == b"two"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["file"]


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pt.abc.tmp").write_bytes(b"partial")
    assert remove_stale_temp_files(tmp_path) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(120)
def test_checkpoint_survives_kill_9_during_writes(tmp_path: Path) -> None:
    for attempt in range(5):
        directory = tmp_path / f"run{attempt}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None
            for _ in range(3 + attempt):
                writer.stdout.readline()
            time.sleep(0.01 * attempt)
            writer.send_signal(signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait()
        loaded = CheckpointStore(directory).load()
        assert loaded is not None
        assert torch.equal(loaded.parameters, torch.full((200_000,), float(loaded.round)))


def test_corrupt_latest_falls_back_to_previous(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for i in (1, 2):
        store.save(Checkpoint(round=i, model_version=i, layout_digest="d", parameters=torch.zeros(3)))
    store.latest_path.write_bytes(b"garbage")
    loaded = store.load()
    assert loaded is not None and loaded.round == 1
