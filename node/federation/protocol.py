"""The federation's control protocol: topics, message validation, seeds and snapshot payloads.

Pure functions and one small validator class; no networking. `ControlValidator.check` runs as
the mesh's topic validator for every message (in the networking thread for gossip, on the event
loop for pushes; it must be thread-safe), and `ControlValidator.open` runs the same checks on the
asyncio side and returns the parsed message, reusing the signature check `check` just made on
the same bytes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fednode.node.envelope import OpenedEnvelope, Rejected, RejectReason, open_envelope
from fednode.proto.v1 import control_pb2, model_pb2

#: GossipSub caps messages at 1 MiB and drops larger ones silently; control messages stay far below.
MAX_CONTROL_BYTES = 64 * 1024
#: Update payloads up to this size ride inside the gossiped header (saves a fetch round trip).
MAX_INLINE_PAYLOAD = 32 * 1024
#: Envelopes whose signature `check` verified, kept for the `open` that follows (normally within
#: milliseconds; entries a duplicate-dropping caller never opens age out of this bound).
VERIFIED_HANDOFF_SIZE = 256

# Bodies whose peer-id field must name the envelope's signer.
_SELF_DESCRIBING = {"announcement": "peer_id", "departure": "peer_id", "schedule": "peer_id", "group": "creator_peer_id"}


def topic_for(federation_id: str) -> str:
    return f"/fednode/v1/fed/{federation_id}"


def dht_key_for(federation_id: str) -> bytes:
    """DHT provider key under which a federation's members announce themselves."""
    return b"/fednode/v1/members/" + hashlib.sha256(federation_id.encode()).digest()


def round_seed(federation_id: str, round_number: int, group_id: bytes = b"") -> int:
    """Shared 63-bit seed for a round's randomized aggregation (e.g. GAS's permutation)."""
    digest = hashlib.sha256(b"fednode/v1/aggregation-seed\x00" + federation_id.encode() + b"\x00"
                            + round_number.to_bytes(8, "big") + bytes(group_id)).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ValidControl:
    opened: OpenedEnvelope
    message: control_pb2.ControlMessage
    body: str  # name of the oneof field that is set

    @property
    def sender(self) -> str:
        return self.opened.sender_peer_id


class ControlValidator:
    """Envelope signature, membership, federation, freshness, and signer-consistency checks.

    With a `TrustPolicy` (federations created with `fednode federation create`), every sender
    must present a valid, unrevoked member certificate; only contributors may send updates. An
    open federation (an id named in config only, for local experiments) has no policy.
    """

    def __init__(
        self, federation_id: str, max_clock_skew_s: float, layout_digest: str, policy: Any = None,
        outer_digest: str = "",
    ) -> None:
        self.federation_id = federation_id
        self.max_skew_ms = int(max_clock_skew_s * 1000)
        self.layout_digest = layout_digest
        self.outer_digest = outer_digest  # OuterConfig.digest() of the federation ("" = FedAvg)
        self.policy = policy
        self.on_reject: Any = None  # on_reject(Rejected) from the networking thread; see check()
        self.signature_checks = 0  # envelopes whose Ed25519 signature was verified
        # Every message is validated twice: by the mesh (check) before delivery, then by the node
        # (open); with pushes on, `check` also sees most messages twice (pushed and gossiped).
        # The Ed25519 verification is the expensive part (~0.15 ms each; done twice it was
        # 2.6 % of a W1 daemon's py-spy samples) and its verdict on the same bytes cannot
        # change, so `check` and `open` reuse an envelope `check` verified. Everything else
        # (freshness, membership, revocations) is checked again each time.
        self._verified: OrderedDict[bytes, OpenedEnvelope] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, data: bytes, from_peer: str) -> str | None:
        """Mesh topic validator: None accepts, a RejectReason short name rejects.

        Refused messages never reach the node's event loop, so `on_reject(rejected)` (if set; it
        must be thread-safe) lets the node audit them.
        """
        digest = hashlib.sha256(data).digest()
        with self._lock:
            # With pushes on, the same bytes arrive twice (pushed, then gossiped): verify once.
            opened = self._verified.get(digest)
        try:
            if opened is None:
                opened = self._open_envelope(data)
            self._check(opened)
        except Rejected as rejected:
            if self.on_reject is not None:
                self.on_reject(rejected)
            return rejected.reason_name
        with self._lock:
            self._verified[digest] = opened
            self._verified.move_to_end(digest)
            while len(self._verified) > VERIFIED_HANDOFF_SIZE:
                self._verified.popitem(last=False)
        return None

    def open(self, data: bytes, digest: bytes | None = None, *, signature_verified: bool = False) -> ValidControl:
        """Verify and parse a control message (``digest``: its sha256, if the caller has it).

        ``signature_verified``: the daemon's validator (this class, in the process that runs the
        mesh) checked these exact bytes before handing them to the training worker, so the
        worker skips the Ed25519 verification; the other rules are applied again here."""
        with self._lock:
            opened = self._verified.pop(digest or hashlib.sha256(data).digest(), None)
        if opened is None:
            opened = self._open_envelope(data, check_signature=not signature_verified)
        return self._check(opened)

    def _open_envelope(self, data: bytes, check_signature: bool = True) -> OpenedEnvelope:
        opened = open_envelope(
            data, control_pb2.ControlMessage, max_size=MAX_CONTROL_BYTES, check_signature=check_signature
        )
        if check_signature:
            with self._lock:
                self.signature_checks += 1  # only counts successes; failures raise above
        return opened

    def _check(self, opened: OpenedEnvelope) -> ValidControl:
        try:
            return self._check_opened(opened)
        except Rejected as rejected:
            # Who signed it and what it announced, for the audit log (the signature verified).
            rejected.sender = opened.sender_peer_id  # type: ignore[attr-defined]
            message = opened.message
            if isinstance(message, control_pb2.ControlMessage) and message.WhichOneof("body") == "update":
                rejected.header = message.update  # type: ignore[attr-defined]
            raise

    def _check_opened(self, opened: OpenedEnvelope) -> ValidControl:
        message = opened.message
        assert isinstance(message, control_pb2.ControlMessage)
        if message.federation_id != self.federation_id:
            raise Rejected(RejectReason.REJECT_WRONG_FEDERATION, f"message for federation {message.federation_id!r}")
        if abs(message.sent_unix_ms - now_ms()) > self.max_skew_ms:
            raise Rejected(RejectReason.REJECT_STALE, "sent_unix_ms outside the allowed clock skew")
        body = message.WhichOneof("body")
        if body is None:
            raise Rejected(RejectReason.REJECT_MALFORMED, "control message without a body")
        if self.policy is not None:
            from fednode.node.membership import CONTRIBUTOR

            self.policy.verify(
                self.federation_id, opened.sender_public_key, opened.certificate,
                roles={CONTRIBUTOR} if body in ("update", "schedule", "group", "manifest", "butterfly") else None,
            )
            if body == "revocation":
                from fednode.node.membership import verify_revocation

                try:
                    verify_revocation(message.revocation, self.federation_id)
                except Exception as exc:
                    raise Rejected(RejectReason.REJECT_BAD_SIGNATURE, f"revocation does not verify: {exc}") from exc
        field = _SELF_DESCRIBING.get(body)
        if field is not None and getattr(getattr(message, body), field) != opened.sender_peer_id:
            raise Rejected(RejectReason.REJECT_SENDER_MISMATCH, f"{body} names another peer than its signer")
        if body == "update":
            self._check_update_header(message.update, opened.sender_peer_id)
        return ValidControl(opened, message, body)

    def _check_update_header(self, header: model_pb2.UpdateHeader, signer: str) -> None:
        if header.sender_peer_id != signer:
            raise Rejected(RejectReason.REJECT_SENDER_MISMATCH, "update header names another sender than its signer")
        if header.federation_id != self.federation_id:
            raise Rejected(RejectReason.REJECT_WRONG_FEDERATION, "update for another federation")
        if header.layout_digest != self.layout_digest:
            raise Rejected(RejectReason.REJECT_LAYOUT_MISMATCH, "update for another model layout")
        if header.outer_digest != self.outer_digest:
            # Its model moves by another outer step than ours: its updates start from a model
            # the federation does not hold.
            raise Rejected(RejectReason.REJECT_SETTINGS_MISMATCH,
                           f"update from a member with other outer optimizer settings ({header.outer_digest or 'fedavg'})")
        if len(header.payload_sha256) != 32:
            raise Rejected(RejectReason.REJECT_MALFORMED, "payload_sha256 must have 32 bytes")
        if header.inline_payload:
            if len(header.inline_payload) > MAX_INLINE_PAYLOAD or len(header.inline_payload) != header.payload_size:
                raise Rejected(RejectReason.REJECT_OVERSIZED, "inline payload larger than allowed or than declared")
            if hashlib.sha256(header.inline_payload).digest() != header.payload_sha256:
                raise Rejected(RejectReason.REJECT_HASH_MISMATCH, "inline payload does not match payload_sha256")
