"""The daemon's handle on its training worker (node/worker/process.py).

`WorkerProcess` starts the worker with one end of a socketpair, configures it, and serves its
mesh requests with the daemon's `Mesh`: every gossip message is checked by a `ControlValidator`
here, in the daemon, against the daemon's trust policy, before it is delivered or forwarded; what
passes is handed to the worker, what is refused is reported to it (for reputation and the audit
log). Round reports come back through `on_round`, runner events through `on_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from fednode.node.errors import ExitCode, FednodeError
from fednode.node.federation.settings import FederationSettings
from fednode.node.logs import best_effort
from fednode.node.worker.link import (
    HandlerError,
    Link,
    LinkClosed,
    RemoteError,
    error_kind,
    reply_body,
    table_handler,
)
from fednode.node.worker.remote_mesh import event_to_proto
from fednode.proto.v1 import membership_pb2, worker_pb2

log = logging.getLogger("fednode.daemon")

WORKER_START_TIMEOUT = 300.0  # building a large task's data set can take minutes
WORKER_EXIT_TIMEOUT = 5.0
# Mesh events are dropped (and counted) rather than buffered without bound for a worker whose
# event loop is not reading, as the mesh's own event queue does.
MAX_UNREAD_EVENT_BYTES = 64 << 20


class WorkerError(FednodeError):
    """The training worker failed; the exit code is the one it reported."""

    def __init__(self, message: str, exit_code: int = int(ExitCode.INTERNAL)) -> None:
        super().__init__(message)
        try:
            self.exit_code = ExitCode(exit_code)
        except ValueError:
            self.exit_code = ExitCode.INTERNAL


class WorkerGone(WorkerError):
    """The training worker process died (killed, out of memory, crashed)."""


class WorkerProcess:
    """One training worker; see the module docstring."""

    def __init__(
        self,
        config_json: str,
        *,
        on_round: Callable[[worker_pb2.RoundDone], Awaitable[worker_pb2.RoundVerdict]],
        on_event: Callable[[worker_pb2.RunnerEvent], None],
    ) -> None:
        self._config_json = config_json
        self.on_round = on_round
        self.on_event = on_event
        self.process: asyncio.subprocess.Process | None = None
        self.link: Link | None = None
        self.ready: worker_pb2.WorkerReady | None = None
        self.mesh: Any = None
        self.final_checkpoint_error = ""  # set by shutdown(): why the final checkpoint failed
        self.checkpoint_health = worker_pb2.CheckpointHealth(written_round=-1)
        self._validators: dict[str, Any] = {}  # topic -> validator (the daemon's)
        self._validator_factory: Callable[[str], Any] | None = None
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._session_ended: asyncio.Future[worker_pb2.SessionEnded] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.events_dropped = 0  # mesh events not forwarded because the worker was not reading
        self._dispatch: Callable[[worker_pb2.LinkFrame], Any] | None = None  # from handlers(), on first use

    # ------------------------------------------------------------------------------ lifecycle
    async def start(self) -> worker_pb2.WorkerReady:
        """Start the worker and wait until its model is built; WorkerError with its reason if not."""
        parent, child = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fednode.node.worker", "--link-fd", str(child.fileno()),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.link = await Link.over_socket(parent, self._handle, "daemon")
        self._reading = asyncio.ensure_future(self._read_until_closed())
        self.link.notify("configure", worker_pb2.Configure(config_json=self._config_json))
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), WORKER_START_TIMEOUT)
        except asyncio.TimeoutError:
            await self.kill()
            raise WorkerError(f"the training worker did not start within {WORKER_START_TIMEOUT:.0f} s") from None
        except BaseException:
            await self.kill()
            raise
        self.ready = ready
        return ready

    async def _read_until_closed(self) -> None:
        assert self.link is not None and self.process is not None
        await self.link.run()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), WORKER_EXIT_TIMEOUT)
        gone = WorkerGone(f"the training worker exited unexpectedly (exit code {self.process.returncode}); "
                           f"see its log lines above")
        if not self._ready.done():
            self._ready.set_exception(gone)
        if self._session_ended is not None and not self._session_ended.done():
            self._session_ended.set_result(worker_pb2.SessionEnded(error=gone.message, exit_code=int(ExitCode.INTERNAL)))

    @property
    def alive(self) -> bool:
        return self.link is not None and not self.link.closed

    async def shutdown(self, checkpoint: bool = True) -> float:
        """Stop the worker (final checkpoint first); returns its peak RSS in MiB (NaN if unknown).
        `final_checkpoint_error` says why the final checkpoint could not be written ("" if it was)."""
        peak = float("nan")
        if self.alive:
            assert self.link is not None
            try:
                reply = await self.link.call("shutdown", worker_pb2.Shutdown(checkpoint=checkpoint), timeout=60.0)
                totals = reply_body(reply, "worker_totals")
                peak = totals.peak_rss_mb
                self.final_checkpoint_error = totals.checkpoint_error
                self.checkpoint_health = totals.checkpoint
            except (LinkClosed, RemoteError, asyncio.TimeoutError, ValueError) as exc:
                log.error("training worker did not shut down cleanly: %s", exc)
        await self.kill(grace=WORKER_EXIT_TIMEOUT)
        return peak

    async def kill(self, grace: float = 0.0) -> None:
        if self._pump is not None:
            self._pump.cancel()
        process = self.process
        if process is not None and process.returncode is None:
            if grace:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(process.wait(), grace)
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self.link is not None:
            self.link.close()
        if self._reading is not None:
            with contextlib.suppress(BaseException):
                await self._reading

    # ------------------------------------------------------------------------------ requests
    async def _call(self, field: str, message: Any, timeout: float | None = None) -> worker_pb2.LinkFrame:
        if not self.alive:
            raise WorkerGone("the training worker is not running")
        assert self.link is not None
        try:
            return await self.link.call(field, message, timeout)
        except LinkClosed as exc:
            raise WorkerGone(f"the training worker went away: {exc}") from None

    async def check_settings(self, settings: FederationSettings) -> None:
        """ValueError saying what to change when a federation's settings cannot work."""
        try:
            await self._call("check_settings", settings.to_proto())
        except RemoteError as exc:
            raise ValueError(str(exc)) from None

    async def export_model(self, fmt: str) -> tuple[bytes, int, str]:
        """(file bytes, model version, metadata as JSON)."""
        try:
            reply = await self._call("export_model", worker_pb2.ModelRequest(format=fmt))
        except RemoteError as exc:
            raise ValueError(str(exc)) from None
        model = reply_body(reply, "model_bytes")
        return model.data, model.model_version, model.metadata_json

    async def member_key(self, peer_id: str) -> bytes | None:
        reply = await self._call("member_key", worker_pb2.PeerList(peers=[peer_id]))
        return reply_body(reply, "key").key or None

    async def session_state(self, timeout: float = 2.0) -> worker_pb2.SessionState:
        reply = await self._call("session_state", worker_pb2.Empty(), timeout)
        return reply_body(reply, "state")  # type: ignore[no-any-return]

    async def publish_revocation(self, revocation: membership_pb2.Revocation) -> None:
        await self._call("publish_revocation", revocation)

    async def run_session(self, start: worker_pb2.StartSession, mesh: Any,
                          validator_factory: Callable[[str], Any] | None,
                          on_started: Callable[[float], None] | None = None) -> worker_pb2.SessionEnded:
        """Run one session (alone when start.federation_id is empty) until it ends;
        `on_started(worker_rss_mb)` once it runs."""
        self.mesh = mesh
        self._validator_factory = validator_factory
        self._session_ended = asyncio.get_running_loop().create_future()
        if mesh is not None:
            self._send_mesh_info()
            if self._pump is None or self._pump.done():
                self._pump = asyncio.ensure_future(self._pump_events())
        try:
            try:
                reply = await self._call("start_session", start)
            except RemoteError:
                pass  # the worker reports why in SessionEnded
            else:
                if on_started is not None:
                    on_started(reply_body(reply, "worker_totals").rss_mb)
            return await self._session_ended
        finally:
            for topic in list(self._validators):
                self._validators.pop(topic, None)
                if mesh is not None:
                    with best_effort(log, f"unsubscribing from {topic}"):
                        await mesh.unsubscribe(topic)
            self._session_ended = None

    def stop_session(self, reason: str, linger: bool = False, finish: bool = False) -> None:
        """End the session (`finish`: the budget is reached, serve the final model until the next stop)."""
        if self.alive:
            assert self.link is not None
            with contextlib.suppress(LinkClosed):
                self.link.notify("stop_session", worker_pb2.StopSession(reason=reason, linger=linger, finish=finish))

    # ------------------------------------------------------------------------------ from the worker
    def _send_mesh_info(self) -> None:
        mesh = self.mesh
        if mesh is None or not self.alive:
            return
        assert self.link is not None
        with contextlib.suppress(LinkClosed):
            self.link.notify("mesh_info", worker_pb2.MeshInfo(
                listen_multiaddrs=mesh.listen_multiaddrs(), reachability=mesh.reachability().status,
                max_gossip_bytes=mesh.max_gossip_bytes))

    async def _pump_events(self) -> None:
        """The mesh's events -> the worker (gossip of the subscribed topics, peers, reachability)."""
        mesh = self.mesh
        while True:
            event = await mesh.events.get()
            kind = type(event).__name__
            if kind == "GossipMessage" and event.topic not in self._validators:
                continue
            if kind == "ReachabilityChanged":
                self._send_mesh_info()
            if self._session_ended is None or not self.alive:
                continue
            assert self.link is not None
            if self.link.buffered_bytes > MAX_UNREAD_EVENT_BYTES:
                self.events_dropped += 1
                if self.events_dropped == 1 or self.events_dropped % 1000 == 0:
                    log.warning("the training worker is not reading: %d mesh event(s) dropped", self.events_dropped)
                continue
            with contextlib.suppress(LinkClosed):
                self.link.notify("mesh_event", event_to_proto(event))

    def _refused(self, rejected: Any) -> None:
        """The daemon's validator refused a signed message (networking thread): tell the worker."""
        sender = getattr(rejected, "sender", None)
        if sender is None or not self.alive:
            return  # anonymous garbage is only counted by the mesh
        header = getattr(rejected, "header", None)
        refusal = worker_pb2.ValidatorRefusal(
            sender=sender, reason=rejected.reason, message=rejected.detail,
            update_header=header.SerializeToString() if header is not None else b"")
        self._loop.call_soon_threadsafe(functools.partial(self._notify_quietly, "refused", refusal))

    def _notify_quietly(self, field: str, message: Any) -> None:
        if self.alive:
            assert self.link is not None
            with contextlib.suppress(LinkClosed):
                self.link.notify(field, message)

    async def _handle(self, frame: worker_pb2.LinkFrame) -> Any:
        if self._dispatch is None:
            self._dispatch = table_handler(self.handlers(), "daemon")
        return await self._dispatch(frame)

    def handlers(self) -> dict[str, Callable[[worker_pb2.LinkFrame], Awaitable[Any]]]:
        """The daemon's side of the link RPC (``link.DAEMON_HANDLES``): body -> handler; a handler
        returns (reply body, message), or None for an Empty reply or a notification."""
        mesh = self._mesh_request
        return {
            "ready": self._on_ready,
            "failed": self._on_failed,
            "round_done": self._on_round_done,
            "runner_event": self._on_runner_event,
            "session_ended": self._on_session_ended,
            **{body: mesh for body in ("serve_blob", "unserve_blob", "subscribe", "publish", "push", "fetch_blob",
                                       "provide", "find_providers", "connect_peer", "put_record", "get_records")},
        }

    async def _on_ready(self, frame: worker_pb2.LinkFrame) -> None:
        if not self._ready.done():
            self._ready.set_result(frame.ready)

    async def _on_failed(self, frame: worker_pb2.LinkFrame) -> None:
        if not self._ready.done():
            self._ready.set_exception(WorkerError(frame.failed.message, frame.failed.exit_code))

    async def _on_round_done(self, frame: worker_pb2.LinkFrame) -> Any:
        return "round_verdict", await self.on_round(frame.round_done)

    async def _on_runner_event(self, frame: worker_pb2.LinkFrame) -> None:
        self.on_event(frame.runner_event)

    async def _on_session_ended(self, frame: worker_pb2.LinkFrame) -> None:
        if self._session_ended is not None and not self._session_ended.done():
            self._session_ended.set_result(frame.session_ended)

    async def _mesh_request(self, frame: worker_pb2.LinkFrame) -> Any:
        body = frame.WhichOneof("body")
        mesh = self.mesh
        if mesh is None:
            raise ValueError("this node has no mesh (it trains alone)")
        if body == "serve_blob":
            mesh.serve_blob(frame.serve_blob.content_id, frame.serve_blob.data)
            return None
        if body == "unserve_blob":
            mesh.unserve_blob(frame.unserve_blob.key)
            return None
        if body == "subscribe":
            topic = frame.subscribe.topic
            if self._validator_factory is None:
                raise ValueError("no validator for this session")
            validator = self._validator_factory(topic)
            validator.on_reject = self._refused
            self._validators[topic] = validator
            await mesh.subscribe(topic, validator.check)
            return None
        if body == "publish":
            await mesh.publish(frame.publish.topic, frame.publish.data)
            return None
        if body == "push":
            reached = await mesh.push(frame.push.topic, frame.push.data, list(frame.push.peers))
            return "peer_list", worker_pb2.PeerList(peers=reached)
        if body == "fetch_blob":
            request = frame.fetch_blob
            try:
                data = await mesh.fetch_blob(request.content_id, list(request.candidates),
                                             max_size=request.max_size or None)
            except Exception as exc:  # the worker raises the same exception type, from the kind
                raise HandlerError(f"{type(exc).__name__}: {exc}", error_kind(exc)) from None
            return "blob", worker_pb2.Blob(content_id=request.content_id, data=bytes(data))
        if body == "provide":
            await mesh.provide(frame.provide.key)
            return None
        if body == "find_providers":
            peers = await mesh.find_providers(frame.find_providers.key, frame.find_providers.count or 20)
            return "peer_list", worker_pb2.PeerList(peers=peers)
        if body == "connect_peer":
            await mesh.connect_peer(frame.connect_peer.peers[0])
            return None
        if body == "put_record":
            await mesh.put_record(frame.put_record.key, frame.put_record.value)
            return None
        if body == "get_records":
            values = await mesh.get_records(frame.get_records.key.decode())
            return "record_values", worker_pb2.RecordValues(values=values)
        raise ValueError(f"the daemon does not handle {body!r} from the worker")
