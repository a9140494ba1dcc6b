"""Training with a federation over the mesh: rounds, update exchange, state sync.

`FederationRunner` wires trainer, compression, mesh, scheduler and aggregator together; the
protocol checks live in `protocol`, the received-update bookkeeping in `updates`.
"""

from fednode.node.federation.runner import FederationRunner, RoundOutcome, build_attack

__all__ = ["FederationRunner", "RoundOutcome", "build_attack"]
