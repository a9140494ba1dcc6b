"""Durable training state: written atomically every round, resumed on start.

A checkpoint holds the flat parameter vector, counters and small named tensors other components
own (compressor residuals, the aggregator's centre, the batch generator). It is written with
`torch.save` and read back with `torch.load(weights_only=True)`, which refuses arbitrary objects,
so even a tampered checkpoint file cannot run code. The previous checkpoint is kept as a fallback
in case the newest one is unreadable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fednode.node.durable import fsync_directory, write_temp_file

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.prev.pt"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    round: int
    model_version: int
    layout_digest: str
    parameters: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "format": FORMAT_VERSION,
                "round": self.round,
                "model_version": self.model_version,
                "layout_digest": self.layout_digest,
                "parameters": self.parameters.detach().cpu(),
                "metrics": dict(self.metrics),
                "extra": self.extra,
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        raw = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
            raise ValueError("not a fednode checkpoint of a supported format")
        return cls(
            round=int(raw["round"]),
            model_version=int(raw["model_version"]),
            layout_digest=str(raw["layout_digest"]),
            parameters=raw["parameters"],
            metrics=dict(raw.get("metrics", {})),
            extra=dict(raw.get("extra", {})),
        )


class CheckpointStore:
    """The checkpoint files in a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / "checkpoints"

    @property
    def latest_path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    def save(self, checkpoint: Checkpoint) -> None:
        self.write(checkpoint.to_bytes())

    def write(self, data: bytes) -> None:
        """Install serialized checkpoint bytes (`Checkpoint.to_bytes()`) as the latest checkpoint,
        atomically, keeping the one before as the previous. Writes must not overlap: callers that
        write from a background thread use one thread, so checkpoints land in order.

        The new bytes are written and fsynced first, then the files are rotated by renames: a
        write that fails (a full disk) raises and leaves the checkpoints as they were."""
        self.directory.mkdir(parents=True, exist_ok=True)
        written = write_temp_file(self.latest_path, data)
        try:
            if self.latest_path.exists():
                # A rename is atomic: at every instant one complete checkpoint exists.
                os.replace(self.latest_path, self.directory / PREVIOUS_FILE)
            os.replace(written, self.latest_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(written)
            raise
        fsync_directory(self.directory)

    def load(self) -> Checkpoint | None:
        """The newest readable checkpoint, or None when there is none."""
        for path in (self.latest_path, self.directory / PREVIOUS_FILE):
            if not path.exists():
                continue
            try:
                return Checkpoint.from_bytes(path.read_bytes())
            except Exception as exc:  # any unreadable file: fall back to the previous one
                log.warning("checkpoint %s is unreadable (%s); trying an older one", path, exc)
        return None
