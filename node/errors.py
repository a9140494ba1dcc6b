"""Errors the daemon and CLI turn into one-line messages and documented exit codes.

Exit codes (also in docs/cli.md):

    0   success, including a graceful stop on SIGINT/SIGTERM or `fednode stop`
    1   unexpected internal error (a bug: the log has a traceback)
    2   command-line usage error (unknown option, bad argument)
    3   configuration error (bad TOML, unknown key, invalid value)
    4   identity error (key file unreadable, malformed or with unsafe permissions)
    5   state directory error (not writable, or locked by another running daemon)
    6   task error (the task plug-in cannot be imported or built, data unreadable)
    7   network error (cannot listen, bootstrap unreachable when required)
    8   no daemon running (CLI commands that talk to the admin API)
    9   the daemon refused the request (admin API error; the message says why)
    10  shutdown took longer than the bound and was forced
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    IDENTITY = 4
    STATE_DIR = 5
    TASK = 6
    NETWORK = 7
    NO_DAEMON = 8
    REQUEST_FAILED = 9
    FORCED_SHUTDOWN = 10


class FednodeError(Exception):
    """An error with a one-line, actionable message and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(FednodeError):
    exit_code = ExitCode.CONFIG


class IdentityError(FednodeError):
    exit_code = ExitCode.IDENTITY


class StateDirError(FednodeError):
    exit_code = ExitCode.STATE_DIR


class TaskError(FednodeError):
    exit_code = ExitCode.TASK


class NetworkError(FednodeError):
    exit_code = ExitCode.NETWORK
