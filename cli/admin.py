"""CLI commands that talk to a running daemon through its admin API.

`fednode status`, `fednode peers`, `fednode stop`, `fednode federation create|list|show|invite|
join|leave|revoke`, `fednode model export`. By default they reach the daemon of the state dir
(`--state-dir`, or the config's) over its Unix socket; `--admin HOST:PORT --token T [--tls-ca F]`
reaches a remote listener. Every command takes `--format json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from fednode.node.errors import ExitCode, FednodeError
from fednode.proto.v1 import admin_pb2, admin_pb2_grpc

out = Console()
err = Console(stderr=True)
T = TypeVar("T")

federation_app = typer.Typer(help="Create, join and manage federations.", no_args_is_help=True)
model_app = typer.Typer(help="Export the current model.", no_args_is_help=True)

StateDirOption = Annotated[Path | None, typer.Option("--state-dir", help="state dir of the daemon to talk to")]
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="config file (to find the state dir)")]
AdminOption = Annotated[
    str | None, typer.Option("--admin", help="HOST:PORT of a remote admin listener (default: the local Unix socket)")
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="FEDNODE_ADMIN_TOKEN", help="admin token for a remote listener")
]
TlsCaOption = Annotated[Path | None, typer.Option("--tls-ca", help="CA certificate (PEM) of a remote listener")]
FormatOption = Annotated[str, typer.Option("--format", help="human or json")]


class AdminTarget:
    def __init__(self, config: Path | None, state_dir: Path | None, admin: str | None, token: str | None,
                 tls_ca: Path | None) -> None:
        self.config, self.state_dir, self.admin, self.token, self.tls_ca = config, state_dir, admin, token, tls_ca

    def address(self) -> str:
        if self.admin:
            return self.admin
        from fednode.node.admin import SOCKET_NAME
        from fednode.node.config import load_config

        overrides = {"node.state_dir": str(self.state_dir)} if self.state_dir else {}
        environ = {k: v for k, v in os.environ.items() if k in ("FEDNODE_CONFIG", "FEDNODE_NODE_STATE_DIR",
                                                                    "XDG_DATA_HOME", "XDG_CONFIG_HOME", "HOME")}
        config, _ = load_config(self.config, overrides, environ=environ)
        return f"unix:{config.resolved_state_dir() / SOCKET_NAME}"

    @contextmanager
    def stub(self) -> Iterator[admin_pb2_grpc.AdminServiceStub]:
        address = self.address()
        if address.startswith("unix:") and not Path(address[5:]).exists():
            raise NoDaemon(f"no daemon is running for {Path(address[5:]).parent} (no {Path(address[5:]).name}); "
                           f"start one with `fednode start --state-dir {Path(address[5:]).parent}`")
        if self.tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.tls_ca.read_bytes())
            channel = grpc.secure_channel(address, credentials)
        else:
            channel = grpc.insecure_channel(address)
        with channel:
            yield admin_pb2_grpc.AdminServiceStub(channel)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


class NoDaemon(FednodeError):
    exit_code = ExitCode.NO_DAEMON


class RequestFailed(FednodeError):
    exit_code = ExitCode.REQUEST_FAILED


def call(target: AdminTarget, method: Callable[[admin_pb2_grpc.AdminServiceStub], Callable[..., T]],
         request: Message, timeout: float = 30.0) -> T:
    """One unary call with error mapping: no daemon -> exit 8, refused -> exit 9."""
    with target.stub() as stub:
        try:
            return method(stub)(request, timeout=timeout, metadata=target.metadata())
        except grpc.RpcError as error:
            raise _translate(error, target) from None


def _translate(error: grpc.RpcError, target: AdminTarget) -> FednodeError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    # gRPC's own connection failures, as opposed to a daemon answering UNAVAILABLE itself.
    unreachable = "failed to connect" in (details or "").lower() or "connection refused" in (details or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE and unreachable:
        where = target.address()
        return NoDaemon(f"no daemon answers at {where} ({details}); is `fednode start` running?")
    name = code.name if code is not None else "ERROR"
    return RequestFailed(f"{name.lower()}: {details}")


def fail(error: FednodeError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {error.message}", highlight=False, soft_wrap=True)
    return typer.Exit(int(error.exit_code))


def to_dict(message: Message) -> dict[str, Any]:
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _hexify(message, data)


def _hexify(message: Message, data: dict[str, Any]) -> dict[str, Any]:
    """bytes fields as hex (ids, keys, hashes) instead of MessageToDict's base64."""
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.type == field.TYPE_BYTES and field.label != field.LABEL_REPEATED:
            data[field.name] = bytes(value).hex()
        elif field.type == field.TYPE_MESSAGE and field.label == field.LABEL_REPEATED and field.name in data:
            data[field.name] = [_hexify(item, part) for item, part in zip(value, data[field.name], strict=True)]
        elif field.type == field.TYPE_MESSAGE and field.label != field.LABEL_REPEATED and message.HasField(field.name):
            data[field.name] = _hexify(value, data.get(field.name, {}))
    return data


def emit(output: str, data: Any, human: Callable[[], None]) -> None:
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        human()


def _target(config: Path | None, state_dir: Path | None, admin: str | None, token: str | None,
            tls_ca: Path | None) -> AdminTarget:
    return AdminTarget(config, state_dir, admin, token, tls_ca)


# ---------------------------------------------------------------------------------- top level
def status(config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
           token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human") -> None:
    """Show the daemon's state: peer id, addresses, reachability, round, accuracy, federations."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.GetStatus, admin_pb2.GetStatusRequest())
    except FednodeError as error:
        raise fail(error) from None

    def human() -> None:
        table = Table(show_header=False, box=None)
        for key, value in (
            ("peer id", reply.peer_id), ("state", reply.state), ("version", reply.version),
            ("uptime", f"{reply.uptime_seconds} s"), ("device", reply.device), ("task", reply.task),
            ("round", str(reply.round)), ("model version", str(reply.model_version)),
            ("accuracy", f"{reply.accuracy:.4f}"), ("connected peers", str(reply.connected_peers)),
            ("reachability", reply.reachability), ("federations", ", ".join(reply.federations) or "-"),
            ("listening on", "\n".join(reply.listen_multiaddrs) or "-"), ("state dir", reply.state_dir),
        ):
            table.add_row(f"[bold]{key}[/]", value)
        out.print(table)

    emit(output, to_dict(reply), human)


def peers(config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
          token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human") -> None:
    """List connected peers: connection type (direct, relayed, hole-punched), latency, reputation."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.ListPeers, admin_pb2.ListPeersRequest())
    except FednodeError as error:
        raise fail(error) from None

    def human() -> None:
        table = Table("peer", "connection", "latency", "reputation", "model", "name", "address")
        for peer in reply.peers:
            table.add_row(peer.peer_id, peer.connection, f"{peer.latency_ms:.1f} ms" if peer.latency_ms >= 0 else "-",
                          f"{peer.reputation:.2f}", str(peer.model_version), peer.display_name or "-",
                          peer.multiaddrs[0] if peer.multiaddrs else "-")
        out.print(table if reply.peers else "no connected peers")

    emit(output, to_dict(reply)["peers"] if reply.peers else [], human)


def stop(config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
         token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human") -> None:
    """Stop the daemon gracefully (final checkpoint), like SIGTERM."""
    try:
        call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.Shutdown, admin_pb2.ShutdownRequest())
    except FednodeError as error:
        raise fail(error) from None
    emit(output, {"stopping": True}, lambda: out.print("the daemon is stopping"))


# ---------------------------------------------------------------------------------- federation
def _federation_table(federations: list[admin_pb2.FederationStatus]) -> Table:
    table = Table("federation id", "name", "role", "schedule", "aggregator", "round", "model", "participants")
    for fed in federations:
        d = fed.descriptor
        table.add_row(d.federation_id[:16] + "…", d.name or "-", fed.role, d.schedule, d.aggregator,
                      str(fed.round), str(fed.model_version), str(len(fed.participants)))
    return table


def _outer_request(name: str, lr: float, config: Path | None) -> Any:
    """--outer/--outer-lr with the momentum, betas and epsilon of the local config."""
    from fednode.node.config import load_config
    from fednode.node.errors import ConfigError
    from fednode.node.federation.outer_config import OuterConfig, config_to_proto

    try:
        section = load_config(config)[0].aggregation
        return config_to_proto(OuterConfig.build(name, lr=lr, momentum=section.outer_momentum,
                                                 betas=section.outer_betas, epsilon=section.outer_epsilon))
    except ValueError as error:
        raise fail(ConfigError(f"--outer: {error}")) from None
    except FednodeError as error:
        raise fail(error) from None


@federation_app.command("create")
def federation_create(
    name: Annotated[str, typer.Argument(help="a label for the federation")],
    aggregator: Annotated[str, typer.Option("--aggregator", help="rule name (default: the daemon's)")] = "",
    aggregator_params: Annotated[str, typer.Option("--aggregator-params", help="JSON object of rule parameters")] = "",
    schedule: Annotated[str, typer.Option("--schedule", help="sync or fedcompass (default: the daemon's)")] = "",
    min_participants: Annotated[int, typer.Option("--min-participants", min=0)] = 0,
    codec: Annotated[str, typer.Option("--codec", help="update codec (default: the daemon's)")] = "",
    private: Annotated[bool, typer.Option("--private/--public", help="relays serve members only")] = True,
    outer: Annotated[str, typer.Option(
        "--outer", help="outer optimizer: sgd, momentum, nesterov, adam, yogi, adagrad (default: the daemon's)")] = "",
    outer_lr: Annotated[float, typer.Option("--outer-lr", min=0, help="outer learning rate; 0 = the optimizer's default")] = 0.0,
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human",
) -> None:
    """Create a federation; this daemon holds its key and starts training in it."""
    request = admin_pb2.CreateFederationRequest(
        name=name, aggregator=aggregator, aggregator_params_json=aggregator_params, schedule=schedule,
        min_participants=min_participants, codec=codec, private=private,
    )
    if outer:  # the other outer_* hyperparameters: the daemon's aggregation.outer_* settings
        request.outer.CopyFrom(_outer_request(outer, outer_lr, config))
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.CreateFederation, request)
    except FednodeError as error:
        raise fail(error) from None
    emit(output, to_dict(reply), lambda: out.print(
        f"created federation {reply.descriptor.name!r}: {reply.descriptor.federation_id}\n"
        f"invite members with: fednode federation invite {reply.descriptor.federation_id[:16]}", highlight=False))


@federation_app.command("list")
def federation_list(config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
                    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human") -> None:
    """Federations this daemon belongs to."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.ListFederations,
                     admin_pb2.ListFederationsRequest())
    except FednodeError as error:
        raise fail(error) from None
    emit(output, [to_dict(f) for f in reply.federations],
         lambda: out.print(_federation_table(list(reply.federations)) if reply.federations else "no federations"))


@federation_app.command("show")
def federation_show(
    federation_id: Annotated[str, typer.Argument(help="federation id or a unique prefix (>= 8 characters)")],
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human",
) -> None:
    """Details of one federation: round, model version, participants, aggregator, schedule."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.GetFederation,
                     admin_pb2.GetFederationRequest(federation_id=federation_id))
    except FednodeError as error:
        raise fail(error) from None

    def human() -> None:
        out.print(_federation_table([reply]))
        if reply.participants:
            out.print("participants: " + ", ".join(reply.participants), highlight=False)

    emit(output, to_dict(reply), human)


@federation_app.command("invite")
def federation_invite(
    federation_id: Annotated[str, typer.Argument(help="federation id or a unique prefix")],
    ttl: Annotated[int, typer.Option("--ttl", min=0, help="seconds the invite stays valid (0 = 24 h)")] = 0,
    uses: Annotated[int, typer.Option("--uses", min=0, help="how many joins it admits (0 = unlimited until expiry)")] = 1,
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human",
) -> None:
    """Issue an invite token; the joiner runs `fednode federation join TOKEN`."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.CreateInvite,
                     admin_pb2.CreateInviteRequest(federation_id=federation_id, ttl_seconds=ttl, max_uses=uses))
    except FednodeError as error:
        raise fail(error) from None
    emit(output, to_dict(reply), lambda: out.print(reply.token, highlight=False, soft_wrap=True))


@federation_app.command("join")
def federation_join(
    invite_token: Annotated[str, typer.Argument(help="the token from `fednode federation invite`")],
    name: Annotated[str, typer.Option("--name", help="label other members see")] = "",
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human",
) -> None:
    """Redeem an invite: the issuer answers with a member certificate; training starts."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.JoinFederation,
                     admin_pb2.JoinFederationRequest(token=invite_token, display_name=name), timeout=90)
    except FednodeError as error:
        raise fail(error) from None
    emit(output, to_dict(reply), lambda: out.print(
        f"joined federation {reply.descriptor.name!r} ({reply.descriptor.federation_id})", highlight=False))


@federation_app.command("leave")
def federation_leave(
    federation_id: Annotated[str, typer.Argument(help="federation id or a unique prefix")],
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human",
) -> None:
    """Leave gracefully: announce the departure and stop contributing."""
    try:
        call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.LeaveFederation,
             admin_pb2.LeaveFederationRequest(federation_id=federation_id))
    except FednodeError as error:
        raise fail(error) from None
    emit(output, {"left": federation_id}, lambda: out.print(f"left federation {federation_id}", highlight=False))


@federation_app.command("revoke")
def federation_revoke(
    federation_id: Annotated[str, typer.Argument(help="federation id or a unique prefix")],
    peer_id: Annotated[str, typer.Argument(help="peer id of the member to revoke")],
    reason: Annotated[str, typer.Option("--reason", help="recorded in the revocation")] = "",
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human",
) -> None:
    """Revoke a member (needs the federation key); the revocation spreads through the mesh."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.RevokeMember,
                     admin_pb2.RevokeMemberRequest(federation_id=federation_id, peer_id=peer_id, reason=reason))
    except FednodeError as error:
        raise fail(error) from None
    emit(output, to_dict(reply), lambda: out.print(f"revoked {peer_id}", highlight=False))


# ---------------------------------------------------------------------------------- model
@model_app.command("export")
def model_export(
    path: Annotated[Path, typer.Argument(help="file to write (torch state_dict by default)")],
    federation_id: Annotated[str, typer.Option("--federation", help="federation (default: the current model)")] = "",
    raw: Annotated[bool, typer.Option("--raw", help="write the TensorPayload protobuf instead of a .pt file")] = False,
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = "human",
) -> None:
    """Stream the current model to a file, sha256-verified."""
    from fednode.node.durable import atomic_write_bytes

    target = _target(config, state_dir, admin, token, tls_ca)
    request = admin_pb2.ExportModelRequest(federation_id=federation_id, format="raw" if raw else "pt")
    data = bytearray()
    digest = b""
    version = 0
    try:
        with target.stub() as stub:
            try:
                for chunk in stub.ExportModel(request, timeout=300, metadata=target.metadata()):
                    if chunk.offset != len(data):
                        raise RequestFailed(f"export stream out of order at byte {chunk.offset}; retry")
                    data += chunk.data
                    version = chunk.model_version
                    if chunk.sha256:
                        digest = bytes(chunk.sha256)
            except grpc.RpcError as error:
                raise _translate(error, target) from None
        if hashlib.sha256(data).digest() != digest:
            raise RequestFailed("the exported model does not match its sha256; retry the export")
        atomic_write_bytes(path, bytes(data), mode=0o644)
    except FednodeError as error:
        raise fail(error) from None
    info = {"path": str(path), "bytes": len(data), "sha256": digest.hex(), "model_version": version}
    emit(output, info, lambda: out.print(f"wrote {path} ({len(data)} bytes, model version {version})", highlight=False))


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(peers)
    app.command()(stop)
    app.add_typer(federation_app, name="federation")
    app.add_typer(model_app, name="model")
