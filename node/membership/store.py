"""Durable membership state in the state directory.

Layout (one directory per federation, named by its id):

    <state_dir>/membership/<federation id>/      mode 0700
        descriptor.pb     FederationDescriptor (protobuf), verified against the directory name
        certificate.pb    this node's MemberCertificate
        issuer.key        PEM PKCS#8 federation key (or delegated admin key), mode 0600
        delegation.pb     AdminDelegation, present when issuer.key is an admin key
        invites.json      issued invites: sha256(secret), uses, redemptions; mode 0600
        revocations.pb    RevocationList of every revocation this node knows
        peers.json        recent multiaddrs of each member seen (where a restarted daemon
                          reconnects; mesh.bootstrap in the config is optional for members)
        finished.json     present once this member reached the federation's budget: why, when,
                          at which round and accuracy (a restart then only serves the model)
    <state_dir>/membership/left/<federation id>.<unix ms>/   federations this node left (kept, unused)

Every write is `atomic_write_bytes` (temp file, fsync, rename, fsync dir), so kill -9 leaves each
file old or new, never torn. Every load re-verifies signatures and names the damaged file in a
`MembershipStateError`; nothing is unpickled. One lock serializes writers in this process (the
daemon's state-dir lock keeps other processes out).
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError, Message

from fednode.node.durable import atomic_write_bytes, fsync_directory, remove_stale_temp_files
from fednode.node.envelope import Rejected
from fednode.node.membership.certificates import verify_certificate_chain
from fednode.node.membership.errors import MembershipError, MembershipStateError
from fednode.node.membership.federation import Issuer, verify_delegation, verify_descriptor
from fednode.node.membership.invites import DEFAULT_JOIN_SKEW_MS, InviteRecord, Status, redeem_invite
from fednode.node.membership.revocations import (
    canonical_revocations,
    decode_revocation_list,
    encode_revocation_list,
    revocation_digest,
    verify_revocation,
)
from fednode.node.membership.signing import FAR_FUTURE_MS, is_federation_id, now_ms
from fednode.proto.v1 import membership_pb2

DESCRIPTOR_FILE = "descriptor.pb"
CERTIFICATE_FILE = "certificate.pb"
ISSUER_KEY_FILE = "issuer.key"
DELEGATION_FILE = "delegation.pb"
INVITES_FILE = "invites.json"
REVOCATIONS_FILE = "revocations.pb"
PEERS_FILE = "peers.json"
FINISHED_FILE = "finished.json"
#: peers.json: recent addresses kept per member (a member that moved is found at one of them, or
#: through its DHT address record), and members kept (the most recently seen).
MAX_ADDRESSES_PER_MEMBER = 8
MAX_REMEMBERED_MEMBERS = 512
MAX_PEER_ADDRESSES = 32  # the first peers.json format (a flat list) held at most this many
_PEERS_VERSION = 2
#: Expired invites are kept this long (a late redeemer hears EXPIRED, not UNKNOWN_INVITE), then pruned.
INVITE_RETENTION_MS = 7 * 24 * 3600 * 1000
_INVITES_VERSION = 1


def _peer_of(address: str) -> str:
    return address.rsplit("/p2p/", 1)[1].split("/", 1)[0]


def _usable_peer_id(peer_id: object) -> bool:
    return isinstance(peer_id, str) and 0 < len(peer_id) <= 128 and peer_id.isalnum()


def _usable_address(address: object, peer_id: str) -> bool:
    """A full address of `peer_id` (relayed ones through another peer end with its id too)."""
    return isinstance(address, str) and address.startswith("/") and len(address) <= 512 \
        and address.endswith(f"/p2p/{peer_id}")


@dataclass(frozen=True)
class FederationState:
    """Everything this node keeps about one federation."""

    federation_id: str
    descriptor: membership_pb2.FederationDescriptor | None
    certificate: membership_pb2.MemberCertificate | None
    issuer: Issuer | None
    invites: tuple[InviteRecord, ...]
    revocations: tuple[membership_pb2.Revocation, ...]


class MembershipStore:
    """Membership files under `<state_dir>/membership`."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "membership"
        self._lock = threading.RLock()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for directory in self._federation_dirs():
                remove_stale_temp_files(directory)
        except OSError as exc:
            raise MembershipStateError(f"cannot use membership directory {self.root}: {exc.strerror}") from exc

    # ----------------------------------------------------------------------------------- paths
    def _dir(self, federation_id: str) -> Path:
        if not is_federation_id(federation_id):
            raise MembershipError(f"not a federation id: {federation_id[:80]!r} (64 lower-case hex characters)")
        return self.root / federation_id

    def _federation_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and is_federation_id(p.name))

    def federation_ids(self) -> list[str]:
        """Federations this node belongs to or runs (sorted)."""
        return [p.name for p in self._federation_dirs()]

    def _write(self, federation_id: str, name: str, data: bytes, mode: int) -> None:
        directory = self._dir(federation_id)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(directory / name, data, mode=mode)

    def _read(self, federation_id: str, name: str) -> bytes | None:
        path = self._dir(federation_id) / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MembershipStateError(f"cannot read {path}: {exc.strerror}") from exc

    def _corrupt(self, federation_id: str, name: str, why: str) -> MembershipStateError:
        path = self._dir(federation_id) / name
        return MembershipStateError(
            f"membership file {path} is corrupt ({why}); restore it from a backup, or move "
            f"{path.parent} away to leave the federation (a key file lost this way cannot be recovered)"
        )

    def _parse(self, federation_id: str, name: str, message_type: type[Message]) -> Message | None:
        data = self._read(federation_id, name)
        if data is None:
            return None
        try:
            return message_type.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise self._corrupt(federation_id, name, "does not parse") from exc

    # ------------------------------------------------------------------------------ descriptor
    def save_descriptor(self, descriptor: membership_pb2.FederationDescriptor) -> None:
        try:
            verify_descriptor(descriptor)
        except Rejected as exc:
            raise MembershipError(f"refusing to store an invalid descriptor: {exc}") from exc
        with self._lock:
            self._write(descriptor.federation_id, DESCRIPTOR_FILE, descriptor.SerializeToString(deterministic=True), 0o644)

    def descriptor(self, federation_id: str) -> membership_pb2.FederationDescriptor | None:
        descriptor = self._parse(federation_id, DESCRIPTOR_FILE, membership_pb2.FederationDescriptor)
        if descriptor is None:
            return None
        try:
            verify_descriptor(descriptor, federation_id)  # type: ignore[arg-type]
        except Rejected as exc:
            raise self._corrupt(federation_id, DESCRIPTOR_FILE, exc.detail) from exc
        return descriptor  # type: ignore[return-value]

    # ----------------------------------------------------------------------------- certificate
    def save_certificate(self, certificate: membership_pb2.MemberCertificate) -> None:
        """This node's certificate (chain checked; time is not: an expired one may be renewed later)."""
        try:
            verify_certificate_chain(certificate, certificate.federation_id)
        except Rejected as exc:
            raise MembershipError(f"refusing to store an invalid certificate: {exc}") from exc
        with self._lock:
            self._write(certificate.federation_id, CERTIFICATE_FILE, certificate.SerializeToString(deterministic=True), 0o644)

    def certificate(self, federation_id: str) -> membership_pb2.MemberCertificate | None:
        certificate = self._parse(federation_id, CERTIFICATE_FILE, membership_pb2.MemberCertificate)
        if certificate is None:
            return None
        try:
            verify_certificate_chain(certificate, federation_id)  # type: ignore[arg-type]
        except Rejected as exc:
            raise self._corrupt(federation_id, CERTIFICATE_FILE, exc.detail) from exc
        return certificate  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------- issuer
    def save_issuer(self, issuer: Issuer) -> None:
        """Store the signing key (mode 0600) and its delegation. Write this first when creating a
        federation: without the key nobody can ever be admitted again."""
        with self._lock:
            if issuer.delegation is not None:
                self._write(issuer.federation_id, DELEGATION_FILE,
                            issuer.delegation.SerializeToString(deterministic=True), 0o644)
            else:
                (self._dir(issuer.federation_id) / DELEGATION_FILE).unlink(missing_ok=True)
            self._write(issuer.federation_id, ISSUER_KEY_FILE, issuer.private_pem(), 0o600)

    def issuer(self, federation_id: str) -> Issuer | None:
        """The key this node signs with for the federation, or None if it only is a member."""
        path = self._dir(federation_id) / ISSUER_KEY_FILE
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            return None
        if mode & 0o077:
            raise MembershipStateError(
                f"federation key {path} is accessible by other users (mode {mode:04o}); run: chmod 600 {path}"
            )
        data = self._read(federation_id, ISSUER_KEY_FILE) or b""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise self._corrupt(federation_id, ISSUER_KEY_FILE, "not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise self._corrupt(federation_id, ISSUER_KEY_FILE, "not an Ed25519 key")
        delegation = self._parse(federation_id, DELEGATION_FILE, membership_pb2.AdminDelegation)
        try:
            return Issuer(federation_id, key, delegation)  # type: ignore[arg-type]
        except MembershipError as exc:
            raise self._corrupt(federation_id, ISSUER_KEY_FILE, exc.message) from exc

    # --------------------------------------------------------------------------------- invites
    def invites(self, federation_id: str) -> list[InviteRecord]:
        data = self._read(federation_id, INVITES_FILE)
        if data is None:
            return []
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("version") != _INVITES_VERSION:
                raise ValueError(f"not a version {_INVITES_VERSION} invites document")
            records = [InviteRecord.from_json(item) for item in document["invites"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise self._corrupt(federation_id, INVITES_FILE, str(exc)) from exc
        if any(r.federation_id != federation_id for r in records):
            raise self._corrupt(federation_id, INVITES_FILE, "holds an invite of another federation")
        return records

    def _save_invites(self, federation_id: str, records: list[InviteRecord], now: int) -> None:
        kept = [r for r in records if r.expires_unix_ms + INVITE_RETENTION_MS >= now]
        document = {"version": _INVITES_VERSION, "invites": [r.to_json() for r in kept]}
        self._write(federation_id, INVITES_FILE, json.dumps(document, indent=1).encode() + b"\n", 0o600)

    def add_invite(self, record: InviteRecord, *, now_unix_ms: int | None = None) -> None:
        """Remember an issued invite (call before handing out its token)."""
        with self._lock:
            if self.issuer(record.federation_id) is None:
                raise MembershipError("this node holds no key of that federation and cannot issue invites for it")
            records = [r for r in self.invites(record.federation_id) if r.invite_id != record.invite_id]
            now = now_ms() if now_unix_ms is None else now_unix_ms
            self._save_invites(record.federation_id, [*records, record], now)

    def redeem(
        self,
        request: membership_pb2.JoinRequest,
        *,
        now_unix_ms: int | None = None,
        max_clock_skew_ms: int = DEFAULT_JOIN_SKEW_MS,
        bootstrap_multiaddrs: tuple[str, ...] | list[str] = (),
        signer_public_key: bytes | None = None,
    ) -> membership_pb2.JoinResponse:
        """Answer a JoinRequest (see `redeem_invite`; pass the envelope signer as
        `signer_public_key`), persisting the invite's use before the answer exists (a crash
        after this returns cannot give a single-use invite a second use). Raises
        MembershipStateError if the federation's files are damaged (answer INTERNAL then)."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        with self._lock:
            federation_id = request.federation_id
            issuer = self.issuer(federation_id) if federation_id in self.federation_ids() else None
            descriptor = self.descriptor(federation_id) if issuer is not None else None
            if issuer is None or descriptor is None:
                return membership_pb2.JoinResponse(
                    status=Status.WRONG_FEDERATION,
                    message="this node does not issue certificates for that federation; check the token",
                )
            records = self.invites(federation_id)
            record = next((r for r in records if r.invite_id == bytes(request.invite_id)), None)
            if record is None and self._invite_elsewhere(federation_id, bytes(request.invite_id)):
                return membership_pb2.JoinResponse(
                    status=Status.WRONG_FEDERATION,
                    message="this invite admits to another federation than the request names",
                )
            response, updated = redeem_invite(
                issuer, descriptor, record, request, now_unix_ms=now, max_clock_skew_ms=max_clock_skew_ms,
                bootstrap_multiaddrs=bootstrap_multiaddrs, revocations=list(self.revocations(federation_id)),
                signer_public_key=signer_public_key,
            )
            if updated is not None:
                self._save_invites(federation_id, [updated if r.invite_id == updated.invite_id else r for r in records], now)
            return response

    def _invite_elsewhere(self, federation_id: str, invite_id: bytes) -> bool:
        for other in self.federation_ids():
            if other != federation_id and (self._dir(other) / INVITES_FILE).exists() \
                    and any(r.invite_id == invite_id for r in self.invites(other)):
                return True
        return False

    # ----------------------------------------------------------------------------- revocations
    def revocations(self, federation_id: str) -> list[membership_pb2.Revocation]:
        data = self._read(federation_id, REVOCATIONS_FILE)
        if data is None:
            return []
        try:
            return decode_revocation_list(data, federation_id, max_bytes=1 << 30, now_unix_ms=FAR_FUTURE_MS)
        except Rejected as exc:
            raise self._corrupt(federation_id, REVOCATIONS_FILE, exc.detail) from exc

    def add_revocation(
        self, federation_id: str, revocation: membership_pb2.Revocation, *, now_unix_ms: int | None = None
    ) -> bool:
        """Verify and persist; True if it was new. Raises Rejected for an invalid revocation or
        one of another federation."""
        self._dir(federation_id)
        verify_revocation(revocation, federation_id, now_unix_ms=now_unix_ms)
        with self._lock:
            known = self.revocations(federation_id)
            digest = revocation_digest(revocation)
            if any(revocation_digest(r) == digest for r in known):
                return False
            merged = canonical_revocations([*known, revocation])
            self._write(federation_id, REVOCATIONS_FILE, encode_revocation_list(federation_id, merged), 0o644)
            return True

    # ------------------------------------------------------------------------------ peers
    def remember_members(self, federation_id: str, seen: dict[str, list[str]], *, now_unix_ms: int | None = None) -> bool:
        """Merge where members were just seen ({peer id: addresses, best first}) into peers.json:
        each member keeps its MAX_ADDRESSES_PER_MEMBER most recent addresses (the new ones first),
        members seen lately come first, at most MAX_REMEMBERED_MEMBERS. Returns False when nothing
        changed (no write). Addresses are hints: a restarted daemon dials them, stale ones fail."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        with self._lock:
            if not self._dir(federation_id).is_dir():
                return False
            known = self.member_addresses(federation_id)
            seen_at = self._seen_times(federation_id)
            merged: dict[str, list[str]] = {}
            for peer_id, addresses in seen.items():
                fresh = [a for a in addresses if _usable_address(a, peer_id)]
                if not fresh or not _usable_peer_id(peer_id):
                    continue
                merged[peer_id] = list(dict.fromkeys([*fresh, *known.get(peer_id, [])]))[:MAX_ADDRESSES_PER_MEMBER]
                seen_at[peer_id] = now
            for peer_id, addresses in known.items():
                merged.setdefault(peer_id, addresses)
            ordered = sorted(merged, key=lambda p: -seen_at.get(p, 0))[:MAX_REMEMBERED_MEMBERS]
            if ordered == list(known) and all(merged[p] == known.get(p) for p in ordered):
                return False
            document = {"version": _PEERS_VERSION,
                        "members": [{"peer_id": p, "addresses": merged[p], "seen_unix_ms": seen_at.get(p, 0)}
                                    for p in ordered]}
            self._write(federation_id, PEERS_FILE, json.dumps(document, indent=1).encode(), 0o644)
            return True

    def save_peer_addresses(self, federation_id: str, multiaddrs: list[str]) -> bool:
        """Remember full multiaddrs (`.../p2p/<peer id>`, best first), grouped by member."""
        seen: dict[str, list[str]] = {}
        for address in multiaddrs:
            if isinstance(address, str) and "/p2p/" in address:
                seen.setdefault(_peer_of(address), []).append(address)
        return self.remember_members(federation_id, seen)

    def member_addresses(self, federation_id: str) -> dict[str, list[str]]:
        """{peer id: its recent addresses, newest first}, members seen lately first (empty when
        none). A damaged file is only a lost hint, not an error: it reads as empty and the next
        save replaces it. The first format (one flat list) is read too."""
        document = self._peers_document(federation_id)
        result: dict[str, list[str]] = {}
        if isinstance(document, list):  # version 1: a flat list of multiaddrs, newest first
            for address in document[:MAX_PEER_ADDRESSES]:
                if isinstance(address, str) and "/p2p/" in address:
                    peer = _peer_of(address)
                    if _usable_address(address, peer):
                        result.setdefault(peer, []).append(address)
            return result
        for entry in document.get("members", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or not _usable_peer_id(entry.get("peer_id")):
                continue
            addresses = entry.get("addresses")
            if isinstance(addresses, list):
                usable = [a for a in addresses if _usable_address(a, entry["peer_id"])][:MAX_ADDRESSES_PER_MEMBER]
                if usable:
                    result[entry["peer_id"]] = usable
            if len(result) >= MAX_REMEMBERED_MEMBERS:
                break
        return result

    def peer_addresses(self, federation_id: str) -> list[str]:
        """Every remembered address, members seen lately first (see member_addresses)."""
        return [a for addresses in self.member_addresses(federation_id).values() for a in addresses]

    def _peers_document(self, federation_id: str) -> object:
        data = self._read(federation_id, PEERS_FILE)
        try:
            return json.loads(data) if data else {}
        except ValueError:
            return {}

    def _seen_times(self, federation_id: str) -> dict[str, int]:
        document = self._peers_document(federation_id)
        if not isinstance(document, dict):
            return {}
        return {e["peer_id"]: int(e.get("seen_unix_ms") or 0) for e in document.get("members", [])
                if isinstance(e, dict) and _usable_peer_id(e.get("peer_id")) and isinstance(e.get("seen_unix_ms", 0), int)}

    # ------------------------------------------------------------------------------ budget
    def save_finished(self, federation_id: str, record: dict[str, object]) -> None:
        """Remember that this member reached the federation's budget (reason, round, accuracy)."""
        with self._lock:
            self._write(federation_id, FINISHED_FILE, json.dumps(record, sort_keys=True).encode() + b"\n", 0o644)

    def finished(self, federation_id: str) -> dict[str, object] | None:
        """What save_finished stored, or None. A damaged file names itself (MembershipStateError)."""
        data = self._read(federation_id, FINISHED_FILE)
        if data is None:
            return None
        try:
            record = json.loads(data)
            if not isinstance(record, dict) or not isinstance(record.get("reason"), str):
                raise ValueError("not a finished record")
        except ValueError as exc:
            raise self._corrupt(federation_id, FINISHED_FILE, str(exc)) from exc
        return record

    # ------------------------------------------------------------------------------ federation
    def save_membership(
        self,
        descriptor: membership_pb2.FederationDescriptor,
        certificate: membership_pb2.MemberCertificate | None = None,
        revocations: list[membership_pb2.Revocation] | tuple[membership_pb2.Revocation, ...] = (),
        *,
        issuer: Issuer | None = None,
    ) -> None:
        """Store a federation just created (with `issuer`) or joined (with the JoinResponse's
        certificate and revocations). The key is written first."""
        if certificate is not None and certificate.federation_id != descriptor.federation_id:
            raise MembershipError("certificate and descriptor name different federations")
        if issuer is not None and issuer.federation_id != descriptor.federation_id:
            raise MembershipError("issuer key and descriptor name different federations")
        with self._lock:
            if issuer is not None:
                self.save_issuer(issuer)
            self.save_descriptor(descriptor)
            if certificate is not None:
                self.save_certificate(certificate)
            for revocation in revocations:
                self.add_revocation(descriptor.federation_id, revocation, now_unix_ms=FAR_FUTURE_MS)

    def load(self, federation_id: str) -> FederationState:
        """Everything about one federation, every file verified; raises MembershipStateError."""
        with self._lock:
            if not self._dir(federation_id).is_dir():
                raise MembershipError(f"this node is not in federation {federation_id}")
            issuer = self.issuer(federation_id)
            if issuer is not None and issuer.delegation is not None:
                try:
                    verify_delegation(issuer.delegation, federation_id)
                except Rejected as exc:
                    raise self._corrupt(federation_id, DELEGATION_FILE, exc.detail) from exc
            return FederationState(
                federation_id=federation_id,
                descriptor=self.descriptor(federation_id),
                certificate=self.certificate(federation_id),
                issuer=issuer,
                invites=tuple(self.invites(federation_id)),
                revocations=tuple(self.revocations(federation_id)),
            )

    def load_all(self) -> dict[str, FederationState]:
        """Every federation (what the daemon reads at start)."""
        return {federation_id: self.load(federation_id) for federation_id in self.federation_ids()}

    def forget(self, federation_id: str, *, now_unix_ms: int | None = None) -> Path:
        """Leave a federation locally: its directory moves to membership/left/ (keys are kept, in
        case the owner leaves by mistake). Returns the new location."""
        with self._lock:
            source = self._dir(federation_id)
            if not source.is_dir():
                raise MembershipError(f"this node is not in federation {federation_id}")
            left = self.root / "left"
            left.mkdir(mode=0o700, exist_ok=True)
            stamp = now_ms() if now_unix_ms is None else now_unix_ms
            target = left / f"{federation_id}.{stamp}"
            suffix = 0
            while target.exists():
                suffix += 1
                target = left / f"{federation_id}.{stamp}.{suffix}"
            os.replace(source, target)
            fsync_directory(left)
            fsync_directory(self.root)
            return target
