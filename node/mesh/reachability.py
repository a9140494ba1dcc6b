"""What to tell an operator about this node's reachability: a verdict plus what happens next.

Pure functions over plain values (no libp2p), so the wording is tested without a network. The
daemon logs :meth:`~fednode.node.mesh.Mesh.reachability_report` once AutoNAT has a verdict: at
start-up it says whether it is reachable and what it will do about it.
Every message names the evidence (how many peers dialed back) and, when something is missing,
the setting that fixes it; none guesses.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import Reachability


@dataclass(frozen=True)
class ReachabilityFacts:
    """Everything the report needs, gathered by the mesh."""

    reachability: Reachability
    direct_addrs: tuple[str, ...]  # full /ip4/.../tcp/.../p2p/<id> addresses advertised (no circuits)
    relay_hop: bool  # this node relays for others
    bootstrap_configured: bool  # mesh.bootstrap is not empty
    relays: tuple[str, ...] = ()  # peer ids of relays holding a reservation for us
    listen_port: int | None = None  # the TCP port peers would have to reach (for the port-forward hint)
    dcutr: bool = True


def _short(peer_id: str) -> str:
    return f"…{peer_id[-8:]}" if len(peer_id) > 12 else peer_id


def _votes(r: Reachability) -> str:
    asked = r.public_votes + r.private_votes
    if asked == 0:
        return "no dial-back answer yet"
    return f"{r.public_votes} of {asked} peer(s) asked could dial it back"


def describe_reachability(facts: ReachabilityFacts) -> str:
    """One actionable sentence (or two) about reachability; see the module docstring."""
    r = facts.reachability
    circuits = r.relay_addrs
    relays = ", ".join(_short(p) for p in facts.relays) or "a relay"
    punch = "; will try hole punching (DCUtR) with every peer that connects through it" if facts.dcutr else ""
    port = f"TCP port {facts.listen_port}" if facts.listen_port else "the listen port"
    forward_hint = (f"to be dialable directly, forward {port} on the NAT router to this machine and set "
                    f"mesh.announce = [\"/ip4/<public ip>/tcp/<port>\"]")
    if r.status == "public":
        first = facts.direct_addrs[0] if facts.direct_addrs else "its listen address"
        text = f"reachable (public): {_votes(r)}; peers can dial {first} directly"
        if facts.relay_hop:
            text += "; serving as a circuit relay for NATed members"
        return text
    if r.status == "private":
        if circuits:
            return (f"behind NAT (private): {_votes(r)}; reserved a relay slot on {relays}, so every member "
                    f"can reach this node at {circuits[0]}{punch}. Optional: {forward_hint}")
        if facts.bootstrap_configured:
            return (f"behind NAT (private): {_votes(r)} and no relay slot is held (no bootstrap peer "
                    f"granted one): only peers this node dials itself can reach it. Fix: run one bootstrap "
                    f"peer with mesh.relay_hop = true, or {forward_hint}")
        return (f"behind NAT (private): {_votes(r)}, and mesh.bootstrap is empty, so no relay can be "
                f"used. Fix: set mesh.bootstrap to a public peer that has mesh.relay_hop = true, or "
                f"{forward_hint}")
    # unknown
    if not facts.bootstrap_configured and not facts.relay_hop:
        return ("reachability unknown: no peer to ask (mesh.bootstrap is empty); other peers must "
                "bootstrap from this node's address, and it can only be dialed if that address is public")
    reason = ("no directly connected peer has answered a dial-back request yet"
              if r.public_votes + r.private_votes == 0 else f"dial-back answers disagree ({_votes(r)})")
    if circuits:
        return (f"reachability unknown yet ({reason}); meanwhile reserved a relay slot on {relays}, so "
                f"members can reach this node at {circuits[0]}{punch}")
    return f"reachability unknown yet ({reason}); will retry as peers connect"
