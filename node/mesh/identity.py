"""Peer identities: the daemon's Ed25519 key as seen by libp2p and by the fast path.

The key handling itself (peer id derivation, signatures) lives in `fednode.node.identity`; this
module only adds the libp2p view of the same key.
"""

from __future__ import annotations

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair

from fednode.node.identity import Identity, peer_id_from_public_key
from fednode.node.identity import verify_signature as verify

__all__ = ["NodeIdentity", "peer_id_from_public_key", "verify"]


class NodeIdentity:
    """The 32-byte Ed25519 seed, as a libp2p key pair and as a signing key."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed has 32 bytes")
        self._identity = Identity.from_seed(bytes(seed))
        self.public_key: bytes = self._identity.public_key
        self.peer_id: str = self._identity.peer_id
        self._seed = bytes(seed)

    def sign(self, message: bytes) -> bytes:
        return self._identity.sign(message)

    def libp2p_key_pair(self) -> KeyPair:
        return create_new_key_pair(self._seed)
