"""One blob over each path a NATed fetcher can have, measured (issue 8's throughput table).

Lab: a public relay, a public provider, a provider behind a cone NAT, a fetcher behind another
cone NAT. Paths, each in its own pair of processes (tests/netns/blobbench.py, real meshes):

* relayed: DCUtR off on both ends, so the circuit through the relay carries the blob;
* hole-punched: DCUtR on; the fetch starts once the connection is hole-punched;
* direct, fast path: from the public provider (its fast path is reachable);
* direct, libp2p stream: the same with the fast path off (the hole-punched path's transport).

Asserts that every blob arrives intact over the intended connection and transport; the
throughput numbers are reported (printed, and appended to $NETNS_REPORT), not asserted: they
depend on the machine's load.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fedlab import report
from netlab import LabProcess, NatType, NetLab

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(300)]

BENCH = [sys.executable, str(Path(__file__).with_name("blobbench.py"))]
SIZE = 8_000_000


def json_event(proc: LabProcess, event: str, timeout: float) -> dict[str, Any]:
    """The first JSON line with ``event`` (or "error") the process printed (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        exited = proc.process.poll() is not None
        for line in proc.log().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") in (event, "error"):
                    assert record["event"] == event, f"{proc.argv}: {record}\n{proc.log()[-3000:]}"
                    return record
        if exited:
            raise AssertionError(f"{proc.argv} exited {proc.process.returncode}:\n{proc.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{proc.argv}: no {event!r} within {timeout} s:\n{proc.log()[-3000:]}")
        time.sleep(0.2)


def test_blob_throughput_relayed_hole_punched_and_direct(lab: NetLab, tmp_path: Path) -> None:
    relay_host = lab.public_host("relay")
    public = lab.public_host("pub")
    alice = lab.private_host("alice", lab.nat_router("nata", NatType.CONE))
    bob = lab.private_host("bob", lab.nat_router("natb", NatType.CONE))
    size = ["--size", str(SIZE)]

    relay = lab.spawn(relay_host, [*BENCH, "relay"], log_path=tmp_path / "relay.log")
    relay_addr = next(a for a in json_event(relay, "relay", 60)["multiaddrs"] if f"/{relay_host.ip}/" in a)
    behind_relay = lab.spawn(alice, [*BENCH, "serve", *size, "--port", "4001", "--bootstrap", relay_addr,
                                     "--no-dcutr"], log_path=tmp_path / "serve-relayed.log")
    behind_punch = lab.spawn(alice, [*BENCH, "serve", *size, "--port", "4002", "--bootstrap", relay_addr],
                             log_path=tmp_path / "serve-punch.log")
    in_public = lab.spawn(public, [*BENCH, "serve", *size, "--port", "4001"], log_path=tmp_path / "serve-public.log")

    def circuit(proc: LabProcess) -> str:
        return next(a for a in json_event(proc, "serving", 60)["multiaddrs"] if "/p2p-circuit/" in a)

    direct = next(a for a in json_event(in_public, "serving", 60)["multiaddrs"] if f"/{public.ip}/" in a)
    cases = [
        # name, fetcher port, address, wanted connection, extra flags, expected transport
        ("relayed", 5001, circuit(behind_relay), "relayed", ["--no-dcutr"], "libp2p"),
        ("hole-punched", 5002, circuit(behind_punch), "hole-punched", [], "libp2p"),
        ("direct (fast path)", 5003, direct, "direct", [], "fast-path"),
        ("direct (libp2p stream)", 5004, direct, "direct", ["--no-fast-path"], "libp2p"),
    ]
    rates: dict[str, float] = {}
    for name, port, address, want, extra, transport in cases:
        fetcher = lab.spawn(bob, [*BENCH, "fetch", *size, "--port", str(port), "--connect", address,
                                  "--want", want, *extra], log_path=tmp_path / f"fetch-{port}.log")
        result = json_event(fetcher, "fetched", 150)
        fetcher.process.wait(timeout=30)
        assert result["connection"] == want, result
        if transport == "fast-path":
            assert result["fast_path_attempts"] >= 3 and result["libp2p_attempts"] == 0, result
        else:
            assert result["fast_path_attempts"] == 0 and result["libp2p_attempts"] >= 3, result
        rates[name] = statistics.median(result["mb_per_s"])
    report("blob paths", {"blob_mb": SIZE / 1e6, **{f"{k} MB/s": round(v, 1) for k, v in rates.items()}})
