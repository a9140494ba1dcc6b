"""Test helpers that need libp2p or trio directly (only this package may import them).

Nothing here is a mock: the plaintext dialer is a real py-libp2p host configured the way an
attacker (or an old peer) would be, and the bridge probes are real trio coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.tcp.tcp import TCP


@dataclass(frozen=True)
class PlaintextDialResult:
    control_connected: bool  # the plaintext dialer reached a py-libp2p host with library defaults
    control_security: str  # what that default host negotiated (shows the library's unsafe default)
    target_connected: bool  # the plaintext dialer reached the target (must be False for a Mesh)
    target_error: str


async def plaintext_dial(target_multiaddr: str, timeout: float = 10.0) -> PlaintextDialResult:
    """Dial ``target_multiaddr`` with a host that offers only /plaintext/2.0.0.

    As a control, the same dialer first connects to a py-libp2p host built with the library's
    default security options, which accepts plaintext: it proves the dialer works, so a refusal
    by the target means the target refuses plaintext. Runs in its own thread and trio loop.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[PlaintextDialResult] = loop.create_future()

    def settle(result: PlaintextDialResult | BaseException) -> None:
        if done.done():
            return
        if isinstance(result, BaseException):
            done.set_exception(result)
        else:
            done.set_result(result)

    def thread_main() -> None:
        try:
            result: PlaintextDialResult | BaseException = trio.run(_plaintext_dial, target_multiaddr, timeout)
        except BaseException as exc:
            result = exc
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result)

    thread = threading.Thread(target=thread_main, name="fednode-mesh-test-plaintext", daemon=True)
    thread.start()
    try:
        return await done
    finally:
        while thread.is_alive():
            await asyncio.sleep(0.02)


async def _plaintext_dial(target: str, timeout: float) -> PlaintextDialResult:
    key_pair = create_new_key_pair(os.urandom(32))
    dialer = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        transports=[TCP()],
    )
    default_host = new_host(key_pair=create_new_key_pair(os.urandom(32)), transports=[TCP()])
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    control_ok = False
    security = ""
    target_ok = False
    error = ""
    async with dialer.run(listen_addrs=listen), default_host.run(listen_addrs=listen):
        with trio.move_on_after(timeout), contextlib.suppress(Exception):
            await dialer.connect(info_from_p2p_addr(default_host.get_addrs()[0]))
            control_ok = True
            conns = default_host.get_network().connections.get(dialer.get_id()) or []
            for conn in conns if isinstance(conns, list) else [conns]:
                with contextlib.suppress(Exception):
                    security = str(conn.get_negotiated_security_protocol())
        info = info_from_p2p_addr(multiaddr.Multiaddr(target))
        try:
            with trio.fail_after(timeout):
                await dialer.connect(info)
            target_ok = bool(dialer.get_network().connections.get(info.peer_id))
        except trio.TooSlowError:
            error = "timed out"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    return PlaintextDialResult(control_ok, security, target_ok, error)


# ------------------------------------------------------------------ bridge probes (trio side)


async def trio_sleep(_node: object, seconds: float, started: threading.Event, cancelled: threading.Event) -> str:
    """Sleep in trio; record whether trio saw the cancellation (asyncio -> trio propagation)."""
    started.set()
    try:
        await trio.sleep(seconds)
    except trio.Cancelled:
        cancelled.set()
        raise
    return "slept"


async def trio_raise(_node: object, message: str) -> None:
    await trio.sleep(0)
    raise ValueError(message)


async def trio_thread_name(_node: object) -> str:
    await trio.sleep(0)
    return threading.current_thread().name
