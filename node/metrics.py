"""Prometheus metrics of one node, in a registry of its own, and the opt-in HTTP endpoint.

A dedicated `CollectorRegistry` (not prometheus_client's global one) keeps several nodes in one
process (tests, `fednode launch`) from colliding and keeps library metrics out. The endpoint is
prometheus_client's own threaded WSGI server; `serve(port=0)` binds an ephemeral port and returns
it. Metric names are listed in docs/membership.md ("Metrics").

Per-federation series carry a `federation` label (the full id); node-wide ones do not. Label
values that come from peers (reasons) are bounded, so a hostile peer cannot grow the series count.

Like the default registry, the node's registry also carries the process (`process_*`: CPU, memory,
open files), platform (`python_info`) and garbage-collector collectors. The `*_created` series
prometheus_client adds to counters and histograms are switched off (`disable_created_metrics`,
process-wide): they double the series count and no dashboard of ours uses them.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Mapping
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

from fednode.node.envelope import reason_name
from fednode.proto.v1 import envelope_pb2

CONNECTION_TYPES = ("direct", "relayed", "hole-punched")
REACHABILITY_STATES = ("unknown", "public", "private")
#: Every RejectReason short name ("bad_signature", ...), pre-created at 0 so rate() works at once.
REJECT_REASONS = tuple(reason_name(v) for v in envelope_pb2.RejectReason.values() if v)
_MAX_EXTRA_REASONS = 32
_REASON = re.compile(r"^[a-z0-9_]{1,48}$")


class MeshStatsLike(Protocol):
    """The cumulative counters `fednode.node.mesh.MeshStats` has (duck-typed: no mesh import)."""

    gossip_bytes_published: int
    gossip_bytes_received: int
    blob_bytes_sent: int
    blob_bytes_received: int
    gossip_rejected: dict[str, int]


class NodeMetrics:
    """Counters, gauges and histograms of a node; every method is thread-safe."""

    def __init__(self, *, namespace: str = "fednode", registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        ns, reg = namespace, self.registry
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        self.info = Info("node", "Node identity and version (labels version, peer_id, device, task)",
                         namespace=ns, registry=reg)
        self.rounds = Counter("rounds", "Rounds (sync) or groups (fedcompass) aggregated",
                              ["federation"], namespace=ns, registry=reg)
        self.round = Gauge("round", "Last completed round or group number", ["federation"], namespace=ns, registry=reg)
        self.model_version = Gauge("model_version", "Model version this node holds", ["federation"],
                                   namespace=ns, registry=reg)
        self.accuracy = Gauge("accuracy", "Evaluation accuracy of the current model (0..1)", ["federation"],
                              namespace=ns, registry=reg)
        self.loss = Gauge("loss", "Loss of the current model: split=eval (held-out) or train (local)",
                          ["federation", "split"], namespace=ns, registry=reg)
        self.participants = Gauge("participants", "Members seen recently", ["federation"], namespace=ns, registry=reg)
        self.updates_accepted = Counter("updates_accepted", "Updates accepted", ["federation"],
                                        namespace=ns, registry=reg)
        self.updates_rejected = Counter("updates_rejected", "Updates rejected, by RejectReason short name",
                                        ["federation", "reason"], namespace=ns, registry=reg)
        self.aggregation_seconds = Histogram(
            "aggregation_seconds", "Time to aggregate one round or group", ["federation"], namespace=ns, registry=reg,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.bytes_sent = Counter("sent_bytes", "Payload bytes sent, by channel (gossip, blob)", ["channel"],
                                  namespace=ns, registry=reg)
        self.bytes_received = Counter("received_bytes", "Payload bytes received, by channel (gossip, blob)",
                                      ["channel"], namespace=ns, registry=reg)
        self.gossip_rejected = Counter("gossip_rejected", "Gossip messages refused by the validator, by reason",
                                       ["reason"], namespace=ns, registry=reg)
        self.transfer_throughput = Histogram(
            "transfer_throughput_bytes_per_second", "Throughput of each completed blob transfer",
            namespace=ns, registry=reg,
            buckets=(1e4, 1e5, 5e5, 1e6, 5e6, 1e7, 5e7, 1e8, 5e8, 1e9, 5e9),
        )
        self.peers = Gauge("peers", "Connected peers", namespace=ns, registry=reg)
        self.checkpoint_failures = Counter("checkpoint_failures", "Checkpoint writes that failed (full disk, ...)",
                                           namespace=ns, registry=reg)
        self.checkpoint_round = Gauge("checkpoint_round", "Round of the newest checkpoint written (-1: none)",
                                      namespace=ns, registry=reg)
        self.checkpoint_round.set(-1)
        self.training_world_size = Gauge("training_world_size", "Processes that train this member's model "
                                         "(training.world_size)", namespace=ns, registry=reg)
        self.training_world_size.set(1)
        self.training_rank_up = Gauge("training_rank_up", "1 while a rank of the training job runs (heartbeat "
                                      "fresh), else 0; world_size > 1 only", ["rank"], namespace=ns, registry=reg)
        self.training_rank_heartbeat_age = Gauge(
            "training_rank_heartbeat_age_seconds", "Seconds since a rank of the training job last reported "
            "(-1: not yet)", ["rank"], namespace=ns, registry=reg)
        self._checkpoint_failures_seen = 0
        self.connections = Gauge("connections", "Connected peers by best connection type", ["type"],
                                 namespace=ns, registry=reg)
        self.reachability = Enum("reachability", "AutoNAT verdict on this node's reachability",
                                 states=list(REACHABILITY_STATES), namespace=ns, registry=reg)
        for kind in CONNECTION_TYPES:
            self.connections.labels(type=kind).set(0)
        for channel in ("gossip", "blob"):
            self.bytes_sent.labels(channel=channel)
            self.bytes_received.labels(channel=channel)
        self._lock = threading.Lock()
        self._federations: set[str] = set()
        self._extra_reasons: set[str] = set()
        self._mesh_totals: dict[str, int] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def set_identity(self, *, version: str, peer_id: str, **labels: str) -> None:
        """Label `fednode_node_info` (value 1) with who this node is: version, peer_id and any
        other strings given (device, task, display_name)."""
        self.info.info({"version": version, "peer_id": peer_id, **{k: str(v) for k, v in labels.items()}})

    def restore(self, federation_id: str, *, round_number: int, model_version: int,
                accuracy: float | None = None, loss: float | None = None) -> None:
        """Set the gauges from a checkpoint at start, so a restarted node does not show empty
        round, model version, accuracy and loss panels until its next round. Counters stay at
        zero: they count what this process did (Prometheus' rate() handles the reset)."""
        self.federation(federation_id)
        self.round.labels(federation=federation_id).set(round_number)
        self.model_version.labels(federation=federation_id).set(model_version)
        if accuracy is not None and accuracy == accuracy:  # not NaN
            self.accuracy.labels(federation=federation_id).set(accuracy)
        if loss is not None and loss == loss:
            self.loss.labels(federation=federation_id, split="eval").set(loss)

    # ------------------------------------------------------------------------------ federation
    def federation(self, federation_id: str) -> None:
        """Create a federation's series at zero (called on join/create; other calls imply it)."""
        with self._lock:
            if federation_id in self._federations:
                return
            self._federations.add(federation_id)
        self.rounds.labels(federation=federation_id)
        self.updates_accepted.labels(federation=federation_id)
        for reason in REJECT_REASONS:
            self.updates_rejected.labels(federation=federation_id, reason=reason)

    def record_checkpoint(self, failures_total: int, written_round: int) -> None:
        """The training worker's checkpoint writes so far (a running total: only the increase
        is counted)."""
        with self._lock:
            new = failures_total - self._checkpoint_failures_seen
            self._checkpoint_failures_seen = max(self._checkpoint_failures_seen, failures_total)
        if new > 0:
            self.checkpoint_failures.inc(new)
        self.checkpoint_round.set(written_round)

    def record_ranks(self, ranks: list[Any]) -> None:
        """The training job's processes (worker_pb2.RankHealth: rank, state, heartbeat_age)."""
        for rank in ranks:
            label = str(rank.rank)
            self.training_rank_up.labels(rank=label).set(1 if rank.state == "running" else 0)
            self.training_rank_heartbeat_age.labels(rank=label).set(rank.heartbeat_age)

    def forget_federation(self, federation_id: str) -> None:
        """Drop a left federation's series (so dashboards stop showing stale gauges)."""
        with self._lock:
            self._federations.discard(federation_id)
            reasons = (*REJECT_REASONS, *self._extra_reasons, "other")
        children: list[tuple[Counter | Gauge | Histogram, tuple[str, ...]]] = [
            (metric, (federation_id,))
            for metric in (self.rounds, self.round, self.model_version, self.accuracy, self.participants,
                           self.updates_accepted, self.aggregation_seconds)
        ]
        children += [(self.loss, (federation_id, split)) for split in ("eval", "train")]
        children += [(self.updates_rejected, (federation_id, reason)) for reason in reasons]
        for metric, labels in children:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    def record_round(
        self,
        federation_id: str,
        round_number: int,
        *,
        model_version: int | None = None,
        accuracy: float | None = None,
        loss: float | None = None,
        train_loss: float | None = None,
        aggregation_seconds: float | None = None,
        participants: int | None = None,
    ) -> None:
        """A round (or group) closed: count it and set what is known about the new model."""
        self.federation(federation_id)
        self.rounds.labels(federation=federation_id).inc()
        self.round.labels(federation=federation_id).set(round_number)
        if model_version is not None:
            self.model_version.labels(federation=federation_id).set(model_version)
        if accuracy is not None:
            self.accuracy.labels(federation=federation_id).set(accuracy)
        if loss is not None:
            self.loss.labels(federation=federation_id, split="eval").set(loss)
        if train_loss is not None:
            self.loss.labels(federation=federation_id, split="train").set(train_loss)
        if aggregation_seconds is not None:
            self.aggregation_seconds.labels(federation=federation_id).observe(aggregation_seconds)
        if participants is not None:
            self.participants.labels(federation=federation_id).set(participants)

    def record_update(self, federation_id: str, *, accepted: bool, reason: int | str | None = None) -> None:
        """One update decision; `reason` is a RejectReason value or short name when rejected."""
        self.federation(federation_id)
        if accepted:
            self.updates_accepted.labels(federation=federation_id).inc()
        else:
            self.updates_rejected.labels(federation=federation_id, reason=self._reason(reason)).inc()

    def _reason(self, reason: int | str | None) -> str:
        if isinstance(reason, int):
            try:
                return reason_name(reason)
            except ValueError:
                return "other"
        if reason in REJECT_REASONS:
            return reason
        if not reason or not _REASON.match(reason):
            return "other"
        with self._lock:
            if reason in self._extra_reasons or len(self._extra_reasons) < _MAX_EXTRA_REASONS:
                self._extra_reasons.add(reason)
                return reason
        return "other"

    # ---------------------------------------------------------------------------------- network
    def add_bytes(self, *, sent: int = 0, received: int = 0, channel: str = "blob") -> None:
        if sent:
            self.bytes_sent.labels(channel=channel).inc(sent)
        if received:
            self.bytes_received.labels(channel=channel).inc(received)

    def record_transfer(self, nbytes: int, seconds: float) -> None:
        """One completed blob transfer (fetch or upload)."""
        if seconds > 0 and nbytes >= 0:
            self.transfer_throughput.observe(nbytes / seconds)

    def set_peers(self, connections: Mapping[str, int]) -> None:
        """Connected peers by connection type ("direct", "relayed", "hole-punched")."""
        for kind in CONNECTION_TYPES:
            self.connections.labels(type=kind).set(connections.get(kind, 0))
        self.peers.set(sum(connections.values()))

    def set_reachability(self, verdict: str) -> None:
        self.reachability.state(verdict if verdict in REACHABILITY_STATES else "unknown")

    def observe_mesh_stats(self, stats: MeshStatsLike) -> None:
        """Feed the mesh's cumulative counters (call periodically); increments by the difference
        since the previous call, so counters stay monotonic across a mesh restart."""
        totals = {
            "sent/gossip": stats.gossip_bytes_published, "received/gossip": stats.gossip_bytes_received,
            "sent/blob": stats.blob_bytes_sent, "received/blob": stats.blob_bytes_received,
            **{f"rejected/{reason}": count for reason, count in stats.gossip_rejected.items()},
        }
        with self._lock:
            deltas = {}
            for key, total in totals.items():
                previous = self._mesh_totals.get(key, 0)
                deltas[key] = total - previous if total >= previous else total
                self._mesh_totals[key] = total
        for key, delta in deltas.items():
            if delta <= 0:
                continue
            kind, _, label = key.partition("/")
            if kind == "sent":
                self.bytes_sent.labels(channel=label).inc(delta)
            elif kind == "received":
                self.bytes_received.labels(channel=label).inc(delta)
            else:
                self.gossip_rejected.labels(reason=self._reason(label)).inc(delta)

    # ---------------------------------------------------------------------------------- output
    def render(self) -> bytes:
        """The text exposition (what a scrape returns); handy for the admin API and tests."""
        return generate_latest(self.registry)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start the HTTP endpoint (GET /metrics) in a daemon thread; returns the bound port.
        Loopback by default: exposing metrics is the operator's explicit choice."""
        if self._server is not None:
            raise RuntimeError("metrics endpoint already running")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def close(self, timeout: float = 5.0) -> None:
        """Stop the endpoint and release its port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout)

