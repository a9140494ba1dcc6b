"""Errors raised by the mesh. No libp2p or trio exception type ever crosses the interface."""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error the mesh raises."""


class MeshClosedError(MeshError):
    """The mesh is not running (not started yet, stopping, or stopped)."""


class MessageTooLargeError(MeshError, ValueError):
    """A gossip message or a blob exceeds its configured cap; nothing was sent or stored."""


class DialError(MeshError):
    """Could not connect to a peer or address."""


class StreamOpenError(DialError):
    """Connected to the peer, but no stream could be opened on the connection (e.g. a relayed
    connection closing under us); worth one more try, which dials afresh if needed."""


class FetchError(MeshError):
    """A blob could not be fetched from any provider.

    ``reasons`` maps each provider tried to a short reason ("not_found", "busy", "timeout",
    "hash_mismatch", "connection: ...").
    """

    def __init__(self, message: str, reasons: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reasons: dict[str, str] = dict(reasons or {})


class BlobNotFoundError(FetchError):
    """Every provider answered NOT_FOUND (or none was reachable and some said NOT_FOUND)."""


class BlobTooLargeError(FetchError, MessageTooLargeError):
    """The blob is larger than the requested ``max_size`` (a provider said TOO_LARGE)."""


class FastPathAuthError(MeshError):
    """The fast-path handshake failed: the remote end did not prove the expected identity."""
