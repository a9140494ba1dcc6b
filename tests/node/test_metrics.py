"""NodeMetrics: a private registry, values as set, and the HTTP endpoint scraped for real."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from fednode.node.envelope import RejectReason
from fednode.node.metrics import REJECT_REASONS, NodeMetrics

FED = "cd" * 32


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@dataclass
class FakeMeshStats:  # the shape of fednode.node.mesh.MeshStats that metrics reads
    gossip_bytes_published: int = 0
    gossip_bytes_received: int = 0
    blob_bytes_sent: int = 0
    blob_bytes_received: int = 0
    gossip_rejected: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def metrics():
    node_metrics = NodeMetrics()
    yield node_metrics
    node_metrics.close()


def test_endpoint_on_an_ephemeral_port_serves_the_expected_metrics(metrics) -> None:
    metrics.info.info({"version": "0.1.0", "peer_id": "12D3KooWself"})
    metrics.federation(FED)
    metrics.record_round(FED, 7, model_version=7, accuracy=0.91, loss=0.25, train_loss=0.3,
                         aggregation_seconds=0.2, participants=4)
    metrics.record_update(FED, accepted=True)
    metrics.record_update(FED, accepted=True)
    metrics.record_update(FED, accepted=False, reason=RejectReason.REJECT_BAD_SIGNATURE)
    metrics.record_update(FED, accepted=False, reason="not_member")
    metrics.add_bytes(sent=1000, received=2500, channel="blob")
    metrics.record_transfer(10_000_000, 2.0)
    metrics.set_peers({"direct": 3, "relayed": 1, "hole-punched": 2})
    metrics.set_reachability("private")
    port = metrics.serve("127.0.0.1", 0)
    assert port > 0 and metrics.port == port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = _samples(text)
    assert _value(samples, "fednode_node_info", version="0.1.0", peer_id="12D3KooWself") == 1
    assert _value(samples, "fednode_rounds_total", federation=FED) == 1
    assert _value(samples, "fednode_round", federation=FED) == 7
    assert _value(samples, "fednode_model_version", federation=FED) == 7
    assert _value(samples, "fednode_accuracy", federation=FED) == pytest.approx(0.91)
    assert _value(samples, "fednode_loss", federation=FED, split="eval") == pytest.approx(0.25)
    assert _value(samples, "fednode_loss", federation=FED, split="train") == pytest.approx(0.3)
    assert _value(samples, "fednode_participants", federation=FED) == 4
    assert _value(samples, "fednode_updates_accepted_total", federation=FED) == 2
    assert _value(samples, "fednode_updates_rejected_total", federation=FED, reason="bad_signature") == 1
    assert _value(samples, "fednode_updates_rejected_total", federation=FED, reason="not_member") == 1
    for reason in REJECT_REASONS:  # every reason exists from the start, so rate() works at once
        assert ("fednode_updates_rejected_total", (("federation", FED), ("reason", reason))) in samples
    assert _value(samples, "fednode_aggregation_seconds_count", federation=FED) == 1
    assert _value(samples, "fednode_aggregation_seconds_sum", federation=FED) == pytest.approx(0.2)
    assert _value(samples, "fednode_sent_bytes_total", channel="blob") == 1000
    assert _value(samples, "fednode_received_bytes_total", channel="blob") == 2500
    assert _value(samples, "fednode_transfer_throughput_bytes_per_second_count") == 1
    assert _value(samples, "fednode_transfer_throughput_bytes_per_second_sum") == pytest.approx(5e6)
    assert _value(samples, "fednode_peers") == 6
    assert _value(samples, "fednode_connections", type="direct") == 3
    assert _value(samples, "fednode_connections", type="relayed") == 1
    assert _value(samples, "fednode_connections", type="hole-punched") == 2
    assert _value(samples, "fednode_reachability", fednode_reachability="private") == 1
    assert _value(samples, "fednode_reachability", fednode_reachability="public") == 0
    assert text.encode() == metrics.render() or "fednode_peers 6.0" in metrics.render().decode()


def test_close_releases_the_port_and_is_idempotent(metrics) -> None:
    port = metrics.serve()
    metrics.close()
    metrics.close()
    assert metrics.port is None
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(2)
        probe.connect(("127.0.0.1", port))
    again = metrics.serve(port=0)  # can start again after a stop
    with urllib.request.urlopen(f"http://127.0.0.1:{again}/metrics", timeout=10) as response:
        assert b"fednode_peers" in response.read()
    with pytest.raises(RuntimeError):
        metrics.serve()


def test_registries_are_private(metrics) -> None:
    other = NodeMetrics()
    metrics.set_peers({"direct": 5})
    assert _value(_samples(other.render().decode()), "fednode_peers") == 0
    assert REGISTRY.get_sample_value("fednode_peers") is None  # nothing leaks into the global registry


def test_peer_chosen_reasons_cannot_grow_the_series_count(metrics) -> None:
    for n in range(200):
        metrics.record_update(FED, accepted=False, reason=f"made_up_{n}")
    metrics.record_update(FED, accepted=False, reason="Bad Reason\n{}")
    metrics.record_update(FED, accepted=False, reason=99999)
    reasons = {labels for (name, labels) in _samples(metrics.render().decode())
               if name == "fednode_updates_rejected_total"}
    assert len(reasons) <= len(REJECT_REASONS) + 32 + 1
    assert _value(_samples(metrics.render().decode()), "fednode_updates_rejected_total",
                  federation=FED, reason="other") >= 2


def test_mesh_stats_become_monotonic_counters(metrics) -> None:
    metrics.observe_mesh_stats(FakeMeshStats(100, 200, 3000, 4000, {"bad_signature": 2}))
    metrics.observe_mesh_stats(FakeMeshStats(150, 260, 3000, 4500, {"bad_signature": 5, "oversized": 1}))
    metrics.observe_mesh_stats(FakeMeshStats(10, 0, 0, 0, {}))  # mesh restarted: totals start over
    samples = _samples(metrics.render().decode())
    assert _value(samples, "fednode_sent_bytes_total", channel="gossip") == 160
    assert _value(samples, "fednode_received_bytes_total", channel="gossip") == 260
    assert _value(samples, "fednode_sent_bytes_total", channel="blob") == 3000
    assert _value(samples, "fednode_received_bytes_total", channel="blob") == 4500
    assert _value(samples, "fednode_gossip_rejected_total", reason="bad_signature") == 5
    assert _value(samples, "fednode_gossip_rejected_total", reason="oversized") == 1


def test_forget_federation_removes_its_series(metrics) -> None:
    metrics.record_round(FED, 1, accuracy=0.5, loss=1.0)
    metrics.record_update(FED, accepted=False, reason="made_up")
    metrics.forget_federation(FED)
    assert FED not in metrics.render().decode()
