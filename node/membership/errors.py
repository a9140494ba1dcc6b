"""Membership errors that are not protocol rejections.

Verification of peer input (certificates, revocations, descriptors) raises
`fednode.node.envelope.Rejected` with a `RejectReason`, like every other check on received data, so
the gossip validator handles all refusals the same way. The errors here are for operators and
callers: a token that cannot be used, a refused join, a damaged state directory.
"""

from __future__ import annotations

from fednode.node.errors import ExitCode, FednodeError, StateDirError
from fednode.proto.v1 import membership_pb2


class MembershipError(FednodeError):
    """A membership operation could not be done; the message says what to do instead."""

    exit_code = ExitCode.REQUEST_FAILED


class InvalidInvite(MembershipError):
    """An invite token is malformed, forged, or expired (raised on the joiner's side)."""


class JoinRefused(MembershipError):
    """The issuer answered a JoinRequest with another status than OK, or with an unusable answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"join refused ({status_name(status)}): {message}")
        self.status = status

    @property
    def status_name(self) -> str:
        return status_name(self.status)


class MembershipStateError(StateDirError):
    """A membership file in the state directory is unreadable or corrupt."""


def status_name(status: int) -> str:
    """JoinResponse.Status value -> its name, e.g. 1 -> "OK"; unknown numbers stay readable."""
    try:
        return membership_pb2.JoinResponse.Status.Name(status)
    except ValueError:
        return f"STATUS_{status}"
