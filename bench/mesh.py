"""Benchmark of the mesh (issue 5), side by side in one run.

    python bench/mesh.py                          # 1, 10, 50 MB blobs, 9 interleaved repetitions
    python bench/mesh.py --sizes 1,10,50,200 --reps 9 --json runs/mesh-bench.json

Transfer throughput: a provider process (a real Mesh plus a plain asyncio TCP server, both serving
the same random blobs from memory) and this process fetch each blob, in one run and interleaved
(the paths take turns within every repetition, in a rotating order, so a burst of load on this
shared 2-core machine hits them all alike):

* raw TCP, streams: asyncio ``open_connection``, ``read(1 MiB)`` appended to a bytearray;
* raw TCP, sock_recv_into: a non-blocking socket read straight into a pre-sized bytearray (the
  least work a receiver can do; ratios are given against the faster of the two raw paths);
* libp2p stream: ``Mesh.fetch_blob`` on a fetcher whose fast path is off, so it uses
  /fednode/transfer/1.0.0 over TCP + Noise + Yamux (py-libp2p 0.8.1);
* fast path: ``Mesh.fetch_blob`` on a default fetcher: the authenticated AES-256-GCM channel;
* sha256 alone: no transfer, only ``hashlib.sha256`` over a blob of the same size in memory. It is
  the ceiling of any receiver that verifies content ids (it must hash every byte, and one running
  sha256 cannot be split across cores): a fast-path ratio near this one is bounded by the hash,
  not by the transport.

Both mesh paths include everything fetch_blob does (finding the path, handshake, framing,
sha256 verification of the whole blob) and return the verified bytes; the raw paths do none of
it. MB = 10^6 bytes; medians over the repetitions after one warm-up round; each ratio is the
median of per-repetition ratios (a path against the faster raw path of the same repetition),
which cancels most of the load drift. No pass/fail: the machine is noisy.

CPU per transfer, both ends (this process: CLOCK_PROCESS_CPUTIME_ID; the provider: the sum of its
threads' /proc schedstat run times, both in ns): with sender and receiver on one machine, a
transfer cannot take less than (sender CPU + receiver CPU) / cores, which gives each path a
ceiling on this machine whatever the code does about waiting; the report prints it next to the
measured rate.

W1 federation workload (same run, after the transfers; skip with --no-w1): `fednode launch` with
4 daemons (separate processes, real libp2p on 127.0.0.1), digits MLP 64-256-256-10, 20 rounds, once
with the default 20 local steps and once with 1 local step (FedSGD-like, so the exchange dominates),
each with control messages pushed over the fast path (the default) and with gossip only.
Reported per configuration: steady seconds per round (median of rounds 5-20 over all daemons),
its split into local training and exchange, gossip delivery and payload fetch medians, wall time,
bytes per peer per round, idle RSS (after start-up, before training) and peak RSS per daemon, and
the CPU time one node (daemon + worker) spends per steady round, from the CPU clocks each round
record carries. 4 nodes sharing the machine's cores cannot close rounds faster than
4 x (CPU per node-round) / cores: the report prints that floor next to the measured round.
Targets (issue 5): steady round <= 25 ms, idle daemon RSS <= 250 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fednode.node.mesh import Mesh, MeshConfig

MB = 1_000_000
LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)
PATHS = ("raw-streams", "raw-recv-into", "libp2p", "fast", "sha256")
CORES = os.cpu_count() or 1


def process_cpu_ns(pid: int) -> int:
    """CPU time so far of every live thread of process ``pid`` (ns, from /proc schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that just exited
            continue
    return total


# ----------------------------------------------------------------------------- provider process


async def provider_main(sizes: list[int]) -> None:
    """Serve one random blob per size over the mesh and over raw TCP; report where, then wait."""
    blobs = {}
    for size in sizes:
        data = os.urandom(size)
        blobs[hashlib.sha256(data).digest()] = data
    mesh = Mesh(MeshConfig(identity_key=os.urandom(32), listen_multiaddrs=LOOPBACK))
    await mesh.start()
    for cid, data in blobs.items():
        mesh.serve_blob(cid, data)

    async def raw_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            cid = await reader.readexactly(32)
            view = memoryview(blobs[cid])
            for start in range(0, len(view), 1 << 20):
                writer.write(view[start : start + (1 << 20)])
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(raw_handler, "127.0.0.1", 0)
    print(json.dumps({
        "multiaddr": mesh.listen_multiaddrs()[0],
        "peer_id": mesh.peer_id,
        "raw_port": server.sockets[0].getsockname()[1],
        "blobs": {str(len(d)): c.hex() for c, d in blobs.items()},
    }), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    finally:
        server.close()
        await mesh.stop()


# ----------------------------------------------------------------------------- fetchers


async def raw_streams(port: int, cid: bytes, size: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 << 20)
    try:
        writer.write(cid)
        buf = bytearray()
        while True:
            piece = await reader.read(1 << 20)
            if not piece:
                break
            buf += piece
    finally:
        writer.close()
    assert len(buf) == size


async def raw_recv_into(port: int, cid: bytes, size: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, cid)
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = await loop.sock_recv_into(sock, view[got:])
            if n == 0:
                break
            got += n
    finally:
        sock.close()
    assert got == size


async def bench(sizes: list[int], reps: int) -> dict:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--provider", "--sizes", ",".join(str(s // MB) for s in sizes)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        blobs = {int(size): bytes.fromhex(cid) for size, cid in info["blobs"].items()}
        fast = Mesh(MeshConfig(identity_key=os.urandom(32), listen_multiaddrs=LOOPBACK))
        slow = Mesh(MeshConfig(identity_key=os.urandom(32), listen_multiaddrs=LOOPBACK, fast_path=False))
        await fast.start()
        await slow.start()
        try:
            for mesh in (fast, slow):
                await mesh.connect(info["multiaddr"])
            provider = info["peer_id"]

            in_memory = {size: os.urandom(size) for size in sizes}

            async def run(path: str, size: int) -> tuple[float, float, float]:
                """(MB/s, receiver CPU ms, sender CPU ms) of one transfer."""
                cid = blobs[size]
                sender0, receiver0 = process_cpu_ns(proc.pid), time.process_time_ns()
                start = time.perf_counter()
                if path == "sha256":
                    hashlib.sha256(in_memory[size]).digest()
                elif path == "raw-streams":
                    await raw_streams(info["raw_port"], cid, size)
                elif path == "raw-recv-into":
                    await raw_recv_into(info["raw_port"], cid, size)
                else:
                    mesh = fast if path == "fast" else slow
                    data = await mesh.fetch_blob(cid, [provider])
                    assert len(data) == size
                    del data
                rate = size / MB / (time.perf_counter() - start)
                return rate, (time.process_time_ns() - receiver0) / 1e6, (process_cpu_ns(proc.pid) - sender0) / 1e6

            results: dict[str, dict[int, list[float]]] = {p: {s: [] for s in sizes} for p in PATHS}
            cpu: dict[str, dict[int, list[tuple[float, float]]]] = {p: {s: [] for s in sizes} for p in PATHS}
            load_before = os.getloadavg()
            for rep in range(reps + 1):  # repetition 0 warms every path up and is not counted
                for size in sizes:
                    order = PATHS[rep % len(PATHS):] + PATHS[: rep % len(PATHS)]
                    for path in order:
                        rate, receiver_ms, sender_ms = await run(path, size)
                        if rep:
                            results[path][size].append(rate)
                            cpu[path][size].append((receiver_ms, sender_ms))
                print(f"  repetition {rep}/{reps} done", file=sys.stderr, flush=True)
            load_after = os.getloadavg()
            fast_stats, slow_stats = fast.stats(), slow.stats()
            assert fast_stats.fetch_attempts_libp2p == 0, "the fast fetcher fell back to libp2p"
            assert slow_stats.fetch_attempts_fast_path == 0
        finally:
            await fast.stop()
            await slow.stop()
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    medians = {p: {s: statistics.median(v) for s, v in by_size.items()} for p, by_size in results.items()}
    cpu_ms = {p: {s: (statistics.median(r for r, _ in v), statistics.median(w for _, w in v)) for s, v in by_size.items()}
              for p, by_size in cpu.items()}
    return {"sizes": sizes, "reps": reps, "load_before": load_before, "load_after": load_after,
            "samples": results, "medians": medians, "cpu_ms": cpu_ms}


def ratios(result: dict, path: str, size: int, raw: tuple[str, ...] = ("raw-streams", "raw-recv-into")) -> list[float]:
    """Per-repetition ratio of ``path`` to the fastest of the ``raw`` paths in the same repetition."""
    samples = result["samples"]
    best = [max(values) for values in zip(*(samples[r][size] for r in raw), strict=True)]
    return [value / b for value, b in zip(samples[path][size], best, strict=True)]


def report(result: dict) -> None:
    med = result["medians"]
    print(f"\nBlob transfer on 127.0.0.1, MB/s, medians of {result['reps']} interleaved repetitions "
          f"(load average {result['load_before'][0]:.1f} -> {result['load_after'][0]:.1f}, {os.cpu_count()} CPUs)\n")
    header = (f"{'size':>7} | {'raw streams':>11} | {'raw recv_into':>13} | {'libp2p stream':>13} {'ratio':>6} | "
              f"{'fast path':>9} {'ratio':>6} {'vs streams':>10} | {'sha256 alone':>12} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for size in result["sizes"]:
        lp_ratio = statistics.median(ratios(result, "libp2p", size))
        fp_ratio = statistics.median(ratios(result, "fast", size))
        fp_streams = statistics.median(ratios(result, "fast", size, ("raw-streams",)))
        hash_ratio = statistics.median(ratios(result, "sha256", size))
        result.setdefault("ratios", {})[str(size)] = {"libp2p": lp_ratio, "fast": fp_ratio,
                                                      "fast_vs_streams": fp_streams, "sha256_alone": hash_ratio}
        print(f"{size // MB:>4} MB | {med['raw-streams'][size]:>11.1f} | {med['raw-recv-into'][size]:>13.1f} | "
              f"{med['libp2p'][size]:>13.1f} {lp_ratio:>5.2f}x | {med['fast'][size]:>9.1f} {fp_ratio:>5.2f}x "
              f"{fp_streams:>9.2f}x | {med['sha256'][size]:>12.1f} {hash_ratio:>5.2f}x")
    print("\nratio = median over repetitions of (path / faster raw path of the same repetition); 'vs streams'")
    print("compares with the asyncio-streams receiver only. The mesh paths also find the path, authenticate,")
    print("frame and sha256-verify the whole blob; the raw paths do none of it. 'sha256 alone' hashes a blob")
    print("of that size in memory, no transfer: no receiver that verifies content ids can beat its ratio.")

    cpu = result["cpu_ms"]
    print("\nCPU per transfer, ms (medians; receiver = this process, sender = the provider process); ceiling = the")
    print(f"rate if both ends' CPU spread perfectly over the {CORES} cores, and its ratio to the faster raw path")
    header = f"{'size':>7} | {'path':>13} | {'receiver':>8} {'sender':>8} {'total':>8} | {'MB/s':>7} | {'ceiling MB/s':>12} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for size in result["sizes"]:
        raw_best = max(med["raw-streams"][size], med["raw-recv-into"][size])
        for path in ("raw-recv-into", "raw-streams", "fast", "libp2p"):
            receiver, sender = cpu[path][size]
            total = receiver + sender
            ceiling = size / MB / (total / 1e3 / CORES) if total > 0 else float("inf")
            result.setdefault("ceilings", {}).setdefault(str(size), {})[path] = ceiling
            print(f"{size // MB:>4} MB | {path:>13} | {receiver:>8.2f} {sender:>8.2f} {total:>8.2f} | {med[path][size]:>7.0f} | "
                  f"{ceiling:>12.0f} {ceiling / raw_best:>5.2f}x")
        receiver, _ = cpu["sha256"][size]
        print(f"{size // MB:>4} MB | {'sha256 alone':>13} | {receiver:>8.2f}")


def w1(local_steps: int, rounds: int, out: Path, push: bool = True) -> dict:
    """Run the W1 federation through the real launcher and summarise the daemons' own records.

    `push`: control messages pushed over the fast path (the default; round traffic is gossiped
    only where a push missed a member), or gossip only (`federation.push = false`), to show what
    the push saves."""
    command = [sys.executable, "-m", "fednode.cli.app", "launch", "--nodes", "4", "--rounds", str(rounds),
               "--out", str(out), "--set", f"training.local_steps={local_steps}",
               "--set", f"federation.push={'true' if push else 'false'}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"W1 launch failed ({done.returncode}):\n{done.stdout[-3000:]}")
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("node-*/summary.json"))]
    steady_by_node = [[r for r in s["history"] if r["round"] >= 5] for s in summaries]
    steady = [r for rounds in steady_by_node for r in rounds]
    daemon_cpu, worker_cpu, interval = [], [], []
    for rounds in steady_by_node:  # per node, between its first and last steady round: CPU and wall time per round
        if len(rounds) >= 2 and rounds[-1]["round"] > rounds[0]["round"]:
            first, last = rounds[0], rounds[-1]
            span = last["round"] - first["round"]
            daemon_cpu.append((last["daemon_cpu_seconds"] - first["daemon_cpu_seconds"]) / span)
            worker_cpu.append((last["worker_cpu_seconds"] - first["worker_cpu_seconds"]) / span)
            interval.append((last["finished_at"] - first["finished_at"]) / span)
    return {
        "local_steps": local_steps,
        "push": push,
        "round_s": statistics.median(r["round_seconds"] for r in steady),
        "train_s": statistics.median(r["seconds"] for r in steady),
        "gossip_s": statistics.median(s["timings"].get("gossip_delivery", {}).get("median", float("nan")) for s in summaries),
        "fetch_s": statistics.median(s["timings"].get("fetch", {}).get("median", float("nan")) for s in summaries),
        "wall_s": wall,
        "bytes_per_peer_round": statistics.median(s["bytes_sent"] / max(1, s["rounds"]) for s in summaries),
        # Per node: the daemon process (mesh, admin API; no torch) and its training worker.
        "idle_rss_mb": max(s.get("idle_rss_mb", float("nan")) for s in summaries),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in summaries),
        "worker_idle_rss_mb": max(s.get("worker_idle_rss_mb", float("nan")) for s in summaries),
        "worker_peak_rss_mb": max(s.get("worker_peak_rss_mb", float("nan")) for s in summaries),
        "node_idle_rss_mb": max(s.get("idle_rss_mb", float("nan")) + s.get("worker_idle_rss_mb", float("nan"))
                                for s in summaries),
        "accuracy": min(s["accuracy"] for s in summaries),
        "interval_s": statistics.median(interval) if interval else float("nan"),
        "daemon_cpu_s": statistics.median(daemon_cpu) if daemon_cpu else float("nan"),
        "worker_cpu_s": statistics.median(worker_cpu) if worker_cpu else float("nan"),
        "nodes": len(summaries),
    }


def report_w1(rows: list[dict]) -> None:
    print("\nW1: 4 daemons, digits MLP 64-256-256-10, 20 rounds (targets: round <= 25 ms, idle RSS <= 250 MB)")
    header = f"{'local steps':>11} {'control path':>13} {'round ms':>9} {'train ms':>9} {'exchange ms':>12} {'gossip ms':>10} {'fetch ms':>9} " \
             f"{'wall s':>7} {'kB/peer/rd':>11} {'RSS MB idle/peak':>17} {'worker MB idle/peak':>20} {'node MB':>8} {'accuracy':>9}"
    print(header)
    cpu_rows = []
    for r in rows:
        print(f"{r['local_steps']:>11} {'push' if r['push'] else 'gossip only':>13} {r['round_s'] * 1e3:>9.1f} {r['train_s'] * 1e3:>9.1f} "
              f"{(r['round_s'] - r['train_s']) * 1e3:>12.1f} {r['gossip_s'] * 1e3:>10.1f} {r['fetch_s'] * 1e3:>9.1f} "
              f"{r['wall_s']:>7.1f} {r['bytes_per_peer_round'] / 1e3:>11.1f} "
              f"{r['idle_rss_mb']:>8.0f}/{r['peak_rss_mb']:<8.0f} {r['worker_idle_rss_mb']:>10.0f}/{r['worker_peak_rss_mb']:<9.0f} "
              f"{r['node_idle_rss_mb']:>8.0f} {r['accuracy']:>9.4f}")
        node_cpu = r["daemon_cpu_s"] + r["worker_cpu_s"]
        cpu_rows.append(f"{r['local_steps']:>11} {'push' if r['push'] else 'gossip only':>13} {r['interval_s'] * 1e3:>11.1f} "
                        f"{r['daemon_cpu_s'] * 1e3:>10.1f} {r['worker_cpu_s'] * 1e3:>10.1f} {node_cpu * 1e3:>9.1f} "
                        f"{r['nodes'] * node_cpu / CORES * 1e3:>10.1f}")
    print("\nPer steady round, ms, median over nodes: interval = wall time from one round's end to the next (the")
    print("round above plus evaluation, checkpoint and waiting for the next); CPU per node (daemon + worker);")
    print(f"floor = the shortest interval those CPU costs allow: nodes x node CPU / {CORES} cores (one machine)")
    print(f"{'local steps':>11} {'control path':>13} {'interval ms':>11} {'daemon CPU':>10} {'worker CPU':>10} {'node CPU':>9} {'floor ms':>10}")
    for line in cpu_rows:
        print(line)
    print("RSS = the daemon process (mesh, admin API, membership; no torch); worker = its training worker process")
    print("(torch, model, trainer, aggregation); node = both, idle (after start-up, before the first round), max over nodes.")
    print("round = the round as the runner measures it (train, encode, exchange, aggregate; evaluation, the report to the")
    print("daemon and the checkpoint follow it: see the interval in the second table);")
    print("gossip = header delivery (receive time - sender timestamp, whichever copy came first); fetch = payload")
    print("pull over the mesh. control path: round traffic pushed over the fast path (gossiped only where a push")
    print("missed a member; announcements always gossiped), or everything gossiped (federation.push = false).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-w1", action="store_true", help="skip the W1 federation workload")
    parser.add_argument("--w1-rounds", type=int, default=20, help="rounds of the W1 workload")
    parser.add_argument("--sizes", default="1,10,50", help="blob sizes in MB, comma-separated")
    parser.add_argument("--reps", type=int, default=9, help="counted repetitions (plus one warm-up)")
    parser.add_argument("--json", type=Path, help="also write the raw samples and medians here")
    parser.add_argument("--provider", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]
    if args.provider:
        asyncio.run(provider_main(sizes))
        return
    result = asyncio.run(bench(sizes, args.reps))
    report(result)
    if not args.no_w1:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="w1-") as tmp:
            result["w1"] = [w1(steps, args.w1_rounds, Path(tmp) / f"steps{steps}-{'push' if push else 'gossip'}", push)
                            for steps in (20, 1) for push in (True, False)]
        report_w1(result["w1"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
