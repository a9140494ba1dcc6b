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
* fast path: ``Mesh.fetch_blob`` on a default fetcher: the authenticated AES-256-GCM channel.

Both mesh paths include everything fetch_blob does (finding the path, handshake, framing,
sha256 verification of the whole blob) and return the verified bytes; the raw paths do none of
it. MB = 10^6 bytes; medians over the repetitions after one warm-up round; each ratio is the
median of per-repetition ratios (a path against the faster raw path of the same repetition),
which cancels most of the load drift. No pass/fail: the machine is noisy.

W1 federation workload: TODO(lead) - add here, in this same run, the W1 part of issue 5:
4 daemons, digits MLP 64-256-256-10, 20 rounds; report steady seconds per round, wall time,
bytes per peer per round and peak RSS per daemon (targets: steady round <= 25 ms, idle daemon
RSS <= 250 MB). It should reuse the provider-process pattern below (one process per daemon).
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
PATHS = ("raw-streams", "raw-recv-into", "libp2p", "fast")


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

            async def run(path: str, size: int) -> float:
                cid = blobs[size]
                start = time.perf_counter()
                if path == "raw-streams":
                    await raw_streams(info["raw_port"], cid, size)
                elif path == "raw-recv-into":
                    await raw_recv_into(info["raw_port"], cid, size)
                else:
                    mesh = fast if path == "fast" else slow
                    data = await mesh.fetch_blob(cid, [provider])
                    assert len(data) == size
                    del data
                return size / MB / (time.perf_counter() - start)

            results: dict[str, dict[int, list[float]]] = {p: {s: [] for s in sizes} for p in PATHS}
            load_before = os.getloadavg()
            for rep in range(reps + 1):  # repetition 0 warms every path up and is not counted
                for size in sizes:
                    order = PATHS[rep % len(PATHS):] + PATHS[: rep % len(PATHS)]
                    for path in order:
                        rate = await run(path, size)
                        if rep:
                            results[path][size].append(rate)
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
    return {"sizes": sizes, "reps": reps, "load_before": load_before, "load_after": load_after,
            "samples": results, "medians": medians}


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
              f"{'fast path':>9} {'ratio':>6} {'vs streams':>10}")
    print(header)
    print("-" * len(header))
    for size in result["sizes"]:
        lp_ratio = statistics.median(ratios(result, "libp2p", size))
        fp_ratio = statistics.median(ratios(result, "fast", size))
        fp_streams = statistics.median(ratios(result, "fast", size, ("raw-streams",)))
        result.setdefault("ratios", {})[str(size)] = {"libp2p": lp_ratio, "fast": fp_ratio,
                                                      "fast_vs_streams": fp_streams}
        print(f"{size // MB:>4} MB | {med['raw-streams'][size]:>11.1f} | {med['raw-recv-into'][size]:>13.1f} | "
              f"{med['libp2p'][size]:>13.1f} {lp_ratio:>5.2f}x | {med['fast'][size]:>9.1f} {fp_ratio:>5.2f}x "
              f"{fp_streams:>9.2f}x")
    print("\nratio = median over repetitions of (path / faster raw path of the same repetition); 'vs streams'")
    print("compares with the asyncio-streams receiver only. The mesh paths also find the path, authenticate,")
    print("frame and sha256-verify the whole blob; the raw paths do none of it.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
