"""Peer identities: the daemon's Ed25519 key as seen by libp2p and by the fast path."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from libp2p.crypto.ed25519 import Ed25519PublicKey as Libp2pEd25519PublicKey
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID


def peer_id_from_public_key(raw_ed25519_public_key: bytes) -> str:
    """The libp2p peer id ("12D3KooW...") of a raw 32-byte Ed25519 public key.

    Pure function, computed by libp2p's own code so it always matches what the host presents;
    the node uses it to map the signer of an envelope to the peer that sent it.
    """
    if len(raw_ed25519_public_key) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(raw_ed25519_public_key)}")
    return ID.from_pubkey(Libp2pEd25519PublicKey.from_bytes(bytes(raw_ed25519_public_key))).to_base58()


class NodeIdentity:
    """The 32-byte Ed25519 seed, as a libp2p key pair and as a `cryptography` signing key."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed has 32 bytes")
        self._signing_key = Ed25519PrivateKey.from_private_bytes(bytes(seed))
        self.public_key: bytes = self._signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id: str = peer_id_from_public_key(self.public_key)
        self._seed = bytes(seed)

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message)

    def libp2p_key_pair(self) -> KeyPair:
        return create_new_key_pair(self._seed)


def verify(raw_public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by the raw public key."""
    try:
        Ed25519PublicKey.from_public_bytes(raw_public_key).verify(signature, message)
    except Exception:
        return False
    return True
