"""Real `fednode start` daemons inside a :class:`~netlab.NetLab`, and what their logs say.

Every observation comes from what the daemon already writes: its JSON log lines (events
``listening``, ``peer_connection``, ``reachability``, ``relay_reservation``, ``blob_path``,
``round``, ``stopped``) and its ``summary.json``. Nothing is mocked; the daemons are the product.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import Host, LabProcess, NetLab

from fednode.node.logs import read_json_log
from fednode.node.logs import record_time as ts

FEDNODE = [sys.executable, "-m", "fednode.cli.app"]
LISTEN_PORT = 4001
FEDERATION = "natfed"


@dataclass
class LabDaemon:
    """One daemon in the lab: its host, process, state dir, and parsed JSON log."""

    name: str
    host: Host
    proc: LabProcess
    state_dir: Path
    started_at: float  # time.time() just before launch
    _records: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0

    def records(self) -> list[dict[str, Any]]:
        """Every JSON log record so far (parsed incrementally)."""
        path = self.proc.log_path
        if path is None or not path.exists():
            return self._records
        with open(path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        self._records += read_json_log(chunk[:end].decode(errors="replace"))
        return self._records

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == name]

    def log_tail(self, chars: int = 4000) -> str:
        return self.proc.log()[-chars:]

    @property
    def exited(self) -> bool:
        return self.proc.process.poll() is not None

    def wait_for(self, predicate: Callable[[LabDaemon], Any], timeout: float, what: str) -> Any:
        """Poll ``predicate(self)`` until it returns something truthy (bounded); return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            if self.exited and not predicate(self):
                raise AssertionError(f"{self.name} exited ({self.proc.process.returncode}) before {what}:\n"
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def multiaddrs(self, timeout: float = 60.0) -> list[str]:
        record = self.wait_for(lambda d: next(iter(d.events("listening")), None), timeout, "listening record")
        return list(record["multiaddrs"])

    @property
    def peer_id(self) -> str:
        return self.multiaddrs()[0].rsplit("/p2p/", 1)[1]

    def connection_to(self, other: LabDaemon) -> str:
        """The latest connection kind this daemon logged towards ``other`` ("none" if never)."""
        kinds = [r["connection"] for r in self.events("peer_connection") if r.get("peer") == other.peer_id]
        return kinds[-1] if kinds else "none"

    def final_connection_to(self, other: LabDaemon) -> str:
        """The connection kind towards ``other`` when this daemon closed its last round.

        Not simply the last record: at shutdown connections close one by one, so a
        hole-punched peer may briefly show "relayed" before "none".
        """
        rounds = self.events("round")
        if not rounds:
            return "none"
        end = ts(rounds[-1])
        kinds = [r["connection"] for r in self.events("peer_connection")
                 if r.get("peer") == other.peer_id and ts(r) <= end]
        return kinds[-1] if kinds else "none"

    def blob_path_from(self, other: LabDaemon) -> str:
        """The last path (fast-path, libp2p-direct, libp2p-hole-punched, libp2p-relayed) blobs
        from ``other`` took ("none" if no blob came from it)."""
        paths = [r["path"] for r in self.events("blob_path") if r.get("peer") == other.peer_id]
        return paths[-1] if paths else "none"

    def first_connection_at(self, other: LabDaemon) -> float | None:
        """Seconds from this daemon's launch to its first connection with ``other``."""
        for record in self.events("peer_connection"):
            if record.get("peer") == other.peer_id and record["connection"] != "none":
                return ts(record) - self.started_at
        return None

    def upgraded_at(self, other: LabDaemon) -> float | None:
        """Seconds from launch to the first direct or hole-punched connection with ``other``."""
        for record in self.events("peer_connection"):
            if record.get("peer") == other.peer_id and record["connection"] in ("direct", "hole-punched"):
                return ts(record) - self.started_at
        return None

    def reachability(self) -> str:
        records = self.events("reachability")
        return records[-1]["status"] if records else "unknown"

    def summary(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "summary.json").read_text())


def start_daemon(lab: NetLab, host: Host, workdir: Path, *, shard: str, args: list[str],
                 bootstrap: str | None = None, relay_hop: bool = False) -> LabDaemon:
    """Launch `fednode start` inside ``host`` (listening on 0.0.0.0:4001) with federation settings."""
    state_dir = workdir / host.name
    log_path = workdir / f"{host.name}.log"
    argv = [
        *FEDNODE, "start", "--state-dir", str(state_dir), "--shard", shard, "--log-format", "json",
        "--set", f'federation.id="{FEDERATION}"',
        "--set", f'mesh.listen=["/ip4/0.0.0.0/tcp/{LISTEN_PORT}"]',
        *args,
    ]
    if relay_hop:
        argv += ["--set", "mesh.relay_hop=true"]
    if bootstrap:
        argv += ["--set", f'mesh.bootstrap=["{bootstrap}"]']
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
    started = time.time()
    proc = lab.spawn(host, argv, log_path=log_path, env=env)
    return LabDaemon(host.name, host, proc, state_dir, started)


def public_multiaddr(daemon: LabDaemon) -> str:
    """The daemon's address on its public interface (the one other sites can dial)."""
    for addr in daemon.multiaddrs():
        if f"/ip4/{daemon.host.ip}/" in addr and "/p2p-circuit" not in addr:
            return addr
    raise AssertionError(f"{daemon.name} does not advertise {daemon.host.ip}: {daemon.multiaddrs()}")


#: Small and quick, yet every update is a blob (the default digits MLP, int8: ~85 KB > the
#: 32 KiB inline limit), so payloads really cross the paths under test; every member takes
#: part in every round (min_participants = all), so each path carries every round's updates.
ROUNDS = 10
#: The daemons run until the lab stops them: after ROUNDS rounds *and* once every daemon has its
#: AutoNAT verdict and hole punching had its chance (the tests check both once every daemon has
#: stopped). Tuning the run's length by slowing the steps instead raced those events: a faster
#: machine, or a calibrated step, could end 10 rounds before the verdicts (reachability 'unknown').
PUNCH_WINDOW = 30.0  # seconds after the verdicts for DCUtR to succeed (not every topology can; a
#                      failing attempt took up to 21 s in the lab, docs/nat-traversal.md)
ROUNDS_AFTER = 3  # rounds every member trains once settled, so updates cross the final paths


def federation_args(members: int) -> list[str]:
    return ["--rounds", "1000000", "--set", "training.local_steps=10",
            "--set", f"federation.min_participants={members}"]


def _rounds(daemon: LabDaemon) -> int:
    return max([r["round"] for r in daemon.events("round") + daemon.events("sync")], default=0)


def _settled(everyone: list[LabDaemon], verdicts_at: list[float]) -> bool:
    """Every daemon trained ROUNDS rounds and has its AutoNAT verdict, and a hole punch
    succeeded (or PUNCH_WINDOW passed since the verdicts: not every topology punches)."""
    for daemon in everyone:
        if _rounds(daemon) < ROUNDS or daemon.reachability() == "unknown":
            return False
        if not daemon.events("reachability_report"):
            return False
    if not verdicts_at:
        verdicts_at.append(time.monotonic())
    punched = any(r["success"] for d in everyone for r in d.events("hole_punch"))
    return punched or time.monotonic() - verdicts_at[0] > PUNCH_WINDOW


def run_federation(lab: NetLab, workdir: Path, relay_host: Host, peer_hosts: list[Host],
                   timeout: float = 300.0) -> tuple[LabDaemon, list[LabDaemon]]:
    """A bootstrap+relay daemon on ``relay_host`` and one daemon per peer host; stop them all once
    settled (see ROUNDS) and wait until they exited (bounded by ``timeout``). Returns (relay, peers)."""
    members = 1 + len(peer_hosts)
    args = federation_args(members)
    relay = start_daemon(lab, relay_host, workdir, shard=f"0/{members}", args=args, relay_hop=True)
    bootstrap = public_multiaddr(relay)
    peers = [start_daemon(lab, host, workdir, shard=f"{index}/{members}", args=args, bootstrap=bootstrap)
             for index, host in enumerate(peer_hosts, start=1)]
    deadline = time.monotonic() + timeout
    everyone = [relay, *peers]
    verdicts_at: list[float] = []
    stop_at_round: int | None = None
    stopping = False
    while not all(d.exited for d in everyone):
        for daemon in everyone:
            if daemon.exited and daemon.proc.process.returncode != 0:
                raise AssertionError(f"{daemon.name} exited {daemon.proc.process.returncode}:\n{daemon.log_tail()}")
        if stop_at_round is None and _settled(everyone, verdicts_at):
            stop_at_round = max(_rounds(d) for d in everyone) + ROUNDS_AFTER
        if not stopping and stop_at_round is not None and all(_rounds(d) >= stop_at_round for d in everyone):
            for daemon in everyone:  # SIGTERM: a graceful stop, the summary is still written
                daemon.proc.process.send_signal(signal.SIGTERM)
            stopping = True
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {d.name}:\n{d.log_tail(2500)}" for d in everyone if not d.exited)
            raise AssertionError(f"federation did not finish {ROUNDS} rounds within {timeout:.0f} s:\n{tails}")
        time.sleep(0.5)
    for daemon in everyone:
        daemon.records()
        assert daemon.proc.process.returncode == 0, f"{daemon.name} exited {daemon.proc.process.returncode}:\n" \
            f"{daemon.log_tail()}"
    return relay, peers


def report(name: str, row: dict[str, Any]) -> None:
    """Print one measurement row and append it to $NETNS_REPORT (JSON lines) when set."""
    line = json.dumps({"topology": name, **row})
    print(line)
    target = os.environ.get("NETNS_REPORT")
    if target:
        with open(target, "a") as handle:
            handle.write(line + "\n")
