"""Pubsub senders' signed peer records are fully checked once, then reused while identical."""

from __future__ import annotations

import libp2p.pubsub.gossipsub as gossipsub_module
import libp2p.pubsub.pubsub as pubsub_module
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.utils import maybe_consume_signed_record

from fednode.node.mesh.libp2p import peer_records
from fednode.node.mesh.libp2p.peer_records import VerifiedRecordCache


def _rpc_with_record(record: bytes) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    rpc.senderRecord = record
    return rpc


def test_an_identical_record_is_checked_once_and_bad_ones_always_fail() -> None:
    sender, receiver, other = (new_host(key_pair=create_new_key_pair()) for _ in range(3))
    record, _ = env_to_send_in_RPC(sender)  # the real signed peer record py-libp2p attaches
    cache = VerifiedRecordCache(maybe_consume_signed_record)

    assert cache(_rpc_with_record(record), receiver, sender.get_id())
    assert cache(_rpc_with_record(record), receiver, sender.get_id())
    assert cache.full_checks == 1

    tampered = bytearray(record)
    tampered[-5] ^= 1
    for _ in range(2):  # failures are not remembered: each is checked and refused
        assert not cache(_rpc_with_record(bytes(tampered)), receiver, sender.get_id())
    assert cache.full_checks == 3
    # The same good record claimed by another sender fails the library's peer-id rule.
    assert not cache(_rpc_with_record(record), receiver, other.get_id())
    # Another host has its own peerstore: it runs the full check (and stores the record) itself.
    assert cache(_rpc_with_record(record), other, sender.get_id())
    assert cache.full_checks == 5
    assert cache(rpc_pb2.RPC(), receiver, sender.get_id())  # no record attached: nothing to check
    assert cache.full_checks == 5


def test_records_are_checked_again_after_the_refresh_interval() -> None:
    sender, receiver = (new_host(key_pair=create_new_key_pair()) for _ in range(2))
    record, _ = env_to_send_in_RPC(sender)
    cache = VerifiedRecordCache(maybe_consume_signed_record, refresh_s=0.0)
    for _ in range(3):
        assert cache(_rpc_with_record(record), receiver, sender.get_id())
    assert cache.full_checks == 3


def test_install_routes_both_pubsub_modules_through_one_cache() -> None:
    cache = peer_records.install()
    assert peer_records.install() is cache
    assert pubsub_module.maybe_consume_signed_record is cache
    assert gossipsub_module.maybe_consume_signed_record is cache
