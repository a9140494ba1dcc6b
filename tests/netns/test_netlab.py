"""The emulated internet behaves like the real one in the ways NAT traversal depends on.

Checked with plain sockets (no libp2p), so a failing traversal test can be blamed on the node,
not the lab: port preservation vs random ports, silent drops of unsolicited and private
traffic, TCP simultaneous open through two cone NATs and not through a symmetric one, and a
clean teardown.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from netlab import Host, NatType, NetLab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

PY = sys.executable

ECHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000)); s.listen()
while True:
    c, addr = s.accept(); c.sendall(f"{addr[0]}:{addr[1]}".encode()); c.close()
"""

SEEN_AS = """
import socket, sys
for port in (4001, 4002):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.settimeout(5); s.connect((sys.argv[1], 5000))
    print(port, s.recv(100).decode()); s.close()
"""

CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""

PUNCH = """
import socket, sys, time
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", 4001)); s.settimeout(8)
try:
    s.connect((sys.argv[1], 4001)); s.sendall(b"hi"); print("connected", s.recv(2).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


def seen_as(lab: NetLab, host: Host, server: Host) -> list[tuple[int, str]]:
    out = lab.run(host, [PY, "-c", SEEN_AS, server.ip]).stdout.split()
    return [(int(out[i]), out[i + 1]) for i in range(0, len(out), 2)]


def test_cone_nat_preserves_ports_symmetric_nat_randomises_them(lab: NetLab) -> None:
    server = lab.public_host("server")
    cone = lab.nat_router("cone", NatType.CONE)
    symmetric = lab.nat_router("sym", NatType.SYMMETRIC)
    alice = lab.private_host("alice", cone)
    bob = lab.private_host("bob", symmetric)
    lab.spawn(server, [PY, "-c", ECHO_SERVER])
    time.sleep(0.5)
    assert seen_as(lab, alice, server) == [(4001, f"{cone.wan_ip}:4001"), (4002, f"{cone.wan_ip}:4002")]
    seen = seen_as(lab, bob, server)
    assert all(addr.startswith(f"{symmetric.wan_ip}:") for _, addr in seen)
    assert [addr for _, addr in seen] != [f"{symmetric.wan_ip}:4001", f"{symmetric.wan_ip}:4002"]


def test_unsolicited_and_private_traffic_is_dropped_silently(lab: NetLab) -> None:
    outside = lab.public_host("outside")
    router = lab.nat_router("home", NatType.CONE)
    inside = lab.private_host("inside", router)
    lab.spawn(inside, [PY, "-c", ECHO_SERVER])
    time.sleep(0.5)
    # Dropped, not refused: a dialer waits for its time-out, as on the internet.
    assert lab.run(outside, [PY, "-c", CONNECT, router.wan_ip, "5000"]).stdout.strip() == "TimeoutError"
    assert lab.run(outside, [PY, "-c", CONNECT, inside.ip, "5000"]).stdout.strip() == "TimeoutError"
    assert lab.run(inside, [PY, "-c", CONNECT, outside.ip, "5000"]).stdout.strip() == "ConnectionRefusedError"


@pytest.mark.parametrize(("other", "punches"), [(NatType.CONE, True), (NatType.SYMMETRIC, False)])
def test_tcp_simultaneous_open_through_nats(lab: NetLab, other: NatType, punches: bool) -> None:
    nat_a = lab.nat_router("nata", NatType.CONE)
    nat_b = lab.nat_router("natb", other)
    alice = lab.private_host("alice", nat_a)
    bob = lab.private_host("bob", nat_b)
    start = time.time() + 1.0
    first = lab.spawn(alice, [PY, "-c", PUNCH, nat_b.wan_ip, str(start)])
    result = lab.run(bob, [PY, "-c", PUNCH, nat_a.wan_ip, str(start + 0.05)], timeout=30).stdout.strip()
    first.process.wait(timeout=30)
    assert (result == "connected hi") is punches, result


def test_teardown_removes_namespaces_and_processes() -> None:
    from netlab import netns_unavailable_reason

    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    with NetLab() as lab:
        host = lab.public_host("host")
        sleeper = lab.spawn(host, ["sleep", "300"])
        assert lab.leftovers()
    assert sleeper.process.poll() is not None
    assert not lab.leftovers()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab.prefix not in listed
