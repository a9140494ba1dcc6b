"""Type-checked by tests/test_types.py (not collected by pytest: no test_ prefix).

The daemon is what the admin backend drives: it must offer the two narrow interfaces
`NodeControl` is written against, and nothing in control.py may reach past them.
"""

from __future__ import annotations

from fednode.node.control import NodeLifecycle, NodeView
from fednode.node.daemon import Daemon


def daemon_as_view(daemon: Daemon) -> NodeView:
    return daemon


def daemon_as_lifecycle(daemon: Daemon) -> NodeLifecycle:
    return daemon
