"""fednode.node: the daemon and the components it wires together.

Data flows one way: cli -> admin API -> node -> {mesh, trainer, scheduler, aggregators, compression}.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fednode")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
