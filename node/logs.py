"""Logging set-up: human-readable lines or JSON lines (`--log-format json`).

JSON records carry `ts`, `level`, `logger`, `msg` and any `extra={...}` fields the caller passed,
so log shippers can index round numbers, peer ids and accuracies without parsing text.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def read_json_log(text: str) -> list[dict[str, Any]]:
    """The records of a `--log-format json` log (what JsonFormatter writes), in order. Other
    lines (a library printing to stderr, a line cut short by a kill) are skipped."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def record_time(record: dict[str, Any]) -> float:
    """A JSON record's `ts` ("2026-11-22T13:05:09.123Z", UTC) as unix seconds."""
    stamp, _, millis = record["ts"].rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000


def quiet_noisy_libraries() -> None:
    """Some py-libp2p modules set their own INFO level at import; call after importing them."""
    for name in ("libp2p.network.auto_connector",):
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(log_format: str = "human", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # py-libp2p and its dependencies are chatty at INFO; their warnings still show.
    for noisy in ("libp2p", "multiaddr", "trio", "async_service", "hpack", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Logs every failed dial attempt at ERROR (a member that left: one line per address and try,
    # ~30 a minute per peer); our DialError carries the same reason to whoever asked for the dial.
    logging.getLogger("libp2p.transport.tcp.tcp").setLevel(max(logging.CRITICAL, root.level))


def log_task_stacks(loop: asyncio.AbstractEventLoop) -> None:
    """Log where each asyncio task of this process waits, innermost frame last (`kill -USR1`
    on a daemon or worker that seems stuck)."""
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        # Task.get_stack() shows one frame of a suspended coroutine; follow the await chain.
        where: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(where) < 16:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is None:
                where.append(type(awaited).__name__)
                break
            where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        logging.getLogger("fednode").warning("task %s waits in %s", task.get_name(), " > ".join(where) or "(done)")


def current_rss_mb() -> float:
    """Resident set size of this process now (Linux /proc), in MiB; NaN where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


_failures: dict[tuple[str, str], int] = {}


def _worth_logging(count: int) -> bool:
    """The 1st, 10th, 100th, ... time: a failure that repeats every round stays visible
    without filling the log."""
    while count % 10 == 0:
        count //= 10
    return count == 1


def note_failure(log: logging.Logger, what: str, exc: BaseException, *, level: int = logging.WARNING,
                 extra: dict[str, Any] | None = None) -> int:
    """Log that `what` failed and why (the 1st, 10th, 100th, ... time for the same logger and
    `what`); returns how many times it failed so far."""
    key = (log.name, what)
    count = _failures.get(key, 0) + 1
    _failures[key] = count
    if _worth_logging(count):
        again = f" ({count} times so far)" if count > 1 else ""
        log.log(level, "%s failed: %s%s", what, str(exc) or type(exc).__name__, again,
                exc_info=log.isEnabledFor(logging.DEBUG), extra={"event": "best_effort_failed", **(extra or {})})
    return count


@contextlib.contextmanager
def best_effort(log: logging.Logger, what: str, *, level: int = logging.WARNING) -> Iterator[None]:
    """Work whose failure must not stop the caller (closing a sink, a metric, a hint): an exception
    is logged with `what` (note_failure) instead of being raised. Not for durable writes: a write
    that fails must be reported to whoever relies on it."""
    try:
        yield
    except Exception as exc:
        note_failure(log, what, exc, level=level)
