"""Run a trio program in a dedicated thread and call into it from asyncio (notes §6.1, option A).

py-libp2p is trio-only; the daemon is asyncio (grpc.aio, the round logic). A separate thread with
its own ``trio.run`` keeps each loop free of the other's blocking steps, costs ~50-90 us per call,
and gives clean cancellation both ways:

* asyncio -> trio: :meth:`TrioThread.call` asks trio (through its ``TrioToken``) to start a runner
  task inside its own ``CancelScope``; the result or exception comes back with
  ``loop.call_soon_threadsafe``. Cancelling the awaiting asyncio task cancels the runner's scope;
  a runner cancelled by trio (shutdown) cancels the asyncio future.
* trio -> asyncio: :meth:`TrioThread.post` pushes an item with ``call_soon_threadsafe``; it never
  blocks trio. The consumer decides what to do when its queue is full.
* start and stop are bounded; stop cancels everything in the trio program, then joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import trio

from .errors import MeshClosedError, MeshError

T = TypeVar("T")
N = TypeVar("N")


class TrioThread(Generic[N]):
    """Owns one thread running ``trio.run`` around an async context manager that yields a node.

    ``factory()`` is entered inside the trio thread; whatever it yields (the node) is what
    :meth:`call` functions receive as their first argument.
    """

    def __init__(self, factory: Callable[[], AbstractAsyncContextManager[N]], name: str) -> None:
        self._factory = factory
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._node: N | None = None
        self._stop: trio.Event | None = None
        self._outer: trio.CancelScope | None = None
        self._ready: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float) -> None:
        """Start the thread; return once the node is entered, or raise (thread joined)."""
        if self._thread is not None:
            raise MeshError("already started")
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._thread = threading.Thread(target=self._thread_main, name=self._name, daemon=True)
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except BaseException:
            await self.stop(timeout=max(timeout, 5.0))
            if self._failure is not None:
                raise MeshError(f"networking thread failed to start: {self._failure!r}") from self._failure
            raise

    async def stop(self, timeout: float) -> bool:
        """Cancel the trio program and join the thread; True when the thread is gone."""
        thread = self._thread
        if thread is None:
            return True
        self._running = False
        token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._request_stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hard_cancel_at = loop.time() + 0.6 * timeout
        hard_cancelled = False
        while thread.is_alive() and loop.time() < deadline:
            if not hard_cancelled and loop.time() >= hard_cancel_at and token is not None:
                # A graceful teardown step is stuck: cancel the whole trio program.
                hard_cancelled = True
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(self._cancel_everything)
            await asyncio.sleep(0.01)
        thread.join(timeout=0)
        return not thread.is_alive()

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _cancel_everything(self) -> None:
        if self._outer is not None:
            self._outer.cancel()

    def _thread_main(self) -> None:
        try:
            trio.run(self._trio_main)
        except BaseException as exc:  # reported through the ready future or logged by the owner
            self._failure = exc
        finally:
            self._running = False
            self._token = None
            loop, ready = self._loop, self._ready
            if loop is not None and ready is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, ready, self._failure or MeshClosedError("stopped"))

    async def _trio_main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        with trio.CancelScope() as outer:
            self._outer = outer
            async with self._factory() as node, trio.open_nursery() as nursery:
                self._node = node
                self._nursery = nursery
                self._running = True
                loop, ready = self._loop, self._ready
                assert loop is not None and ready is not None
                loop.call_soon_threadsafe(_settle, ready, None)
                await self._stop.wait()
                self._running = False
                nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ calls

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(node, *args)`` in the trio thread and return its result here."""
        if not self._running or self._token is None or self._nursery is None or self._loop is None:
            raise MeshClosedError("the mesh is not running")
        loop = self._loop
        future: asyncio.Future[T] = loop.create_future()
        scope_box: list[trio.CancelScope] = []
        node = self._node
        nursery = self._nursery

        async def runner() -> None:
            try:
                with trio.CancelScope() as scope:
                    scope_box.append(scope)
                    if future.done():  # cancelled before it started
                        return
                    try:
                        result = await fn(node, *args)
                    except trio.Cancelled:
                        raise
                    except BaseException as exc:  # handed to the asyncio caller
                        _threadsafe(loop, _settle, future, exc)
                        return
                    _threadsafe(loop, _settle_result, future, result)
            finally:
                # Not settled above: cancelled by the caller (the future is already cancelled,
                # so this is a no-op) or by shutdown. Callbacks run in order, so this never
                # overrides a result settled just before.
                _threadsafe(loop, _settle, future, MeshClosedError("the mesh stopped during the call"))

        def start_runner() -> None:
            try:
                nursery.start_soon(runner)
            except RuntimeError:  # nursery closed: shutting down
                _threadsafe(loop, _settle, future, MeshClosedError("the mesh is stopping"))

        try:
            self._token.run_sync_soon(start_runner)
        except trio.RunFinishedError as exc:
            raise MeshClosedError("the mesh is not running") from exc
        try:
            return await future
        except asyncio.CancelledError:
            token = self._token
            if token is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(_cancel_scopes, scope_box)
            raise

    def post(self, callback: Callable[..., None], *args: Any) -> bool:
        """From the trio thread: run ``callback(*args)`` soon in the asyncio loop (never blocks)."""
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the asyncio loop is closed
            return False
        return True


def _threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _settle(future: asyncio.Future[Any], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


def _settle_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _cancel_scopes(scopes: list[trio.CancelScope]) -> None:
    for scope in scopes:
        scope.cancel()


@contextlib.asynccontextmanager
async def nothing() -> AsyncIterator[None]:
    """A trivial node factory (used to test the bridge on its own)."""
    yield None
