"""Shared fixtures: real daemon processes that are always cleaned up.

Each daemon gets its own state dir under tmp_path, runs in its own process group, and is killed
(with its whole group) in teardown even when the test fails, so no process outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FEDNODE = [sys.executable, "-m", "fednode.cli.app"]
# Daemons listen on any free port of 127.0.0.1 unless a test says otherwise (--set mesh.listen
# overrides this variable): the default port is fixed, and other test runs share the machine.
ANY_PORT = {"FEDNODE_MESH_LISTEN": '["/ip4/127.0.0.1/tcp/0"]'}


@dataclass
class DaemonProcess:
    state_dir: Path
    process: subprocess.Popen[str]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if needle in text:
                return text
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}) before logging {needle!r}:\n{text}")
            time.sleep(0.1)
        raise AssertionError(f"daemon did not log {needle!r} within {timeout} s:\n{self.log()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def children(self) -> list[int]:
        return child_pids(self.process.pid)

    def group_members(self) -> list[int]:
        """Live processes of the daemon's process group (the daemon and anything it spawned)."""
        return processes_in_group(self.process.pid)

    def kill_group(self) -> None:
        # Always signal the group: the daemon may be gone while something it started lingers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def child_pids(pid: int) -> list[int]:
    """Direct children of a process, from /proc (no psutil needed)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            children += [int(x) for x in (task / "children").read_text().split()]
    return children


def processes_in_group(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    """Factory: start_daemon(*args, name=..., env=...) -> DaemonProcess running `fednode start`."""
    started: list[DaemonProcess] = []

    def start(*args: str, name: str = "node", env: dict[str, str] | None = None, command: str = "start") -> DaemonProcess:
        state_dir = tmp_path / name
        log_path = tmp_path / f"{name}-{len(started)}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
        full_env.update(ANY_PORT)  # never the fixed default port: tests run side by side
        full_env.update(env or {})
        argv = [*FEDNODE, command, "--state-dir", str(state_dir), *args]
        with open(log_path, "a") as log_file:
            process = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, text=True, start_new_session=True
            )
        daemon = DaemonProcess(state_dir, process, log_path, argv)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.kill_group()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
    full_env.update(ANY_PORT)
    full_env.update(env or {})
    return subprocess.run([*FEDNODE, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def cli():
    """run_cli(*args, env=...) -> CompletedProcess of the real `fednode` command."""
    return run_cli


def wait_for_multiaddr(daemon: DaemonProcess, timeout: float = 120.0) -> str:
    """The first multiaddr a federated daemon logs when it starts listening."""
    import json as _json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in daemon.log().splitlines():
            if line.startswith("{") and '"listening"' in line:
                return _json.loads(line)["multiaddrs"][0]
        if daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited ({daemon.process.returncode}):\n{daemon.log()}")
        time.sleep(0.2)
    raise AssertionError(f"daemon did not start listening:\n{daemon.log()}")


@pytest.fixture
def start_federation(start_daemon):
    """Factory: start_federation(n, *args, federation="f1") -> list of DaemonProcess (node 0 = bootstrap)."""

    def start(n: int, *args: str, federation: str = "test-fed", per_node: dict[int, list[str]] | None = None):
        common = [
            "--log-format", "json",
            "--set", f'federation.id="{federation}"',
            "--set", 'mesh.listen=["/ip4/127.0.0.1/tcp/0"]',
            *args,
        ]
        extra = per_node or {}
        first = start_daemon("--shard", f"0/{n}", *common, *extra.get(0, []), "--set", "mesh.relay_hop=true", name="node-0")
        address = wait_for_multiaddr(first)
        nodes = [first]
        for index in range(1, n):
            nodes.append(start_daemon(
                "--shard", f"{index}/{n}", *common, *extra.get(index, []),
                "--set", f'mesh.bootstrap=["{address}"]', name=f"node-{index}",
            ))
        return nodes

    return start


@pytest.fixture
def multiaddr_of():
    return wait_for_multiaddr
