"""fednode.node: the daemon, its training worker, and the components they wire together.

A node is two processes (docs/architecture.md): the daemon (`daemon.py`, no torch) holds identity,
mesh (`mesh/`), admin API (`admin/`, `control.py`), membership (`membership/`) and audit log; the
training worker (`worker/`) holds task, model, trainer, the federation runner (`federation/`,
`scheduler/`), compression and aggregation (`fednode.aggregators`), and uses the daemon's mesh
over the link. Imports point one way: cli -> admin API -> node -> {mesh, membership, federation,
scheduler, compression, aggregators}, with no cycles (tests/test_import_cycles.py).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fednode")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
