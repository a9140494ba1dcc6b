"""The daemon's local admin API (gRPC `fednode.v1.AdminService`, health, reflection)."""

from fednode.node.admin.events import EventBus
from fednode.node.admin.server import SOCKET_NAME, AdminBackend, AdminError, AdminServer, TcpListener

__all__ = ["SOCKET_NAME", "AdminBackend", "AdminError", "AdminServer", "EventBus", "TcpListener"]
