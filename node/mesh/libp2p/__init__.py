"""Everything that touches py-libp2p. Lives in the networking (trio) thread, never in asyncio.

The host is hardened as ../shared/docs/libp2p-notes.md §4 recommends: TCP only (QUIC is broken in
0.8.1), Noise only (the library also accepts plaintext and SECIO inbound by default, which lets a
peer claim any identity), Yamux only, GossipSub with a 1 s heartbeat, an explicit spam limit and
adaptive gossip off (it stretches the heartbeat to 60 s on a "poor health" small mesh), a Kademlia
DHT in server mode, circuit relay v2, AutoNAT and DCUtR.

One module per protocol concern, composed by :class:`.node.Libp2pNode` (which owns one
collaborator per concern; no mixins):

=================  ============================================================================
``node``           the host and its lifecycle: build, run the services, the bridge's entry points
``context``        state every concern shares (host, services, nursery, lock, our addresses)
``connections``    peer view, connection events, NAT-aware dialing and the negative-cache retry
``relay``          circuit relay v2 client: slots on relays, circuit addresses
``liveness``       pings, AutoNAT votes and the reachability verdict
``gossip``         GossipSub subscriptions, validators (run here), publication
``discovery``      bootstrap peers, the Kademlia DHT (providers, records), maintenance
``streams``        blob transfer, request/response, the fast-path handshake
``wire``           varint frames on streams, closing, connection introspection
``nat``            hardened library services: relay admission, bounded DCUtR, dial-back AutoNAT
``peer_records``   a cache so each sender's signed peer record is verified once
=================  ============================================================================

Only :class:`Libp2pNode` is used outside this package (by :mod:`..mesh`).
"""

from .node import Libp2pNode

__all__ = ["Libp2pNode"]
