"""Training with a federation over the mesh: rounds, update exchange, state sync.

`FederationRunner` wires trainer, compression, mesh, scheduler and aggregator together; the
protocol checks live in `protocol`, the received-update bookkeeping in `updates`.
"""

from typing import Any

__all__ = ["FederationRunner", "RoundOutcome", "build_attacker"]


def __getattr__(name: str) -> Any:
    """The runner needs torch; the daemon imports this package's torch-free modules (protocol,
    revocation_record) without it."""
    if name == "build_attacker":
        from fednode.node.federation import attacker

        return attacker.build_attacker
    if name in __all__:
        from fednode.node.federation import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
