"""The node's Ed25519 identity: created once, kept in the state dir, never leaves the machine.

The same key is the libp2p host key (so the peer id is stable across restarts), signs every update
and announcement the node sends, and is the key federation certificates are issued to.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fednode.node.durable import atomic_write_bytes
from fednode.node.errors import IdentityError

IDENTITY_FILE = "identity.key"

# libp2p PublicKey protobuf header for an Ed25519 key: field 1 (KeyType) = 1 (Ed25519),
# field 2 (Data) = 32 bytes. Written out because the derivation is four bytes of framing and the
# identity module must not import the networking stack.
_LIBP2P_ED25519_PUBKEY_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# Keys of <= 42 bytes are embedded in the peer id with the "identity" multihash (code 0x00).
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, len(_LIBP2P_ED25519_PUBKEY_PREFIX) + 32])


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id ("12D3KooW...") of a raw 32-byte Ed25519 public key."""
    return _peer_id(bytes(public_key))  # bytes(): any bytes-like key, and hashable for the cache


@functools.lru_cache(maxsize=4096)  # every received message names its signer's key: few distinct ones
def _peer_id(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    encoded = _LIBP2P_ED25519_PUBKEY_PREFIX + public_key
    return base58.b58encode(_IDENTITY_MULTIHASH_PREFIX + encoded).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes | None:
    """The raw Ed25519 key embedded in an Ed25519 peer id, or None for other kinds of id."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        return None
    prefix = _IDENTITY_MULTIHASH_PREFIX + _LIBP2P_ED25519_PUBKEY_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        return None
    return raw[len(prefix) :]


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey

    @functools.cached_property  # read for every message sealed; the key never changes
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def private_seed(self) -> bytes:
        """The 32-byte seed; handed to the libp2p host so it uses the same key."""
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    @property
    def fingerprint(self) -> str:
        """Short hex digest of the public key, handy for humans comparing keys."""
        return hashlib.sha256(self.public_key).hexdigest()[:16]

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))


def identity_path(state_dir: Path) -> Path:
    return Path(state_dir) / IDENTITY_FILE


def load_identity(path: Path) -> Identity:
    """Load a PEM (PKCS#8) Ed25519 key, refusing files others can read (like ssh does)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except PermissionError as exc:
        raise IdentityError(f"cannot read identity key {path}: permission denied; run fednode as the user that owns it") from exc
    except OSError as exc:
        raise IdentityError(f"cannot read identity key {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise IdentityError(
            f"identity key {path} is accessible by other users (mode {mode:04o}); run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(
            f"identity key {path} is not a PEM Ed25519 private key; restore it from a backup, "
            f"or move it away and run `fednode identity create` (this changes your peer id)"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"identity key {path} is a {type(key).__name__}, fednode needs an Ed25519 key")
    return Identity(key)


def create_identity(path: Path, *, overwrite: bool = False) -> Identity:
    """Generate a new key and write it atomically with mode 0600."""
    if path.exists() and not overwrite:
        raise IdentityError(f"identity key {path} already exists; pass --force to replace it (this changes your peer id)")
    identity = Identity.generate()
    try:
        atomic_write_bytes(path, identity.to_pem(), mode=0o600)
    except OSError as exc:
        raise IdentityError(f"cannot write identity key {path}: {exc.strerror}") from exc
    return identity


def load_or_create_identity(state_dir: Path) -> tuple[Identity, bool]:
    """The node's identity; creates it on first start. Returns (identity, created)."""
    path = identity_path(state_dir)
    if path.exists() or path.is_symlink():
        return load_identity(path), False
    if not os.access(path.parent, os.W_OK):
        raise IdentityError(f"cannot create identity key in {path.parent}: directory is not writable")
    return create_identity(path), True
