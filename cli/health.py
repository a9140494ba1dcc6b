"""`fednode health`: ask a daemon's gRPC health service whether it is SERVING.

For container HEALTHCHECKs, Kubernetes exec probes and scripts: exit code 0 when the daemon
answers SERVING, 1 when it answers anything else (NOT_SERVING while it stops), 8 when nothing
answers. By default it asks the admin socket of the state dir (or `admin.socket`); `--address
HOST:PORT` asks a plaintext health listener (`admin.health_listen`) instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fednode.node.errors import ExitCode


def health(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="config file (to find the admin socket)")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="state dir of the daemon to ask")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="HOST:PORT of a health listener (admin.health_listen) instead of the admin socket")] = None,
    service: Annotated[str, typer.Option("--service", help="service name to ask about; empty = the whole daemon")] = "",
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="seconds to wait for the answer")] = 5.0,
    output: Annotated[str, typer.Option("--format", help="human or json")] = "human",
) -> None:
    """Check the daemon's gRPC health (exit 0 = SERVING): for HEALTHCHECKs and probes."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fednode.cli.admin import AdminTarget, fail
    from fednode.node.errors import FednodeError

    if output not in ("human", "json"):
        typer.echo(f"error: --format must be human or json, got {output!r}", err=True)
        raise typer.Exit(int(ExitCode.USAGE))
    try:
        target = address or AdminTarget(config, state_dir, None, None, None).address()
    except FednodeError as error:
        raise fail(error) from None
    if target.startswith("unix:") and not Path(target[5:]).exists():
        status, detail = "UNREACHABLE", f"no admin socket at {target[5:]}"
    else:
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                detail = ""
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                if code == grpc.StatusCode.NOT_FOUND:
                    status, detail = "SERVICE_UNKNOWN", f"the daemon has no health status for {service!r}"
                else:
                    status, detail = "UNREACHABLE", f"{code.name.lower() if code else 'error'}: {error.details() if hasattr(error, 'details') else error}"
    if output == "json":
        sys.stdout.write(json.dumps({"address": target, "service": service, "status": status, "detail": detail}) + "\n")
    else:
        typer.echo(f"{status} ({target}{'; ' + detail if detail else ''})")
    if status == "SERVING":
        raise typer.Exit(0)
    raise typer.Exit(int(ExitCode.NO_DAEMON) if status == "UNREACHABLE" else 1)
