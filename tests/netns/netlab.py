"""A small emulated internet built from Linux network namespaces, for NAT traversal tests.

Plain Python driving ``ip`` and ``iptables``; no test framework needed, so benchmarks and manual
experiments can use it too::

    with NetLab() as lab:
        relay = lab.public_host("relay")
        home = lab.nat_router("home", NatType.CONE)
        alice = lab.private_host("alice", home)
        proc = lab.spawn(alice, ["python", "-m", "http.server"], log_path=Path("alice.log"))

Layout
------
* **internet**: one namespace holding a bridge ``br0``. Public addresses come from
  198.18.0.0/24 (RFC 2544 benchmark range: never routed on a real network). Its own address
  198.18.0.254 is every public host's default gateway; it does not forward, and private ranges
  are blackholed there, so a packet to another site's private address is dropped silently, as
  on the real internet (a dialer waits for its time-out instead of getting a quick refusal).
* **public host**: a namespace with ``eth0`` on the bridge and a public address: reachable by
  everyone.
* **NAT router**: a namespace with ``wan`` (public address) and a LAN bridge ``lan``
  (10.<n>.0.1/24); forwarding on, ``iptables`` MASQUERADE on ``wan``. Unsolicited inbound
  packets are *dropped* (FORWARD and INPUT), never answered with a RST, like home routers do;
  a RST would abort the peer's half of a TCP simultaneous open.

  - :attr:`NatType.CONE`: endpoint-independent mapping with port preservation (Linux
    MASQUERADE keeps the source port whenever the resulting tuple is free) and
    address-and-port-dependent filtering: a "port-restricted cone" NAT. Two peers behind such
    NATs can hole-punch TCP: each dials the other's predicted public address from its listen
    port, each NAT sees an outbound SYN first, and the crossing SYNs match those entries.
  - :attr:`NatType.SYMMETRIC`: ``MASQUERADE --random-fully``: every new connection gets a
    random public port, so the port a peer learns (or predicts) is never the one the next
    connection uses; TCP hole punching fails and a relay has to carry the traffic.
* **private host**: a namespace with ``eth0`` on a router's LAN, a 10.<n>.0.<k> address and
  the router as default gateway.

Isolation and clean-up
----------------------
Every namespace name starts with ``fnl<pid>x<random>-``: parallel runs (pytest-xdist, other
engineers on the same machine) never collide, and :func:`remove_stale_labs` can remove what a
killed run left behind (only labs whose creating process is gone). Interfaces are created
directly inside the namespaces (``ip -n NS link add ... peer ... netns NS2``), so nothing is
added to the root namespace. :meth:`NetLab.close` kills every process the lab spawned (whole
process groups, then anything still inside a lab namespace) and deletes the namespaces, which
also removes their interfaces and iptables rules; it runs from ``__exit__`` even when the body
raised, and is idempotent.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PUBLIC_NET = "198.18.0"  # /24: the emulated internet
PUBLIC_GATEWAY = f"{PUBLIC_NET}.254"
_PREFIX_RE = re.compile(r"^fnl(\d+)x[0-9a-f]+-")
_CMD_TIMEOUT_S = 20.0


class NetLabError(RuntimeError):
    """A command building or tearing down the lab failed."""


class NatType(enum.Enum):
    """How a NAT router maps and filters connections; see the module docstring."""

    CONE = "endpoint-independent"  # port-preserving, port-restricted filtering: hole-punchable
    SYMMETRIC = "symmetric"  # random source port per connection: not hole-punchable


@dataclass
class Host:
    """A machine: one namespace with one address."""

    name: str
    ns: str
    ip: str  # its own address (public for public hosts, 10.x for private hosts)
    router: NatRouter | None = None  # the NAT it sits behind, if any

    @property
    def public_ip(self) -> str:
        """The address the rest of the internet sees (the router's WAN address behind a NAT)."""
        return self.router.wan_ip if self.router is not None else self.ip


@dataclass
class NatRouter:
    name: str
    ns: str
    wan_ip: str
    lan_prefix: str  # "10.<n>.0"
    nat_type: NatType
    hosts: list[Host] = field(default_factory=list)


@dataclass
class LabProcess:
    """A process started inside a namespace; killed with its process group by the lab."""

    host: Host
    argv: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def netns_unavailable_reason() -> str | None:
    """Why this machine cannot run a lab (None when it can): checked before any test builds one.

    Needs CAP_NET_ADMIN (root has it), ``ip`` with netns support, and ``iptables`` with the nat
    table inside a namespace. Probes with a throwaway namespace, removed again.
    """
    if not _has_cap_net_admin():
        return "needs root or CAP_NET_ADMIN to create network namespaces"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (install iproute2 and iptables, e.g. scripts/setup.sh as root)"
    probe = f"fnl{os.getpid()}x{secrets.token_hex(3)}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except NetLabError as exc:
        return f"`ip netns add` failed: {exc}"
    try:
        _run(["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "lo",
              "-j", "MASQUERADE", "--random-fully"])
    except NetLabError as exc:
        return f"iptables NAT unusable inside a namespace: {exc}"
    finally:
        with contextlib.suppress(NetLabError):
            _run(["ip", "netns", "del", probe])
    return None


def _has_cap_net_admin() -> bool:
    if os.geteuid() == 0:
        return True
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 12))  # CAP_NET_ADMIN = 12
    return False


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetLabError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetLabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _list_namespaces() -> list[str]:
    done = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _ns_pids(ns: str) -> list[int]:
    done = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _destroy_namespace(ns: str) -> None:
    """Kill what still runs inside ``ns`` (bounded), then delete it."""
    for _ in range(20):
        pids = _ns_pids(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    _run(["ip", "netns", "del", ns], check=False)


def remove_stale_labs() -> list[str]:
    """Delete lab namespaces whose creating process no longer exists; return their names.

    A lab killed with SIGKILL cannot clean up after itself. Its namespaces carry the creator's
    pid, so a later run can tell them from a concurrent run's (whose creator is alive).
    """
    removed = []
    for ns in _list_namespaces():
        match = _PREFIX_RE.match(ns)
        if match and not _pid_alive(int(match.group(1))):
            _destroy_namespace(ns)
            removed.append(ns)
    return removed


class NetLab:
    """An emulated internet; see the module docstring. Use as a context manager."""

    def __init__(self) -> None:
        self.prefix = f"fnl{os.getpid()}x{secrets.token_hex(3)}-"
        self.namespaces: list[str] = []
        self.processes: list[LabProcess] = []
        self.hosts: dict[str, Host] = {}
        self.routers: dict[str, NatRouter] = {}
        self._next_public = 1
        self._next_lan = 1
        self._closed = False
        self.internet = self.prefix + "inet"
        try:
            self._add_namespace("inet")
            self._sh(self.internet, "ip link add br0 type bridge")
            self._sh(self.internet, f"ip addr add {PUBLIC_GATEWAY}/24 dev br0")
            self._sh(self.internet, "ip link set br0 up")
            # Private destinations vanish (no forwarding; blackhole routes), as on the internet.
            self._sh(self.internet, "sysctl -q -w net.ipv4.ip_forward=0")
            for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
                self._sh(self.internet, f"ip route add blackhole {private}")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ building

    def _add_namespace(self, name: str) -> str:
        if self._closed:
            raise NetLabError("the lab is closed")
        ns = self.prefix + name
        _run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self._sh(ns, "ip link set lo up")
        # IPv6 off: every address in the lab is IPv4, and duplicate-address detection or router
        # solicitations would only add noise (and :: listeners that cannot be reached).
        self._sh(ns, "sysctl -q -w net.ipv6.conf.all.disable_ipv6=1", check=False)
        self._sh(ns, "sysctl -q -w net.ipv6.conf.default.disable_ipv6=1", check=False)
        return ns

    def _sh(self, ns: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", ns, *command.split()], check=check)

    def _plug_into_internet(self, ns: str, ifname: str) -> str:
        """A veth from the internet bridge into ``ns`` (named ``ifname`` there); its public IP."""
        if self._next_public > 250:
            raise NetLabError("the lab's public /24 is full")
        ip = f"{PUBLIC_NET}.{self._next_public}"
        port = f"p{self._next_public}"
        self._next_public += 1
        _run(["ip", "-n", self.internet, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns])
        self._sh(self.internet, f"ip link set {port} master br0")
        self._sh(self.internet, f"ip link set {port} up")
        self._sh(ns, f"ip addr add {ip}/24 dev {ifname}")
        self._sh(ns, f"ip link set {ifname} up")
        return ip

    def public_host(self, name: str) -> Host:
        """A directly reachable machine on the internet."""
        self._check_name(name)
        ns = self._add_namespace(name)
        ip = self._plug_into_internet(ns, "eth0")
        self._sh(ns, f"ip route add default via {PUBLIC_GATEWAY}")
        host = Host(name, ns, ip)
        self.hosts[name] = host
        return host

    def nat_router(self, name: str, nat_type: NatType) -> NatRouter:
        """A NAT router with a public WAN address and an empty LAN (add hosts with private_host)."""
        self._check_name(name)
        ns = self._add_namespace(name)
        wan_ip = self._plug_into_internet(ns, "wan")
        self._sh(ns, f"ip route add default via {PUBLIC_GATEWAY}")
        lan_prefix = f"10.{self._next_lan}.0"
        self._next_lan += 1
        self._sh(ns, "ip link add lan type bridge")
        self._sh(ns, f"ip addr add {lan_prefix}.1/24 dev lan")
        self._sh(ns, "ip link set lan up")
        self._sh(ns, "sysctl -q -w net.ipv4.ip_forward=1")
        masquerade = "iptables -t nat -A POSTROUTING -o wan -j MASQUERADE"
        if nat_type is NatType.SYMMETRIC:
            masquerade += " --random-fully"
        for rule in (
            masquerade,
            "iptables -A FORWARD -i lan -o wan -j ACCEPT",
            "iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "iptables -A FORWARD -i wan -j DROP",
            "iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "iptables -A INPUT -i wan -j DROP",
        ):
            self._sh(ns, rule)
        router = NatRouter(name, ns, wan_ip, lan_prefix, nat_type)
        self.routers[name] = router
        return router

    def private_host(self, name: str, router: NatRouter) -> Host:
        """A machine on ``router``'s LAN; it reaches the internet only through the NAT."""
        self._check_name(name)
        ns = self._add_namespace(name)
        index = len(router.hosts) + 2
        ip = f"{router.lan_prefix}.{index}"
        port = f"l{index}"
        _run(["ip", "-n", router.ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
        self._sh(router.ns, f"ip link set {port} master lan")
        self._sh(router.ns, f"ip link set {port} up")
        self._sh(ns, f"ip addr add {ip}/24 dev eth0")
        self._sh(ns, "ip link set eth0 up")
        self._sh(ns, f"ip route add default via {router.lan_prefix}.1")
        host = Host(name, ns, ip, router)
        router.hosts.append(host)
        self.hosts[name] = host
        return host

    def _check_name(self, name: str) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,15}", name):
            raise ValueError(f"lab names are 1-16 lowercase letters/digits: {name!r}")
        if name in self.hosts or name in self.routers or name == "inet":
            raise ValueError(f"{name!r} is already used in this lab")

    # ------------------------------------------------------------------ using

    def run(self, host: Host | NatRouter, argv: Sequence[str], timeout: float = 60.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command inside a namespace and wait for it (bounded)."""
        try:
            done = subprocess.run(["ip", "netns", "exec", host.ns, *argv], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise NetLabError(f"{' '.join(argv)} in {host.name}: timed out after {timeout} s") from exc
        if check and done.returncode != 0:
            raise NetLabError(f"{' '.join(argv)} in {host.name}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def spawn(self, host: Host, argv: Sequence[str], log_path: Path | None = None,
              env: dict[str, str] | None = None) -> LabProcess:
        """Start a long-running process inside ``host``'s namespace, in its own process group.

        ``ip netns exec`` execs the command, so the pid is the command's own; the lab kills the
        whole group in close(). Output (stdout and stderr) goes to ``log_path`` when given.
        """
        if self._closed:
            raise NetLabError("the lab is closed")
        out: int | object = subprocess.DEVNULL
        handle = None
        if log_path is not None:
            handle = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
            out = handle
        try:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        finally:
            if handle is not None:
                handle.close()
        lab_process = LabProcess(host, list(argv), process, log_path)
        self.processes.append(lab_process)
        return lab_process

    def conntrack_count(self, router: NatRouter) -> int:
        """Connections the router's conntrack table holds (a cheap sign that traffic crossed it)."""
        done = self.run(router, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], check=False)
        return int(done.stdout.strip() or 0)

    def describe(self) -> str:
        lines = [f"internet {PUBLIC_NET}.0/24 (namespace {self.internet})"]
        for host in self.hosts.values():
            if host.router is None:
                lines.append(f"  public host {host.name}: {host.ip}")
        for router in self.routers.values():
            lines.append(f"  {router.nat_type.value} NAT {router.name}: wan {router.wan_ip}, "
                         f"lan {router.lan_prefix}.0/24")
            for host in router.hosts:
                lines.append(f"    private host {host.name}: {host.ip}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Kill every spawned process, then delete every namespace. Idempotent, never raises."""
        self._closed = True
        for lab_process in reversed(self.processes):
            with contextlib.suppress(Exception):
                lab_process.kill()
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                _destroy_namespace(ns)
        self.namespaces.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this lab that still exist (empty after close())."""
        return [ns for ns in _list_namespaces() if ns.startswith(self.prefix)]

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def netlab() -> Iterator[NetLab]:
    """Build a lab; always torn down, even when the caller (or the lab's own set-up) fails."""
    lab: NetLab | None = None
    try:
        lab = NetLab()
        yield lab
    finally:
        if lab is not None:
            lab.close()
