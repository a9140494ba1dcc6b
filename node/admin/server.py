"""The local admin API: `fednode.v1.AdminService` over gRPC, plus health checking and reflection.

Listeners:

* a Unix socket (`<state dir>/admin.sock` unless `admin.socket` names another path), always,
  mode 0600 (only the daemon's user can reach it) or 0660 (its group too, `admin.socket_mode`),
  so it needs no token;
* optionally a plaintext health-only TCP listener (`admin.health_listen`): `grpc.health.v1`
  and nothing else, for container probes that speak gRPC health but neither TLS nor Unix sockets;
* optionally TCP (`admin.listen`), only with TLS and a bearer token, unless the operator passes
  `--insecure` explicitly (allowed for development, and logged as a warning).

Health checking (`grpc.health.v1.Health`) reports NOT_SERVING while the daemon starts (the
socket is served first, so `status` can say what it is busy with), SERVING once it is ready,
and NOT_SERVING again while it stops; server reflection makes `grpcurl` work without .proto files. Both are served on
every listener without a token: they reveal no state.

The server only translates: every RPC calls the `AdminBackend` (the daemon), and an
`AdminError` becomes a gRPC status with a message that says what to do next.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fednode.node.admin.events import EventBus
from fednode.node.errors import ConfigError
from fednode.proto.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("fednode.admin")

SOCKET_NAME = "admin.sock"
SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AdminError(Exception):
    """A refused admin call: a gRPC status code and an actionable message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AdminBackend(Protocol):
    """What the daemon offers the admin API. Raise AdminError to refuse a call."""

    events: EventBus

    async def status(self) -> admin_pb2.NodeStatus: ...
    async def peers(self) -> list[admin_pb2.PeerStatus]: ...
    async def federations(self) -> list[admin_pb2.FederationStatus]: ...
    async def federation(self, federation_id: str) -> admin_pb2.FederationStatus: ...
    async def create_federation(self, request: admin_pb2.CreateFederationRequest) -> admin_pb2.FederationStatus: ...
    async def create_invite(self, request: admin_pb2.CreateInviteRequest) -> admin_pb2.CreateInviteResponse: ...
    async def join_federation(self, request: admin_pb2.JoinFederationRequest) -> admin_pb2.FederationStatus: ...
    async def leave_federation(self, request: admin_pb2.LeaveFederationRequest) -> None: ...
    async def revoke_member(self, request: admin_pb2.RevokeMemberRequest) -> admin_pb2.RevokeMemberResponse: ...
    async def export_model(self, request: admin_pb2.ExportModelRequest) -> tuple[bytes, int, str]: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class TcpListener:
    address: str  # host:port, port 0 = ephemeral
    certificate: bytes | None  # PEM certificate chain (TLS)
    private_key: bytes | None  # PEM private key (TLS)
    token: str | None  # bearer token clients must present
    insecure: bool = False  # allow no TLS and/or no token (development only)


class _TokenInterceptor(grpc.aio.ServerInterceptor):
    """Calls arriving over TCP must carry `authorization: Bearer <token>`; Unix-socket calls are
    authorised by the socket's file permissions."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if self._token is None or handler_call_details.method.startswith(_OPEN_METHODS):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        presented = str(metadata.get("authorization", ""))
        expected = f"Bearer {self._token}"
        authorised = hmac.compare_digest(presented.encode(), expected.encode())
        if authorised or handler is None:
            return handler
        return _wrap_with_peer_check(handler, expected)


def _wrap_with_peer_check(handler: grpc.RpcMethodHandler[Any, Any], expected: str) -> grpc.RpcMethodHandler[Any, Any]:
    """Unix-socket peers pass; others without the token get UNAUTHENTICATED.

    The peer address is known only inside the call (context.peer()), so the check wraps the
    handler instead of refusing in the interceptor.
    """

    async def refuse_unless_local(context: grpc.aio.ServicerContext) -> None:
        if not context.peer().startswith("unix:"):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong admin token; pass --token (or FEDNODE_ADMIN_TOKEN) with the daemon's admin token",
            )

    # The handlers are grpc.aio's coroutines; types-grpcio types RpcMethodHandler's as synchronous.
    if handler.unary_unary is not None:
        inner: Any = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse_unless_local(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, handler.request_deserializer, handler.response_serializer
        )
    inner_stream: Any = handler.unary_stream

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await refuse_unless_local(context)
        async for item in inner_stream(request, context):
            yield item

    return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)


class _Undecodable:
    """What a request that does not parse turns into (the handler then refuses it)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _RequestDecodeGuard(grpc.aio.ServerInterceptor):
    """A request that does not parse as its message type is refused with INVALID_ARGUMENT
    (gRPC's own handling answers UNKNOWN and logs a traceback)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # DecodeError, RuntimeError from the C parser, ...
                return _Undecodable(exc)

        async def refuse(context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request does not parse as {handler_call_details.method.rsplit('/', 1)[-1]}Request "
                                "(fednode.v1 admin.proto); check the client's protocol version")

        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary  # a grpc.aio coroutine (see _wrap_with_peer_check)

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, deserialize, handler.response_serializer)
        inner_stream: Any = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await refuse(context)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(stream, deserialize, handler.response_serializer)


class _Servicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, backend: AdminBackend) -> None:
        self.backend = backend

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[[], object]) -> object:
        try:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except AdminError as error:
            await context.abort(error.code, error.message)
        except ConfigError as error:  # a request the node's settings refuse (e.g. a federation's rule)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
        except Exception:
            log.exception("admin call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the daemon's log has the details")
        raise AssertionError("unreachable")

    async def GetStatus(self, request: Any, context: grpc.aio.ServicerContext):
        return await self._call(context, self.backend.status)

    async def ListPeers(self, request: Any, context: grpc.aio.ServicerContext):
        peers = await self._call(context, self.backend.peers)
        return admin_pb2.ListPeersResponse(peers=peers)  # type: ignore[arg-type]

    async def ListFederations(self, request: Any, context: grpc.aio.ServicerContext):
        federations = await self._call(context, self.backend.federations)
        return admin_pb2.ListFederationsResponse(federations=federations)  # type: ignore[arg-type]

    async def GetFederation(self, request: Any, context: grpc.aio.ServicerContext):
        return await self._call(context, lambda: self.backend.federation(request.federation_id))

    async def CreateFederation(self, request: Any, context: grpc.aio.ServicerContext):
        return await self._call(context, lambda: self.backend.create_federation(request))

    async def CreateInvite(self, request: Any, context: grpc.aio.ServicerContext):
        return await self._call(context, lambda: self.backend.create_invite(request))

    async def JoinFederation(self, request: Any, context: grpc.aio.ServicerContext):
        return await self._call(context, lambda: self.backend.join_federation(request))

    async def LeaveFederation(self, request: Any, context: grpc.aio.ServicerContext):
        await self._call(context, lambda: self.backend.leave_federation(request))
        return admin_pb2.LeaveFederationResponse()

    async def RevokeMember(self, request: Any, context: grpc.aio.ServicerContext):
        return await self._call(context, lambda: self.backend.revoke_member(request))

    async def WatchEvents(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.Event]:
        kinds = set(request.kinds)
        # Subscribe before reading the recent events: nothing published in between is lost
        # (publish runs on this event loop, so the two steps cannot interleave anyway).
        async with self.backend.events.subscribe() as queue:
            for event in self.backend.events.recent(request.tail, kinds):
                yield event
            if request.no_follow:
                return
            while True:
                live = await queue.get()
                if live is None:  # the daemon is stopping
                    return
                if not kinds or live.kind in kinds:
                    yield live

    async def ExportModel(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.ModelChunk]:
        import hashlib

        exported = await self._call(context, lambda: self.backend.export_model(request))
        assert isinstance(exported, tuple)
        data: bytes = exported[0]
        version: int = exported[1]
        metadata: str = exported[2]
        chunk = 1 << 20
        total = len(data)
        for offset in range(0, max(total, 1), chunk):
            piece = data[offset : offset + chunk]
            last = offset + chunk >= total
            yield admin_pb2.ModelChunk(
                offset=offset, data=piece, total_size=total, model_version=version,
                sha256=hashlib.sha256(data).digest() if last else b"",
                metadata_json=metadata if last else "",
            )

    async def Shutdown(self, request: Any, context: grpc.aio.ServicerContext):
        await self._call(context, self.backend.shutdown)
        return admin_pb2.ShutdownResponse()


class AdminServer:
    """Owns the grpc.aio server; `start()` binds, `stop()` drains and closes."""

    def __init__(self, backend: AdminBackend, state_dir: Path, tcp: TcpListener | None = None, *,
                 socket_path: Path | None = None, socket_mode: int = 0o600, health_listen: str = "") -> None:
        self.backend = backend
        self.socket_path = Path(socket_path) if socket_path else Path(state_dir) / SOCKET_NAME
        self.socket_mode = socket_mode
        self.tcp = tcp
        self.tcp_port: int | None = None
        self.health_listen = health_listen
        self.health_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()

    async def start(self) -> None:
        tcp = self.tcp
        if tcp is not None and not tcp.insecure and not (tcp.certificate and tcp.private_key and tcp.token):
            raise AdminError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "a TCP admin listener needs admin.tls_cert, admin.tls_key and admin.token_file "
                "(or --insecure for development)",
            )
        interceptors: list[grpc.aio.ServerInterceptor] = [_RequestDecodeGuard()]
        if tcp is not None and tcp.token:
            interceptors.insert(0, _TokenInterceptor(tcp.token))
        server = grpc.aio.server(interceptors=interceptors)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(_Servicer(self.backend), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket of a crashed daemon (we hold the state-dir lock)
        try:
            self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise AdminError(grpc.StatusCode.UNAVAILABLE,
                             f"cannot create the admin socket directory {self.socket_path.parent}: {exc.strerror}") from exc
        old_umask = os.umask(0o177)  # created 0600, then opened to the group if configured
        try:
            server.add_insecure_port(f"unix:{self.socket_path}")
        finally:
            os.umask(old_umask)
        if tcp is not None:
            if tcp.certificate and tcp.private_key:
                credentials = grpc.ssl_server_credentials([(tcp.private_key, tcp.certificate)])
                self.tcp_port = server.add_secure_port(tcp.address, credentials)
            else:
                log.warning("admin API listening on %s WITHOUT TLS (--insecure): do not use outside development", tcp.address)
                self.tcp_port = server.add_insecure_port(tcp.address)
            if not self.tcp_port:
                raise AdminError(grpc.StatusCode.UNAVAILABLE, f"cannot listen on admin.listen = {tcp.address}")
        await server.start()
        os.chmod(self.socket_path, self.socket_mode)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server = server
        if self.health_listen:
            await self._start_health_listener()
        log.info("admin API on unix:%s%s%s", self.socket_path, f" and TCP port {self.tcp_port}" if self.tcp_port else "",
                 f"; gRPC health on TCP port {self.health_port}" if self.health_port else "")

    async def _start_health_listener(self) -> None:
        """grpc.health.v1 only, plaintext: a probe learns SERVING / NOT_SERVING and nothing else."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            port = server.add_insecure_port(self.health_listen)
        except RuntimeError:
            port = 0
        if not port:
            await self.stop(grace=0)
            raise AdminError(grpc.StatusCode.UNAVAILABLE, f"cannot listen on admin.health_listen = {self.health_listen}")
        await server.start()
        self._health_server, self.health_port = server, port

    async def set_serving(self, serving: bool) -> None:
        """Health SERVING (the node is ready) or NOT_SERVING."""
        if self._server is not None:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING if serving
                                   else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            result = self._health.set(service, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is None:
            return
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.backend.events.close()
        await self._server.stop(grace)
        self._server = None
        if self._health_server is not None:
            await self._health_server.stop(grace)
            self._health_server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
