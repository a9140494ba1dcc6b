"""Bookkeeping of received updates: per round, per sender, with replay and equivocation checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fednode.node.compression import DecodeLimits, PayloadError, build_codec, decode
from fednode.node.envelope import Rejected, RejectReason
from fednode.node.federation.outer import OuterConfig, OuterState, state_from_proto, state_to_proto
from fednode.proto.v1 import model_pb2, tensor_pb2


@dataclass(frozen=True)
class ReceivedUpdate:
    sender: str
    round: int
    header: model_pb2.UpdateHeader
    delta: torch.Tensor  # decoded dense float32 update
    arrived_at: float  # loop.time() when it became usable


@dataclass
class PeerContribution:
    """What one peer contributed so far; shown in summaries and the admin API."""

    accepted: int = 0
    selected: int = 0  # rounds in which the aggregator used the update
    rejected: dict[str, int] = field(default_factory=dict)
    last_score: float | None = None

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def reputation(self) -> float:
        """Share of this peer's updates that were accepted and used; 1.0 before any evidence."""
        total = self.accepted + sum(self.rejected.values())
        return self.selected / total if total else 1.0


class UpdateBook:
    """Updates by round and sender.

    A sender gets one update per round: the same header again is a harmless duplicate (gossip
    delivers via several paths), a different payload for the same round is equivocation or a
    replay and is rejected.
    """

    def __init__(self) -> None:
        self._claims: dict[tuple[str, int], bytes] = {}
        self._updates: dict[int, dict[str, ReceivedUpdate]] = {}

    def claim(self, sender: str, round_number: int, payload_sha256: bytes) -> bool:
        """Register an announced update; False for a duplicate, Rejected for a conflicting one."""
        key = (sender, round_number)
        known = self._claims.get(key)
        if known is None:
            self._claims[key] = bytes(payload_sha256)
            return True
        if known == payload_sha256:
            return False
        raise Rejected(RejectReason.REJECT_REPLAY, f"second, different update from {sender} for round {round_number}")

    def release(self, sender: str, round_number: int) -> None:
        """Forget a claim whose payload could not be obtained, so a re-announcement can retry."""
        self._claims.pop((sender, round_number), None)

    def add(self, update: ReceivedUpdate) -> None:
        self._updates.setdefault(update.round, {})[update.sender] = update

    def for_round(self, round_number: int) -> dict[str, ReceivedUpdate]:
        return self._updates.get(round_number, {})

    def senders(self, round_number: int) -> set[str]:
        return set(self._updates.get(round_number, {}))

    def prune(self, older_than: int) -> None:
        """Drop rounds before `older_than` (their updates can no longer be used)."""
        for number in [r for r in self._updates if r < older_than]:
            del self._updates[number]
        for key in [k for k in self._claims if k[1] < older_than - 8]:
            del self._claims[key]


_LOSSLESS = build_codec("none")


def snapshot_payload(parameters: torch.Tensor) -> bytes:
    """A model snapshot as a lossless float32 TensorPayload (what late joiners fetch)."""
    flat = parameters.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    return _LOSSLESS.encode(flat).payload.SerializeToString(deterministic=True)



def model_state_payload(parameters: torch.Tensor, outer: OuterConfig, state: OuterState | None) -> bytes:
    """What state sync serves and `model export --raw` writes: the snapshot TensorPayload, or,
    when the outer optimizer keeps state, a ModelState holding the model and that state under
    one sha256 (so the members whose offers make a snapshot adoptable vouch for both)."""
    if not outer.stateful:
        return snapshot_payload(parameters)
    assert state is not None
    flat = parameters.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    message = model_pb2.ModelState(parameters=_LOSSLESS.encode(flat).payload, outer=state_to_proto(outer, state))
    return message.SerializeToString(deterministic=True)


def read_model_state(
    data: bytes | bytearray, outer: OuterConfig, *, limits: DecodeLimits, numel: int
) -> tuple[torch.Tensor, OuterState | None]:
    """(flat float32 parameters, outer state or None) from `model_state_payload` bytes. Raises
    PayloadError (codec, sizes, non-finite values), OuterStateError, or protobuf's DecodeError."""
    state: OuterState | None = None
    if outer.stateful:
        message = model_pb2.ModelState.FromString(data)  # type: ignore[arg-type]  # parses any buffer
        payload = message.parameters
        state = state_from_proto(outer, message.outer, numel)
    else:
        payload = tensor_pb2.TensorPayload.FromString(data)  # type: ignore[arg-type]  # parses any buffer
    if payload.codec != tensor_pb2.CODEC_NONE:
        raise PayloadError("bad_codec_params", "snapshots must be lossless")
    return decode(payload, limits=limits, expected_numel=numel).reshape(-1), state
