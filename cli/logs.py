"""`fednode logs [-f]`: the daemon's events (rounds, joins, leaves, rejected updates, revocations)
from the admin API's `WatchEvents` stream.

Without `-f` it prints the last `--tail` events the daemon kept and exits; with `-f` it then
follows new ones until the daemon stops (exit 0) or Ctrl-C. `--format json` prints one JSON
object per line (for jq and log shippers); the default is one readable line per event.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from fednode.cli.admin import AdminOption, ConfigOption, StateDirOption, TlsCaOption, TokenOption
from fednode.node.errors import ExitCode


def event_record(event: Any) -> dict[str, Any]:
    """An admin Event as a flat JSON-able dict, with an ISO-8601 UTC time first."""
    from fednode.cli.output import proto_to_dict

    data = proto_to_dict(event)
    for name in ("unix_ms", "round", "model_version"):  # uint64: MessageToDict writes them as strings
        data[name] = int(getattr(event, name))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.unix_ms / 1000)) + f".{event.unix_ms % 1000:03d}Z"
    return {"time": stamp, **data}


def event_line(event: Any) -> str:
    """One readable line: local time, kind, then only the fields the event has."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event.unix_ms / 1000)) + f".{event.unix_ms % 1000:03d}"
    parts = [stamp, f"{event.kind:<16}"]
    if event.federation_id:
        parts.append(f"federation {event.federation_id[:12]}")
    if event.round:
        parts.append(f"round {event.round}")
    if event.model_version:
        parts.append(f"model v{event.model_version}")
    if event.kind == "round" or event.accuracy:
        parts.append(f"accuracy {event.accuracy:.4f}")
    if event.peer_id:
        parts.append(f"peer {event.peer_id}")
    if event.reason:
        parts.append(f"reason {event.reason}")
    line = "  ".join(parts)
    return f"{line}  {event.detail}" if event.detail else line


def logs(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events until the daemon stops")] = False,
    tail: Annotated[int, typer.Option("--tail", min=0, max=1000, help="recent events to print first")] = 100,
    kinds: Annotated[list[str] | None, typer.Option(
        "--kind", help="only these event kinds (repeatable): round, join, leave, update_rejected, revocation, ...")] = None,
    config: ConfigOption = None, state_dir: StateDirOption = None, admin: AdminOption = None,
    token: TokenOption = None, tls_ca: TlsCaOption = None,
    output: Annotated[str, typer.Option("--format", help="human or json (one object per line)")] = "human",
) -> None:
    """Print the daemon's recent events; -f follows the live stream (like `docker logs -f`)."""
    import grpc

    from fednode.cli.admin import AdminTarget, _translate
    from fednode.cli.output import err, fail
    from fednode.node.errors import FednodeError
    from fednode.proto.v1 import admin_pb2

    if output not in ("human", "json"):
        err.print(f"[bold red]error:[/] --format must be human or json, got {output!r}", highlight=False)
        raise typer.Exit(int(ExitCode.USAGE))
    target = AdminTarget(config, state_dir, admin, token, tls_ca)
    request = admin_pb2.WatchEventsRequest(kinds=list(kinds or []), tail=tail, no_follow=not follow)
    printed = 0
    try:
        with target.stub() as stub:
            stream = stub.WatchEvents(request, metadata=target.metadata())
            try:
                for event in stream:
                    line = json.dumps(event_record(event)) if output == "json" else event_line(event)
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
                    printed += 1
            except grpc.RpcError as error:
                raise _translate(error, target) from None
            except KeyboardInterrupt:
                stream.cancel()
                raise typer.Exit(0) from None
    except FednodeError as error:
        raise fail(error) from None
    if follow:
        err.print("the daemon stopped; no more events", highlight=False)
    elif not printed and output == "human":
        err.print("no events yet (the daemon keeps its last 1000: rounds, joins, leaves, rejections, ...)",
                  highlight=False)
