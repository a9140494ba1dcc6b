"""Command-line values shared by several commands: parameter tables, times, factor lists.

Every parser raises ConfigError (exit code 3) with a message that names the option.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime, timedelta
from typing import Any

from fednode.node.errors import ConfigError

_DURATION = re.compile(r"^\+?(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_table(option: str, text: str | None) -> dict[str, Any]:
    """A parameter table as a TOML inline table ('eps = 10', '{eps = 10}', 'base = "krum", p = 10');
    a JSON object ('{"f": 1}') is accepted too."""
    from fednode.node.config import parse_value

    if not text or not text.strip():
        return {}
    stripped = text.strip()
    value = parse_value(stripped if stripped.startswith("{") else "{" + stripped + "}")
    if not isinstance(value, dict) and stripped.startswith("{"):
        with contextlib.suppress(ValueError):
            value = json.loads(stripped)
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a TOML inline table such as 'eps = 10' or '{{eps = 10}}', got {text!r}")
    return value


def parse_until(option: str, text: str, now: datetime | None = None) -> int:
    """An end time as unix milliseconds: an ISO 8601 date and time ('2026-07-01T18:00',
    local time unless it has an offset) or a duration from now ('90m', '2h', '1.5d', '45s')."""
    now = now or datetime.now().astimezone()
    match = _DURATION.match(text.strip())
    if match:
        moment = now + timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ConfigError(f"{option} must be a date and time such as 2026-07-01T18:00 or a duration such as "
                              f"90m, 2h or 1d; got {text!r}") from None
        if moment.tzinfo is None:
            moment = moment.astimezone()  # local time
    if moment <= now:
        raise ConfigError(f"{option} {text!r} is not in the future")
    return int(moment.timestamp() * 1000)


def parse_factors(option: str, text: str | None) -> list[float]:
    """"1,2,4,8" -> [1.0, 2.0, 4.0, 8.0]; each factor must be in [1, 1000] (training.slowdown)."""
    if not text:
        return []
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers such as 1,2,4,8, got {text!r}") from None
    if not values or any(not 1.0 <= v <= 1000.0 for v in values):
        raise ConfigError(f"{option} factors must be between 1 and 1000, got {text!r}")
    return values
