"""Mesh events as they cross the link to the training worker."""

from __future__ import annotations

from fednode.node.mesh.types import GossipMessage, PeerConnected
from fednode.node.worker.remote_mesh import event_from_proto, event_to_proto


def test_gossip_crosses_the_link_intact_and_marked_as_verified_by_the_daemon() -> None:
    sent = GossipMessage("fednode/fed/x", b"\x00signed bytes\xff", "12D3KooWsender", 1234.5, direct=True)
    assert not sent.signature_verified  # the daemon's own mesh delivers it unmarked
    received = event_from_proto(event_to_proto(sent))
    assert isinstance(received, GossipMessage)
    assert (received.topic, received.data, received.from_peer, received.received_at, received.direct) == (
        sent.topic, sent.data, sent.from_peer, sent.received_at, sent.direct)
    # The daemon forwards only what its validator accepted: the worker skips the signature check.
    assert received.signature_verified


def test_other_events_cross_the_link() -> None:
    event = PeerConnected("12D3KooWpeer", "relayed", "/ip4/127.0.0.1/tcp/1")
    assert event_from_proto(event_to_proto(event)) == event
