"""CLI commands that talk to a running daemon through its admin API.

`fednode status`, `fednode peers`, `fednode stop`, `fednode federation create|list|show|invite|
join|leave|revoke`, `fednode model export`. By default they reach the daemon of the state dir
(`--state-dir`, or the config's) over its Unix socket; `--admin HOST:PORT --token T [--tls-ca F]`
reaches a remote listener. Every command takes `--format json`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf.message import Message
from rich.markup import escape
from rich.table import Table

from fednode.cli.output import OutputFormat, emit, fail, hint, out, proto_to_dict
from fednode.cli.values import parse_table, parse_until
from fednode.node.errors import ConfigError, ExitCode, FednodeError
from fednode.proto.v1 import admin_pb2, admin_pb2_grpc

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
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="human or json")]


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
                                                                    "FEDNODE_ADMIN_SOCKET", "XDG_DATA_HOME",
                                                                    "XDG_CONFIG_HOME", "HOME")}
        config, _ = load_config(self.config, overrides, environ=environ)
        return f"unix:{config.admin.socket or config.resolved_state_dir() / SOCKET_NAME}"

    @contextmanager
    def stub(self) -> Iterator[admin_pb2_grpc.AdminServiceStub]:
        address = self.address()
        if address.startswith("unix:") and not Path(address[5:]).exists():
            directory = Path(address[5:]).parent
            raise NoDaemon(f"no daemon is running for {directory} (no {Path(address[5:]).name}); "
                           f"start one with `{hint('start', state_dir=directory, config=self.config)}`")
        if self.tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.tls_ca.read_bytes())
            channel = grpc.secure_channel(address, credentials)
        else:
            channel = grpc.insecure_channel(address)
        with channel:
            yield admin_pb2_grpc.AdminServiceStub(channel)

    def lock_released(self) -> bool:
        """True unless a daemon holds the state dir's lock (a remote daemon: True, unknowable)."""
        address = self.address()
        if not address.startswith("unix:"):
            return True
        from fednode.node.daemon import LOCK_FILE

        try:
            with open(Path(address[5:]).parent / LOCK_FILE, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


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


def _target(config: Path | None, state_dir: Path | None, admin: str | None, token: str | None,
            tls_ca: Path | None) -> AdminTarget:
    return AdminTarget(config, state_dir, admin, token, tls_ca)


def _hint(command: str, config: Path | None, state_dir: Path | None) -> str:
    return hint(command, state_dir=state_dir, config=config)


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


# ---------------------------------------------------------------------------------- top level
def status(config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
           token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
           wait: Annotated[bool, typer.Option(
               "--wait", help="wait until the daemon answers and is ready (not starting), up to --timeout")] = False,
           states: Annotated[list[str] | None, typer.Option(
               "--state", help="with --wait: wait for this state (training, finished, idle, ...); repeatable")] = None,
           timeout: Annotated[float, typer.Option("--timeout", min=0, help="seconds --wait waits at most")] = 120.0,
           ) -> None:
    """Show the daemon's state: starting (and its phase), training, finished, idle; peer id,
    addresses, reachability, round, accuracy, federations."""
    target = _target(config, state_dir, admin, token, tls_ca)
    try:
        if states and not wait:
            raise ConfigError("--state is what --wait waits for: give --wait too")
        reply = (_wait_ready(target, timeout, set(states or ())) if wait
                 else call(target, lambda s: s.GetStatus, admin_pb2.GetStatusRequest()))
    except FednodeError as error:
        raise fail(error) from None

    def human() -> None:
        rows = Table(show_header=False, box=None)
        rows.add_column(no_wrap=True)
        rows.add_column(overflow="fold")
        state = f"{reply.state} ({reply.phase})" if reply.phase else reply.state
        for key, value in (
            ("peer id", reply.peer_id), ("state", state), ("role", reply.role or "member"),
            ("version", reply.version), ("uptime", f"{reply.uptime_seconds} s"), ("device", reply.device or "-"),
            ("task", reply.task or "-"), ("round", str(reply.round)), ("model version", str(reply.model_version)),
            ("accuracy", _number(reply.accuracy)), ("connected peers", str(reply.connected_peers)),
            ("reachability", reply.reachability), ("federations", "\n".join(reply.federations) or "-"),
            ("listening on", "\n".join(reply.listen_multiaddrs) or "-"), ("state dir", reply.state_dir),
            ("checkpoint", f"[bold red]FAILING[/] ({reply.checkpoint_failures} in a row): {reply.checkpoint_error}"
             if reply.checkpoint_error else (f"round {reply.checkpoint_round}" if reply.checkpoint_round >= 0 else "-")),
            ("training", _training_processes(reply)),
        ):
            rows.add_row(f"[bold]{key}[/]", escape(value))
        out.print(rows)

    emit(output, proto_to_dict(reply), human)


def _training_processes(reply: admin_pb2.NodeStatus) -> str:
    """"1 process", or "N processes" and one line per rank (torch.distributed job)."""
    size = reply.world_size or 1
    if size == 1:
        return "1 process"
    lines = [f"{size} processes (torch.distributed)"]
    for rank in reply.ranks:
        beat = f", heartbeat {rank.heartbeat_age_seconds:.0f} s ago" if rank.rank and rank.heartbeat_age_seconds >= 0 else ""
        lines.append(f"rank {rank.rank}: {rank.state} on {rank.host or '?'} pid {rank.pid or '?'}, "
                     f"{rank.rounds} round(s){beat}")
    return "\n".join(lines)


def _wait_ready(target: AdminTarget, timeout: float, states: set[str]) -> admin_pb2.NodeStatus:
    """Poll until the daemon answers with a ready state (one of `states` when given); NoDaemon /
    RequestFailed after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = call(target, lambda s: s.GetStatus, admin_pb2.GetStatusRequest(), timeout=10)
            if reply.state in states if states else (reply.ready or reply.state not in ("starting", "")):
                return reply
            if reply.state == "stopping":
                deadline = 0.0  # it will not get there: say so now
            wanted = " or ".join(sorted(states)) or "ready"
            why: FednodeError = RequestFailed(f"the daemon is {reply.state}{f' ({reply.phase})' if reply.phase else ''}"
                                              f", not {wanted}, after waiting {timeout:.0f} s")
        except NoDaemon as error:
            why = error
        except RequestFailed as error:  # e.g. a deadline while the daemon is busy starting
            why = error
        if time.monotonic() >= deadline:
            raise why
        time.sleep(0.2)


def peers(config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
          token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human) -> None:
    """List connected peers: connection type (direct, relayed, hole-punched), latency, reputation."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.ListPeers, admin_pb2.ListPeersRequest())
    except FednodeError as error:
        raise fail(error) from None
    rows = [proto_to_dict(peer) for peer in reply.peers]

    def human() -> None:
        """One block per peer: a summary line, then every address on a line of its own."""
        if not rows:
            out.print("no connected peers")
        for peer in rows:
            latency = peer["latency_ms"]
            out.print(f"{peer['peer_id']}  {peer['connection']}  "
                      f"{f'{latency:.1f} ms' if latency is not None and latency >= 0 else '-'}  "
                      f"reputation {_number(peer['reputation'], 2)}  model {peer['model_version']}  "
                      f"{peer['display_name'] or '-'}", highlight=False, markup=False, soft_wrap=True)
            for address in peer["multiaddrs"]:
                out.print(f"  {address}", highlight=False, markup=False, soft_wrap=True)

    emit(output, rows, human)


def stop(config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
         token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
         wait: Annotated[bool, typer.Option("--wait", help="return once the daemon has exited (up to --timeout)")] = False,
         timeout: Annotated[float, typer.Option("--timeout", min=0, help="seconds --wait waits at most")] = 60.0,
         ) -> None:
    """Stop the daemon gracefully (final checkpoint), like SIGTERM."""
    target = _target(config, state_dir, admin, token, tls_ca)
    try:
        call(target, lambda s: s.Shutdown, admin_pb2.ShutdownRequest())
        if wait:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    call(target, lambda s: s.GetStatus, admin_pb2.GetStatusRequest(), timeout=5)
                except NoDaemon:
                    if target.lock_released():  # its last act: the state dir is free for a new start
                        break
                except RequestFailed:
                    pass  # busy stopping
                if time.monotonic() >= deadline:
                    raise RequestFailed(f"the daemon did not exit within {timeout:.0f} s; it is forced out after "
                                        "node.shutdown_timeout")
                time.sleep(0.2)
    except FednodeError as error:
        raise fail(error) from None
    emit(output, {"stopping": not wait, "stopped": wait},
         lambda: out.print("the daemon has stopped" if wait else "the daemon is stopping"))


# ---------------------------------------------------------------------------------- federation
def _federation_rows(federations: list[admin_pb2.FederationStatus]) -> list[dict[str, Any]]:
    """What `federation list/show` print, as JSON and as the table's source (they agree)."""
    rows = []
    for fed in federations:
        row = proto_to_dict(fed)
        descriptor = row["descriptor"] or {}
        row["state"] = "finished" if fed.finished else ("training" if fed.round or fed.participants else "-")
        row["budget"] = {"max_rounds": descriptor.get("max_rounds", 0), "target_accuracy": descriptor.get("target_accuracy", 0.0),
                         "until_unix_ms": descriptor.get("until_unix_ms", 0)}
        rows.append(row)
    return rows


def _budget_text(budget: dict[str, Any]) -> str:
    parts = []
    if budget["max_rounds"]:
        parts.append(f"{budget['max_rounds']} rounds")
    if budget["target_accuracy"]:
        parts.append(f"accuracy {budget['target_accuracy']:g}")
    if budget["until_unix_ms"]:
        parts.append("until " + time.strftime("%Y-%m-%d %H:%M", time.localtime(budget["until_unix_ms"] / 1000)))
    return ", ".join(parts) or "-"


def _print_federations(rows: list[dict[str, Any]]) -> None:
    """Two lines per federation, never cut: the id prefix (every command accepts it; the full id
    is in `federation show` and --format json), name, role, state, round, members; then rule,
    schedule and budget."""
    for row in rows:
        d = row["descriptor"] or {}
        state = row["state"] + (f" ({row['finished_reason']})" if row.get("finished_reason") else "")
        out.print(f"{d.get('federation_id', '')[:16]}  {d.get('name', '') or '-'}  {row['role']}  {state}  "
                  f"round {row['round']}  members {len(row['participants'])}",
                  highlight=False, markup=False, soft_wrap=True)
        out.print(f"  rule {d.get('aggregator', '')}  schedule {d.get('schedule', '')}  "
                  f"min participants {d.get('min_participants', '')}  budget {_budget_text(row['budget'])}",
                  highlight=False, markup=False, soft_wrap=True)


def _federation_details(row: dict[str, Any]) -> Table:
    """`federation show`: one field per line, full values (ids and peer ids fold, never cut)."""
    d = row["descriptor"] or {}
    rows = Table(show_header=False, box=None)
    rows.add_column(no_wrap=True)
    rows.add_column(overflow="fold")
    for key, value in (
        ("federation id", d.get("federation_id", "")), ("name", d.get("name", "")), ("role", row["role"]),
        ("state", row["state"] + (f" ({row['finished_reason']})" if row.get("finished_reason") else "")),
        ("round", str(row["round"])), ("model version", str(row["model_version"])),
        ("rule", f"{d.get('aggregator', '')} {d.get('aggregator_params_json', '')}"),
        ("schedule", d.get("schedule", "")), ("exchange", d.get("exchange", "") or "node setting"),
        ("min participants", str(d.get("min_participants", ""))),
        ("codec", d.get("codec", "")), ("private", str(d.get("private", ""))), ("budget", _budget_text(row["budget"])),
        ("participants", "\n".join(row["participants"]) or "-"),
    ):
        rows.add_row(f"[bold]{key}[/]", escape(str(value)))
    return rows


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
    rule: Annotated[str, typer.Option("--rule", help="aggregation rule, e.g. mean, multi_krum, gas (default: the daemon's)")] = "",
    f: Annotated[int | None, typer.Option("--f", min=0, help="Byzantine members the rule tolerates")] = None,
    rule_params: Annotated[str, typer.Option(
        "--rule-params", help="TOML table of rule parameters, e.g. 'base = \"krum\", p = 10'")] = "",
    rounds: Annotated[int, typer.Option("--rounds", min=0, help="budget: members finish after this round")] = 0,
    target_accuracy: Annotated[float, typer.Option(
        "--target-accuracy", min=0, max=1, help="budget: members finish at this test accuracy")] = 0.0,
    until: Annotated[str, typer.Option(
        "--until", help="budget: members finish at this time (2026-07-01T18:00, or a duration: 90m, 2h, 1d)")] = "",
    schedule: Annotated[str, typer.Option("--schedule", help="sync or fedcompass (default: the daemon's)")] = "",
    min_participants: Annotated[int, typer.Option(
        "--min-participants", min=0, help="updates a round needs (default: the daemon's)")] = 0,
    codec: Annotated[str, typer.Option("--codec", help="update codec (default: the daemon's)")] = "",
    exchange: Annotated[str, typer.Option(
        "--exchange", help="all_to_all or butterfly: how a sync round's updates travel (default: the daemon's)")] = "",
    private: Annotated[bool, typer.Option("--private/--public", help="relays serve members only")] = True,
    outer: Annotated[str, typer.Option(
        "--outer", help="outer optimizer: sgd, momentum, nesterov, adam, yogi, adagrad (default: the daemon's)")] = "",
    outer_lr: Annotated[float, typer.Option("--outer-lr", min=0, help="outer learning rate; 0 = the optimizer's default")] = 0.0,
    aggregator: Annotated[str, typer.Option("--aggregator", hidden=True)] = "",
    aggregator_params: Annotated[str, typer.Option("--aggregator-params", hidden=True)] = "",
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
) -> None:
    """Create a federation; this daemon holds its key and starts training in it.

    Its settings and budget are signed into its descriptor: every member trains with them."""
    try:
        if aggregator and rule and aggregator != rule:
            raise ConfigError("--aggregator is the old name of --rule; give one of them")
        rule = rule or aggregator
        params = parse_table("--rule-params", rule_params or aggregator_params)
        if f is not None:
            params["f"] = f
        params_json = json.dumps({"f": 0, **params}, sort_keys=True) if (rule or params) else ""
        request = admin_pb2.CreateFederationRequest(
            name=name, aggregator=rule, aggregator_params_json=params_json, schedule=schedule,
            min_participants=min_participants, codec=codec, private=private, max_rounds=rounds,
            target_accuracy=target_accuracy, until_unix_ms=parse_until("--until", until) if until else 0,
            exchange=exchange,
        )
        if outer:  # the other outer_* hyperparameters: the daemon's aggregation.outer_* settings
            request.outer.CopyFrom(_outer_request(outer, outer_lr, config))
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.CreateFederation, request, timeout=90)
    except FednodeError as error:
        raise fail(error) from None
    descriptor = reply.descriptor
    emit(output, _federation_rows([reply])[0], lambda: out.print(
        f"created federation {descriptor.name!r}: {descriptor.federation_id}\n"
        f"invite members with: {_hint(f'federation invite {descriptor.federation_id[:16]}', config, state_dir)}",
        highlight=False, markup=False, soft_wrap=True))


@federation_app.command("list")
def federation_list(config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
                    token: TokenOption = None, tls_ca: TlsCaOption = None,
                    output: FormatOption = OutputFormat.human) -> None:
    """Federations this daemon belongs to."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.ListFederations,
                     admin_pb2.ListFederationsRequest())
    except FednodeError as error:
        raise fail(error) from None
    rows = _federation_rows(list(reply.federations))
    emit(output, rows, lambda: _print_federations(rows) if rows else out.print("no federations"))


@federation_app.command("show")
def federation_show(
    federation_id: Annotated[str, typer.Argument(help="federation id, a unique prefix (>= 8 characters) or its name")],
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
) -> None:
    """Details of one federation: round, model version, participants, aggregator, schedule, budget."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.GetFederation,
                     admin_pb2.GetFederationRequest(federation_id=federation_id))
    except FednodeError as error:
        raise fail(error) from None
    row = _federation_rows([reply])[0]

    emit(output, row, lambda: out.print(_federation_details(row)))


@federation_app.command("invite")
def federation_invite(
    federation_id: Annotated[str, typer.Argument(help="federation id, a unique prefix or its name")],
    ttl: Annotated[int, typer.Option("--ttl", min=0, help="seconds the invite stays valid (0 = 24 h)")] = 0,
    uses: Annotated[int, typer.Option("--uses", min=0, help="how many joins it admits (0 = unlimited until expiry)")] = 1,
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
) -> None:
    """Issue an invite token (printed alone on stdout); the joiner runs `fednode federation join TOKEN`."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.CreateInvite,
                     admin_pb2.CreateInviteRequest(federation_id=federation_id, ttl_seconds=ttl, max_uses=uses))
    except FednodeError as error:
        raise fail(error) from None
    emit(output, proto_to_dict(reply), lambda: out.print(reply.token, highlight=False, markup=False, soft_wrap=True))


@federation_app.command("join")
def federation_join(
    invite_token: Annotated[str, typer.Argument(help="the token from `fednode federation invite`")],
    name: Annotated[str, typer.Option("--name", help="label other members see")] = "",
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
) -> None:
    """Redeem an invite: the issuer answers with a member certificate; training starts."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.JoinFederation,
                     admin_pb2.JoinFederationRequest(token=invite_token, display_name=name), timeout=90)
    except FednodeError as error:
        raise fail(error) from None
    emit(output, _federation_rows([reply])[0], lambda: out.print(
        f"joined federation {reply.descriptor.name!r} ({reply.descriptor.federation_id})\n"
        f"follow it with: {_hint(f'federation show {reply.descriptor.federation_id[:16]}', config, state_dir)}",
        highlight=False, markup=False, soft_wrap=True))


@federation_app.command("leave")
def federation_leave(
    federation_id: Annotated[str, typer.Argument(help="federation id, a unique prefix or its name")],
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
) -> None:
    """Leave gracefully: announce the departure and stop contributing."""
    try:
        call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.LeaveFederation,
             admin_pb2.LeaveFederationRequest(federation_id=federation_id))
    except FednodeError as error:
        raise fail(error) from None
    emit(output, {"left": federation_id}, lambda: out.print(f"left federation {federation_id}", highlight=False,
                                                            markup=False))


@federation_app.command("revoke")
def federation_revoke(
    federation_id: Annotated[str, typer.Argument(help="federation id, a unique prefix or its name")],
    peer_id: Annotated[str, typer.Argument(help="peer id of the member to revoke")],
    reason: Annotated[str, typer.Option("--reason", help="recorded in the revocation")] = "",
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
) -> None:
    """Revoke a member (needs the federation key); the revocation spreads through the mesh."""
    try:
        reply = call(_target(config, state_dir, admin, token, tls_ca), lambda s: s.RevokeMember,
                     admin_pb2.RevokeMemberRequest(federation_id=federation_id, peer_id=peer_id, reason=reason))
    except FednodeError as error:
        raise fail(error) from None
    emit(output, proto_to_dict(reply), lambda: out.print(f"revoked {peer_id}", highlight=False, markup=False))


# ---------------------------------------------------------------------------------- model
@model_app.command("export")
def model_export(
    path: Annotated[Path, typer.Argument(
        help="file to write: NAME.safetensors (safetensors, metadata inside), else a torch state_dict "
             "(metadata beside it in NAME.json)")],
    federation_id: Annotated[str, typer.Option("--federation", help="federation (default: the current model)")] = "",
    raw: Annotated[bool, typer.Option("--raw", help="write the TensorPayload protobuf instead of a .pt file")] = False,
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None, output: FormatOption = OutputFormat.human,
) -> None:
    """Stream the current model to a file, sha256-verified, with its metadata (task, layout digest,
    federation, round, accuracy, preprocessing such as normalisation statistics)."""
    from fednode.node.durable import atomic_write_bytes

    target = _target(config, state_dir, admin, token, tls_ca)
    fmt = "raw" if raw else "safetensors" if path.suffix == ".safetensors" else "pt"
    request = admin_pb2.ExportModelRequest(federation_id=federation_id, format=fmt)
    data = bytearray()
    digest = b""
    metadata_json = ""
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
                        metadata_json = chunk.metadata_json
            except grpc.RpcError as error:
                raise _translate(error, target) from None
        if hashlib.sha256(data).digest() != digest:
            raise RequestFailed("the exported model does not match its sha256; retry the export")
        metadata = json.loads(metadata_json) if metadata_json else {}
        sidecar = None
        if fmt != "safetensors" and metadata:  # safetensors carries it in its header
            sidecar = path.with_name(path.name + ".json")
            atomic_write_bytes(sidecar, (json.dumps({**metadata, "sha256": digest.hex(), "file": path.name},
                                                    indent=2) + "\n").encode(), mode=0o644)
        atomic_write_bytes(path, bytes(data), mode=0o644)
    except FednodeError as error:
        raise fail(error) from None
    info = {"path": str(path), "format": fmt, "bytes": len(data), "sha256": digest.hex(), "model_version": version,
            "metadata_file": str(sidecar) if sidecar else None, "metadata": metadata}
    accuracy = metadata.get("accuracy")
    emit(output, info, lambda: out.print(
        f"wrote {path} ({fmt}, {len(data)} bytes, model version {version}, round {metadata.get('round', '?')}"
        + (f", accuracy {accuracy:.4f}" if isinstance(accuracy, float) else "") + ")"
        + (f"; metadata in {sidecar}" if sidecar else ""), highlight=False))


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(peers)
    app.command()(stop)
    app.add_typer(federation_app, name="federation")
    app.add_typer(model_app, name="model")
