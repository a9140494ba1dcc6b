"""Who owns which part of a round's update in the butterfly exchange. Pure: every member
computes the same assignment from the round's members, the federation id and the round.

Each of the m parts gets r distinct owners (r = f + 1 by default: at least one honest owner per
part when at most f members are Byzantine). The members are ranked by sha256(seed, peer id), a
permutation that changes every round and that no member can choose, and the m x r owner slots
are dealt round-robin over that ranking: every member owns floor(m r / n) or ceil(m r / n)
parts, and the r owners of a part are distinct.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

_DOMAIN = b"fednode/v1/part-owners"


def owners_seed(federation_id: str, round_number: int, group_id: bytes = b"") -> bytes:
    """32-byte seed of a round's owner assignment: sha256 over length-prefixed fields."""
    if not 0 <= round_number < 1 << 64:
        raise ValueError(f"round_number must be a uint64, got {round_number}")
    digest = hashlib.sha256()
    for field in (_DOMAIN, federation_id.encode(), round_number.to_bytes(8, "little"), bytes(group_id)):
        digest.update(len(field).to_bytes(8, "little"))
        digest.update(field)
    return digest.digest()


@dataclass(frozen=True)
class PartOwners:
    """The owners of every part, in part order; within a part, in slot order (first = primary)."""

    owners: tuple[tuple[str, ...], ...]

    @property
    def parts(self) -> int:
        return len(self.owners)

    def parts_of(self, peer_id: str) -> tuple[int, ...]:
        """The parts `peer_id` owns (ascending)."""
        return tuple(j for j, owners in enumerate(self.owners) if peer_id in owners)


def assign_owners(
    peers: Sequence[str],
    parts: int,
    *,
    federation_id: str,
    round_number: int,
    f: int = 0,
    replicas: int | None = None,
    group_id: bytes = b"",
) -> PartOwners:
    """The r owners of each of `parts` parts among the round's members `peers`; r = `replicas`,
    by default f + 1.

    The result does not depend on the order of `peers` (ids must be distinct). Raises ValueError
    for an empty member list, duplicate ids, parts < 1, f < 0, or r outside [1, len(peers)].
    """
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"assign_owners: f must be a non-negative int, got {f!r}")
    if replicas is None:
        replicas = f + 1
    members = list(peers)
    if not members:
        raise ValueError("assign_owners needs at least one member")
    if len(set(members)) != len(members):
        raise ValueError("assign_owners: member ids must be distinct")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"assign_owners: parts must be a positive int, got {parts!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= len(members):
        raise ValueError(
            f"assign_owners: replicas must be in [1, {len(members)}] (the number of members), got {replicas!r}"
        )
    seed = owners_seed(federation_id, round_number, group_id)

    def rank(peer_id: str) -> tuple[bytes, str]:
        encoded = peer_id.encode()
        return hashlib.sha256(seed + len(encoded).to_bytes(8, "little") + encoded).digest(), peer_id

    order = sorted(members, key=rank)
    n = len(order)
    owners = tuple(
        tuple(order[(j * replicas + k) % n] for k in range(replicas)) for j in range(parts)
    )
    return PartOwners(owners)


_LEADER_DOMAIN = b"fednode/v1/roster-leader"


def leader_order(candidates: Sequence[str], *, federation_id: str, round_number: int) -> list[str]:
    """The order in which `candidates` lead round `round_number`'s roster agreement: ranked by
    sha256 over a seed of (federation, round) and the peer id, so no member chooses its rank and
    the order changes every round. Pure; does not depend on the order of `candidates`."""
    seed = owners_seed(federation_id, round_number, _LEADER_DOMAIN)

    def rank(peer_id: str) -> tuple[bytes, str]:
        encoded = peer_id.encode()
        return hashlib.sha256(seed + len(encoded).to_bytes(8, "little") + encoded).digest(), peer_id

    return sorted(set(candidates), key=rank)
