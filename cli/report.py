"""`fednode report RUN_DIR|STATE_DIR`: PNG plots and one self-contained HTML page of a run.

A run directory of `fednode launch` (runs/<time>) gives one line per member in every plot; a
node's state dir gives that node's rounds across all its runs (history.jsonl and its rotated
files) and the updates its audit log rejected. `fednode launch` writes the report itself at the
end of every run (RUN_DIR/report/index.html).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fednode.node.errors import ExitCode


def report(
    source: Annotated[Path, typer.Argument(help="a run directory of `fednode launch`, or a node's state dir")],
    out: Annotated[Path | None, typer.Option("--out", help="where to write the plots and index.html (default SOURCE/report)")] = None,
    output: Annotated[str, typer.Option("--format", help="human or json")] = "human",
) -> None:
    """Plot a run: accuracy, loss, participants, bytes, round time, rejections (PNG + one HTML page)."""
    from fednode.cli.admin import fail
    from fednode.node.errors import FednodeError
    from fednode.node.report import load_run, write_report

    if output not in ("human", "json"):
        typer.echo(f"error: --format must be human or json, got {output!r}", err=True)
        raise typer.Exit(int(ExitCode.USAGE))
    try:
        run = load_run(source)
        written = write_report(run, out or source / "report")
    except FednodeError as error:
        raise fail(error) from None
    info = {"html": str(written.html), "plots": {k: str(v) for k, v in written.plots.items()},
            "members": [m.name for m in run.members], "rounds": sum(len(m.rounds) for m in run.members)}
    if output == "json":
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        typer.echo(f"report of {run.title}: {len(run.members)} member(s), {info['rounds']} rounds")
        typer.echo(f"  {written.html}")
        for path in written.plots.values():
            typer.echo(f"  {path}")
