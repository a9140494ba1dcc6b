"""Read by the type checker, never run (tests/mesh/test_port_types.py): every mesh the federation
runners can be given is a `MeshPort`. A method renamed, removed or retyped in one of them, or a
port member added without an implementation, fails here."""

from __future__ import annotations

from fednode.node.mesh.memory import InMemoryMesh
from fednode.node.mesh.mesh import Mesh
from fednode.node.mesh.port import MeshPort
from fednode.node.worker.remote_mesh import RemoteMesh


def libp2p_mesh(mesh: Mesh) -> MeshPort:
    return mesh


def remote_mesh(mesh: RemoteMesh) -> MeshPort:
    return mesh


def in_memory_mesh(mesh: InMemoryMesh) -> MeshPort:
    return mesh
