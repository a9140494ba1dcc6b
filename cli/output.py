"""What every `fednode` command prints: one-line errors, JSON, tables and next-step hints.

* Errors: one line on stderr, `error: <message>`; the message is printed literally (a config
  section such as `[task]` is text, not rich markup).
* JSON (`--format json`): native numbers (int64 fields included), `null` for a value that is
  missing or not a number (NaN accuracy before the first round), bytes as hex.
* Tables fold long cells (multiaddrs, ids) onto several lines instead of cutting them, so every
  address stays copyable whatever the terminal width.
* Hints that name a command carry the `--state-dir` / `--config` the command was run with.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fednode.node.errors import FednodeError

out = Console()
err = Console(stderr=True)


class OutputFormat(str, Enum):
    human = "human"
    json = "json"


def print_error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(error: FednodeError) -> typer.Exit:
    print_error(error.message)
    return typer.Exit(int(error.exit_code))


def json_ready(value: Any) -> Any:
    """Plain JSON data: non-finite floats become null, paths and enums strings, bytes hex."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n")


def emit(output: OutputFormat | str, data: Any, human: Callable[[], None]) -> None:
    if OutputFormat(output) is OutputFormat.json:
        print_json(data)
    else:
        human()


def proto_to_dict(message: Message) -> dict[str, Any]:
    """Every field of a protobuf message (defaults included) as plain JSON data: 64-bit integers
    as numbers (protobuf's JSON mapping makes them strings), NaN/Inf as null, bytes as hex, enums
    by name, nested messages as objects (unset ones as null)."""
    data: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                data[field.name] = {str(k): _field_value(value_field, v) for k, v in value.items()}
            else:
                data[field.name] = [_field_value(field, item) for item in value]
        elif field.type == field.TYPE_MESSAGE and not message.HasField(field.name):
            data[field.name] = None
        else:
            data[field.name] = _field_value(field, value)
    return data


def _field_value(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_MESSAGE:
        return proto_to_dict(value)
    if field.type == field.TYPE_BYTES:
        return bytes(value).hex()
    if field.type == field.TYPE_ENUM:
        described = field.enum_type.values_by_number.get(value)
        return described.name if described is not None else value
    if field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return float(value) if math.isfinite(value) else None
    return value


def table(*columns: str, keep: dict[str, int] | None = None) -> Table:
    """A table whose cells fold onto several lines when the terminal is narrow, never cut with
    an ellipsis; `keep` gives columns a minimum width (an id prefix stays on one line)."""
    # No vertical borders: 80 columns hold more (a cut table would lose its last columns).
    result = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        result.add_column(column, overflow="fold", min_width=(keep or {}).get(column))
    return result


def hint(command: str, *, state_dir: Path | None = None, config: Path | None = None) -> str:
    """`fednode <command>` with the --state-dir / --config the current command was given."""
    parts = ["fednode", command]
    if state_dir is not None:
        parts += ["--state-dir", shlex.quote(str(state_dir))]
    if config is not None:
        parts += ["--config", shlex.quote(str(config))]
    return " ".join(parts)
