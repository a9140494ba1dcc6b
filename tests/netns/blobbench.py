"""Blob transfer over one network path, between two real meshes in lab namespaces.

Run as a script inside a namespace (``python blobbench.py serve ...`` / ``... fetch ...``); the
test drives it through :class:`netlab.NetLab` and reads one JSON line from each side:

* ``relay``: a public mesh with relay hop on; prints ``{"event": "relay", "multiaddrs"}``.
* ``serve``: starts a mesh (optionally bootstrapping from a relay), serves a deterministic blob
  of ``--size`` bytes, prints ``{"event": "serving", "peer_id", "multiaddrs", "content_id"}``
  once it holds a relay slot (when bootstrapped) and keeps serving until killed.
* ``fetch``: starts a mesh, connects to the provider at ``--connect`` (a direct or
  ``/p2p-circuit`` address), waits until the connection is of kind ``--want`` (e.g. that DCUtR
  has upgraded it), fetches the blob ``--repeat`` times and prints ``{"event": "fetched",
  "connection", "seconds": [...], "mb_per_s": [...], "fast_path_attempts", "libp2p_attempts"}``.

Every wait is bounded; the process exits non-zero (with a JSON ``error`` line) on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import time
from typing import Any

from fednode.node.mesh import Mesh, MeshConfig


def blob(size: int, seed: int) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return data, hashlib.sha256(data).digest()


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _config(args: argparse.Namespace, bootstrap: tuple[str, ...] = (), relay_hop: bool = False) -> MeshConfig:
    return MeshConfig(
        identity_key=os.urandom(32),
        relay_hop=relay_hop,
        listen_multiaddrs=(f"/ip4/0.0.0.0/tcp/{args.port}",),
        bootstrap_multiaddrs=bootstrap,
        enable_dcutr=not args.no_dcutr,
        fast_path=not args.no_fast_path,
        io_timeout_s=10.0,
        autonat_interval_s=5.0,
    )


async def relay(args: argparse.Namespace) -> None:
    mesh = Mesh(_config(args, relay_hop=True))
    await mesh.start()
    try:
        emit(event="relay", peer_id=mesh.peer_id, multiaddrs=mesh.listen_multiaddrs())
        while True:
            await asyncio.sleep(3600)
    finally:
        await mesh.stop()


async def serve(args: argparse.Namespace) -> None:
    data, cid = blob(args.size, args.seed)
    mesh = Mesh(_config(args, tuple(args.bootstrap or ())))
    await mesh.start()
    try:
        mesh.serve_blob(cid, data)
        deadline = time.monotonic() + 30
        while args.bootstrap and not mesh.reachability().relay_addrs and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        emit(event="serving", peer_id=mesh.peer_id, multiaddrs=mesh.listen_multiaddrs(), content_id=cid.hex())
        while True:
            await asyncio.sleep(3600)
    finally:
        await mesh.stop()


async def fetch(args: argparse.Namespace) -> None:
    _, cid = blob(args.size, args.seed)
    mesh = Mesh(_config(args, tuple(args.bootstrap or ())))
    await mesh.start()
    try:
        provider = await mesh.connect(args.connect)
        deadline = time.monotonic() + args.wait
        kind = "none"
        while time.monotonic() < deadline:
            kind = next((p.connection for p in mesh.peers() if p.peer_id == provider), "none")
            if kind == args.want:
                break
            await asyncio.sleep(0.1)
        if kind != args.want:
            emit(event="error", error=f"connection stayed {kind!r}, wanted {args.want!r}")
            raise SystemExit(3)
        seconds = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            data = await mesh.fetch_blob(cid, [provider])
            seconds.append(time.perf_counter() - started)
            if hashlib.sha256(data).digest() != cid:
                emit(event="error", error="hash mismatch")
                raise SystemExit(4)
        stats = mesh.stats()
        final = next((p.connection for p in mesh.peers() if p.peer_id == provider), "none")
        emit(event="fetched", connection=final, size=args.size, seconds=seconds,
             mb_per_s=[args.size / s / 1e6 for s in seconds],
             fast_path_attempts=stats.fetch_attempts_fast_path, libp2p_attempts=stats.fetch_attempts_libp2p)
    finally:
        await mesh.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["relay", "serve", "fetch"])
    parser.add_argument("--size", type=int, default=8_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=4001)
    parser.add_argument("--bootstrap", action="append")
    parser.add_argument("--connect", default="")
    parser.add_argument("--want", default="direct", choices=["direct", "relayed", "hole-punched"])
    parser.add_argument("--wait", type=float, default=45.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-dcutr", action="store_true")
    parser.add_argument("--no-fast-path", action="store_true")
    args = parser.parse_args()
    try:
        asyncio.run({"relay": relay, "serve": serve, "fetch": fetch}[args.mode](args))
    except SystemExit:
        raise
    except BaseException as exc:
        emit(event="error", error=f"{type(exc).__name__}: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
